defmodule Visor.CheckpointTest do
  # Checkpoints end to end on real nodes, with a checkpoint every 5 ops and
  # small state-sync chunks: a disk-mode restart from the checkpoint, a
  # wiped disk-mode replica and a restarted memory-mode one catching up by
  # state sync, and a nondeterministic node healed from the quorum's
  # checkpoint. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter, Skewed, Watch}

  @moduletag :tmp_dir
  @checkpoint [checkpoint_every: 5, checkpoint_chunk_bytes: 64]

  test "disk: a restart replays only the log after the checkpoint; a wiped replica syncs the state",
       %{tmp_dir: tmp} do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))

    opts = fn node ->
      [nodes: nodes, storage: :disk, data_dir: Path.join(tmp, "#{node}")] ++ @checkpoint
    end

    :ok = Cluster.start_group(nodes, Counter, opts)
    for i <- 1..23, do: assert(commit(Enum.at(nodes, rem(i, 3)), {:incr, i}) == i)

    for n <- nodes do
      Cluster.eventually(fn -> Cluster.status(n, Counter).storage.checkpoint >= 20 end)
    end

    :ok = Cluster.power_cycle(nodes, Counter, opts)

    for n <- nodes do
      status = Cluster.status(n, Counter)
      # Restarted from the checkpoint: the log starts at it.
      assert status.checkpoint >= 20 and status.log_base >= 20
    end

    assert commit(hd(nodes), {:incr, :after_restart}) == 24
    Cluster.converged(nodes, Counter, :erpc.call(hd(nodes), Counter, :get, []), 10_000)

    [wiped | others] = Cluster.backups_first(nodes, Counter)
    :ok = Cluster.kill_node(wiped, others)
    File.rm_rf!(Path.join(tmp, Atom.to_string(wiped)))
    for i <- 25..36, do: assert(commit(hd(others), {:incr, i}) == i)
    status = Cluster.rejoin(wiped, others, Counter, opts)
    assert status.stats.checkpoints_installed >= 1
    assert status.log_base > 0
    assert commit(wiped, {:incr, :after_wipe}) == 37
    Cluster.converged(nodes, Counter, :erpc.call(hd(others), Counter, :get, []), 10_000)
    Cluster.eventually(fn -> Cluster.status(wiped, Counter).storage.checkpoint >= 30 end)
  end

  test "disk: checkpoints compact the WAL, and every node restarts from a compacted one",
       %{tmp_dir: tmp} do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))

    opts = fn node ->
      [nodes: nodes, storage: :disk, data_dir: Path.join(tmp, "#{node}"), wal_compact_bytes: 1] ++
        @checkpoint
    end

    :ok = Cluster.start_group(nodes, Counter, opts)
    for i <- 1..40, do: assert(commit(Enum.at(nodes, rem(i, 3)), {:incr, i}) == i)

    for n <- nodes do
      Cluster.eventually(fn -> Cluster.status(n, Counter).storage.compactions >= 2 end)
      storage = Cluster.status(n, Counter).storage
      # Only the log after the latest checkpoint is left on disk.
      assert storage.wal_size < storage.wal_bytes / 2
      # The other file is freed; the named one holds the log and the
      # zeros written ahead of it (at most 1 MiB and a page).
      files = for f <- ["wal.a", "wal.b"], do: File.stat!(Path.join(storage.data_dir, f)).size
      assert 0 in files
      assert Enum.sum(files) >= storage.wal_size
      assert Enum.sum(files) <= storage.wal_size + 1_048_576 + 4096
    end

    :ok = Cluster.power_cycle(nodes, Counter, opts)
    assert commit(hd(nodes), {:incr, :after_restart}) == 41
    state = :erpc.call(hd(nodes), Counter, :get, [])
    assert MapSet.size(state.applied) == 41
    Cluster.converged(nodes, Counter, state, 10_000)
  end

  test "memory: a restarted replica rejoins from a checkpoint", %{tmp_dir: _} do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    opts = [nodes: nodes] ++ @checkpoint
    :ok = Cluster.start_group(nodes, Counter, opts)
    for i <- 1..23, do: assert(commit(Enum.at(nodes, rem(i, 3)), {:incr, i}) == i)

    [victim | others] = Cluster.backups_first(nodes, Counter)
    :ok = Cluster.kill_node(victim, others)
    for i <- 24..30, do: assert(commit(hd(others), {:incr, i}) == i)
    status = Cluster.rejoin(victim, others, Counter, opts)
    assert status.stats.checkpoints_installed >= 1
    assert status.checkpoint >= 20 and status.log_base > 0
    assert commit(victim, {:incr, :after_rejoin}) == 31
    Cluster.converged(nodes, Counter, :erpc.call(hd(others), Counter, :get, []), 10_000)
  end

  test "memory: a nondeterministic node goes :diverged, says so, and recovers the quorum's state",
       %{tmp_dir: _} do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    opts = [nodes: nodes] ++ @checkpoint
    :ok = Cluster.start_group(nodes, Skewed, opts)
    [odd | others] = Cluster.backups_first(nodes, Skewed)
    healthy = hd(others)

    :ok = :erpc.call(odd, Watch, :forward_errors, [self()])
    :ok = :erpc.call(odd, Watch, :report_status, [Skewed, :diverged, self()])
    :erpc.call(odd, Skewed, :skew, [1])
    # Past a checkpoint (one every 5 ops): the other two agree, `odd` differs.
    for i <- 1..12, do: assert(is_integer(commit(Skewed, healthy, {:incr, i})))

    assert_receive {:visor_status, %{status: :diverged} = status, local_read}, 20_000
    # It serves nothing while its state is known to be wrong.
    assert local_read == {:error, :diverged}
    assert status.stats.checkpoint_divergence >= 1
    assert_receive {:visor_log, message}, 5_000

    assert message =~
             ~r/checkpoint at op \d+ has digest [0-9a-f]{32}, a quorum's has [0-9a-f]{32}/

    :erpc.call(odd, Skewed, :skew, [0])

    # It recovers the quorum's state, and takes part again.
    Cluster.eventually(fn -> Cluster.status(odd, Skewed).status == :normal end, 15_000)
    for i <- 13..17, do: assert(is_integer(commit(Skewed, odd, {:incr, i})))
    expected = :erpc.call(healthy, Visor, :get, [Skewed])
    assert expected.count == 17 and length(expected.ids) == 17
    Cluster.converged(nodes, Skewed, expected, 10_000)
    assert Cluster.status(odd, Skewed).stats.checkpoints_installed >= 1
  end

  defp commit(module, node, command),
    do: :erpc.call(node, module, :commit, [command, [timeout: 20_000]], 25_000)

  defp commit(node, command),
    do: :erpc.call(node, Counter, :commit, [command, [timeout: 20_000]], 25_000)
end
