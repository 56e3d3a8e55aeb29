defmodule Visor.Formation.Explicit do
  @moduledoc false
  # The agreement of a `nodes: [...]` group, as a pure decider
  # (`Visor.Formation.Decider`): whether this node's replica starts fresh
  # or rejoins.
  #
  # The members and the cluster id (`Visor.Options.cluster_id/2`) are known
  # up front. Each formation process keeps a *record* of every other member:
  # the incarnation it knows for it, and whether that incarnation was let in
  # as `:fresh` or told to `:rejoin`. A node says hello to every other member;
  # a member answers by its record of the sender:
  #
  #   * no record: `:ok`, and it records the sender as `:fresh`;
  #   * the same incarnation, recorded `:fresh`: `:ok`;
  #   * the same incarnation recorded `:rejoin`, or another incarnation:
  #     `:restarted`, and it records the sender's incarnation as `:rejoin`
  #     (sticky: the same incarnation never gets `:ok` afterwards).
  #
  # A node starts a fresh replica once **every** member has answered `:ok`,
  # and a recovering one as soon as **any** member answers `:restarted`.
  # Requiring every member for a fresh start is what makes the check
  # complete: a replica starts fresh only after every member has recorded
  # it, so any later incarnation of that node is told `:restarted` by every
  # member that outlived it. Every answer also carries the responder's
  # records (its own included), and a node adds to its records those it
  # lacks; a node that decided keeps saying hello to members it has not
  # heard from yet. So a rejoined node learns the others' incarnations (and
  # can tell when *they* restart), and every member records the rejoined
  # node's new incarnation: a second restart is recognised like the first.
  #
  # ## Starting: word that every member decided
  #
  # A node that has every member's `:ok` decides fresh at once, as above
  # (its records, its answers from then on, its `Visor.Lifetime` record and
  # disk snapshot are a decided member's), but it *holds* its replica:
  # the replica starts only once the process knows that every other
  # member decided too (fresh, held or not, or rejoining, or restored from
  # its store). A process that decides tells every other member
  # (`{:visor_ready, pid, node, incarnation, decided}`, the members it
  # knows decided, itself included); a held one asks every other member so
  # again and again (backing off, as hellos do: tick/1); one that knows more answers (`:visor_ready_reply`, not
  # answered in turn). Members pass on what they heard, so the word of a
  # member that is gone comes from any member that heard it.
  #
  # Why: `Visor.start_group/2` returns once a quorum runs. Without the
  # hold, the last member to form could still be waiting for one member's
  # answer then (its hello reached that member before its group existed;
  # the next goes out a tick later), and if that member's node died in
  # between, it waited for good: one crash stopped a group of three that
  # had formed (test/visor/groups/death_while_forming_test.exs). With it,
  # a fresh replica starts only when no member waits for any answer any
  # more: each has all of them. A member still held waits only for word
  # that the others decided, and a member that started knew it: if a
  # quorum started and at most a minority died, a member that started is
  # up, and it tells the others.
  #
  # Why it is safe: the word changes nothing of what formation decides or
  # answers. Which node decides fresh, and when, is as before (every
  # member's `:ok`, answered to this very incarnation: no relayed answer
  # counts); the word neither adds to nor removes from records, verdicts,
  # acks or snapshots. It only delays the start of a replica that was
  # already decided fresh, which is what a slow start is. So every
  # argument below about who may start fresh holds unchanged (a decided
  # process whose replica has not started yet existed before too, between
  # the decision and the replica's start; a held one is such a process for
  # longer). Another rule was weighed and left: counting a dead member's
  # `:ok` on a survivor's word that the dead one's records (carried in its
  # answers) named this incarnation `:fresh`. In memory mode that is
  # sound, a verdict being a function of the records alone; in disk mode a
  # decided member answers a member it has not answered by its snapshot,
  # not by a record it may have learned from that very member's word about
  # itself; and it is not live either: the survivor holds the records the
  # dead member had when it answered the survivor, often before it heard
  # of the waiting member at all.
  #
  # What the hold does not cover: a member that dies before a quorum
  # started (before `Visor.start_group/2` returns) may leave the others
  # held or forming until it comes back, as before: a `nodes:` cluster
  # forms only once every member has started the group and answered.
  #
  # ## Disk mode
  #
  # In disk mode a process that restarted from its store has lost its
  # records, and the cluster ran: a member it has no word on may have run a
  # replica too, and then lost its `data_dir`. So a decided member answers
  # the first hello of a member it has not answered before by its
  # *formation snapshot* (`formed_with`), never by a record it learned
  # since: the incarnations it knew as let in fresh (by itself, or by a
  # peer) when it decided; `:ok` to the incarnation named there, and
  # `:restarted` to any other (recorded as `:rejoin`). The snapshot is
  # written to the store's directory before the replica creates the store
  # (`Visor.Formation.Restore`), so a member restarted from its store
  # answers with the snapshot of the process that created it. Without one
  # (a missing file) every such member is told to rejoin, as before the
  # snapshot existed. What the snapshot adds over "always `:restarted`" is
  # liveness: a member that decided fresh and restarted from its store
  # before the others decided lets in the very incarnations it formed
  # with, which never ran, instead of sending them all to recover with it
  # as their only normal replica.
  #
  # A record learned from a peer is no verdict for a decided member in disk
  # mode whose replica holds the cluster's state: a forming node tells its own as
  # `:fresh`, and a member that rejoined after a wipe would otherwise let
  # a wiped `b1` in fresh on the word of `b1` itself. A forming node, or a
  # recovering one (below), still answers by its records: it has no
  # memory, and its `:ok` is only one of the votes a fresh start needs.
  #
  # ## A replica that recovers
  #
  # A member that *rejoined* decided on the first `:restarted` it heard,
  # so its snapshot may lack members that were still forming. While its
  # replica recovers it has no memory of its own (it votes for nothing and
  # acknowledges nothing), so it answers a member its snapshot does not
  # name by its records, as a forming node does (`:ok` to one it has no
  # record of); a member its snapshot names is answered by the snapshot.
  # So does a process restarted from a store whose superblock says the
  # replica was recovering (`Visor.Formation.Restore`). Once the replica
  # has finished recovering (`:visor_replica_normal`, from the group's
  # router through `Visor.Formation`, at its first look that finds the
  # replica normal, in a view change or diverged: each holds the
  # cluster's state), the snapshot alone lets in a member this process
  # has not answered: the replica now holds the cluster's state, and a
  # member it does not know may have run and lost its `data_dir`. Before
  # this rule, one restart of a forming node (a minority, nothing wiped)
  # could send a node that never ran to recover: with three members, two
  # recovering and one normal, for good.
  #
  # Why this is safe. Say `b`'s replica ran as `b0` and `b` now forms
  # again as `b1`, without a store (wiped, or never created). Call a
  # member *without memory* while it has neither a normal replica nor a
  # store of one (lost, restarted before it ever ran, or recovering): the
  # guarantee is that at most a minority is, at once
  # (docs/operations.md). `b` is, from losing `b0`'s memory until `b1` is
  # normal. `b1` starts fresh only if every member's current process
  # answers it `:ok`. Take a member `m` whose process recorded `b0` (if
  # `b0` started fresh every member's did: each let it in; if it rejoined,
  # the one that told it so knew an earlier incarnation). A process that
  # has a record of another incarnation answers `:restarted`. A process
  # restarted from a store answers by a snapshot taken when the store was
  # created: a store created before `b1` appeared cannot name `b1`
  # (`:restarted`), and one created after had no store at that moment
  # (then `m` was without memory when `b1` appeared, or lost the store
  # after it). A forming process that has no record of `b` is a later
  # process than the one that recorded `b0`, started without a store: `m`
  # is without memory. A process whose replica recovers is without memory
  # by definition, and answers by its snapshot (which names `b0`, an
  # earlier incarnation or nothing, never `b1` if taken before `b1`
  # appeared) or by its records. (Formation hears that the replica has
  # finished recovering within one look of the router, 10 ms, whatever
  # status it goes on to: far less than `b` needs to lose its store and
  # come back.) So `m` answers `b1` `:ok` only if
  # `m` was without memory at some moment while `b` was: two members at
  # once. A cluster of 3 or 4 tolerates one, so there `b1` is let in fresh
  # only beyond the guarantee.
  #
  # With 5 members or more the moments can differ: every other member may
  # lose its `data_dir` in turn, one at a time, while `b1` (cut off from
  # those that remember `b0`) collects an `:ok` from each one's new
  # process, forming or with its replica recovering, which cannot know
  # better; that holds for every answer rule,
  # since a forming process must let in members it does not know (a new
  # cluster forms so). It is an open defect (docs/testing.md, "Known
  # defects"): a fresh start would need every member to confirm it at one
  # moment (a second round after the `:ok`s, which a process that since
  # learned of an earlier incarnation, or rejoined, refuses), and a
  # rejoined replica would need to take over the records of the member
  # that let it rejoin, not a forming member's word about itself.
  #
  # Inputs: `:tick` (every 100 ms), the hellos and their replies
  # (`{:visor_hello, pid, node, incarnation, cluster}`,
  # `{:visor_hello_reply, pid, node, incarnation, reply}`), the word of
  # decisions (`:visor_ready`, `:visor_ready_reply`), and
  # `:visor_replica_normal` (which `Visor.Formation` gives it only on its
  # own node's router's word).

  alias Visor.Formation.Decider
  alias Visor.Options

  # The longest wait between two retries of a hello or a decision's
  # question, in ticks (100 ms each).
  @retry_max_ticks 16

  @enforce_keys [:module, :name, :node, :self, :incarnation, :settings, :members, :cluster]
  defstruct @enforce_keys ++
              [
                # :memory or :disk.
                storage: :memory,
                # :forming, :member, :spare or {:refused, reason}.
                phase: :forming,
                # Once a member: %{id: :static, cluster, members}, and
                # whether this node rejoins (its replica recovers).
                formed: nil,
                recover: false,
                # The members that answered :ok (a fresh start needs all of
                # them), and those heard from at all (a decided node says
                # hello until it has heard everyone).
                acks: MapSet.new(),
                heard: MapSet.new(),
                # Every other member node's record:
                # node => {incarnation, :fresh | :rejoin}; and the nodes
                # whose hellos this process answered itself (its other
                # records it learned from peers).
                known: %{},
                judged: MapSet.new(),
                # Disk mode, decided: whether this node's replica is
                # recovering (it rejoined, or its store says so) and has
                # not been normal since (`:visor_replica_normal`): it then has
                # no memory of its own to answer by (see the top of this
                # module).
                recovering: false,
                # Disk mode, decided: the formation snapshot, node =>
                # incarnation: the members this process knew as :fresh
                # when it decided, or, restarted from its store, those the
                # process that created the store knew
                # (Visor.Formation.Restore).
                formed_with: %{},
                # A fresh start waits for word that every other member
                # decided (see the top of this module): held while it has
                # not heard it; ready: the members known to have decided,
                # by their word or a peer's.
                held: false,
                ready: MapSet.new(),
                warned: MapSet.new(),
                # Retries back off (see tick/1): node => {tick of the next
                # hello, ticks to wait after it}; and the same for asking
                # the others' decisions while held.
                hello_due: %{},
                ready_due: {0, 1},
                ticks: 0,
                out: []
              ]

  @type t :: %__MODULE__{}

  @doc """
  A new decider. `config` holds `:module`, `:name` (the formation
  processes' registered name, the same on every node), `:node` (this
  node), `:self` (this process's address), `:incarnation`, `:settings`,
  `:members`, `:cluster`, `:storage` (`:memory` or `:disk`), and what this
  node remembers: `:earlier` (memory mode: the cluster `Visor.Lifetime`
  says its replica joined, or `nil`) and `:restored` (disk mode: what its
  store says, or `nil`).
  """
  @spec new(map()) :: {t(), [Decider.effect()]}
  def new(config) do
    state = struct!(__MODULE__, Map.drop(config, [:earlier, :restored]))

    state =
      case config[:restored] do
        nil ->
          state

        restored ->
          %{
            Decider.restore(state, static(restored.cluster, restored.members), restored)
            | formed_with: restored.formed_with,
              recovering: restored.recovering
          }
      end

    state =
      cond do
        state.phase != :member and config[:earlier] != nil ->
          Decider.restarted_server(state, config.earlier)

        state.phase == :forming and state.node not in state.members ->
          Decider.decide_spare(state, "#{state.node} is not in :nodes #{inspect(state.members)}")

        true ->
          state
      end

    Decider.flush(state)
  end

  @doc "Takes one input; returns the new state and the effects to carry out."
  @spec handle(t(), term()) :: {t(), [Decider.effect()]}
  def handle(state, :tick) do
    state |> Decider.tick(state.members, settled?(state)) |> tick() |> Decider.flush()
  end

  def handle(state, {:visor_hello, pid, from, inc, cluster})
      when is_atom(from) and is_integer(inc) do
    {reply, state} = hello(state, from, inc, cluster)
    # It is up and answering: our own hello to it goes at the next tick,
    # not after the backoff its silence had built up (tick/1).
    state = %{state | hello_due: Map.delete(state.hello_due, from)}

    state
    |> Decider.emit(
      {:send, pid, {:visor_hello_reply, state.self, state.node, state.incarnation, reply}}
    )
    |> Decider.flush()
  end

  def handle(state, {:visor_hello_reply, _pid, from, inc, reply})
      when is_atom(from) and is_integer(inc) do
    state |> hello_reply(from, reply) |> Decider.flush()
  end

  # Word of which members decided: a held member asks every other member
  # (again and again, backing off); one that knows more answers with all it knows.
  def handle(state, {tag, pid, from, inc, nodes})
      when tag in [:visor_ready, :visor_ready_reply] and is_atom(from) and is_integer(inc) do
    if from in state.members and from != state.node and Decider.node_list?(nodes) do
      state = learn_ready(state, nodes)
      told = told_ready(state)

      state =
        if tag == :visor_ready and not MapSet.subset?(told, MapSet.new(nodes)) do
          reply =
            {:visor_ready_reply, state.self, state.node, state.incarnation, told_list(state)}

          Decider.emit(state, {:send, pid, reply})
        else
          state
        end

      state |> maybe_start() |> Decider.flush()
    else
      {state, []}
    end
  end

  # This node's replica has finished recovering (the group's router says
  # so, `Visor.Formation.replica_normal/1`; never a peer's): from now on
  # it answers by its snapshot.
  def handle(state, :visor_replica_normal), do: {%{state | recovering: false}, []}

  # Anything else (another mode's messages, junk from a misbehaving peer):
  # ignored. Peers are untrusted input.
  def handle(state, _input), do: {state, []}

  @doc """
  Whether a tick has nothing left to do but keep distribution connected:
  decided (or refused), not holding a fresh start back, and every other
  member heard. Hellos still get their answers; only ticks slow down.
  """
  @spec settled?(t()) :: boolean()
  def settled?(%{phase: :forming}), do: false

  def settled?(state) do
    not state.held and
      Enum.all?(state.members, &(&1 == state.node or &1 in state.heard))
  end

  @doc """
  Whom a forming node waits for: the other members that have not answered
  `:ok` yet (a fresh start needs every one); `nil` once decided.
  """
  @spec waiting(t()) :: {:nodes, [node()]} | nil
  def waiting(%{phase: :forming} = state) do
    case Enum.reject(state.members, &(&1 == state.node or &1 in state.acks)) do
      [] -> nil
      nodes -> {:nodes, nodes}
    end
  end

  # Decided fresh, held: the members not known to have decided.
  def waiting(%{held: true} = state) do
    case Enum.reject(state.members, &(&1 == state.node or &1 in state.ready)) do
      [] -> nil
      nodes -> {:nodes, nodes}
    end
  end

  def waiting(_decided), do: nil

  defp static(cluster, members), do: %{id: :static, cluster: cluster, members: members}

  # Forming: hello every member that has not answered :ok yet. Decided:
  # hello the members not heard from yet, so that this process records
  # every member (a rejoined node learns who the others are; they record
  # its new incarnation).
  # Hellos to the members not heard yet, and asks for their decisions
  # while held, each retried at the first tick and then after 1, 2, 4, ...
  # ticks, at most @retry_max_ticks apart: an answer lost is asked again
  # soon, but a node too loaded to answer within a tick (hundreds of
  # groups forming at once) is not sent a new copy every tick, which
  # would only queue up behind the ones it has not read yet.
  defp tick(%{phase: phase} = state) when phase in [:forming, :member] do
    waiting_for = if phase == :forming, do: state.acks, else: state.heard
    hello = {:visor_hello, state.self, state.node, state.incarnation, state.cluster}

    state.members
    |> Enum.reject(&(&1 == state.node or &1 in waiting_for))
    |> Enum.reduce(state, fn node, state ->
      {due, wait} = Map.get(state.hello_due, node, {0, 1})

      if state.ticks >= due do
        state = Decider.emit(state, {:send, {state.name, node}, hello})
        next = {state.ticks + wait, min(2 * wait, @retry_max_ticks)}
        %{state | hello_due: Map.put(state.hello_due, node, next)}
      else
        state
      end
    end)
    |> ask_ready()
    |> maybe_formed()
  end

  defp tick(state), do: state

  defp maybe_formed(state) do
    if state.phase == :forming and MapSet.size(state.acks) == length(state.members) - 1 do
      %{state | held: true}
      |> persist()
      |> Decider.become_member(static(state.cluster, state.members), false)
      |> tell_ready()
      |> maybe_start()
    else
      state
    end
  end

  # ---- Word of decisions (the start of a fresh replica waits for it) ------

  # The members this process knows decided, itself included once it did.
  defp told_ready(%{phase: :member} = state), do: MapSet.put(state.ready, state.node)
  defp told_ready(state), do: state.ready

  defp told_list(state), do: state |> told_ready() |> MapSet.to_list()

  defp learn_ready(state, nodes) do
    known = for n <- nodes, n in state.members, n != state.node, into: state.ready, do: n
    %{state | ready: known}
  end

  # Tells every other member what this process knows decided: once, as it
  # decides (so that they hear it at once).
  defp tell_ready(state) do
    message = {:visor_ready, state.self, state.node, state.incarnation, told_list(state)}

    state.members
    |> Enum.reject(&(&1 == state.node))
    |> Enum.reduce(state, &Decider.emit(&2, {:send, {state.name, &1}, message}))
  end

  # Held: asks every other member, backing off as hellos do (a member that
  # does not know more does not answer).
  defp ask_ready(%{held: true, ready_due: {due, wait}} = state) do
    if state.ticks >= due do
      %{tell_ready(state) | ready_due: {state.ticks + wait, min(2 * wait, @retry_max_ticks)}}
    else
      state
    end
  end

  defp ask_ready(state), do: state

  # Held, and every other member known to have decided: the replica starts.
  defp maybe_start(%{held: true} = state) do
    if Enum.all?(state.members, &(&1 == state.node or &1 in state.ready)),
      do: Decider.start(%{state | held: false}),
      else: state
  end

  defp maybe_start(state), do: state

  defp hello(state, from, inc, cluster) do
    if cluster != state.cluster or from not in state.members or from == state.node do
      {mismatch(state), state}
    else
      {verdict, state} = judge(state, from, inc)
      {{verdict, records(state)}, state}
    end
  end

  # What a node configured otherwise is told: this node's members and
  # settings, and whether it decided (a member's settings are the
  # cluster's).
  defp mismatch(state), do: {:mismatch, state.members, state.settings, state.phase == :member}

  # A member's verdict on a hello from `from` (another configured member)
  # with incarnation `inc`, by its record of `from` (see the top of this module).
  defp judge(state, from, inc) do
    first? = not MapSet.member?(state.judged, from)
    state = %{state | judged: MapSet.put(state.judged, from)}

    case Map.get(state.known, from) do
      # Disk mode, decided: this node's replica ran, so the cluster may
      # have run with a replica of `from` that then lost its store. A
      # member this process has not answered itself gets :ok only under
      # the incarnation its formation snapshot names (see the top of this module),
      # never by a record learned since: a forming node tells its own as
      # :fresh. A recovering replica has no memory of its own: a member
      # its snapshot does not name is answered by records, as a forming
      # node answers.
      _
      when state.storage == :disk and state.phase == :member and first? and
             (not state.recovering or is_map_key(state.formed_with, from)) ->
        verdict = if Map.get(state.formed_with, from) == inc, do: :fresh, else: :rejoin
        state = %{state | known: Map.put(state.known, from, {inc, verdict})}
        {if(verdict == :fresh, do: :ok, else: :restarted), state}

      nil ->
        {:ok, %{state | known: Map.put(state.known, from, {inc, :fresh})}}

      {^inc, :fresh} ->
        {:ok, state}

      {^inc, :rejoin} ->
        {:restarted, state}

      {_earlier, _} ->
        state =
          Decider.log(
            state,
            :info,
            :peer_restarted,
            "#{from} restarted (new incarnation); #{Decider.restart_note(state)}"
          )

        {:restarted, %{state | known: Map.put(state.known, from, {inc, :rejoin})}}
    end
  end

  # This process's records as it tells them, itself included.
  defp records(state) do
    Map.put(
      state.known,
      state.node,
      {state.incarnation, if(state.recover, do: :rejoin, else: :fresh)}
    )
  end

  # Adds a peer's records to ours: only nodes we have no record of (any
  # record of a node tells its later incarnations apart), or upgrades one
  # of ours for the same incarnation to :rejoin (verdicts are sticky).
  # Peers are untrusted input: anything malformed is skipped.
  defp learn_records(state, theirs) do
    if is_map(theirs) and map_size(theirs) <= Options.max_replicas() do
      %{state | known: Enum.reduce(theirs, state.known, &learn_record(state, &1, &2))}
    else
      state
    end
  end

  defp learn_record(state, {n, {inc, how}}, known)
       when is_atom(n) and is_integer(inc) and how in [:fresh, :rejoin] do
    cond do
      n == state.node or n not in state.members -> known
      not Map.has_key?(known, n) -> Map.put(known, n, {inc, how})
      how == :rejoin and known[n] == {inc, :fresh} -> Map.put(known, n, {inc, :rejoin})
      true -> known
    end
  end

  defp learn_record(_state, _junk, known), do: known

  defp hello_reply(state, from, {verdict, records}) when verdict in [:ok, :restarted] do
    if from in state.members and from != state.node do
      state = learn_records(%{state | heard: MapSet.put(state.heard, from)}, records)

      case {state.phase, verdict} do
        {:forming, :ok} ->
          maybe_formed(%{state | acks: MapSet.put(state.acks, from)})

        {:forming, :restarted} ->
          %{state | recovering: true}
          |> persist()
          |> Decider.become_member(
            static(state.cluster, state.members),
            true,
            "#{from} knows an earlier incarnation of this node"
          )
          |> tell_ready()

        _decided ->
          state
      end
    else
      state
    end
  end

  defp hello_reply(%{phase: :forming} = state, from, {:mismatch, theirs, settings, decided}) do
    case theirs == state.members and Options.setting_mismatch(state.settings, settings) do
      # A member of the formed cluster: its settings are the cluster's.
      {:setting_mismatch, _, _, _} = mismatch when decided == true ->
        Decider.refuse(state, from, mismatch)

      # Both forming: neither is the cluster's; both wait for the operator.
      {:setting_mismatch, _, _, _} = mismatch ->
        Decider.warn_setting_mismatch(
          state,
          from,
          mismatch,
          "every member must have the same value: no cluster forms until they do"
        )

      # Same members, same settings, another cluster id: a keyed group's
      # other instance (stopped and started again while one of the two
      # nodes was cut off); that node's host stops it or starts this one.
      nil ->
        Decider.warn_once(state, {:mismatch, from}, :warning, :nodes_mismatch, fn ->
          "#{from} runs another instance of this group (it was stopped and started " <>
            "again while one of the two was cut off); waiting for it to run this one"
        end)

      _ ->
        Decider.warn_once(state, {:mismatch, from}, :warning, :nodes_mismatch, fn ->
          "#{from} is configured with nodes #{inspect(theirs)}, " <>
            "this node with #{inspect(state.members)}; waiting for matching configuration"
        end)
    end
  end

  defp hello_reply(state, _from, _reply), do: state

  # Disk mode: what the replica's store is to keep of this decision
  # (Visor.Formation.Restore), written before the store is created.
  defp persist(%{storage: :disk} = state) do
    state = %{state | formed_with: formed_with(state)}
    Decider.emit(state, {:persist, %{cluster: state.cluster, formed_with: state.formed_with}})
  end

  defp persist(state), do: state

  # The incarnations of members this process knows, when it decides, as
  # let in fresh (by itself or by a peer).
  defp formed_with(state),
    do: for({node, {inc, :fresh}} <- state.known, into: %{}, do: {node, inc})
end
