defmodule Visor.MembershipTest do
  # Membership changes on real nodes (docs/operations.md, "Membership
  # changes"): a group of 5 shrinks to 3 while every node commits, in
  # memory and disk mode. Every acknowledged increment is applied exactly
  # once; the 3 left still tolerate one failure; the 2 left out stop
  # serving as members (their callers go on to a member); a request
  # whose condition holds is answered at once; in disk mode, every node
  # restarted after the change finds the new configuration in its store.
  # Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter, Load}
  import Load, only: [assert_exactly_once: 2]

  @callers_per_node 2
  @commit_opts [timeout: 20_000]

  @moduletag :tmp_dir

  test "memory mode: 5 nodes shrink to 3 under load; the 3 tolerate a failure" do
    nodes = Cluster.start_peers(5) |> Enum.map(&elem(&1, 1))
    :ok = Cluster.start_group(nodes, Counter, nodes: nodes)
    {keep, left_out, acks, callers} = shrink(nodes)

    # The 3 left tolerate one failure: their primary's node dies, and
    # the other two elect one of them and go on.
    %{primary: primary, view: view} = Cluster.status(hd(keep), Counter)
    alive = keep -- [primary]
    :ok = Cluster.kill_node(primary, alive ++ left_out)

    Cluster.eventually(
      fn ->
        status = Cluster.status(hd(alive), Counter)
        status.primary in alive and status.view > view and status.epoch == 1
      end,
      15_000
    )

    {acks, _failed} = collect(acks, map_size(acks) + 40, left_out ++ [primary])
    finish(alive ++ left_out, acks, callers)
  end

  test "disk mode: 5 nodes shrink to 3 under load; every node restarted finds the new configuration",
       %{tmp_dir: tmp} do
    nodes = Cluster.start_peers(5) |> Enum.map(&elem(&1, 1))
    opts = Cluster.disk_opts(tmp, nodes: nodes)
    :ok = Cluster.start_group(nodes, Counter, opts)
    {keep, left_out, acks, callers} = shrink(nodes)

    # Every acknowledged increment so far, exactly once, before the power
    # goes.
    acks = stop_callers(nodes, callers, acks)
    before = :erpc.call(hd(keep), Counter, :get, [])
    assert_exactly_once(before, acks)

    # Every node restarts from its own disk: the 3 as members of epoch
    # 1, the 2 as removed (a spare's role, their stores kept).
    :ok = Cluster.power_cycle(nodes, Counter, opts)

    for n <- keep do
      Cluster.eventually(
        fn ->
          status = Cluster.status(n, Counter)

          status.status == :normal and status.epoch == 1 and
            Enum.sort(status.members) == Enum.sort(keep)
        end,
        15_000
      )
    end

    for n <- left_out do
      assert %{status: :removed, role: :removed, epoch: 1} = Cluster.status(n, Counter)
      assert File.dir?(Cluster.store_dir(tmp, n, Counter))
    end

    # Nothing acknowledged was lost, and the group commits again, from
    # every node (the removed ones pass their calls on to a member).
    assert :erpc.call(hd(keep), Counter, :get, []) == before
    callers = spawn_load(nodes, 100)
    {acks, _failed} = collect(acks, map_size(acks) + 30, [])

    # And still tolerates one failure.
    %{primary: primary} = Cluster.status(hd(keep), Counter)
    alive = keep -- [primary]
    :ok = Cluster.kill_node(primary, alive ++ left_out)
    # (A node left out passes its callers' commits on to a member: one in
    # flight at the dying primary is a maybe, `{:member_down, primary}`.)
    {acks, _failed} = collect(acks, map_size(acks) + 30, left_out ++ [primary])
    finish(alive ++ left_out, acks, callers)
  end

  # Starts callers on every node, waits for some acknowledgements, and
  # shrinks to the first three nodes (asked from the second), with the
  # callers still committing. Returns the nodes kept, those left out,
  # and the acknowledgements so far.
  defp shrink(nodes) do
    {keep, left_out} = Enum.split(nodes, 3)
    callers = spawn_load(nodes, 1)
    {acks, []} = collect(%{}, 40, [])

    asked_at = System.monotonic_time(:millisecond)

    assert {:ok, %{epoch: 1, members: members}} =
             :erpc.call(Enum.at(keep, 1), Visor, :reconfigure, [Counter, {:set, keep}], 60_000)

    assert Enum.sort(members) == Enum.sort(keep)
    took = System.monotonic_time(:millisecond) - asked_at

    # Commands went on committing, through the change and after it.
    {acks, failed} = collect(acks, map_size(acks) + 40, left_out)

    assert Enum.all?(failed, fn {{{n, _}, _}, reason} -> n in left_out and reason == :timeout end),
           "only callers waiting on a node left out may get a maybe: #{inspect(failed)} " <>
             "(the change took #{took} ms)"

    for n <- keep do
      Cluster.eventually(fn ->
        status = Cluster.status(n, Counter)

        status.epoch == 1 and Enum.sort(status.members) == Enum.sort(keep) and
          status.role in [:primary, :backup] and
          Enum.sort(Enum.map(status.replicas, & &1.node)) == Enum.sort(keep)
      end)
    end

    for n <- left_out do
      Cluster.eventually(fn -> Cluster.status(n, Counter).status == :removed end, 10_000)
      assert %{role: :removed, epoch: 1, members: ^members} = Cluster.status(n, Counter)
    end

    # A request whose condition holds is answered at once, from any node,
    # one left out included; a node to add that is not there is
    # unreachable (adding nodes: membership_add_test.exs).
    for n <- [hd(keep) | left_out],
        request <- [{:set, Enum.reverse(keep)}, {:remove, hd(left_out)}] do
      assert {:ok, %{epoch: 1, members: ^members}} =
               :erpc.call(n, Visor, :reconfigure, [Counter, request])
    end

    assert {:error, {:unreachable, :nobody@nowhere}} =
             :erpc.call(hd(keep), Visor, :reconfigure, [Counter, {:add, :nobody@nowhere}])

    assert_raise ArgumentError, fn -> Visor.reconfigure(Counter, {:set, []}) end

    {keep, left_out, acks, callers}
  end

  defp spawn_load(nodes, first),
    do: Load.spawn_load(nodes, Counter, @callers_per_node, @commit_opts, first)

  defp collect(acks, target, may_fail), do: Load.collect(acks, target, may_fail)

  defp stop_callers(nodes, callers, acks),
    do: Load.stop_callers(nodes, callers, acks, @callers_per_node)

  defp finish(up, acks, callers), do: Load.finish(up, Counter, acks, callers, @callers_per_node)
end
