defmodule Visor.QuietTest do
  # Quiet groups on real nodes (`quiet_after_ticks:`): an idle group goes
  # quiet on every member and sends nothing; a commit from any node wakes
  # it; the node of its primary killed while it is quiet, the node-level
  # detector (`Visor.Beacon`) wakes the others, who elect a new primary
  # and commit. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  # 20 ticks of 10 ms with nothing to do, then one quiet round.
  @opts [quiet_after_ticks: 20]

  setup do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
    :ok = Cluster.start_group(nodes, Counter, [nodes: nodes] ++ @opts)
    %{nodes: nodes}
  end

  defp commit(node, command), do: :erpc.call(node, Counter, :commit, [command], 30_000)
  defp status(node), do: Cluster.status(node, Counter)

  defp await_quiet(nodes) do
    Cluster.eventually(fn -> Enum.all?(nodes, &status(&1).quiet) end, 10_000)
  end

  test "an idle group goes quiet on every member, sends nothing, and a commit from any node wakes it",
       %{nodes: [a, b, c] = nodes} do
    assert 1 = commit(a, {:incr, 1})
    await_quiet(nodes)

    sent = Enum.map(nodes, &status(&1).stats.sent)
    Process.sleep(1_000)
    # Quiet: no heartbeat, no message of the protocol at all (an awake
    # group of three sends about 80 a second).
    assert Enum.map(nodes, &status(&1).stats.sent) == sent
    assert Enum.all?(nodes, &status(&1).quiet)
    views = Enum.map(nodes, &status(&1).view)

    # A commit through a backup wakes the group; it is answered, and the
    # group goes quiet again, with no view change on the way.
    assert 2 = commit(c, {:incr, 2})
    assert 3 = commit(b, {:incr, 3})
    await_quiet(nodes)
    assert Enum.map(nodes, &status(&1).view) == views
    assert %{count: 3} = :erpc.call(a, Counter, :get, [])
  end

  @tag :tmp_dir
  test "disk mode: a quiet group's backup node is killed and restarts from its disk; the group serves and goes quiet again",
       %{tmp_dir: tmp} do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
    opts = Cluster.disk_opts(tmp, [nodes: nodes] ++ @opts)
    :ok = Cluster.start_group(nodes, Counter, opts)
    assert 1 = commit(hd(nodes), {:incr, 1})
    await_quiet(nodes)

    %{primary: primary} = status(hd(nodes))
    [backup | _] = nodes -- [primary]
    :ok = Cluster.kill_node(backup, nodes -- [backup])
    # A quiet primary that still holds a majority up stays quiet.
    assert 2 = commit(primary, {:incr, 2})

    Cluster.restart_peer(backup, nodes -- [backup])
    :ok = Cluster.start_group([backup], Counter, opts)
    Cluster.eventually(fn -> status(backup).status == :normal end, 15_000)
    assert 3 = commit(backup, {:incr, 3})
    await_quiet(nodes)
    assert %{count: 3} = :erpc.call(primary, Counter, :get, [])
  end

  test "the node of a quiet group's primary is killed: the others elect a new primary and commit",
       %{nodes: nodes} do
    assert 1 = commit(hd(nodes), {:incr, 1})
    await_quiet(nodes)
    %{primary: primary, view: view} = status(hd(nodes))
    [survivor | _] = others = nodes -- [primary]

    :ok = Cluster.kill_node(primary, others)

    # The survivors' beacons see the node down (nodedown), their quiet
    # replicas wake, and one campaigns at once.
    Cluster.eventually(
      fn ->
        s = status(survivor)
        s.status == :normal and s.primary in others and s.view > view
      end,
      15_000
    )

    assert 2 = commit(survivor, {:incr, 2})
    assert %{count: 2} = :erpc.call(survivor, Counter, :get, [])
  end
end
