defmodule Visor.PoisonTest do
  # "Lose nothing" #13: a handle_commit that links to a crashing process
  # does not take the server down; one that kills its own process on every
  # replica (which nothing can trap) stops each replica at that op after
  # #{2} crashes there, and `Visor.skip/2` skips it on every replica through
  # the log. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  @moduletag :tmp_dir

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1))
  defp servers(nodes), do: for(n <- nodes, do: :erpc.call(n, Process, :whereis, [Counter]))

  # The status' poison, or nil (also while the server restarts).
  defp poison(node) do
    case Cluster.status(node, Counter) do
      %{poison: poison} -> poison
      {:error, _} -> nil
    end
  end

  defp commit(node, command, timeout \\ 10_000),
    do: :erpc.call(node, Counter, :commit, [command, [timeout: timeout]], timeout + 5_000)

  test "memory mode: a callback whose linked process crashes leaves every server running" do
    [a | _] = nodes = nodes(3)
    :ok = Cluster.start_group(nodes, Counter, nodes: nodes)
    assert commit(a, {:incr, 1}) == 1
    before = servers(nodes)

    assert commit(a, :link_crash) == :survived
    assert commit(a, {:incr, 2}) == 2
    assert servers(nodes) == before
  end

  test "disk mode: a callback that kills its server stops every replica at its op; skip/2 gets them past it",
       %{tmp_dir: tmp} do
    [a, b, _] = nodes = nodes(3)
    opts = Cluster.disk_opts(tmp, nodes: nodes)
    :ok = Cluster.start_group(nodes, Counter, opts, :critical)
    assert commit(a, {:incr, 1}) == 1

    assert {:error, _} = commit(a, :kill_self, 2_000)

    # Each replica dies at the op twice, then stops there and says so.
    poisoned =
      for n <- nodes do
        Cluster.eventually(fn -> poison(n) end, 20_000)
      end

    assert [%{op: op, crashes: 2}] = Enum.uniq(poisoned)
    assert commit(b, {:incr, 2}, 1_000) == {:error, {:halted, op}}

    # The operator skips it once, from any node; every replica goes on.
    before = servers(nodes)
    assert :erpc.call(b, Visor, :skip, [Counter, op]) == :ok
    for n <- nodes, do: Cluster.eventually(fn -> Cluster.status(n, Counter).poison == nil end)
    assert commit(b, {:incr, 2}) == 2
    final = :erpc.call(a, Counter, :get, [])
    Cluster.converged(nodes, Counter, final)
    assert final.applied == MapSet.new([1, 2])
    assert servers(nodes) == before

    # A server that restarts replays the poison command from its disk,
    # dies there once more, and skips it by itself: the skip is in its log.
    [server | _] = servers([b])
    true = :erpc.call(b, Process, :exit, [server, :kill])

    Cluster.converged([b], Counter, final, 15_000)
    assert poison(b) == nil
    assert commit(b, {:incr, 3}) == 3
    Cluster.converged(nodes, Counter, :erpc.call(a, Counter, :get, []))
  end
end
