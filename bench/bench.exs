# `make bench`: a local 3-node cluster; Visor against Mnesia on the same
# nodes, with the distribution round trip measured in the same run as the
# physical floor. Prints a table and writes bench/results/<time>.json.
#
#     mix run bench/bench.exs            # BENCH_SECONDS=3 per throughput run
helpers = Code.require_file("../scripts/local_cluster.exs", __DIR__)
alias Visor.Scripts.LocalCluster

seconds = String.to_integer(System.get_env("BENCH_SECONDS", "3"))
sequential_n = String.to_integer(System.get_env("BENCH_SEQUENTIAL", "3000"))
levels = [1, 16, 64, 256]

kv =
  defmodule Visor.Bench.KV do
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
  def progress(text), do: IO.puts(IO.ANSI.format([:faint, "  ... ", :reset, text]))

  def pct([], _), do: nil

  def pct(sorted, p) do
    n = length(sorted)
    Enum.at(sorted, max(0, ceil(p * n) - 1))
  end

  # A percentile is reported only with enough samples to mean something.
  def summary(samples) do
    sorted = Enum.sort(samples)
    n = length(sorted)

    %{
      n: n,
      p50_us: round1(pct(sorted, 0.50)),
      p99_us: if(n >= 100, do: round1(pct(sorted, 0.99))),
      p999_us: if(n >= 1000, do: round1(pct(sorted, 0.999)))
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

    Enum.each(pids, &send(&1, :go))

    {ops, errors, lat} =
      Enum.reduce(pids, {0, 0, []}, fn _, {o, e, l} ->
        receive do
          {:done, ops, errors, lat} -> {o + ops, e + errors, lat ++ l}
        after
          seconds * 1000 + 30_000 -> raise "a bench caller did not report"
        end
      end)

    Map.merge(summary(lat), %{callers: callers, ops_per_s: round(ops / seconds), errors: errors})
  end

  def fmt(nil), do: "-"
  def fmt(us) when us >= 1000, do: "#{Float.round(us / 1000, 2)} ms"
  def fmt(us), do: "#{round(us)} µs"

  # A tiny JSON encoder (no hex packages here): maps, lists, strings,
  # atoms, numbers.
  def json(map) when is_map(map) do
    inner = Enum.map_join(map, ",", fn {k, v} -> json(to_string(k)) <> ":" <> json(v) end)
    "{" <> inner <> "}"
  end

  def json(list) when is_list(list), do: "[" <> Enum.map_join(list, ",", &json/1) <> "]"
  def json(nil), do: "null"
  def json(b) when is_boolean(b), do: to_string(b)
  def json(a) when is_atom(a), do: json(Atom.to_string(a))
  def json(n) when is_number(n), do: to_string(n)
  def json(s) when is_binary(s), do: inspect(s, printable_limit: :infinity)
end

started = System.monotonic_time(:millisecond)
IO.puts("Visor bench: 3 local nodes, #{seconds} s per throughput run")

Bench.progress("starting nodes a, b, c")
:ok = LocalCluster.start_distribution("visor_bench")
nodes = LocalCluster.start_nodes(["a", "b", "c"], :error)
[a, b, c] = nodes
:ok = LocalCluster.load_modules(nodes, [helpers, kv, worker])

Bench.progress("distribution round trip (send/receive ping-pong a <-> b)")
echo = :erpc.call(b, Visor.Bench.Worker, :start_echo, [])
_warmup = :erpc.call(a, Visor.Bench.Worker, :ping, [echo, 500])
rtt = Bench.summary(:erpc.call(a, Visor.Bench.Worker, :ping, [echo, 5000]))

Bench.progress("Visor: forming the cluster")
LocalCluster.start_group(nodes, Visor.Bench.KV, nodes: nodes)
primary = LocalCluster.status(a, Visor.Bench.KV).primary
backup = hd(nodes -- [primary])

Bench.progress("Visor: #{sequential_n} sequential commits on the primary's node")
_warmup = :erpc.call(primary, Visor.Bench.Worker, :sequential, [:visor, 300])

visor_seq_primary =
  Bench.summary(:erpc.call(primary, Visor.Bench.Worker, :sequential, [:visor, sequential_n]))

Bench.progress("Visor: up to #{sequential_n} sequential commits (15 s) on a backup's node")

visor_seq_backup =
  Bench.summary(:erpc.call(backup, Visor.Bench.Worker, :sequential, [:visor, sequential_n]))

# Registers the client sessions every level needs, outside the measurements.
Bench.progress("Visor: warming up 256 callers")
_ = Bench.throughput(:visor, nodes, 256, 1)

# One throughput run per level of concurrency, with progress as it goes.
throughput_levels = fn system, label, unit ->
  for n <- levels do
    r = Bench.throughput(system, nodes, n, seconds)
    Bench.progress("#{label}: #{n} callers: #{r.ops_per_s} #{unit}/s, p50 #{Bench.fmt(r.p50_us)}")
    r
  end
end

visor_tp = throughput_levels.(:visor, "Visor", "commits")

Bench.progress("Mnesia: ram_copies table on a, b, c")

for n <- nodes do
  :ok = :erpc.call(n, :application, :set_env, [:mnesia, :dir, ~c"/tmp/visor_bench_mnesia_#{n}"])
  :ok = :erpc.call(n, :mnesia, :start, [])
end

{:ok, _} = :erpc.call(a, :mnesia, :change_config, [:extra_db_nodes, [b, c]])

{:atomic, :ok} =
  :erpc.call(a, :mnesia, :create_table, [
    :bench_kv,
    [ram_copies: nodes, attributes: [:key, :value]]
  ])

for n <- nodes, do: :ok = :erpc.call(n, :mnesia, :wait_for_tables, [[:bench_kv], 10_000])

Bench.progress("Mnesia: #{sequential_n} sequential sync_transaction writes on a")
_warmup = :erpc.call(a, Visor.Bench.Worker, :sequential, [:mnesia, 300])

mnesia_seq =
  Bench.summary(:erpc.call(a, Visor.Bench.Worker, :sequential, [:mnesia, sequential_n]))

_ = Bench.throughput(:mnesia, nodes, 256, 1)

mnesia_tp = throughput_levels.(:mnesia, "Mnesia", "writes")

for n <- nodes, do: :erpc.call(n, :init, :stop, [])

# ---- Report ---------------------------------------------------------------

{os_family, os_name} = :os.type()

env = %{
  date: DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601(),
  otp: System.otp_release(),
  elixir: System.version(),
  schedulers: System.schedulers_online(),
  os: "#{os_family}/#{os_name}",
  nodes: 3,
  seconds_per_run: seconds
}

IO.puts("\nLatency (one caller, one operation at a time)")
IO.puts(String.duplicate("-", 78))

IO.puts(
  String.pad_trailing("", 44) <>
    Enum.map_join(["p50", "p99", "p999", "samples"], &String.pad_leading(&1, 11))
)

for {label, s} <- [
      {"distribution round trip (ping-pong)", rtt},
      {"Visor commit, caller on the primary's node", visor_seq_primary},
      {"Visor commit, caller on a backup's node", visor_seq_backup},
      {"Mnesia sync_transaction write (ram_copies)", mnesia_seq}
    ] do
  IO.puts(
    String.pad_trailing(label, 44) <>
      Enum.map_join([s.p50_us, s.p99_us, s.p999_us], &String.pad_leading(Bench.fmt(&1), 11)) <>
      String.pad_leading("#{s.n}", 11)
  )
end

IO.puts("\nThroughput (callers spread over the three nodes, #{seconds} s each)")
IO.puts(String.duplicate("-", 78))

IO.puts(
  String.pad_trailing("callers", 9) <>
    Enum.map_join(
      ["Visor ops/s", "p50", "p99", "Mnesia ops/s", "p50", "p99"],
      &String.pad_leading(&1, 13)
    )
)

for {v, m} <- Enum.zip(visor_tp, mnesia_tp) do
  IO.puts(
    String.pad_trailing("#{v.callers}", 9) <>
      Enum.map_join(
        [
          "#{v.ops_per_s}",
          Bench.fmt(v.p50_us),
          Bench.fmt(v.p99_us),
          "#{m.ops_per_s}",
          Bench.fmt(m.p50_us),
          Bench.fmt(m.p99_us)
        ],
        &String.pad_leading(&1, 13)
      )
  )
end

errors = Enum.sum(Enum.map(visor_tp ++ mnesia_tp, & &1.errors))
if errors > 0, do: IO.puts("\n#{errors} operations failed (counted out of ops/s)")

result = %{
  environment: env,
  distribution_round_trip: rtt,
  visor: %{
    sequential_on_primary: visor_seq_primary,
    sequential_on_backup: visor_seq_backup,
    throughput: visor_tp
  },
  mnesia: %{sequential: mnesia_seq, throughput: mnesia_tp}
}

dir = Path.expand("results", __DIR__)
File.mkdir_p!(dir)
stamp = env.date |> String.replace(~r/[^0-9T]/, "")
path = Path.join(dir, "#{stamp}.json")
File.write!(path, Bench.json(result) <> "\n")
elapsed = div(System.monotonic_time(:millisecond) - started, 1000)
IO.puts("\nWrote #{Path.relative_to_cwd(path)} (#{elapsed} s in all)")
