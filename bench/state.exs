# `make bench-state`: what a checkpoint of a large application state costs
# the commits around it (memory mode, 3 local nodes).
#
#     mix run bench/state.exs                         # both states, 100 MB each
#     BENCH_STATE_KINDS=map BENCH_STATE_ENTRIES=100000 mix run bench/state.exs   # a quick run
#
# Each kind runs a group of its own whose `initial_state/1` builds the
# state on every node (no commits needed to fill it):
#
#   * `map`: a map of BENCH_STATE_ENTRIES (default 1,000,000) integer keys,
#     each a binary of BENCH_STATE_VALUE_BYTES (default 90) bytes: about
#     100 MB encoded; a commit replaces one entry;
#   * `binary`: `%{blob: <BENCH_STATE_MB MB binary>, n: counter}` (default
#     100); a commit bumps the counter.
#
# One caller per node commits back to back, with BENCH_STATE_PACE_MS
# (default 20) between commits, for BENCH_STATE_SECONDS (default 30), with
# `checkpoint_every: BENCH_STATE_EVERY` (default 500). Every node's
# `[:visor, :checkpoint, :taken]` event (the test double of `:telemetry`,
# test/support/telemetry.erl, loaded on the peers) marks when its server
# was asked for a checkpoint and when it handed it to the engine; a commit
# *overlaps a checkpoint* when it ran, on its own node, between the
# request and the hand-off plus BENCH_STATE_GRACE_MS (default 250: the
# engine copies and checksums the state after the hand-off). The table gives
# p50/p99/max of the other commits (normal) and of those, their ratio, and
# each node's peak resident set (VmHWM) and its resident set at the end
# (VmRSS). Writes bench/results/state-<time>.json.
helpers = Code.require_file("../scripts/local_cluster.exs", __DIR__)
Code.require_file("support.exs", __DIR__)
alias Visor.Scripts.LocalCluster
alias Visor.Bench.Support

env_int = fn name, default -> String.to_integer(System.get_env(name, to_string(default))) end
kinds = System.get_env("BENCH_STATE_KINDS", "map,binary") |> String.split(",", trim: true)
entries = env_int.("BENCH_STATE_ENTRIES", 1_000_000)
value_bytes = env_int.("BENCH_STATE_VALUE_BYTES", 90)
megabytes = env_int.("BENCH_STATE_MB", 100)
pace_ms = env_int.("BENCH_STATE_PACE_MS", 20)
seconds = env_int.("BENCH_STATE_SECONDS", 30)
every = env_int.("BENCH_STATE_EVERY", 500)
grace_ms = env_int.("BENCH_STATE_GRACE_MS", 250)

map_state =
  defmodule Visor.Bench.MapState do
    use Visor

    @impl Visor
    def initial_state({entries, value_bytes}) do
      value = :binary.copy("v", value_bytes)
      Map.new(1..entries, &{&1, value})
    end

    @impl Visor
    def handle_commit({:put, key, value}, meta, state),
      do: {:ok, meta.op, Map.put(state, key, value)}
  end

binary_state =
  defmodule Visor.Bench.BinaryState do
    use Visor

    @impl Visor
    def initial_state(megabytes), do: %{blob: :binary.copy("b", megabytes * 1_000_000), n: 0}

    @impl Visor
    def handle_commit({:put, _key, _value}, meta, state),
      do: {:ok, meta.op, %{state | n: state.n + 1}}
  end

worker =
  defmodule Visor.Bench.StateWorker do
    @moduledoc false
    # Runs on the peers.

    # Sends {:checkpoint, node, op, requested, handed} (monotonic µs) to
    # `collector` for every checkpoint this node's server takes.
    def watch(collector) do
      handler = fn _event, measurements, metadata, _config ->
        now = System.monotonic_time(:microsecond)
        elapsed = Map.get(measurements, :elapsed, measurements.duration)
        elapsed = System.convert_time_unit(elapsed, :native, :microsecond)
        send(collector, {:checkpoint, node(), metadata.op, now - elapsed, now, measurements})
      end

      # :telemetry is the test double, loaded on the peers only.
      apply(:telemetry, :attach, [
        {__MODULE__, collector},
        [:visor, :checkpoint, :taken],
        handler,
        nil
      ])
    end

    # One caller: back to back commits for `duration_ms`, `pace_ms` apart;
    # reports {:done, node, [{started_us, latency_us, result}]}.
    def spawn_caller(module, report_to, duration_ms, pace_ms) do
      spawn(fn ->
        receive do
          :go -> :ok
        end

        deadline = System.monotonic_time(:millisecond) + duration_ms
        send(report_to, {:done, node(), loop(module, deadline, pace_ms, 0, [])})
      end)
    end

    defp loop(module, deadline, pace_ms, i, acc) do
      if System.monotonic_time(:millisecond) >= deadline do
        acc
      else
        t0 = System.monotonic_time(:microsecond)
        result = Visor.commit(module, {:put, rem(i, 1000) + 1, "w#{i}"}, timeout: 60_000)
        t1 = System.monotonic_time(:microsecond)
        if pace_ms > 0, do: Process.sleep(pace_ms)
        loop(module, deadline, pace_ms, i + 1, [{t0, t1 - t0, result} | acc])
      end
    end

    # Peak and current resident set of this VM, in MB.
    def memory do
      status = File.read!("/proc/self/status")

      kb = fn key ->
        String.to_integer(hd(Regex.run(~r/#{key}:\s+(\d+) kB/, status, capture: :all_but_first)))
      end

      %{hwm_mb: div(kb.("VmHWM"), 1024), rss_mb: div(kb.("VmRSS"), 1024)}
    end
  end

defmodule StateBench do
  def summary([]), do: %{n: 0, p50_ms: nil, p99_ms: nil, max_ms: nil}

  def summary(latencies_us) do
    sorted = Enum.sort(latencies_us)

    %{
      n: length(sorted),
      p50_ms: ms(Support.percentile(sorted, 0.50)),
      p99_ms: ms(Support.percentile(sorted, 0.99)),
      max_ms: ms(List.last(sorted))
    }
  end

  defp ms(us), do: Float.round(us / 1000, 2)

  def ratio(_a, nil), do: nil
  def ratio(nil, _b), do: nil
  def ratio(a, b) when b > 0, do: Float.round(a / b, 1)
  def ratio(_a, _b), do: nil

  # Whether a commit on `node` from t0 to t0 + latency overlaps one of
  # that node's checkpoint windows.
  def overlaps?(windows, node, t0, latency) do
    t1 = t0 + latency
    Enum.any?(Map.get(windows, node, []), fn {from, to} -> t0 <= to and t1 >= from end)
  end

  def collect(0, acc), do: acc

  def collect(n, acc) do
    receive do
      {:done, node, samples} -> collect(n - 1, [{node, samples} | acc])
    after
      300_000 -> raise "callers did not finish"
    end
  end

  def checkpoints(acc) do
    receive do
      {:checkpoint, node, op, requested, handed, measurements} ->
        checkpoints([
          %{node: node, op: op, requested: requested, handed: handed, m: measurements} | acc
        ])
    after
      0 -> Enum.reverse(acc)
    end
  end
end

telemetry = Path.expand("../test/support/telemetry.erl", __DIR__)
{:ok, :telemetry, telemetry_bin} = :compile.file(to_charlist(telemetry), [:binary])

:ok = LocalCluster.start_distribution("visor_state")

# Each kind on three fresh nodes, killed after it: memory is the kind's own.
run = fn kind ->
  nodes = LocalCluster.start_nodes(Enum.map(~w(a b c), &"#{kind}_#{&1}"), :error)
  modules = [helpers, map_state, binary_state, worker, {:telemetry, telemetry_bin}]
  :ok = LocalCluster.load_modules(nodes, modules)
  for node <- nodes, do: :ok = :erpc.call(node, Visor.Bench.StateWorker, :watch, [self()])

  {module, init_arg, label} =
    case kind do
      "map" ->
        {Visor.Bench.MapState, {entries, value_bytes},
         "map of #{entries} entries of #{value_bytes} bytes"}

      "binary" ->
        {Visor.Bench.BinaryState, megabytes, "binary of #{megabytes} MB"}
    end

  Support.progress("#{kind}: building the state (#{label}) on 3 nodes")
  opts = [nodes: nodes, checkpoint_every: every, init_arg: init_arg]
  LocalCluster.start_group(nodes, module, opts)
  _ = StateBench.checkpoints([])
  memory_before = Map.new(nodes, &{&1, :erpc.call(&1, Visor.Bench.StateWorker, :memory, [])})

  Support.progress("#{kind}: 3 callers for #{seconds} s, checkpoint every #{every} ops")

  callers =
    for node <- nodes,
        do:
          :erpc.call(node, Visor.Bench.StateWorker, :spawn_caller, [
            module,
            self(),
            seconds * 1000,
            pace_ms
          ])

  for pid <- callers, do: send(pid, :go)
  results = StateBench.collect(length(callers), [])
  Process.sleep(grace_ms + 500)
  checkpoints = StateBench.checkpoints([])
  memory = Map.new(nodes, &{&1, :erpc.call(&1, Visor.Bench.StateWorker, :memory, [])})

  windows =
    checkpoints
    |> Enum.group_by(& &1.node, &{&1.requested, &1.handed + grace_ms * 1000})

  samples = for {node, list} <- results, {t0, lat, result} <- list, do: {node, t0, lat, result}
  errors = Enum.count(samples, fn {_, _, _, r} -> not is_integer(r) end)
  ok = for {node, t0, lat, r} <- samples, is_integer(r), do: {node, t0, lat}

  {overlapping, normal} =
    Enum.split_with(ok, fn {node, t0, lat} -> StateBench.overlaps?(windows, node, t0, lat) end)

  normal = StateBench.summary(Enum.map(normal, &elem(&1, 2)))
  overlapping = StateBench.summary(Enum.map(overlapping, &elem(&1, 2)))
  handoff = for c <- checkpoints, do: (c.handed - c.requested) / 1000

  busy =
    for c <- checkpoints, do: System.convert_time_unit(c.m.duration, :native, :microsecond) / 1000

  bytes = checkpoints |> Enum.map(& &1.m.bytes) |> Enum.max(fn -> 0 end)

  Enum.each(nodes, &LocalCluster.kill/1)

  %{
    kind: kind,
    state: label,
    checkpoint_bytes: bytes,
    checkpoints: length(checkpoints),
    errors: errors,
    normal: normal,
    at_checkpoint: overlapping,
    ratio_p99: StateBench.ratio(overlapping.p99_ms, normal.p99_ms),
    handoff_ms: StateBench.summary(Enum.map(handoff, &(&1 * 1000))),
    server_encode_ms: StateBench.summary(Enum.map(busy, &(&1 * 1000))),
    memory:
      for(
        {node, m} <- memory,
        do: Map.merge(m, %{node: node, rss_before_mb: memory_before[node].rss_mb})
      )
  }
end

results = Enum.map(kinds, run)

fmt = fn
  nil -> "-"
  x -> to_string(x)
end

IO.puts("""

Commits around checkpoints of a large state (memory mode, 3 local nodes)
checkpoint_every #{every}, 1 caller per node, #{pace_ms} ms between commits, #{seconds} s, grace #{grace_ms} ms
------------------------------------------------------------------------------------------------
""")

for r <- results do
  IO.puts("""
  #{r.state}: #{r.checkpoints} checkpoints taken (#{r.checkpoint_bytes} bytes), #{r.errors} errors
    normal commits        n=#{r.normal.n} p50 #{fmt.(r.normal.p50_ms)} ms  p99 #{fmt.(r.normal.p99_ms)} ms  max #{fmt.(r.normal.max_ms)} ms
    at a checkpoint       n=#{r.at_checkpoint.n} p50 #{fmt.(r.at_checkpoint.p50_ms)} ms  p99 #{fmt.(r.at_checkpoint.p99_ms)} ms  max #{fmt.(r.at_checkpoint.max_ms)} ms  (p99 #{fmt.(r.ratio_p99)}x normal)
    request to hand-off   p50 #{fmt.(r.handoff_ms.p50_ms)} ms  max #{fmt.(r.handoff_ms.max_ms)} ms (server busy encoding: p50 #{fmt.(r.server_encode_ms.p50_ms)} ms, max #{fmt.(r.server_encode_ms.max_ms)} ms)
    memory per node       #{Enum.map_join(r.memory, ", ", &"peak #{&1.hwm_mb} MB / now #{&1.rss_mb} MB (#{&1.rss_before_mb} MB before the run)")}
  """)
end

result = %{
  environment:
    Support.environment(%{
      checkpoint_every: every,
      pace_ms: pace_ms,
      seconds: seconds,
      grace_ms: grace_ms,
      entries: entries,
      value_bytes: value_bytes,
      megabytes: megabytes
    }),
  results: results
}

IO.puts("Wrote #{Support.write_result("state-", result)}")
