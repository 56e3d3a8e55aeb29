defmodule Visor.Formation.RestartWhileFormingTest do
  # End to end on real nodes (`nodes:`, disk mode): one node's group
  # restarts once while the cluster forms, before it decided. It rejoins
  # (a member recorded its first incarnation, which might have run), and
  # while its replica recovers it lets in the node that had not started
  # yet, which never ran: that one starts fresh, and the cluster serves.
  # Before the fix the rejoined node told it to rejoin as well: two of
  # three recovering, one normal, and neither recovery could ever finish.
  # Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  @moduletag :tmp_dir

  test "nodes:, disk mode: a node restarted while forming rejoins, and the cluster serves",
       %{tmp_dir: tmp} do
    [a, b, c] = nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    opts = fn n -> [nodes: nodes, storage: :disk, data_dir: Path.join(tmp, Atom.to_string(n))] end

    start = fn n ->
      {:ok, _} = :erpc.call(n, Cluster, :start_group_here, [Counter, opts.(n), :error])
    end

    # b and c start, a not yet: nobody can decide, but c records b.
    start.(b)
    start.(c)
    Cluster.eventually(fn -> Cluster.status(c, Counter).waiting_for == %{nodes: [a]} end)

    # b's group restarts before it decided (it has no store): c knows an
    # earlier incarnation, so b rejoins.
    :ok = Cluster.stop_group(b, Counter)
    start.(b)
    Cluster.eventually(fn -> Cluster.rejoined?(b, Counter) end)

    # a, which never ran, starts fresh; b recovers from a and c.
    :ok = Cluster.start_group([a], Counter, opts)
    refute Cluster.rejoined?(a, Counter)

    for n <- nodes do
      Cluster.eventually(fn -> Cluster.status(n, Counter).status == :normal end, 15_000)
    end

    assert is_integer(:erpc.call(b, Counter, :commit, [{:incr, :formed}, [timeout: 10_000]]))
  end
end
