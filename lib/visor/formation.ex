defmodule Visor.Formation do
  @moduledoc """
  Decides, once per lifetime, whether this node's replica may start, and
  how: with which members and cluster id, and whether it is a *fresh*
  replica of a cluster being formed or a *rejoining* one that lost its
  memory and must recover first (`Visor.Native.start/2` with `recover:
  true`). docs/operations.md explains both modes to users; this is how they
  work.

  Every formation process has an *incarnation*: a random number drawn when
  it starts. The group's supervisor is `:one_for_all`, so a replica that ran
  and lost its memory (a restarted node, or a restarted server) always comes
  back under a new formation process, hence a new incarnation. Starting it
  as a fresh replica would be unsafe: it would have forgotten entries it
  acknowledged, and a quorum that counts it could lose committed ops. So the
  one rule both modes keep is: **a node starts a fresh replica only if no
  earlier incarnation of it can have run one**; every other member node
  starts a recovering replica, which learns its state from a quorum before
  it votes or acknowledges anything (docs/protocol.md, "Restart without
  state"). A recovering replica is always safe; it needs a quorum of the
  *other* members up and normal to finish.

  ## `nodes: [...]` (explicit)

  The members and the cluster id (`Visor.Options.cluster_id/2`) are known
  up front. Each formation process keeps a *record* of every other member:
  the incarnation it knows for it, and whether that incarnation was let in
  as `:fresh` or told to `:rejoin`. A node says hello to every other member;
  a member answers by its record of the sender:

    * no record: `:ok`, and it records the sender as `:fresh`;
    * the same incarnation, recorded `:fresh`: `:ok`;
    * the same incarnation recorded `:rejoin`, or another incarnation:
      `:restarted`, and it records the sender's incarnation as `:rejoin`
      (sticky: the same incarnation never gets `:ok` afterwards).

  A node starts a fresh replica once **every** member has answered `:ok`,
  and a recovering one as soon as **any** member answers `:restarted`.
  Requiring every member for a fresh start is what makes the check
  complete: a replica starts fresh only after every member has recorded
  it, so any later incarnation of that node is told `:restarted` by every
  member that outlived it. Every answer also carries the responder's
  records (its own included), and a node adds to its records those it
  lacks; a node that decided keeps saying hello to members it has not
  heard from yet. So a rejoined node learns the others' incarnations (and
  can tell when *they* restart), and every member records the rejoined
  node's new incarnation: a second restart is recognised like the first.

  ## `cluster_size: n` (discovery)

  Formation processes find each other with `:pg` (a scope per module) among
  connected nodes and exchange hellos that carry their phase. A two-phase
  agreement then forms the cluster:

    1. The lowest-named node among all those still *discovering* or
       *proposing*, whatever their settings (having heard every visible
       peer, and no formed cluster), proposes the first `n` discovering
       nodes with its own settings, sorted, and a fresh random cluster id.
       Only one node may propose at a time: a proposer per settings class,
       or a second one while a lower node's proposal is in flight, could
       form two clusters of the group side by side. If the lowest node has
       other settings than the rest, nobody forms (each logs who differs).
    2. A discovering node accepts at most one proposal at a time and answers
       with its incarnation; it leaves an accepted proposal only when that
       proposal's proposer aborts it.
    3. If every proposed member accepts, the proposer announces the cluster
       (members, cluster id, each member's incarnation) to the members, which
       then start their replicas. Otherwise it aborts (a reject or
       #{2_000} ms without every answer), and tries again later.

  A proposer decides once (formed or aborted), and an acceptor is bound to
  one proposal until it is decided, so two clusters can never share a node.
  Formed members advertise the cluster in their hellos: a node that sees a
  formed cluster does not propose. If the cluster names this node under
  this very incarnation, it is an acceptor that missed the announcement and
  starts a fresh replica; if it names the node under another incarnation
  (only an accepted incarnation can be named, and incarnations are never
  reused), the node restarted and rejoins with a recovering replica; if the
  node is not named, it becomes a *spare*. A node bound to a proposal waits
  for its proposer's decision before it looks at a formed cluster. The
  formed cluster never changes, so any number of restarts of a member are
  recognised the same way; members also record (and log) a rejoining
  node's new incarnation when it says hello.

  Limits (docs/operations.md): nodes that cannot see each other at all
  while forming (disjoint partitions at boot) can form separate clusters;
  use `nodes:` when that matters. An acceptor whose proposer died before
  deciding waits for it forever.

  After a decision, the process keeps answering hellos (that is how a
  restarted node learns it must rejoin) and keeps reconnecting distribution
  to the members, so that a healed partition heals the cluster too.

  ## Disk mode (`storage: :disk`)

  Before anything else, `init/1` reads the superblock of the group's store
  (`Visor.Native.probe/2`). If there is a store, this node's replica ran
  and wrote everything it acknowledged: it is a member of the cluster the
  store records (its id, and the member list this module put into the
  store's metadata when it created it, `store_meta/1`), and it restarts
  from the store at once, without waiting for anyone: after every node
  died, each restarts from its own disk and a quorum of them serves again.
  The process is then a formed member like any other (it advertises the
  cluster in its hellos, reconnects distribution, records the others'
  incarnations). A store that does not fit (another group, a member list
  that does not name this node in the store's place, another `nodes:` list
  or `cluster_size:`, an unreadable superblock) stops `init/1` with
  `{:storage_refused, message}`: the files are left as they are.

  With an empty store the node forms as in memory mode (a node whose
  `data_dir` was wiped is a restarted node: it rejoins and recovers). One
  rule is added for that: a member in disk mode answers `:restarted` to a
  hello from a member it has no record of (it restarted from its disk, so
  the cluster ran, and that member may have run a replica too).
  """

  use GenServer
  import Bitwise
  require Logger

  alias Visor.{Lifetime, Native, Options}

  @tick_ms 100
  @reconnect_every_ticks 10
  @proposal_timeout_ms 2_000

  @typedoc """
  `recover: true` when this node restarted and must rejoin: its replica
  starts with `Visor.Native.start/2`'s `recover: true`.
  """
  @type decision ::
          :pending
          | {:member, %{cluster: <<_::128>>, members: [node()], recover: boolean()}}
          | :spare
          | {:refused, {:setting_mismatch, atom(), term(), term()}}

  @doc false
  def child_spec(config), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [config]}}

  @doc "Starts the formation process of a group (under `Visor.Supervisor`)."
  @spec start_link(Options.t()) :: GenServer.on_start()
  def start_link(%Options{module: module} = config) do
    # Visor.Guard, not GenServer: no message a peer sends may crash it.
    Visor.Guard.start_link(__MODULE__, config, Visor.Supervisor.name(module, :formation))
  end

  @doc """
  Registers the caller (the group's server) for the decision and returns the
  decision so far. Once decided, `{:visor_formation, tag, decision}` is sent
  to it; the caller's `tag` (a reference) tells it apart from anything a
  peer could send.
  """
  @spec subscribe(module(), reference()) :: decision()
  def subscribe(module, tag) do
    GenServer.call(Visor.Supervisor.name(module, :formation), {:subscribe, self(), tag})
  end

  # ---- State -------------------------------------------------------------

  defstruct [
    :module,
    :name,
    :mode,
    :size,
    :scope,
    :incarnation,
    :subscriber,
    # The engine settings every member must share (Visor.Options).
    :settings,
    # :forming (nodes mode), :discovering, {:accepted, proposal}, :member,
    # :spare or {:refused, {:setting_mismatch, key, ours, theirs}}.
    phase: :forming,
    # Once a member: %{id, cluster, members, incarnations} (discovery) or
    # %{id: :static, cluster, members} (nodes), and whether this node
    # rejoins (its replica recovers) rather than starting fresh.
    formed: nil,
    recover: false,
    # :memory or {:disk, store_dir} (Visor.Options).
    storage: :memory,
    # nodes mode: the configured members and cluster id, the members that
    # answered :ok (a fresh start needs all of them), and the members heard
    # from at all (a decided node says hello until it has heard everyone).
    members: [],
    cluster: nil,
    acks: MapSet.new(),
    heard: MapSet.new(),
    # Every other member node's record: node => {incarnation, :fresh | :rejoin}.
    # In discovery mode only for the logs (the formed cluster decides).
    known: %{},
    warned: MapSet.new(),
    # discovery mode: what each visible peer said last (pid => summary),
    # this node's own proposal in flight, and a counter for proposal ids.
    peers: %{},
    proposal: nil,
    proposals: 0,
    connecting: %{},
    ticks: 0
  ]

  @doc """
  The metadata this module keeps in a new store's superblock (disk mode):
  the cluster's member nodes and shared settings, which `init/1` reads back
  on a restart.
  Node names are kept as strings, so that reading them back never depends
  on which atoms exist yet.
  """
  @spec store_meta([node()], map()) :: binary()
  def store_meta(members, settings) do
    :erlang.term_to_binary(%{
      visor: 1,
      members: Enum.map(members, &Atom.to_string/1),
      settings: settings
    })
  end

  # The member list and settings of `store_meta/2`, or :error. The store
  # is local and checksummed, but it may have been written by something
  # else: nothing but the expected shape is accepted, and no atom is
  # created before the shape is checked.
  defp read_store_meta(meta) do
    case :erlang.binary_to_term(meta, [:safe]) do
      %{visor: 1, members: [_ | _] = names, settings: settings}
      when length(names) <= 6 and is_map(settings) ->
        if Enum.all?(names, &(is_binary(&1) and &1 =~ ~r/^[^@\s]+@[^@\s]+$/)) do
          {:ok, Enum.map(names, &String.to_atom/1), settings}
        else
          :error
        end

      _ ->
        :error
    end
  rescue
    ArgumentError -> :error
  end

  @impl GenServer
  def init(%Options{module: module} = config) do
    state = %__MODULE__{
      module: module,
      name: Visor.Supervisor.name(module, :formation),
      incarnation: :rand.uniform(1 <<< 62),
      subscriber: nil,
      storage: config.storage,
      settings: config.settings
    }

    state =
      case config.membership do
        {:nodes, nodes} ->
          cluster = Options.cluster_id(module, nodes, config.settings)
          %{state | mode: :nodes, members: nodes, cluster: cluster}

        {:cluster_size, size} ->
          scope = Visor.Supervisor.name(module, :scope)
          :ok = :pg.join(scope, :formation, self())
          %{state | mode: :discovery, size: size, scope: scope, phase: :discovering}
      end

    case restore(state) do
      {:ok, state} ->
        formed = ran_here(state)

        state =
          cond do
            state.phase != :member and formed != nil ->
              restarted_server(state, formed)

            state.mode == :nodes and state.phase == :forming and node() not in state.members ->
              decide_spare(state, "#{node()} is not in :nodes #{inspect(state.members)}")

            true ->
              state
          end

        send(self(), :tick)
        {:ok, state}

      {:error, message} ->
        Logger.error("#{inspect(module)}: refusing to start: #{message}")
        {:stop, {:storage_refused, message}}
    end
  end

  # ---- Memory mode: a restarted server ------------------------------------

  # The cluster this node's replica joined earlier in this group's life
  # (Visor.Lifetime), in memory mode: that replica's memory died with its
  # server. Disk mode restarts from the store instead (restore/1).
  defp ran_here(%{storage: :memory} = state),
    do: Lifetime.formed(state.module, lifetime_key(state))

  defp ran_here(_disk), do: nil

  # The configuration a Lifetime record belongs to: a node started again
  # with another one joins another cluster (a `nodes:` cluster id already
  # folds in the members and settings).
  defp lifetime_key(%{mode: :nodes, cluster: cluster}), do: {:nodes, cluster}
  defp lifetime_key(%{mode: :discovery} = state), do: {:cluster_size, state.size, state.settings}

  # Never fresh, whatever the peers say: they may all have restarted too
  # and remember nothing, and a fresh start of a majority would serve an
  # empty state as if nothing had been committed.
  defp restarted_server(state, formed) do
    Logger.warning(
      "#{inspect(state.module)}: this node's server restarted (the node did not), so its " <>
        "replica lost its memory. If a majority of the members lost theirs at once, the " <>
        "state is lost and the replicas stay :recovering until the group is stopped on every " <>
        "node, Visor.forget/1 is called there, and the group is started again (a new, " <>
        "empty cluster)"
    )

    become_member(state, formed, true)
  end

  # ---- Disk mode: restart from the store ----------------------------------

  defp restore(%{storage: :memory} = state), do: {:ok, state}

  defp restore(%{storage: {:disk, dir}} = state) do
    case Native.probe(dir) do
      :empty ->
        {:ok, state}

      {:error, message} ->
        {:error, "cannot read the store in #{dir}: #{message}"}

      {:ok, info} ->
        with {:ok, members, settings} <- stored_members(state, dir, info) do
          {:ok, member_from_disk(state, dir, info, members, settings)}
        end
    end
  end

  defp stored_members(state, dir, info) do
    group = Options.group_name(state.module)

    with :ok <- check(info.group == group, fn -> "#{dir} holds group #{inspect(info.group)}" end),
         {:ok, members, settings} <- stored_meta(dir, info),
         owner = Enum.at(members, info.replica),
         :ok <-
           check(length(members) == info.replica_count and owner == node(), fn ->
             "#{dir} belongs to replica #{info.replica} (#{owner}) of the cluster " <>
               "#{inspect(members)}, not to this node (#{node()})"
           end),
         :ok <- check_settings(state, dir, settings),
         :ok <- check_membership(state, dir, info, members) do
      {:ok, members, settings}
    end
  end

  defp stored_meta(dir, info) do
    case read_store_meta(info.meta) do
      {:ok, members, settings} -> {:ok, members, settings}
      :error -> {:error, "#{dir} holds a store whose metadata Visor did not write"}
    end
  end

  # The store's cluster was formed with these settings; every member keeps
  # them for the cluster's life.
  defp check_settings(state, dir, stored) do
    case Options.setting_mismatch(state.settings, stored) do
      nil ->
        :ok

      {:setting_mismatch, key, ours, theirs} ->
        {:error,
         "#{dir} holds the store of a cluster whose #{key} is #{inspect(theirs)}, but this " <>
           "node is started with #{key} #{inspect(ours)} (option #{Options.setting_source(key)}); " <>
           "every member must keep the cluster's value: start it with #{key} #{inspect(theirs)}"}
    end
  end

  defp check_membership(%{mode: :nodes} = state, dir, info, members) do
    check(members == state.members and info.cluster == state.cluster, fn ->
      "#{dir} holds the store of the cluster #{inspect(members)}, but this node is " <>
        "started with nodes: #{inspect(state.members)}; start it with the same nodes, or " <>
        "move the data_dir away (this node's replica then rejoins or starts anew)"
    end)
  end

  defp check_membership(%{mode: :discovery} = state, dir, _info, members) do
    check(length(members) == state.size, fn ->
      "#{dir} holds the store of a cluster of #{length(members)} (#{inspect(members)}), " <>
        "but this node is started with cluster_size: #{state.size}"
    end)
  end

  defp check(true, _message), do: :ok
  defp check(false, message), do: {:error, message.()}

  # This node's replica ran: it restarts from its store as the member the
  # store records, whoever else is up (no hello, no agreement needed).
  defp member_from_disk(state, dir, info, members, settings) do
    Logger.info(
      "#{inspect(state.module)}: restarting replica #{info.replica} of the cluster " <>
        "#{inspect(members)} from its store in #{dir} (view #{info.view}, commit #{info.commit})"
    )

    formed =
      case state.mode do
        :nodes ->
          %{id: :static, cluster: info.cluster, members: members}

        # Incarnations are not stored: every earlier one is gone, and a
        # member that finds itself listed under none rejoins.
        :discovery ->
          %{
            id: {:disk, info.cluster},
            cluster: info.cluster,
            members: members,
            incarnations: %{},
            settings: settings
          }
      end

    %{state | phase: :member, formed: formed, recover: false}
  end

  @impl GenServer
  def handle_call({:subscribe, pid, tag}, _from, state) do
    {:reply, decision(state), %{state | subscriber: {pid, tag}}}
  end

  # Calls from other nodes are untrusted input: never crash on them (a
  # crash restarts the group, and its replica would have to recover).
  def handle_call(_request, _from, state), do: {:reply, {:error, :unknown_call}, state}

  @impl GenServer
  def handle_cast(_request, state), do: {:noreply, state}

  @impl GenServer
  def handle_info(:tick, state) do
    Process.send_after(self(), :tick, @tick_ms)
    state = %{state | ticks: state.ticks + 1}
    state = if rem(state.ticks, @reconnect_every_ticks) == 1, do: reconnect(state), else: state

    state =
      case state.mode do
        :nodes -> tick_nodes(state)
        :discovery -> tick_discovery(state)
      end

    {:noreply, state}
  end

  def handle_info({:visor_hello, pid, from, inc, tag}, state)
      when is_pid(pid) and is_atom(from) and is_integer(inc) do
    {reply, state} = hello(state, from, inc, tag)
    send(pid, {:visor_hello_reply, self(), node(), state.incarnation, reply})
    {:noreply, state}
  end

  def handle_info({:visor_hello_reply, pid, from, inc, reply}, state)
      when is_pid(pid) and is_atom(from) and is_integer(inc) do
    {:noreply, hello_reply(state, pid, from, reply)}
  end

  def handle_info(
        {:visor_propose, pid, %{id: id, cluster: <<_::128>>, members: members} = p},
        state
      )
      when is_pid(pid) and is_list(members) and length(members) <= 6 do
    # (length/1 in the guard also keeps an improper list out: `in` raises on one.)
    if state.phase == :discovering and state.mode == :discovery and node() in members and
         Map.get(p, :settings) == state.settings do
      send(pid, {:visor_accept, id, node(), state.incarnation})
      {:noreply, %{state | phase: {:accepted, Map.put(p, :proposer, pid)}}}
    else
      send(pid, {:visor_reject, id, node()})
      {:noreply, state}
    end
  end

  def handle_info({:visor_accept, id, from, inc}, %{proposal: %{id: id} = p} = state)
      when is_atom(from) and is_integer(inc) do
    p = if from in p.members, do: %{p | accepted: Map.put(p.accepted, from, inc)}, else: p

    if map_size(p.accepted) == length(p.members) do
      formed = %{
        id: p.id,
        cluster: p.cluster,
        members: p.members,
        incarnations: p.accepted,
        settings: state.settings
      }

      for pid <- p.pids, do: send(pid, {:visor_formed, formed})
      {:noreply, become_member(%{state | proposal: nil}, formed, false)}
    else
      {:noreply, %{state | proposal: p}}
    end
  end

  def handle_info({:visor_reject, id, _from}, %{proposal: %{id: id}} = state),
    do: {:noreply, abort(state)}

  def handle_info({:proposal_timeout, id}, %{proposal: %{id: id}} = state),
    do: {:noreply, abort(state)}

  def handle_info({:visor_abort, id}, %{phase: {:accepted, %{id: id}}} = state),
    do: {:noreply, %{state | phase: :discovering}}

  def handle_info({:visor_formed, formed}, %{mode: :discovery} = state) do
    {:noreply, if(formed?(formed), do: learn_formed(state, formed), else: state)}
  end

  # A finished reconnect attempt (see reconnect/1).
  def handle_info({:DOWN, ref, :process, _, _}, state) do
    connecting = for {n, r} <- state.connecting, r != ref, into: %{}, do: {n, r}
    {:noreply, %{state | connecting: connecting}}
  end

  # Anything else, from anywhere (a stale proposal's answers, junk from a
  # misbehaving peer): ignored. Peers are untrusted input.
  def handle_info(_message, state), do: {:noreply, state}

  # ---- nodes: [...] --------------------------------------------------------

  # Forming: hello every member that has not answered :ok yet. Decided:
  # hello the members not heard from yet, so that this process records
  # every member (a rejoined node learns who the others are; they record
  # its new incarnation).
  defp tick_nodes(%{phase: phase} = state) when phase in [:forming, :member] do
    waiting_for = if phase == :forming, do: state.acks, else: state.heard

    for peer <- state.members -- [node()], peer not in waiting_for do
      send_to(
        {state.name, peer},
        {:visor_hello, self(), node(), state.incarnation, state.cluster}
      )
    end

    maybe_formed(state)
  end

  defp tick_nodes(state), do: state

  defp maybe_formed(state) do
    if state.phase == :forming and MapSet.size(state.acks) == length(state.members) - 1 do
      become_member(state, %{id: :static, cluster: state.cluster, members: state.members}, false)
    else
      state
    end
  end

  # A member's verdict on a hello from `from` (another configured member)
  # with incarnation `inc`, by its record of `from` (see the moduledoc).
  defp judge(state, from, inc) do
    case Map.get(state.known, from) do
      # Disk mode, decided: the cluster ran (this node's replica did), so a
      # member this process never heard of may have run one too (its
      # data_dir wiped, say): it must not start fresh.
      nil when state.storage != :memory and state.phase == :member ->
        {:restarted, %{state | known: Map.put(state.known, from, {inc, :rejoin})}}

      nil ->
        {:ok, %{state | known: Map.put(state.known, from, {inc, :fresh})}}

      {^inc, :fresh} ->
        {:ok, state}

      {^inc, :rejoin} ->
        {:restarted, state}

      {_earlier, _} ->
        Logger.info(
          "#{inspect(state.module)}: #{from} restarted (new incarnation); " <>
            restart_note(state)
        )

        {:restarted, %{state | known: Map.put(state.known, from, {inc, :rejoin})}}
    end
  end

  defp restart_note(%{storage: :memory}),
    do: "it rejoins and recovers its state from the others"

  defp restart_note(_disk),
    do: "it restarts from its disk, or rejoins and recovers its state from the others without one"

  # This process's records as it tells them, itself included.
  defp records(state) do
    Map.put(
      state.known,
      node(),
      {state.incarnation, if(state.recover, do: :rejoin, else: :fresh)}
    )
  end

  # Adds a peer's records to ours: only nodes we have no record of (any
  # record of a node tells its later incarnations apart), or upgrades one
  # of ours for the same incarnation to :rejoin (verdicts are sticky).
  # Peers are untrusted input: anything malformed is skipped.
  defp learn_records(state, theirs) when is_map(theirs) and map_size(theirs) <= 6 do
    known =
      Enum.reduce(theirs, state.known, fn
        {n, {inc, how}}, acc
        when is_atom(n) and is_integer(inc) and how in [:fresh, :rejoin] ->
          cond do
            n == node() or n not in state.members -> acc
            not Map.has_key?(acc, n) -> Map.put(acc, n, {inc, how})
            how == :rejoin and acc[n] == {inc, :fresh} -> Map.put(acc, n, {inc, :rejoin})
            true -> acc
          end

        _junk, acc ->
          acc
      end)

    %{state | known: known}
  end

  defp learn_records(state, _junk), do: state

  # ---- cluster_size: n -----------------------------------------------------

  defp tick_discovery(%{phase: phase} = state)
       when phase == :discovering or (is_tuple(phase) and elem(phase, 0) == :accepted) do
    visible = :pg.get_members(state.scope, :formation) -- [self()]
    peers = Map.take(state.peers, visible)

    for pid <- visible,
        do: send(pid, {:visor_hello, self(), node(), state.incarnation, :discovery})

    maybe_propose(%{state | peers: peers}, visible)
  end

  # Decided: peers' hellos are still answered, but this node asks nothing.
  defp tick_discovery(state), do: state

  # Only the lowest-named node of all those discovering or proposing may
  # propose, whatever their settings: two proposers at once (one per
  # settings class, or one while a lower node's proposal is in flight)
  # could form two clusters of the group side by side. It proposes only
  # nodes with its own settings; if it has too few, nobody forms.
  defp maybe_propose(%{phase: :discovering, proposal: nil} = state, visible) do
    heard_all? = Enum.all?(visible, &Map.has_key?(state.peers, &1))

    undecided =
      for {_pid, %{phase: phase, node: n}} <- state.peers,
          phase in [:discovering, :proposing],
          do: n

    lowest = Enum.min([node() | undecided])

    discovering =
      [
        {node(), self()}
        | for(
            {pid, %{phase: :discovering, node: n, settings: s}} <- state.peers,
            s == state.settings,
            do: {n, pid}
          )
      ]
      |> Enum.sort()

    cond do
      not heard_all? ->
        state

      lowest != node() ->
        waiting_for_other_settings(state, lowest)

      length(discovering) >= state.size ->
        propose(state, Enum.take(discovering, state.size))

      true ->
        state
    end
  end

  defp maybe_propose(state, _visible), do: state

  # The node that would propose runs other settings: it never proposes
  # this node, and this node may not propose while it is there.
  defp waiting_for_other_settings(state, lowest) do
    case Enum.find(Map.values(state.peers), &(&1.node == lowest)) do
      %{settings: settings} when settings != state.settings ->
        warn_once(
          state,
          {:waiting_for, lowest},
          fn ->
            "#{inspect(state.module)}: #{lowest}, the lowest-named discovering node (the one " <>
              "that proposes), is started with other settings than this node: no cluster " <>
              "with this node forms until their settings match"
          end,
          :error
        )

      _ ->
        state
    end
  end

  defp propose(state, chosen) do
    id = {node(), state.incarnation, state.proposals + 1}
    members = Enum.map(chosen, &elem(&1, 0))
    pids = for {n, pid} <- chosen, n != node(), do: pid
    proposal = %{id: id, cluster: :rand.bytes(16), members: members, settings: state.settings}

    for pid <- pids, do: send(pid, {:visor_propose, self(), proposal})
    Process.send_after(self(), {:proposal_timeout, id}, @proposal_timeout_ms)

    Logger.debug("#{inspect(state.module)}: proposing cluster #{inspect(members)}")

    %{
      state
      | proposals: state.proposals + 1,
        phase: {:accepted, Map.put(proposal, :proposer, self())},
        proposal: Map.merge(proposal, %{pids: pids, accepted: %{node() => state.incarnation}})
    }
  end

  defp abort(%{proposal: p} = state) do
    for pid <- p.pids, do: send(pid, {:visor_abort, p.id})
    %{state | proposal: nil, phase: :discovering}
  end

  defp learn_formed(state, formed) do
    cond do
      state.phase in [:member, :spare] ->
        state

      # An acceptor that missed the announcement: this very process was
      # accepted, and it has run no replica yet.
      Map.get(formed.incarnations, node()) == state.incarnation ->
        become_member(state, formed, false)

      # Bound to a proposal: stay until its proposer decides it (it may
      # form a cluster with this node in it).
      state.phase != :discovering ->
        state

      # Named, but the cluster runs with other settings than this node's.
      mismatch =
          node() in formed.members && Options.setting_mismatch(state.settings, formed.settings) ->
        # (A peer's cluster may name this node alone: no hd/1 here.)
        refuse(state, List.first(formed.members -- [node()], node()), mismatch)

      # Named under another incarnation: an earlier process of this node
      # was accepted, and may have run a replica. Rejoin, recovering.
      node() in formed.members ->
        become_member(state, formed, true)

      true ->
        decide_spare(state, "the cluster #{inspect(formed.members)} formed without this node")
    end
  end

  # ---- Hellos (both modes) -------------------------------------------------

  defp hello(%{mode: :nodes} = state, from, inc, cluster) do
    if cluster != state.cluster or from not in state.members or from == node() do
      {mismatch(state), state}
    else
      {verdict, state} = judge(state, from, inc)
      {{verdict, records(state)}, state}
    end
  end

  defp hello(%{mode: :discovery} = state, from, inc, :discovery) do
    reply = {:discovery, summary(state.phase), state.formed, state.settings}
    {reply, note_rejoin(state, from, inc)}
  end

  defp hello(state, _from, _inc, _tag), do: {mismatch(state), state}

  # What a node configured otherwise is told: this node's members and
  # settings, and whether it decided (a member's settings are the
  # cluster's).
  defp mismatch(state), do: {:mismatch, state.members, state.settings, state.phase == :member}

  # Discovery mode: a member records (and logs) the new incarnation of a
  # member node that says hello; the formed cluster is what tells that node
  # to rejoin.
  defp note_rejoin(%{phase: :member, formed: %{incarnations: incs}} = state, from, inc) do
    accepted = Map.get(incs, from)

    if accepted != nil and accepted != inc and Map.get(state.known, from) != {inc, :rejoin} do
      Logger.info(
        "#{inspect(state.module)}: #{from} restarted (new incarnation); " <>
          restart_note(state)
      )

      %{state | known: Map.put(state.known, from, {inc, :rejoin})}
    else
      state
    end
  end

  defp note_rejoin(state, _from, _inc), do: state

  defp hello_reply(%{mode: :nodes} = state, _pid, from, {verdict, records})
       when verdict in [:ok, :restarted] do
    if from in state.members and from != node() do
      state = learn_records(%{state | heard: MapSet.put(state.heard, from)}, records)

      case {state.phase, verdict} do
        {:forming, :ok} ->
          maybe_formed(%{state | acks: MapSet.put(state.acks, from)})

        {:forming, :restarted} ->
          Logger.warning(
            "#{inspect(state.module)}: #{from} knows an earlier incarnation of this node: " <>
              "it restarted with an empty memory, so its replica rejoins and recovers " <>
              "the state from the others"
          )

          become_member(
            state,
            %{id: :static, cluster: state.cluster, members: state.members},
            true
          )

        _decided ->
          state
      end
    else
      state
    end
  end

  defp hello_reply(
         %{mode: :nodes, phase: :forming} = state,
         _pid,
         from,
         {:mismatch, theirs, settings, decided}
       ) do
    case theirs == state.members and Options.setting_mismatch(state.settings, settings) do
      # A member of the formed cluster: its settings are the cluster's.
      {:setting_mismatch, _, _, _} = mismatch when decided == true ->
        refuse(state, from, mismatch)

      # Both forming: neither is the cluster's; both wait for the operator.
      {:setting_mismatch, key, ours, their} ->
        warn_once(
          state,
          {:mismatch, from},
          fn ->
            "#{inspect(state.module)}: #{from} is started with #{key} #{inspect(their)}, " <>
              "this node with #{inspect(ours)} (option #{Options.setting_source(key)}); " <>
              "every member must have the same value: no cluster forms until they do"
          end,
          :error
        )

      _ ->
        warn_once(state, {:mismatch, from}, fn ->
          "#{inspect(state.module)}: #{from} is configured with nodes #{inspect(theirs)}, " <>
            "this node with #{inspect(state.members)}; waiting for matching configuration"
        end)
    end
  end

  defp hello_reply(%{mode: :discovery} = state, pid, from, {:discovery, phase, formed, settings})
       when phase in [:discovering, :proposing, :accepted, :member, :spare] do
    peer = %{node: from, phase: phase, settings: settings}
    state = %{state | peers: Map.put(state.peers, pid, peer)}

    state =
      case Options.setting_mismatch(state.settings, settings) do
        nil ->
          state

        {:setting_mismatch, key, ours, their} ->
          warn_once(
            state,
            {:mismatch, from},
            fn ->
              "#{inspect(state.module)}: #{from} is started with #{key} #{inspect(their)}, " <>
                "this node with #{inspect(ours)} (option #{Options.setting_source(key)}); " <>
                "they will not form a cluster together"
            end,
            :error
          )
      end

    if formed?(formed), do: learn_formed(state, formed), else: state
  end

  defp hello_reply(state, _pid, _from, _reply), do: state

  defp summary({:accepted, %{proposer: proposer}}) when proposer == self(), do: :proposing
  defp summary({:accepted, _}), do: :accepted
  defp summary(phase), do: phase

  defp formed?(%{
         id: _,
         cluster: <<_::128>>,
         members: [_ | _] = members,
         incarnations: incs,
         settings: settings
       })
       when is_map(incs) and is_map(settings) and length(members) <= 6,
       do: Enum.all?(members, &is_atom/1)

  defp formed?(_), do: false

  # ---- Decisions -----------------------------------------------------------

  defp become_member(state, formed, recover) do
    index = Enum.find_index(formed.members, &(&1 == node()))

    if state.storage == :memory,
      do: Lifetime.put_formed(state.module, lifetime_key(state), formed)

    if recover do
      Logger.warning(
        "#{inspect(state.module)}: this node restarted; replica #{index} rejoins the cluster " <>
          "#{inspect(formed.members)} and recovers its state from the others"
      )
    else
      Logger.info(
        "#{inspect(state.module)}: cluster formed with #{inspect(formed.members)}; " <>
          "starting replica #{index}"
      )
    end

    notify(
      %{state | phase: :member, formed: formed, recover: recover},
      member_decision(formed, recover)
    )
  end

  # This node's replica never starts in this group's life: its settings
  # differ from the cluster's (`from` runs it).
  defp refuse(state, from, {:setting_mismatch, key, ours, theirs} = reason) do
    Logger.error(
      "#{inspect(state.module)}: refusing to start this node's replica: it is started with " <>
        "#{key} #{inspect(ours)}, the cluster (#{from}) runs with #{inspect(theirs)} " <>
        "(option #{Options.setting_source(key)}); every member must have the same value: " <>
        "restart this node's group with #{key} #{inspect(theirs)}"
    )

    notify(%{state | phase: {:refused, reason}}, {:refused, reason})
  end

  defp decide_spare(state, why) do
    Logger.warning("#{inspect(state.module)}: this node is a spare, not a replica: #{why}")
    notify(%{state | phase: :spare}, :spare)
  end

  defp notify(state, decision) do
    with {pid, tag} <- state.subscriber, do: send(pid, {:visor_formation, tag, decision})
    state
  end

  defp member_decision(formed, recover),
    do: {:member, %{cluster: formed.cluster, members: formed.members, recover: recover}}

  defp decision(%{phase: :member, formed: f, recover: recover}), do: member_decision(f, recover)
  defp decision(%{phase: :spare}), do: :spare
  defp decision(%{phase: {:refused, reason}}), do: {:refused, reason}
  defp decision(_state), do: :pending

  # ---- Connectivity --------------------------------------------------------

  # Keeps distribution connected to every member, so a healed partition
  # heals the cluster (replica traffic is sent with :noconnect and never
  # sets up connections itself). Each attempt runs in its own process:
  # connect_node/1 can block for seconds on an unreachable host.
  defp reconnect(state) do
    targets =
      case state do
        %{phase: :member, formed: f} -> f.members
        %{mode: :nodes} -> state.members
        _ -> []
      end

    missing = targets -- [node() | Node.list()]

    connecting =
      Enum.reduce(missing, state.connecting, fn n, acc ->
        if Map.has_key?(acc, n) do
          acc
        else
          {_pid, ref} = spawn_monitor(fn -> :net_kernel.connect_node(n) end)
          Map.put(acc, n, ref)
        end
      end)

    %{state | connecting: connecting}
  end

  defp send_to(dest, message), do: :erlang.send(dest, message, [:noconnect, :nosuspend])

  defp warn_once(state, key, message, level \\ :warning) do
    if MapSet.member?(state.warned, key) do
      state
    else
      Logger.log(level, message.())
      %{state | warned: MapSet.put(state.warned, key)}
    end
  end
end
