# `make bench-catchup`: how long a replica whose data_dir was wiped takes to
# catch up with a large state (disk mode, 3 local nodes).
#
#     mix run bench/catchup.exs                  # BENCH_CATCHUP_MB=100
#     BENCH_CATCHUP_MB=20 mix run bench/catchup.exs
#
# The state is BENCH_CATCHUP_MB values of 1,000,000 bytes. A backup's node is
# killed, its store deleted, and the node restarted: it rejoins, recovers
# (crash vectors), fetches the whole log from the primary in chunks of
# `message_entries_max` entries and re-executes it. Measured from the
# restart until its replica is normal and has executed everything the
# primary had committed. Writes bench/results/catchup-<time>.json.
#
# Checkpoints are on (BENCH_CHECKPOINT_EVERY, default 20 ops; 0 turns them
# off): the peers' logs then start after a checkpoint, and the wiped replica
# catches up by state sync (the checkpoint in 1 MiB chunks) plus the log
# after it, instead of the whole log.
helpers = Code.require_file("../scripts/local_cluster.exs", __DIR__)
alias Visor.Scripts.LocalCluster

megabytes = String.to_integer(System.get_env("BENCH_CATCHUP_MB", "100"))
checkpoint_every = String.to_integer(System.get_env("BENCH_CHECKPOINT_EVERY", "20"))
data_dir = Path.expand(System.get_env("BENCH_DATA_DIR", "bench/tmp/catchup"))
value = :binary.copy("v", 1_000_000)

blob =
  defmodule Visor.Bench.Blob do
    use Visor

    @impl Visor
    def initial_state(_opts), do: %{}

    @impl Visor
    def handle_commit({:put, key, value}, state),
      do: {:ok, byte_size(value), Map.put(state, key, value)}
  end

progress = fn text -> IO.puts(IO.ANSI.format([:faint, "  ... ", :reset, text])) end

File.rm_rf!(data_dir)
:ok = LocalCluster.start_distribution("visor_catchup")
nodes = LocalCluster.start_nodes(["a", "b", "c"], :error)
:ok = LocalCluster.load_modules(nodes, [helpers, blob])
dir_of = fn node -> Path.join(data_dir, node |> Atom.to_string() |> String.split("@") |> hd()) end

opts = fn node ->
  # At most 4 MB of entries per repair message.
  [
    nodes: nodes,
    storage: :disk,
    data_dir: dir_of.(node),
    message_entries_max: 4,
    checkpoint_every: checkpoint_every
  ]
end

LocalCluster.start_group(nodes, Visor.Bench.Blob, opts)
primary = LocalCluster.status(hd(nodes), Visor.Bench.Blob).primary
[victim | _] = nodes -- [primary]

progress.("committing #{megabytes} values of 1 MB through #{primary}")

{fill_us, _} =
  :timer.tc(fn ->
    for i <- 1..megabytes do
      1_000_000 =
        :erpc.call(primary, Visor, :commit, [
          Visor.Bench.Blob,
          {:put, i, value},
          [timeout: 60_000]
        ])
    end
  end)

target = LocalCluster.status(primary, Visor.Bench.Blob).commit
progress.("killing #{victim}, deleting its store, restarting it")
LocalCluster.kill(victim)
File.rm_rf!(dir_of.(victim))
name = victim |> Atom.to_string() |> String.split("@") |> hd() |> String.replace(~r/_\d+$/, "")
t0 = System.monotonic_time(:microsecond)
restarted = LocalCluster.restart_node(name, nodes -- [victim], :error)
^restarted = victim
:ok = LocalCluster.load_modules([victim], [helpers, blob])
{:ok, _} = :erpc.call(victim, LocalCluster, :start_group_here, [Visor.Bench.Blob, opts.(victim)])

# Caught up: the replica is normal and its application state holds the
# last value committed (the values were committed in order), read locally.
caught_up? = fn ->
  LocalCluster.status(victim, Visor.Bench.Blob).status == :normal and
    :erpc.call(victim, Visor, :get_in, [Visor.Bench.Blob, [megabytes], [consistency: :local]]) ==
      value
end

_ = LocalCluster.wait_until(caught_up?, 600_000)
catchup_us = System.monotonic_time(:microsecond) - t0
installed = LocalCluster.status(victim, Visor.Bench.Blob).stats[:checkpoints_installed] || 0

seconds = catchup_us / 1_000_000
mb_per_s = Float.round(megabytes / seconds, 1)

IO.puts("""

Catch-up of a wiped replica (disk mode, 3 local nodes)
------------------------------------------------------------------------------
state                         #{megabytes} MB (#{megabytes} values of 1 MB, #{target} ops)
filling it (sequential)       #{Float.round(fill_us / 1_000_000, 1)} s
checkpoint_every              #{checkpoint_every} ops (checkpoints installed by the wiped replica: #{installed})
catch-up after restart        #{Float.round(seconds, 1)} s (#{mb_per_s} MB/s)
""")

File.mkdir_p!("bench/results")
stamp = DateTime.utc_now() |> DateTime.to_iso8601(:basic) |> String.slice(0, 15)
path = "bench/results/catchup-#{stamp}.json"

File.write!(
  path,
  ~s({"state_mb":#{megabytes},"ops":#{target},"fill_s":#{Float.round(fill_us / 1_000_000, 2)},) <>
    ~s("catchup_s":#{Float.round(seconds, 2)},"mb_per_s":#{mb_per_s},) <>
    ~s("checkpoint_every":#{checkpoint_every},"checkpoints_installed":#{installed}}\n)
)

IO.puts("Wrote #{path}")
File.rm_rf!(data_dir)
