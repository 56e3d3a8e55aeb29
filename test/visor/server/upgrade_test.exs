defmodule Visor.Server.UpgradeTest do
  # When the cluster switches to a new state machine version: the primary's
  # decisions, fed ticks and members' answers by hand.
  use ExUnit.Case, async: true

  alias Visor.Server.Upgrade

  @others [:b@h, :c@h]
  @primary %{primary: true, running: 1, supported: 2, others: @others}

  defp upgrade, do: Upgrade.new(Cache)

  test "the primary asks every other member, and proposes once all support the new version" do
    {u, [{:ask, 1, @others}]} = Upgrade.tick(upgrade(), @primary)
    {u, []} = Upgrade.report(u, 1, :b@h, 2, 1)
    # The same member twice, or a node that is not a member, counts once.
    {u, []} = Upgrade.report(u, 1, :b@h, 2, 1)
    {u, []} = Upgrade.report(u, 1, :x@h, 2, 1)
    {u, [{:propose, 2}]} = Upgrade.report(u, 1, :c@h, 2, 1)

    # Nothing more until the proposal is answered.
    assert {^u, []} = Upgrade.tick(u, @primary)
    {u, []} = Upgrade.proposed(u, {:ok, 2})
    assert {_, []} = Upgrade.tick(u, %{@primary | running: 2})
  end

  test "the switch goes to the lowest version every member supports, never to one some member lacks" do
    {u, _} = Upgrade.tick(upgrade(), %{@primary | supported: 4})
    {u, []} = Upgrade.report(u, 1, :b@h, 3, 1)
    assert {_, [{:propose, 3}]} = Upgrade.report(u, 1, :c@h, 5, 1)

    # A member still on the cluster's version: nothing to propose.
    {u, _} = Upgrade.tick(upgrade(), @primary)
    {u, []} = Upgrade.report(u, 1, :b@h, 2, 1)
    assert {_, []} = Upgrade.report(u, 1, :c@h, 1, 1)

    # One whose code supports no version (or whose answer is junk): nor.
    {u, _} = Upgrade.tick(upgrade(), @primary)
    {u, []} = Upgrade.report(u, 1, :b@h, :invalid, 1)
    assert {_, []} = Upgrade.report(u, 1, :c@h, 2, 1)
  end

  test "a member that does not answer holds the switch back; answers of an earlier round do not count" do
    {u, [{:ask, 1, _}]} = Upgrade.tick(upgrade(), @primary)
    {u, []} = Upgrade.report(u, 1, :b@h, 2, 1)
    # c never answers round 1; round 2 starts over.
    {u, [{:ask, 2, @others}]} = Upgrade.tick(u, @primary)
    {u, []} = Upgrade.report(u, 1, :c@h, 2, 1)
    {u, []} = Upgrade.report(u, 2, :c@h, 2, 1)
    assert {_, [{:propose, 2}]} = Upgrade.report(u, 2, :b@h, 2, 1)
  end

  test "only the primary of a normal view, with code newer than the cluster's, asks" do
    for view <- [
          %{@primary | primary: false},
          %{@primary | supported: 1},
          %{@primary | supported: :invalid}
        ] do
      assert {_, []} = Upgrade.tick(upgrade(), view)
    end

    # A round in progress ends when this replica is no longer the primary.
    {u, _} = Upgrade.tick(upgrade(), @primary)
    {u, []} = Upgrade.tick(u, %{@primary | primary: false})
    {u, []} = Upgrade.report(u, 1, :b@h, 2, 1)
    assert {_, []} = Upgrade.report(u, 1, :c@h, 2, 1)
  end

  test "a one-member cluster switches at its first tick; a failed proposal is logged and made again" do
    alone = %{@primary | others: []}
    {u, [{:propose, 2}]} = Upgrade.tick(upgrade(), alone)
    {u, [{:log, :warning, message}]} = Upgrade.proposed(u, {:error, :timeout})
    assert message =~ "Cache: the switch to state machine version 2 failed: :timeout"
    assert {_, [{:propose, 2}]} = Upgrade.tick(u, alone)
  end

  test "the answer to a later round's report after the cluster already runs that version proposes nothing" do
    {u, _} = Upgrade.tick(upgrade(), @primary)
    {u, []} = Upgrade.report(u, 1, :b@h, 2, 2)
    assert {_, []} = Upgrade.report(u, 1, :c@h, 2, 2)
  end

  describe "the first round of a view" do
    @fresh Map.put(@primary, :caught_up, true)

    # The cluster runs version 1, this node's code supports 2.
    defp versions, do: fn -> {1, 2} end

    test "a new primary asks at once, and holds its callers' commands until the switch" do
      {u, [{:after, 500, :visor_hold_end}, {:ask, 1, @others}]} =
        Upgrade.view_started(upgrade(), @fresh, 1_000)

      assert {true, u} = Upgrade.holding(u, versions(), 1_000)
      {u, []} = Upgrade.report(u, 1, :b@h, 2, 1)
      {u, [{:propose, 2}]} = Upgrade.report(u, 1, :c@h, 2, 1)
      assert {true, u} = Upgrade.holding(u, versions(), 1_100)

      # Executed: the cluster runs the version this code supports.
      assert {false, u} = Upgrade.holding(u, fn -> {2, 2} end, 1_100)
      assert {false, _} = Upgrade.holding(u, versions(), 1_100)
    end

    test "the hold ends when the round ends without a switch, or after 500 ms" do
      {u, _} = Upgrade.view_started(upgrade(), @fresh, 1_000)
      {u, []} = Upgrade.report(u, 1, :b@h, 1, 1)
      {u, []} = Upgrade.report(u, 1, :c@h, 2, 1)
      assert {false, _} = Upgrade.holding(u, versions(), 1_010)

      # A member that does not answer.
      {u, _} = Upgrade.view_started(upgrade(), @fresh, 1_000)
      assert {true, u} = Upgrade.holding(u, versions(), 1_499)
      assert {false, _} = Upgrade.holding(u, versions(), 1_500)
    end

    test "a started engine holds until it runs its code's version; no hold when it already does" do
      backup = %{@fresh | primary: false}
      {u, [{:after, 500, :visor_hold_end}]} = Upgrade.engine_started(upgrade(), backup, 1_000)
      assert {true, u} = Upgrade.holding(u, versions(), 1_200)
      assert {false, _} = Upgrade.holding(u, fn -> {2, 2} end, 1_200)

      # A backup learning the view asks nothing.
      assert {_, []} = Upgrade.view_started(upgrade(), backup, 1_000)

      for view <- [%{backup | supported: 1}, %{backup | supported: :invalid}] do
        assert {u, []} = Upgrade.engine_started(upgrade(), view, 1_000)
        assert {false, _} = Upgrade.holding(u, versions(), 1_000)
      end
    end

    test "a primary still executing its log asks and holds once it has caught up, not a tick later" do
      behind = %{@fresh | caught_up: false}
      {u, []} = Upgrade.view_started(upgrade(), behind, 1_000)
      assert Upgrade.awaiting_catch_up?(u)

      # Still executing: nothing yet.
      assert {^u, []} = Upgrade.caught_up(u, behind, 1_050)

      {u, [{:after, 500, :visor_hold_end}, {:ask, 1, @others}]} =
        Upgrade.caught_up(u, @fresh, 1_100)

      refute Upgrade.awaiting_catch_up?(u)
      assert {true, _} = Upgrade.holding(u, versions(), 1_599)
      assert {false, _} = Upgrade.holding(u, versions(), 1_600)
    end

    test "a primary that lost its view before catching up forgets the round" do
      {u, []} = Upgrade.view_started(upgrade(), %{@fresh | caught_up: false}, 1_000)
      {u, []} = Upgrade.caught_up(u, %{@fresh | primary: false}, 1_100)
      refute Upgrade.awaiting_catch_up?(u)
      assert {false, _} = Upgrade.holding(u, versions(), 1_100)
    end
  end
end
