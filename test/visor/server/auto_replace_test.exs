defmodule Visor.Server.AutoReplaceTest do
  # Automatic replacement's decisions (Visor.Server.AutoReplace, a pure
  # decider): only the primary decides, from the time it started
  # watching; a member unheard for replace_after is replaced by the
  # lowest-named spare that stands by, never below a quorum, never while
  # a change is under way, one at a time; a failure is retried later,
  # another spare first.
  use ExUnit.Case, async: true

  alias Visor.Server.AutoReplace

  @replace_after 1_000
  @members [:a@h, :b@h, :c@h]

  defp view(overrides \\ %{}) do
    Map.merge(
      %{
        group: Cache,
        primary: true,
        members: @members,
        node: :a@h,
        connected: [:b@h, :c@h, :d@h, :e@h],
        changing: false
      },
      overrides
    )
  end

  defp new, do: AutoReplace.new(@replace_after)

  # Ticks every probe interval from `from` to `to` (inclusive), with the
  # answers `answer.(now)` gives before each tick: `{heard, spares}`.
  defp run(auto, from, to, answer, view \\ view()) do
    step = auto.probe_ms

    Enum.reduce(from..to//step, {auto, []}, fn now, {auto, effects} ->
      {heard, spares} = answer.(now)
      auto = Enum.reduce(heard, auto, &AutoReplace.heard(&2, &1))
      auto = Enum.reduce(spares, auto, &AutoReplace.standing_by(&2, &1, now))
      {auto, new} = AutoReplace.tick(auto, view, now)
      {auto, effects ++ Enum.map(new, &{now, &1})}
    end)
  end

  defp replaced(effects),
    do: for({now, {:auto_replace, lost, spare}} <- effects, do: {now, lost, spare})

  defp logs(effects), do: for({_now, {:log, level, line}} <- effects, do: {level, line})

  test "off: no decider at all; the probe interval is a quarter of replace_after, within 100..1000 ms" do
    assert AutoReplace.new(nil) == nil
    assert AutoReplace.status(nil, 0) == nil
    assert AutoReplace.probe_ms(1_000) == 250
    assert AutoReplace.probe_ms(200) == 100
    assert AutoReplace.probe_ms(60_000) == 1_000
  end

  test "a member unheard for replace_after is replaced by the lowest-named spare, once" do
    # b@h answers until 2000, then never again; the spares always.
    answer = fn now ->
      {if(now <= 2_000, do: [:b@h, :c@h], else: [:c@h]), [:e@h, :d@h]}
    end

    {auto, effects} = run(new(), 0, 5_000, answer)

    # The first probe b@h left unanswered went out at 2000 (its answer to
    # that one never came): replaced at the first tick 1000 ms later.
    assert [{3_000, :b@h, :d@h}] = replaced(effects)
    assert {:probe_members, [:b@h, :c@h]} in Enum.map(effects, &elem(&1, 1))
    assert {:probe_spares, [:d@h, :e@h]} in Enum.map(effects, &elem(&1, 1))

    assert [{:info, watching}, {:warning, replacing}] = logs(effects)
    assert watching =~ "this node is the primary"
    assert replacing =~ "b@h not heard from for 1000 ms"
    assert replacing =~ "replacing it by the spare d@h"

    assert %{replace_after: 1_000, watching: true, replacing: {:b@h, :d@h}, unheard: unheard} =
             AutoReplace.status(auto, 5_000)

    assert unheard == %{b@h: 3_000}

    # The answer: done, and the new list is watched; d@h from now on.
    reply = {:ok, %{epoch: 1, members: [:a@h, :c@h, :d@h]}}
    {auto, [{:log, :warning, line}]} = AutoReplace.settled(auto, reply, 5_100, Cache)
    assert line =~ "replaced b@h by the spare d@h: epoch 1, members a@h, c@h, d@h"

    view = view(%{members: [:a@h, :c@h, :d@h]})
    {auto, effects} = AutoReplace.tick(auto, view, 5_250)
    assert replaced(Enum.map(effects, &{5_250, &1})) == []
    assert %{unheard: unheard, replacing: nil} = AutoReplace.status(auto, 5_250)
    assert unheard == %{}
    assert {:probe_members, [:c@h, :d@h]} in effects
  end

  test "a new primary restarts the clock; a backup does nothing and forgets" do
    # b@h is dead from the start; this node becomes the primary at 10000.
    answer = fn _now -> {[:c@h], [:d@h]} end
    {auto, effects} = run(new(), 0, 9_750, answer, view(%{primary: false}))
    assert effects == []
    refute auto.watching

    {auto, effects} = run(auto, 10_000, 12_000, answer)
    assert [{11_000, :b@h, :d@h}] = replaced(effects)

    # Losing the primary role forgets what was heard (the pending change
    # is still answered).
    {auto, []} = AutoReplace.tick(auto, view(%{primary: false}), 12_250)

    assert %{watching: false, unheard: unheard, replacing: {:b@h, :d@h}} =
             AutoReplace.status(auto, 12_250)

    assert unheard == %{}
  end

  test "a member that answers again before replace_after is not replaced (flapping)" do
    # b@h misses every other 750 ms stretch.
    answer = fn now ->
      {if(rem(div(now, 750), 2) == 0, do: [:b@h, :c@h], else: [:c@h]), [:d@h]}
    end

    {_auto, effects} = run(new(), 0, 10_000, answer)
    assert replaced(effects) == []
  end

  test "never below a quorum of the new list: two of three unheard" do
    answer = fn _now -> {[], [:d@h, :e@h]} end
    {_auto, effects} = run(new(), 0, 3_000, answer)
    assert replaced(effects) == []
    # Said once, not on every probe.
    assert [{:info, _}, {:warning, line}] = logs(effects)
    assert line =~ "cannot be replaced: the members heard (1) would not make a quorum (2)"

    # Five members, two unheard: the three heard make a quorum of five.
    members = [:a@h, :b@h, :c@h, :x@h, :y@h]
    answer = fn _now -> {[:c@h, :x@h], [:d@h]} end
    view = view(%{members: members, connected: [:c@h, :x@h, :d@h]})
    {_auto, effects} = run(new(), 0, 1_500, answer, view)
    # The one unheard longest (by name among equals) goes first, alone.
    assert [{1_000, :b@h, :d@h}] = replaced(effects)
  end

  test "no spare standing by: said once, and replaced as soon as one answers" do
    answer = fn now -> {[:c@h], if(now >= 4_000, do: [:e@h], else: [])} end
    {_auto, effects} = run(new(), 0, 5_000, answer)
    assert [{4_000, :b@h, :e@h}] = replaced(effects)
    assert [{:info, _}, {:warning, none}, {:warning, replacing}] = logs(effects)
    assert none =~ "cannot be replaced: no spare running the group stands by"
    assert replacing =~ "by the spare e@h"
  end

  test "a spare that stopped answering is not chosen; nor a node of the list" do
    # d@h answered at 0 only; c@h (a member) says it stands by too.
    answer = fn now -> {[:c@h], if(now == 0, do: [:d@h, :c@h], else: [:e@h, :c@h])} end
    {_auto, effects} = run(new(), 0, 1_500, answer)
    assert [{1_000, :b@h, :e@h}] = replaced(effects)
  end

  test "nothing while a change asked through this node is under way" do
    answer = fn _now -> {[:c@h], [:d@h]} end
    {auto, effects} = run(new(), 0, 2_000, answer, view(%{changing: true}))
    assert replaced(effects) == []
    assert [{:info, _}, {:warning, line}] = logs(effects)
    assert line =~ "another change asked through this node is under way"

    {_auto, effects} = run(auto, 2_250, 2_500, answer)
    assert [{2_250, :b@h, :d@h}] = replaced(effects)
  end

  test "a failed replacement is tried again after replace_after, with another spare first" do
    answer = fn _now -> {[:c@h], [:d@h, :e@h]} end
    {auto, effects} = run(new(), 0, 1_000, answer)
    assert [{1_000, :b@h, :d@h}] = replaced(effects)

    # Nothing more while it is under way.
    {auto, effects} = run(auto, 1_250, 2_000, answer)
    assert replaced(effects) == []

    {auto, [{:log, :warning, line}]} =
      AutoReplace.settled(auto, {:error, {:unreachable, :d@h}}, 2_100, Cache)

    assert line =~ "could not replace b@h by the spare d@h: {:unreachable, :d@h}"
    assert line =~ "trying again in 1000 ms"

    {auto, effects} = run(auto, 2_250, 3_250, answer)
    assert [{3_250, :b@h, :e@h}] = replaced(effects)

    # e@h fails too: d@h (which failed first) goes before it now.
    {auto, _} = AutoReplace.settled(auto, {:error, :no_quorum}, 3_300, Cache)
    {auto, effects} = run(auto, 3_500, 4_500, answer)
    assert [{4_500, :b@h, :d@h}] = replaced(effects)

    # A maybe says so.
    {_auto, [{:log, :warning, line}]} =
      AutoReplace.settled(auto, {:error, :timeout}, 4_600, Cache)

    assert line =~ "it may still happen"
  end

  test "answers from nodes it does not watch, and a settle with nothing asked, change nothing" do
    auto = new()
    assert AutoReplace.heard(auto, :b@h) == auto
    assert AutoReplace.standing_by(auto, :d@h, 0) == auto
    assert AutoReplace.settled(auto, {:ok, %{epoch: 1, members: []}}, 0, Cache) == {auto, []}

    {auto, _} = AutoReplace.tick(auto, view(), 0)
    assert AutoReplace.heard(auto, :z@h) == auto
  end
end
