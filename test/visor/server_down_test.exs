defmodule Visor.ServerDownTest do
  # A call whose server exits during it may have handed the command on:
  # the caller must be told it may have been applied ({:server_down, _}),
  # never that no server took it (:not_running). Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  defp rpc(node, fun, args), do: :erpc.call(node, Visor, fun, args, 60_000)

  @tag timeout: 180_000
  test "the default group: a member's commit in flight when its processes restart never answers :not_running" do
    # A long tick: a backup learns of a commit up to a tick after the
    # primary applied it, which widens the window.
    [_a, b, _c] = members = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
    :ok = Cluster.start_group(members, Counter, nodes: members, tick_ms: 500)

    results =
      for i <- 1..8 do
        Cluster.eventually(fn -> rpc(b, :status, [Counter]).status == :normal end, 15_000)
        caller = Task.async(fn -> rpc(b, :commit, [Counter, {:incr, i}, [timeout: 5_000]]) end)
        Process.sleep(rem(i, 3))
        # The router's crash restarts the group's processes (one_for_all):
        # the server is shut down with the command in flight.
        router = :erpc.call(b, Visor.Supervisor, :whereis, [Counter, :router])
        :erpc.call(b, Process, :exit, [router, :kill])
        {i, Task.await(caller, 10_000)}
      end

    assert for({i, {:error, :not_running}} <- results, do: i) == [], inspect(results)

    # Each is a reply, or an error that says it may have been applied.
    for {i, result} <- results do
      assert is_integer(result) or match?({:error, {:server_down, _}}, result) or
               result == {:error, :timeout},
             "#{i}: #{inspect(result)}"
    end
  end
end
