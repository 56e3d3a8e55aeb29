defmodule Visor.MembershipAddTest do
  # Membership changes that add nodes, on real nodes (docs/operations.md,
  # "Membership changes"): a SIGKILLed member replaced by a spare under
  # load, and a group of 3 grown to 5 and shrunk back to 3 under load, in
  # memory and disk mode (where every node restarted after the growth
  # finds the new configuration in its store). Every acknowledged
  # increment is applied exactly once. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter, Load}
  import Load, only: [assert_exactly_once: 2]

  @callers_per_node 2
  @commit_opts [timeout: 20_000]

  @moduletag :tmp_dir

  test "memory mode: a SIGKILLed member is replaced by a spare under load; the group then tolerates a failure" do
    nodes = Cluster.start_peers(4) |> Enum.map(&elem(&1, 1))
    {members, [spare]} = Enum.split(nodes, 3)
    :ok = Cluster.start_group(nodes, Counter, nodes: members)
    assert %{status: :spare} = Cluster.status(spare, Counter)

    callers = spawn_load(members, 1)
    {acks, []} = collect(%{}, 40, [])

    # A backup dies; the spare takes its place.
    [dead | _] = Cluster.backups_first(members, Counter)
    alive = members -- [dead]
    :ok = Cluster.kill_node(dead, alive ++ [spare])
    {acks, _failed} = collect(acks, map_size(acks) + 20, [dead])

    assert {:ok, %{epoch: 1, members: new}} =
             :erpc.call(
               hd(alive),
               Visor,
               :reconfigure,
               [Counter, {:replace, dead, spare}],
               60_000
             )

    assert Enum.sort(new) == Enum.sort(alive ++ [spare])
    assert_member(spare, 1, new)

    # Asked again, its condition holds: answered at once.
    assert {:ok, %{epoch: 1}} =
             :erpc.call(spare, Visor, :reconfigure, [Counter, {:replace, dead, spare}])

    # The new member serves: commits from it, and reads it.
    callers = Map.merge(callers, spawn_load([spare], 1000))
    {acks, _failed} = collect(acks, map_size(acks) + 40, [dead])
    assert %{count: count} = :erpc.call(spare, Counter, :get, [])
    assert count > 0

    # A node that is not there is unreachable: a final "no".
    assert {:error, {:unreachable, :nobody@nowhere}} =
             :erpc.call(hd(alive), Visor, :reconfigure, [Counter, {:add, :nobody@nowhere}])

    # And it tolerates a further failure: its primary dies.
    %{primary: primary, view: view} = Cluster.status(spare, Counter)
    up = new -- [primary]
    :ok = Cluster.kill_node(primary, up)

    Cluster.eventually(
      fn ->
        status = Cluster.status(hd(up), Counter)
        status.primary in up and status.view > view and status.epoch == 1
      end,
      15_000
    )

    {acks, _failed} = collect(acks, map_size(acks) + 40, [dead, primary])
    finish(up, acks, callers)
  end

  test "memory mode: 3 nodes grow to 5 and shrink back to 3 under load" do
    nodes = Cluster.start_peers(5) |> Enum.map(&elem(&1, 1))
    {first, added} = Enum.split(nodes, 3)
    :ok = Cluster.start_group(nodes, Counter, nodes: first)
    {acks, callers} = grow(nodes, first, added)

    # Back to the first 3, under load: the added nodes are left out.
    {acks, _failed} = shrink(nodes, first, added, acks)
    finish(nodes, acks, callers)
  end

  test "disk mode: 3 nodes grow to 5 under load; every node restarted finds the new configuration; back to 3",
       %{tmp_dir: tmp} do
    nodes = Cluster.start_peers(5) |> Enum.map(&elem(&1, 1))
    {first, added} = Enum.split(nodes, 3)
    opts = Cluster.disk_opts(tmp, nodes: first)
    :ok = Cluster.start_group(nodes, Counter, opts)
    {acks, callers} = grow(nodes, first, added)

    # Every acknowledged increment so far, exactly once, before the power
    # goes.
    acks = stop_callers(nodes, callers, acks)
    before = :erpc.call(hd(added), Counter, :get, [])
    assert_exactly_once(before, acks)

    # Every node restarts from its own disk as a member of epoch 1, the
    # added ones too (their stores say which member they are).
    :ok = Cluster.power_cycle(nodes, Counter, opts)
    for n <- nodes, do: assert_member(n, 1, nodes)
    assert :erpc.call(List.last(added), Counter, :get, []) == before

    # The group commits again, and shrinks back to the first 3.
    callers = spawn_load(nodes, 1000)
    {acks, []} = collect(acks, map_size(acks) + 30, [])
    {acks, _failed} = shrink(nodes, first, added, acks)

    # A removed node is added again: its store, marked removed, is moved
    # aside, and it joins as a new member in a new store.
    back = List.last(added)

    assert {:ok, %{epoch: 3, members: members}} =
             :erpc.call(hd(first), Visor, :reconfigure, [Counter, {:add, back}], 60_000)

    assert Enum.sort(members) == Enum.sort(first ++ [back])
    assert_member(back, 3, members)
    store = Cluster.store_dir(tmp, back, Counter)
    assert [_aside] = Path.wildcard(store <> ".removed-*")

    # (Callers on the nodes left out, or learning, may have had a maybe.)
    {acks, _failed} = collect(acks, map_size(acks) + 30, added)
    finish(nodes, acks, callers)
  end

  # Starts callers on every node (the spares pass theirs on to a member),
  # and grows the group to every node, asked from the first.
  defp grow(nodes, first, added) do
    for n <- added, do: assert(%{status: :spare} = Cluster.status(n, Counter))
    callers = spawn_load(nodes, 1)
    {acks, []} = collect(%{}, 40, [])

    assert {:ok, %{epoch: 1, members: members}} =
             :erpc.call(hd(first), Visor, :reconfigure, [Counter, {:set, nodes}], 60_000)

    assert Enum.sort(members) == Enum.sort(nodes)
    for n <- nodes, do: assert_member(n, 1, members)

    # Commands went on committing, through the change and after it.
    {acks, []} = collect(acks, map_size(acks) + 60, [])
    {acks, callers}
  end

  defp shrink(nodes, first, added, acks) do
    assert {:ok, %{epoch: 2, members: members}} =
             :erpc.call(List.last(added), Visor, :reconfigure, [Counter, {:set, first}], 60_000)

    assert Enum.sort(members) == Enum.sort(first)

    for n <- added do
      Cluster.eventually(fn -> Cluster.status(n, Counter).status == :removed end, 10_000)
    end

    for n <- first, do: assert_member(n, 2, members)
    collect(acks, map_size(acks) + 40, nodes -- first)
  end

  defp assert_member(node, epoch, members) do
    Cluster.eventually(
      fn ->
        status = Cluster.status(node, Counter)

        status.epoch == epoch and Enum.sort(status.members) == Enum.sort(members) and
          status.role in [:primary, :backup] and status.status == :normal and
          Enum.sort(Enum.map(status.replicas, & &1.node)) == Enum.sort(members)
      end,
      15_000
    )
  end

  defp spawn_load(nodes, first),
    do: Load.spawn_load(nodes, Counter, @callers_per_node, @commit_opts, first)

  defp collect(acks, target, may_fail), do: Load.collect(acks, target, may_fail)

  defp stop_callers(nodes, callers, acks),
    do: Load.stop_callers(nodes, callers, acks, @callers_per_node)

  defp finish(up, acks, callers), do: Load.finish(up, Counter, acks, callers, @callers_per_node)
end
