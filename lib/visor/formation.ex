defmodule Visor.Formation do
  @moduledoc false
  # Decides, once per lifetime, whether this node's replica may start, and
  # how: with which members and cluster id, and whether it is a *fresh*
  # replica of a cluster being formed or a *rejoining* one that lost its
  # memory and must recover first (`Visor.Native.start/2` with `recover:
  # true`). docs/operations.md explains both modes to users; this is how they
  # work.
  #
  # Every formation process has an *incarnation*: a random number drawn when
  # it starts. The group's supervisor is `:one_for_all`, so a replica that ran
  # and lost its memory (a restarted node, or a restarted server) always comes
  # back under a new formation process, hence a new incarnation. Starting it
  # as a fresh replica would be unsafe: it would have forgotten entries it
  # acknowledged, and a quorum that counts it could lose committed ops. So the
  # one rule both modes keep is: **a node starts a fresh replica only if no
  # earlier incarnation of it can have run one**; every other member node
  # starts a recovering replica, which learns its state from a quorum before
  # it votes or acknowledges anything (docs/protocol.md, "Restart without
  # state"). A recovering replica is always safe; it needs `n - q + 1` of
  # the *other* members up and normal to finish (enough to meet every
  # majority without it).
  #
  # ## How it is built
  #
  # The two agreements and the disk checks are pure functions of their
  # inputs, each in a module of its own, so a test can drive many of them
  # through any interleaving of messages, losses and restarts without a
  # node (test/visor/formation_model_test.exs):
  #
  #   * `Visor.Formation.Explicit`: the `nodes: [...]` agreement (hellos
  #     answered by each member's record of the sender's incarnation);
  #   * `Visor.Formation.Discovery`: the `cluster_size: n` agreement
  #     (discovery through `:pg`, then proposals that every proposed node
  #     accepts, or that are aborted);
  #   * `Visor.Formation.Restore`: disk mode (`storage: :disk`): whether the
  #     node restarts from its store, as a function of what the store's
  #     superblock says, or refuses a store that does not fit;
  #   * `Visor.Formation.Decider`: what the two deciders share (the effects
  #     they return, how a decision is taken and announced).
  #
  # A decider takes a message, a tick or a timer, and its state (which holds
  # the incarnation, and a `:rand` state for cluster ids), and returns its
  # new state and a list of effects. This module is the process around
  # them: at start it reads what this node remembers (`Visor.Lifetime` in
  # memory mode, the store's superblock in disk mode; a store that does not
  # fit stops `init/1` with `{:storage_refused, message}`), then it turns ticks
  # and peers' messages into inputs and carries the effects out: sends
  # (never connecting), timers, `Visor.Lifetime` records, the formation
  # snapshot (disk mode), the decision to the group's server, reconnection
  # attempts, and logs.
  #
  # Memory mode adds one rule of its own: a node whose server restarted (the
  # node did not) finds in `Visor.Lifetime` the cluster its replica joined,
  # and rejoins it at once, whatever its peers say. Disk mode adds one too
  # (`nodes:`): a decided member answers a member it has not answered
  # before by the snapshot of incarnations it took when it decided, which
  # this process writes to the store's directory before the store is
  # created (`{:persist, record}`), so that a member restarted from its
  # store still tells a member that never ran from one whose `data_dir` was
  # wiped (`Visor.Formation.Explicit` explains why that is safe). While
  # the replica recovers (it rejoined, or its store says so) a member its
  # snapshot does not name is answered by records instead, until the
  # group's router says the replica finished recovering (`replica_normal/1`). A
  # snapshot that cannot be written refuses this node's replica
  # (`{:refused, {:storage_refused, message}}` to the server, one error
  # logged) instead of crashing, which would restart the group into the
  # same failure.
  #
  # After a decision, the process keeps answering hellos (that is how a
  # restarted node learns it must rejoin) and keeps reconnecting distribution
  # to the members, so that a healed partition heals the cluster too. Once
  # its decider has nothing else to do on ticks (`settled?/1`), it ticks
  # once a second rather than ten times.

  use GenServer
  import Bitwise
  require Logger

  alias Visor.{DurableFile, Lifetime, Native, Options}
  alias Visor.Formation.{Decider, Discovery, Explicit, Restore}

  @tick_ms 100
  @settled_tick_ms @tick_ms * Decider.reconnect_every_ticks()
  @send_opts [:noconnect, :nosuspend]
  @waiting_reminder_ms 5_000

  @typedoc """
  A decider's decision, or this process's own refusal: the formation
  record (disk mode) could not be written, so the replica must not create
  its store.
  """
  @type decision :: Decider.decision() | {:refused, {:storage_refused, String.t()}}

  @doc false
  def child_spec(config), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [config]}}

  @doc "Starts the formation process of a group (under `Visor.Supervisor`)."
  @spec start_link(Options.t()) :: GenServer.on_start()
  def start_link(%Options{group: group} = config) do
    # Visor.Guard, not GenServer: no message a peer sends may crash it.
    Visor.Guard.start_link(__MODULE__, config, Visor.Supervisor.name(group, :formation))
  end

  @doc """
  Registers the caller (the group's server) for the decision and returns the
  decision so far. Once decided, `{:visor_formation, tag, decision}` is sent
  to it; the caller's `tag` (a reference) tells it apart from anything a
  peer could send. Until then, whom formation waits for is sent as
  `{:visor_waiting, tag, waiting_for}` each time it changes (and at once):
  `%{nodes: [node]}` (`nodes:` mode: the members that have not answered),
  `%{more: n, found: [node]}` (`cluster_size:` mode) or `nil`.
  """
  @spec subscribe(Visor.Supervisor.group(), reference()) :: decision()
  def subscribe(group, tag) do
    GenServer.call(Visor.Supervisor.name(group, :formation), {:subscribe, self(), tag})
  end

  @doc """
  Tells formation that this node's replica holds the cluster's state: no
  longer starting or recovering (normal, in a view change, or diverged).
  The group's router calls it once, at the first look that finds it so (it
  looks whenever the engine says the status changed, whatever the server
  is doing). A decider that held
  back for a recovering replica then answers peers by its formation
  snapshot (`Visor.Formation.Explicit`). The message names its sender,
  and formation heeds it only from this node's router.
  """
  @spec replica_normal(Visor.Supervisor.group()) :: :ok
  def replica_normal(group) do
    # Not there while the group stops or restarts: nothing to tell then.
    with pid when is_pid(pid) <- Visor.Supervisor.whereis(group, :formation),
         do: send(pid, {:visor_replica_normal, self()})

    :ok
  end

  @doc "The decision so far on this node, without subscribing to it."
  @spec decision(Visor.Supervisor.group()) :: decision()
  def decision(group), do: GenServer.call(Visor.Supervisor.name(group, :formation), :decision)

  @doc """
  The metadata kept in a new store's superblock (disk mode): the cluster's
  member nodes and shared settings (`Visor.Formation.Restore`).
  """
  @spec store_meta([node()], map()) :: binary()
  defdelegate store_meta(members, settings), to: Restore

  # The decider (Explicit or Discovery) and its state; the server to
  # notify; the reconnect attempts in flight (node => monitor); the :pg
  # scope (discovery mode); whom this node last logged it waits for, and
  # whom it last told the server it waits for; this process's own refusal,
  # which overrides the decider's decision.
  defstruct [
    :group,
    :config,
    :decider,
    :core,
    :scope,
    subscriber: nil,
    connecting: %{},
    waiting: nil,
    # When the waiting line was last logged (monotonic ms).
    waiting_logged_at: nil,
    told_waiting: nil,
    refused: nil
  ]

  @impl GenServer
  def init(%Options{group: group} = config) do
    # The server's and router's metadata key: an operator filters a
    # group's lines, formation's included, by it.
    Logger.metadata(visor_group: group)

    case restored(config) do
      {:error, message} ->
        Logger.error("#{inspect(group)}: refusing to start: #{message}")
        {:stop, {:storage_refused, message}}

      restored ->
        common = %{
          module: group,
          node: node(),
          self: self(),
          incarnation: :rand.uniform(1 <<< 62),
          settings: config.settings,
          storage: if(config.storage == :memory, do: :memory, else: :disk),
          earlier: earlier(config),
          restored: restored
        }

        state = %__MODULE__{group: group, config: config}

        {state, {core, effects}} =
          case config.membership do
            {:nodes, nodes} ->
              cluster = Options.cluster_id(group, nodes, config.settings, config.instance)
              name = Visor.Supervisor.name(group, :formation)

              {%{state | decider: Explicit},
               Explicit.new(Map.merge(common, %{name: name, members: nodes, cluster: cluster}))}

            {:cluster_size, size} ->
              scope = Visor.Supervisor.name(group, :scope)
              :ok = :pg.join(scope, :formation, self())

              {%{state | decider: Discovery, scope: scope},
               Discovery.new(Map.merge(common, %{size: size, rand: :rand.seed_s(:exsss)}))}
          end

        send(self(), :tick)
        {:ok, carry_out(%{state | core: core}, effects)}
    end
  end

  # Disk mode: what the store says (Visor.Formation.Restore); nil when
  # there is none, or in memory mode.
  defp restored(%Options{storage: :memory}), do: nil

  defp restored(%Options{storage: {:disk, dir}} = config) do
    membership =
      case config.membership do
        {:nodes, nodes} ->
          {:nodes, nodes,
           Options.cluster_id(config.group, nodes, config.settings, config.instance)}

        {:cluster_size, size} ->
          {:cluster_size, size}
      end

    expected = %{
      group: Options.store_group(config),
      node: node(),
      dir: dir,
      settings: config.settings,
      membership: membership
    }

    record =
      case File.read(Restore.formation_file(dir)) do
        {:ok, record} -> record
        {:error, _} -> nil
      end

    case Restore.check(Native.probe(dir), expected, record) do
      :empty -> nil
      {:ok, restored} -> restored
      {:error, message} -> {:error, message}
    end
  end

  # Memory mode: the cluster this node's replica joined earlier in this
  # group's life (Visor.Lifetime); that replica's memory died with its
  # server. Disk mode restarts from the store instead.
  defp earlier(%Options{storage: :memory} = config),
    do: Lifetime.formed(config.group, lifetime_key(config))

  defp earlier(_disk), do: nil

  @doc """
  The configuration a `Visor.Lifetime` record belongs to: a node started
  again with another one joins another cluster (a `nodes:` cluster id
  already folds in the members and settings).
  """
  @spec lifetime_key(Options.t()) :: term()
  def lifetime_key(%Options{membership: {:nodes, nodes}} = config),
    do: {:nodes, Options.cluster_id(config.group, nodes, config.settings, config.instance)}

  def lifetime_key(%Options{membership: {:cluster_size, size}} = config),
    do: {:cluster_size, size, config.settings}

  @impl GenServer
  def handle_call({:subscribe, pid, tag}, _from, state) do
    state = tell_waiting(%{state | subscriber: {pid, tag}, told_waiting: nil})
    {:reply, current_decision(state), state}
  end

  def handle_call(:decision, _from, state), do: {:reply, current_decision(state), state}

  # Calls from other nodes are untrusted input: never crash on them (a
  # crash restarts the group, and its replica would have to recover).
  def handle_call(_request, _from, state), do: {:reply, {:error, :unknown_call}, state}

  @impl GenServer
  def handle_cast(_request, state), do: {:noreply, state}

  @impl GenServer
  def handle_info(:tick, state) do
    input =
      case state.decider do
        Explicit -> :tick
        Discovery -> {:tick, :pg.get_members(state.scope, :formation) -- [self()]}
      end

    state = step(state, input)
    # A settled decider only keeps distribution connected: a tick a
    # second does that, and costs a node of many groups ten times less.
    every = if state.decider.settled?(state.core), do: @settled_tick_ms, else: @tick_ms
    Process.send_after(self(), :tick, every)
    {:noreply, state}
  end

  # A finished reconnect attempt (see carry_out/2).
  def handle_info({:DOWN, ref, :process, _, _}, state) do
    connecting = for {n, r} <- state.connecting, r != ref, into: %{}, do: {n, r}
    {:noreply, %{state | connecting: connecting}}
  end

  # The replica holds its state (replica_normal/1), from this node's
  # router only: the formation process has the same name on every node,
  # and the word from anyone else while the replica still recovers would
  # make it answer by its snapshot alone, telling a member that never ran
  # to recover too (two recovering of three, for good).
  def handle_info({:visor_replica_normal, from}, state) do
    if from == Visor.Supervisor.whereis(state.group, :router),
      do: {:noreply, step(state, :visor_replica_normal)},
      else: {:noreply, state}
  end

  # Anything else, from anywhere, goes to the decider, which ignores what
  # it does not expect. Peers are untrusted input.
  def handle_info(message, state) do
    if answerable?(message), do: {:noreply, step(state, message)}, else: {:noreply, state}
  end

  # A decider answers to (or keys its peers by) the pid a hello, a reply or
  # a proposal names: a message naming anything else there is dropped (a
  # send to it could raise).
  defp answerable?({tag, pid, _, _, _})
       when tag in [:visor_hello, :visor_hello_reply, :visor_ready, :visor_ready_reply],
       do: is_pid(pid)

  defp answerable?({tag, pid, _}) when tag in [:visor_propose, :visor_bound], do: is_pid(pid)
  # The decider's input for the router's word, which only the clause above
  # may give it.
  defp answerable?(:visor_replica_normal), do: false
  defp answerable?(_message), do: true

  defp step(state, input) do
    {core, effects} = state.decider.handle(state.core, input)
    carry_out(%{state | core: core}, effects)
  end

  defp carry_out(state, effects) do
    replica_metadata(current_decision(state))
    effects |> Enum.reduce(state, &effect/2) |> waiting() |> tell_waiting()
  end

  defp current_decision(%{refused: nil} = state), do: Decider.decision(state.core)
  defp current_decision(state), do: {:refused, state.refused}

  # Once this node's replica is decided, its lines carry its index, as the
  # server's do.
  defp replica_metadata({:member, %{members: members}}),
    do: Logger.metadata(replica: Enum.find_index(members, &(&1 == node())))

  defp replica_metadata(_undecided), do: :ok

  # One line each time the set this node waits for changes (not on every
  # tick), and the same line again every 5 s while it does not: an
  # operator whose group never forms sees whom it lacks, even after the
  # first line scrolled away.
  defp waiting(state) do
    now = System.monotonic_time(:millisecond)

    case state.decider.waiting(state.core) do
      nil ->
        state

      same when same == state.waiting and now - state.waiting_logged_at < @waiting_reminder_ms ->
        state

      waiting ->
        Logger.info("#{inspect(state.group)}: #{waiting_message(waiting, state.config)}")
        %{state | waiting: waiting, waiting_logged_at: now}
    end
  end

  # The server shows whom formation waits for in its status (subscribe/2).
  defp tell_waiting(%{subscriber: {pid, tag}} = state) do
    case waiting_for(state.decider.waiting(state.core)) do
      same when same == state.told_waiting ->
        state

      waiting_for ->
        send(pid, {:visor_waiting, tag, waiting_for})
        %{state | told_waiting: waiting_for}
    end
  end

  defp tell_waiting(state), do: state

  defp waiting_for(nil), do: nil
  defp waiting_for({:nodes, nodes}), do: %{nodes: nodes}
  defp waiting_for({:more, needed, found}), do: %{more: needed, found: found}

  defp waiting_message({:nodes, nodes}, _config) do
    "waiting for #{Enum.join(nodes, ", ")} to answer: the cluster forms once every member " <>
      "in :nodes has started the group and answered"
  end

  defp waiting_message({:more, needed, found}, %Options{membership: {:cluster_size, size}}) do
    found = if found == [], do: "none yet", else: Enum.join(found, ", ")

    "waiting for #{needed} more connected #{if needed == 1, do: "node", else: "nodes"} " <>
      "running the group with this node's settings (cluster_size: #{size}; found: #{found})"
  end

  # Replica traffic and these messages never set up connections (a send
  # would block on an unreachable host); reconnection does, below.
  # A keyed group's formation names its peers' formation processes by a
  # `:via` name, which goes through their node's group host.
  defp effect({:send, {{:via, _, _}, node}, message}, state) do
    _ = Visor.Supervisor.send_remote(state.group, :formation, node, message, @send_opts)
    state
  end

  defp effect({:send, dest, message}, state) do
    _ = :erlang.send(dest, message, @send_opts)
    state
  end

  defp effect({:timer, ms, message}, state) do
    Process.send_after(self(), message, ms)
    state
  end

  # Refused: the decision is not carried out, nor announced (the
  # subscriber has been told the refusal), whatever the decider goes on
  # deciding: it still answers peers, as a member whose replica is down.
  defp effect({:notify, _decision}, %{refused: {_, _}} = state), do: state

  defp effect({:log, _, key, _}, %{refused: {_, _}} = state) when key in [:formed, :rejoin],
    do: state

  defp effect({:notify, decision}, state) do
    notify(state, decision)
    state
  end

  defp effect({:remember, formed}, state) do
    :ok = Lifetime.put_formed(state.group, lifetime_key(state.config), formed)
    state
  end

  # Written before the server creates the store, so that a store always
  # has the record of the decision that created it (a crash in between
  # leaves a record and no store: the next decision writes it again).
  # A record that cannot be written refuses the replica: crashing would
  # restart the group into the same failure, again and again.
  defp effect({:persist, record}, %{config: %{storage: {:disk, dir}}} = state) do
    case write_record(Restore.formation_file(dir), Restore.formation_record(record)) do
      :ok ->
        state

      {:error, path, reason} ->
        message =
          "cannot write the formation record #{path}: #{:file.format_error(reason)} " <>
            "(#{inspect(reason)})"

        Logger.error(
          "#{inspect(state.group)}: refusing to start this node's replica: #{message}; " <>
            "its store is created only after that record. Fix the directory, then " <>
            "restart the group on this node"
        )

        refused = {:storage_refused, message}
        notify(state, {:refused, refused})
        %{state | refused: refused}
    end
  end

  # Each attempt runs in its own process: connect_node/1 can block for
  # seconds on an unreachable host.
  defp effect({:connect, node}, state) do
    if node in Node.list() or Map.has_key?(state.connecting, node) do
      state
    else
      {_pid, ref} = spawn_monitor(fn -> :net_kernel.connect_node(node) end)
      %{state | connecting: Map.put(state.connecting, node, ref)}
    end
  end

  defp effect({:log, level, _key, message}, state) do
    Logger.log(level, message)
    state
  end

  # Durably (Visor.DurableFile): the store's directory, and the entry of
  # the directory holding it, so the record is durable when the replica
  # starts.
  defp write_record(file, bytes) do
    DurableFile.write(file, bytes, file |> Path.dirname() |> Path.dirname())
  end

  defp notify(state, decision) do
    with {pid, tag} <- state.subscriber, do: send(pid, {:visor_formation, tag, decision})
  end

  # What :sys.get_status/1 shows (through Visor.Guard) and a crash report
  # could, as for Visor.Server: where formation stands, never the start
  # options (init_arg may hold secrets).
  @doc false
  def format_status(%{state: %__MODULE__{} = state} = status) do
    %{
      status
      | state: %{
          group: state.group,
          decider: state.decider,
          decision: current_decision(state),
          waiting: state.decider.waiting(state.core),
          reconnecting: Map.keys(state.connecting)
        }
    }
  end

  def format_status(status), do: status
end
