defmodule Visor.Server.Upgrade do
  @moduledoc false
  # When the cluster switches to a new state machine version (a pure
  # decider; `Visor.Server` carries out its effects). The primary's server
  # proposes it, once every member's code supports it (docs/operations.md,
  # "Deploying new code"):
  #
  #   * every tick (`tick/2`, each second, and once at the start of a view
  #     this replica leads: `view_started/3`), while this replica is the
  #     primary of a normal view and this node's code supports a version
  #     above the one the cluster runs, it asks every other member's server
  #     which version its code supports, in a new round;
  #   * once every member has answered that round (`report/5`), it proposes
  #     the lowest version they all support, if that is above the
  #     cluster's: `Visor.Server` commits the switch entry like a command,
  #     and every replica switches when it executes it;
  #   * until that proposal is answered (`proposed/2`), it proposes nothing
  #     else.
  #
  # A member that does not answer (down, cut off, not running the group)
  # holds the switch back; a repeated switch, from a new primary that had
  # not executed the last one yet, changes nothing (`Visor.Server.Machine`).
  #
  # A new cluster runs version 0 until its primary switches it, so that the
  # first commands of a cluster whose members all run newer code would run
  # under version 0. Hence a first round at once (not at the next tick)
  # when this replica becomes the primary of a view (`view_started/3`;
  # once it has executed the log it holds: `caught_up/3`), and a hold (`holding/3`) on this node's callers' commands, while the
  # version this node's code supports is above the cluster's: from the
  # engine's start (`engine_started/3`), and from the start of a view this
  # replica leads, until the cluster runs that version, the primary's
  # first round ended without a switch, or 500 ms passed, whichever
  # comes first. The switch itself is not held: `Visor.Server.Callers`
  # puts it ahead of the commands waiting in line.
  #
  # Effects, in order:
  #
  #   * `{:ask, round, nodes}`: send each node's server
  #     `{:visor_version_query, server_pid, round}`; each answers
  #     `{:visor_version, round, its_node, version}`;
  #   * `{:propose, version}`: commit the switch to `version`;
  #   * `{:log, level, message}`.

  # The longest this node's callers' commands wait for a first round.
  @hold_ms 500

  @enforce_keys [:module]
  defstruct [
    :module,
    round: 0,
    # The members that have not answered this round yet.
    waiting: [],
    # The lowest version supported among those that have answered.
    lowest: nil,
    # The version proposed and not answered yet.
    proposing: nil,
    # %{until: monotonic ms, primary: boolean}: this node's callers'
    # commands wait for the first round (see above), or nil.
    hold: nil,
    # This replica became the primary of a view before it had executed
    # every op known committed: the view's first round waits for that
    # (`caught_up/3`).
    view_pending: false
  ]

  @type t :: %__MODULE__{}

  @typedoc """
  What a tick depends on: whether this replica is the primary of a normal
  view, the version the cluster runs (as far as this replica knows:
  `Visor.Server.Machine.cluster_version/1`, so a primary blocked on a
  version its code does not support proposes nothing), the one this node's code supports (`Visor.Executor.version/1`), and
  the other members' nodes; and whether this replica has executed every
  op known committed (`view_started/3` only).
  """
  @type view :: %{
          primary: boolean(),
          running: non_neg_integer(),
          supported: non_neg_integer() | :invalid,
          others: [node()],
          caught_up: boolean()
        }

  @type effect ::
          {:ask, pos_integer(), [node()]}
          | {:propose, non_neg_integer()}
          | {:log, :warning, String.t()}
          | {:after, pos_integer(), :visor_hold_end}

  @doc "The upgrades of `module`'s group: no round asked, nothing proposed."
  @spec new(module()) :: t()
  def new(module), do: %__MODULE__{module: module}

  @doc """
  This replica's engine started, at monotonic ms `now`: its callers'
  commands are held while it may be about to switch (see above).
  """
  @spec engine_started(t(), view(), integer()) :: {t(), [effect()]}
  def engine_started(%__MODULE__{} = upgrade, view, now),
    do: start_hold(upgrade, view, now, false)

  @doc """
  This replica learned the primary of a new normal view, at monotonic ms
  `now`; `view.primary` says whether it is this replica: then it starts a
  round at once, and holds its callers' commands until the round ends.
  Only once it has executed every op known committed (`caught_up`): a
  primary restarted from its store, or one elected under load, may still
  be executing its log, its version older than the cluster's; the round
  and the hold then start when it has caught up (`caught_up/3`).
  """
  @spec view_started(t(), view(), integer()) :: {t(), [effect()]}
  def view_started(%__MODULE__{} = upgrade, %{primary: true, caught_up: true} = view, now) do
    {upgrade, hold_effects} = start_hold(%{upgrade | view_pending: false}, view, now, true)
    {upgrade, effects} = tick(upgrade, view)
    {upgrade, hold_effects ++ effects}
  end

  def view_started(%__MODULE__{} = upgrade, %{primary: true}, _now),
    do: {%{upgrade | view_pending: true}, []}

  def view_started(%__MODULE__{} = upgrade, _view, _now),
    do: {%{upgrade | view_pending: false}, []}

  @doc """
  Whether a view's first round waits for this replica to catch up with
  the log (the server then calls `caught_up/3` as it executes).
  """
  @spec awaiting_catch_up?(t()) :: boolean()
  def awaiting_catch_up?(%__MODULE__{view_pending: pending}), do: pending

  @doc """
  This replica executed ops while a view's first round waited for it
  (`awaiting_catch_up?/1`): once it has caught up, still the primary, the
  round and the hold start as `view_started/3` says; a replica that is no
  longer the primary forgets the round.
  """
  @spec caught_up(t(), view(), integer()) :: {t(), [effect()]}
  def caught_up(
        %__MODULE__{view_pending: true} = upgrade,
        %{primary: true, caught_up: false},
        _now
      ),
      do: {upgrade, []}

  def caught_up(%__MODULE__{view_pending: true} = upgrade, view, now),
    do: view_started(upgrade, view, now)

  def caught_up(%__MODULE__{} = upgrade, _view, _now), do: {upgrade, []}

  defp start_hold(upgrade, view, now, primary) do
    if is_integer(view.supported) and view.supported > view.running do
      {%{upgrade | hold: %{until: now + @hold_ms, primary: primary}},
       [{:after, @hold_ms, :visor_hold_end}]}
    else
      {upgrade, []}
    end
  end

  @doc """
  Whether this node's callers' commands are held now (monotonic ms
  `now`), and the new state (the hold forgotten once it is over).
  `versions` gives `{running, supported}` as in `t:view/0` (asked only
  while a hold may be on).
  """
  @spec holding(t(), (() -> {non_neg_integer(), non_neg_integer() | :invalid}), integer()) ::
          {boolean(), t()}
  def holding(%__MODULE__{hold: nil} = upgrade, _versions, _now), do: {false, upgrade}

  def holding(%__MODULE__{hold: hold} = upgrade, versions, now) do
    {running, supported} = versions.()

    round_over = hold.primary and upgrade.waiting == [] and upgrade.proposing == nil

    if now < hold.until and is_integer(supported) and supported > running and not round_over,
      do: {true, upgrade},
      else: {false, %{upgrade | hold: nil}}
  end

  @doc "A tick: starts a round when this primary's code supports a newer version."
  @spec tick(t(), view()) :: {t(), [effect()]}
  def tick(%__MODULE__{proposing: nil} = upgrade, %{primary: true} = view)
      when is_integer(view.supported) and view.supported > view.running do
    round = upgrade.round + 1
    upgrade = %{upgrade | round: round, waiting: view.others, lowest: view.supported}

    if view.others == [],
      do: propose(upgrade, view.running),
      else: {upgrade, [{:ask, round, view.others}]}
  end

  def tick(%__MODULE__{} = upgrade, _view), do: {%{upgrade | waiting: []}, []}

  @doc """
  `node`'s answer in `round`: its code supports `version` (any term from
  the network: only a non-negative integer counts as support). `running`
  is the version the cluster runs now.
  """
  @spec report(t(), term(), term(), term(), non_neg_integer()) :: {t(), [effect()]}
  def report(%__MODULE__{round: round} = upgrade, round, node, version, running) do
    cond do
      node not in upgrade.waiting ->
        {upgrade, []}

      # Code that supports no version: nothing is proposed this round.
      not (is_integer(version) and version >= 0) ->
        {%{upgrade | waiting: []}, []}

      true ->
        upgrade = %{
          upgrade
          | waiting: List.delete(upgrade.waiting, node),
            lowest: min(upgrade.lowest, version)
        }

        if upgrade.waiting == [], do: propose(upgrade, running), else: {upgrade, []}
    end
  end

  # An answer to an earlier round.
  def report(%__MODULE__{} = upgrade, _round, _node, _version, _running), do: {upgrade, []}

  defp propose(%{lowest: lowest} = upgrade, running) when lowest > running,
    do: {%{upgrade | proposing: lowest}, [{:propose, lowest}]}

  defp propose(upgrade, _running), do: {upgrade, []}

  @doc """
  The proposal's result, as a caller of `commit` would get it: `{:ok,
  version}` (the version the cluster runs once it executed the switch) or
  `{:error, reason}` (logged; the next tick may propose again).
  """
  @spec proposed(t(), term()) :: {t(), [effect()]}
  def proposed(%__MODULE__{proposing: version} = upgrade, result) do
    upgrade = %{upgrade | proposing: nil}

    case result do
      {:ok, _running} ->
        {upgrade, []}

      {:error, reason} ->
        {upgrade,
         [
           {:log, :warning,
            "#{inspect(upgrade.module)}: the switch to state machine version #{version} failed: #{inspect(reason)}; " <>
              "the primary proposes it again while every member supports it"}
         ]}
    end
  end
end
