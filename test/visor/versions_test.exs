defmodule Visor.VersionsTest do
  # Versioned state machines on real nodes: two versions of one module,
  # compiled here from source and hot-loaded onto the peers
  # (Visor.Test.CodeVersions), one node at a time, as a rolling upgrade
  # does. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, CodeVersions, Load}

  @moduletag :tmp_dir
  @module Visor.VersionsTest.Ledger

  # Version n of the module: the state lists every command with the op and
  # the version it ran under; the reply is that version (an integer, as
  # Visor.Test.Load's callers expect).
  defp compile(versions) do
    for n <- versions do
      CodeVersions.state_machine(@module, """
      @impl Visor
      def version, do: #{n}

      @impl Visor
      def handle_commit({:incr, id}, meta, state),
        do: {:ok, meta.version, [{meta.op, id, meta.version} | state]}
      """)
    end
  end

  defp status(node), do: Cluster.status(node, @module)
  # Reads wait longer than the default 5 s: what is asserted is which
  # version ran each command, and a run of this suite on a loaded machine
  # once saw a local read (the server busy under the callers' load) time out.
  defp local(node),
    do: :erpc.call(node, Visor, :get, [@module, [consistency: :local, timeout: 30_000]], 60_000)

  defp latest(node), do: :erpc.call(node, Visor, :get, [@module, [timeout: 30_000]], 60_000)

  defp running(nodes, version) do
    for n <- nodes do
      Cluster.eventually(fn -> status(n).version.running == version end, 10_000)
    end
  end

  # The versions the commands ran under, in op order.
  defp versions(state), do: state |> Enum.reverse() |> Enum.map(fn {_op, _id, v} -> v end)

  defp spawn_callers(node, first),
    do: :erpc.call(node, Load, :spawn_callers, [@module, 2, self(), [timeout: 20_000], first])

  defp stop_callers(pids) do
    Load.stop(pids)
    for _ <- pids, do: assert_receive({:stopped, _, _}, 20_000)
  end

  defp more_acks(acks, n), do: Load.await_acks(acks, map_size(acks) + n)

  test "a rolling upgrade from version 1 to 2 under load: the switch waits for every member, " <>
         "every replica runs each command under the same version, and a node rolled back " <>
         "stops rather than diverge, then catches up" do
    [v1, v2] = compile([1, 2])
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    for n <- nodes, do: CodeVersions.load(v1, n)
    # :critical: the rolled back node's error is expected.
    :ok = Cluster.start_group(nodes, @module, [nodes: nodes, checkpoint_every: 50], :critical)

    # A new cluster runs version 0, and switches to the version every
    # member supports.
    running(nodes, 1)
    # The primary first: it asks the others from then on.
    [first, last, primary] = Cluster.backups_first(nodes, @module)
    callers = Map.new(nodes, fn n -> {n, spawn_callers(n, 1)} end)
    acks = more_acks(%{}, 50)

    CodeVersions.load(v2, primary)
    acks = more_acks(acks, 50)
    CodeVersions.load(v2, first)

    # Two members of three support version 2: the cluster stays at 1 for
    # more than two of the primary's looks.
    Process.sleep(2_500)
    acks = more_acks(acks, 20)

    for n <- nodes do
      assert %{running: 1, blocked: nil} = status(n).version
      refute 2 in versions(local(n))
    end

    before_switch = acks
    CodeVersions.load(v2, last)
    running(nodes, 2)
    # The reports already waiting were acknowledged before the switch.
    {acks, []} = Load.drain(acks, [])
    acks = more_acks(acks, 50)
    assert status(first).version == %{running: 2, supported: 2, blocked: nil}

    # Every command acknowledged before the last member had the new code
    # ran under version 1 (the reply is the version), and some after it
    # under version 2.
    assert before_switch |> Map.values() |> Enum.uniq() == [1]
    assert 2 in Map.values(acks)

    # A rollback of one member's code after the switch: it stops at its
    # next op instead of executing version 2's commands with version 1's code.
    stop_callers(callers[first])
    CodeVersions.load(v1, first)

    blocked = Cluster.eventually(fn -> status(first).version.blocked end, 10_000)

    assert %{version: 2, op: blocked_op} = blocked
    assert status(first).version.supported == 1

    assert :erpc.call(first, Visor, :commit, [@module, {:incr, :refused}]) ==
             {:error, {:unsupported_version, 2}}

    # Reads too, local ones included: its state is behind the cluster's.
    assert :erpc.call(first, Visor, :get, [@module]) == {:error, {:unsupported_version, 2}}
    assert local(first) == {:error, {:unsupported_version, 2}}

    # The others go on; the rolled back node stays where it stopped.
    acks = more_acks(acks, 50)
    assert status(first).version.blocked == %{version: 2, op: blocked_op}

    # Upgraded again, it resumes from the op it stopped at and catches up.
    CodeVersions.load(v2, first)
    Cluster.eventually(fn -> status(first).version.blocked == nil end, 10_000)
    callers = Map.put(callers, first, spawn_callers(first, 100))
    acks = more_acks(acks, 50)

    for pids <- Map.values(callers), do: stop_callers(pids)
    {acks, []} = Load.drain(acks, [])
    final = latest(primary)
    Cluster.converged(nodes, @module, final, 10_000)

    # One order of versions on every replica: 1, then 2, never back.
    assert versions(final) |> Enum.dedup() == [1, 2]
    assert final |> Enum.map(&elem(&1, 1)) |> MapSet.new() == MapSet.new(Map.keys(acks))

    for n <- nodes do
      s = status(n)
      assert s.status == :normal
      assert s.stats.checkpoint_divergence == 0
      assert s.checkpoint > 0
    end
  end

  test "memory mode: a member restarted with the old code after the switch rejoins, " <>
         "stops where the state it recovers needs the new version, and catches up once upgraded" do
    [v1, v2] = compile([1, 2])
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    for n <- nodes, do: CodeVersions.load(v1, n)
    :ok = Cluster.start_group(nodes, @module, nodes: nodes, checkpoint_every: 5)
    running(nodes, 1)
    for i <- 1..6, do: assert(commit(Enum.at(nodes, rem(i, 3)), i) == 1)
    for n <- nodes, do: CodeVersions.load(v2, n)
    running(nodes, 2)
    for i <- 7..18, do: assert(commit(Enum.at(nodes, rem(i, 3)), i) == 2)

    # Its node dies, and comes back with the old release.
    [restarted | others] = Cluster.backups_first(nodes, @module)
    :ok = Cluster.kill_node(restarted, others)
    Cluster.restart_peer(restarted, others)
    CodeVersions.load(v1, restarted)
    # :critical: its error is expected.
    opts = [nodes: nodes, checkpoint_every: 5]
    :ok = Cluster.start_group([restarted], @module, opts, :critical)

    assert %{version: 2} = Cluster.eventually(fn -> status(restarted).version.blocked end, 15_000)

    assert status(restarted).version.running < 2
    # Its state is behind (or the initial one): not served, even locally.
    assert local(restarted) == {:error, {:unsupported_version, 2}}

    assert commit(restarted, :refused) == {:error, {:unsupported_version, 2}}
    for i <- 19..24, do: assert(commit(hd(others), i) == 2)

    CodeVersions.load(v2, restarted)
    Cluster.eventually(fn -> status(restarted).version.blocked == nil end, 10_000)
    assert commit(restarted, 25) == 2
    final = latest(hd(others))
    assert versions(final) |> Enum.dedup() == [1, 2]
    Cluster.converged(nodes, @module, final, 10_000)
  end

  test "disk mode: the version survives a restart of every node (checkpoint and log), " <>
         "and a wiped member gets it by state sync",
       %{tmp_dir: tmp} do
    [v2] = compile([2])
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))

    opts = Cluster.disk_opts(tmp, nodes: nodes, checkpoint_every: 5)

    for n <- nodes, do: CodeVersions.load(v2, n)
    :ok = Cluster.start_group(nodes, @module, opts)
    running(nodes, 2)
    for i <- 1..12, do: assert(commit(Enum.at(nodes, rem(i, 3)), i) == 2)

    for n <- nodes do
      Cluster.eventually(fn -> status(n).storage.checkpoint >= 10 end)
    end

    # Restarted from its checkpoint at a version above 0 (and the log after it).
    :ok = Cluster.kill_nodes(nodes)
    Cluster.restart_all(nodes)
    for n <- nodes, do: CodeVersions.load(v2, n)
    :ok = Cluster.start_group(nodes, @module, opts)

    for n <- nodes do
      Cluster.eventually(fn -> status(n).storage.opened == :restarted end)
      assert %{running: 2, blocked: nil} = status(n).version
      assert status(n).log_base >= 10
    end

    assert commit(hd(nodes), 13) == 2

    # A member whose disk is gone recovers the state, and the version, from
    # the others' checkpoint.
    [wiped | others] = Cluster.backups_first(nodes, @module)
    :ok = Cluster.kill_node(wiped, others)
    File.rm_rf!(Cluster.data_dir(tmp, wiped))
    for i <- 14..25, do: assert(commit(hd(others), i) == 2)
    Cluster.restart_peer(wiped, others)
    CodeVersions.load(v2, wiped)
    :ok = Cluster.start_group([wiped], @module, opts)
    Cluster.eventually(fn -> status(wiped).status == :normal end, 15_000)
    assert status(wiped).stats.checkpoints_installed >= 1
    assert %{running: 2, blocked: nil} = status(wiped).version
    assert commit(wiped, 26) == 2
    final = latest(hd(others))
    assert versions(final) |> Enum.uniq() == [2]
    Cluster.converged(nodes, @module, final, 10_000)
  end

  # A new cluster runs version 0 until its primary switches it; every
  # member's code supports version 2 from the start, so the switch comes
  # first: commands committed right after the start, on any member, hold
  # (briefly) for it rather than run under version 0.
  test "a new cluster whose members all run version 2 runs its first commands under version 2" do
    [v2] = compile([2])
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    for n <- nodes, do: CodeVersions.load(v2, n)
    :ok = Cluster.start_group(nodes, @module, nodes: nodes)

    replies =
      nodes
      |> Enum.with_index()
      |> Enum.map(fn {n, i} -> Task.async(fn -> commit(n, i) end) end)
      |> Task.await_many(10_000)

    assert replies == [2, 2, 2]
    final = latest(hd(nodes))
    assert versions(final) == [2, 2, 2]
  end

  # The primary restarted with the old code replays the switch and stops
  # there, still running the version before it: its code supports a
  # version above that one, yet it must not propose it (it cannot execute
  # the cluster's version at all), and it must not log more than its one
  # error about it.
  test "disk mode: a one-member primary restarted with the old code stops, proposes nothing, " <>
         "and logs one error",
       %{tmp_dir: tmp} do
    [v1, v2] = compile([1, 2])
    Cluster.ensure_distributed!()
    :ok = Visor.Lifetime.forget(@module)
    on_exit(fn -> CodeVersions.unload(@module) end)
    opts = [nodes: [node()], storage: :disk, data_dir: tmp]

    CodeVersions.load(v2)
    start_supervised!({@module, opts}, id: :new_code)
    Cluster.eventually(fn -> Visor.status(@module).version.running == 2 end, 10_000)
    assert Visor.commit(@module, {:incr, 1}) == 2
    :ok = stop_supervised(:new_code)

    CodeVersions.load(v1)

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        start_supervised!({@module, opts}, id: :old_code)
        Cluster.eventually(fn -> Visor.status(@module).version.blocked != nil end, 10_000)
        # Three version ticks.
        Process.sleep(3_500)
      end)

    assert %{running: running, supported: 1, blocked: %{version: 2}} =
             Visor.status(@module).version

    assert running < 1
    refute log =~ "the switch to state machine version"
    assert length(String.split(log, "the replica stops executing")) == 2
  end

  defp commit(node, i), do: :erpc.call(node, Visor, :commit, [@module, {:incr, i}])
end
