# `make bench-memory`: a node's memory under large commands (memory mode,
# 3 local nodes): does RSS stay steady while the log is bounded by
# `checkpoint_bytes`?
#
#     mix run bench/memory.exs                          # 2,000 commands of 1 MB
#     BENCH_MEMORY_COMMANDS=10000 mix run bench/memory.exs
#     BENCH_CHECKPOINT_MB=0 mix run bench/memory.exs   # by ops alone, as before
#
# BENCH_MEMORY_COMMANDS commands of 1,000,000 bytes each are committed one
# after another through the primary. The state keeps only their count (the
# log holds them, the state does not), so what grows is the log. Every
# BENCH_MEMORY_SAMPLE commands (default 100) each node's RSS (VmRSS of its
# OS process), its VM's `:erlang.memory(:total)` and its log's length
# (`status.op - status.log_base`) are sampled. `checkpoint_every` is the
# default (10,000 ops); `checkpoint_bytes` is BENCH_CHECKPOINT_MB MiB
# (default 64, the option's default). Prints a table and writes
# bench/results/memory-<time>.json.
#
# On the 2-core development machine (shared), 10,000 commands would take
# about 8 minutes; the recorded runs are smaller:
#   * memory-20261208T000752: 1,000 commands, 64 MiB budget, 47 s. The
#     primary and the backup that kept up stayed at 137-188 MiB RSS from
#     the 100th command to the 1,000th, their logs at 84-132 ops (two spans
#     of about 67 commands), checkpoints every 68 ops at the same ops.
#   * memory-20261208T000817: 400 commands, checkpoint_bytes 0 (by ops
#     alone, as before), 20 s: those two nodes' logs held every command
#     (401 ops) and their RSS grew about 1 MiB a command, to 442 MiB.
# In both, the third node fell behind early (at op 144 and op 150) and
# never caught up while the load lasted: its RSS wanders (230-430 MiB) and
# says nothing about the bound. That is not this setting's doing (it
# happens by ops alone too): a repair answer is up to
# `message_entries_max` prepares of 1 MB sent at once, which a busy
# distribution link drops (`:nosuspend`), as it did to large state-sync
# windows before `WINDOW_BYTES`.
#   * Since repair runs end by bytes (`vsr::log::RUN_BYTES`), 1,000
#     commands, 64 MiB budget, each node's op sampled: before the change
#     (memory-20261208T003939) one node stood at op 590 from the 600th
#     command to the 700th and grew to 462 MiB RSS (it came back, by a
#     checkpoint, by the 800th); after it (memory-20261208T004018,
#     memory-20261208T004039) no node was more than 7 ops behind at any
#     sample and every node stayed at 139-202 MiB. One run before, two
#     after, on a shared machine: a lag is a chance event, not every run's.
Code.require_file("support.exs", __DIR__)
helpers = Code.require_file("../scripts/local_cluster.exs", __DIR__)
alias Visor.Bench.Support
alias Visor.Scripts.LocalCluster

commands = String.to_integer(System.get_env("BENCH_MEMORY_COMMANDS", "2000"))
every = String.to_integer(System.get_env("BENCH_MEMORY_SAMPLE", "100"))
budget_mb = String.to_integer(System.get_env("BENCH_CHECKPOINT_MB", "64"))
value = :binary.copy("v", 1_000_000)

sink =
  defmodule Visor.Bench.Sink do
    use Visor

    @impl Visor
    def initial_state(_opts), do: %{count: 0}

    @impl Visor
    def handle_commit({:put, value}, state),
      do: {:ok, byte_size(value), %{state | count: state.count + 1}}
  end

memory =
  defmodule Visor.Bench.Memory do
    @moduledoc false

    # VmRSS of this node's OS process, in MiB (Linux), or nil.
    def rss_mb do
      case File.read("/proc/#{:os.getpid()}/status") do
        {:ok, text} ->
          case Regex.run(~r/VmRSS:\s+(\d+) kB/, text) do
            [_, kb] -> div(String.to_integer(kb), 1024)
            nil -> nil
          end

        _ ->
          nil
      end
    end

    def sample(module) do
      status = Visor.status(module)

      %{
        rss_mb: rss_mb(),
        beam_mb: div(:erlang.memory(:total), 1_048_576),
        op: status.op,
        log_ops: status.op - status.log_base,
        checkpoint: status.checkpoint
      }
    end
  end

:ok = LocalCluster.start_distribution("visor_memory")
nodes = LocalCluster.start_nodes(["a", "b", "c"], :error)
:ok = LocalCluster.load_modules(nodes, [helpers, sink, memory])

opts = [nodes: nodes, checkpoint_bytes: budget_mb * 1_048_576]
LocalCluster.start_group(nodes, Visor.Bench.Sink, opts)
primary = LocalCluster.status(hd(nodes), Visor.Bench.Sink).primary

Support.progress(
  "committing #{commands} commands of 1 MB through #{primary}, checkpoint_bytes #{budget_mb} MiB"
)

sample = fn done ->
  per_node =
    for node <- nodes,
        into: %{},
        do: {node, :erpc.call(node, Visor.Bench.Memory, :sample, [Visor.Bench.Sink])}

  %{commands: done, nodes: per_node}
end

t0 = System.monotonic_time(:millisecond)

samples =
  for chunk <- Enum.chunk_every(1..commands, every) do
    for _ <- chunk do
      1_000_000 =
        :erpc.call(primary, Visor, :commit, [Visor.Bench.Sink, {:put, value}, [timeout: 60_000]])
    end

    s = sample.(List.last(chunk))
    rss = s.nodes |> Map.values() |> Enum.map(& &1.rss_mb)
    logs = s.nodes |> Map.values() |> Enum.map(& &1.log_ops)
    ops = s.nodes |> Map.values() |> Enum.map(& &1.op)

    Support.progress(
      "#{s.commands} commands: RSS #{inspect(rss, charlists: :as_lists)} MiB, " <>
        "log ops #{inspect(logs, charlists: :as_lists)}, op #{inspect(ops, charlists: :as_lists)}"
    )

    s
  end

seconds = (System.monotonic_time(:millisecond) - t0) / 1000

peak = fn key ->
  samples |> Enum.flat_map(&Enum.map(Map.values(&1.nodes), fn n -> n[key] end)) |> Enum.max()
end

last = List.last(samples)
half = Enum.at(samples, div(length(samples), 2))
rss_of = fn s -> s.nodes |> Map.values() |> Enum.map(& &1.rss_mb) |> Enum.max() end

IO.puts("""

Memory under 1 MB commands (memory mode, 3 local nodes)
------------------------------------------------------------------------------
commands                      #{commands} of 1 MB in #{Float.round(seconds, 1)} s
checkpoint_bytes              #{budget_mb} MiB (checkpoint_every: 10,000 ops)
largest log                   #{peak.(:log_ops)} ops
RSS, largest node             #{rss_of.(half)} MiB at #{half.commands} commands, #{rss_of.(last)} MiB at #{last.commands}; peak #{peak.(:rss_mb)} MiB
""")

result = %{
  environment: Support.environment(%{}),
  commands: commands,
  command_bytes: 1_000_000,
  checkpoint_bytes: budget_mb * 1_048_576,
  seconds: Float.round(seconds, 1),
  peak_rss_mb: peak.(:rss_mb),
  peak_log_ops: peak.(:log_ops),
  samples:
    Enum.map(samples, fn s ->
      %{commands: s.commands, nodes: Enum.map(s.nodes, fn {n, v} -> Map.put(v, :node, n) end)}
    end)
}

IO.puts("Wrote #{Support.write_result("memory-", result)}")
