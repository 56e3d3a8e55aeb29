# `make bench-groups`: what many groups cost today (docs/design/many-groups.md,
# section 1 and step 0 of section 4; the issue "Many groups", section 3).
#
# Three local nodes run BENCH_GROUPS groups of 3 replicas (memory mode,
# default options), each a counter (`initial_state/1`, `handle_commit(:incr,
# n)`). BENCH_KIND says what a group is:
#
#   * `keyed` (the default): keyed groups `{Visor.Bench.Keyed, i}` of one
#     module, each node running `{Visor.Groups, module: ..., members:
#     nodes}`, started with `Visor.start_group/2` from the nodes in turn
#     (32 at a time per node);
#   * `modules`: the default group of a module per group (how groups were
#     made before keyed groups), each module generated here, compiled once
#     and loaded on every node.
#
# Then:
#
#   * `form_s`: from the first group started until every group is `:normal`
#     on all three nodes. Groups that are not within BENCH_FORM_TIMEOUT_S
#     are reported and left running; the phases below use the formed ones.
#     Each formed group then takes one commit, so the memory counted holds
#     a small state and one log entry.
#   * an idle window of BENCH_IDLE_S, in which this script only sleeps:
#     - `idle_view_changes`: view changes completed in the window, summed
#       over a node's replicas of the formed groups (their
#       `stats.views_started`, from `Visor.status/1` before and after); the
#       most on any node. The `[:visor, :view_change, :start]` telemetry
#       event is derived from the same engine status, and `:telemetry` is
#       not a dependency Visor's own project can load;
#     - `idle_cpu_pct_per_node`: the node's OS process's user + system CPU
#       time (/proc/<pid>/stat, so the engine threads count with the
#       schedulers), in % of one core; the most on any node;
#     - `idle_dist_msgs_per_s_per_node`: `:inet.getstat/2`'s `send_cnt` on
#       the node's distribution ports to the two other nodes (socket
#       writes: messages written together count once); the most on any node;
#     - `mem_kb_per_group_per_node`: what the node's memory grew by from
#       before the groups started to the end of the window, per group
#       started; the most on any node. The growth is the VM's
#       (`:erlang.memory(:total)`) plus the engine's (the NIF allocates
#       with the system allocator, outside the VM's): the larger of the
#       VM's growth and the resident set's (VmRSS, both together), since
#       the engine's share can only be seen as the RSS grown beyond the
#       VM's. Both growths are in `details`.
#   * `spread_vs_one_group`: BENCH_SECONDS of 256 callers (spread over the
#     nodes) each committing round-robin over min(groups, 1000) groups,
#     against as long of 256 callers on one group: the ratio of commits/s.
#     `details.spread.view_changes`: the view changes, by node, among the
#     spread groups while the callers ran (a group under load should see
#     none); `details.spread.quiet_churn`: the quiet rounds proposed and
#     the wakes, by node, meanwhile (with `quiet_after_ticks`, what quiet
#     costs groups that are not idle).
#   * `failover_p99_ms`: the node that is primary of the most groups is
#     SIGKILLed; one process per group it led commits from a surviving
#     node until a commit succeeds (at most BENCH_FAILOVER_TIMEOUT_S): the
#     p99 over those groups of the time from the kill to that success.
#
# Prints a table and writes bench/results/groups-<time>.json with every
# field; a phase that could not run has `null` and its reason in `reasons`.
#
#     mix run bench/groups.exs                               # 10,000 keyed groups, 60 s idle
#     BENCH_GROUPS=300 BENCH_IDLE_S=20 mix run bench/groups.exs
#     BENCH_KIND=modules BENCH_GROUPS=300 mix run bench/groups.exs
#     BENCH_QUIET_AFTER_TICKS=20 BENCH_GROUPS=300 mix run bench/groups.exs  (quiet groups)
Code.require_file("../scripts/local_cluster.exs", __DIR__)
Code.require_file("support.exs", __DIR__)
alias Visor.Scripts.LocalCluster
alias Visor.Bench.Support

env_int = fn name, default -> String.to_integer(System.get_env(name, "#{default}")) end
group_count = env_int.("BENCH_GROUPS", 10_000)
idle_s = env_int.("BENCH_IDLE_S", 60)
form_timeout_s = env_int.("BENCH_FORM_TIMEOUT_S", 120)
spread_s = env_int.("BENCH_SECONDS", 3)
failover_timeout_s = env_int.("BENCH_FAILOVER_TIMEOUT_S", 30)
# Quiet groups (`quiet_after_ticks:`), 0: off.
quiet_after_ticks = env_int.("BENCH_QUIET_AFTER_TICKS", 0)
callers = 256
spread_groups = min(group_count, 1000)

kind =
  case System.get_env("BENCH_KIND", "keyed") do
    "keyed" -> :keyed
    "modules" -> :modules
    other -> raise "BENCH_KIND must be keyed or modules, got: #{inspect(other)}"
  end

profile = Code.require_file("profile.exs", __DIR__)

worker =
  defmodule Visor.Bench.GroupsWorker do
    @moduledoc false
    # Runs on the peers (loaded with :code.load_binary/3).

    @host __MODULE__.Host
    @concurrency 32

    # The groups' supervisor, under a holder process (it must outlive the
    # :erpc call that starts it). Its restart intensity is out of reach:
    # a group that keeps crashing must not stop its siblings. Visor's code
    # (and with it the engine's NIF) is loaded first, and the garbage of
    # loading the group modules collected, so that the memory measured
    # before the groups start holds the one and not the other.
    def start_host do
      _ = Application.load(:visor)
      Enum.each(Application.spec(:visor, :modules), &Code.ensure_loaded!/1)
      Enum.each(Process.list(), &:erlang.garbage_collect/1)
      parent = self()

      spawn(fn ->
        opts = [name: @host, strategy: :one_for_one, max_restarts: 1_000_000]
        send(parent, {:started, DynamicSupervisor.start_link(opts)})
        Process.sleep(:infinity)
      end)

      receive do
        {:started, {:ok, _}} -> :ok
      end
    end

    # Starts each module's group on this node: the failures, as {module, reason}.
    def start_groups(modules, nodes, opts) do
      for module <- modules,
          result =
            DynamicSupervisor.start_child(@host, Visor.child_spec(module, [nodes: nodes] ++ opts)),
          not match?({:ok, _}, result),
          do: {module, result}
    end

    # Keyed groups: this node's host of `module`'s keyed groups.
    def start_keyed_host(module, nodes, opts) do
      {:ok, _} =
        DynamicSupervisor.start_child(
          @host,
          {Visor.Groups, [module: module, members: nodes] ++ opts}
        )

      :ok
    end

    # Starts each keyed group (from this node: start_group asks every
    # member's host): the failures, as {group, reason}.
    def start_keyed(groups) do
      groups
      |> Task.async_stream(&{&1, Visor.start_group(&1, timeout: 120_000)},
        max_concurrency: @concurrency,
        timeout: :infinity,
        ordered: false
      )
      |> Enum.flat_map(fn
        {:ok, {_group, {:ok, _}}} -> []
        {:ok, failure} -> [failure]
      end)
    end

    # The modules whose group is :normal on this node (those not asked
    # within `budget_ms` are not).
    def normal(modules, budget_ms) do
      modules
      |> each(budget_ms, fn module -> Visor.status(module).status == :normal end)
      |> Enum.filter(&elem(&1, 1))
      |> Enum.map(&elem(&1, 0))
    end

    # {module, views completed, primary} for each group, as this node sees
    # it; nil for what it could not tell within `budget_ms`.
    def views(modules, budget_ms) do
      each(modules, budget_ms, fn module ->
        status = Visor.status(module)
        {get_in(status, [:stats, :views_started]), status.primary}
      end)
      |> Enum.map(fn {module, found} -> Tuple.insert_at(found || {nil, nil}, 0, module) end)
    end

    # {quiet rounds proposed, wakes} summed over this node's replicas of
    # `modules` (what quiet costs groups that are not idle).
    def quiet_counts(modules, budget_ms) do
      modules
      |> each(budget_ms, fn module ->
        stats = Visor.status(module).stats
        {Map.get(stats, :quiet_rounds, 0), Map.get(stats, :wakes, 0)}
      end)
      |> Enum.reduce({0, 0}, fn
        {_, {r, w}}, {rounds, wakes} -> {rounds + r, wakes + w}
        {_, nil}, acc -> acc
      end)
    end

    # The stats `keys` (Visor.status/1's, engine's and router's alike)
    # summed over this node's replicas of `modules` that answered.
    def stat_sums(modules, keys, budget_ms) do
      modules
      |> each(budget_ms, fn module -> Map.take(Visor.status(module).stats, keys) end)
      |> Enum.reduce(Map.new(keys, &{&1, 0}), fn
        {_, %{} = stats}, acc -> Map.merge(acc, stats, fn _k, a, b -> a + b end)
        {_, nil}, acc -> acc
      end)
    end

    # One commit to each group: the modules whose commit failed (or was
    # not tried within `budget_ms`).
    def commit_each(modules, budget_ms) do
      modules
      |> each(budget_ms, &committed?(Visor.commit(&1, :incr, timeout: 10_000)))
      |> Enum.reject(&elem(&1, 1))
      |> Enum.map(&elem(&1, 0))
    end

    defp committed?(reply), do: is_integer(reply)

    # {module, fun.(module)} for each module, a few dozen at a time. Once
    # `budget_ms` has passed the rest get nil, uncalled: servers that stall
    # cost the bench their own timeouts, not the sum of everyone's.
    defp each(modules, budget_ms, fun) do
      deadline = System.monotonic_time(:millisecond) + budget_ms

      modules
      |> Task.async_stream(
        &{&1, if(System.monotonic_time(:millisecond) < deadline, do: fun.(&1))},
        max_concurrency: @concurrency,
        timeout: :infinity,
        ordered: false
      )
      |> Enum.map(fn {:ok, pair} -> pair end)
    end

    # The socket writes on this node's distribution ports to `peers`, summed.
    def dist_sends(peers) do
      for {node, port} <- :erlang.system_info(:dist_ctrl), node in peers, is_port(port) do
        {:ok, [send_cnt: sends]} = :inet.getstat(port, [:send_cnt])
        sends
      end
      |> Enum.sum()
    end

    # One caller per slot in `slots`, each waiting for :go, then committing
    # back to back for `duration_ms`: at its j-th commit, to
    # groups[(slot + j * stride) mod size]. Each reports {:done, commits, errors}.
    def spawn_callers(groups, slots, stride, report_to, duration_ms) do
      for slot <- slots do
        spawn(fn ->
          receive do
            :go -> :ok
          end

          deadline = System.monotonic_time(:millisecond) + duration_ms
          send(report_to, call_loop(groups, slot, stride, deadline, {0, 0}))
        end)
      end
    end

    defp call_loop(groups, slot, stride, deadline, {ok, errors}) do
      if System.monotonic_time(:millisecond) >= deadline do
        {:done, ok, errors}
      else
        module = elem(groups, rem(slot, tuple_size(groups)))

        counts =
          if committed?(Visor.commit(module, :incr, timeout: 10_000)),
            do: {ok + 1, errors},
            else: {ok, errors + 1}

        call_loop(groups, slot + stride, stride, deadline, counts)
      end
    end

    # One process per module, each waiting for {:go, deadline_os_us}, then
    # committing until a commit succeeds or the deadline (OS time, µs)
    # passes; reports {:failover, os_time_us_of_success | nil, the errors
    # before it}. The nodes share a machine, so their OS clocks agree with
    # the killer's.
    def spawn_failover(modules, report_to) do
      for module <- modules do
        spawn(fn ->
          receive do
            {:go, deadline_os_us} ->
              send(report_to, commit_until(module, deadline_os_us, []))
          end
        end)
      end
    end

    defp commit_until(module, deadline_os_us, errors) do
      reply = Visor.commit(module, :incr, timeout: 1_000)

      cond do
        committed?(reply) ->
          {:failover, System.os_time(:microsecond), errors}

        System.os_time(:microsecond) > deadline_os_us ->
          {:failover, nil, [reply | errors]}

        true ->
          # An error may come back at once while no primary is known:
          # retry soon, without spinning.
          Process.sleep(10)
          commit_until(module, deadline_os_us, [reply | errors])
      end
    end
  end

defmodule GroupsBench do
  @moduledoc false
  alias Visor.Bench.GroupsWorker

  # A counter, compiled from Erlang forms (a few ms each, against tens of
  # ms for an Elixir module that `use`s Visor, which would add minutes at
  # 10,000) and loaded on every node with its binary: the keyed groups'
  # one module, or one module per group. One form per line.
  @template """
  -behaviour('Elixir.Visor').
  -export([initial_state/1, handle_commit/2]).
  initial_state(_) -> 0.
  handle_commit(incr, N) -> {ok, N + 1, N + 1}.
  """

  def group_modules(count), do: Enum.map(1..count, &counter(:"Elixir.Visor.Bench.Group#{&1}"))

  def counter(module) do
    forms =
      for line <- String.split(@template, "\n", trim: true) do
        {:ok, tokens, _} = :erl_scan.string(String.to_charlist(line))
        {:ok, form} = :erl_parse.parse_form(tokens)
        form
      end

    {:ok, ^module, binary} = :compile.forms([{:attribute, 1, :module, module} | forms])
    {module, ~c"nofile", binary}
  end

  # Runs a phase: `{:ok, value}`, or `{:error, reason}` if it raised or
  # exited (a node that stopped answering), so the bench goes on.
  def phase(name, fun) do
    {:ok, fun.()}
  rescue
    e -> failed(name, Exception.message(e))
  catch
    kind, reason -> failed(name, "#{kind}: #{inspect(reason, limit: 10)}")
  end

  defp failed(name, reason) do
    Support.progress("#{name} could not run: #{reason}")
    {:error, reason}
  end

  # Calls `fun` on every node at once; results in node order.
  def on_nodes(nodes, timeout, fun) do
    nodes
    |> Enum.map(fn node -> Task.async(fn -> fun.(node) end) end)
    |> Task.await_many(timeout)
  end

  def call(node, function, args, timeout \\ 120_000),
    do: :erpc.call(node, GroupsWorker, function, args, timeout)

  # Polls every node for its groups that are not yet :normal, until none
  # is left or `timeout_ms` passes. Returns {ms to the last one, the
  # groups that are not :normal on every node}.
  def await_formed(nodes, modules, started, timeout_ms) do
    deadline = started + timeout_ms
    pending = Map.new(nodes, &{&1, modules})
    poll_formed(nodes, pending, started, deadline)
  end

  defp poll_formed(nodes, pending, started, deadline) do
    pending =
      nodes
      |> on_nodes(:infinity, fn node ->
        budget = max(1_000, deadline - System.monotonic_time(:millisecond))
        {node, pending[node] -- call(node, :normal, [pending[node], budget], :infinity)}
      end)
      |> Map.new()

    now = System.monotonic_time(:millisecond)
    unformed = pending |> Map.values() |> List.flatten() |> Enum.uniq()

    cond do
      unformed == [] -> {now - started, []}
      now >= deadline -> {now - started, unformed}
      true -> Process.sleep(200) && poll_formed(nodes, pending, started, deadline)
    end
  end

  # Commits/s of `callers`, dealt round-robin to the nodes, over `groups`,
  # and the CPU time the three nodes spent per commit (idle groups' share
  # included).
  def throughput(nodes, cpu_s, groups, callers, seconds) do
    groups = List.to_tuple(groups)

    # Caller i runs on node i mod 3, its commits i, i + callers, ... apart.
    pids =
      nodes
      |> Enum.with_index()
      |> Enum.flat_map(fn {node, n} ->
        slots = Enum.to_list(n..(callers - 1)//length(nodes))
        call(node, :spawn_callers, [groups, slots, callers, self(), seconds * 1000])
      end)

    cpu_before = Enum.sum(Enum.map(nodes, cpu_s))
    Enum.each(pids, &send(&1, :go))
    deadline = System.monotonic_time(:millisecond) + seconds * 1000 + 30_000

    {ok, errors} =
      Enum.reduce(pids, {0, 0}, fn _, {ok, errors} ->
        receive do
          {:done, o, e} -> {ok + o, errors + e}
        after
          left(deadline) -> raise "a caller did not report"
        end
      end)

    cpu = Enum.sum(Enum.map(nodes, cpu_s)) - cpu_before

    %{
      commits_per_s: round(ok / seconds),
      errors: errors,
      cpu_us_per_commit: if(ok > 0, do: round(cpu * 1_000_000 / ok))
    }
  end

  # Milliseconds until `deadline` (monotonic), for a receive's `after`.
  def left(deadline), do: max(0, deadline - System.monotonic_time(:millisecond))

  def fmt(nil), do: "-"
  def fmt(x) when is_float(x), do: Float.to_string(Float.round(x, 2))
  def fmt(x), do: to_string(x)
end

started = System.monotonic_time(:millisecond)
ticks_per_s = Support.clock_ticks_per_s()
# The machine's 1-minute load before the bench adds any: other work on it
# (a soak, a build) shows in every figure here.
load_average = "/proc/loadavg" |> File.read!() |> String.split() |> hd() |> String.to_float()
IO.puts("Visor bench-groups: #{group_count} #{kind} groups of 3 replicas on 3 local nodes")

keyed_module = Visor.Bench.Keyed

{compile_us, objects} =
  case kind do
    :keyed ->
      :timer.tc(fn -> [GroupsBench.counter(keyed_module)] end)

    :modules ->
      Support.progress("compiling #{group_count} group modules")
      :timer.tc(fn -> GroupsBench.group_modules(group_count) end)
  end

# What each group is called by Visor's functions: a keyed group
# `{module, key}`, or a module (its default group). The bench's phases
# take either.
modules =
  case kind do
    :keyed -> for i <- 1..group_count, do: {keyed_module, i}
    :modules -> Enum.map(objects, &elem(&1, 0))
  end

Support.progress("starting nodes a, b, c and loading the modules on each")
# Errors only, as on the nodes: `:global` here warns when a node is killed.
Logger.configure(level: :error)
:ok = LocalCluster.start_distribution("visor_bench_groups")
nodes = LocalCluster.start_nodes(["a", "b", "c"], :error)
label = nodes |> Enum.zip(["a", "b", "c"]) |> Map.new()
:ok = LocalCluster.load_modules(nodes, [worker, profile])

{load_us, _} =
  :timer.tc(fn ->
    for n <- nodes, do: :ok = :erpc.call(n, :code, :atomic_load, [objects], :infinity)
  end)

os_pids = Map.new(nodes, &{&1, List.to_integer(:erpc.call(&1, :os, :getpid, []))})
cpu_s = &elem(Support.os_process(os_pids[&1], ticks_per_s), 0)
for n <- nodes, do: :ok = GroupsBench.call(n, :start_host, [])

group_opts = if quiet_after_ticks > 0, do: [quiet_after_ticks: quiet_after_ticks], else: []

if kind == :keyed,
  do:
    for(
      n <- nodes,
      do: :ok = GroupsBench.call(n, :start_keyed_host, [keyed_module, nodes, group_opts])
    )

rss_kb = &elem(Support.os_process(os_pids[&1], ticks_per_s), 1)
rss_before = Map.new(nodes, &{&1, rss_kb.(&1)})
vm_before = Map.new(nodes, &{&1, :erpc.call(&1, :erlang, :memory, [:total])})

# ---- Forming ---------------------------------------------------------------

Support.progress("forming #{group_count} groups (at most #{form_timeout_s} s)")
form_started = System.monotonic_time(:millisecond)

starting =
  for {n, i} <- Enum.with_index(nodes) do
    Task.async(fn ->
      GroupsBench.phase("starting the groups on #{label[n]}", fn ->
        case kind do
          # start_group starts a group on all its members: each node
          # starts a third.
          :keyed ->
            share = modules |> Enum.drop(i) |> Enum.take_every(length(nodes))
            GroupsBench.call(n, :start_keyed, [share], :infinity)

          :modules ->
            GroupsBench.call(n, :start_groups, [modules, nodes, group_opts], :infinity)
        end
      end)
    end)
  end

forming =
  GroupsBench.phase("forming", fn ->
    GroupsBench.await_formed(nodes, modules, form_started, form_timeout_s * 1000)
  end)

{form_ms, unformed} =
  case forming do
    {:ok, result} -> result
    {:error, _} -> {nil, modules}
  end

# A node still starting groups at the bound goes on in the background.
start_failures =
  starting
  |> Task.yield_many(1_000)
  |> Enum.flat_map(fn
    {_, {:ok, {:ok, failures}}} -> failures
    {_, {:ok, {:error, reason}}} -> [{:node, reason}]
    {_, nil} -> []
  end)

unformed_set = MapSet.new(unformed)
formed = Enum.reject(modules, &MapSet.member?(unformed_set, &1))
Support.progress("#{length(formed)} groups formed in #{form_ms} ms, #{length(unformed)} did not")

# Each formed group takes one commit (from its node in turn): a small state
# and one log entry, as an idle group of an application holds.
commit_failures =
  case GroupsBench.phase("a commit to each group", fn ->
         nodes
         |> Enum.with_index()
         |> GroupsBench.on_nodes(:infinity, fn {n, i} ->
           share = formed |> Enum.drop(i) |> Enum.take_every(3)
           GroupsBench.call(n, :commit_each, [share, 60_000], :infinity)
         end)
         |> List.flatten()
       end) do
    {:ok, failures} -> failures
    {:error, _} -> formed
  end

# ---- Idle ------------------------------------------------------------------

views = fn ->
  nodes
  |> GroupsBench.on_nodes(
    :infinity,
    &{&1, GroupsBench.call(&1, :views, [formed, 60_000], :infinity)}
  )
  |> Map.new()
end

idle =
  GroupsBench.phase("idle window", fn ->
    views_before = views.()
    # Over every group, formed or not: what a node that cannot form them
    # all spends its time on (sends refused by a busy link, campaigns).
    # Read group by group, slowly on a loaded node, so outside the window
    # the CPU is measured over; their rates are over the whole span (at
    # least these rates, then).
    idle_stats = [:send_busy, :send_noconnect, :campaigns, :views_started]

    sums = fn ->
      Map.new(
        nodes,
        &{&1, GroupsBench.call(&1, :stat_sums, [modules, idle_stats, 30_000], :infinity)}
      )
    end

    sums_t0 = System.monotonic_time(:millisecond)
    sums_before = sums.()
    Support.progress("idle for #{idle_s} s")
    cpu_before = Map.new(nodes, &{&1, cpu_s.(&1)})
    sends_before = Map.new(nodes, &{&1, GroupsBench.call(&1, :dist_sends, [nodes -- [&1]])})

    breakdown_before =
      Map.new(nodes, &{&1, :erpc.call(&1, Visor.Bench.Profile, :sample, [ticks_per_s])})

    t0 = System.monotonic_time(:millisecond)
    Process.sleep(idle_s * 1000)
    seconds = (System.monotonic_time(:millisecond) - t0) / 1000
    after_idle = Map.new(nodes, &{&1, Support.os_process(os_pids[&1], ticks_per_s)})

    breakdown_after =
      Map.new(nodes, &{&1, :erpc.call(&1, Visor.Bench.Profile, :sample, [ticks_per_s])})

    sends_after = Map.new(nodes, &{&1, GroupsBench.call(&1, :dist_sends, [nodes -- [&1]])})
    vm_after = Map.new(nodes, &{&1, :erpc.call(&1, :erlang, :memory, [:total])})
    sums_after = sums.()
    sums_s = (System.monotonic_time(:millisecond) - sums_t0) / 1000
    views_after = views.()

    for n <- nodes, into: %{} do
      {cpu_after, rss_after} = after_idle[n]
      before = Map.new(views_before[n], fn {m, v, _} -> {m, v} end)

      # Only groups that answered both times count.
      view_changes =
        for {m, v, _} <- views_after[n], is_integer(v), is_integer(before[m]), reduce: 0 do
          sum -> sum + v - before[m]
        end

      {n,
       %{
         cpu_pct: Float.round((cpu_after - cpu_before[n]) / seconds * 100, 1),
         dist_msgs_per_s: round((sends_after[n] - sends_before[n]) / seconds),
         view_changes: view_changes,
         rss_kb_per_group: Float.round((rss_after - rss_before[n]) / group_count, 1),
         vm_kb_per_group: Float.round((vm_after[n] - vm_before[n]) / 1024 / group_count, 1),
         mem_kb_per_group:
           Float.round(
             max(rss_after - rss_before[n], (vm_after[n] - vm_before[n]) / 1024) / group_count,
             1
           ),
         primaries: Enum.count(views_after[n], fn {_, _, p} -> p == n end),
         cpu_breakdown:
           Visor.Bench.Profile.difference(breakdown_before[n], breakdown_after[n], seconds),
         stats_per_s:
           Map.new(sums_after[n], fn {k, v} -> {k, round((v - sums_before[n][k]) / sums_s)} end)
       }}
    end
    |> then(&{&1, views_after})
  end)

# ---- Spread ----------------------------------------------------------------

spread =
  GroupsBench.phase("spread", fn ->
    if formed == [], do: raise("no group formed")
    many = Enum.take(formed, spread_groups)
    one = [hd(formed)]

    Support.progress(
      "#{callers} callers on one group, then over #{length(many)} (#{spread_s} s each)"
    )

    # Warm-ups register the callers' client sessions outside the measurement.
    _ = GroupsBench.throughput(nodes, cpu_s, one, callers, 1)
    one_group = GroupsBench.throughput(nodes, cpu_s, one, callers, spread_s)
    _ = GroupsBench.throughput(nodes, cpu_s, many, callers, 1)
    quiet = fn -> Map.new(nodes, &{&1, GroupsBench.call(&1, :quiet_counts, [many, 60_000])}) end
    views_before = views.()
    quiet_before = quiet.()
    many_groups = GroupsBench.throughput(nodes, cpu_s, many, callers, spread_s)
    quiet_after = quiet.()
    views_after = views.()

    # Quiet rounds proposed and wakes while the callers were spread, by
    # node: a group under load should neither propose one nor sleep.
    quiet_churn =
      for n <- nodes, into: %{} do
        {r0, w0} = quiet_before[n]
        {r1, w1} = quiet_after[n]
        {label[n], %{quiet_rounds: r1 - r0, wakes: w1 - w0}}
      end

    # View changes while the callers were spread (summed over each node's
    # replicas): a group under load should see none.
    view_changes =
      for n <- nodes, into: %{} do
        before = Map.new(views_before[n], fn {m, v, _} -> {m, v} end)

        changes =
          for {m, v, _} <- views_after[n],
              m in many,
              is_integer(v),
              is_integer(before[m]),
              reduce: 0,
              do: (sum -> sum + v - before[m])

        {label[n], changes}
      end

    %{
      groups: length(many),
      one_group: one_group,
      spread: many_groups,
      view_changes: view_changes,
      quiet_churn: quiet_churn
    }
  end)

# ---- Failover --------------------------------------------------------------

failover =
  GroupsBench.phase("failover", fn ->
    # Who leads what, as node a saw it at the end of the idle window (or now).
    primaries =
      case idle do
        {:ok, {_, views_after}} -> views_after[hd(nodes)]
        {:error, _} -> GroupsBench.call(hd(nodes), :views, [formed, 60_000], :infinity)
      end

    {victim, _} =
      for({_, _, primary} <- primaries, primary != nil, do: primary)
      |> Enum.frequencies()
      |> Enum.max_by(&elem(&1, 1), fn -> raise "no formed group has a primary" end)

    led = for {m, _, ^victim} <- primaries, do: m
    survivors = nodes -- [victim]

    Support.progress(
      "SIGKILL #{label[victim]} (primary of #{length(led)} groups), then a commit to each"
    )

    workers =
      survivors
      |> Enum.with_index()
      |> Enum.flat_map(fn {n, i} ->
        share = led |> Enum.drop(i) |> Enum.take_every(length(survivors))
        GroupsBench.call(n, :spawn_failover, [share, self()])
      end)

    killed_at = System.os_time(:microsecond)
    {_, 0} = System.cmd("kill", ["-9", to_string(os_pids[victim])])
    Enum.each(workers, &send(&1, {:go, killed_at + failover_timeout_s * 1_000_000}))
    deadline = System.monotonic_time(:millisecond) + (failover_timeout_s + 30) * 1000

    reports =
      for _ <- workers do
        receive do
          {:failover, at, errors} -> {at && (at - killed_at) / 1000, errors}
        after
          GroupsBench.left(deadline) -> {nil, []}
        end
      end

    results = Enum.map(reports, &elem(&1, 0))
    recovered = results |> Enum.reject(&is_nil/1) |> Enum.sort()
    # Groups that never committed again rank last.
    ranked = recovered ++ List.duplicate(nil, length(results) - length(recovered))

    %{
      victim: label[victim],
      led: length(led),
      recovered: length(recovered),
      p50_ms: Support.percentile(ranked, 0.5),
      p99_ms: Support.percentile(ranked, 0.99),
      max_ms: List.last(ranked),
      # What the failed attempts before the successes returned.
      errors:
        reports
        |> Enum.flat_map(&elem(&1, 1))
        |> Enum.frequencies_by(&inspect(&1, limit: 5))
    }
  end)

for n <- nodes, do: :erpc.cast(n, :erlang, :halt, [])
LocalCluster.wait_until(fn -> Enum.all?(nodes, &(&1 not in Node.list())) end, 30_000)

# ---- Report ----------------------------------------------------------------

round1 = fn x -> x && Float.round(x * 1.0, 1) end

# An idle figure: the most on any node.
idle_field = fn key ->
  case idle do
    {:ok, {per_node, _}} -> {per_node |> Map.values() |> Enum.map(& &1[key]) |> Enum.max(), nil}
    {:error, reason} -> {nil, reason}
  end
end

# Each field: {value, nil} or {nil, the reason}.
fields = %{
  form_s:
    case forming do
      {:ok, {ms, []}} ->
        {round1.(ms / 1000), nil}

      {:ok, {_, unformed}} ->
        {nil,
         "#{length(unformed)} of #{group_count} groups not :normal on every node " <>
           "after #{form_timeout_s} s"}

      {:error, reason} ->
        {nil, reason}
    end,
  idle_view_changes:
    if(formed == [], do: {nil, "no group formed"}, else: idle_field.(:view_changes)),
  idle_cpu_pct_per_node: idle_field.(:cpu_pct),
  idle_dist_msgs_per_s_per_node: idle_field.(:dist_msgs_per_s),
  mem_kb_per_group_per_node: idle_field.(:mem_kb_per_group),
  failover_p99_ms:
    case failover do
      {:ok, %{p99_ms: nil} = f} ->
        {nil,
         "#{f.led - f.recovered} of #{f.led} groups did not commit within #{failover_timeout_s} s"}

      {:ok, f} ->
        {round1.(f.p99_ms), nil}

      {:error, reason} ->
        {nil, reason}
    end,
  spread_vs_one_group:
    case spread do
      {:ok, %{one_group: %{commits_per_s: 0}}} -> {nil, "no commit succeeded on one group"}
      {:ok, s} -> {Float.round(s.spread.commits_per_s / s.one_group.commits_per_s, 2), nil}
      {:error, reason} -> {nil, reason}
    end
}

# The issue's targets (section 3), stated for 10,000 groups.
targets = %{
  form_s: {:at_most, 30},
  idle_view_changes: {:at_most, 0},
  idle_cpu_pct_per_node: {:at_most, 5},
  idle_dist_msgs_per_s_per_node: {:at_most, 100},
  mem_kb_per_group_per_node: {:at_most, 30},
  failover_p99_ms: {:at_most, 2000},
  spread_vs_one_group: {:at_least, 0.5}
}

met? = fn
  nil, _ -> nil
  value, {:at_most, limit} -> value <= limit
  value, {:at_least, limit} -> value >= limit
end

order = [
  :form_s,
  :idle_view_changes,
  :idle_cpu_pct_per_node,
  :idle_dist_msgs_per_s_per_node,
  :mem_kb_per_group_per_node,
  :failover_p99_ms,
  :spread_vs_one_group
]

IO.puts(
  "\n#{group_count} #{kind} groups, 3 replicas each, 3 local nodes (idle window #{idle_s} s; " <>
    "load average #{load_average} at the start; the issue's targets, for 10,000 groups)"
)

IO.puts(String.duplicate("-", 78))

for key <- order do
  {value, reason} = fields[key]
  {bound, limit} = targets[key]
  target = "#{if bound == :at_most, do: "<=", else: ">="} #{limit}"

  verdict =
    case met?.(value, targets[key]) do
      true -> "met"
      false -> "NOT met"
      nil -> reason
    end

  IO.puts(
    String.pad_trailing("#{key}", 32) <>
      String.pad_leading(GroupsBench.fmt(value), 10) <>
      String.pad_leading(target, 10) <> "  " <> verdict
  )
end

per_node =
  case idle do
    {:ok, {stats, _}} -> Map.new(stats, fn {n, s} -> {label[n], s} end)
    {:error, _} -> %{}
  end

unless per_node == %{} do
  IO.puts("\nnode  cpu %  dist msgs/s  view changes  RSS KB/group  VM KB/group  primaries")

  for {n, s} <- Enum.sort(per_node) do
    IO.puts(
      String.pad_trailing(n, 4) <>
        Enum.map_join(
          [
            {s.cpu_pct, 7},
            {s.dist_msgs_per_s, 13},
            {s.view_changes, 14},
            {s.rss_kb_per_group, 14},
            {s.vm_kb_per_group, 13},
            {s.primaries, 11}
          ],
          fn {v, w} -> String.pad_leading(GroupsBench.fmt(v), w) end
        )
    )
  end

  IO.puts(
    "\nwhere the idle CPU went (% of one core by thread kind; reductions/s by process kind)"
  )

  for {n, s} <- Enum.sort(per_node) do
    b = s.cpu_breakdown

    IO.puts(
      "#{n}: threads #{inspect(b.thread_cpu_pct)}, reductions/s #{inspect(b.reductions_per_s)}, " <>
        "over all groups, per s: #{inspect(s.stats_per_s)}"
    )
  end
end

case spread do
  {:ok, s} ->
    IO.puts(
      "\n#{callers} callers: one group #{s.one_group.commits_per_s} commits/s " <>
        "(#{s.one_group.cpu_us_per_commit} µs CPU each), #{s.groups} groups " <>
        "#{s.spread.commits_per_s} commits/s (#{s.spread.cpu_us_per_commit} µs CPU each; " <>
        "view changes meanwhile by node: #{inspect(s.view_changes)}; " <>
        "quiet rounds and wakes: #{inspect(s.quiet_churn)})"
    )

  _ ->
    :ok
end

case failover do
  {:ok, f} ->
    IO.puts(
      "failover: #{f.victim} killed, #{f.recovered} of #{f.led} groups committed again, " <>
        "p50 #{GroupsBench.fmt(round1.(f.p50_ms))} ms, max #{GroupsBench.fmt(round1.(f.max_ms))} ms; " <>
        "failed attempts: #{inspect(f.errors)}"
    )

  _ ->
    :ok
end

unless unformed == [] and start_failures == [] and commit_failures == [] do
  IO.puts(
    "\n#{length(unformed)} groups did not form, #{length(start_failures)} failed to start " <>
      "(first: #{inspect(List.first(start_failures))}), " <>
      "#{length(commit_failures)} formed groups failed their first commit"
  )
end

details = %{
  modules_compile_s: Float.round(compile_us / 1_000_000, 2),
  modules_load_s: Float.round(load_us / 1_000_000, 2),
  formed: length(formed),
  unformed: length(unformed),
  start_failures: length(start_failures),
  first_commit_failures: length(commit_failures),
  idle_s: idle_s,
  per_node: per_node,
  spread:
    case spread do
      {:ok, s} -> s
      {:error, _} -> nil
    end,
  failover:
    case failover do
      {:ok, f} -> Map.new(f, fn {k, v} -> {k, if(is_float(v), do: round1.(v), else: v)} end)
      {:error, _} -> nil
    end
}

result =
  fields
  |> Map.new(fn {key, {value, _}} -> {key, value} end)
  |> Map.merge(%{
    groups: group_count,
    kind: Atom.to_string(kind),
    quiet_after_ticks: quiet_after_ticks,
    reasons: for({key, {nil, reason}} <- fields, into: %{}, do: {key, reason}),
    targets_met: Map.new(order, &{&1, met?.(elem(fields[&1], 0), targets[&1])}),
    details: details,
    environment: Support.environment(%{load_average_at_start: load_average})
  })

path = Support.write_result("groups-", result)
elapsed = div(System.monotonic_time(:millisecond) - started, 1000)
IO.puts("\nWrote #{path} (#{elapsed} s in all)")
