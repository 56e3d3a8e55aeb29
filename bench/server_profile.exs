# Where a server's time goes under load: eprof on the primary's and on a
# backup's `Visor.Server` for BENCH_PROFILE_MS (1,500) while 255 callers
# (85 per node) commit to one memory-mode group on 3 local nodes. Prints
# the functions that took the most time in each (eprof slows the process
# it traces several times over: read the shares, not the absolute times).
#
#     mix run bench/server_profile.exs
helpers = Code.require_file("../scripts/local_cluster.exs", __DIR__)
Code.require_file("support.exs", __DIR__)
alias Visor.Bench.Support
alias Visor.Scripts.LocalCluster

profile_ms = String.to_integer(System.get_env("BENCH_PROFILE_MS", "1500"))
top = String.to_integer(System.get_env("BENCH_PROFILE_TOP", "25"))

kv =
  defmodule Visor.Bench.ProfiledKV do
    use Visor

    @impl Visor
    def initial_state(_opts), do: %{}

    @impl Visor
    def handle_commit({:put, key, value}, state), do: {:ok, :ok, Map.put(state, key, value)}
  end

worker =
  defmodule Visor.Bench.ProfileWorker do
    @moduledoc false

    # `count` callers committing back to back for `ms`.
    def spawn_callers(count, ms) do
      deadline = System.monotonic_time(:millisecond) + ms
      for i <- 1..count, do: spawn(fn -> loop(i, deadline) end)
      :ok
    end

    defp loop(i, deadline) do
      if System.monotonic_time(:millisecond) < deadline do
        Visor.commit(Visor.Bench.ProfiledKV, {:put, i, i}, timeout: 10_000)
        loop(i, deadline)
      end
    end

    # eprof on `pid` for `ms`: [{function, calls, share %}], most time first.
    def profile(pid, ms, top) do
      {:ok, _} = :eprof.start()
      :profiling = :eprof.start_profiling([pid])
      Process.sleep(ms)
      :profiling_stopped = :eprof.stop_profiling()
      file = ~c"/tmp/visor_server_profile_#{System.unique_integer([:positive])}.txt"
      :eprof.log(file)
      # The table goes to the log file only, not to eprof's group leader.
      {:ok, quiet} = StringIO.open("")
      Process.group_leader(Process.whereis(:eprof), quiet)
      :eprof.analyze(:total, [{:sort, :time}])
      :eprof.stop()
      text = File.read!(file)
      File.rm(file)

      text
      |> String.split("\n")
      |> Enum.flat_map(fn line ->
        case Regex.run(~r/^(\S+)\s+(\d+)\s+([\d.]+)\s+\d+/, line) do
          [_, function, calls, share] ->
            [{function, String.to_integer(calls), String.to_float(share)}]

          _ ->
            []
        end
      end)
      |> Enum.sort_by(&elem(&1, 2), :desc)
      |> Enum.take(top)
    end
  end

Support.progress("starting nodes a, b, c")
:ok = LocalCluster.start_distribution("visor_server_profile")
nodes = LocalCluster.start_nodes(["a", "b", "c"], :error)
:ok = LocalCluster.load_modules(nodes, [helpers, kv, worker])
LocalCluster.start_group(nodes, Visor.Bench.ProfiledKV, nodes: nodes)
primary = LocalCluster.status(hd(nodes), Visor.Bench.ProfiledKV).primary
backup = hd(nodes -- [primary])

load_ms = 2_000 + 2 * (profile_ms + 2_000)
Support.progress("255 callers for #{load_ms} ms; profiling the primary's server, then a backup's")
for n <- nodes, do: :ok = :erpc.call(n, Visor.Bench.ProfileWorker, :spawn_callers, [85, load_ms])
Process.sleep(2_000)

for {node, role} <- [{primary, "primary"}, {backup, "backup"}] do
  server = Visor.Supervisor.name(Visor.Bench.ProfiledKV, :server)
  pid = :erpc.call(node, Process, :whereis, [server])
  rows = :erpc.call(node, Visor.Bench.ProfileWorker, :profile, [pid, profile_ms, top], 60_000)
  IO.puts("\n#{role}'s server (#{node}), #{profile_ms} ms: function, calls, share of its time")

  for {function, calls, share} <- rows do
    IO.puts(
      String.pad_trailing(function, 62) <> String.pad_leading("#{calls}", 9) <> "  #{share} %"
    )
  end
end
