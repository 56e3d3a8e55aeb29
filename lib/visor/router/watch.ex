defmodule Visor.Router.Watch do
  @moduledoc false
  # What changed in this replica between two looks at its engine's status
  # (a pure decider; `Visor.Router` reads the status, a copy the engine
  # publishes, when the engine says it changed (at most every 10 ms), and
  # carries out the effects): a view
  # change beginning and ending, a new primary, this node's role, a recovery
  # beginning and ending, a state sync beginning and ending, and the peers'
  # messages the engine dropped (its `dropped_*` counters).
  #
  # A view change that began and ended between two looks is reported at
  # once, its start and end together (`duration` 0). So is a state sync
  # whose checkpoint arrived whole between two looks: the engine's `sync`
  # never shows it, only its `checkpoints_installed` counter does.
  #
  # Effects, in order:
  #
  #   * `{:telemetry, event, measurements, metadata}` (docs/operations.md,
  #     "Telemetry");
  #   * `{:log, level, message}`;
  #   * `{:view, view}`: the replica is in a new view (for the logs' metadata);
  #   * `:has_state`: the replica holds the cluster's state, for formation
  #     (`Visor.Formation.replica_normal/1`); once, at the first look that
  #     finds it neither starting nor recovering (below);
  #   * `{:primary, view, ours}`: the replica learned the primary of a
  #     normal view (`ours`: it is this replica), for the server
  #     (`Visor.Server.Upgrade` starts a round at once on a new primary).

  @enforce_keys [:module, :members, :index, :since]
  defstruct [
    :module,
    # The members' nodes by replica index, and this replica's.
    :members,
    :index,
    # The node of `primary`, once known.
    :primary_node,
    # Monotonic time (native units) the current status began.
    :since,
    status: :starting,
    view: 0,
    # The view a view change started from.
    from_view: 0,
    # Whether `:has_state` was said.
    has_state: false,
    # The primary's index in the latest normal view, and whether it is us.
    primary: nil,
    # The latest normal view the server was told the primary of.
    told_view: nil,
    role: nil,
    # The engine's dropped_* counters at the last batch.
    dropped: %{},
    # The state sync under way (%{op, bytes, since}), and the engine's
    # checkpoints_installed counter at the last batch.
    sync: nil,
    installed: 0
  ]

  @type t :: %__MODULE__{}
  @type effect ::
          {:telemetry, [atom()], map(), map()}
          | {:log, :info | :warning, String.t()}
          | {:view, non_neg_integer()}
          | :has_state
          | {:primary, non_neg_integer(), boolean()}

  @doc """
  A replica of `module` (a group: a module, or a keyed group's `{module,
  key}`, named in the logs) at `index` of `members` (a tuple of nodes),
  started at `now`.
  """
  @spec new(module() | {module(), term()}, tuple(), non_neg_integer(), integer()) :: t()
  def new(module, members, index, now),
    do: %__MODULE__{module: module, members: members, index: index, since: now}

  @doc """
  The engine's status (`Visor.Native.status/1`) after a batch, at monotonic
  time `now`; `connected` is the nodes this node is connected to (read only
  when the primary changed: it says why).
  """
  @spec observe(t(), map(), integer(), (() -> [node()])) :: {t(), [effect()]}
  def observe(%__MODULE__{} = watch, engine, now, connected) do
    {watch, effects} =
      {watch, []}
      |> dropped(engine.stats)
      |> status(engine, now)
      |> has_state(engine)
      |> sync(engine, now)
      |> primary(engine, connected)

    {watch, Enum.reverse(effects)}
  end

  # Effects accumulate newest first.

  defp dropped({watch, effects}, stats) do
    counts =
      for {key, n} <- stats,
          String.starts_with?(Atom.to_string(key), "dropped_"),
          into: %{},
          do: {key, n}

    effects =
      Enum.reduce(counts, effects, fn {key, n}, effects ->
        case n - Map.get(watch.dropped, key, 0) do
          0 ->
            effects

          new ->
            [telemetry([:visor, :message, :dropped], %{count: new}, %{reason: key}) | effects]
        end
      end)

    {%{watch | dropped: counts}, effects}
  end

  # A view change that began and ended between two looks: its start and
  # its end, at once.
  defp status({%{status: :normal} = watch, effects}, %{status: :normal, view: view}, now)
       when view > watch.view do
    {watch, effects}
    |> step(:view_change, view, now)
    |> step(:normal, view, now)
  end

  defp status(acc, %{status: new, view: view}, now), do: step(acc, new, view, now)

  defp step({%{status: same, view: view} = watch, effects}, same, view, _now),
    do: {watch, effects}

  defp step({watch, effects}, new, view, now) do
    old = watch.status
    effects = if view != watch.view, do: [{:view, view} | effects], else: effects

    effects =
      effects
      |> ended(watch, old, new, view, now)
      |> began(watch, old, new, view, now)

    since = if old != new, do: now, else: watch.since

    from_view =
      if new == :view_change and old != :view_change, do: watch.view, else: watch.from_view

    {%{watch | status: new, view: view, since: since, from_view: from_view}, effects}
  end

  defp ended(effects, watch, :view_change, new, view, now) when new != :view_change do
    [
      telemetry(
        [:visor, :view_change, :stop],
        %{duration: now - watch.since, monotonic_time: now},
        %{
          from_view: watch.from_view,
          view: view
        }
      )
      | effects
    ]
  end

  # A replica that starts rejoining is :starting or :recovering first.
  defp ended(effects, watch, :recovering, new, view, now) when new != :recovering do
    duration = now - watch.since
    ms = System.convert_time_unit(duration, :native, :millisecond)

    [
      {:log, :info,
       "#{inspect(watch.module)}: replica #{watch.index} recovered in #{ms} ms (view #{view}); " <>
         "it executes the committed log from the others"},
      telemetry([:visor, :recovery, :stop], %{duration: duration, monotonic_time: now}, %{
        view: view
      })
      | effects
    ]
  end

  defp ended(effects, _watch, _old, _new, _view, _now), do: effects

  defp began(effects, watch, old, :view_change, view, now) when old != :view_change do
    [
      telemetry([:visor, :view_change, :start], %{monotonic_time: now}, %{
        from_view: watch.view,
        view: view
      })
      | effects
    ]
  end

  defp began(effects, _watch, old, :recovering, _view, now) when old != :recovering,
    do: [telemetry([:visor, :recovery, :start], %{monotonic_time: now}, %{}) | effects]

  defp began(effects, _watch, _old, _new, _view, _now), do: effects

  # The replica holds the cluster's state once it is neither starting
  # (its store not open yet) nor recovering: the core's Recovering and
  # Repairing both show as `:recovering` (docs/nif.md), and it leaves them
  # only by installing a view from a quorum, as a normal replica. From
  # there a view change, or a checkpoint found diverged, can come before
  # the next look: any of `:normal`, `:view_change` and `:diverged` says
  # the state is held, not only `:normal` (which a replica that went on
  # into a view change may never show to a look). `:stopped` and
  # `:failed` say nothing: the engine is gone.
  defp has_state({%{has_state: false} = watch, effects}, %{status: status})
       when status in [:normal, :view_change, :diverged],
       do: {%{watch | has_state: true}, [:has_state | effects]}

  defp has_state(acc, _engine), do: acc

  # A state sync ends when the engine installed a checkpoint since the
  # last look (the one it now holds), or gave it up (its `sync` is gone
  # with nothing installed: the sender went silent, or the replica no
  # longer needs it). One installed with no sync seen began and ended
  # between two looks. A sync under way that the engine switched to a
  # newer checkpoint is the same sync.
  defp sync({watch, effects}, engine, now) do
    installed? = engine.stats.checkpoints_installed > watch.installed
    ended? = watch.sync != nil and (installed? or engine.sync == nil)

    {watch, effects} =
      cond do
        ended? ->
          op = if installed?, do: engine.checkpoint, else: watch.sync.op
          sync_ended({watch, effects}, op, installed?, now)

        installed? ->
          {watch, effects}
          |> sync_began(%{op: engine.checkpoint, bytes: nil}, now)
          |> sync_ended(engine.checkpoint, true, now)

        true ->
          {watch, effects}
      end

    watch = %{watch | installed: engine.stats.checkpoints_installed}

    case {watch.sync, engine.sync} do
      {_, nil} -> {watch, effects}
      {nil, progress} -> sync_began({watch, effects}, progress, now)
      {under_way, progress} -> {%{watch | sync: Map.merge(under_way, sync_of(progress))}, effects}
    end
  end

  defp sync_of(%{op: op, bytes: bytes}), do: %{op: op, bytes: bytes}

  defp sync_began({watch, effects}, progress, now) do
    %{op: op, bytes: bytes} = sync_of(progress)
    size = if bytes, do: " (#{bytes} bytes)", else: ""

    effects = [
      {:log, :info,
       "#{inspect(watch.module)}: replica #{watch.index} began a state sync: it installs " <>
         "the others' checkpoint at op #{op}#{size} instead of executing the log up to it"},
      telemetry([:visor, :state_sync, :start], %{monotonic_time: now}, %{op: op, bytes: bytes})
      | effects
    ]

    {%{watch | sync: %{op: op, bytes: bytes, since: now}}, effects}
  end

  defp sync_ended({watch, effects}, op, installed?, now) do
    duration = now - watch.sync.since
    ms = System.convert_time_unit(duration, :native, :millisecond)

    log =
      if installed?,
        do:
          {:log, :info,
           "#{inspect(watch.module)}: replica #{watch.index} installed the checkpoint at " <>
             "op #{op} by state sync in #{ms} ms"},
        else:
          {:log, :warning,
           "#{inspect(watch.module)}: replica #{watch.index} gave up its state sync of the " <>
             "checkpoint at op #{op} after #{ms} ms (its sender went silent, or it no longer " <>
             "needs it); it syncs again if it still lags"}

    stop =
      telemetry([:visor, :state_sync, :stop], %{duration: duration, monotonic_time: now}, %{
        op: op,
        installed: installed?
      })

    {%{watch | sync: nil}, [log, stop | effects]}
  end

  # The primary, as a replica in a normal view knows it.
  defp primary(
         {watch, effects},
         %{status: :normal, primary: index, is_primary: ours} = engine,
         connected
       )
       when index != watch.primary do
    role = if ours, do: :primary, else: :backup
    node = node_at(watch, engine, index)

    log =
      {:log, :info,
       "#{inspect(watch.module)}: the primary is now #{node} (replica #{index}, view #{watch.view})" <>
         reason(watch, connected)}

    changed =
      telemetry([:visor, :role, :changed], %{}, %{role: role, view: watch.view, primary: node})

    effects = if role != watch.role, do: [changed, log | effects], else: [log | effects]

    {%{watch | primary: index, primary_node: node, role: role, told_view: watch.view},
     [{:primary, watch.view, ours} | effects]}
  end

  # The same primary in a later view (the views between never went
  # normal here): nothing to log, but the server learns of each view, as a
  # primary starts its version round at every view it leads.
  defp primary({watch, effects}, %{status: :normal, is_primary: ours}, _connected)
       when watch.view != watch.told_view do
    {%{watch | told_view: watch.view}, [{:primary, watch.view, ours} | effects]}
  end

  defp primary(acc, _engine, _connected), do: acc

  defp reason(%{primary: nil}, _connected), do: ""

  defp reason(watch, connected) do
    old = watch.primary_node

    cond do
      watch.primary == watch.index ->
        "; this node was the primary until the others moved to a new view"

      old in connected.() ->
        "; the previous primary, #{old}, is connected to this node (a quorum stopped " <>
          "hearing from it, or it restarted)"

      true ->
        "; the previous primary, #{old}, is disconnected from this node"
    end
  end

  # The node of the member in `slot` of the replica's membership (its
  # member id's: Visor.MemberId); a slot of the genesis list if the
  # status names no members.
  defp node_at(watch, engine, slot) do
    case Enum.find(Map.get(engine, :members, []), &(elem(&1, 0) == slot)) do
      {_slot, id, _joined} ->
        Visor.MemberId.node_of(watch.members, id, [node() | Node.list()]) || slot

      nil when slot < tuple_size(watch.members) ->
        elem(watch.members, slot)

      nil ->
        slot
    end
  end

  defp telemetry(event, measurements, metadata), do: {:telemetry, event, measurements, metadata}
end
