defmodule Visor.Formation do
  @moduledoc """
  Decides, once per lifetime, whether this node's replica may start, and
  with which members and cluster id. docs/operations.md explains both modes
  to users; this is how they work.

  Every formation process has an *incarnation*: a random number drawn when
  it starts. A replica that ran and lost its memory (a restarted node or
  server) comes back under a new incarnation, and must not rejoin: it would
  have forgotten entries it acknowledged, and a quorum that counts it could
  lose committed ops (VR Revisited §4.3; safe rejoining needs the recovery
  protocol of issue 4). Both modes refuse such a node (`:restarted`).

  ## `nodes: [...]` (explicit)

  The members and the cluster id (`Visor.Options.cluster_id/2`) are known
  up front. A node says hello to every other member and starts its replica
  once *every* member has answered `:ok`. A member answers `:ok` unless it
  already knows another incarnation of that node, so a restarted node is
  refused by any member that outlived it. Requiring every member (not a
  quorum) is what makes that check complete: no replica starts before every
  member has recorded it.

  ## `cluster_size: n` (discovery)

  Formation processes find each other with `:pg` (a scope per module) among
  connected nodes and exchange hellos that carry their phase. A two-phase
  agreement then forms the cluster:

    1. The lowest-named node among those still *discovering* (having heard
       every visible peer, and no formed cluster) proposes the first `n`
       discovering nodes, sorted, and a fresh random cluster id.
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
  formed cluster does not propose; it becomes a *spare* if it is not a
  member, a member if the cluster names its incarnation (it missed the
  announcement), and `:restarted` if the cluster names an older incarnation
  of it.

  Limits (docs/operations.md): nodes that cannot see each other at all
  while forming (disjoint partitions at boot) can form separate clusters;
  use `nodes:` when that matters. An acceptor whose proposer died before
  deciding waits for it forever.

  After a decision, the process keeps answering hellos (that is how a
  restarted node learns it is refused) and keeps reconnecting distribution
  to the members, so that a healed partition heals the cluster too.
  """

  use GenServer
  import Bitwise
  require Logger

  alias Visor.Options

  @tick_ms 100
  @reconnect_every_ticks 10
  @proposal_timeout_ms 2_000

  @type decision ::
          :pending
          | {:member, %{cluster: <<_::128>>, members: [node()]}}
          | :spare
          | :restarted

  @doc false
  def child_spec(config), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [config]}}

  @doc "Starts the formation process of a group (under `Visor.Supervisor`)."
  @spec start_link(Options.t()) :: GenServer.on_start()
  def start_link(%Options{module: module} = config) do
    GenServer.start_link(__MODULE__, config, name: Visor.Supervisor.name(module, :formation))
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
    # :forming (nodes mode), :discovering, {:accepted, proposal}, :member,
    # :spare or :restarted.
    phase: :forming,
    # Once a member: %{id, cluster, members, incarnations}.
    formed: nil,
    # nodes mode: the configured members and cluster id, the members that
    # answered :ok, and the incarnation each peer said hello with.
    members: [],
    cluster: nil,
    acks: MapSet.new(),
    seen: %{},
    warned: MapSet.new(),
    # discovery mode: what each visible peer said last (pid => summary),
    # this node's own proposal in flight, and a counter for proposal ids.
    peers: %{},
    proposal: nil,
    proposals: 0,
    connecting: %{},
    ticks: 0
  ]

  @impl GenServer
  def init(%Options{module: module} = config) do
    state = %__MODULE__{
      module: module,
      name: Visor.Supervisor.name(module, :formation),
      incarnation: :rand.uniform(1 <<< 62),
      subscriber: nil
    }

    state =
      case config.membership do
        {:nodes, nodes} ->
          %{state | mode: :nodes, members: nodes, cluster: Options.cluster_id(module, nodes)}

        {:cluster_size, size} ->
          scope = Visor.Supervisor.name(module, :scope)
          :ok = :pg.join(scope, :formation, self())
          %{state | mode: :discovery, size: size, scope: scope, phase: :discovering}
      end

    state =
      if state.mode == :nodes and node() not in state.members do
        decide(state, :spare, "#{node()} is not in :nodes #{inspect(state.members)}")
      else
        state
      end

    send(self(), :tick)
    {:ok, state}
  end

  @impl GenServer
  def handle_call({:subscribe, pid, tag}, _from, state) do
    {:reply, decision(state), %{state | subscriber: {pid, tag}}}
  end

  # Calls from other nodes are untrusted input: never crash on them (a
  # crash restarts the group, and a restarted replica is refused).
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
      when is_pid(pid) and is_list(members) do
    if state.phase == :discovering and state.mode == :discovery and node() in members do
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
      formed = %{id: p.id, cluster: p.cluster, members: p.members, incarnations: p.accepted}
      for pid <- p.pids, do: send(pid, {:visor_formed, formed})
      {:noreply, become_member(%{state | proposal: nil}, formed)}
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

  def handle_info({:visor_formed, formed}, state) do
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

  defp tick_nodes(%{phase: :forming} = state) do
    for peer <- state.members -- [node()], peer not in state.acks do
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
      become_member(state, %{
        id: :static,
        cluster: state.cluster,
        members: state.members,
        incarnations: Map.put(state.seen, node(), state.incarnation)
      })
    else
      state
    end
  end

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

  defp maybe_propose(%{phase: :discovering, proposal: nil} = state, visible) do
    heard_all? = Enum.all?(visible, &Map.has_key?(state.peers, &1))

    discovering =
      [
        {node(), self()}
        | for({pid, %{phase: :discovering, node: n}} <- state.peers, do: {n, pid})
      ]
      |> Enum.sort()

    lowest? = match?([{n, _} | _] when n == node(), discovering)

    if heard_all? and lowest? and length(discovering) >= state.size do
      propose(state, Enum.take(discovering, state.size))
    else
      state
    end
  end

  defp maybe_propose(state, _visible), do: state

  defp propose(state, chosen) do
    id = {node(), state.incarnation, state.proposals + 1}
    members = Enum.map(chosen, &elem(&1, 0))
    pids = for {n, pid} <- chosen, n != node(), do: pid
    proposal = %{id: id, cluster: :rand.bytes(16), members: members}

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
      state.phase in [:member, :spare, :restarted] ->
        state

      Map.get(formed.incarnations, node()) == state.incarnation ->
        become_member(state, formed)

      node() in formed.members ->
        decide(
          state,
          :restarted,
          "this node was a member of cluster #{inspect(formed.members)} and restarted " <>
            "with an empty memory; rejoining is unsafe until the recovery protocol exists"
        )

      state.phase == :discovering ->
        decide(state, :spare, "the cluster #{inspect(formed.members)} formed without this node")

      # Bound to another proposal: stay until its proposer decides it.
      true ->
        state
    end
  end

  # ---- Hellos (both modes) -------------------------------------------------

  defp hello(%{mode: :nodes} = state, from, inc, cluster) do
    cond do
      cluster != state.cluster or from not in state.members ->
        {{:mismatch, state.members}, state}

      Map.get(state.seen, from, inc) != inc ->
        state =
          warn_once(state, {:restarted, from, inc}, fn ->
            "#{inspect(state.module)}: #{from} restarted (new incarnation); refusing its replica"
          end)

        {:restarted, state}

      true ->
        {:ok, %{state | seen: Map.put(state.seen, from, inc)}}
    end
  end

  defp hello(%{mode: :discovery} = state, _from, _inc, :discovery) do
    {{:discovery, summary(state.phase), state.formed}, state}
  end

  defp hello(state, _from, _inc, _tag), do: {{:mismatch, state.members}, state}

  defp hello_reply(%{mode: :nodes, phase: :forming} = state, _pid, from, reply) do
    case reply do
      :ok ->
        maybe_formed(%{state | acks: MapSet.put(state.acks, from)})

      :restarted ->
        decide(
          state,
          :restarted,
          "#{from} knows an earlier incarnation of this node: it restarted with an " <>
            "empty memory, and rejoining is unsafe until the recovery protocol exists"
        )

      {:mismatch, theirs} ->
        warn_once(state, {:mismatch, from}, fn ->
          "#{inspect(state.module)}: #{from} is configured with nodes #{inspect(theirs)}, " <>
            "this node with #{inspect(state.members)}; waiting for matching configuration"
        end)

      _ ->
        state
    end
  end

  defp hello_reply(%{mode: :discovery} = state, pid, from, {:discovery, phase, formed})
       when phase in [:discovering, :accepted, :member, :spare, :restarted] do
    state = %{state | peers: Map.put(state.peers, pid, %{node: from, phase: phase})}
    if formed?(formed), do: learn_formed(state, formed), else: state
  end

  defp hello_reply(state, _pid, _from, _reply), do: state

  defp summary({:accepted, _}), do: :accepted
  defp summary(phase), do: phase

  defp formed?(%{id: _, cluster: <<_::128>>, members: [_ | _] = members, incarnations: incs})
       when is_map(incs) and length(members) <= 6,
       do: Enum.all?(members, &is_atom/1)

  defp formed?(_), do: false

  # ---- Decisions -----------------------------------------------------------

  defp become_member(state, formed) do
    Logger.info(
      "#{inspect(state.module)}: cluster formed with #{inspect(formed.members)}; " <>
        "starting replica #{Enum.find_index(formed.members, &(&1 == node()))}"
    )

    notify(
      %{state | phase: :member, formed: formed},
      {:member, Map.take(formed, [:cluster, :members])}
    )
  end

  defp decide(state, :spare, why) do
    Logger.warning("#{inspect(state.module)}: this node is a spare, not a replica: #{why}")
    notify(%{state | phase: :spare}, :spare)
  end

  defp decide(state, :restarted, why) do
    Logger.error("#{inspect(state.module)}: refusing to start this node's replica: #{why}")
    notify(%{state | phase: :restarted}, :restarted)
  end

  defp notify(state, decision) do
    with {pid, tag} <- state.subscriber, do: send(pid, {:visor_formation, tag, decision})
    state
  end

  defp decision(%{phase: :member, formed: f}), do: {:member, Map.take(f, [:cluster, :members])}
  defp decision(%{phase: phase}) when phase in [:spare, :restarted], do: phase
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

  defp warn_once(state, key, message) do
    if MapSet.member?(state.warned, key) do
      state
    else
      Logger.warning(message.())
      %{state | warned: MapSet.put(state.warned, key)}
    end
  end
end
