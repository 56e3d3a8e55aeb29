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

  # The review's finding 2: formation is registered under the same name on
  # every node, and took `:visor_replica_normal` from anyone. One that
  # reached b's formation while b's replica still recovered (a stray
  # message, a peer's, any process's) made b answer a, which never ran,
  # by its record alone: a was told to rejoin, and the cluster wedged (b
  # and a recovering, c alone normal). Only b's router may say it.
  test "nodes:, disk mode: a :visor_replica_normal that does not come from the router does not wedge formation",
       %{tmp_dir: tmp} do
    [a, b, c] = nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    opts = fn n -> [nodes: nodes, storage: :disk, data_dir: Path.join(tmp, Atom.to_string(n))] end

    start = fn n ->
      {:ok, _} = :erpc.call(n, Cluster, :start_group_here, [Counter, opts.(n), :error])
    end

    start.(b)
    start.(c)
    Cluster.eventually(fn -> Cluster.status(c, Counter).waiting_for == %{nodes: [a]} end)
    :ok = Cluster.stop_group(b, Counter)
    start.(b)
    Cluster.eventually(fn -> Cluster.rejoined?(b, Counter) end)

    # While b's replica recovers (it cannot finish before a starts), the
    # message reaches b's formation from a peer, and from a process on b
    # other than its router (b's server), bare and naming its sender as
    # the router does.
    Cluster.eventually(fn -> Cluster.status(b, Counter).status == :recovering end)
    formation = Visor.Supervisor.name(Counter, :formation)
    server = :erpc.call(b, Process, :whereis, [Visor.Supervisor.name(Counter, :server)])
    :erpc.call(c, :erlang, :send, [{formation, b}, :visor_replica_normal])
    :erpc.call(b, :erlang, :send, [formation, :visor_replica_normal])
    :erpc.call(b, :erlang, :send, [formation, {:visor_replica_normal, server}])

    :ok = Cluster.start_group([a], Counter, opts)
    refute Cluster.rejoined?(a, Counter), "a never ran, yet b told it to rejoin"

    for n <- nodes do
      Cluster.eventually(fn -> Cluster.status(n, Counter).status == :normal end, 15_000)
    end
  end
end
