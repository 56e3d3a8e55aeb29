defmodule Visor.Server.MachineIndexTest do
  # `meta.index`: the position of a command among those one op holds
  # (several callers' requests, a pipelined batch's commands), so that
  # `{meta.op, meta.index}` is unique along the log, and the same on a
  # replica that a hot code rollback stopped in the middle of the op.
  use ExUnit.Case, async: false

  alias Visor.Executor
  alias Visor.Server.Machine
  alias Visor.Test.CodeVersions

  @module Visor.Server.MachineIndexTest.Indexed

  setup do
    :ok = Visor.Lifetime.forget(@module)
    on_exit(fn -> CodeVersions.unload(@module) end)
  end

  defp compile(n, extra) do
    CodeVersions.state_machine(@module, """
    @impl Visor
    def version, do: #{n}
    #{extra}
    @impl Visor
    def handle_commit(x, meta, state), do: {:ok, {meta.op, meta.index}, [x | state]}
    """)
  end

  defp command(term), do: :erlang.term_to_binary(term)
  defp results(effects), do: for({:result, client, 1, result} <- effects, do: {client, result})

  test "an op's commands are numbered from 0, each of a batch too; a switch takes none" do
    CodeVersions.load(compile(0, ""))
    {m, []} = Machine.new(@module, [], :atomics.new(3, []), nil)

    requests = [
      {"x", 1, :executed, command(:x)},
      {"s", 1, :executed, Executor.switch_payload(0)},
      {"a", 1, :executed, Executor.batch_payload([command(:y), command(:z)])},
      {"b", 1, :executed, command(:w)}
    ]

    {_m, effects} = Machine.event(m, {:execute, 7, 1, 1_007, requests})

    assert results(effects) == [
             {"x", {:ok, {7, 0}}},
             {"s", {:ok, 0}},
             {"a", {:batch, [{:ok, {7, 1}}, {:ok, {7, 2}}]}},
             {"b", {:ok, {7, 3}}}
           ]
  end

  test "the rest of an op held after a rollback resumes at its own index" do
    v1 = compile(1, "")

    v2 =
      compile(2, """
      def handle_commit(:slow, meta, state) do
        Process.sleep(300)
        {:ok, {:slow, meta.index}, state}
      end
      """)

    CodeVersions.load(v2)
    {m, []} = Machine.new(@module, [], :atomics.new(3, []), nil)
    switch = {"p", 1, :executed, Executor.switch_payload(2)}
    {m, _effects} = Machine.event(m, {:execute, 1, 1, 1_001, [switch]})

    test = self()

    spawn(fn ->
      Process.sleep(100)
      CodeVersions.load(v1)
      send(test, :rolled_back)
    end)

    requests = [
      {"x", 1, :executed, command(:x)},
      {"a", 1, :executed, Executor.batch_payload([command(:y), command(:slow)])},
      {"b", 1, :executed, command(:z)}
    ]

    {m, effects} = Machine.event(m, {:execute, 2, 1, 1_002, requests})
    assert_receive :rolled_back, 1_000
    refused = {:error, {:unsupported_version, 2}}
    assert results(effects) == [{"x", {:ok, {2, 0}}}, {"a", refused}, {"b", refused}]

    # The batch runs again from its first command, at index 1, as on a
    # replica that never stopped.
    CodeVersions.load(v2)
    {_m, effects} = Machine.code_loaded(m)

    assert results(effects) == [
             {"a", {:batch, [{:ok, {2, 1}}, {:ok, {:slow, 2}}]}},
             {"b", {:ok, {2, 3}}}
           ]
  end
end
