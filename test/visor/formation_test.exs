defmodule Visor.FormationTest do
  # Membership: discovery with cluster_size, explicit nodes, spares, and
  # the rejoining of a replica that lost its memory (it recovers its state
  # from the others). Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.Cluster

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1))

  test "cluster_size: 3 among 4 nodes forms one cluster of three; the fourth is a spare" do
    nodes = nodes(4)
    :ok = Cluster.start_group(nodes, Cache, cluster_size: 3)

    statuses = for n <- nodes, into: %{}, do: {n, Cluster.status(n, Cache)}
    {spares, members} = Enum.split_with(nodes, &(statuses[&1].status == :spare))
    assert length(spares) == 1 and length(members) == 3

    # The members agree on one cluster: same id, same replicas, one primary.
    member_statuses = Enum.map(members, &statuses[&1])
    assert member_statuses |> Enum.map(& &1.cluster) |> Enum.uniq() |> length() == 1

    assert member_statuses |> Enum.map(&Enum.map(&1.replicas, fn r -> r.node end)) |> Enum.uniq() ==
             [Enum.sort(members)]

    for {n, i} <- Enum.with_index(members) do
      assert :erpc.call(n, Cache, :commit, [{:add, %{i => n}}]) == nil
    end

    for n <- members, do: assert(map_size(:erpc.call(n, Cache, :get, [])) == 3)

    # The spare runs no replica: its calls go to a member.
    [spare] = spares
    assert :erpc.call(spare, Cache, :commit, [{:add, %{spare: true}}]) == nil
    assert :erpc.call(spare, Cache, :get_in, [[:spare]]) == true
    assert %{status: :spare, role: :none} = statuses[spare]

    # A restarted spare is still a spare: only members rejoin.
    :ok = Cluster.stop_group(spare, Cache)
    :ok = Cluster.start_group([spare], Cache, cluster_size: 3)
    assert Cluster.status(spare, Cache).status == :spare
  end

  test "nodes: a node missing from the list is a spare; the listed ones form" do
    [a, b, c] = nodes(3)
    :ok = Cluster.start_group([a, b, c], Cache, nodes: [a, b])
    assert Cluster.status(c, Cache).status == :spare
    assert :erpc.call(c, Cache, :commit, [{:add, %{x: 1}}]) == nil
    assert :erpc.call(b, Cache, :commit, [{:add, %{y: 2}}]) == nil
    assert :erpc.call(a, Cache, :get_in, [[:x]]) == 1
    assert :erpc.call(c, Cache, :get_in, [[:y]]) == 2

    # A restarted spare is still a spare: only members rejoin.
    :ok = Cluster.stop_group(c, Cache)
    :ok = Cluster.start_group([c], Cache, nodes: [a, b])
    assert Cluster.status(c, Cache).status == :spare
  end

  test "nodes: a stopped group rejoins, recovers and catches up; a second restart, and every node in turn, too" do
    [a, b, c] = nodes = nodes(3)
    :ok = Cluster.start_group(nodes, Cache, nodes: nodes)
    refute Enum.any?(nodes, &rejoined?/1)
    assert :erpc.call(c, Cache, :commit, [{:add, %{before: 1}}]) == nil

    # c twice (its second restart must be recognised too), then a and b.
    for {victim, i} <- Enum.with_index([c, c, a, b]) do
      [other | _] = others = nodes -- [victim]

      # Stopping and starting the group is a replica that lost its memory.
      :ok = Cluster.stop_group(victim, Cache)
      # Two of three are a quorum: commits go on without it.
      assert :erpc.call(other, Cache, :commit, [{:add, %{{:down, i} => victim}}], 10_000) == nil

      :ok = Cluster.start_group([victim], Cache, nodes: nodes)
      # It rejoins, recovering, never as a fresh replica. When b restarts
      # last, a and c are themselves rejoined: they know b's earlier
      # incarnation only from the records they learned when they rejoined.
      assert rejoined?(victim)
      # A commit through the rejoining node waits for it to recover.
      assert :erpc.call(victim, Cache, :commit, [{:add, %{{:rejoined, i} => victim}}]) == nil
      assert_caught_up(victim, others)
    end

    assert map_size(:erpc.call(a, Cache, :get, [])) == 1 + 2 * 4
    Cluster.eventually(fn -> same_cluster(nodes) end)
  end

  test "nodes: a crashed server is restarted by its supervisor and rejoins" do
    [a, b, c] = nodes = nodes(3)
    :ok = Cluster.start_group(nodes, Cache, nodes: nodes)
    assert :erpc.call(a, Cache, :commit, [{:add, %{before: 1}}]) == nil

    server = :erpc.call(b, Process, :whereis, [Cache])
    true = :erpc.call(b, Process, :exit, [server, :kill])

    Cluster.eventually(fn ->
      pid = :erpc.call(b, Process, :whereis, [Cache])
      pid != nil and pid != server
    end)

    assert :erpc.call(c, Cache, :commit, [{:add, %{after: 2}}], 10_000) == nil
    assert rejoined?(b)
    assert_caught_up(b, [a, c])
    assert :erpc.call(b, Cache, :get, [[consistency: :local]]) == %{before: 1, after: 2}
  end

  test "cluster_size: a killed node restarted under the same name rejoins and catches up, twice" do
    [a, _, _] = nodes = nodes(3)
    :ok = Cluster.start_group(nodes, Cache, cluster_size: 3)
    assert :erpc.call(a, Cache, :commit, [{:add, %{before: 1}}]) == nil
    cluster = Cluster.status(a, Cache).cluster

    # The primary first, then a backup: the same node twice in a row would
    # test the same thing; a backup tests the other role.
    primary = Cluster.primary(a, Cache)
    backup = hd(nodes -- [primary])

    for {victim, i} <- [{primary, 1}, {backup, 2}] do
      survivors = nodes -- [victim]
      :ok = Cluster.kill_node(victim, survivors)

      # The survivors elect a new primary if need be, and go on.
      assert :erpc.call(hd(survivors), Cache, :commit, [{:add, %{{:down, i} => 1}}], 10_000) ==
               nil

      {_pid, ^victim} = Cluster.restart_peer(victim, survivors)
      :ok = Cluster.start_group([victim], Cache, cluster_size: 3)
      assert rejoined?(victim)
      assert :erpc.call(victim, Cache, :commit, [{:add, %{{:rejoined, i} => 1}}], 10_000) == nil
      assert_caught_up(victim, survivors)
      # Still one cluster: the rejoined node is in it, under the same id.
      assert Cluster.status(victim, Cache).cluster == cluster
    end

    assert map_size(:erpc.call(a, Cache, :get, [])) == 5
    Cluster.eventually(fn -> same_cluster(nodes) end)
  end

  defp rejoined?(node), do: Cluster.rejoined?(node, Cache)

  # `node` recovered (normal) and its local state equals the others'.
  defp assert_caught_up(node, others) do
    Cluster.eventually(fn -> Cluster.status(node, Cache).status == :normal end, 10_000)
    expected = :erpc.call(hd(others), Cache, :get, [])

    for n <- [node | others] do
      Cluster.eventually(fn -> :erpc.call(n, Cache, :get, [[consistency: :local]]) == expected end)
    end
  end

  defp same_cluster(nodes) do
    statuses = Enum.map(nodes, &Cluster.status(&1, Cache))

    Enum.all?(statuses, &(&1.status == :normal)) and
      statuses |> Enum.map(&{&1.cluster, &1.view, &1.primary}) |> Enum.uniq() |> length() == 1
  end
end
