defmodule Visor.Router do
  @moduledoc false
  # One group's peer traffic on one node: the process that owns the engine
  # (`Visor.Native.start/2`'s owner), carries out its `{:send, to, messages}`
  # events and hands peers' messages to it (`Visor.Native.deliver/2`). It is
  # registered locally under the group's module, so a peer reaches it as
  # `{module, node}`.
  #
  # A keyed group's router has a `:via` name instead (`Visor.Supervisor`),
  # and a peer's messages reach it through its node's group host, until
  # the peer has heard from it: then directly (send_peer/3).
  #
  # It never runs the application's code. That is its reason to exist: the
  # replica's protocol (heartbeats, prepares and their acknowledgements,
  # view-change votes) must flow while `Visor.Server` runs a slow
  # `handle_commit`, or a healthy primary's backups, hearing nothing, elect
  # another (docs/operations.md, "Slow callbacks"). Every other engine event
  # goes to the server as it came, in order, in one message per batch.
  # For the same reason it is the router that tells formation when the
  # replica holds the cluster's state, no longer starting or recovering
  # (`Visor.Formation.replica_normal/1`, once): a rejoined replica's
  # formation answers more strictly from then on, and must not wait for a
  # server busy replaying the log.
  #
  # Only the server may start the engine (`start_engine/3`, a call the
  # router checks comes from its server: peers can reach this process). It
  # runs in `Visor.Guard`, so no message a peer sends crashes it; what it
  # drops it counts in `:counters` that the server shows in `status().stats`
  # (`stats/1`).

  require Logger

  alias Visor.{MemberId, Native}
  alias Visor.Router.Watch

  # Counter indexes (see stats/1).
  @stats [:peer_malformed, :send_noconnect, :send_busy, :unexpected_messages]

  # The router looks at what changed in the replica (watch/1) when the
  # engine says it changed (`:status_changed`), at most once per @watch_ms.
  @watch_ms 10

  # watch: what the router last saw of the replica (Visor.Router.Watch),
  # when (monotonic ms), and the timer of a look put off by @watch_ms. genesis: the nodes the group was
  # formed with (a genesis member's id is its place in it); names: the
  # node of each other member id the replica sent to, found by hashing
  # the names of the nodes connected (Visor.MemberId). The engine names
  # every receiver by member id, so a learner, and a leaving member, are
  # reached like any member.
  defstruct [
    :group,
    :counters,
    :server,
    :watch,
    :watch_timer,
    # Quiet groups: the node's beacon (Visor.Beacon) once subscribed.
    :beacon,
    # The peer routers heard from, node => {pid, monitor}: sent to
    # directly (see send_event/2).
    peers: %{},
    looked_at: nil,
    engine: nil,
    genesis: {},
    names: %{}
  ]

  @doc false
  def child_spec(config), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [config]}}

  @doc "Starts the router of a group (under `Visor.Supervisor`)."
  @spec start_link(Visor.Options.t()) :: GenServer.on_start()
  def start_link(%Visor.Options{group: group}) do
    Visor.Guard.start_link(__MODULE__, group, Visor.Supervisor.name(group, :router))
  end

  @doc """
  Starts the engine with `opts`, owned by the router, which routes its
  sends to `members` (a tuple of nodes, by replica index: the group's
  first membership) from then on, and by the membership of each epoch
  the replica enters (its `{:epoch, ...}` events).
  Called by the group's server; raises as `Visor.Native.start/2` does.
  """
  @spec start_engine(Visor.Supervisor.group(), map(), tuple()) :: Native.engine()
  def start_engine(group, opts, members) do
    name = Visor.Supervisor.name(group, :router)

    case GenServer.call(name, {:visor_start_engine, opts, members}, :infinity) do
      {:ok, engine} -> engine
      {:raise, kind, reason, stacktrace} -> :erlang.raise(kind, reason, stacktrace)
    end
  end

  @doc "The router's counters (`stats/1` reads them); called once by the server."
  @spec counters(Visor.Supervisor.group()) :: :counters.counters_ref()
  def counters(group),
    do: GenServer.call(Visor.Supervisor.name(group, :router), :visor_counters, :infinity)

  @doc """
  What the router dropped, for `status().stats`: peers' messages the
  engine found malformed, sends dropped because the peer was not connected
  or its distribution buffer was full, and other messages (junk any node
  may send).
  """
  @spec stats(:counters.counters_ref()) :: %{atom() => non_neg_integer()}
  def stats(counters) do
    for {key, index} <- Enum.with_index(@stats, 1),
        into: %{},
        do: {key, :counters.get(counters, index)}
  end

  # ---- Process ------------------------------------------------------------

  @doc false
  def init(group) do
    Logger.metadata(visor_group: group)

    {:ok, %__MODULE__{group: group, counters: :counters.new(length(@stats), [])}}
  end

  @doc false
  def handle_call({:visor_start_engine, opts, members}, {pid, _tag}, state)
      when is_map(opts) and is_tuple(members) do
    if pid == Visor.Supervisor.whereis(state.group, :server) do
      {:ok, engine} = Native.start(opts, self())
      Logger.metadata(replica: opts.replica_index)
      watch = Watch.new(state.group, members, opts.replica_index, System.monotonic_time())

      state = %{
        state
        | engine: engine,
          genesis: members,
          names: %{},
          server: pid,
          watch: watch
      }

      state = if Map.get(opts, :quiet_after_ticks, 0) > 0, do: subscribe(state), else: state

      {:reply, {:ok, engine}, watch(state)}
    else
      {:reply, {:error, :unknown_call}, count(state, :unexpected_messages)}
    end
  catch
    kind, reason -> {:reply, {:raise, kind, reason, __STACKTRACE__}, state}
  end

  def handle_call(:visor_counters, _from, state), do: {:reply, state.counters, state}

  # The primary's server asks whether this node's replica runs
  # (Visor.Server.AutoReplace, `replace_after:`): any node may ask. The
  # router, not the server, answers it, so that a member busy in a slow
  # handle_commit is still heard.
  def handle_call(:visor_alive, _from, state) do
    running =
      state.engine != nil and Native.status(state.engine).status not in [:stopped, :failed]

    {:reply, {:ok, running}, state}
  end

  # Calls from other nodes are untrusted input.
  def handle_call(_request, _from, state),
    do: {:reply, {:error, :unknown_call}, count(state, :unexpected_messages)}

  @doc false
  def handle_cast(_request, state), do: {:noreply, count(state, :unexpected_messages)}

  @doc false
  def handle_info({:visor_engine, engine, events}, %{engine: engine} = state)
      when is_reference(engine) and is_list(events) do
    {rest, state} =
      Enum.reduce(events, {[], state}, fn event, {rest, state} ->
        case send_event(event, state) do
          {:sent, state} -> {rest, state}
          :not_a_send -> {[event | rest], state}
        end
      end)

    case rest do
      [] -> :ok
      rest -> send(state.server, {:visor_engine, engine, Enum.reverse(rest)})
    end

    {:noreply, state}
  end

  def handle_info({:visor_engine_down, engine, _reason} = message, %{engine: engine} = state)
      when is_reference(engine) do
    send(state.server, message)
    if state.watch_timer, do: :erlang.cancel_timer(state.watch_timer)
    {:noreply, %{state | engine: nil, genesis: {}, names: %{}, watch_timer: nil}}
  end

  # The watch's turn (a timer's own reference: no peer can forge it).
  def handle_info({:timeout, timer, :visor_watch}, %{watch_timer: timer} = state)
      when is_reference(timer),
      do: {:noreply, watch(state)}

  # Quiet groups: the node's beacon holds another set of nodes up.
  def handle_info({:visor_nodes_up, beacon, nodes}, %{beacon: {beacon, _}} = state)
      when is_list(nodes) do
    {:noreply, tell_peers(state, nodes)}
  end

  # The beacon died (it should not): subscribe again, which starts another.
  def handle_info({:DOWN, ref, :process, _, _}, %{beacon: {_, ref}} = state),
    do: {:noreply, subscribe(%{state | beacon: nil})}

  # A peer router we send to directly is gone: back to its name.
  def handle_info({:DOWN, ref, :process, pid, _}, state) when node(pid) != node(),
    do: {:noreply, forget_peer(state, node(pid), ref)}

  # `messages` is a list (a peer's `{:send, _, messages}`), or one binary,
  # from the peer router `from`, which this one then sends to directly.
  def handle_info({:visor_peer, from, messages}, state)
      when is_pid(from) and (is_list(messages) or is_binary(messages)) do
    handle_info({:visor_peer, messages}, learn_peer(state, from))
  end

  # A replica that is not running yet (or any more) drops them; the
  # protocol resends what matters.
  def handle_info({:visor_peer, messages}, state) when is_list(messages) or is_binary(messages) do
    case state.engine && Native.deliver(state.engine, messages) do
      {:malformed, dropped} -> {:noreply, count(state, :peer_malformed, dropped)}
      _ -> {:noreply, state}
    end
  end

  def handle_info({:visor_peer, _not_bytes}, state),
    do: {:noreply, count(state, :peer_malformed)}

  def handle_info(_message, state), do: {:noreply, count(state, :unexpected_messages)}

  # Carries out a send (`{:sent, state}`), or leaves the event for the
  # server (`:not_a_send`).
  defp send_event({:send, _slot, id, messages}, state) do
    # Never block: not on connection setup (Formation reconnects members),
    # not on a busy distribution buffer. The protocol tolerates the loss;
    # the counters show it.
    {node, state} = node_of(state, id)

    case node do
      # An id no node connected here hashes to: nowhere to send yet.
      nil ->
        count(state, :send_noconnect)

      node ->
        case send_peer(state, node, {:visor_peer, self(), messages}) do
          :ok -> :ok
          :noconnect -> count(state, :send_noconnect)
          :nosuspend -> count(state, :send_busy)
        end
    end

    {:sent, state}
  end

  # What the watch acts on changed: it looks now, or @watch_ms after its
  # last look (a replica dropping junk at every batch costs a look per
  # @watch_ms, not one per batch).
  defp send_event(:status_changed, state) do
    since = state.looked_at && System.monotonic_time(:millisecond) - state.looked_at

    cond do
      state.watch_timer != nil ->
        {:sent, state}

      since == nil or since >= @watch_ms ->
        {:sent, watch(state)}

      true ->
        timer = :erlang.start_timer(@watch_ms - since, self(), :visor_watch)
        {:sent, %{state | watch_timer: timer}}
    end
  end

  # The engine ticks the replica no more (it is quiet), or again: nothing
  # for the router to do (it looks only when told the status changed).
  defp send_event({:quiet, _asleep}, state), do: {:sent, state}

  defp send_event(_event, _state), do: :not_a_send

  # To the peer router on `node`: directly, once heard from (a keyed
  # group's router is reached by name only through its node's group host,
  # Visor.Groups.Host, one process per module per node, which a node of
  # many busy groups would queue behind); by name until then, and again
  # once that router is gone (its monitor). A router restarted under a new
  # pid is heard from soon (its replica recovers from its peers), and
  # what went to the old one meanwhile is lost, as any peer message may
  # be. Either path may overtake the other once: the protocol takes
  # messages in any order.
  defp send_peer(state, node, message) do
    case state.peers do
      %{^node => {pid, _ref}} ->
        :erlang.send(pid, message, [:noconnect, :nosuspend])

      %{} ->
        Visor.Supervisor.send_remote(state.group, :router, node, message, [
          :noconnect,
          :nosuspend
        ])
    end
  end

  # Heard from the router `pid` of another node: remembered (and
  # monitored), in place of an earlier one of that node.
  defp learn_peer(state, pid) do
    node = node(pid)

    case state.peers do
      %{^node => {^pid, _}} ->
        state

      _ when node == node() ->
        state

      peers ->
        with {_old, ref} <- peers[node], do: Process.demonitor(ref, [:flush])
        %{state | peers: Map.put(peers, node, {pid, Process.monitor(pid)})}
    end
  end

  defp forget_peer(state, node, ref) do
    case state.peers do
      %{^node => {_, ^ref}} -> %{state | peers: Map.delete(state.peers, node)}
      _ -> state
    end
  end

  # Subscribes to the node's beacon (again: idempotent, and it starts
  # one if none runs), monitoring it once.
  defp subscribe(state) do
    {beacon, nodes} = Visor.Beacon.subscribe()

    state =
      case state.beacon do
        {^beacon, _ref} ->
          state

        old ->
          with {_, ref} <- old, do: Process.demonitor(ref, [:flush])
          %{state | beacon: {beacon, Process.monitor(beacon)}}
      end

    tell_peers(state, nodes)
  end

  # The engine takes the detector's view as the member ids of the nodes up.
  defp tell_peers(%{engine: nil} = state, _nodes), do: state

  # The genesis members' ids first (a node it names is known by its
  # index), then the others' hashed ids, at most the NIF's limit.
  defp tell_peers(state, nodes) do
    genesis = Tuple.to_list(state.genesis)
    {members, others} = Enum.split_with([node() | nodes], &(&1 in genesis))
    ids = Enum.map(members ++ others, &MemberId.of(genesis, &1))
    :ok = Native.peers(state.engine, Enum.take(ids, Visor.Contract.limit(:peers_ids_max)))
    state
  end

  # The node of a member id: its place in the genesis, or a connected
  # node whose name hashes to it (remembered).
  defp node_of(state, id) do
    case Map.fetch(state.names, id) do
      {:ok, node} ->
        {node, state}

      :error ->
        case MemberId.node_of(state.genesis, id, [node() | Node.list()]) do
          nil -> {nil, state}
          node -> {node, %{state | names: Map.put(state.names, id, node)}}
        end
    end
  end

  # What changed in the replica (Visor.Router.Watch), from the status copy
  # the engine publishes: when the engine says it changed, rather than
  # every few ms: reading the copy costs tens of µs, and a node holds many
  # groups whose status changes rarely.
  defp watch(state) do
    now = System.monotonic_time()
    engine = Native.status(state.engine)
    {watch, effects} = Watch.observe(state.watch, engine, now, &Node.list/0)

    case Enum.flat_map(effects, &carry_out(&1, state)) do
      [] -> :ok
      events -> send(state.server, {:visor_engine, state.engine, events})
    end

    %{
      state
      | watch: watch,
        watch_timer: nil,
        looked_at: System.monotonic_time(:millisecond)
    }
  end

  # Carries out a Visor.Router.Watch effect; returns the events for the
  # server.
  defp carry_out({:telemetry, event, measurements, metadata}, state) do
    telemetry(state, event, measurements, metadata)
    []
  end

  defp carry_out({:log, level, message}, _state) do
    Logger.log(level, message)
    []
  end

  defp carry_out({:view, view} = event, _state) do
    Logger.metadata(view: view)
    [event]
  end

  # The replica holds its state (a recovering one has finished): formation
  # hears it at once, not behind the server's work.
  defp carry_out(:has_state, state) do
    Visor.Formation.replica_normal(state.group)
    []
  end

  defp carry_out({:primary, _view, _ours} = event, _state), do: [event]

  defp count(state, key, n \\ 1) do
    :counters.add(state.counters, index(key), n)
    telemetry(state, [:visor, :message, :dropped], %{count: n}, %{reason: key})
    state
  end

  defp telemetry(state, event, measurements, metadata) do
    metadata = Map.merge(metadata, %{group: state.group, node: node()})
    Visor.Telemetry.execute(event, measurements, metadata)
  end

  for {key, index} <- Enum.with_index(@stats, 1) do
    defp index(unquote(key)), do: unquote(index)
  end
end
