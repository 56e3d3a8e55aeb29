defmodule Visor.Server.Lifecycle do
  @moduledoc false
  # The life of this node's engine (a pure decider; `Visor.Server` carries
  # out its effects): when `Visor.Formation`'s decision starts the replica,
  # with which options; what a store the engine cannot open means (retried
  # while this node's previous engine still holds it, else the server
  # stops); what the store's events mean (logged, and how it opened); and
  # which phase the server is in, which decides what callers get.
  #
  # Phases: `:forming`, `:running`, `:spare`, `:removed`, `{:failed,
  # reason}` or `{:refused, reason}`.
  #
  # It also keeps where this node stands in the group's membership
  # (docs/operations.md, "Membership changes"): the epoch, the members in
  # the order that decides the primaries (`current`, as `{slot, node}`)
  # and this node's role in it, from the engine's `{:epoch, ...}` and
  # `{:removed, _}` events (`epoch/4`, `removed/2`). A node left out of
  # an epoch (`:leaving`, then `:removed`) serves its callers as a spare
  # does: they go on to a member.
  #
  # Effects, in order:
  #
  #   * `{:start_engine, opts}`: start the engine (`Visor.Native.start/2`);
  #   * `:discard_engine`: the engine stopped before it ran: forget it, and
  #     what was handed to it waits in line again
  #     (`Visor.Server.Callers.requeue/1`);
  #   * `{:fail_callers, error}`: answer every waiting caller `{:error, error}`;
  #   * `{:after, ms, message}`: send this message to the server in `ms`;
  #   * `{:log, level, message}`;
  #   * `:stop_engine`: stop this node's engine (it was removed);
  #   * `{:stop, reason}`: the server stops;
  #   * `{:remember_membership, known}`: record the newest membership
  #     this node knows in `Visor.Lifetime` (memory mode);
  #   * `:ask_membership`: ask the servers of the connected nodes for the
  #     newest membership they know (a memory-mode spare, which may be a
  #     member of a later epoch that lost its memory with its node);
  #     each answer comes back through `membership_answer/2`.
  #
  # ## Memory mode: rejoining after a change
  #
  # A memory-mode replica that lost its memory (its server or its node
  # restarted) after a membership change must recover among the members
  # of the newest epoch, not among the list the group was formed with,
  # whose members may have left; and a node a change added must rejoin,
  # though formation, which knows only `nodes:`, makes it a spare. So the
  # lifecycle keeps `known`, the newest membership this node knows
  # (`t:Visor.Lifetime.membership/0`): from `Visor.Lifetime` when the
  # server starts (the node did not restart), from its own replica's
  # `{:epoch, ...}` events (recorded there in turn), and, on a spare,
  # from the other nodes' servers (`membership_answer/2`: the node
  # restarted). A node that is to start a replica (a member decision to
  # rejoin, or a spare) and is in `known`'s list starts it recovering in
  # that list, at its slot there (`start/2`'s `known:`); one left out of
  # it is removed. The list may be stale: the engine follows a newer
  # epoch's members into their list, or stops as removed.

  alias Visor.{Contract, Formation, MemberId, Native, Options}

  # A store still locked by this node's previous engine (see
  # engine_down/3) is tried again for up to 5 s.
  @store_start_attempts 50
  @store_retry_ms 100

  # A rejoining replica still recovering after this long logs why it may
  # never finish (a majority that lost its memory).
  @recovering_warn_ms 10_000

  @enforce_keys [:config, :node, :tag]
  defstruct [
    :config,
    :node,
    # Formation's messages to this server carry it.
    :tag,
    # The member decision, kept to start again (formation/2) while the
    # store is still locked.
    :decision,
    # Set once a member: a tuple of the members' nodes, this node's index,
    # the cluster id.
    :members,
    :index,
    :cluster,
    # How the store opened (:created, :restarted, :recovering or
    # :repairing; nil until then, and in memory mode).
    :opened,
    # The membership, once a member: its epoch, its members as
    # [{slot, node}] in the order that decides the primaries, and this
    # node's role (:learner, :member, :leaving or :removed).
    :current,
    # The newest membership this node knows (memory mode; see the top
    # of this module), or nil.
    :known,
    epoch: 0,
    role: :member,
    phase: :forming
  ]

  @type phase ::
          :forming | :running | :spare | :removed | {:failed, term()} | {:refused, term()}
  @type t :: %__MODULE__{}
  @type effect ::
          {:start_engine, map()}
          | :discard_engine
          | {:fail_callers, term()}
          | {:after, non_neg_integer(), term()}
          | {:log, :info | :warning | :error, String.t()}
          | :stop_engine
          | {:stop, term()}
          | {:remember_membership, Visor.Lifetime.membership()}
          | :ask_membership

  # A memory-mode spare asks the connected nodes again this often for
  # the newest membership (its peers may have been starting too).
  @ask_membership_ms 2_000

  @doc """
  A server on `node` waiting for formation's decision, tagged `tag`;
  `known` is the newest membership this node's earlier servers knew
  (`Visor.Lifetime.membership/2`, memory mode), or `nil`.
  """
  @spec new(Options.t(), node(), reference(), Visor.Lifetime.membership() | nil) :: t()
  def new(%Options{} = config, node, tag, known \\ nil),
    do: %__MODULE__{config: config, node: node, tag: tag, known: known}

  @doc "The newest membership this node knows, for a peer that asks (or `nil`)."
  @spec known(t()) :: Visor.Lifetime.membership() | nil
  def known(%__MODULE__{known: known}), do: known

  @doc """
  What stops callers now: `nil` (they are served, or wait for formation
  until their deadline), or the error they get.
  """
  @spec refusal(t()) :: term() | nil
  def refusal(%__MODULE__{phase: phase, role: role}) do
    case phase do
      :running when role != :member -> :spare
      :running -> nil
      :forming -> nil
      :spare -> :spare
      :removed -> :spare
      {:failed, reason} -> {:engine_down, reason}
      {:refused, reason} -> reason
    end
  end

  @doc "The node of the member at `index` (a running replica's peer)."
  @spec member(t(), non_neg_integer()) :: node()
  def member(%__MODULE__{members: members}, index), do: elem(members, index)

  @doc """
  The members of the current membership, in the order that decides the
  primaries (`[]` while forming, or on a spare).
  """
  @spec current_nodes(t()) :: [node()]
  def current_nodes(%__MODULE__{current: nil}), do: []
  def current_nodes(%__MODULE__{current: current}), do: Enum.map(current, &elem(&1, 1))

  @doc """
  The member id the engine knows `node` by (`Visor.MemberId`): its index
  in the list the group was formed with, or, for a node outside it, the
  md5 of its name with the top bit set; `nil` before this node knows
  that list.
  """
  @spec member_id(t(), node()) :: <<_::128>> | nil
  def member_id(%__MODULE__{members: members}, node) when is_tuple(members),
    do: MemberId.of(members, node)

  def member_id(%__MODULE__{}, _node), do: nil

  @doc """
  The replica entered `epoch` (or booted from a store of it): its members
  `[{slot, member_id, joined}]`, this node's `role` and the exact list's
  bytes, `membership` (the engine's `{:epoch, epoch, members, role,
  membership}`). A node left out (`:leaving`) fails the callers waiting
  on it with `:timeout` (their commands may still commit in the new
  epoch, from the old primary's queue) and serves new ones as a spare.
  """
  @spec epoch(t(), non_neg_integer(), list(), atom(), binary()) :: {t(), [effect()]}
  def epoch(%__MODULE__{epoch: known} = lifecycle, epoch, _members, _role, _membership)
      when epoch < known,
      do: {lifecycle, []}

  def epoch(%__MODULE__{} = lifecycle, epoch, members, role, membership) do
    current = for {slot, id, _joined} <- members, do: {slot, node_of(lifecycle, id)}
    before = lifecycle.role
    lifecycle = %{lifecycle | epoch: epoch, current: current, role: role}
    name = inspect(lifecycle.config.group)
    nodes = inspect(current_nodes(lifecycle))
    {lifecycle, remember} = remember(lifecycle, epoch, members, membership)

    case role do
      :member ->
        {lifecycle,
         [{:log, :info, "#{name}: in epoch #{epoch} of its membership: #{nodes}"} | remember]}

      _left_out when before == :member ->
        {lifecycle,
         [
           {:log, :warning,
            "#{name}: this node is not a member of epoch #{epoch} (#{nodes}): its replica is " <>
              "leaving, serving the new members until a quorum of them has entered the " <>
              "epoch; its callers go on to a member"},
           {:fail_callers, :timeout}
           | remember
         ]}

      _left_out ->
        {lifecycle, remember}
    end
  end

  # Memory mode: the membership the replica entered is the newest this
  # node knows, for a later server of its to rejoin in (Visor.Lifetime).
  defp remember(
         %__MODULE__{config: %Options{storage: :memory}} = lifecycle,
         epoch,
         members,
         membership
       )
       when epoch > 0 and is_binary(lifecycle.cluster) and is_tuple(lifecycle.members) and
              is_binary(membership) do
    known = %{
      cluster: lifecycle.cluster,
      genesis: Tuple.to_list(lifecycle.members),
      epoch: epoch,
      members: members,
      membership: membership,
      nodes: Enum.filter(current_nodes(lifecycle), &is_atom/1)
    }

    if newer?(known, lifecycle.known),
      do: {%{lifecycle | known: known}, [{:remember_membership, known}]},
      else: {lifecycle, []}
  end

  defp remember(lifecycle, _epoch, _members, _membership), do: {lifecycle, []}

  defp newer?(%{epoch: epoch, cluster: cluster}, %{epoch: known, cluster: cluster}),
    do: epoch > known

  defp newer?(_known, _other), do: true

  @doc """
  A peer's server answered `:ask_membership` with the newest membership
  it knows (untrusted: checked here). A newer one than this node knows
  is kept (and recorded); if this node is a spare and the membership
  lists it, it was a member that lost its memory with its node: its
  replica starts recovering in that list.
  """
  @spec membership_answer(t(), term()) :: {t(), [effect()]}
  def membership_answer(%__MODULE__{config: %Options{storage: :memory}} = lifecycle, answer) do
    cond do
      not valid_known?(answer) or not fits?(lifecycle, answer) ->
        {lifecycle, []}

      not newer?(answer, lifecycle.known) ->
        {lifecycle, []}

      lifecycle.phase == :spare and listed(answer, lifecycle.node) != nil ->
        {lifecycle, effects} = rejoin_in(%{lifecycle | known: answer}, answer, nil)
        {lifecycle, [{:remember_membership, answer} | effects]}

      true ->
        {%{lifecycle | known: answer}, [{:remember_membership, answer}]}
    end
  end

  def membership_answer(%__MODULE__{} = lifecycle, _answer), do: {lifecycle, []}

  @doc """
  Time to ask the connected nodes again (a memory-mode spare; see
  `formation/2`), or a node came up: asked only while a spare.
  """
  @spec ask_membership(t()) :: [effect()]
  def ask_membership(%__MODULE__{} = lifecycle) do
    if asks_membership?(lifecycle),
      do: [:ask_membership, {:after, @ask_membership_ms, {:visor_ask_membership, lifecycle.tag}}],
      else: []
  end

  @doc "Whether this node asks peers for the newest membership (a memory-mode spare)."
  @spec asks_membership?(t()) :: boolean()
  def asks_membership?(%__MODULE__{phase: phase, config: %Options{storage: storage}}),
    do: phase == :spare and storage == :memory

  # The shape the engine's {:epoch, ...} event and Visor.Lifetime give a
  # membership, its `members` and `epoch` those of its exact bytes,
  # `membership` (the engine decodes them, and checks the rest when the
  # replica starts in them).
  defp valid_known?(
         %{
           cluster: <<_::128>>,
           genesis: [_ | _] = genesis,
           epoch: epoch,
           members: [_ | _] = members,
           membership: membership,
           nodes: nodes
         } = known
       )
       when is_integer(epoch) and epoch > 0 and is_list(nodes) and is_binary(membership) and
              map_size(known) == 6 do
    proper_list?(genesis, 6) and proper_list?(nodes, 6) and
      Enum.all?(genesis ++ nodes, &is_atom/1) and
      byte_size(membership) <= Contract.limit(:membership_bytes_max) and
      Native.decode_membership(membership) == {:ok, {epoch, members}}
  end

  defp valid_known?(_answer), do: false

  defp proper_list?([], _left), do: true
  defp proper_list?([_ | rest], left) when left > 0, do: proper_list?(rest, left - 1)
  defp proper_list?(_other, _left), do: false

  # A membership of this node's cluster: in `nodes:` mode the cluster id
  # its configuration names (Visor.Formation), else one its formation
  # joined; or any, until it knows one (the server asks only nodes
  # running the group with this node's configuration).
  defp fits?(%__MODULE__{cluster: cluster}, %{cluster: other}) when is_binary(cluster),
    do: cluster == other

  defp fits?(%__MODULE__{config: %Options{membership: {:nodes, nodes}} = config}, known) do
    known.genesis == nodes and
      known.cluster == Options.cluster_id(config.group, nodes, config.settings, config.instance)
  end

  defp fits?(%__MODULE__{config: %Options{membership: {:cluster_size, size}}}, known),
    do: length(known.genesis) == size

  # This node's entry in `known`'s list, or nil.
  defp listed(known, node) do
    id = MemberId.of(known.genesis, node)
    Enum.find(known.members, &(elem(&1, 1) == id))
  end

  @doc """
  The replica was left out of `epoch` and a quorum of its members entered
  it (or its store says so): it handles nothing more. The engine is
  stopped, and the node serves as a spare (its store, in disk mode, is
  kept with role `removed` until an operator deletes it).
  """
  @spec removed(t(), non_neg_integer()) :: {t(), [effect()]}
  def removed(%__MODULE__{phase: :running} = lifecycle, epoch) do
    name = inspect(lifecycle.config.group)

    kept =
      case lifecycle.config.storage do
        {:disk, dir} -> "; its store in #{dir} is kept, marked removed, until deleted"
        :memory -> ""
      end

    {%{lifecycle | phase: :removed, role: :removed, epoch: max(epoch, lifecycle.epoch)},
     [
       {:log, :warning,
        "#{name}: this node was removed from the group in epoch #{epoch} " <>
          "(members: #{inspect(current_nodes(lifecycle))}): its replica stopped, and it " <>
          "serves as a spare#{kept}"},
       :stop_engine,
       {:fail_callers, :spare}
     ]}
  end

  def removed(%__MODULE__{} = lifecycle, _epoch), do: {lifecycle, []}

  # A member id's node: the genesis index's, or the node (this one, a
  # connected one, or one a change here named) whose name hashes to it.
  # (`known`: the nodes a membership this node knew named.)
  defp node_of(%__MODULE__{members: members} = lifecycle, id, known \\ []) do
    candidates =
      [lifecycle.node | Node.list()] ++
        Enum.filter(current_nodes(lifecycle), &is_atom/1) ++
        known

    case MemberId.node_of(members, id, candidates) do
      nil -> {:unknown_member, Base.encode16(id, case: :lower)}
      node -> node
    end
  end

  @doc """
  A member asks this node, a spare, to run a learner for the change it
  submits (docs/design/membership.md, 2.5 and 2.13): `spec` names the
  cluster, the list the group was formed with (`genesis`), the current
  membership (`current`, as `[{slot, node}]`, and `epoch`) and the slot,
  member id and epoch (`joined`) the change gives this node. A node that
  runs a replica of the group, or whose store still holds a membership
  (disk mode: the server checks and clears it first), is refused.
  """
  @spec learner(t(), map()) :: {:ok, t(), [effect()]} | {:error, term()}
  def learner(%__MODULE__{phase: phase, role: role} = lifecycle, spec)
      when phase in [:spare, :removed] or (phase == :running and role == :learner) do
    config = lifecycle.config
    genesis = spec.genesis

    opts =
      config.engine
      |> Map.merge(%{
        cluster: spec.cluster,
        replica_count: length(genesis),
        replica_index: spec.slot,
        member: spec.member,
        joined: spec.joined,
        learner: true
      })
      |> Map.merge(storage_opts(config, genesis))

    stop = if phase == :running, do: [:stop_engine], else: []

    lifecycle = %{
      lifecycle
      | phase: :running,
        role: :learner,
        members: List.to_tuple(genesis),
        current: spec.current,
        epoch: spec.epoch,
        index: spec.slot,
        cluster: spec.cluster,
        opened: nil
    }

    {:ok, lifecycle, stop ++ [{:start_engine, opts}]}
  end

  def learner(%__MODULE__{}, _spec), do: {:error, :not_a_spare}

  @doc """
  The change this node's learner was started for will not happen: the
  learner stops, and the node serves as a spare again. A learner that has
  entered its epoch since is a member, and stays.
  """
  @spec stop_learner(t()) :: {t(), [effect()]}
  def stop_learner(%__MODULE__{phase: :running, role: :learner} = lifecycle) do
    {%{lifecycle | phase: :spare, role: :member, current: nil, members: nil},
     [
       {:log, :info,
        "#{inspect(lifecycle.config.group)}: the change this node's learner was started " <>
          "for will not happen: the learner stops, and this node serves as a spare"},
       :stop_engine
     ]}
  end

  def stop_learner(%__MODULE__{} = lifecycle), do: {lifecycle, []}

  @doc """
  Formation's decision (`Visor.Formation.subscribe/2`): `:pending`, a
  member (start the engine), `:spare` or `{:refused, reason}`. Only one
  that arrives while forming counts (the member decision is applied again
  to retry a store that was still locked).
  """
  @spec formation(t(), term()) :: {t(), [effect()]}
  def formation(lifecycle, decision)

  # A rejoining replica (`recover: true`) starts from `initial_state` like a
  # fresh one: once it has recovered, the engine executes the whole
  # committed log from op 1, which rebuilds the state. Callers wait in line
  # meanwhile (the engine holds their requests until it is normal).
  def formation(
        %__MODULE__{
          phase: :forming,
          known: %{cluster: cluster, genesis: members, membership: bytes} = known
        } = lifecycle,
        {:member, %{cluster: cluster, members: members, recover: true}} = decision
      )
      when lifecycle.config.storage == :memory and is_binary(bytes),
      do: rejoin_in(lifecycle, known, decision)

  def formation(
        %__MODULE__{phase: :forming} = lifecycle,
        {:member, %{cluster: cluster, members: members, recover: recover}} = decision
      ) do
    config = lifecycle.config

    # A node a change added restarts from its store at the slot, and as
    # the member, the store records (disk mode).
    {index, joining} =
      case decision do
        {:member, %{joining: %{slot: slot, member: member, joined: joined}}} ->
          {slot, %{member: member, joined: joined}}

        _genesis ->
          {Enum.find_index(members, &(&1 == lifecycle.node)), %{recover: recover}}
      end

    opts =
      config.engine
      |> Map.merge(%{cluster: cluster, replica_count: length(members), replica_index: index})
      |> Map.merge(joining)
      |> Map.merge(storage_opts(config, members))

    lifecycle = %{
      lifecycle
      | phase: :running,
        members: List.to_tuple(members),
        current: Enum.with_index(members, fn node, slot -> {slot, node} end),
        index: index,
        cluster: cluster,
        decision: decision
    }

    recovering =
      if recover,
        do: [{:after, @recovering_warn_ms, {:visor_still_recovering, lifecycle.tag}}],
        else: []

    {lifecycle, [{:start_engine, opts} | recovering]}
  end

  # Memory mode: a spare may be a member of a later epoch (a change added
  # it) that lost its memory. If the newest membership this node knows
  # lists it, it rejoins; else it asks the other nodes what they know.
  def formation(%__MODULE__{phase: :forming, config: %{storage: :memory}} = lifecycle, :spare) do
    known = lifecycle.known

    if valid_known?(known) and fits?(lifecycle, known) and listed(known, lifecycle.node) != nil do
      rejoin_in(lifecycle, known, nil)
    else
      lifecycle = %{lifecycle | phase: :spare}
      {lifecycle, [{:fail_callers, :spare} | ask_membership(lifecycle)]}
    end
  end

  def formation(%__MODULE__{phase: :forming} = lifecycle, :spare),
    do: {%{lifecycle | phase: :spare}, [{:fail_callers, :spare}]}

  # This node's settings differ from the cluster's (Visor.Formation).
  def formation(%__MODULE__{phase: :forming} = lifecycle, {:refused, reason}),
    do: {%{lifecycle | phase: {:refused, reason}}, [{:fail_callers, reason}]}

  def formation(%__MODULE__{} = lifecycle, _decision), do: {lifecycle, []}

  # Memory mode: this node's replica lost its memory after a change
  # (`known`, epoch > 0, is the newest membership it knows). In that list
  # it recovers there, at its slot, named as the member it is (a node a
  # change added by its member id and the epoch that admitted it);
  # left out of it, it was removed, and serves as a spare.
  defp rejoin_in(lifecycle, known, decision) do
    name = inspect(lifecycle.config.group)
    genesis = List.to_tuple(known.genesis)
    lifecycle = %{lifecycle | members: genesis, cluster: known.cluster, decision: decision}

    current =
      for {slot, id, _joined} <- known.members, do: {slot, node_of(lifecycle, id, known.nodes)}

    lifecycle = %{lifecycle | current: current, epoch: known.epoch}
    nodes = inspect(current_nodes(lifecycle))

    case listed(known, lifecycle.node) do
      {slot, id, joined} ->
        named = if joined > 0, do: %{member: id, joined: joined}, else: %{}

        opts =
          lifecycle.config.engine
          |> Map.merge(%{
            cluster: known.cluster,
            replica_count: tuple_size(genesis),
            replica_index: slot,
            recover: true,
            known: known.membership
          })
          |> Map.merge(named)

        lifecycle = %{lifecycle | phase: :running, role: :member, index: slot}

        {lifecycle,
         [
           {:log, :info,
            "#{name}: this node's replica lost its memory; it rejoins as a member of epoch " <>
              "#{known.epoch} of the group's membership (#{nodes}), recovering its state " <>
              "from the others"},
           {:start_engine, opts},
           {:after, @recovering_warn_ms, {:visor_still_recovering, lifecycle.tag}}
         ]}

      nil ->
        lifecycle = %{lifecycle | phase: :removed, role: :removed}

        {lifecycle,
         [
           {:log, :warning,
            "#{name}: this node is not a member of epoch #{known.epoch} of the group's " <>
              "membership (#{nodes}): it was removed, and serves as a spare"},
           {:fail_callers, :spare}
         ]}
    end
  end

  # Disk mode: the store is `data_dir/<group>`; a new one records the
  # members, for a restart to find them (Visor.Formation). An existing
  # store is the engine's to open (`recover` is then ignored).
  defp storage_opts(%Options{storage: :memory}, _members), do: %{}

  defp storage_opts(%Options{storage: {:disk, dir}} = config, members) do
    meta = Formation.store_meta(members, config.settings)
    %{data_dir: dir, group: Options.store_group(config), meta: meta}
  end

  @doc """
  This replica cannot go on (its state is unknown, see
  `Visor.Server.Machine`): every caller gets `{:engine_down, reason}` and
  the server stops with `reason`.
  """
  @spec fail(t(), term()) :: {t(), [effect()]}
  def fail(%__MODULE__{} = lifecycle, reason) do
    {%{lifecycle | phase: {:failed, reason}},
     [{:fail_callers, {:engine_down, reason}}, {:stop, reason}]}
  end

  @doc """
  The engine stopped (`{:visor_engine_down, engine, reason}`), after
  `starts` engines were started by this server.
  """
  @spec engine_down(t(), term(), pos_integer()) :: {t(), [effect()]}
  def engine_down(%__MODULE__{} = lifecycle, reason, starts) do
    name = inspect(lifecycle.config.group)

    case {lifecycle.config.storage, lifecycle.opened} do
      # The store could not be opened: the engine never built the replica.
      {{:disk, dir}, nil} ->
        if store_in_use?(reason) and starts < @store_start_attempts do
          # After a restart of this group (or its server), the previous
          # engine releases the store's lock a moment after its owner died.
          {%{lifecycle | phase: :forming},
           [:discard_engine, {:after, @store_retry_ms, :visor_retry_start}]}
        else
          message =
            "#{name}: cannot open the store in #{dir}: #{Native.format_error(reason)}; this node's server stops"

          {%{lifecycle | phase: {:failed, reason}},
           [
             {:log, :error, message},
             {:fail_callers, {:engine_down, reason}},
             {:stop, {:storage_refused, reason}}
           ]}
        end

      _ ->
        message =
          "#{name}: this node's replica failed: #{inspect(reason)}; " <>
            "it will not come back in this process's lifetime"

        {%{lifecycle | phase: {:failed, reason}},
         [{:log, :error, message}, {:fail_callers, {:engine_down, reason}}]}
    end
  end

  defp store_in_use?(reason), do: match?({:store_in_use, _}, reason)

  @doc """
  The running replica's `engine_status` (`Visor.Native.status/1`'s
  `status`) #{div(@recovering_warn_ms, 1000)} s after it started
  rejoining: if it is still recovering, an error says why it may never
  finish.
  """
  @spec still_recovering(t(), atom()) :: [effect()]
  def still_recovering(%__MODULE__{} = lifecycle, :recovering) do
    [
      {:log, :error,
       "#{inspect(lifecycle.config.group)}: replica #{lifecycle.index} is still recovering after " <>
         "#{div(@recovering_warn_ms, 1000)} s: it needs enough of the other members up and " <>
         "normal to meet every majority without it (all others of 2 or 3 members, 2 of the " <>
         "other 3 of 4, 3 of the other 4 of 5), and, with 2 members, the other one leading. " <>
         "If a majority lost " <>
         "their memory at once (nodes or servers restarted together), the state is lost and " <>
         "this does not end by itself: stop the group on every node, call Visor.forget/1 " <>
         "there (or restart the nodes), then start it again (a new, empty cluster)"}
    ]
  end

  def still_recovering(%__MODULE__{}, _engine_status), do: []

  @doc """
  A `{:storage, kind, detail}` event (disk mode): how the store opened, and
  write failures and their end; each is logged.
  """
  @spec storage(t(), atom(), term()) :: {t(), [effect()]}
  def storage(%__MODULE__{config: %{storage: {:disk, dir}}} = lifecycle, kind, detail) do
    name = inspect(lifecycle.config.group)

    log =
      case kind do
        :created ->
          [{:log, :info, "#{name}: created its store in #{dir}"}]

        :restarted ->
          torn =
            if detail, do: " (a torn write at its end, byte #{detail}, was cut off)", else: ""

          [{:log, :info, "#{name}: restarted its replica from its store in #{dir}#{torn}"}]

        :recovering ->
          [
            {:log, :warning,
             "#{name}: the store in #{dir} cannot be trusted (#{detail}); " <>
               "the replica recovers the log from the others"}
          ]

        :repairing ->
          [{:log, :warning, "#{name}: the store in #{dir} is damaged in one place: #{detail}"}]

        :error ->
          [
            {:log, :warning,
             "#{name}: writing to #{dir} fails (#{detail}); the replica is paused, " <>
               "acknowledging nothing, until writes succeed again"}
          ]

        :resumed ->
          [{:log, :warning, "#{name}: writing to #{dir} succeeds again; the replica resumes"}]

        _ ->
          []
      end

    if kind in [:created, :restarted, :recovering, :repairing],
      do: {%{lifecycle | opened: kind}, log},
      else: {lifecycle, log}
  end

  def storage(%__MODULE__{} = lifecycle, _kind, _detail), do: {lifecycle, []}
end
