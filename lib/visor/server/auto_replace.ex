defmodule Visor.Server.AutoReplace do
  @moduledoc false
  # Automatic replacement of a lost member (`replace_after: ms`; a pure
  # decider, `Visor.Server` carries out its effects). docs/operations.md,
  # "Automatic replacement", and docs/design/membership.md 2.13.
  #
  # Only the node whose replica is the primary (in a normal view) decides.
  # Each probe interval (`probe_ms/1`: a quarter of `replace_after`,
  # within 100..1000 ms) it asks every other member's router whether its
  # replica runs, and every other connected node's server whether it
  # stands by as a spare of the group. A member is *unheard* while no
  # probe sent to it since its last answer has been answered: from the
  # first probe that went unanswered. Once a member has been unheard for
  # `replace_after` ms, no change is under way through this node, a spare
  # answered lately, and the members heard (this node included) make a
  # quorum of the new list, this node asks for `{:replace, lost, spare}`,
  # the same change as `Visor.reconfigure/3` makes (`Visor.Server.Changes`):
  # the group never shrinks (a member is only ever replaced), and the
  # core admits one change at a time (its `Busy`) and only with a live,
  # caught-up quorum of the new list, whatever this module thought.
  #
  # Why probes, not the engine's view: the engine does not say whom it
  # heard from, and VR backups answer only prepares, so an idle primary
  # hears nothing from healthy backups. Why the router: it never runs the
  # application's code, so a member busy in a slow `handle_commit` still
  # answers (its server would not). A router of an older release answers
  # the probe `{:error, :unknown_call}`: its node runs the group, and it
  # counts as heard.
  #
  # The clock starts when this node starts watching (it became the
  # primary): a new primary never replaces at once a member the previous
  # one had not heard from, it waits `replace_after` itself. A node that
  # stops being the primary forgets what it heard. The spare is the
  # lowest-named one that answered in the last three probe intervals,
  # one that failed a replacement lately going last; a failed replacement
  # is tried again after `replace_after`.
  #
  # Effects, in order:
  #
  #   * `{:probe_members, nodes}`: ask these members' routers;
  #   * `{:probe_spares, nodes}`: ask these nodes' servers whether they
  #     stand by as spares;
  #   * `{:auto_replace, lost, spare}`: ask for `{:replace, lost, spare}`
  #     (its answer comes back through `settled/3`);
  #   * `{:log, level, message}`.

  # The probe interval's bounds.
  @probe_min_ms 100
  @probe_max_ms 1_000
  # A spare stands by if it answered within this many probe intervals.
  @spare_fresh_probes 3

  @enforce_keys [:after_ms, :probe_ms]
  defstruct [
    :after_ms,
    :probe_ms,
    # Whether this node is watching (it is the primary).
    watching: false,
    # Member => since when it has been unheard (the first probe sent to
    # it since its last answer), or nil (answered its last probe).
    unheard: %{},
    # Spare => when it last said it stands by.
    spares: %{},
    # The replacement asked for: %{lost:, spare:, unheard_ms:}, or nil.
    pending: nil,
    # Spare => when a replacement with it failed.
    failed: %{},
    # No replacement is asked for before this time (after a failure).
    retry_at: nil,
    # What was last logged as the reason it cannot replace ({lost, why}),
    # so that the warning is logged once, not on every probe.
    blocked: nil
  ]

  @type t :: %__MODULE__{}

  @typedoc """
  Where the server stands: the group, whether this node's replica is the
  primary in a normal view, the members (in order), this node, the nodes
  connected to it, and whether a change asked through this node is under
  way.
  """
  @type view :: %{
          group: term(),
          primary: boolean(),
          members: [node()],
          node: node(),
          connected: [node()],
          changing: boolean()
        }

  @doc "The decider for `replace_after` ms, or nil when it is off."
  @spec new(pos_integer() | nil) :: t() | nil
  def new(nil), do: nil

  def new(after_ms) when is_integer(after_ms) and after_ms > 0,
    do: %__MODULE__{after_ms: after_ms, probe_ms: probe_ms(after_ms)}

  @doc "How often the server ticks (and probes) for `replace_after` ms."
  @spec probe_ms(pos_integer()) :: pos_integer()
  def probe_ms(after_ms), do: after_ms |> div(4) |> max(@probe_min_ms) |> min(@probe_max_ms)

  @doc """
  The server's tick, every `probe_ms`: decide on what was heard since,
  then probe again.
  """
  @spec tick(t(), view(), integer()) :: {t(), [tuple()]}
  def tick(%__MODULE__{} = auto, %{primary: false}, _now),
    do: {%{auto | watching: false, unheard: %{}, spares: %{}, blocked: nil}, []}

  def tick(%__MODULE__{} = auto, view, now) do
    others = view.members -- [view.node]

    {auto, started} =
      if auto.watching do
        {auto, []}
      else
        {%{auto | watching: true, unheard: %{}, spares: %{}, blocked: nil},
         [
           {:log, :info,
            "#{inspect(view.group)}: this node is the primary: it replaces a member not heard " <>
              "from for #{auto.after_ms} ms by a spare (replace_after)"}
         ]}
      end

    # Members that joined are watched from now; members that left, no more.
    auto = %{auto | unheard: Map.new(others, &{&1, Map.get(auto.unheard, &1)})}
    {auto, decided} = decide(auto, view, now)

    # Each member not waiting for an answer already is unheard from now
    # until it answers this probe.
    unheard = Map.new(auto.unheard, fn {node, since} -> {node, since || now} end)
    candidates = view.connected -- view.members

    {%{auto | unheard: unheard},
     started ++ decided ++ [{:probe_members, others}, {:probe_spares, candidates}]}
  end

  @doc "A member's router answered a probe: its replica runs."
  @spec heard(t(), node()) :: t()
  def heard(%__MODULE__{watching: true} = auto, node) do
    if Map.has_key?(auto.unheard, node),
      do: %{auto | unheard: Map.put(auto.unheard, node, nil)},
      else: auto
  end

  def heard(%__MODULE__{} = auto, _node), do: auto

  @doc "A node's server said it stands by as a spare of the group."
  @spec standing_by(t(), node(), integer()) :: t()
  def standing_by(%__MODULE__{watching: true} = auto, node, now),
    do: %{auto | spares: Map.put(auto.spares, node, now)}

  def standing_by(%__MODULE__{} = auto, _node, _now), do: auto

  @doc """
  The answer to the replacement asked for (`Visor.Server.Changes`'s reply).
  """
  @spec settled(t(), term(), integer(), term()) :: {t(), [tuple()]}
  def settled(%__MODULE__{pending: nil} = auto, _reply, _now, _group), do: {auto, []}

  def settled(%__MODULE__{pending: pending} = auto, reply, now, group) do
    %{lost: lost, spare: spare} = pending
    auto = %{auto | pending: nil, blocked: nil}

    case reply do
      {:ok, %{epoch: epoch, members: members}} ->
        {%{auto | failed: Map.delete(auto.failed, spare)},
         [
           {:log, :warning,
            "#{inspect(group)}: replaced #{lost} by the spare #{spare}: epoch #{epoch}, " <>
              "members #{Enum.join(members, ", ")}"}
         ]}

      {:error, reason} ->
        retry = now + auto.after_ms

        maybe =
          if reason == :timeout,
            do: " (it may still happen: the next attempt asks again)",
            else: ""

        {%{auto | failed: Map.put(auto.failed, spare, now), retry_at: retry},
         [
           {:log, :warning,
            "#{inspect(group)}: could not replace #{lost} by the spare #{spare}: " <>
              "#{inspect(reason)}#{maybe}; trying again in #{auto.after_ms} ms, with " <>
              "another spare first if one stands by"}
         ]}
    end
  end

  @doc """
  What `status/0` shows: the setting, whether this node watches (it is
  the primary), the members unheard past a probe interval and for how
  long (ms), and the replacement under way (`{lost, spare}`).
  """
  @spec status(t() | nil, integer()) :: map() | nil
  def status(nil, _now), do: nil

  def status(%__MODULE__{} = auto, now) do
    %{
      replace_after: auto.after_ms,
      watching: auto.watching,
      # Past one probe interval: a member answers each probe within it.
      unheard:
        for(
          {node, since} <- auto.unheard,
          since != nil and now - since > auto.probe_ms,
          into: %{},
          do: {node, now - since}
        ),
      replacing: auto.pending && {auto.pending.lost, auto.pending.spare}
    }
  end

  defp decide(auto, view, now) do
    suspects =
      for {node, since} <- auto.unheard, since != nil, now - since >= auto.after_ms do
        {since, node}
      end
      |> Enum.sort()

    cond do
      suspects == [] ->
        {%{auto | blocked: nil}, []}

      auto.pending != nil ->
        {auto, []}

      auto.retry_at != nil and now < auto.retry_at ->
        {auto, []}

      true ->
        [{since, lost} | _] = suspects
        unheard_ms = now - since
        # The new list has as many members as this one; those heard (this
        # node among them) must make its quorum: the spare, a learner,
        # does not count.
        live = length(view.members) - length(suspects)
        quorum = div(length(view.members), 2) + 1

        cond do
          view.changing ->
            blocked(auto, lost, :change_in_progress, view.group, unheard_ms)

          live < quorum ->
            blocked(auto, lost, {:no_quorum, live, quorum}, view.group, unheard_ms)

          true ->
            case ready_spares(auto, view, now) do
              [] ->
                blocked(auto, lost, :no_spare, view.group, unheard_ms)

              [spare | _] ->
                pending = %{lost: lost, spare: spare, unheard_ms: unheard_ms}

                {%{auto | pending: pending, retry_at: nil, blocked: nil},
                 [
                   {:log, :warning,
                    "#{inspect(view.group)}: #{lost} not heard from for #{unheard_ms} ms " <>
                      "(replace_after: #{auto.after_ms}): replacing it by the spare #{spare}"},
                   {:auto_replace, lost, spare}
                 ]}
            end
        end
    end
  end

  # The spares that answered lately, outside the list: by name, those
  # that failed a replacement last (the oldest failure first).
  defp ready_spares(auto, view, now) do
    fresh = @spare_fresh_probes * auto.probe_ms

    for {node, at} <- auto.spares, node not in view.members, now - at <= fresh do
      case Map.fetch(auto.failed, node) do
        {:ok, failed_at} -> {1, failed_at, node}
        :error -> {0, 0, node}
      end
    end
    |> Enum.sort()
    |> Enum.map(&elem(&1, 2))
  end

  defp blocked(%{blocked: {lost, why}} = auto, lost, why, _group, _ms), do: {auto, []}

  defp blocked(auto, lost, why, group, unheard_ms) do
    reason =
      case why do
        :change_in_progress ->
          "another change asked through this node is under way"

        {:no_quorum, live, quorum} ->
          "the members heard (#{live}) would not make a quorum (#{quorum}) of the new list"

        :no_spare ->
          "no spare running the group stands by"
      end

    {%{auto | blocked: {lost, why}},
     [
       {:log, :warning,
        "#{inspect(group)}: #{lost} not heard from for #{unheard_ms} ms " <>
          "(replace_after: #{auto.after_ms}), but it cannot be replaced: #{reason}"}
     ]}
  end
end
