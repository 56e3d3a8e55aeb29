defmodule Visor.Formation.Discovery do
  @moduledoc false
  # The agreement of a `cluster_size: n` group, as a pure decider
  # (`Visor.Formation.Decider`): which `n` nodes form the cluster, under
  # which id, and whether this node's replica starts fresh, rejoins, or is a
  # spare.
  #
  # Formation processes find each other with `:pg` (a scope per module) among
  # connected nodes and exchange hellos that carry their phase. A two-phase
  # agreement then forms the cluster:
  #
  #   1. A node that has heard every visible peer and sees each one
  #      *discovering* (and no formed cluster), if it is the lowest-named of
  #      them all whatever their settings, proposes the first `n` of them
  #      with its own settings, sorted, and a fresh random cluster id. The
  #      proposal goes to every peer it sees, named or not (a *witness*).
  #      If the lowest node has other settings than the rest, nobody forms
  #      (each logs who differs).
  #   2. A discovering node accepts at most one proposal at a time (a named
  #      node only with the proposer's settings) and answers with its
  #      incarnation; it is then bound to the proposal until its proposer
  #      decides it. While bound, it tells the proposer so on every tick
  #      (`:visor_bound`), and a proposer that has decided that proposal
  #      answers with its decision again (the formed cluster, or an abort):
  #      sends are best effort, and one lost abort or announcement must not
  #      leave an acceptor bound forever. A later proposal from the proposer
  #      it is bound to also frees it (a proposer proposes again only after
  #      it aborted its previous proposal); an earlier one, a duplicate or a
  #      copy slow on the way, does not.
  #   3. If every process it asked accepts (an accept counts for the node and
  #      incarnation the proposal was sent to), the proposer announces the
  #      cluster (members, cluster id, each member's incarnation) to all of
  #      them: members start their replicas, witnesses are spares. Otherwise
  #      it aborts (a reject or 2000 ms without every answer), and tries
  #      again later.
  #
  # Two proposals that form share no process that took part (a process
  # accepts only while discovering and stays bound until the decision, a
  # formed one for good), so a second cluster forms only where its proposer
  # saw none of the first one's processes: docs/operations.md, "Why one
  # cluster forms", gives the argument, for concurrent proposals, restarts
  # and lost messages. The lowest-name rule only keeps proposers with the
  # same view from rejecting each other's proposals.
  #
  # Formed members advertise the cluster in their hellos: a node that sees a
  # formed cluster does not propose. If the cluster names this node under
  # this very incarnation, it is an acceptor that missed the announcement and
  # starts a fresh replica; if it names the node under another incarnation
  # (only an accepted incarnation can be named, and incarnations are never
  # reused), the node restarted and rejoins with a recovering replica; if the
  # node is not named, it becomes a *spare*. A node bound to the proposal
  # that formed the cluster (same cluster id, drawn for that proposal alone)
  # decides as the announcement would have told it, whoever advertises it: a
  # proposer back from its store knows no incarnations, but it frees the
  # acceptors of its earlier process this way. A node bound to another
  # proposal waits for that proposal's decision. The formed cluster never
  # changes, so any number of restarts of a member are recognised the same
  # way; members also record (and log) a rejoining node's new incarnation
  # when it says hello.
  #
  # Limits (docs/operations.md): nodes that cannot see each other at all
  # while forming (disjoint partitions at boot) can form separate clusters;
  # use `nodes:` when that matters. A node bound to the proposal of a
  # proposer that died, when no member advertises that proposal's cluster
  # (the proposer never decided, or came back without its memory), waits
  # forever and rejects every other proposal meanwhile (a restarted
  # proposer is another process, with another incarnation in its proposal
  # ids: it cannot answer for the old one's proposals).
  #
  # Inputs: `{:tick, visible}` (every 100 ms, with the addresses of the
  # other formation processes `:pg` shows), the hellos and their replies,
  # `{:visor_propose, pid, proposal}`, `{:visor_accept, id, node,
  # incarnation}`, `{:visor_reject, id, node}`, `{:visor_abort, id}`,
  # `{:visor_formed, formed}`, `{:visor_bound, pid, id}`, and
  # `{:proposal_timeout, id}` (a timer).

  alias Visor.Formation.Decider
  alias Visor.Options

  @proposal_timeout_ms 2_000

  @enforce_keys [:module, :node, :self, :incarnation, :settings, :size, :rand]
  defstruct @enforce_keys ++
              [
                # :memory or :disk.
                storage: :memory,
                # :discovering, {:accepted, proposal}, :member, :spare or
                # {:refused, reason}.
                phase: :discovering,
                # Once a member: %{id, cluster, members, incarnations,
                # settings}, and whether this node rejoins (its replica
                # recovers).
                formed: nil,
                recover: false,
                # Other member nodes' records, for the logs only (the formed
                # cluster decides): node => {incarnation, :rejoin}.
                known: %{},
                warned: MapSet.new(),
                # What each visible peer said last (address => summary),
                # this node's own proposal in flight, and a counter for
                # proposal ids.
                peers: %{},
                proposal: nil,
                proposals: 0,
                ticks: 0,
                out: []
              ]

  @type t :: %__MODULE__{}

  @doc """
  A new decider. `config` holds `:module`, `:node` (this node), `:self`
  (this process's address), `:incarnation`, `:settings`, `:size`, `:rand`
  (a `:rand` state, for cluster ids), `:storage` (`:memory` or `:disk`),
  and what this node remembers: `:earlier` (memory mode: the cluster
  `Visor.Lifetime` says its replica joined, or `nil`) and `:restored`
  (disk mode: what its store says, or `nil`).
  """
  @spec new(map()) :: {t(), [Decider.effect()]}
  def new(config) do
    # Settings compared whole (`==`) with the peers': every later setting
    # present (Visor.Options.complete_settings/1), as a store's are.
    config = Map.update!(config, :settings, &Options.complete_settings/1)
    state = struct!(__MODULE__, Map.drop(config, [:earlier, :restored]))

    state =
      case config[:restored] do
        nil -> state
        restored -> Decider.restore(state, from_store(restored), restored)
      end

    state =
      if state.phase != :member and config[:earlier] != nil,
        do: Decider.restarted_server(state, config.earlier),
        else: state

    Decider.flush(state)
  end

  # Incarnations are not stored: every earlier one is gone, and a member
  # that finds itself listed under none rejoins.
  defp from_store(restored) do
    %{
      id: {:disk, restored.cluster},
      cluster: restored.cluster,
      members: restored.members,
      incarnations: %{},
      settings: Options.complete_settings(restored.settings)
    }
  end

  @doc "Takes one input; returns the new state and the effects to carry out."
  @spec handle(t(), term()) :: {t(), [Decider.effect()]}
  def handle(state, input), do: state |> step(input) |> Decider.flush()

  @doc """
  Whom a discovering node waits for: how many more nodes with its
  settings it needs for `size`, and the undecided ones it has found
  (discovering, proposing or bound to a proposal); `nil` when it has
  enough, is bound to a proposal, or has decided.
  """
  @spec waiting(t()) :: {:more, pos_integer(), [node()]} | nil
  def waiting(%{phase: :discovering} = state) do
    found =
      for(
        %{node: n, phase: phase, settings: s} <- Map.values(state.peers),
        phase in [:discovering, :proposing, :accepted] and s == state.settings,
        do: n
      )
      |> Enum.uniq()
      |> Enum.sort()

    needed = state.size - 1 - length(found)
    if needed > 0, do: {:more, needed, found}
  end

  def waiting(_state), do: nil

  @doc """
  Whether a tick has nothing left to do but keep distribution connected:
  no longer discovering nor bound to a proposal, and proposing nothing.
  """
  @spec settled?(t()) :: boolean()
  def settled?(%{phase: :discovering}), do: false
  def settled?(%{phase: {:accepted, _}}), do: false
  def settled?(state), do: state.proposal == nil

  defp step(state, {:tick, visible}) do
    targets = if state.phase == :member, do: state.formed.members, else: []
    state |> Decider.tick(targets, settled?(state)) |> tick(visible)
  end

  defp step(state, {:visor_hello, pid, from, inc, tag}) when is_atom(from) and is_integer(inc) do
    {reply, state} = hello(state, from, inc, tag)

    Decider.emit(
      state,
      {:send, pid, {:visor_hello_reply, state.self, state.node, state.incarnation, reply}}
    )
  end

  defp step(state, {:visor_hello_reply, pid, from, inc, reply})
       when is_atom(from) and is_integer(inc),
       do: hello_reply(state, pid, from, inc, reply)

  defp step(state, {:visor_propose, pid, %{id: id, cluster: <<_::128>>, members: members} = p}) do
    # A proposer proposes again only after it aborted its previous
    # proposal (whose abort may have been lost): a *later* proposal of the
    # same proposer frees its acceptors. An earlier one (a duplicate, or a
    # copy slow on the way) must not: the proposal this node is bound to
    # may still count its accept.
    state =
      if later_proposal_of_bound_proposer?(state, pid, id),
        do: %{state | phase: :discovering},
        else: state

    # Every process the proposer sees is asked, named or not: each one
    # bound to the proposal can take part in no other until it is decided
    # (the argument is in docs/operations.md). A named node must run the
    # proposer's settings; a witness's do not matter.
    # (member_list? also keeps an improper list out: `in` raises on one.)
    cond do
      not Decider.member_list?(members) ->
        state

      state.phase == :discovering and
          (state.node not in members or Map.get(p, :settings) == state.settings) ->
        state
        |> Decider.emit({:send, pid, {:visor_accept, id, state.node, state.incarnation}})
        |> Map.put(:phase, {:accepted, Map.put(p, :proposer, pid)})

      true ->
        Decider.emit(state, {:send, pid, {:visor_reject, id, state.node}})
    end
  end

  defp step(%{proposal: %{id: id} = p} = state, {:visor_accept, id, from, inc})
       when is_atom(from) and is_integer(inc) do
    if MapSet.member?(p.awaiting, {from, inc}),
      do: accepted(state, p, from, inc),
      else: state
  end

  defp step(%{proposal: %{id: id}} = state, {:visor_reject, id, _from}), do: abort(state)
  defp step(%{proposal: %{id: id}} = state, {:proposal_timeout, id}), do: abort(state)

  defp step(%{phase: {:accepted, %{id: id}}} = state, {:visor_abort, id}),
    do: %{state | phase: :discovering}

  defp step(state, {:visor_formed, formed}),
    do: if(formed?(formed), do: learn_formed(state, formed), else: state)

  defp step(state, {:visor_bound, pid, id}), do: bound(state, pid, id)

  # Anything else (a stale proposal's answers, junk from a misbehaving
  # peer): ignored. Peers are untrusted input.
  defp step(state, _input), do: state

  # The process `from`/`inc`, one of those the proposal was sent to, is
  # bound to it.
  defp accepted(state, p, from, inc) do
    p = %{
      p
      | awaiting: MapSet.delete(p.awaiting, {from, inc}),
        accepted: if(from in p.members, do: Map.put(p.accepted, from, inc), else: p.accepted)
    }

    decide_if_all_accepted(state, p)
  end

  # Once every process asked is bound to the proposal, the cluster is
  # formed: none of them can be bound to another proposal before this one
  # is decided. A proposal that asked nobody (a `cluster_size: 1` node
  # that sees no peer) forms at once: no accept is coming.
  defp decide_if_all_accepted(state, p) do
    if MapSet.size(p.awaiting) == 0 do
      formed = %{
        id: p.id,
        cluster: p.cluster,
        members: p.members,
        incarnations: p.accepted,
        settings: state.settings
      }

      p.pids
      |> Enum.reduce(state, &Decider.emit(&2, {:send, &1, {:visor_formed, formed}}))
      |> Map.put(:proposal, nil)
      |> Decider.become_member(formed, false)
    else
      %{state | proposal: p}
    end
  end

  # Proposal ids are {node, incarnation, n}, n counting up per proposer.
  defp later_proposal_of_bound_proposer?(state, pid, {node, inc, n}) when is_integer(n) do
    case state.phase do
      {:accepted, %{proposer: ^pid, id: {^node, ^inc, bound}}} ->
        pid != state.self and is_integer(bound) and n > bound

      _ ->
        false
    end
  end

  defp later_proposal_of_bound_proposer?(_state, _pid, _id), do: false

  # Discovering or bound to a proposal: hello every visible peer, and
  # propose if it is this node's turn. Decided: peers' hellos are still
  # answered, but this node asks nothing.
  defp tick(%{phase: phase} = state, visible)
       when phase == :discovering or (is_tuple(phase) and elem(phase, 0) == :accepted) do
    hello = {:visor_hello, state.self, state.node, state.incarnation, :discovery}
    state = %{state | peers: Map.take(state.peers, visible)}

    visible
    |> Enum.reduce(state, &Decider.emit(&2, {:send, &1, hello}))
    |> still_bound()
    |> maybe_propose(visible)
  end

  defp tick(state, _visible), do: state

  # Bound to another node's proposal: remind its proposer, whose decision
  # may have been lost on the way (bound/3).
  defp still_bound(%{phase: {:accepted, %{proposer: proposer, id: id}}} = state)
       when proposer != state.self,
       do: Decider.emit(state, {:send, proposer, {:visor_bound, state.self, id}})

  defp still_bound(state), do: state

  # An acceptor of `id` is still bound to it: if this process decided that
  # proposal, it tells its decision again. A proposal in flight is left
  # to finish; any other proposal id is not this process's to answer.
  defp bound(%{proposal: %{id: id}} = state, _pid, id), do: state

  defp bound(%{formed: %{id: id} = formed} = state, pid, id),
    do: Decider.emit(state, {:send, pid, {:visor_formed, formed}})

  defp bound(state, pid, {node, inc, n} = id)
       when node == state.node and inc == state.incarnation and is_integer(n) and
              n <= state.proposals,
       do: Decider.emit(state, {:send, pid, {:visor_abort, id}})

  defp bound(state, _pid, _id), do: state

  # A proposal needs the accept of every process the proposer sees, so
  # this node proposes only when it has heard every visible peer and each
  # one is discovering (anyone bound to a proposal, or decided, would
  # reject it), and only if it is the lowest-named of them all, whatever
  # their settings, so that nodes that see each other do not propose at
  # once and reject each other's proposals for ever. It names only nodes
  # with its own settings; if it has too few, nobody forms.
  defp maybe_propose(%{phase: :discovering, proposal: nil} = state, visible) do
    heard_all? = Enum.all?(visible, &Map.has_key?(state.peers, &1))
    peers = Map.values(state.peers)
    lowest = Enum.min([state.node | Enum.map(peers, & &1.node)])

    candidates =
      [
        {state.node, state.self}
        | for({addr, %{node: n, settings: s}} <- state.peers, s == state.settings, do: {n, addr})
      ]
      |> Enum.sort()

    cond do
      not heard_all? or not Enum.all?(peers, &(&1.phase == :discovering)) ->
        state

      lowest != state.node ->
        waiting_for_other_settings(state, lowest)

      length(candidates) >= state.size ->
        propose(state, Enum.take(candidates, state.size))

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
        Decider.warn_once(state, {:waiting_for, lowest}, :error, :waiting_for, fn ->
          "#{lowest}, the lowest-named discovering node (the one " <>
            "that proposes), is started with other settings than this node: no cluster " <>
            "with this node forms until their settings match"
        end)

      _ ->
        state
    end
  end

  # `chosen` are the members; every peer this node sees is asked (the
  # processes it awaits, by incarnation: an accept counts for the very
  # process the proposal reached).
  defp propose(state, chosen) do
    id = {state.node, state.incarnation, state.proposals + 1}
    members = Enum.map(chosen, &elem(&1, 0))
    pids = Map.keys(state.peers)
    awaiting = MapSet.new(Map.values(state.peers), &{&1.node, &1.incarnation})
    {cluster, rand} = :rand.bytes_s(16, state.rand)
    proposal = %{id: id, cluster: cluster, members: members, settings: state.settings}

    pids
    |> Enum.reduce(state, &Decider.emit(&2, {:send, &1, {:visor_propose, state.self, proposal}}))
    |> Decider.emit({:timer, @proposal_timeout_ms, {:proposal_timeout, id}})
    |> Decider.log(:debug, :proposing, "proposing cluster #{inspect(members)}")
    |> Map.merge(%{
      rand: rand,
      proposals: state.proposals + 1,
      phase: {:accepted, Map.put(proposal, :proposer, state.self)}
    })
    |> decide_if_all_accepted(
      Map.merge(proposal, %{
        pids: pids,
        awaiting: awaiting,
        accepted: %{state.node => state.incarnation}
      })
    )
  end

  defp abort(%{proposal: p} = state) do
    p.pids
    |> Enum.reduce(state, &Decider.emit(&2, {:send, &1, {:visor_abort, p.id}}))
    |> Map.merge(%{proposal: nil, phase: :discovering})
  end

  defp learn_formed(state, formed) do
    cond do
      state.phase in [:member, :spare] ->
        state

      # An acceptor that missed the announcement: this very process was
      # accepted, and it has run no replica yet.
      Map.get(formed.incarnations, state.node) == state.incarnation ->
        Decider.become_member(state, formed, false)

      # Bound to the very proposal that formed (its cluster id was drawn
      # for it alone): this process's accept is one the cluster counted,
      # and it has run no replica yet. It starts fresh if named, and is a
      # spare if it was only asked. The proposer's announcement may be
      # lost, and the proposer may be back from its store or its
      # Visor.Lifetime record, a new process: any member tells it.
      bound_to?(state, formed) ->
        if state.node in formed.members,
          do: Decider.become_member(state, formed, false),
          else: Decider.decide_spare(state, "the cluster #{inspect(formed.members)} formed")

      # Bound to another proposal: stay until its proposer decides it (it
      # may form a cluster with this node in it).
      state.phase != :discovering ->
        state

      # Named, but the cluster runs with other settings than this node's.
      mismatch =
          state.node in formed.members &&
            Options.setting_mismatch(state.settings, formed.settings) ->
        # (A peer's cluster may name this node alone: no hd/1 here.)
        Decider.refuse(state, List.first(formed.members -- [state.node], state.node), mismatch)

      # Named under another incarnation: an earlier process of this node
      # was accepted, and may have run a replica. Rejoin, recovering.
      state.node in formed.members ->
        Decider.become_member(state, formed, true)

      true ->
        Decider.decide_spare(
          state,
          "the cluster #{inspect(formed.members)} formed without this node"
        )
    end
  end

  defp bound_to?(%{phase: {:accepted, p}}, formed),
    do: p.cluster == formed.cluster and p.members == formed.members

  defp bound_to?(_state, _formed), do: false

  defp hello(state, from, inc, :discovery) do
    reply = {:discovery, summary(state), state.formed, state.settings}
    {reply, note_rejoin(state, from, inc)}
  end

  # A `nodes:` node: told this node's settings, and whether it decided.
  defp hello(state, _from, _inc, _tag),
    do: {{:mismatch, [], state.settings, state.phase == :member}, state}

  # A member records (and logs) the new incarnation of a member node that
  # says hello; the formed cluster is what tells that node to rejoin.
  defp note_rejoin(%{phase: :member, formed: %{incarnations: incs}} = state, from, inc) do
    accepted = Map.get(incs, from)

    if accepted != nil and accepted != inc and Map.get(state.known, from) != {inc, :rejoin} do
      state
      |> Decider.log(
        :info,
        :peer_restarted,
        "#{from} restarted (new incarnation); #{Decider.restart_note(state)}"
      )
      |> Map.put(:known, Map.put(state.known, from, {inc, :rejoin}))
    else
      state
    end
  end

  defp note_rejoin(state, _from, _inc), do: state

  defp hello_reply(state, pid, from, inc, {:discovery, phase, formed, settings})
       when phase in [:discovering, :proposing, :accepted, :member, :spare] do
    settings = Options.complete_settings(settings)
    peer = %{node: from, incarnation: inc, phase: phase, settings: settings}
    state = %{state | peers: Map.put(state.peers, pid, peer)}

    state =
      case Options.setting_mismatch(state.settings, settings) do
        nil ->
          state

        mismatch ->
          Decider.warn_setting_mismatch(
            state,
            from,
            mismatch,
            "they will not form a cluster together"
          )
      end

    if formed?(formed), do: learn_formed(state, formed), else: state
  end

  defp hello_reply(state, _pid, _from, _inc, _reply), do: state

  defp summary(%{phase: {:accepted, %{proposer: proposer}}, self: self}) when proposer == self,
    do: :proposing

  defp summary(%{phase: {:accepted, _}}), do: :accepted
  defp summary(%{phase: phase}), do: phase

  defp formed?(%{
         id: _,
         cluster: <<_::128>>,
         members: [_ | _] = members,
         incarnations: incs,
         settings: settings
       })
       when is_map(incs) and is_map(settings),
       do: Decider.node_list?(members)

  defp formed?(_), do: false
end
