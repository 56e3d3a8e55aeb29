defmodule Visor.BackstopTest do
  # Visor.Backstop answers a pipelined command :timeout through the
  # caller's alias, and the alias lets only the first message through:
  # the backstop never makes a second one.
  use ExUnit.Case, async: true

  alias Visor.Backstop

  setup do
    module = :"Visor.BackstopTest.Group#{System.unique_integer([:positive])}"
    start_supervised!({Backstop, module})
    server = spawn(fn -> Process.sleep(:infinity) end)
    ref = :erlang.monitor(:process, server, alias: :reply_demonitor)
    %{module: module, server: server, ref: ref}
  end

  defp messages(ref) do
    Process.sleep(150)
    {:messages, messages} = Process.info(self(), :messages)
    for message <- messages, elem(message, 1) == ref or elem(message, 0) == ref, do: message
  end

  test "nothing answered: :timeout when the timer fires, and a late answer is dropped", c do
    Backstop.arm(c.module, c.ref, 20)
    assert_receive {ref, {:error, :timeout}} when ref == c.ref, 1_000
    send(c.ref, {c.ref, :late})
    assert messages(c.ref) == []
  end

  test "the server's answer first: the backstop's is dropped", c do
    Backstop.arm(c.module, c.ref, 20)
    send(c.ref, {c.ref, :answer})
    assert messages(c.ref) == [{c.ref, :answer}]
  end

  test "the server's :DOWN first: the backstop's is dropped", c do
    Backstop.arm(c.module, c.ref, 20)
    Process.exit(c.server, :kill)
    assert [{:DOWN, _, :process, _, :killed}] = messages(c.ref)
  end
end
