defmodule Visor.FormationTest do
  # Membership: discovery with cluster_size, explicit nodes, spares, and
  # the refusal of a replica that lost its memory. Not async: real nodes.
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

    [spare] = spares
    assert :erpc.call(spare, Cache, :commit, [{:add, %{spare: true}}]) == {:error, :spare}
    assert :erpc.call(spare, Cache, :get, []) == {:error, :spare}
    assert %{status: :spare, role: :none} = statuses[spare]
  end

  test "nodes: a node missing from the list is a spare; the listed ones form" do
    [a, b, c] = nodes(3)
    :ok = Cluster.start_group([a, b, c], Cache, nodes: [a, b])
    assert Cluster.status(c, Cache).status == :spare
    assert :erpc.call(c, Cache, :commit, [{:add, %{x: 1}}]) == {:error, :spare}
    assert :erpc.call(b, Cache, :commit, [{:add, %{x: 1}}]) == nil
    assert :erpc.call(a, Cache, :get_in, [[:x]]) == 1
  end

  test "nodes: a restarted server refuses to rejoin and says so; the others carry on" do
    [a, b, c] = nodes = nodes(3)
    :ok = Cluster.start_group(nodes, Cache, nodes: nodes)
    assert :erpc.call(c, Cache, :commit, [{:add, %{before: 1}}]) == nil

    # Stopping and starting the group is a replica that lost its memory.
    :ok = Cluster.stop_group(c, Cache)
    :ok = Cluster.start_group([c], Cache, [nodes: nodes], :critical)

    assert Cluster.status(c, Cache).status == :restarted
    assert :erpc.call(c, Cache, :commit, [{:add, %{x: 1}}]) == {:error, :restarted}
    assert :erpc.call(c, Cache, :get, [[consistency: :local]]) == {:error, :restarted}

    # Two of three still make a quorum.
    assert :erpc.call(a, Cache, :commit, [{:add, %{after: 2}}]) == nil
    assert :erpc.call(b, Cache, :get, []) == %{before: 1, after: 2}
  end

  test "cluster_size: a killed node restarted under the same name refuses to rejoin" do
    [a, _, _] = nodes = nodes(3)
    :ok = Cluster.start_group(nodes, Cache, cluster_size: 3)
    assert :erpc.call(a, Cache, :commit, [{:add, %{before: 1}}]) == nil

    victim = Cluster.primary(a, Cache)
    survivors = nodes -- [victim]
    :ok = Cluster.kill_node(victim, survivors)
    {_pid, ^victim} = Cluster.restart_peer(victim, survivors)
    :ok = Cluster.start_group([victim], Cache, [cluster_size: 3], :critical)

    assert Cluster.status(victim, Cache).status == :restarted
    assert :erpc.call(victim, Cache, :commit, [{:add, %{x: 1}}]) == {:error, :restarted}

    # The survivors elect a new primary and go on.
    assert :erpc.call(hd(survivors), Cache, :commit, [{:add, %{after: 2}}], 10_000) == nil
    assert :erpc.call(List.last(survivors), Cache, :get, []) == %{before: 1, after: 2}
  end
end
