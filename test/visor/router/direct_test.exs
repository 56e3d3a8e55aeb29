defmodule Visor.Router.DirectTest do
  # A keyed group's routers send to each other directly once they have
  # heard from each other, rather than by name through each node's group
  # host (one process per module per node, which many busy groups would
  # queue behind). A peer router restarted under a new pid is sent to by
  # name again (its monitor), then directly again once it is heard from.
  # Real nodes. Not async.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  defp rpc(node, m, f, args), do: :erpc.call(node, m, f, args, 60_000)

  defp router(node, group), do: rpc(node, Visor.Supervisor, :whereis, [group, :router])

  # The peer routers `node`'s router sends to directly: node => pid.
  defp direct(node, group) do
    state = rpc(node, :sys, :get_state, [router(node, group)])
    Map.new(state.peers, fn {n, {pid, _ref}} -> {n, pid} end)
  end

  defp wait_until(fun, tries \\ 200) do
    cond do
      fun.() -> :ok
      tries == 0 -> flunk("condition never held")
      true -> Process.sleep(25) && wait_until(fun, tries - 1)
    end
  end

  test "routers of a keyed group send to each other directly, and again after a peer's router restarts" do
    members = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
    [a | _] = members
    :ok = Cluster.start_groups_host(members, Counter, members: members)
    group = {Counter, :direct}
    assert {:ok, _} = rpc(a, Visor, :start_group, [group, []])

    for i <- 1..5, do: assert(rpc(a, Visor, :commit, [group, {:incr, i}]) == i)

    # The primary's router holds both backups' pids, and each backup's
    # the primary's (backups talk to the primary): the routers themselves.
    primary = rpc(a, Visor, :status, [group]).primary
    backups = members -- [primary]

    wait_until(fn ->
      direct(primary, group) == Map.new(backups, &{&1, router(&1, group)}) and
        Enum.all?(backups, &(direct(&1, group)[primary] == router(primary, group)))
    end)

    # A backup's router is killed: its group restarts on that node
    # (one_for_all), under new pids; the group keeps committing, and the
    # primary learns the new router.
    [b | _] = backups
    old = router(b, group)
    rpc(b, Process, :exit, [old, :kill])
    wait_until(fn -> router(b, group) not in [nil, old] end)

    for i <- 6..10, do: assert(rpc(primary, Visor, :commit, [group, {:incr, i}]) == i)

    wait_until(fn -> direct(primary, group)[b] == router(b, group) end)
    assert direct(b, group)[primary] == router(primary, group)

    for n <- members, do: assert(rpc(n, Visor, :get, [group]).count == 10)
  end
end
