defmodule Visor.Test.FormationModel do
  @moduledoc """
  Runs the formation deciders (`Visor.Formation.Explicit`,
  `Visor.Formation.Discovery`, with `Visor.Formation.Restore` for disk
  mode) of 3 to 6 in-memory nodes, every choice drawn from one seed: the
  mode, the storage, the order in which messages arrive, which are lost or
  duplicated, which nodes come up late (`cluster_size:` mode), when a node
  stops and how it comes back (memory mode: a
  restarted server keeps `Visor.Lifetime`'s record, a restarted VM loses
  it; disk mode: the store survives both, a wiped `data_dir` does not).

  After every step it checks:

    * **fresh start once**: for each node and cluster, at most one
      incarnation ever starts a fresh replica (a member decision with
      `recover: false` that is not a restart from the node's own store),
      and none once the node's replica was normal (started fresh,
      restarted from a store that was not recovering, or rejoined and
      could finish recovering): a replica that may have acknowledged
      something never starts again empty;
    * **one cluster**: every member decision names the same cluster id and
      member list (in `nodes:` mode, the configured ones); a process
      decides at most once;
    * **liveness**, in runs with the same settings everywhere, whatever
      was lost, duplicated or restarted before: once the network is calm
      (every node up, every message delivered, every node ticking),
      formation completes: every member node a member, every other node a
      spare, and every member's replica normal or able to finish
      recovering (a quorum of the other members normal). Not checked
      where more than a minority was without its memory at once (the
      state may be lost), or where a node is bound to the proposal of a
      process that died (a documented limit);
    * **a death after the start**: in some `nodes:` runs without
      restarts, one member's node dies for good soon after a quorum of
      the members started fresh replicas (`Visor.start_group/2` returns
      then), preferably one that another member still waits for: once
      calm, every other member must still be a member and normal (a
      member waiting for the dead one's answer for good failed this).

  Memory mode keeps nothing but the processes and `Visor.Lifetime`: if
  every process that knew a node's earlier incarnation restarted, and the
  node's VM too, nothing can tell (docs/operations.md: a majority losing
  its memory at once loses the state). So in a memory-mode run either only
  a minority of the cluster's nodes ever restart (any number of times,
  their server or their VM), or any node restarts, but only its server
  (`Visor.Lifetime` remembers), sometimes every server at once. In disk
  mode any node restarts (its server or its VM; sometimes every node at
  once), and any node may have its `data_dir` wiped, one after the other,
  as long as at most a minority of the cluster is without its memory at
  once (wiped, or restarted before its replica ever ran, and not normal
  again yet). In `cluster_size:` mode with more nodes than the cluster's
  size, once a cluster formed, one of its members stays up: nodes outside
  it that see none of its members form another cluster, as nodes that
  cannot see each other at all do (a documented limit of `cluster_size:`).

  A replica that rejoins, or restarts from a store that says it was
  recovering, is recovering until a quorum of the other members is
  normal; then its store no longer says recovering, and the node's next
  tick tells its decider `:visor_replica_normal` (as the group's router
  tells `Visor.Formation`).

  `run(seed)` returns `:ok` or `{:error, report}` with the seed, the
  configuration and the trace of the last 80 steps (or of as many as
  `run(seed, steps)` asks for).
  """

  import Bitwise

  alias Visor.Formation.{Decider, Discovery, Explicit, Restore}
  alias Visor.Options

  @group Visor.Test.FormationModelGroup
  @name :formation
  @settings %{
    client_table_max: 4096,
    checkpoint_interval: 10_000,
    checkpoint_chunk_bytes: 1 <<< 20
  }
  @odd_settings %{@settings | checkpoint_interval: 500}
  @trace_kept 80
  @death_within_steps 20
  @calm_rounds 40
  @late_within_steps 40

  @doc "Runs one seed: `:ok`, or `{:error, report}` (a string)."
  @spec run(integer(), pos_integer()) :: :ok | {:error, String.t()}
  def run(seed, trace_kept \\ @trace_kept) do
    world =
      seed
      |> setup()
      |> Map.put(:trace_kept, trace_kept)
      |> start_all()

    world = world |> random_steps(world.budget) |> calm(0)
    check_liveness(world)
    :ok
  catch
    {:violation, world, why} -> {:error, report(world, why)}
  end

  # ---- Configuration --------------------------------------------------------

  defp setup(seed) do
    w = %{rand: :rand.seed_s(:exsss, seed), seed: seed}
    {n, w} = pick(w, 3..6)
    nodes = for i <- 1..n, do: :"n#{i}@model"
    {mode, w} = pick(w, [:explicit, :discovery])
    {storage, w} = pick(w, [:memory, :disk])
    {faulty?, w} = chance(w, 0.65)
    {odd?, w} = chance(w, 0.1)
    {odd_node, w} = pick(w, nodes)

    {members, size, w} =
      case mode do
        :explicit ->
          {all?, w} = chance(w, 0.75)
          {spare, w} = pick(w, nodes)
          {if(all?, do: nodes, else: nodes -- [spare]), nil, w}

        :discovery ->
          {size, w} = pick(w, 2..n)
          {nil, size, w}
      end

    cluster_nodes = members || Enum.take(nodes, size)
    minority = div(length(cluster_nodes) - 1, 2)
    {shuffled, w} = shuffle(w, nodes)
    {loss, w} = if faulty?, do: pick(w, [0.0, 0.05, 0.2]), else: {0.0, w}
    {dup, w} = if faulty?, do: pick(w, [0.0, 0.05, 0.2]), else: {0.0, w}
    {restarts?, w} = if faulty?, do: chance(w, 0.7), else: {false, w}
    {budget, w} = pick(w, 50..500)

    {servers_only?, w} = chance(w, 0.5)
    late = late_starts(seed, mode, nodes, budget)
    death = death_plan(seed, mode, members, restarts?)

    # Memory mode: either only a minority restarts (its server or its VM),
    # or any node does, but only its server (Visor.Lifetime remembers).
    # Disk mode: any node, and any node may have its data_dir wiped, as
    # long as at most a minority is without its memory at once (see
    # wipe?/2).
    {restartable, amnesic} =
      cond do
        not restarts? -> {[], []}
        storage == :memory and not servers_only? -> {Enum.take(shuffled, minority), shuffled}
        storage == :memory -> {nodes, []}
        true -> {nodes, nodes}
      end

    Map.merge(w, %{
      mode: mode,
      storage: storage,
      nodes: nodes,
      members: members,
      size: size,
      settings:
        for(
          n <- nodes,
          into: %{},
          do: {n, if(odd? and n == odd_node, do: @odd_settings, else: @settings)}
        ),
      loss: loss,
      dup: dup,
      restartable: restartable,
      amnesic: amnesic,
      budget: budget,
      late: late,
      death: death,
      # The node that died for good, and the step at which a quorum of
      # the members had started fresh replicas.
      dead: nil,
      quorum_at: nil,
      minority: minority,
      live?: not odd?,
      # The nodes that lost their memory (a restart that does not come
      # back from a store) and are not normal again yet; beyond?: more
      # than a minority was without its memory at once (the state may be
      # lost: no liveness to check).
      lost: MapSet.new(),
      beyond?: false,
      # The nodes whose replica was ever normal (see the fresh start
      # check in decided/4).
      was_normal: MapSet.new(),
      procs: %{},
      serials: %{},
      lifetime: %{},
      stores: %{},
      records: %{},
      net: [],
      timers: [],
      group: nil,
      fresh: %{},
      trace: [],
      step: 0
    })
  end

  # cluster_size: mode, half the runs: some nodes come up late, each at a
  # step of its own (node => step) within the first @late_within_steps,
  # while the others are forming (a lower node coming up while a higher
  # one's proposal is in flight: seed 2575 found two clusters so). Drawn
  # from a stream of its own, so that the runs without late nodes (every
  # nodes: run) stay as they were before there were any.
  defp late_starts(seed, :discovery, nodes, budget) do
    w = %{rand: :rand.seed_s(:exsss, {seed, 1, 2})}
    {late?, w} = chance(w, 0.5)
    {shuffled, w} = shuffle(w, nodes)
    {count, w} = pick(w, 1..(length(nodes) - 1))

    if late? do
      shuffled
      |> Enum.take(count)
      |> Enum.map_reduce(w, fn node, w ->
        {at, w} = pick(w, 1..min(budget, @late_within_steps))
        {{node, at}, w}
      end)
      |> elem(0)
      |> Map.new()
    else
      %{}
    end
  end

  defp late_starts(_seed, _explicit, _nodes, _budget), do: %{}

  # nodes: mode with 3 members or more and no restarts, half the runs: a
  # member dies for good within @death_within_steps steps of a quorum
  # having started fresh replicas. Drawn from a stream of its own (the
  # other runs stay as they were).
  defp death_plan(seed, :explicit, members, false) when length(members) >= 3 do
    w = %{rand: :rand.seed_s(:exsss, {seed, 3, 4})}
    {death?, w} = chance(w, 0.5)
    {victim, w} = pick(w, members)
    {delay, _w} = pick(w, 0..@death_within_steps)
    if death?, do: %{victim: victim, delay: delay}
  end

  defp death_plan(_seed, _mode, _members, _restarts?), do: nil

  # ---- Steps ------------------------------------------------------------------

  defp start_all(w),
    do: w.nodes |> Enum.reject(&Map.has_key?(w.late, &1)) |> Enum.reduce(w, &start(&2, &1))

  defp random_steps(w, 0), do: w

  defp random_steps(w, left) do
    w = %{w | step: w.step + 1}
    in_flight = length(w.net)
    {roll, w} = uniform(w)

    w =
      cond do
        in_flight > 0 and roll < in_flight / (in_flight + 3) -> deliver_random(w)
        roll > 0.97 and w.restartable != [] -> fault(w)
        true -> tick_random(w)
      end

    random_steps(maybe_die(w), left - 1)
  end

  # The planned death: once a quorum of the members started fresh
  # replicas, and the delay passed. The victim is a member another one
  # still waits for, if any (Explicit.waiting/1), else the planned one.
  defp maybe_die(%{death: nil} = w), do: w
  defp maybe_die(%{dead: dead} = w) when dead != nil, do: w

  defp maybe_die(%{quorum_at: nil} = w) do
    fresh = for {n, %{decision: {:member, %{recover: false}}}} <- w.procs, n in w.members, do: n
    if length(fresh) > div(length(w.members), 2), do: %{w | quorum_at: w.step}, else: w
  end

  defp maybe_die(w) do
    if w.step >= w.quorum_at + w.death.delay do
      waited =
        for {n, p} <- w.procs,
            {:nodes, nodes} <- [Explicit.waiting(p.core)],
            m <- nodes,
            m != n,
            Map.has_key?(w.procs, m),
            do: m

      victim = List.first(waited) || w.death.victim
      w = trace(w, "#{victim} dies for good")
      lost = MapSet.put(w.lost, victim)

      %{
        w
        | procs: Map.delete(w.procs, victim),
          dead: victim,
          lost: lost,
          beyond?: w.beyond? or MapSet.size(lost) > w.minority
      }
    else
      w
    end
  end

  # Every stopped node comes back; then rounds of: every message in flight
  # delivered in order, every node ticks; until every node decided.
  defp calm(w, @calm_rounds), do: w

  defp calm(w, round) do
    w = maybe_die(w)

    w =
      w.nodes
      |> Enum.reject(&(Map.has_key?(w.procs, &1) or &1 == w.dead))
      |> Enum.reduce(w, &start(&2, &1))

    w = %{w | loss: 0.0, dup: 0.0, step: w.step + 1}
    {net, w} = {w.net, %{w | net: []}}
    w = Enum.reduce(net, w, &deliver(&2, &1))
    w = w.nodes |> Enum.filter(&Map.has_key?(w.procs, &1)) |> Enum.reduce(w, &tick(&2, &1))
    if decided?(w) and w.net == [] and not death_due?(w), do: w, else: calm(w, round + 1)
  end

  # A planned death whose quorum started has not happened yet.
  defp death_due?(w), do: w.death != nil and w.dead == nil and w.quorum_at != nil

  defp decided?(w), do: Enum.all?(w.procs, fn {_n, p} -> p.decision != :pending end)

  defp deliver_random(w) do
    {i, w} = pick(w, 0..(length(w.net) - 1))
    {message, net} = List.pop_at(w.net, i)
    deliver(%{w | net: net}, message)
  end

  defp tick_random(w) do
    {node, w} = pick(w, w.nodes)

    cond do
      Map.has_key?(w.procs, node) -> tick(w, node)
      node == w.dead -> w
      Map.get(w.late, node, 0) <= w.step -> start(w, node)
      true -> w
    end
  end

  defp fault(w) do
    w = refresh_lost(w)
    {node, w} = pick(w, w.restartable)
    {everyone?, w} = chance(w, 0.2)

    cond do
      # Every node at once, each keeping what it remembers (Visor.Lifetime,
      # its store): the case those records exist for.
      everyone? and w.restartable == w.nodes and not outsiders?(w) and
          within_minority?(w, w.nodes) ->
        kind = if w.storage == :memory, do: :server, else: :vm
        Enum.reduce(w.nodes, w, &stop(&2, &1, kind))

      keeps_a_member_up?(w, node) ->
        kinds =
          case w.storage do
            :memory -> if node in w.amnesic, do: [:server, :vm], else: [:server]
            :disk -> if wipe?(w, node), do: [:server, :vm, :wipe], else: [:server, :vm]
          end

        {kind, w} = pick(w, kinds)
        if within_minority?(w, [node], kind), do: stop(w, node, kind), else: w

      true ->
        w
    end
  end

  # Discovery mode: nodes outside a formed cluster that see none of its
  # members (all of them down) form another one, like nodes that cannot
  # see each other at all (the documented limit of cluster_size:). So
  # where there are such nodes, a formed cluster keeps a member up here.
  defp keeps_a_member_up?(w, node) do
    w.group == nil or not outsiders?(w) or
      Enum.any?(w.procs, fn {n, p} -> n != node and match?({:member, _}, p.decision) end)
  end

  defp outsiders?(w), do: w.mode == :discovery and w.size < length(w.nodes)

  # Disk mode: a node may be wiped while at most a minority of the cluster
  # (itself included) is without its memory.
  defp wipe?(w, node),
    do: node in w.amnesic and MapSet.size(MapSet.put(w.lost, node)) <= w.minority

  # Disk mode: no stop leaves more than a minority without its memory
  # (a node without a store loses it with its process); memory mode
  # chooses its faults in setup/1.
  defp within_minority?(w, nodes, kind \\ :vm)
  defp within_minority?(%{storage: :memory}, _nodes, _kind), do: true

  defp within_minority?(w, nodes, kind) do
    lost = for n <- nodes, amnesic_stop?(w, n, kind), into: w.lost, do: n
    MapSet.size(lost) <= w.minority
  end

  # Its next process does not come back from a store: not normal by
  # itself.
  defp amnesic_stop?(w, node, kind),
    do: w.storage == :memory or kind == :wipe or not Map.has_key?(w.stores, node)

  defp stop(w, node, kind) do
    w = trace(w, "stop #{node} (#{kind})")
    w = %{w | procs: Map.delete(w.procs, node)}

    w =
      if amnesic_stop?(w, node, kind) do
        lost = MapSet.put(w.lost, node)
        %{w | lost: lost, beyond?: w.beyond? or MapSet.size(lost) > w.minority}
      else
        w
      end

    case kind do
      :server ->
        w

      :vm ->
        %{w | lifetime: Map.delete(w.lifetime, node)}

      :wipe ->
        %{
          w
          | lifetime: Map.delete(w.lifetime, node),
            stores: Map.delete(w.stores, node),
            records: Map.delete(w.records, node)
        }
    end
  end

  defp tick(w, node) do
    proc = w.procs[node]
    w = put_in(w.procs[node].ticks, proc.ticks + 1)
    w = recovered(w)
    w = if w.procs[node].untold?, do: tell_normal(w, node), else: w

    input =
      case proc.decider do
        Explicit ->
          :tick

        Discovery ->
          {:tick, for({n, p} <- w.procs, n != node, do: p.addr)}
      end

    w = step(w, node, input)

    {due, timers} =
      Enum.split_with(w.timers, fn {addr, at, _} -> addr == proc.addr and at <= proc.ticks + 1 end)

    Enum.reduce(due, %{w | timers: timers}, fn {_addr, _at, message}, w ->
      step(w, node, message)
    end)
  end

  # The node's router tells formation that its replica is normal
  # (Visor.Formation.replica_normal/1).
  defp tell_normal(w, node) do
    w = put_in(w.procs[node].untold?, false)
    step(w, node, :visor_replica_normal)
  end

  defp deliver(w, {dest, message}) do
    case resolve(w, dest) do
      nil -> w
      node -> step(w, node, message)
    end
  end

  # A registered name reaches whichever process runs on the node when the
  # message arrives; an address reaches that one process only.
  defp resolve(w, {@name, node}), do: if(Map.has_key?(w.procs, node), do: node)

  defp resolve(w, {:proc, node, serial}) do
    case w.procs[node] do
      %{serial: ^serial} -> node
      _ -> nil
    end
  end

  # ---- One process ---------------------------------------------------------

  defp start(w, node) do
    serial = Map.get(w.serials, node, 0) + 1
    w = %{w | serials: Map.put(w.serials, node, serial)}
    {inc, w} = pick(w, 1..(1 <<< 62))
    {rand_seed, w} = pick(w, 1..(1 <<< 40))
    settings = w.settings[node]
    restored = restored(w, node)

    common = %{
      module: @group,
      node: node,
      self: {:proc, node, serial},
      incarnation: inc,
      settings: settings,
      storage: w.storage,
      earlier: if(w.storage == :memory, do: w.lifetime[node]),
      restored: restored
    }

    {decider, config} =
      case w.mode do
        :explicit ->
          cluster = Options.cluster_id(@group, w.members, settings)
          {Explicit, Map.merge(common, %{name: @name, members: w.members, cluster: cluster})}

        :discovery ->
          {Discovery, Map.merge(common, %{size: w.size, rand: :rand.seed_s(:exsss, rand_seed)})}
      end

    {core, effects} = run_decider(w, node, fn -> decider.new(config) end)

    proc = %{
      decider: decider,
      core: core,
      addr: config.self,
      serial: serial,
      ticks: 0,
      decision: :pending,
      restored?: restored != nil,
      # The replica is recovering (it rejoined, or its store says so)
      # and has not been normal since.
      recovering?: restored != nil and restored.recovering,
      # The replica finished recovering, and its decider was not told yet.
      untold?: false
    }

    w =
      trace(
        %{w | procs: Map.put(w.procs, node, proc)},
        "start #{node}/#{serial}#{if restored, do: " from its store"}"
      )

    w |> carry_out(node, effects) |> record(node)
  end

  # Disk mode: what Visor.Formation.Restore makes of this node's store.
  defp restored(%{storage: :disk} = w, node) do
    settings = w.settings[node]

    membership =
      case w.mode do
        :explicit -> {:nodes, w.members, Options.cluster_id(@group, w.members, settings)}
        :discovery -> {:cluster_size, w.size}
      end

    expected = %{
      group: "model",
      node: node,
      dir: "/model/#{node}",
      settings: settings,
      membership: membership
    }

    probe = if info = w.stores[node], do: {:ok, info}, else: :empty

    case Restore.check(probe, expected, w.records[node]) do
      :empty -> nil
      {:ok, restored} -> restored
      {:error, message} -> throw({:violation, w, "#{node}'s own store is refused: #{message}"})
    end
  end

  defp restored(_memory, _node), do: nil

  defp step(w, node, input) do
    proc = w.procs[node]
    {core, effects} = run_decider(w, node, fn -> proc.decider.handle(proc.core, input) end)
    w = put_in(w.procs[node].core, core)
    w = trace(w, "#{node}/#{proc.serial} <- #{brief(input)}")
    w |> carry_out(node, effects) |> record(node)
  end

  defp run_decider(w, node, fun) do
    fun.()
  rescue
    e -> violation(w, "#{node}'s decider raised: #{Exception.format(:error, e, __STACKTRACE__)}")
  end

  defp carry_out(w, node, effects) do
    Enum.reduce(effects, w, fn
      {:send, dest, message}, w ->
        send_message(w, dest, message)

      {:timer, ms, message}, w ->
        %{
          w
          | timers: [{w.procs[node].addr, w.procs[node].ticks + div(ms, 100), message} | w.timers]
        }

      {:remember, formed}, w ->
        %{w | lifetime: Map.put(w.lifetime, node, formed)}

      {:persist, record}, w ->
        %{w | records: Map.put(w.records, node, Restore.formation_record(record))}

      {:notify, decision}, w ->
        check_notify(w, node, decision)

      {:connect, _node}, w ->
        w

      {:log, _level, _key, _message}, w ->
        w
    end)
  end

  defp send_message(w, dest, message) do
    {lost?, w} = chance(w, w.loss)
    {dup?, w} = chance(w, w.dup)

    cond do
      lost? -> w
      dup? -> %{w | net: w.net ++ [{dest, message}, {dest, message}]}
      true -> %{w | net: w.net ++ [{dest, message}]}
    end
  end

  defp check_notify(w, node, decision) do
    if decision != Decider.decision(w.procs[node].core),
      do: violation(w, "#{node} notified #{inspect(decision)}, not its decision"),
      else: w
  end

  # ---- The invariants --------------------------------------------------------

  defp record(w, node) do
    proc = w.procs[node]
    decision = Decider.decision(proc.core)

    cond do
      decision == proc.decision ->
        w

      proc.decision != :pending ->
        violation(
          w,
          "#{node}/#{proc.serial} decided #{inspect(decision)} after #{inspect(proc.decision)}"
        )

      true ->
        w =
          trace(
            put_in(w.procs[node].decision, decision),
            "#{node}/#{proc.serial} DECIDES #{inspect(decision)}"
          )

        decided(w, node, proc, decision)
    end
  end

  defp decided(w, node, proc, {:member, %{cluster: cluster, members: members, recover: recover}}) do
    group = {cluster, members}
    w = if recover, do: put_in(w.procs[node].recovering?, true), else: w

    w =
      cond do
        node not in members ->
          violation(w, "#{node} is a member of #{inspect(members)}, which does not name it")

        w.group == nil and w.mode == :explicit and members != w.members ->
          violation(w, "#{node} is a member of #{inspect(members)}, not of the configured nodes")

        w.group == nil ->
          %{w | group: group}

        w.group != group ->
          violation(w, "two clusters: #{inspect(w.group)} and #{node}'s #{inspect(group)}")

        true ->
          w
      end

    w =
      cond do
        recover or proc.restored? ->
          w

        Map.has_key?(w.fresh, {node, cluster}) ->
          violation(
            w,
            "#{node}/#{proc.serial} starts a fresh replica of a cluster " <>
              "#{node}/#{w.fresh[{node, cluster}]} ran fresh"
          )

        node in w.was_normal ->
          violation(
            w,
            "#{node}/#{proc.serial} starts a fresh replica of a cluster in which #{node}'s " <>
              "replica was normal before"
          )

        true ->
          %{w | fresh: Map.put(w.fresh, {node, cluster}, proc.serial)}
      end

    w =
      if w.procs[node].recovering?, do: w, else: %{w | was_normal: MapSet.put(w.was_normal, node)}

    # Disk mode: the replica writes its store as it starts.
    if w.storage == :disk and not Map.has_key?(w.stores, node) do
      index = Enum.find_index(members, &(&1 == node))

      info = %{
        group: "model",
        replica: index,
        role: :member,
        epoch: 0,
        cluster: cluster,
        meta: Restore.store_meta(members, w.settings[node]),
        view: 0,
        commit: 0,
        recovering: recover
      }

      %{w | stores: Map.put(w.stores, node, info)}
    else
      w
    end
  end

  defp decided(w, node, _proc, :spare) do
    if w.mode == :explicit and node in w.members,
      do: violation(w, "#{node} is in nodes: but decided to be a spare"),
      else: w
  end

  defp decided(w, _node, _proc, {:refused, _reason}), do: w

  # The members whose replica is (or could by now be) normal: started
  # fresh or from a store that was not recovering, or recovering while
  # enough others were normal for its recovery to finish (a quorum of the
  # other members).
  defp normal(w) do
    members = if w.group, do: elem(w.group, 1), else: []
    need = min(div(length(members), 2) + 1, length(members) - 1)

    {normal, recovering} =
      for {n, %{decision: {:member, _}} = p} <- w.procs,
          n in members,
          reduce: {MapSet.new(), []} do
        {normal, recovering} ->
          if p.recovering?,
            do: {normal, [n | recovering]},
            else: {MapSet.put(normal, n), recovering}
      end

    recover(normal, recovering, need)
  end

  defp recover(normal, recovering, need) do
    case Enum.split_with(recovering, &(MapSet.size(MapSet.delete(normal, &1)) >= need)) do
      {[], _} -> normal
      {done, left} -> recover(MapSet.union(normal, MapSet.new(done)), left, need)
    end
  end

  defp refresh_lost(w) do
    w = recovered(w)
    %{w | lost: MapSet.difference(w.lost, normal(w))}
  end

  # The replicas that could finish recovering by now did: each one's
  # store no longer says it is recovering, and its node's next tick tells
  # its decider.
  defp recovered(w) do
    normal = normal(w)

    for {n, %{recovering?: true}} <- w.procs, n in normal, reduce: w do
      w ->
        w = update_in(w.procs[n], &%{&1 | recovering?: false, untold?: true})
        w = %{w | was_normal: MapSet.put(w.was_normal, n)}
        if Map.has_key?(w.stores, n), do: put_in(w.stores[n].recovering, false), else: w
    end
  end

  # After the calm phase (everything delivered, every node up and
  # ticking), unless more than a minority lost its memory at once or a
  # node runs other settings: every node decided, each member of the
  # cluster a member (and every other node a spare), and every member's
  # replica can be normal: recovery can finish everywhere.
  defp check_liveness(%{live?: false}), do: :ok
  defp check_liveness(%{beyond?: true}), do: :ok

  defp check_liveness(w) do
    if orphaned?(w), do: :ok, else: check_formed(w)
  end

  # cluster_size: a node bound to the proposal of a process that died
  # waits for it forever (a documented limit: only that process could
  # tell whether its proposal formed).
  defp orphaned?(w) do
    live = MapSet.new(for {_n, p} <- w.procs, do: p.addr)

    Enum.any?(w.procs, fn {_n, p} ->
      case Map.get(p.core, :phase) do
        {:accepted, %{proposer: addr}} -> not MapSet.member?(live, addr)
        _ -> false
      end
    end)
  end

  defp check_formed(w) do
    decisions = for {n, p} <- w.procs, into: %{}, do: {n, p.decision}
    members = for {n, {:member, _}} <- decisions, do: n
    spares = for {n, :spare} <- decisions, do: n
    normal = normal(w)

    # A node that died for good is neither.
    dead = if w.dead, do: 1, else: 0
    expected_members = length(w.members || Enum.take(w.nodes, w.size)) - dead

    unless length(members) == expected_members and
             length(members) + length(spares) == length(w.nodes) - dead and
             MapSet.size(normal) == expected_members do
      violation(
        w,
        "formation did not complete in a calm network: #{inspect(decisions)}, " <>
          "normal: #{inspect(MapSet.to_list(normal))}"
      )
    end

    :ok
  end

  defp violation(w, why), do: throw({:violation, w, why})

  defp report(w, why) do
    config =
      Map.take(w, [
        :mode,
        :storage,
        :nodes,
        :members,
        :size,
        :loss,
        :dup,
        :restartable,
        :amnesic,
        :budget,
        :live?,
        :beyond?
      ])

    odd = for {n, s} <- w.settings, s != @settings, do: n

    """
    formation model: #{why}
    seed #{w.seed} (replay: FORMATION_SEED=#{w.seed} mix test test/visor/formation_model_test.exs)
    #{inspect(config)}#{if odd != [], do: " other settings on #{inspect(odd)}"}
    last steps (of #{w.step}):
    #{w.trace |> Enum.reverse() |> Enum.join("\n")}
    """
  end

  defp trace(w, line),
    do: %{w | trace: Enum.take(["#{w.step}: #{line}" | w.trace], w.trace_kept)}

  defp brief({:tick, _visible}), do: "tick"
  defp brief(input) when is_tuple(input), do: inspect(input, limit: 8, printable_limit: 8)
  defp brief(input), do: inspect(input)

  # ---- Randomness (all from the seed) -------------------------------------------

  defp uniform(w) do
    {x, rand} = :rand.uniform_s(w.rand)
    {x, %{w | rand: rand}}
  end

  defp chance(w, p) do
    {x, w} = uniform(w)
    {x < p, w}
  end

  defp pick(w, first..last//1) do
    {x, rand} = :rand.uniform_s(last - first + 1, w.rand)
    {first + x - 1, %{w | rand: rand}}
  end

  defp pick(w, list) when is_list(list) do
    {i, w} = pick(w, 0..(length(list) - 1))
    {Enum.at(list, i), w}
  end

  defp shuffle(w, list) do
    {keys, w} = Enum.map_reduce(list, w, fn _, w -> uniform(w) end)
    {keys |> Enum.zip(list) |> Enum.sort() |> Enum.map(&elem(&1, 1)), w}
  end
end
