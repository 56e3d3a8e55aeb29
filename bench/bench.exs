# `make bench`: a local 3-node cluster (BENCH_NODES=5: five); Visor in memory mode and in disk
# mode against Mnesia on the same nodes, with the distribution round trip
# and the fdatasync latency of the filesystem under the data directory
# measured in the same run as the physical floors. Prints a table and
# writes bench/results/<time>.json. Every throughput run also has
# `cpu_us_per_op`: the CPU it cost, summed over the nodes' whole OS
# processes (callers included), per op; `targets.cpu_us_per_op_at_256`
# puts memory mode, disk mode and Mnesia side by side.
#
# On a small VM the back-to-back ping-pong is bimodal: about 12 µs in runs
# where every vCPU happens to stay awake between messages, 70-130 µs where
# they halt (waking a halted vCPU is what costs). Read the ratios with the
# round trip they were divided by.
#
#     mix run bench/bench.exs            # BENCH_SECONDS=3 per throughput run
#     BENCH_DATA_DIR=/mnt/ssd/visor mix run bench/bench.exs   # disk mode's data_dir
#
# `mix run bench/bench.exs pipeline` (`make bench-pipeline`) measures one
# process pipelining commits (Visor.pipeline/3) against 64 synchronous
# callers, memory mode, in one run, prints the ratio and writes
# bench/results/pipeline-<time>.json; nothing else.
helpers = Code.require_file("../scripts/local_cluster.exs", __DIR__)
Code.require_file("support.exs", __DIR__)
profile = Code.require_file("profile.exs", __DIR__)
alias Visor.Scripts.LocalCluster
alias Visor.Bench.Support

seconds = String.to_integer(System.get_env("BENCH_SECONDS", "3"))
sequential_n = String.to_integer(System.get_env("BENCH_SEQUENTIAL", "3000"))
levels = [1, 16, 64, 256]
# BENCH_NODES=5: the same with five members (and Mnesia on five nodes).
names = Enum.take(~w(a b c d e), String.to_integer(System.get_env("BENCH_NODES", "3")))
# Disk mode's stores (one directory per node), emptied before and after.
data_dir = Path.expand(System.get_env("BENCH_DATA_DIR", "bench/tmp/data"))
fsync_n = String.to_integer(System.get_env("BENCH_FSYNCS", "2000"))

kv =
  defmodule Visor.Bench.KV do
    use Visor

    @impl Visor
    def initial_state(_opts), do: %{}

    @impl Visor
    def handle_commit({:put, key, value}, state), do: {:ok, :ok, Map.put(state, key, value)}
  end

# The same state machine in disk mode (a node runs one group per module).
disk_kv =
  defmodule Visor.Bench.DiskKV do
    use Visor

    @impl Visor
    def initial_state(_opts), do: %{}

    @impl Visor
    def handle_commit({:put, key, value}, state), do: {:ok, :ok, Map.put(state, key, value)}
  end

worker =
  defmodule Visor.Bench.Worker do
    @moduledoc false
    # Runs on the peers (loaded with :code.load_binary/3).

    def start_echo, do: spawn(fn -> echo() end)

    defp echo do
      receive do
        {from, message} -> send(from, message)
      end

      echo()
    end

    # Send/receive ping-pong with a process on another node: µs per round trip.
    def ping(echo, n) do
      for _ <- 1..n do
        t0 = System.monotonic_time()
        send(echo, {self(), :ping})

        receive do
          :ping -> :ok
        end

        System.convert_time_unit(System.monotonic_time() - t0, :native, :nanosecond) / 1000
      end
    end

    def op(:visor, key), do: Visor.commit(Visor.Bench.KV, {:put, key, key}, timeout: 10_000)

    def op(:visor_disk, key),
      do: Visor.commit(Visor.Bench.DiskKV, {:put, key, key}, timeout: 10_000)

    def op(:mnesia, key) do
      {:atomic, :ok} = :mnesia.sync_transaction(fn -> :mnesia.write({:bench_kv, key, key}) end)
      :ok
    end

    # One caller, one operation at a time: µs per operation; at most `n`
    # operations or `max_ms` of them, whichever comes first.
    def sequential(kind, n, max_ms \\ 15_000) do
      key = {node(), :sequential}
      deadline = System.monotonic_time(:millisecond) + max_ms
      sequential(kind, key, n, deadline, [])
    end

    defp sequential(kind, key, n, deadline, acc) do
      if n == 0 or System.monotonic_time(:millisecond) > deadline do
        acc
      else
        t0 = System.monotonic_time()
        :ok = op(kind, key)
        us = System.convert_time_unit(System.monotonic_time() - t0, :native, :nanosecond) / 1000
        sequential(kind, key, n - 1, deadline, [us | acc])
      end
    end

    # One process that waits for :go, then pipelines `{:put, ...}` for
    # `duration_ms`, at most `window` unanswered, and reports {:done, ops,
    # errors, []} with the answers that came in time; it waits for the
    # rest before it reports, so that nothing of its load outlives the run.
    def spawn_pipeliner(window, report_to, duration_ms) do
      [
        spawn(fn ->
          receive do
            :go -> :ok
          end

          deadline = System.monotonic_time(:millisecond) + duration_ms
          {ops, errors, outstanding} = pipeline_loop(window, deadline, 0, 0, 0)
          for _ <- 1..outstanding//1, do: pipeline_answer()
          send(report_to, {:done, ops, errors, []})
        end)
      ]
    end

    defp pipeline_loop(window, deadline, ops, errors, outstanding) do
      cond do
        System.monotonic_time(:millisecond) >= deadline ->
          {ops, errors, outstanding}

        outstanding < window ->
          Visor.pipeline(Visor.Bench.KV, {:put, {node(), :pipeline}, ops}, timeout: 10_000)
          pipeline_loop(window, deadline, ops, errors, outstanding + 1)

        pipeline_answer() == :ok ->
          pipeline_loop(window, deadline, ops + 1, errors, outstanding - 1)

        true ->
          pipeline_loop(window, deadline, ops, errors + 1, outstanding - 1)
      end
    end

    defp pipeline_answer do
      receive do
        {ref, :ok} when is_reference(ref) -> :ok
        {ref, _error} when is_reference(ref) -> :error
        {:DOWN, _ref, :process, _, _} -> :error
      end
    end

    # `count` callers that wait for :go, then run back to back for
    # `duration_ms` and report {:done, ops, errors, latencies_us}.
    def spawn_callers(kind, count, report_to, duration_ms) do
      for i <- 1..count//1 do
        spawn(fn ->
          receive do
            :go -> :ok
          end

          deadline = System.monotonic_time(:millisecond) + duration_ms
          {ops, errors, lat} = loop(kind, {node(), i}, deadline, 0, 0, [])
          send(report_to, {:done, ops, errors, lat})
        end)
      end
    end

    defp loop(kind, key, deadline, ops, errors, lat) do
      if System.monotonic_time(:millisecond) >= deadline do
        {ops, errors, lat}
      else
        t0 = System.monotonic_time()
        result = op(kind, key)
        us = System.convert_time_unit(System.monotonic_time() - t0, :native, :nanosecond) / 1000

        case result do
          :ok -> loop(kind, key, deadline, ops + 1, errors, [us | lat])
          _ -> loop(kind, key, deadline, ops, errors + 1, lat)
        end
      end
    end
  end

defmodule Bench do
  # What a replica's group commit pays at least once per batch: append a
  # small record to a file under `dir`, then fdatasync it (:file.datasync/1
  # on a raw file). µs per write + datasync, at most `n` or 10 s of them.
  def fsync_latency(dir, n) do
    File.mkdir_p!(dir)
    path = Path.join(dir, "fsync_probe")
    {:ok, file} = :file.open(path, [:write, :raw, :binary])
    record = :binary.copy(<<0xAB>>, 256)
    deadline = System.monotonic_time(:millisecond) + 10_000

    samples =
      Enum.reduce_while(1..n, [], fn _, acc ->
        t0 = System.monotonic_time()
        :ok = :file.write(file, record)
        :ok = :file.datasync(file)
        us = System.convert_time_unit(System.monotonic_time() - t0, :native, :nanosecond) / 1000
        acc = [us | acc]
        if System.monotonic_time(:millisecond) > deadline, do: {:halt, acc}, else: {:cont, acc}
      end)

    :ok = :file.close(file)
    File.rm!(path)
    samples
  end

  # A percentile is reported only with enough samples to mean something.
  def summary(samples) do
    sorted = Enum.sort(samples)
    n = length(sorted)

    %{
      n: n,
      p50_us: round1(Support.percentile(sorted, 0.50)),
      p99_us: if(n >= 100, do: round1(Support.percentile(sorted, 0.99))),
      p999_us: if(n >= 1000, do: round1(Support.percentile(sorted, 0.999)))
    }
  end

  def round1(nil), do: nil
  def round1(x), do: Float.round(x * 1.0, 1)

  # Spreads `callers` over the nodes round-robin, runs them for `seconds`.
  def throughput(kind, nodes, callers, seconds) do
    per_node =
      Enum.frequencies(for i <- 0..(callers - 1), do: Enum.at(nodes, rem(i, length(nodes))))

    pids =
      Enum.flat_map(per_node, fn {node, count} ->
        :erpc.call(node, Visor.Bench.Worker, :spawn_callers, [kind, count, self(), seconds * 1000])
      end)

    run(pids, callers, seconds)
  end

  # One process on `node` pipelining, at most `window` unanswered.
  def pipelined(node, window, seconds) do
    pids =
      :erpc.call(node, Visor.Bench.Worker, :spawn_pipeliner, [window, self(), seconds * 1000])

    Map.put(run(pids, 1, seconds), :window, window)
  end

  # Also the CPU the run cost, summed over the nodes (their whole OS
  # processes: callers, servers, engines, distribution), per op.
  # And where it went on each node (Visor.Bench.Profile).
  defp run(pids, callers, seconds) do
    ticks_per_s = Visor.Bench.Support.clock_ticks_per_s()
    cpu_before = Visor.Bench.Support.nodes_cpu_s(ticks_per_s)

    sample = fn ->
      Map.new(Node.list(), &{&1, :erpc.call(&1, Visor.Bench.Profile, :sample, [ticks_per_s])})
    end

    profile_before = sample.()
    t0 = System.monotonic_time(:millisecond)
    Enum.each(pids, &send(&1, :go))

    {ops, errors, lat} =
      Enum.reduce(pids, {0, 0, []}, fn _, {o, e, l} ->
        receive do
          {:done, ops, errors, lat} -> {o + ops, e + errors, lat ++ l}
        after
          seconds * 1000 + 30_000 -> raise "a bench caller did not report"
        end
      end)

    cpu_s = Visor.Bench.Support.nodes_cpu_s(ticks_per_s) - cpu_before
    elapsed_s = (System.monotonic_time(:millisecond) - t0) / 1000

    profile =
      for {node, after_} <- sample.(), into: %{} do
        {Atom.to_string(node),
         Visor.Bench.Profile.difference(profile_before[node], after_, elapsed_s)}
      end

    Map.merge(summary(lat), %{
      callers: callers,
      ops_per_s: round(ops / seconds),
      errors: errors,
      cpu_us_per_op: if(ops > 0, do: Float.round(cpu_s * 1_000_000 / ops, 1)),
      profile: profile
    })
  end

  def fmt(nil), do: "-"
  def fmt(us) when us >= 1000, do: "#{Float.round(us / 1000, 2)} ms"
  def fmt(us), do: "#{round(us)} µs"
end

started = System.monotonic_time(:millisecond)

# The pipeline mode: one pipelining process against 64 synchronous
# callers (as `make bench` spreads them, and all on the pipeliner's node),
# in one run, on one memory-mode cluster.
if System.argv() == ["pipeline"] do
  window = String.to_integer(System.get_env("BENCH_PIPELINE_WINDOW", "4096"))
  IO.puts("Visor pipeline bench: 3 local nodes, #{seconds} s per run, memory mode")
  :ok = LocalCluster.start_distribution("visor_bench")
  nodes = LocalCluster.start_nodes(["a", "b", "c"], :error)
  :ok = LocalCluster.load_modules(nodes, [helpers, profile, kv, worker])
  LocalCluster.start_group(nodes, Visor.Bench.KV, nodes: nodes)
  primary = LocalCluster.status(hd(nodes), Visor.Bench.KV).primary
  backup = hd(nodes -- [primary])

  LocalCluster.wait_until(
    fn -> Enum.all?(nodes, &LocalCluster.status(&1, Visor.Bench.KV).pool.batches) end,
    10_000
  )

  Support.progress("warming up (64 callers, one pipelining process)")
  _ = Bench.throughput(:visor, nodes, 64, 1)
  _ = Bench.pipelined(backup, window, 1)

  runs = [
    {"64 synchronous callers, spread over the nodes", :sync_64_spread,
     fn -> Bench.throughput(:visor, nodes, 64, seconds) end},
    {"64 synchronous callers, on a backup's node", :sync_64_backup,
     fn -> Bench.throughput(:visor, [backup], 64, seconds) end},
    {"1 pipelining process, on a backup's node", :pipeline_backup,
     fn -> Bench.pipelined(backup, window, seconds) end},
    {"1 pipelining process, on the primary's node", :pipeline_primary,
     fn -> Bench.pipelined(primary, window, seconds) end}
  ]

  results =
    for {label, key, run} <- runs, into: %{} do
      r = run.()
      Support.progress("#{label}: #{r.ops_per_s} commits/s (#{r.errors} errors)")
      {key, Map.put(r, :label, label)}
    end

  for n <- nodes, do: :erpc.call(n, :init, :stop, [])
  LocalCluster.wait_until(fn -> Enum.all?(nodes, &(&1 not in Node.list())) end, 30_000)

  # The headline: the pipeliner's worse placement against the synchronous
  # callers' better one.
  pipe = min(results.pipeline_backup.ops_per_s, results.pipeline_primary.ops_per_s)
  sync = max(results.sync_64_spread.ops_per_s, results.sync_64_backup.ops_per_s)
  ratio = Float.round(pipe / max(sync, 1), 2)

  IO.puts("\nOne pipelining process against 64 synchronous callers (window #{window})")
  IO.puts(String.duplicate("-", 78))

  for {_label, key, _} <- runs do
    r = results[key]
    IO.puts(String.pad_trailing(r.label, 50) <> String.pad_leading("#{r.ops_per_s}/s", 14))
  end

  IO.puts(
    "ratio (worse pipelining placement / better synchronous one): #{ratio}x (target 1x): " <>
      if(ratio >= 1, do: "met", else: "NOT met")
  )

  env = Support.environment(%{seconds_per_run: seconds})
  result = Map.merge(results, %{environment: env, ratio: ratio, ratio_target: 1, window: window})
  IO.puts("\nWrote #{Support.write_result("pipeline-", result)}")
  System.halt(0)
end

IO.puts("Visor bench: #{length(names)} local nodes, #{seconds} s per throughput run")

File.rm_rf!(data_dir)
Support.progress("fdatasync latency under #{data_dir} (#{fsync_n} appends of 256 B + datasync)")
fsync = Bench.summary(Bench.fsync_latency(data_dir, fsync_n))

Support.progress("starting nodes #{Enum.join(names, ", ")}")
:ok = LocalCluster.start_distribution("visor_bench")
nodes = LocalCluster.start_nodes(names, :error)
[a, b | _] = nodes
:ok = LocalCluster.load_modules(nodes, [helpers, profile, kv, disk_kv, worker])

Support.progress("distribution round trip (send/receive ping-pong a <-> b)")
echo = :erpc.call(b, Visor.Bench.Worker, :start_echo, [])
_warmup = :erpc.call(a, Visor.Bench.Worker, :ping, [echo, 500])
rtt = Bench.summary(:erpc.call(a, Visor.Bench.Worker, :ping, [echo, 5000]))

Support.progress("Visor: forming the cluster")
LocalCluster.start_group(nodes, Visor.Bench.KV, nodes: nodes)
primary = LocalCluster.status(a, Visor.Bench.KV).primary
backup = hd(nodes -- [primary])

Support.progress("Visor: #{sequential_n} sequential commits on the primary's node")
_warmup = :erpc.call(primary, Visor.Bench.Worker, :sequential, [:visor, 300])

visor_seq_primary =
  Bench.summary(:erpc.call(primary, Visor.Bench.Worker, :sequential, [:visor, sequential_n]))

Support.progress("Visor: up to #{sequential_n} sequential commits (15 s) on a backup's node")

visor_seq_backup =
  Bench.summary(:erpc.call(backup, Visor.Bench.Worker, :sequential, [:visor, sequential_n]))

# Registers the client sessions every level needs, outside the measurements.
Support.progress("Visor: warming up 256 callers")
_ = Bench.throughput(:visor, nodes, 256, 1)

# One throughput run per level of concurrency, with progress as it goes.
throughput_levels = fn system, label, unit ->
  for n <- levels do
    r = Bench.throughput(system, nodes, n, seconds)

    Support.progress(
      "#{label}: #{n} callers: #{r.ops_per_s} #{unit}/s, p50 #{Bench.fmt(r.p50_us)}"
    )

    r
  end
end

visor_tp = throughput_levels.(:visor, "Visor", "commits")

# The same runs in disk mode: each node's store in its own directory.
Support.progress("Visor disk mode: forming the cluster (stores in #{data_dir})")

LocalCluster.start_group(nodes, Visor.Bench.DiskKV, fn node ->
  [nodes: nodes, storage: :disk, data_dir: Path.join(data_dir, Atom.to_string(node))]
end)

disk_primary = LocalCluster.status(a, Visor.Bench.DiskKV).primary
disk_backup = hd(nodes -- [disk_primary])

Support.progress(
  "Visor disk mode: up to #{sequential_n} sequential commits (15 s) on the primary's node"
)

_warmup = :erpc.call(disk_primary, Visor.Bench.Worker, :sequential, [:visor_disk, 300])

disk_seq_primary =
  Bench.summary(
    :erpc.call(disk_primary, Visor.Bench.Worker, :sequential, [:visor_disk, sequential_n])
  )

Support.progress(
  "Visor disk mode: up to #{sequential_n} sequential commits (15 s) on a backup's node"
)

disk_seq_backup =
  Bench.summary(
    :erpc.call(disk_backup, Visor.Bench.Worker, :sequential, [:visor_disk, sequential_n])
  )

Support.progress("Visor disk mode: warming up 256 callers")
_ = Bench.throughput(:visor_disk, nodes, 256, 1)
disk_tp = throughput_levels.(:visor_disk, "Visor disk", "commits")

disk_storage =
  for n <- nodes, into: %{} do
    {n, Map.take(LocalCluster.status(n, Visor.Bench.DiskKV).storage, [:syncs, :wal_bytes])}
  end

Support.progress("Mnesia: ram_copies table on #{Enum.join(names, ", ")}")

for n <- nodes do
  :ok = :erpc.call(n, :application, :set_env, [:mnesia, :dir, ~c"/tmp/visor_bench_mnesia_#{n}"])
  :ok = :erpc.call(n, :mnesia, :start, [])
end

{:ok, _} = :erpc.call(a, :mnesia, :change_config, [:extra_db_nodes, nodes -- [a]])

{:atomic, :ok} =
  :erpc.call(a, :mnesia, :create_table, [
    :bench_kv,
    [ram_copies: nodes, attributes: [:key, :value]]
  ])

for n <- nodes, do: :ok = :erpc.call(n, :mnesia, :wait_for_tables, [[:bench_kv], 10_000])

Support.progress("Mnesia: #{sequential_n} sequential sync_transaction writes on a")
_warmup = :erpc.call(a, Visor.Bench.Worker, :sequential, [:mnesia, 300])

mnesia_seq =
  Bench.summary(:erpc.call(a, Visor.Bench.Worker, :sequential, [:mnesia, sequential_n]))

_ = Bench.throughput(:mnesia, nodes, 256, 1)

mnesia_tp = throughput_levels.(:mnesia, "Mnesia", "writes")

for n <- nodes, do: :erpc.call(n, :init, :stop, [])
# The nodes' stores go with them (their locks are released as they exit).
LocalCluster.wait_until(fn -> Enum.all?(nodes, &(&1 not in Node.list())) end, 30_000)
File.rm_rf!(data_dir)

# ---- Report ---------------------------------------------------------------

env = Support.environment(%{seconds_per_run: seconds, nodes: length(nodes)})

IO.puts("\nLatency (one caller, one operation at a time)")
IO.puts(String.duplicate("-", 78))

IO.puts(
  String.pad_trailing("", 44) <>
    Enum.map_join(["p50", "p99", "p999", "samples"], &String.pad_leading(&1, 11))
)

for {label, s} <- [
      {"distribution round trip (ping-pong)", rtt},
      {"fdatasync (256 B append + datasync)", fsync},
      {"Visor commit, caller on the primary's node", visor_seq_primary},
      {"Visor commit, caller on a backup's node", visor_seq_backup},
      {"Visor disk commit, primary's node", disk_seq_primary},
      {"Visor disk commit, a backup's node", disk_seq_backup},
      {"Mnesia sync_transaction write (ram_copies)", mnesia_seq}
    ] do
  IO.puts(
    String.pad_trailing(label, 44) <>
      Enum.map_join([s.p50_us, s.p99_us, s.p999_us], &String.pad_leading(Bench.fmt(&1), 11)) <>
      String.pad_leading("#{s.n}", 11)
  )
end

IO.puts("\nThroughput (callers spread over the #{length(nodes)} nodes, #{seconds} s each)")
IO.puts(String.duplicate("-", 78))

IO.puts(
  String.pad_trailing("callers", 8) <>
    Enum.map_join(
      ["memory ops/s", "p50", "p99", "disk ops/s", "p50", "p99", "Mnesia ops/s", "p50", "p99"],
      &String.pad_leading(&1, 13)
    )
)

for {v, d, m} <- Enum.zip([visor_tp, disk_tp, mnesia_tp]) do
  IO.puts(
    String.pad_trailing("#{v.callers}", 8) <>
      Enum.map_join(
        Enum.flat_map(
          [v, d, m],
          &["#{&1.ops_per_s}", Bench.fmt(&1.p50_us), Bench.fmt(&1.p99_us)]
        ),
        &String.pad_leading(&1, 13)
      )
  )
end

# Memory mode's target: one caller's commit p50 within 4 round trips.
memory_ratio = Float.round(visor_seq_primary.p50_us / rtt.p50_us, 2)

memory_targets = %{
  commit_p50_us: visor_seq_primary.p50_us,
  rtt_p50_us: rtt.p50_us,
  commit_vs_rtt: memory_ratio,
  commit_vs_rtt_target: 4,
  commit_vs_rtt_met: memory_ratio <= 4
}

IO.puts("\nMemory mode against its target")
IO.puts(String.duplicate("-", 78))

IO.puts(
  "commit p50 (caller on the primary's node) #{Bench.fmt(visor_seq_primary.p50_us)} vs " <>
    "RTT p50 #{Bench.fmt(rtt.p50_us)} = #{memory_ratio}x (target 4x): " <>
    if(memory_targets.commit_vs_rtt_met, do: "met", else: "NOT met")
)

if rtt.p50_us < 30 do
  IO.puts(
    "(this run's ping-pong ran with every vCPU awake, about 12 µs a round trip; " <>
      "Mnesia's write took #{Float.round(mnesia_seq.p50_us / rtt.p50_us, 1)}x it: " <>
      "see the comment at the top of bench/bench.exs)"
  )
end

# The disk-mode targets: one caller's commit within two rounds of
# (fdatasync + network round trip), the floor of a commit that a backup
# and the primary must both make durable; and at 256 callers, at least
# three times Mnesia's throughput.
floor_us = 2 * (fsync.p50_us + rtt.p50_us)
disk_256 = List.last(disk_tp)
mnesia_256 = List.last(mnesia_tp)
ratio_256 = Float.round(disk_256.ops_per_s / max(mnesia_256.ops_per_s, 1), 2)

targets = %{
  disk_commit_p50_us: disk_seq_primary.p50_us,
  two_fsync_plus_rtt_p50_us: Float.round(floor_us, 1),
  disk_commit_p50_within_target: disk_seq_primary.p50_us <= floor_us,
  memory: memory_targets,
  disk_ops_per_s_at_256: disk_256.ops_per_s,
  mnesia_ops_per_s_at_256: mnesia_256.ops_per_s,
  disk_vs_mnesia_at_256: ratio_256,
  disk_vs_mnesia_at_256_target: 3,
  disk_vs_mnesia_at_256_met: ratio_256 >= 3,
  # CPU per op at the highest level, summed over the nodes' OS
  # processes (callers included, as Mnesia's runs include theirs).
  cpu_us_per_op_at_256: %{
    memory: List.last(visor_tp).cpu_us_per_op,
    disk: disk_256.cpu_us_per_op,
    mnesia: mnesia_256.cpu_us_per_op
  }
}

IO.puts("\nDisk mode against its targets")
IO.puts(String.duplicate("-", 78))

IO.puts(
  "commit p50 (caller on the primary's node) #{Bench.fmt(disk_seq_primary.p50_us)} vs " <>
    "2 x (fdatasync p50 #{Bench.fmt(fsync.p50_us)} + RTT p50 #{Bench.fmt(rtt.p50_us)}) = " <>
    "#{Bench.fmt(floor_us)}: #{if targets.disk_commit_p50_within_target, do: "met", else: "NOT met"}"
)

IO.puts(
  "throughput at 256 callers: #{disk_256.ops_per_s}/s vs Mnesia #{mnesia_256.ops_per_s}/s = " <>
    "#{ratio_256}x (target 3x): #{if targets.disk_vs_mnesia_at_256_met, do: "met", else: "NOT met"}"
)

IO.puts("\nWhere memory mode's CPU went at #{List.last(visor_tp).callers} callers, by node")

for {node, p} <- Enum.sort(List.last(visor_tp).profile) do
  IO.puts(
    "#{node}: threads #{inspect(p.thread_cpu_pct)}, reductions/s #{inspect(p.reductions_per_s)}"
  )
end

IO.puts(
  "CPU per op at #{List.last(visor_tp).callers} callers, all #{length(nodes)} nodes (callers included): " <>
    "memory #{targets.cpu_us_per_op_at_256.memory} µs, disk #{targets.cpu_us_per_op_at_256.disk} µs, " <>
    "Mnesia #{targets.cpu_us_per_op_at_256.mnesia} µs"
)

errors = Enum.sum(Enum.map(visor_tp ++ disk_tp ++ mnesia_tp, & &1.errors))
if errors > 0, do: IO.puts("\n#{errors} operations failed (counted out of ops/s)")

result = %{
  environment: env,
  distribution_round_trip: rtt,
  # Relative when inside the project: results do not name the machine's paths.
  fdatasync: Map.put(fsync, :data_dir, Path.relative_to_cwd(data_dir)),
  visor: %{
    sequential_on_primary: visor_seq_primary,
    sequential_on_backup: visor_seq_backup,
    throughput: visor_tp
  },
  visor_disk: %{
    sequential_on_primary: disk_seq_primary,
    sequential_on_backup: disk_seq_backup,
    throughput: disk_tp,
    storage: Map.new(disk_storage, fn {n, s} -> {Atom.to_string(n), s} end)
  },
  targets: targets,
  mnesia: %{sequential: mnesia_seq, throughput: mnesia_tp}
}

path = Support.write_result("", result)
elapsed = div(System.monotonic_time(:millisecond) - started, 1000)
IO.puts("\nWrote #{path} (#{elapsed} s in all)")
