defmodule Visor.QuietReviewTest do
  # Reproductions from the review of quiet groups in Visor: host wiring
  # the simulator cannot see. Each failed before its fix; they guard it.
  use ExUnit.Case, async: false

  alias Visor.Native
  alias Visor.Test.{Cluster, Counter}

  # Drives two detectors as two beacons would, each on its own clock (a
  # beacon's `now_ms` is ms since its VM started): `rounds` beats of
  # `beat` ms, every beat delivered at once.
  defp exchange(a, ta, b, tb, rounds, beat) do
    Enum.reduce(1..rounds, {ta, tb}, fn _, {ta, tb} ->
      ta = ta + beat
      tb = tb + beat

      for {_to, bytes} <- Native.detector_tick(a, ta, 0),
          do: Native.detector_beat(b, bytes, tb)

      for {_to, bytes} <- Native.detector_tick(b, tb, 0),
          do: Native.detector_beat(a, bytes, ta)

      {ta, tb}
    end)
  end

  test "a peer node restarted with the same name holds this node up again" do
    hour = 3_600_000
    # Node a and node b's first life have both been up an hour.
    a = Native.detector_new(:a@h, 100, 800, hour)
    b1 = Native.detector_new(:b@h, 100, 800, hour)
    :ok = Native.detector_add(a, :b@h)
    :ok = Native.detector_add(b1, :a@h)
    {ta, _} = exchange(a, hour, b1, hour, 20, 100)
    assert {_, ["b@h"]} = Native.detector_up(a)

    # b's VM is killed (a gets nodedown) and started again under the same
    # name: its beacon's clock starts over, near 0.
    :ok = Native.detector_down(a, :b@h, ta)
    b2 = Native.detector_new(:b@h, 100, 800, 500)
    :ok = Native.detector_add(b2, :a@h)
    # a's nodeup: b is watched already (no-op).
    :ok = Native.detector_add(a, :b@h)

    # Five seconds of beats both ways, a healthy link.
    _ = exchange(a, ta, b2, 500, 50, 100)

    assert {_, ["b@h"]} = Native.detector_up(a)
    # a echoes the largest seq it ever heard from b: the first life's, an
    # hour ahead of b2's clock, which b2 reads as "a previous life's" and
    # ignores. b2 holds a down (deaf) until its own uptime passes an hour.
    assert {_, ["a@h"]} = Native.detector_up(b2)
  end

  @tag timeout: 180_000
  test "real nodes: both backups restarted in turn (a rolling restart) keep the healthy primary, and the group goes quiet again" do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
    opts = [nodes: nodes, quiet_after_ticks: 20]
    :ok = Cluster.start_group(nodes, Counter, opts)
    assert 1 = :erpc.call(hd(nodes), Counter, :commit, [{:incr, 1}], 30_000)
    Cluster.eventually(fn -> Enum.all?(nodes, &Cluster.status(&1, Counter).quiet) end, 10_000)
    %{primary: primary, view: view} = Cluster.status(hd(nodes), Counter)
    [b, c] = nodes -- [primary]
    # Every node has run a while: longer than a restarted one will have
    # when it is judged (its beacon's clock starts again at its VM's start).
    Process.sleep(8_000)

    for backup <- [b, c] do
      :ok = Cluster.kill_node(backup, nodes -- [backup])
      Cluster.restart_peer(backup, nodes -- [backup])
      :ok = Cluster.start_group([backup], Counter, opts)
      Cluster.eventually(fn -> Cluster.status(backup, Counter).status == :normal end, 15_000)
    end

    # Nothing is wrong with the primary or any link: the group should be
    # led by the same primary, and go quiet again.
    Process.sleep(3_000)
    statuses = Enum.map(nodes, &Cluster.status(&1, Counter))
    assert Enum.map(statuses, & &1.view) == [view, view, view]
    assert Enum.all?(statuses, & &1.quiet)
  end

  test "real nodes: a member with quiet off serves with members that have it on (it answers every round no)" do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
    [_, _, off] = nodes
    # Formation does not compare quiet_after_ticks: the group starts.
    opts = fn node ->
      if node == off,
        do: [nodes: nodes],
        else: [nodes: nodes, quiet_after_ticks: 20]
    end

    :ok = Cluster.start_group(nodes, Counter, opts)
    assert 1 = :erpc.call(hd(nodes), Counter, :commit, [{:incr, 1}], 30_000)

    Cluster.eventually(fn -> Cluster.status(off, Counter).status == :normal end, 10_000)
    assert 2 = :erpc.call(off, Counter, :commit, [{:incr, 2}], 10_000)
    assert Cluster.status(off, Counter).stats.dropped_foreign_cluster == 0
  end

  defp router_pid(node),
    do: :erpc.call(node, GenServer, :whereis, [Visor.Supervisor.name(Counter, :router)])

  test "real nodes: nodeup messages a peer forges to a node's beacon crash neither it nor a quiet group's router" do
    [node] = Cluster.start_peers(1) |> Enum.map(&elem(&1, 1))
    :ok = Cluster.start_group([node], Counter, nodes: [node], quiet_after_ticks: 20)
    assert 1 = :erpc.call(node, Counter, :commit, [{:incr, 1}], 30_000)
    router = router_pid(node)
    beacon = :erpc.call(node, Process, :whereis, [Visor.Beacon])
    assert is_pid(router) and is_pid(beacon)

    # Any connected node can send to a registered name. 1100 "nodes up"
    # (or a cluster of more than 1023 real nodes) made the router hand its
    # engine more than PEERS_IDS_MAX ids: peers/2 raised, the router died
    # and its engine with it (a replica that lost its memory).
    for i <- 1..1100, do: send({Visor.Beacon, node}, {:nodeup, :"fake#{i}@nowhere"})
    Process.sleep(500)
    # The beacon takes a nodeup only for a connected node, and a router
    # hands at most 1024 ids.
    assert length(:erpc.call(node, Visor.Beacon, :up, [])) < 1024
    assert router_pid(node) == router
    assert 2 = :erpc.call(node, Counter, :commit, [{:incr, 2}], 10_000)
  end

  test "real nodes: a malformed nodeup a peer sends does not crash the beacon" do
    [node] = Cluster.start_peers(1) |> Enum.map(&elem(&1, 1))
    :ok = Cluster.start_group([node], Counter, nodes: [node], quiet_after_ticks: 20)
    beacon = :erpc.call(node, Process, :whereis, [Visor.Beacon])
    assert is_pid(beacon)
    send({Visor.Beacon, node}, {:nodeup, "not a node"})
    Process.sleep(200)
    assert :erpc.call(node, Process, :whereis, [Visor.Beacon]) == beacon
  end

  test "nodes with different node_timeout_ms: a longer timeout still beats often enough for the default one" do
    # a: the default (800 ms); b: node_timeout_ms 8000. Both healthy, the
    # link perfect. b beating once per 1000 ms made a flap it down and up.
    a = Native.detector_new(:a@h, Visor.Beacon.beat_ms(800), 800, 0)
    b = Native.detector_new(:b@h, Visor.Beacon.beat_ms(8000), 8000, 0)
    :ok = Native.detector_add(a, :b@h)
    :ok = Native.detector_add(b, :a@h)

    changes =
      Enum.reduce(1..100, 0, fn i, changes ->
        t = i * 100
        for {_, bytes} <- Native.detector_tick(a, t, 0), do: Native.detector_beat(b, bytes, t)
        for {_, bytes} <- Native.detector_tick(b, t, 0), do: Native.detector_beat(a, bytes, t)
        {changed, _} = Native.detector_up(a)
        if changed, do: changes + 1, else: changes
      end)

    # Each change would wake (and make campaign) every quiet backup on a
    # whose primary is on b.
    assert changes == 0
  end
end
