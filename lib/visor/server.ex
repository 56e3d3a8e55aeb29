defmodule Visor.Server do
  @moduledoc false
  # One group's server on one node: the process the group's callers call
  # (registered locally as `Visor.Supervisor.name(module, :server)`), and
  # the one that runs the application's code.
  #
  # It is built as the Rust core is (and as Ra's `ra_server` sits beside
  # `ra_server_proc`): decisions are made by modules that take a state and
  # an event and return a new state and a list of effects, and this process
  # only receives messages, asks them, and carries out the effects (engine
  # calls, sends, replies, timers, logs), in order:
  #
  #   * `Visor.Server.Callers`: commits and linearizable reads wait in a line
  #     and go to the engine through a pool of client sessions
  #     (`Visor.Sessions`); each caller is answered when the engine settles
  #     its request, or with `{:error, :timeout}` at its deadline, whichever
  #     comes first;
  #   * `Visor.Server.Machine`: the application state; committed entries
  #     arrive as `{:execute, ...}` events, in op order, on every replica,
  #     and each executed command goes through `Visor.Executor` (the user's
  #     `handle_commit`); also checkpoints, divergence and poison commands;
  #   * `Visor.Server.Lifecycle`: the engine's start (once `Visor.Formation`
  #     says this node is a member), its store's events, and its failure;
  #   * `Visor.Server.Upgrade`: on the primary, when the cluster switches to
  #     a new state machine version (as it becomes the primary, then each
  #     second, with the machine's check for new code,
  #     `Visor.Server.Machine.code_loaded/1`); on every member, a brief hold
  #     of its callers' commands while a first switch may come;
  #   * `Visor.Server.AutoReplace`: with `replace_after:`, on the primary,
  #     the replacement of a member not heard from for that long by a spare
  #     (through `Visor.Server.Changes`, as `Visor.reconfigure/3` does);
  #   * `Visor.Server.Status`: the `status` map.
  #
  # Pipelined commands (`Visor.pipeline/3`) come as messages, not calls,
  # and are answered with a message to the caller's alias; they wait in
  # the line in one stream per caller (`Visor.Server.Callers`), whose
  # requests carry batches once every other member's server has said that
  # its code executes them (`{:visor_features, ...}`, asked each second
  # while one has not). A spare's server relays them to a member's
  # (`Visor.Server.Relay`), which answers through it. When this server
  # cannot answer in time, `Visor.Backstop` answers `:timeout` through
  # the same alias, which lets only the first message through.
  #
  # A spare's server refuses its callers with `{:error, :spare}`, and
  # `Visor.Forward` takes them on to a member: the server tells it where the
  # members are (and the primary one named lately), and a member's server
  # takes a forwarded request, which names the time left, as its own
  # callers' requests.
  #
  # Peer traffic is not this process's: `Visor.Router` owns the engine,
  # carries out its `{:send, ...}` events and delivers peers' messages, and
  # passes every other engine event on to this process, in order. So a slow
  # `handle_commit` delays this replica's executions and answers, never its
  # part in the protocol. docs/commands.md follows one command through all
  # of this.
  #
  # In disk mode the engine opens the group's store before the replica runs,
  # and reports how (`{:storage, :created | :restarted | :recovering | :repairing, _}`),
  # then write failures and their end; the server logs them and shows them in
  # `status`. A store the engine refuses stops the server with
  # `{:storage_refused, reason}` (the one case retried first is a store still
  # locked for a moment by this node's previous server, after a restart).
  #
  # It runs in `Visor.Guard` (no malformed message crashes it) and traps
  # exits (a process a `handle_commit` linked to cannot take it down). A
  # `handle_commit` that kills it anyway at the same op twice in a row is a
  # poison command: the next server stops executing there until a committed
  # `Visor.skip/3` names that op (docs/operations.md, "Poison commands").

  use GenServer
  require Logger

  alias Visor.{Executor, Formation, Lifetime, Native, Options, Router}

  alias Visor.Server.{
    AutoReplace,
    Callers,
    Changes,
    Features,
    Lifecycle,
    Machine,
    Relay,
    Status,
    Upgrade
  }

  # Busy polling (`busy_poll_us`) only while at most this many of this
  # node's commands and reads are in flight: with more, the mailbox is
  # rarely empty for long, batching does the work, and a spinning
  # scheduler would only take CPU from the engine threads.
  @busy_poll_max_inflight 4

  # How often the server looks for new code of its module (a replica
  # blocked on a version resumes) and, on the primary, for a version every
  # member supports (Visor.Server.Upgrade); and how long a proposal of a
  # version waits to be committed.
  @version_tick_ms 1_000
  @proposal_timeout_ms 10_000

  # How long past its deadline a spare keeps a relayed command that no
  # member answered (as Visor.Backstop's grace).
  @relay_grace_ms 1_000

  # How long an automatic replacement may take (the caller's timeout of
  # the change it asks for, as Visor.reconfigure/3's default).
  @auto_change_timeout_ms 30_000

  defstruct [
    :module,
    # The module, or a keyed group's {module, key} (Visor.Options).
    :group,
    :config,
    :lifecycle,
    :machine,
    :callers,
    :upgrade,
    # The running engine (Visor.Native), and how many this server started.
    :engine,
    # Visor.Router's counters, for status.
    :router_stats,
    # On a spare: the primary a member named, and when (Visor.Forward).
    :primary_hint,
    # While forming: whom formation waits for (Visor.Formation.subscribe/2).
    :waiting_for,
    starts: 0,
    # Which other members' code executes batches (Visor.Server.Features).
    features: %Features{},
    # On a spare: the pipelined commands relayed to a member (Visor.Server.Relay).
    relay: Relay.new(),
    # Membership changes asked for through this node (Visor.Server.Changes).
    changes: %Changes{},
    # With replace_after: (a default group only), Visor.Server.AutoReplace.
    auto_replace: nil,
    # Caller id => timer of its deadline (Visor.Server.Callers).
    timers: %{},
    # Monotonic µs until which the server polls its mailbox (see poll/1).
    poll_until: 0,
    stats: %{unexpected_messages: 0}
  ]

  @doc false
  def child_spec(config), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [config]}}

  @doc "Starts the server of a group (under `Visor.Supervisor`)."
  @spec start_link(Options.t()) :: GenServer.on_start()
  def start_link(%Options{group: group} = config) do
    # Visor.Guard, not GenServer: no message a peer sends may crash it.
    Visor.Guard.start_link(__MODULE__, config, Visor.Supervisor.name(group, :server))
  end

  # ---- Setup -------------------------------------------------------------

  @impl GenServer
  def init(%Options{module: module, group: group} = config) do
    # A process that handle_commit links to and that dies must not take
    # the server down with it: its exit becomes a message (counted in
    # unexpected_messages). Visor.Guard stops the server on its
    # supervisor's exit, as gen_server does.
    Process.flag(:trap_exit, true)
    # A member reconnecting is asked again what its code executes.
    :ok = :net_kernel.monitor_nodes(true)
    Logger.metadata(visor_group: group)
    %{counters: counters, executed: executed} = Lifetime.get(group)

    {machine, effects} =
      Machine.new(module, config.init_arg, counters, Lifetime.death_at(counters),
        group: group,
        executed: executed
      )

    tag = make_ref()

    state = %__MODULE__{
      module: module,
      group: group,
      config: config,
      features: Features.new(Lifetime.batch_members(group), Node.list()),
      lifecycle: Lifecycle.new(config, node(), tag, known_membership(config)),
      machine: machine,
      callers: Callers.new(config.pool_size),
      upgrade: Upgrade.new(module),
      router_stats: Router.counters(group),
      # A keyed group's members are its group hosts' to place.
      auto_replace: if(is_atom(group), do: AutoReplace.new(config.replace_after))
    }

    Process.send_after(self(), :visor_version_tick, @version_tick_ms)
    auto_replace_tick(state)
    state = run(effects, state)
    {:ok, formation(state, Formation.subscribe(group, tag))}
  end

  # Memory mode: the newest membership this node's earlier servers knew
  # (Visor.Server.Lifecycle, "Memory mode: rejoining after a change").
  defp known_membership(%Options{storage: :memory} = config),
    do: Lifetime.membership(config.group, Formation.lifetime_key(config))

  defp known_membership(_disk), do: nil

  defp formation(state, decision) do
    {lifecycle, effects} = Lifecycle.formation(state.lifecycle, decision)
    if lifecycle.index, do: Logger.metadata(replica: lifecycle.index)
    dispatch(run(effects, %{state | lifecycle: lifecycle}))
  end

  # ---- Callers -----------------------------------------------------------

  @impl GenServer
  def handle_call({{:commit, payload} = request, deadline}, from, state)
      when is_binary(payload) and is_integer(deadline) do
    if Executor.command?(payload),
      do: admit(state, request, from, deadline),
      else: {:reply, {:error, :malformed_command}, state}
  end

  def handle_call({{:skip, op} = request, deadline}, from, state)
      when is_integer(op) and op in 1..0xFFFF_FFFF_FFFF_FFFF and is_integer(deadline),
      do: admit(state, request, from, deadline)

  def handle_call({{:read, path} = request, deadline}, from, state)
      when is_list(path) and is_integer(deadline),
      do: admit(state, request, from, deadline)

  def handle_call({{:read_local, path}, _deadline}, _from, state) when is_list(path) do
    case Lifecycle.refusal(state.lifecycle) do
      nil -> {:reply, Machine.read_local(state.machine, path), state}
      error -> {:reply, {:error, error}, state}
    end
  end

  def handle_call(:status, _from, state), do: {:reply, status(state), state}

  # A membership change (Visor.reconfigure/3). Only a member whose replica
  # runs decides it; a spare, or a node left out of the membership, says
  # `:spare` and the caller goes on to a member (Visor.Forward).
  def handle_call({{:reconfigure, request}, deadline}, from, state)
      when is_integer(deadline) do
    cond do
      not Changes.request?(request) ->
        {:reply, {:error, :malformed_request}, state}

      is_tuple(state.group) ->
        {:reply, {:error, {:unsupported, :keyed_groups}}, state}

      (refusal = Lifecycle.refusal(state.lifecycle)) != nil ->
        {:reply, {:error, refusal}, state}

      # Disk mode: until the store has opened, the membership it records
      # (the engine reports it right after) is not known here.
      state.lifecycle.phase != :running or
          (state.config.storage != :memory and state.lifecycle.opened == nil) ->
        {:reply, {:error, :forming}, state}

      true ->
        now = System.monotonic_time(:millisecond)

        {changes, effects} =
          Changes.request(state.changes, request, from, deadline, now, change_view(state))

        {:noreply, run(effects, %{state | changes: changes})}
    end
  end

  # A member asks this node, a spare, to run a learner for a change that
  # adds it (Visor.Lifecycle.learner/2). Disk mode: a store of this group
  # that says `removed` (or an earlier learner's) is moved aside first; one
  # that still holds a membership is refused (design 2.8).
  def handle_call(
        {:visor_learner,
         %{cluster: <<_::128>>, genesis: [_ | _], current: current, epoch: epoch} = spec},
        _from,
        state
      )
      when is_list(current) and is_integer(epoch) and epoch >= 0 and
             is_integer(:erlang.map_get(:slot, spec)) and
             is_integer(:erlang.map_get(:joined, spec)) and
             byte_size(:erlang.map_get(:member, spec)) == 16 do
    with :ok <- if(is_tuple(state.group), do: {:error, :keyed_group}, else: :ok),
         :ok <- clear_learner_store(state.config),
         {:ok, lifecycle, effects} <- Lifecycle.learner(state.lifecycle, spec) do
      # The learner's engine executes the log from its start (or installs
      # a checkpoint): the state starts anew, whatever an earlier
      # membership of this node left in it.
      %{counters: counters, executed: executed} = Lifetime.get(state.group)

      {machine, machine_effects} =
        Machine.new(state.module, state.config.init_arg, counters, Lifetime.death_at(counters),
          group: state.group,
          executed: executed
        )

      state = run(machine_effects, %{state | machine: machine})

      Logger.info(
        "#{inspect(state.group)}: this node runs a learner in slot #{spec.slot}, to join " <>
          "epoch #{spec.joined} of the group"
      )

      {:reply, :ok, run(effects, %{state | lifecycle: lifecycle})}
    else
      {:error, reason} -> {:reply, {:error, reason}, state}
    end
  end

  # A spare's caller's request (Visor.Forward): it names the time left
  # rather than a deadline, as monotonic clocks differ between nodes. An
  # error answered at once is a refusal before admission (an admitted
  # request is answered later): it comes back as `{:visor_refused,
  # reason}`, so that the spare knows nothing was received and may try
  # another member, which an error of an admitted request (unknown
  # outcome) does not allow.
  def handle_call({:visor_forwarded, request, left}, from, state)
      when is_integer(left) and left >= 0 do
    case handle_call({request, System.monotonic_time(:millisecond) + left}, from, state) do
      {:reply, {:error, reason}, state} -> {:reply, {:visor_refused, reason}, state}
      admitted_or_answered -> admitted_or_answered
    end
  end

  # Where a spare's callers go instead (Visor.Forward): the listed
  # members, or every other node running the group (cluster_size:); and
  # the primary a member last named.
  def handle_call(:visor_forward, _from, state) do
    now = System.monotonic_time(:millisecond)

    {reply, hint} =
      Visor.Forward.targets(forward_nodes(state) -- [node()], state.primary_hint, now)

    {:reply, reply, %{state | primary_hint: hint}}
  end

  # Only this node's callers (Visor.Forward) tell it.
  def handle_call({:visor_primary, primary, learned_at}, {pid, _tag}, state)
      when node(pid) == node() and is_atom(primary) and primary != nil and is_integer(learned_at),
      do: {:reply, :ok, %{state | primary_hint: {primary, learned_at}}}

  # A memory-mode spare asks for the newest membership this node knows
  # (Visor.Server.Lifecycle): answered only to a node of the same
  # configuration (the Visor.Lifetime key names it).
  def handle_call({:visor_membership, key}, _from, state) do
    known =
      if state.config.storage == :memory and key == Formation.lifetime_key(state.config),
        do: Lifecycle.known(state.lifecycle)

    {:reply, {:ok, known}, state}
  end

  # The primary asks whether this node stands by as a spare, ready to
  # learn (Visor.Server.AutoReplace): any node may ask.
  def handle_call(:visor_spare?, _from, state),
    do: {:reply, {:ok, state.lifecycle.phase in [:spare, :removed]}, state}

  # Calls from other nodes are untrusted input too.
  def handle_call(_request, _from, state) do
    {:reply, {:error, :unknown_call}, count(state, :unexpected_messages)}
  end

  @impl GenServer
  def handle_cast(_request, state), do: {:noreply, count(state, :unexpected_messages)}

  defp forward_nodes(state) do
    case state.config.membership do
      # Once this node knows the membership (it was a member), its members;
      # else the listed nodes.
      {:nodes, nodes} ->
        case Lifecycle.current_nodes(state.lifecycle) do
          [] -> nodes
          current -> current
        end

      {:cluster_size, _} ->
        scope = Visor.Supervisor.name(state.group, :scope)
        :pg.get_members(scope, :formation) |> Enum.map(&node/1) |> Enum.uniq()
    end
  end

  defp admit(state, request, from, deadline) do
    now = System.monotonic_time(:millisecond)

    case Callers.admit(state.callers, request, from, deadline, now, gate(state)) do
      {:error, reason} ->
        {:reply, {:error, reason}, state}

      {:ok, callers, effects} ->
        poll(dispatch(run(effects, %{state | callers: callers})))
    end
  end

  defp gate(state) do
    %{
      refusal: Lifecycle.refusal(state.lifecycle) || Machine.refusal(state.machine),
      halted: Machine.halted(state.machine),
      max_bytes: state.config.engine.batch_max_bytes
    }
  end

  # Hands waiting jobs to the engine, while it runs; callers' commands not
  # while they are held for the first version round (Visor.Server.Upgrade).
  defp dispatch(%{lifecycle: %{phase: :running}} = state) do
    versions = fn -> {Machine.cluster_version(state.machine), Executor.version(state.module)} end
    now = System.monotonic_time(:millisecond)
    {held, upgrade} = Upgrade.holding(state.upgrade, versions, now)
    {callers, effects} = Callers.dispatch(state.callers, held, batch_bytes(state))
    run(effects, %{state | callers: callers, upgrade: upgrade})
  end

  defp dispatch(state), do: state

  # How large a pipelining caller's batch may be: 0 (one command per
  # request) until every other member's server said it executes batches.
  defp batch_bytes(%{lifecycle: %{members: members}} = state) when is_tuple(members) do
    if Features.batches?(state.features, members(state)),
      do: state.config.engine.batch_max_bytes,
      else: 0
  end

  defp batch_bytes(_state), do: 0

  # This group's members, in its current membership (none known while
  # forming, or on a spare).
  defp members(state), do: Lifecycle.current_nodes(state.lifecycle)

  # What Visor.Server.Changes decides on: where this node stands.
  defp change_view(state) do
    lifecycle = state.lifecycle

    %{
      epoch: lifecycle.epoch,
      members: Lifecycle.current_nodes(lifecycle),
      current: lifecycle.current,
      genesis: lifecycle.members,
      node: node(),
      tag: lifecycle.tag,
      tick_ms: state.config.engine.tick_ms
    }
  end

  defp auto_replace_tick(%{auto_replace: %AutoReplace{probe_ms: ms}}),
    do: Process.send_after(self(), :visor_auto_replace_tick, ms)

  defp auto_replace_tick(_state), do: nil

  # What Visor.Server.AutoReplace decides on: whether this replica is the
  # primary of a normal view, the members, and whether a change asked
  # through this node is under way.
  defp auto_replace_view(state) do
    lifecycle = state.lifecycle

    primary =
      if lifecycle.phase == :running and lifecycle.role == :member and state.engine != nil do
        engine = Native.status(state.engine)
        engine.is_primary and engine.status == :normal
      else
        false
      end

    %{
      group: state.group,
      primary: primary,
      members: members(state),
      node: node(),
      connected: Node.list(),
      changing: map_size(state.changes.pending) > 0
    }
  end

  # A new node of a change (design 2.13): connected, running the group as
  # a spare, and willing to start a learner.
  defp start_learner(group, node, spec) do
    if node in Node.list() do
      GenServer.call({Visor.Supervisor.name(group, :server), node}, {:visor_learner, spec}, 5_000)
    else
      {:error, :noconnection}
    end
  catch
    :exit, reason -> {:error, reason}
  end

  defp stop_learner(state), do: {:visor_stop_learner, state.lifecycle.cluster}

  # Disk mode, before a learner's store is created: an older store of the
  # group here may be moved aside only if it says `removed` (the node left
  # the group) or `learner` (an earlier learner, which starts over); one
  # that still holds a membership is this node's, and is refused.
  defp clear_learner_store(%Options{storage: :memory}), do: :ok

  defp clear_learner_store(%Options{storage: {:disk, dir}}) do
    case Native.probe(dir) do
      :empty ->
        :ok

      {:ok, %{role: role}} when role in [:removed, :learner] ->
        aside = "#{dir}.#{role}-#{System.os_time(:millisecond)}"

        with :ok <- File.rename(dir, aside),
             :ok <- Native.sync_dir(Path.dirname(dir)) do
          Logger.warning("moved the #{role} store in #{dir} aside, to #{aside}")
          :ok
        end

      {:ok, %{role: role}} ->
        {:error, {:holds_store, role}}

      {:error, message} ->
        {:error, {:unreadable_store, message}}
    end
  end

  # ---- Pipelined commands ------------------------------------------------

  # A pipelining caller of this node: answered with a message, never a
  # reply (see carry_out/2); a spare relays it to a member.
  defp pipelined(state, entry, key) do
    request = {:pipeline, key, entry.payload}
    now = System.monotonic_time(:millisecond)

    case Callers.admit(state.callers, request, entry.from, entry.deadline, now, gate(state)) do
      {:error, :spare} ->
        relay(state, entry)

      {:error, reason} ->
        run([{:reply, entry.from, {:error, reason}}], state)

      {:ok, callers, effects} ->
        dispatch(run(effects, %{state | callers: callers}))
    end
  end

  defp relay(state, entry) do
    {relay, effects} = Relay.forward(state.relay, entry, candidates(state))
    run(effects, %{state | relay: relay})
  end

  # Where a spare's commands may go: the members it is connected to, and
  # the primary one of them named lately.
  defp candidates(state) do
    connected = Enum.filter(forward_nodes(state) -- [node()], &(&1 in Node.list()))
    primary = with {primary, _at} <- state.primary_hint, do: primary
    %{members: connected, primary: primary}
  end

  # A spare forgets what it relayed and was never answered (a member's
  # code that dropped it): the caller's backstop answered it already.
  defp expire_relayed(state) do
    now = System.monotonic_time(:millisecond)
    {relay, effects} = Relay.expire(state.relay, now, @relay_grace_ms, candidates(state))
    run(effects, %{state | relay: relay})
  end

  # Tells the other members' servers what this node's code executes, and
  # asks them the same (old code drops it): at the engine's start, then
  # each second while the group is awake (Visor.Server.Features).
  defp ask_features(state) do
    {features, effects} = Features.ask(state.features, members(state))
    run(effects, %{state | features: features})
  end

  # A quiet group (`quiet_after_ticks:`) sends nothing while it has
  # nothing to do, and that includes these questions: no command needs a
  # batch meanwhile. The first tick after it wakes asks again.
  defp ask_features_unless_quiet(%{engine: engine} = state) when is_reference(engine) do
    if Native.status(engine).quiet, do: state, else: ask_features(state)
  end

  defp ask_features_unless_quiet(state), do: ask_features(state)

  # The reply after a hand-off to the engine (a submit, a read) whose
  # answer a local caller may be waiting for. With few
  # commands in flight, the server keeps its scheduler awake for up to
  # `busy_poll_us` (a zero timeout, renewed by handle_info(:timeout, _)
  # until `poll_until`), so that the engine's `enif_send` finds it running
  # instead of having to wake a sleeping scheduler thread, which costs tens
  # of µs on a virtual machine. Any message ends the poll; the handler of
  # that message decides whether to poll again.
  defp poll(%{config: %{busy_poll_us: us}} = state) when us > 0 do
    if Callers.in_flight(state.callers) in 1..@busy_poll_max_inflight do
      {:noreply, %{state | poll_until: System.monotonic_time(:microsecond) + us}, 0}
    else
      {:noreply, state}
    end
  end

  defp poll(state), do: {:noreply, state}

  # ---- Messages ----------------------------------------------------------

  @impl GenServer
  def handle_info(message, state) do
    info(message, state)
  catch
    # An effect {:stop, reason} (see run/2).
    {:visor_stop, reason, state} -> {:stop, reason, state}
  end

  defp info({:visor_engine, engine, events}, %{engine: engine} = state)
       when is_reference(engine) and is_list(events) do
    {:noreply, dispatch(Enum.reduce(events, state, &event/2))}
  end

  # A pipelining caller of this node (Visor.pipeline/3): `ref` is the
  # caller's alias for the answer, `started` (monotonic) the start of
  # its telemetry span, and `timer` its backstop (Visor.Backstop), if any.
  defp info({:visor_pipeline, ref, caller, payload, deadline, started, timer}, state)
       when is_reference(ref) and is_pid(caller) and node(caller) == node() and
              is_binary(payload) and is_integer(deadline) and is_integer(started) and
              (is_reference(timer) or timer == nil) do
    entry = %{
      ref: ref,
      caller: caller,
      payload: payload,
      deadline: deadline,
      from: {:visor_pipeline, ref, started, timer}
    }

    if Executor.command?(payload),
      do: poll(pipelined(state, entry, caller)),
      else: {:noreply, run([{:reply, entry.from, {:error, :malformed_command}}], state)}
  end

  # A spare's server relays its caller's pipelined command (Visor.Server.Relay),
  # with the time left; it gets the answer, or a refusal before admission.
  # A caller on a node with no replica of a keyed group sends it itself,
  # with its alias as `spare` (Visor.pipeline/3): see carry_out/2.
  defp info({:visor_pipelined, spare, ref, caller, payload, left}, state)
       when (is_pid(spare) or spare == ref) and is_reference(ref) and is_pid(caller) and
              is_binary(payload) and
              is_integer(left) and left >= 0 do
    from = {:visor_relayed, spare, ref}
    now = System.monotonic_time(:millisecond)
    request = {:pipeline, caller, payload}

    admitted =
      if Executor.command?(payload),
        do: Callers.admit(state.callers, request, from, now + left, now, gate(state)),
        else: {:error, :malformed_command}

    case admitted do
      {:error, reason} ->
        {:noreply, run([{:reply, from, {:visor_refused, reason}}], state)}

      {:ok, callers, effects} ->
        poll(dispatch(run(effects, %{state | callers: callers})))
    end
  end

  # A member's answer to a command this spare relayed.
  defp info({:visor_relayed, ref, reply}, state) when is_reference(ref) do
    {relay, effects} = Relay.answered(state.relay, ref, reply, candidates(state))
    {:noreply, run(effects, %{state | relay: relay})}
  end

  # The member server a spare relays to went down (see carry_out({:watch, _})).
  defp info({:DOWN, _monitor, :process, {_name, node}, reason}, state) when is_atom(node) do
    {relay, effects} = Relay.down(state.relay, node, reason, candidates(state))
    {:noreply, run(effects, %{state | relay: relay})}
  end

  # A member's server that said it executes batches exited
  # (Visor.Server.Features).
  defp info({:DOWN, monitor, :process, server, reason}, state) when is_pid(server) do
    {features, effects} = Features.down(state.features, server, monitor, reason)
    {:noreply, run(effects, %{state | features: features})}
  end

  defp info({:nodeup, node}, state) do
    {features, effects} = Features.nodeup(state.features, node)
    state = run(effects, %{state | features: features})
    if Lifecycle.asks_membership?(state.lifecycle), do: ask_membership(state, [node])
    {:noreply, state}
  end

  defp info({:nodedown, _node}, state), do: {:noreply, state}

  # What another server's code executes; with `ask`, it wants to know
  # what this node's does (any node may ask: the answer is no secret).
  defp info({:visor_features, server, features, ask}, state)
       when is_pid(server) and is_list(features) and is_boolean(ask) do
    if ask do
      answer = {:visor_features, self(), Executor.features(), false}
      :erlang.send(server, answer, [:noconnect, :nosuspend])
    end

    {features, effects} =
      Features.heard(state.features, server, node(server), features, members(state))

    {:noreply, run(effects, %{state | features: features})}
  end

  # A poll's turn with an empty mailbox (see poll/1).
  defp info(:timeout, state) do
    if System.monotonic_time(:microsecond) < state.poll_until,
      do: {:noreply, state, 0},
      else: {:noreply, state}
  end

  # A caller's deadline (a timer's own reference: no peer can forge it).
  defp info({:timeout, timer, {:visor_deadline, id}}, %{timers: timers} = state)
       when :erlang.map_get(id, timers) == timer do
    {callers, effects} = Callers.deadline(state.callers, id)
    {:noreply, run(effects, %{state | callers: callers})}
  end

  # The deadline of a caller already answered: its timer fired before
  # cancel_deadline could stop it, and its message was on its way. Nothing
  # to do, and nothing unexpected.
  defp info({:timeout, timer, {:visor_deadline, _id}}, state) when is_reference(timer),
    do: {:noreply, state}

  defp info(
         {:visor_still_recovering, tag},
         %{lifecycle: %{tag: tag, phase: :running} = lifecycle} = state
       ) do
    effects = Lifecycle.still_recovering(lifecycle, Native.status(state.engine).status)
    {:noreply, run(effects, state)}
  end

  # A membership change's caller's deadline (Visor.Server.Changes).
  # The change this node's learner was started for will not happen (its
  # origin said so): the learner stops, unless it has entered its epoch.
  defp info({:visor_stop_learner, cluster}, %{lifecycle: %{cluster: cluster}} = state) do
    {lifecycle, effects} = Lifecycle.stop_learner(state.lifecycle)
    {:noreply, run(effects, %{state | lifecycle: lifecycle})}
  end

  defp info({:visor_change_deadline, tag, id}, %{lifecycle: %{tag: tag}} = state) do
    {changes, effects} = Changes.deadline(state.changes, id)
    {:noreply, run(effects, %{state | changes: changes})}
  end

  # A memory-mode spare asks again (Visor.Server.Lifecycle.ask_membership/1).
  defp info({:visor_ask_membership, tag}, %{lifecycle: %{tag: tag}} = state),
    do: {:noreply, run(Lifecycle.ask_membership(state.lifecycle), state)}

  # A peer's answer: the newest membership it knows (untrusted; the
  # lifecycle checks it).
  defp info({{:visor_membership, tag, node}, {:ok, known}}, %{lifecycle: %{tag: tag}} = state)
       when is_atom(node) do
    {lifecycle, effects} = Lifecycle.membership_answer(state.lifecycle, known)
    state = run(effects, %{state | lifecycle: lifecycle})
    if lifecycle.index, do: Logger.metadata(replica: lifecycle.index)
    {:noreply, dispatch(state)}
  end

  # An older release's answer ({:error, :unknown_call}): it knows no list.
  defp info({{:visor_membership, tag, _node}, _reply}, %{lifecycle: %{tag: tag}} = state),
    do: {:noreply, state}

  defp info({:visor_formation, tag, decision}, %{lifecycle: %{tag: tag}} = state),
    do: {:noreply, formation(state, decision)}

  defp info({:visor_waiting, tag, waiting_for}, %{lifecycle: %{tag: tag}} = state),
    do: {:noreply, %{state | waiting_for: waiting_for}}

  # A store that was still locked: try again (Visor.Server.Lifecycle).
  defp info(:visor_retry_start, %{lifecycle: %{phase: :forming, decision: decision}} = state)
       when decision != nil,
       do: {:noreply, formation(state, decision)}

  # Automatic replacement (Visor.Server.AutoReplace): its tick, the
  # answers to its probes (a router's, of any release, says the replica's
  # node runs the group; a spare's server says it stands by), and the
  # answer to the replacement it asked for.
  defp info(:visor_auto_replace_tick, %{auto_replace: %AutoReplace{}} = state) do
    auto_replace_tick(state)
    now = System.monotonic_time(:millisecond)
    {auto, effects} = AutoReplace.tick(state.auto_replace, auto_replace_view(state), now)
    {:noreply, run(effects, %{state | auto_replace: auto})}
  end

  defp info(
         {{:visor_probe, tag, node}, reply},
         %{lifecycle: %{tag: tag}, auto_replace: %AutoReplace{}} = state
       )
       when is_atom(node) do
    if reply in [{:ok, true}, {:error, :unknown_call}],
      do: {:noreply, %{state | auto_replace: AutoReplace.heard(state.auto_replace, node)}},
      else: {:noreply, state}
  end

  defp info(
         {{:visor_spare?, tag, node}, reply},
         %{lifecycle: %{tag: tag}, auto_replace: %AutoReplace{}} = state
       )
       when is_atom(node) do
    if reply == {:ok, true} do
      now = System.monotonic_time(:millisecond)
      {:noreply, %{state | auto_replace: AutoReplace.standing_by(state.auto_replace, node, now)}}
    else
      {:noreply, state}
    end
  end

  defp info(
         {{:visor_auto_replace, tag}, reply},
         %{lifecycle: %{tag: tag}, auto_replace: %AutoReplace{}} = state
       ) do
    now = System.monotonic_time(:millisecond)
    {auto, effects} = AutoReplace.settled(state.auto_replace, reply, now, state.group)
    {:noreply, run(effects, %{state | auto_replace: auto})}
  end

  # New code of the module may have been loaded; the primary looks for a
  # version every member supports (Visor.Server.Upgrade).
  defp info(:visor_version_tick, state) do
    Process.send_after(self(), :visor_version_tick, @version_tick_ms)
    state = state |> ask_features_unless_quiet() |> expire_relayed()
    {machine, effects} = Machine.code_loaded(state.machine)
    state = run(effects, %{state | machine: machine})
    {upgrade, effects} = Upgrade.tick(state.upgrade, upgrade_view(state))
    {:noreply, dispatch(run(effects, %{state | upgrade: upgrade}))}
  end

  # The end of a hold of this node's callers' commands (Visor.Server.Upgrade).
  defp info(:visor_hold_end, state), do: {:noreply, dispatch(state)}

  # The primary asks which version this node's code supports (any node
  # may ask: the answer is no secret).
  defp info({:visor_version_query, from, round}, state) when is_pid(from) do
    answer = {:visor_version, round, node(), Executor.version(state.module)}
    :erlang.send(from, answer, [:noconnect, :nosuspend])
    {:noreply, state}
  end

  defp info({:visor_version, round, node, version}, state) do
    running = Machine.cluster_version(state.machine)
    {upgrade, effects} = Upgrade.report(state.upgrade, round, node, version, running)
    {:noreply, dispatch(run(effects, %{state | upgrade: upgrade}))}
  end

  # The answer to this server's own proposal of a version (see carry_out/2).
  defp info({{:visor_upgrade, tag}, result}, %{lifecycle: %{tag: tag}} = state) do
    {upgrade, effects} = Upgrade.proposed(state.upgrade, result)
    {:noreply, dispatch(run(effects, %{state | upgrade: upgrade}))}
  end

  defp info({:visor_engine_down, engine, reason}, %{engine: engine} = state)
       when is_reference(engine) do
    {changes, answers} = Changes.abandon(state.changes)
    {lifecycle, effects} = Lifecycle.engine_down(state.lifecycle, reason, state.starts)
    {:noreply, run(answers ++ effects, %{state | lifecycle: lifecycle, changes: changes})}
  end

  defp info(message, state) do
    Logger.debug("#{inspect(state.group)}: dropped unexpected message #{inspect(message)}")
    {:noreply, count(state, :unexpected_messages)}
  end

  # What Visor.Server.Upgrade decides on: this replica's role, and the
  # versions. A primary halted at a poison command could not submit the
  # switch; one blocked on a version knows that its code does not support
  # the cluster's, which its executed ops do not show yet.
  defp upgrade_view(state) do
    engine = if state.lifecycle.phase == :running, do: Native.status(state.engine)

    %{
      primary:
        engine != nil and engine.is_primary and engine.status == :normal and
          Machine.halted(state.machine) == nil,
      running: Machine.cluster_version(state.machine),
      supported: Executor.version(state.module),
      others: if(engine, do: members(state) -- [node()], else: []),
      caught_up: engine != nil and Machine.last_op(state.machine) >= engine.commit_max
    }
  end

  # ---- Engine events -----------------------------------------------------

  defp event({:reply, client, request, _op, outcome}, state) do
    {callers, effects} = Callers.settle(state.callers, client, request, outcome)
    run(effects, %{state | callers: callers})
  end

  defp event({:read_ready, id, _op}, state) do
    {callers, effects} = Callers.read_ready(state.callers, id, &Machine.read(state.machine, &1))
    run(effects, %{state | callers: callers})
  end

  defp event({:storage, kind, detail}, state) do
    if kind in [:error, :resumed],
      do: telemetry(state, [:visor, :storage, kind], %{}, %{detail: detail})

    {lifecycle, effects} = Lifecycle.storage(state.lifecycle, kind, detail)
    run(effects, %{state | lifecycle: lifecycle})
  end

  # Membership changes (docs/operations.md, "Membership changes"): the
  # answer to one asked for here, an epoch entered (or a store's, at
  # boot), and this replica's removal.
  defp event({:reconfigured, id, result}, state) do
    now = System.monotonic_time(:millisecond)
    {changes, effects} = Changes.result(state.changes, id, result, now, change_view(state))
    run(effects, %{state | changes: changes})
  end

  defp event({:epoch, epoch, members, role, membership}, state) do
    {lifecycle, effects} = Lifecycle.epoch(state.lifecycle, epoch, members, role, membership)
    state = run(effects, %{state | lifecycle: lifecycle})
    {changes, effects} = Changes.entered(state.changes, change_view(state))
    state = run(effects, %{state | changes: changes})
    # The members changed: who batches, and whom a version round asks.
    ask_features(state)
  end

  defp event({:removed, epoch}, state) do
    {lifecycle, effects} = Lifecycle.removed(state.lifecycle, epoch)
    state = run(effects, %{state | lifecycle: lifecycle})
    {changes, effects} = Changes.abandon(state.changes)
    run(effects, %{state | changes: changes})
  end

  # A view the router saw this replica move to (Visor.Router): for the logs.
  defp event({:view, view}, state) do
    Logger.metadata(view: view)
    state
  end

  # The primary of a new normal view, as the router saw it: a new primary
  # starts a version round at once (Visor.Server.Upgrade).
  defp event({:primary, _view, _ours}, state) do
    now = System.monotonic_time(:millisecond)
    {upgrade, effects} = Upgrade.view_started(state.upgrade, upgrade_view(state), now)
    run(effects, %{state | upgrade: upgrade})
  end

  defp event(event, state) do
    started = System.monotonic_time()
    {machine, effects} = Machine.event(state.machine, event)
    observe(event, effects, System.monotonic_time() - started, state)
    state = run(effects, %{state | machine: machine})

    if Upgrade.awaiting_catch_up?(state.upgrade),
      do: upgrade_caught_up(state),
      else: state
  end

  # A new primary's first version round waited for it to execute its log.
  defp upgrade_caught_up(state) do
    now = System.monotonic_time(:millisecond)
    {upgrade, effects} = Upgrade.caught_up(state.upgrade, upgrade_view(state), now)
    run(effects, %{state | upgrade: upgrade})
  end

  # Telemetry for the machine's events: the checkpoints it encoded (the
  # time is encode_snapshot's) or installed (decode_snapshot's), and a
  # divergence found.
  defp observe({:snapshot, op}, effects, duration, state) do
    for {:snapshot, ^op, bytes} <- effects,
        do:
          telemetry(state, [:visor, :checkpoint, :taken], checkpoint(bytes, duration), %{op: op})
  end

  defp observe({:install_snapshot, op, bytes}, effects, duration, state) do
    unless Enum.any?(effects, &match?({:fail, _}, &1)),
      do:
        telemetry(state, [:visor, :checkpoint, :installed], checkpoint(bytes, duration), %{op: op})
  end

  defp observe({:diverged, op, digest, quorum}, _effects, _duration, state),
    do: telemetry(state, [:visor, :diverged], %{}, %{op: op, digest: digest, quorum: quorum})

  defp observe(_event, _effects, _duration, _state), do: :ok

  defp checkpoint(bytes, duration), do: %{bytes: byte_size(bytes), duration: duration}

  defp telemetry(state, event, measurements, metadata) do
    metadata = Map.merge(metadata, %{group: state.group, node: node()})
    Visor.Telemetry.execute(event, measurements, metadata)
  end

  # ---- Effects -----------------------------------------------------------

  # Carries out the deciders' effects, in order.
  defp run([], state), do: state
  defp run([effect | effects], state), do: run(effects, carry_out(effect, state))

  # A pipelining caller of this node: one message to its alias, `{ref,
  # reply}`, which ends its span; a spare's, through the spare's server.
  # Its backstop is cancelled first: one that fired already answers the
  # caller `:timeout` (its timer's message is on its way to the backstop),
  # so the server sends nothing and its span reports what the caller got.
  defp carry_out({:reply, {:visor_pipeline, ref, started, timer}, reply}, state) do
    reply =
      if backstop_fired?(timer) do
        {:error, :timeout}
      else
        # As Visor.commit/3 unwraps a call's reply (a member's, for a spare).
        send(ref, {ref, with({:ok, result} <- reply, do: result)})
        reply
      end

    measurements = %{duration: System.monotonic_time() - started}
    telemetry(state, [:visor, :pipeline, :stop], measurements, stop_metadata(ref, reply))
    state
  end

  # A keyed group's caller on a node with no replica: the answer goes to
  # its alias, as this node's own pipelining callers get theirs (a refusal
  # is the error). It has no telemetry span (docs/operations.md).
  defp carry_out({:reply, {:visor_relayed, ref, ref}, reply}, state) do
    reply = with {:visor_refused, reason} <- reply, do: {:error, reason}
    :erlang.send(ref, {ref, with({:ok, result} <- reply, do: result)}, [:noconnect])
    state
  end

  defp carry_out({:reply, {:visor_relayed, spare, ref}, reply}, state) do
    :erlang.send(spare, {:visor_relayed, ref, reply}, [:noconnect])
    state
  end

  defp carry_out({:reply, from, reply}, state) do
    GenServer.reply(from, reply)
    state
  end

  defp carry_out({:answer, entry, reply}, state),
    do: carry_out({:reply, entry.from, reply}, state)

  # Only a default group has spares (a keyed group runs on its members
  # alone), so the server's name here is an atom.
  defp carry_out({:watch, node}, state) do
    Process.monitor({Visor.Supervisor.name(state.group, :server), node})
    state
  end

  defp carry_out({:forward, node, entry}, state) do
    left = max(entry.deadline - System.monotonic_time(:millisecond), 0)
    message = {:visor_pipelined, self(), entry.ref, entry.caller, entry.payload, left}
    Visor.Supervisor.send_remote(state.group, :server, node, message, [:noconnect])
    state
  end

  defp carry_out({:deadline, id, ms}, state) do
    timer = :erlang.start_timer(ms, self(), {:visor_deadline, id})
    %{state | timers: Map.put(state.timers, id, timer)}
  end

  defp carry_out({:cancel_deadline, id}, state) do
    {timer, timers} = Map.pop(state.timers, id)
    :erlang.cancel_timer(timer)
    %{state | timers: timers}
  end

  defp carry_out({:submit, client, session, request, payload}, state) do
    :ok = Native.submit(state.engine, client, session, request, payload)
    state
  end

  defp carry_out({:read, id}, state) do
    :ok = Native.read(state.engine, id)
    state
  end

  defp carry_out({:result, client, request, result}, state),
    do: %{state | callers: Callers.result(state.callers, client, request, result)}

  defp carry_out({:ask, round, nodes}, state) do
    query = {:visor_version_query, self(), round}
    ask_servers(state, nodes, query)
  end

  defp carry_out({:ask_features, nodes}, state) do
    query = {:visor_features, self(), Executor.features(), true}
    ask_servers(state, nodes, query)
  end

  defp carry_out({:monitor_features, node, server}, state) do
    monitor = Process.monitor(server)
    {features, effects} = Features.monitored(state.features, node, server, monitor)
    run(effects, %{state | features: features})
  end

  defp carry_out({:demonitor, monitor}, state) do
    Process.demonitor(monitor, [:flush])
    state
  end

  # Kept for this server's successor: one restarted while a member is
  # down still batches, as it would have here.
  defp carry_out({:remember_features, nodes}, state) do
    :ok = Lifetime.batch_members(state.group, nodes)
    state
  end

  defp carry_out(:batches_changed, state), do: dispatch(state)

  # The switch goes through the line like a caller's command; its answer
  # comes back to this process as a reply would to a caller.
  defp carry_out({:propose, version}, state) do
    now = System.monotonic_time(:millisecond)
    from = {self(), {:visor_upgrade, state.lifecycle.tag}}
    deadline = now + @proposal_timeout_ms
    request = {:switch_version, version}

    case Callers.admit(state.callers, request, from, deadline, now, gate(state)) do
      {:ok, callers, effects} ->
        run(effects, %{state | callers: callers})

      {:error, _reason} = error ->
        {upgrade, effects} = Upgrade.proposed(state.upgrade, error)
        run(effects, %{state | upgrade: upgrade})
    end
  end

  defp carry_out({:snapshot, op, bytes}, state) do
    :ok = Native.snapshot(state.engine, op, bytes)
    state
  end

  # The router owns the engine, so that peer traffic never waits for this
  # process (see the top of this module).
  defp carry_out({:start_engine, opts}, state) do
    engine = Router.start_engine(state.group, opts, state.lifecycle.members)
    state = ask_features(%{state | engine: engine, starts: state.starts + 1})
    now = System.monotonic_time(:millisecond)
    {upgrade, effects} = Upgrade.engine_started(state.upgrade, upgrade_view(state), now)
    run(effects, %{state | upgrade: upgrade})
  end

  # A change's learners start on their nodes first (each a spare running
  # the group); one that cannot settles the change as unreachable, and
  # those started stop.
  defp carry_out({:reconfigure, id, member_ids, ticks, learners}, state) do
    lifecycle = state.lifecycle

    spec = %{
      cluster: lifecycle.cluster,
      genesis: Tuple.to_list(lifecycle.members),
      current: lifecycle.current,
      epoch: lifecycle.epoch
    }

    started =
      Enum.reduce_while(learners, [], fn {node, slot, member}, started ->
        spec = Map.merge(spec, %{slot: slot, member: member, joined: lifecycle.epoch + 1})

        if start_learner(state.group, node, spec) == :ok,
          do: {:cont, [node | started]},
          else: {:halt, {:failed, node, started}}
      end)

    case started do
      {:failed, node, started} ->
        carry_out({:stop_learners, started}, state)
        event({:reconfigured, id, {:unreachable, node}}, state)

      _started ->
        :ok = Native.reconfigure(state.engine, id, member_ids, ticks)
        state
    end
  end

  # Automatic replacement (Visor.Server.AutoReplace): probes as calls
  # whose answers come back as messages (any release answers a call), never
  # a connection of their own, never a wait on a busy peer.
  defp carry_out({:probe_members, nodes}, state) do
    for node <- nodes do
      message = {:"$gen_call", {self(), {:visor_probe, state.lifecycle.tag, node}}, :visor_alive}
      Visor.Supervisor.send_remote(state.group, :router, node, message, [:noconnect, :nosuspend])
    end

    state
  end

  defp carry_out({:remember_membership, known}, state) do
    :ok = Lifetime.put_membership(state.group, Formation.lifetime_key(state.config), known)
    state
  end

  # Only a default group has spares (a keyed group's members are its
  # group hosts' to place).
  defp carry_out(:ask_membership, state), do: ask_membership(state, Node.list())

  defp carry_out({:probe_spares, nodes}, state) do
    for node <- nodes do
      message =
        {:"$gen_call", {self(), {:visor_spare?, state.lifecycle.tag, node}}, :visor_spare?}

      Visor.Supervisor.send_remote(state.group, :server, node, message, [:noconnect, :nosuspend])
    end

    state
  end

  # The same change as Visor.reconfigure(group, {:replace, lost, spare}),
  # asked by this server: the answer comes back as a reply to itself.
  defp carry_out({:auto_replace, lost, spare}, state) do
    now = System.monotonic_time(:millisecond)
    from = {self(), {:visor_auto_replace, state.lifecycle.tag}}
    deadline = now + @auto_change_timeout_ms

    {changes, effects} =
      Changes.request(
        state.changes,
        {:replace, lost, spare},
        from,
        deadline,
        now,
        change_view(state)
      )

    run(effects, %{state | changes: changes})
  end

  defp carry_out({:stop_learners, nodes}, state) do
    for node <- nodes,
        do: Visor.Supervisor.send_remote(state.group, :server, node, stop_learner(state), [])

    state
  end

  # This node was removed: its replica handles nothing more.
  defp carry_out(:stop_engine, state) do
    if state.engine, do: Native.stop(state.engine)
    %{state | engine: nil}
  end

  defp carry_out(:discard_engine, state),
    do: %{state | engine: nil, callers: Callers.requeue(state.callers)}

  # This node is a spare: its pipelining callers' commands go to a member.
  defp carry_out({:fail_callers, :spare}, state) do
    {callers, entries, effects} = Callers.take_pipelined(state.callers)
    state = run(effects, %{state | callers: callers})
    state = Enum.reduce(entries, state, &relay(&2, relay_entry(&1)))
    {callers, effects} = Callers.fail_all(state.callers, :spare)
    run(effects, %{state | callers: callers})
  end

  defp carry_out({:fail_callers, error}, state) do
    {callers, effects} = Callers.fail_all(state.callers, error)
    run(effects, %{state | callers: callers})
  end

  defp carry_out({:fail, reason}, state) do
    {lifecycle, effects} = Lifecycle.fail(state.lifecycle, reason)
    run(effects, %{state | lifecycle: lifecycle})
  end

  defp carry_out({:after, ms, message}, state) do
    Process.send_after(self(), message, ms)
    state
  end

  defp carry_out({:log, level, message}, state) do
    Logger.log(level, message)
    state
  end

  # The rest of this message's work is dropped: the server stops.
  defp carry_out({:stop, reason}, state), do: throw({:visor_stop, reason, state})

  # A call whose answer comes back as a message (any release answers a
  # call: an older one `{:error, :unknown_call}`, ignored), never a
  # connection of its own.
  defp ask_membership(%{group: group} = state, nodes) when is_atom(group) do
    key = Formation.lifetime_key(state.config)

    for node <- nodes do
      message =
        {:"$gen_call", {self(), {:visor_membership, state.lifecycle.tag, node}},
         {:visor_membership, key}}

      Visor.Supervisor.send_remote(group, :server, node, message, [:noconnect, :nosuspend])
    end

    state
  end

  defp ask_membership(state, _nodes), do: state

  # The other members' servers: never a connection of its own, never a
  # wait on a busy one (a query lost is asked again).
  defp ask_servers(state, nodes, query) do
    for node <- nodes,
        do:
          Visor.Supervisor.send_remote(state.group, :server, node, query, [:noconnect, :nosuspend])

    state
  end

  # Whether a pipelined command's backstop fired (`Visor.Backstop`); if not,
  # it is cancelled here and sends nothing.
  defp backstop_fired?(nil), do: false
  defp backstop_fired?(timer), do: :erlang.cancel_timer(timer) == false

  defp relay_entry({{:visor_pipeline, ref, _started, _timer} = from, caller, payload, deadline}),
    do: %{ref: ref, caller: caller, payload: payload, deadline: deadline, from: from}

  defp stop_metadata(ref, reply) do
    metadata = %{telemetry_span_context: ref}

    case reply do
      {:error, reason} -> Visor.Telemetry.outcome(metadata, reason)
      _ -> Map.put(metadata, :outcome, :ok)
    end
  end

  defp count(state, key) do
    telemetry(state, [:visor, :message, :dropped], %{count: 1}, %{reason: key})
    %{state | stats: Map.update!(state.stats, key, &(&1 + 1))}
  end

  # ---- Status ------------------------------------------------------------

  # What :sys.get_status/1 shows (through Visor.Guard) and a crash report
  # could: where the server stands, never the application's state, the
  # commands in flight, or the start options (init_arg may hold secrets).
  # OTP 25's format_status/1 (Elixir 1.14's GenServer does not list it).
  @doc false
  def format_status(%{state: %__MODULE__{} = state} = status) do
    %{
      status
      | state: %{
          group: state.group,
          phase: state.lifecycle.phase,
          members: state.lifecycle.members,
          index: state.lifecycle.index,
          epoch: state.lifecycle.epoch,
          membership_role: state.lifecycle.role,
          engine: state.engine,
          engine_starts: state.starts,
          in_flight: Callers.in_flight(state.callers),
          poison: state.machine.poison,
          diverged: state.machine.diverged,
          stats: state.stats
        }
    }
  end

  def format_status(status), do: status

  defp status(state) do
    engine = if state.lifecycle.phase == :running, do: Native.status(state.engine)

    Status.build(state.lifecycle, engine, %{
      node: node(),
      connected: Node.list(),
      pool: Map.put(Callers.pool(state.callers), :batches, batch_bytes(state) > 0),
      poison: state.machine.poison,
      version: Machine.versions(state.machine),
      waiting_for: state.waiting_for,
      auto_replace: AutoReplace.status(state.auto_replace, System.monotonic_time(:millisecond)),
      stats:
        state.router_stats
        |> Router.stats()
        |> Map.merge(state.stats, fn _key, ours, theirs -> ours + theirs end)
        |> Map.put(:engine_starts, state.starts)
    })
  end
end
