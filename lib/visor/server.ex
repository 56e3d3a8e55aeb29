defmodule Visor.Server do
  @moduledoc """
  One group's server on one node (registered locally under the group's
  module, so a peer reaches it as `{module, node}`).

  It owns the application state and this node's replica (a
  `Visor.Native` engine), and does four things:

    * **callers**: `commit` and linearizable reads wait in a line and go to
      the engine through a pool of client sessions (`Visor.Sessions`); each
      caller is answered when the engine settles its request, or with
      `{:error, :timeout}` at its deadline, whichever comes first;
    * **execution**: committed entries arrive as `{:execute, ...}` events,
      in op order, on every replica; each executed command goes through
      `Visor.Executor` (the user's `handle_commit`). The result is kept for
      this node's own callers until the engine's `{:reply, ...}` event;
    * **routing**: `{:send, to, messages}` events become a plain,
      non-blocking send of `{:visor_peer, messages}` to `{module,
      node_of(to)}`; messages from peers go to `Visor.Native.deliver/2`,
      which verifies them;
    * **introspection**: `status`.

  The replica starts only when `Visor.Formation` says this node is a member.
  docs/commands.md follows one command through all of this.

  In disk mode the engine opens the group's store before the replica runs,
  and reports how (`{:storage, :created | :restarted | :recovering | :repairing, _}`),
  then write failures and their end; the server logs them and shows them in
  `status`. A store the engine refuses stops the server with
  `{:storage_refused, reason}` (the one case retried first is a store still
  locked for a moment by this node's previous server, after a restart).

  It runs in `Visor.Guard` (no malformed message crashes it) and traps
  exits (a process a `handle_commit` linked to cannot take it down). A
  `handle_commit` that kills it anyway at the same op twice in a row is a
  poison command: the next server stops executing there until a committed
  `Visor.skip/3` names that op (docs/operations.md, "Poison commands").
  """

  use GenServer
  require Logger

  alias Visor.{Executor, Formation, Lifetime, Native, Options, Sessions}

  # A store still locked by this node's previous engine (see
  # handle_info/2) is tried again for up to 5 s.
  @store_start_attempts 50
  @store_retry_ms 100

  # Busy polling (`busy_poll_us`) only while at most this many of this
  # node's commands and reads are in flight: with more, the mailbox is
  # rarely empty for long, batching does the work, and a spinning
  # scheduler would only take CPU from the engine threads.
  @busy_poll_max_inflight 4

  # A rejoining replica still recovering after this long logs why it may
  # never finish (a majority that lost its memory).
  @recovering_warn_ms 10_000

  # The longest a caller waits for its deadline (2^32 - 1 ms, a timer
  # every OTP release accepts).
  @max_deadline_ms 0xFFFF_FFFF

  # A server that died inside handle_commit at the same op this many times
  # in a row stops executing there (a poison command; see `Visor.skip/3`).
  @poison_deaths 2

  defstruct [
    :module,
    :config,
    :arity,
    :app_state,
    :engine,
    :members,
    :index,
    :cluster,
    :sessions,
    :formation_tag,
    # Disk mode: the member decision (kept to retry the start while the
    # store is still locked), the engine's start attempts, and how the
    # store opened (:created, :restarted, :recovering or :repairing; nil until then).
    :decision,
    :opened,
    # Visor.Lifetime's counters: the op handle_commit is running, for the
    # next server if this one dies in it.
    :counters,
    # A poison command: %{op, crashes}, and the engine events from that op
    # on, held (newest first) until a committed skip of the op arrives.
    poison: nil,
    held: [],
    starts: 0,
    # :forming, :running, :spare, {:failed, reason} or {:refused, reason}
    phase: :forming,
    # Jobs waiting for a session; `queued` counts them (dead ones included
    # until popped) because :queue.len/1 is O(n).
    queue: :queue.new(),
    queued: 0,
    # {client, request} => job, until the engine settles the request.
    inflight: %{},
    # ref => {from, timer}: callers still waiting for an answer.
    callers: %{},
    # Linearizable reads handed to the engine: id => job.
    reads: %{},
    next_read: 1,
    # Monotonic µs until which the server polls its mailbox (see poll/1).
    poll_until: 0,
    # The op where this replica's state was found to differ from the
    # quorum's, until it installs the quorum's checkpoint (nil: it does not).
    diverged: nil,
    stats: %{peer_malformed: 0, send_noconnect: 0, send_busy: 0, unexpected_messages: 0}
  ]

  @doc false
  def child_spec(config), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [config]}}

  @doc "Starts the server of a group (under `Visor.Supervisor`)."
  @spec start_link(Options.t()) :: GenServer.on_start()
  def start_link(%Options{module: module} = config) do
    # Visor.Guard, not GenServer: no message a peer sends may crash it.
    Visor.Guard.start_link(__MODULE__, config, Visor.Supervisor.name(module, :server))
  end

  # ---- Setup -------------------------------------------------------------

  @impl GenServer
  def init(%Options{module: module} = config) do
    # A process that handle_commit links to and that dies must not take
    # the server down with it: its exit becomes a message (counted in
    # unexpected_messages). Visor.Guard stops the server on its
    # supervisor's exit, as gen_server does.
    Process.flag(:trap_exit, true)
    counters = Lifetime.get(module).counters

    state = %__MODULE__{
      module: module,
      config: config,
      arity: Executor.arity(module),
      app_state: module.initial_state(config.opts),
      sessions: Sessions.new(config.pool_size),
      counters: counters,
      poison: poison(module, Lifetime.death_at(counters))
    }

    tag = make_ref()
    {:ok, formation(%{state | formation_tag: tag}, Formation.subscribe(module, tag))}
  end

  # What the previous server's death inside handle_commit (if it died
  # there) means for this one: a poison command after @poison_deaths in a row.
  defp poison(_module, nil), do: nil

  defp poison(module, {op, deaths}) when deaths < @poison_deaths do
    Logger.warning(
      "#{inspect(module)}: this node's previous server died inside handle_commit at op #{op}; " <>
        "the replica executes it again (it stops there if it dies there again)"
    )

    nil
  end

  defp poison(module, {op, deaths}) do
    Logger.error(
      "#{inspect(module)}: handle_commit at op #{op} killed this node's server #{deaths} times " <>
        "in a row; the replica stops executing at op #{op} (it keeps its log and keeps voting). " <>
        "To skip that op on every replica: Visor.skip(#{inspect(module)}, #{op})"
    )

    %{op: op, crashes: deaths}
  end

  defp formation(state, :pending), do: state

  # A rejoining replica (`recover: true`) starts from `initial_state` like a
  # fresh one: once it has recovered, the engine executes the whole
  # committed log from op 1, which rebuilds the state. Callers wait in line
  # meanwhile (the engine holds their requests until it is normal).
  defp formation(
         %{phase: :forming} = state,
         {:member, %{cluster: cluster, members: members, recover: recover}}
       ) do
    index = Enum.find_index(members, &(&1 == node()))

    engine_opts =
      Map.merge(state.config.engine, %{
        cluster: cluster,
        replica_count: length(members),
        replica_index: index,
        recover: recover
      })

    engine_opts = Map.merge(engine_opts, storage_opts(state.config, members))

    {:ok, engine} = Native.start(engine_opts, self())

    if recover,
      do:
        Process.send_after(
          self(),
          {:visor_still_recovering, state.formation_tag},
          @recovering_warn_ms
        )

    dispatch(%{
      state
      | phase: :running,
        engine: engine,
        members: List.to_tuple(members),
        index: index,
        cluster: cluster,
        decision: {:member, %{cluster: cluster, members: members, recover: recover}},
        starts: state.starts + 1
    })
  end

  defp formation(%{phase: :forming} = state, :spare) do
    fail_all(%{state | phase: :spare}, :spare)
  end

  # This node's settings differ from the cluster's (Visor.Formation).
  defp formation(%{phase: :forming} = state, {:refused, reason}) do
    fail_all(%{state | phase: {:refused, reason}}, reason)
  end

  defp formation(state, _decision), do: state

  # Disk mode: the store is `data_dir/<group>`; a new one records the
  # members, for a restart to find them (Visor.Formation). An existing
  # store is the engine's to open (`recover` is then ignored).
  defp storage_opts(%Options{storage: :memory}, _members), do: %{}

  defp storage_opts(%Options{storage: {:disk, dir}, module: module} = config, members) do
    meta = Formation.store_meta(members, config.settings)
    %{data_dir: dir, group: Options.group_name(module), meta: meta}
  end

  # ---- Callers -----------------------------------------------------------

  @impl GenServer
  def handle_call({{:commit, payload}, deadline}, from, state)
      when is_binary(payload) and is_integer(deadline) do
    max = state.config.engine.batch_max_bytes

    cond do
      error = phase_error(state) ->
        {:reply, {:error, error}, state}

      byte_size(payload) > max ->
        {:reply, {:error, {:command_too_large, byte_size(payload), max}}, state}

      state.poison != nil ->
        {:reply, {:error, {:halted, state.poison.op}}, state}

      true ->
        poll(enqueue(state, from, deadline, :commit, payload))
    end
  end

  # A skip is a command like any other (so every replica executes it at
  # the same op); it is the one command a halted replica accepts.
  def handle_call({{:skip, op}, deadline}, from, state)
      when is_integer(op) and op in 1..0xFFFF_FFFF_FFFF_FFFF and is_integer(deadline) do
    case phase_error(state) do
      nil -> poll(enqueue(state, from, deadline, :commit, Executor.skip_payload(op)))
      error -> {:reply, {:error, error}, state}
    end
  end

  def handle_call({{:read, path}, deadline}, from, state)
      when is_list(path) and is_integer(deadline) do
    cond do
      error = phase_error(state) -> {:reply, {:error, error}, state}
      state.poison != nil -> {:reply, {:error, {:halted, state.poison.op}}, state}
      true -> poll(linearizable_read(state, from, deadline, path))
    end
  end

  def handle_call({{:read_local, path}, _deadline}, _from, state) when is_list(path) do
    case phase_error(state) do
      # A state known to differ from the quorum's is not served.
      nil when state.diverged != nil -> {:reply, {:error, :diverged}, state}
      nil -> {:reply, extract(state.app_state, path), state}
      error -> {:reply, {:error, error}, state}
    end
  end

  def handle_call(:status, _from, state), do: {:reply, status(state), state}

  # Calls from other nodes are untrusted input too.
  def handle_call(_request, _from, state) do
    {:reply, {:error, :unknown_call}, count(state, :unexpected_messages)}
  end

  @impl GenServer
  def handle_cast(_request, state), do: {:noreply, count(state, :unexpected_messages)}

  defp phase_error(%{phase: phase}) do
    case phase do
      :running -> nil
      # Callers wait for formation until their deadline.
      :forming -> nil
      :spare -> :spare
      {:failed, reason} -> {:engine_down, reason}
      {:refused, reason} -> reason
    end
  end

  defp store_in_use?(reason), do: match?({:store_in_use, _}, reason)

  # The reply after a hand-off to the engine (a submit, a read, a peer's
  # message) whose answer a local caller may be waiting for. With few
  # commands in flight, the server keeps its scheduler awake for up to
  # `busy_poll_us` (a zero timeout, renewed by handle_info(:timeout, _)
  # until `poll_until`), so that the engine's `enif_send` finds it running
  # instead of having to wake a sleeping scheduler thread, which costs tens
  # of µs on a virtual machine. Any message ends the poll; the handler of
  # that message decides whether to poll again.
  defp poll(%{config: %{busy_poll_us: us}} = state) when us > 0 do
    waiting = map_size(state.inflight) + map_size(state.reads)

    if waiting in 1..@busy_poll_max_inflight do
      {:noreply, %{state | poll_until: System.monotonic_time(:microsecond) + us}, 0}
    else
      {:noreply, state}
    end
  end

  defp poll(state), do: {:noreply, state}

  # Linearizable reads use the engine's read index (`Visor.Native.read/2`):
  # the primary confirms with a quorum that it still leads, nothing is
  # appended to the log, and `{:read_ready, id, op}` arrives once this
  # replica has executed every op committed before the read began. The read
  # waits in the same line as commits, so it also follows this node's
  # earlier commits.
  defp linearizable_read(state, from, deadline, path) do
    enqueue(state, from, deadline, {:read, path}, nil)
  end

  defp enqueue(state, from, deadline, kind, payload) do
    ref = make_ref()
    # A caller (or any node's raw call) may name any deadline: one too far
    # for a timer would raise in send_after and crash the server. Past
    # @max_deadline_ms (~49 days) the caller is answered :timeout then.
    delay = min(max(deadline - System.monotonic_time(:millisecond), 0), @max_deadline_ms)
    timer = Process.send_after(self(), {:visor_deadline, ref}, delay)
    job = %{ref: ref, kind: kind, payload: payload, result: nil}

    dispatch(%{
      state
      | callers: Map.put(state.callers, ref, {from, timer}),
        queue: :queue.in(job, state.queue),
        queued: state.queued + 1
    })
  end

  # Hands waiting jobs to idle sessions; when there are none, registers new
  # ones (up to the pool size) and leaves the jobs waiting.
  defp dispatch(%{phase: :running} = state) do
    case next_job(state) do
      nil ->
        state

      {%{kind: {:read, _}} = job, state} ->
        id = state.next_read
        :ok = Native.read(state.engine, id)
        dispatch(%{state | reads: Map.put(state.reads, id, job), next_read: id + 1})

      {job, state} ->
        case Sessions.checkout(state.sessions) do
          {:ok, client, session, request, sessions} ->
            :ok = Native.submit(state.engine, client, session, request, job.payload)
            inflight = Map.put(state.inflight, {client, request}, job)
            dispatch(%{state | sessions: sessions, inflight: inflight})

          :none ->
            state = %{state | queue: :queue.in_r(job, state.queue), queued: state.queued + 1}
            {clients, sessions} = Sessions.grow(state.sessions, state.queued)
            for client <- clients, do: :ok = Native.submit(state.engine, client, 0, 0, <<>>)
            %{state | sessions: sessions}
        end
    end
  end

  defp dispatch(state), do: state

  # The next job whose caller still waits; jobs of callers that timed out
  # while waiting in line are dropped here (they never reached the log).
  defp next_job(state) do
    case :queue.out(state.queue) do
      {:empty, _} ->
        nil

      {{:value, job}, queue} ->
        state = %{state | queue: queue, queued: state.queued - 1}
        if Map.has_key?(state.callers, job.ref), do: {job, state}, else: next_job(state)
    end
  end

  defp answer(state, ref, reply) do
    case Map.pop(state.callers, ref) do
      {nil, _} ->
        state

      {{from, timer}, callers} ->
        Process.cancel_timer(timer)
        GenServer.reply(from, reply)
        %{state | callers: callers}
    end
  end

  defp fail_all(state, error) do
    for {_ref, {from, timer}} <- state.callers do
      Process.cancel_timer(timer)
      GenServer.reply(from, {:error, error})
    end

    %{state | callers: %{}, queue: :queue.new(), queued: 0, inflight: %{}, reads: %{}}
  end

  # ---- Messages ----------------------------------------------------------

  @impl GenServer
  def handle_info({:visor_engine, engine, events}, %{engine: engine} = state)
      when is_reference(engine) and is_list(events) do
    state = Enum.reduce(events, state, &event/2)
    {:noreply, dispatch(state)}
  catch
    # A checkpoint that does not decode: this replica cannot know its state.
    {:visor_stop, reason, state} ->
      state = fail_all(%{state | phase: {:failed, reason}}, {:engine_down, reason})
      {:stop, reason, state}
  end

  # `messages` is a list (a peer's `{:send, _, messages}`), or one binary.
  def handle_info({:visor_peer, messages}, %{phase: :running} = state)
      when is_list(messages) or is_binary(messages) do
    case Native.deliver(state.engine, messages) do
      :ok -> poll(state)
      {:malformed, dropped} -> poll(count(state, :peer_malformed, dropped))
    end
  end

  # A replica that is not running yet (or any more) drops peer traffic; the
  # protocol resends what matters.
  def handle_info({:visor_peer, messages}, state) when is_list(messages) or is_binary(messages),
    do: {:noreply, state}

  def handle_info({:visor_peer, _not_bytes}, state),
    do: {:noreply, count(state, :peer_malformed)}

  # A poll's turn with an empty mailbox (see poll/1).
  def handle_info(:timeout, state) do
    if System.monotonic_time(:microsecond) < state.poll_until,
      do: {:noreply, state, 0},
      else: {:noreply, state}
  end

  def handle_info({:visor_deadline, ref}, state) do
    # The job stays where it is: a queued one is skipped when popped; an
    # in-flight one keeps its session until the engine settles it; a read's
    # late `read_ready` finds no caller.
    {:noreply, answer(state, ref, {:error, :timeout})}
  end

  def handle_info({:visor_still_recovering, tag}, %{formation_tag: tag, phase: :running} = state) do
    if Native.status(state.engine).status == :recovering do
      Logger.error(
        "#{inspect(state.module)}: replica #{state.index} is still recovering after " <>
          "#{div(@recovering_warn_ms, 1000)} s: it needs a quorum of the other members (a " <>
          "majority of all members, itself not counted) up and normal. If a majority lost " <>
          "their memory at once (nodes or servers restarted together), the state is lost and " <>
          "this does not end by itself: stop the group on every node, call Visor.forget/1 " <>
          "there (or restart the nodes), then start it again (a new, empty cluster)"
      )
    end

    {:noreply, state}
  end

  def handle_info({:visor_formation, tag, decision}, %{formation_tag: tag} = state) do
    {:noreply, formation(state, decision)}
  end

  # The store could not be opened: the engine never built the replica.
  def handle_info(
        {:visor_engine_down, engine, reason},
        %{engine: engine, config: %{storage: {:disk, dir}}, opened: nil} = state
      )
      when is_reference(engine) do
    if store_in_use?(reason) and state.starts < @store_start_attempts do
      # After a restart of this group (or its server), the previous
      # engine releases the store's lock a moment after its owner died.
      Process.send_after(self(), :visor_retry_start, @store_retry_ms)
      {:noreply, requeue(%{state | phase: :forming, engine: nil})}
    else
      Logger.error(
        "#{inspect(state.module)}: cannot open the store in #{dir}: #{Native.format_error(reason)}; " <>
          "this node's server stops"
      )

      state = fail_all(%{state | phase: {:failed, reason}}, {:engine_down, reason})
      {:stop, {:storage_refused, reason}, state}
    end
  end

  def handle_info(:visor_retry_start, %{phase: :forming, decision: decision} = state)
      when decision != nil do
    {:noreply, formation(state, decision)}
  end

  def handle_info({:visor_engine_down, engine, reason}, %{engine: engine} = state)
      when is_reference(engine) do
    Logger.error(
      "#{inspect(state.module)}: this node's replica failed: #{inspect(reason)}; " <>
        "it will not come back in this process's lifetime"
    )

    {:noreply, fail_all(%{state | phase: {:failed, reason}}, {:engine_down, reason})}
  end

  def handle_info(message, state) do
    Logger.debug("#{inspect(state.module)}: dropped unexpected message #{inspect(message)}")
    {:noreply, count(state, :unexpected_messages)}
  end

  # What was handed to an engine that never ran waits in line again, for
  # the next engine, with a new pool of sessions.
  defp requeue(state) do
    jobs = Map.values(state.inflight) ++ Map.values(state.reads)

    %{
      state
      | queue: Enum.reduce(jobs, state.queue, &:queue.in_r/2),
        queued: state.queued + length(jobs),
        inflight: %{},
        reads: %{},
        sessions: Sessions.new(state.config.pool_size)
    }
  end

  # ---- Engine events -----------------------------------------------------

  defp event({:send, to, messages}, state) do
    case :erlang.send(
           {state.module, elem(state.members, to)},
           {:visor_peer, messages},
           # Never block the server: not on connection setup (Formation
           # reconnects members), not on a busy distribution buffer. The
           # protocol tolerates the loss; the counters show it.
           [:noconnect, :nosuspend]
         ) do
      :ok -> state
      :noconnect -> count(state, :send_noconnect)
      :nosuspend -> count(state, :send_busy)
    end
  end

  # Halted at a poison command: from its op on, executes and checkpoint
  # requests wait (in order) for a committed skip of that op.
  defp event({:execute, op, _, _, _} = event, %{poison: %{op: poison}} = state)
       when op >= poison,
       do: hold(event, state)

  defp event({:snapshot, op} = event, %{poison: %{op: poison}} = state) when op >= poison,
    do: hold(event, state)

  defp event({:execute, op, view, timestamp, requests}, state) do
    meta = %{op: op, view: view, timestamp: timestamp}
    # Lifetime tells the next server where this one died, if it dies in
    # handle_commit (two atomics writes per op).
    :ok = Lifetime.executing(state.counters, op)
    state = Enum.reduce(requests, state, &execute(&1, meta, &2))
    :ok = Lifetime.executing(state.counters, 0)
    state
  end

  defp event({:reply, client, request, _op, outcome}, state) do
    case Sessions.lookup(state.sessions, client) do
      :registering ->
        case outcome do
          {:registered, session} ->
            %{state | sessions: Sessions.registered(state.sessions, client, session)}

          _ ->
            %{state | sessions: Sessions.drop(state.sessions, client)}
        end

      {:busy, _session, ^request} ->
        {job, inflight} = Map.pop(state.inflight, {client, request})
        state = %{state | inflight: inflight}
        settle(state, client, request, job, outcome)

      # A stale reply (a duplicate, or for a slot since dropped).
      _ ->
        state
    end
  end

  defp event({:read_ready, id, _op}, state) do
    case Map.pop(state.reads, id) do
      {nil, _} ->
        state

      {job, reads} ->
        reply =
          if state.poison,
            do: {:error, {:halted, state.poison.op}},
            else: read_result(state, job)

        answer(%{state | reads: reads}, job.ref, reply)
    end
  end

  defp event({:storage, kind, detail}, state), do: storage_event(kind, detail, state)

  # A checkpoint is due: the state as of `op` (every execute up to it, and
  # none after, has been applied: events come in order).
  defp event({:snapshot, op}, state) do
    bytes = encode_snapshot(state.module, state.app_state)
    :ok = Native.snapshot(state.engine, op, bytes)
    state
  catch
    kind, reason ->
      # No checkpoint at this op; the next one is tried as usual.
      Logger.error(
        "#{inspect(state.module)}: encode_snapshot failed at op #{op}: " <>
          Exception.format(kind, reason, __STACKTRACE__)
      )

      state
  end

  # Restart from a checkpoint, or a state sync: the state becomes the
  # checkpoint's (the executes that follow continue from it).
  defp event({:install_snapshot, op, bytes}, state) do
    # The engine executes again from the checkpoint on: held events are
    # stale, and a checkpoint at or past the poison op has it applied.
    state = %{state | held: []}
    state = if state.poison && op >= state.poison.op, do: %{state | poison: nil}, else: state
    %{state | app_state: decode_snapshot(state.module, bytes), diverged: nil}
  rescue
    error ->
      reason = {:snapshot_decode_failed, op, Exception.message(error)}

      Logger.error(
        "#{inspect(state.module)}: cannot decode the checkpoint at op #{op} " <>
          "(#{byte_size(bytes)} bytes): #{Exception.message(error)}; this node's server stops"
      )

      throw({:visor_stop, reason, state})
  end

  # This replica's checkpoint differs from the one a quorum holds: its
  # state diverged. The engine executes and serves nothing until it has
  # installed the quorum's checkpoint (an `install_snapshot` event).
  defp event({:diverged, op, digest, quorum}, state) do
    Logger.error(
      "#{inspect(state.module)}: this replica's state diverged from the quorum's: " <>
        "its checkpoint at op #{op} has digest #{digest}, a quorum's has #{quorum} " <>
        "(a nondeterministic handle_commit or encode_snapshot?); it stops executing " <>
        "and serving, and recovers the quorum's state by state sync"
    )

    %{state | diverged: op}
  end

  defp event(_unknown, state), do: state

  defp hold(event, state) do
    state = %{state | held: [event | state.held]}
    if skips_poison?(event, state.poison.op), do: skip_poison(state), else: state
  end

  defp skips_poison?({:execute, _op, _view, _ts, requests}, poison) do
    Enum.any?(requests, fn
      {_client, _request, :executed, payload} -> Executor.skip_target(payload) == poison
      _ -> false
    end)
  end

  defp skips_poison?(_event, _poison), do: false

  # The skip of the poison op is committed: every replica that stopped
  # there drops that op's commands (their callers get `{:error, {:skipped,
  # op}}`) and executes the held events after it, the skip included.
  defp skip_poison(%{poison: %{op: op}, held: held} = state) do
    Logger.warning("#{inspect(state.module)}: op #{op} skipped; the replica executes again")
    {poisoned, rest} = Enum.split_with(Enum.reverse(held), &match?({:execute, ^op, _, _, _}, &1))
    requests = Enum.flat_map(poisoned, &elem(&1, 4))
    state = Enum.reduce(requests, %{state | poison: nil, held: []}, &skipped(&1, op, &2))
    Enum.reduce(rest, state, &event/2)
  end

  defp skipped({client, request, :executed, _payload}, op, state) do
    case state.inflight do
      %{{^client, ^request} => job} ->
        job = %{job | result: {:error, {:skipped, op}}}
        %{state | inflight: Map.put(state.inflight, {client, request}, job)}

      _ ->
        state
    end
  end

  defp skipped(_request, _op, state), do: state

  defp storage_event(kind, detail, %{config: %{storage: {:disk, dir}}} = state) do
    name = inspect(state.module)

    case kind do
      :created ->
        Logger.info("#{name}: created its store in #{dir}")

      :restarted ->
        torn = if detail, do: " (a torn write at its end, byte #{detail}, was cut off)", else: ""
        Logger.info("#{name}: restarted its replica from its store in #{dir}#{torn}")

      :recovering ->
        Logger.warning(
          "#{name}: the store in #{dir} cannot be trusted (#{detail}); " <>
            "the replica recovers the log from the others"
        )

      :repairing ->
        Logger.warning("#{name}: the store in #{dir} is damaged in one place: #{detail}")

      :error ->
        Logger.warning(
          "#{name}: writing to #{dir} fails (#{detail}); the replica is paused, " <>
            "acknowledging nothing, until writes succeed again"
        )

      :resumed ->
        Logger.warning("#{name}: writing to #{dir} succeeds again; the replica resumes")

      _ ->
        :ok
    end

    if kind in [:created, :restarted, :recovering, :repairing],
      do: %{state | opened: kind},
      else: state
  end

  defp storage_event(_kind, _detail, state), do: state

  defp read_result(state, %{kind: {:read, path}}), do: extract(state.app_state, path)

  defp encode_snapshot(module, app_state) do
    if function_exported?(module, :encode_snapshot, 1),
      do: module.encode_snapshot(app_state),
      else: :erlang.term_to_binary(app_state, [:deterministic])
  end

  defp decode_snapshot(module, bytes) do
    if function_exported?(module, :decode_snapshot, 1),
      do: module.decode_snapshot(bytes),
      else: :erlang.binary_to_term(bytes)
  end

  defp execute({client, request, :executed, payload}, meta, state) do
    {result, app_state} =
      Executor.apply(state.module, state.arity, payload, meta, state.app_state)

    # Keep the result only for this node's own requests, until their reply.
    inflight =
      case state.inflight do
        %{{^client, ^request} => job} ->
          Map.put(state.inflight, {client, request}, %{job | result: result})

        inflight ->
          inflight
      end

    %{state | app_state: app_state, inflight: inflight}
  end

  # Registrations, duplicates and evicted requests apply nothing.
  defp execute(_request, _meta, state), do: state

  defp settle(state, client, request, job, outcome) do
    {reply, sessions} =
      case outcome do
        :executed ->
          {job.result || {:error, :unknown_outcome},
           Sessions.settle(state.sessions, client, request)}

        {:duplicate, op} ->
          {job.result || {:error, {:duplicate, op}},
           Sessions.settle(state.sessions, client, request)}

        # Another body under this number ran: this command did not, and the
        # session's numbering is no longer this slot's to trust.
        :refused ->
          {{:error, :refused}, Sessions.drop(state.sessions, client)}

        # The session is gone: its slot is replaced by a fresh one later.
        _evicted ->
          {{:error, :unknown_outcome}, Sessions.drop(state.sessions, client)}
      end

    answer(%{state | sessions: sessions}, job.ref, reply)
  end

  # Computed here so that only the requested part is copied to the caller.
  # A path that does not fit the state raises in Kernel.get_in/2; that is
  # the caller's error, so it is re-raised there (Visor.get_in/3), never
  # here: a crashed server is a replica lost.
  defp extract(app_state, []), do: {:ok, app_state}

  defp extract(app_state, path) do
    {:ok, Kernel.get_in(app_state, path)}
  catch
    kind, reason -> {:raise, kind, reason, __STACKTRACE__}
  end

  defp count(state, key, n \\ 1),
    do: %{state | stats: Map.update!(state.stats, key, &(&1 + n))}

  # ---- Status ------------------------------------------------------------

  defp status(%{phase: :running, engine: engine} = state) do
    engine_status = Native.status(engine)
    members = Tuple.to_list(state.members)

    # A recovering replica does not know the view yet, and one whose store
    # is still opening has no replica yet: no primary to show.
    primary_index =
      if engine_status.status in [:recovering, :starting], do: nil, else: engine_status.primary

    primary = primary_index && Enum.at(members, primary_index)
    connected = MapSet.new(Node.list())

    replicas =
      for {node, index} <- Enum.with_index(members) do
        %{
          index: index,
          node: node,
          role: if(index == primary_index, do: :primary, else: :backup),
          health:
            cond do
              node == node() -> :self
              MapSet.member?(connected, node) -> :connected
              true -> :disconnected
            end
        }
      end

    %{
      status: engine_status.status,
      role: if(engine_status.is_primary, do: :primary, else: :backup),
      node: node(),
      index: state.index,
      view: engine_status.view,
      log_view: engine_status.log_view,
      op: engine_status.op,
      commit: engine_status.commit,
      commit_max: engine_status.commit_max,
      checkpoint: engine_status.checkpoint,
      log_base: engine_status.log_base,
      primary: primary,
      replicas: replicas,
      cluster: Base.encode16(state.cluster, case: :lower),
      pool: Map.put(Sessions.counts(state.sessions), :waiting, map_size(state.callers)),
      storage: storage_status(state, engine_status.storage),
      poison: state.poison,
      refused: nil,
      stats: Map.merge(engine_status.stats, state.stats)
    }
  end

  defp status(state) do
    %{
      status:
        case state.phase do
          {:failed, _} -> :failed
          {:refused, _} -> :refused
          phase -> phase
        end,
      role: :none,
      node: node(),
      index: nil,
      view: 0,
      log_view: 0,
      op: 0,
      commit: 0,
      commit_max: 0,
      checkpoint: 0,
      log_base: 0,
      primary: nil,
      replicas: [],
      cluster: nil,
      pool: Map.put(Sessions.counts(state.sessions), :waiting, map_size(state.callers)),
      storage: storage_status(state, nil),
      poison: state.poison,
      refused: with({:refused, reason} <- state.phase, do: reason, else: (_ -> nil)),
      stats: state.stats
    }
  end

  # The engine's storage map (if it runs), and how the store opened.
  defp storage_status(%{config: %{storage: :memory}}, _engine), do: %{mode: :memory}

  defp storage_status(%{config: %{storage: {:disk, dir}}} = state, engine) do
    base = %{
      mode: :disk,
      data_dir: dir,
      error: nil,
      syncs: 0,
      wal_bytes: 0,
      wal_size: 0,
      compactions: 0
    }

    base |> Map.merge(engine || %{}) |> Map.put(:opened, state.opened)
  end
end
