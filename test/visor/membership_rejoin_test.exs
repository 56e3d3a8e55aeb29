defmodule Visor.MembershipRejoinTest do
  # Memory mode, after a membership change, on real nodes
  # (docs/operations.md, "Membership changes", "Memory mode"): a member
  # that loses its memory rejoins in the newest epoch, whether its server
  # restarted within its VM (Visor.Lifetime remembers the newest list) or
  # its whole VM restarted (it learns the list from its peers), a node the
  # change added as well as one of the list the group was formed with.
  # Under load; every acknowledged increment is applied exactly once, and
  # the group then survives the loss of another member. Not async: real
  # nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter, Load}

  @callers_per_node 2
  @commit_opts [timeout: 20_000]

  test "servers restarted within their VMs after a growth to 4 rejoin in epoch 1; the group then survives a member's loss" do
    nodes = Cluster.start_peers(4) |> Enum.map(&elem(&1, 1))
    {first, [added]} = Enum.split(nodes, 3)
    {acks, callers} = grow(nodes, first)

    # The added node's server dies: formation alone would make it a spare
    # (it is not in :nodes); it rejoins as the member of epoch 1 it was.
    kill_server(added)
    assert_member(added, nodes)
    {acks, _failed} = collect(acks, map_size(acks) + 40, [added])

    # A backup of the list the group was formed with too.
    [backup | _] = Cluster.backups_first(first, Counter)
    kill_server(backup)
    assert_member(backup, nodes)
    {acks, _failed} = collect(acks, map_size(acks) + 40, [added, backup])

    # Both count: with one more member lost, the three left (the two
    # rejoined ones among them) are a quorum of the four.
    [lost] = nodes -- [added, backup | Enum.take(first -- [backup], 1)]
    up = nodes -- [lost]
    :ok = Cluster.kill_node(lost, up)
    {acks, _failed} = collect(acks, map_size(acks) + 40, [added, backup, lost])

    for n <- up do
      status = Cluster.status(n, Counter)
      assert status.epoch == 1 and status.status == :normal
    end

    finish(up, acks, callers)
  end

  test "whole VMs restarted after a growth to 4 rejoin in epoch 1, the added node's and a first one's; the group then survives a member's loss" do
    peers = Cluster.start_peers(4)
    nodes = Enum.map(peers, &elem(&1, 1))
    {first, [added]} = Enum.split(nodes, 3)
    {acks, callers} = grow(nodes, first)

    # The added node's VM dies and comes back: it knows nothing, and is
    # not in :nodes; its peers tell it the list it is a member of.
    callers = restart_vm(added, nodes, first, callers)
    assert_member(added, nodes)
    {acks, _failed} = collect(acks, map_size(acks) + 40, [added])

    # A node of the first list: it rejoins recovering (formation says
    # so), and follows its peers into epoch 1.
    [backup | _] = Cluster.backups_first(first, Counter)
    callers = restart_vm(backup, nodes, first, callers)
    assert_member(backup, nodes)
    {acks, _failed} = collect(acks, map_size(acks) + 40, [added, backup])

    [lost] = nodes -- [added, backup | Enum.take(first -- [backup], 1)]
    up = nodes -- [lost]
    :ok = Cluster.kill_node(lost, up)
    {acks, _failed} = collect(acks, map_size(acks) + 40, [added, backup, lost])
    finish(up, acks, callers)
  end

  # The group formed on `first`, grown to every node under load.
  defp grow(nodes, first) do
    :ok = Cluster.start_group(nodes, Counter, nodes: first)
    callers = spawn_load(nodes, 1)
    {acks, []} = collect(%{}, 40, [])

    assert {:ok, %{epoch: 1, members: members}} =
             :erpc.call(hd(first), Visor, :reconfigure, [Counter, {:set, nodes}], 60_000)

    assert Enum.sort(members) == Enum.sort(nodes)
    for n <- nodes, do: assert_member(n, nodes)
    {acks, []} = collect(acks, map_size(acks) + 40, [])
    {acks, callers}
  end

  # Kills the group's server on `node` (its supervisor restarts the
  # group's processes: the replica's memory is lost, the VM's is not).
  defp kill_server(node) do
    server = Visor.Supervisor.name(Counter, :server)
    pid = :erpc.call(node, Process, :whereis, [server])
    assert is_pid(pid)
    Process.exit(pid, :kill)

    Cluster.eventually(
      fn ->
        again = :erpc.call(node, Process, :whereis, [server])
        is_pid(again) and again != pid
      end,
      10_000
    )
  end

  # SIGKILLs `node` and starts it again under its name with the group
  # (nodes: first), and callers on it numbered apart from its earlier ones.
  defp restart_vm(node, nodes, first, callers) do
    others = nodes -- [node]
    :ok = Cluster.kill_node(node, others)
    Cluster.restart_peer(node, others)
    :ok = Cluster.start_group([node], Counter, nodes: first)
    Map.merge(callers, spawn_load([node], 1000))
  end

  defp assert_member(node, members) do
    Cluster.eventually(
      fn ->
        status = Cluster.status(node, Counter)

        status.epoch == 1 and Enum.sort(status.members) == Enum.sort(members) and
          status.role in [:primary, :backup] and status.status == :normal and
          Enum.sort(Enum.map(status.replicas, & &1.node)) == Enum.sort(members)
      end,
      20_000
    )

    assert_same_membership(node, members)
  end

  # `node`'s replica is in exactly the membership the others are in, to
  # the byte (the engine's own encoding: the change's name and the
  # incarnations and lives its entry recorded, not only the list), the
  # one all of them entered epoch 1 with.
  defp assert_same_membership(node, members) do
    memberships = Map.new(members, &{&1, Cluster.engine_membership(&1, Counter)})
    assert {1, bytes} = memberships[node]
    assert Visor.Native.decode_membership(bytes) |> elem(0) == :ok

    for {other, membership} <- memberships do
      assert membership == {1, bytes},
             "#{other}: #{inspect(membership)}, #{node}: #{inspect(bytes)}"
    end
  end

  defp spawn_load(nodes, first),
    do: Load.spawn_load(nodes, Counter, @callers_per_node, @commit_opts, first)

  defp collect(acks, target, may_fail), do: Load.collect(acks, target, may_fail)

  defp finish(up, acks, callers), do: Load.finish(up, Counter, acks, callers, @callers_per_node)
end
