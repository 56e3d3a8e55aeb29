defmodule Visor.Server.RelayTest do
  # A spare's pipelined commands, decided by Visor.Server.Relay alone: one
  # target at a time, each command answered once.
  use ExUnit.Case, async: true

  alias Visor.Server.Relay

  @members %{members: [:a, :b, :c], primary: :b}

  defp entry(n), do: %{ref: make_ref(), caller: self(), payload: "#{n}", deadline: 0, from: n}

  defp answers(effects), do: for({:answer, entry, reply} <- effects, do: {entry.from, reply})

  test "every command goes to one target, the primary first, watched once" do
    {relay, effects} = Relay.forward(Relay.new(), e1 = entry(1), @members)
    assert effects == [{:watch, :b}, {:forward, :b, e1}]

    # The target stays, whatever the candidates say now.
    {relay, effects} = Relay.forward(relay, e2 = entry(2), %{members: [:a, :c], primary: :a})
    assert effects == [{:forward, :b, e2}]

    {relay, effects} = Relay.answered(relay, e1.ref, {:ok, 1}, @members)
    assert answers(effects) == [{1, {:ok, 1}}]
    # A second answer for the same ref is dropped.
    assert {^relay, []} = Relay.answered(relay, e1.ref, {:ok, 1}, @members)
    assert Relay.outstanding(relay) == 1
  end

  test "the target's death fails what it held, once; the next command goes elsewhere" do
    {relay, _} = Relay.forward(Relay.new(), e1 = entry(1), @members)
    {relay, _} = Relay.forward(relay, e2 = entry(2), @members)

    {relay, effects} = Relay.down(relay, :b, :noconnection, @members)

    assert Enum.sort(answers(effects)) == [
             {1, {:error, {:member_down, :b}}},
             {2, {:error, {:member_down, :b}}}
           ]

    assert {^relay, []} = Relay.answered(relay, e2.ref, {:ok, 2}, @members)
    assert {_, []} = Relay.answered(relay, e1.ref, {:ok, 1}, @members)

    {_relay, effects} = Relay.forward(relay, e3 = entry(3), %{members: [:a, :c], primary: nil})
    assert effects == [{:watch, :a}, {:forward, :a, e3}]
  end

  test "a non-member's refusal passes the command to the next member; another refusal is its answer" do
    {relay, _} = Relay.forward(Relay.new(), e1 = entry(1), @members)
    {relay, effects} = Relay.answered(relay, e1.ref, {:visor_refused, :spare}, @members)
    assert effects == [{:watch, :a}, {:forward, :a, e1}]

    {_relay, effects} = Relay.answered(relay, e1.ref, {:visor_refused, {:halted, 7}}, @members)
    assert answers(effects) == [{1, {:error, {:halted, 7}}}]
  end

  test "no member connected: no_member_reachable at once" do
    {relay, effects} = Relay.forward(Relay.new(), entry(1), %{members: [], primary: nil})
    assert answers(effects) == [{1, {:error, :no_member_reachable}}]
    assert Relay.outstanding(relay) == 0
  end

  defp forwards(effects), do: for({:forward, node, entry} <- effects, do: {node, entry.from})

  test "after a refusal, a caller's next commands wait for its last answer there, then go in order" do
    relay =
      Enum.reduce(1..3, Relay.new(), fn n, relay ->
        elem(Relay.forward(relay, entry(n), @members), 0)
      end)

    [e1, e2, e3] =
      relay.outstanding |> Map.values() |> Enum.sort_by(&elem(&1, 1)) |> Enum.map(&elem(&1, 2))

    {relay, []} = Relay.answered(relay, e1.ref, {:visor_refused, :spare}, @members)
    # The target moved on, but e2 and e3 are still at :b: e4 waits.
    {relay, []} = Relay.forward(relay, entry(4), @members)
    {relay, []} = Relay.answered(relay, e2.ref, {:visor_refused, :spare}, @members)
    {relay, effects} = Relay.answered(relay, e3.ref, {:visor_refused, :spare}, @members)

    assert forwards(effects) == [{:a, 1}, {:a, 2}, {:a, 3}, {:a, 4}]
    assert Relay.outstanding(relay) == 4
  end

  test "another caller's refusal moves the target: this caller's next commands wait too" do
    other = spawn(fn -> :ok end)
    {relay, _} = Relay.forward(Relay.new(), mine = entry(1), @members)
    {relay, _} = Relay.forward(relay, theirs = %{entry(9) | caller: other}, @members)

    {relay, effects} = Relay.answered(relay, theirs.ref, {:visor_refused, :spare}, @members)
    assert forwards(effects) == [{:a, 9}]
    {relay, []} = Relay.forward(relay, entry(2), @members)

    {_relay, effects} = Relay.answered(relay, mine.ref, {:visor_refused, :spare}, @members)
    assert forwards(effects) == [{:a, 1}, {:a, 2}]
  end

  test "a refused command sent before one its node took in is answered with its refusal, not re-sent" do
    {relay, _} = Relay.forward(Relay.new(), e1 = entry(1), @members)
    {relay, _} = Relay.forward(relay, e2 = entry(2), @members)
    {relay, []} = Relay.answered(relay, e1.ref, {:visor_refused, :spare}, @members)
    {relay, effects} = Relay.answered(relay, e2.ref, {:ok, 2}, @members)

    assert answers(effects) == [{2, {:ok, 2}}, {1, {:error, :spare}}]
    assert forwards(effects) == []
    assert Relay.outstanding(relay) == 0
  end

  test "a command no member answered by its deadline plus the grace is answered :timeout and forgotten" do
    {relay, _} = Relay.forward(Relay.new(), %{entry(1) | deadline: 100}, @members)
    {relay, _} = Relay.forward(relay, %{entry(2) | deadline: 5_000}, @members)

    {relay, []} = Relay.expire(relay, 1_100, 1_000, @members)
    {relay, effects} = Relay.expire(relay, 1_101, 1_000, @members)
    assert answers(effects) == [{1, {:error, :timeout}}]
    assert Relay.outstanding(relay) == 1
  end
end
