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

    {relay, effects} = Relay.down(relay, :b, :noconnection)

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
end
