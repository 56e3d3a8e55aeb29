defmodule Visor.Server.RelayReviewTest do
  # Second review of pipelined commits: Visor.Server.Relay's claims, shown
  # on the pure decider.
  use ExUnit.Case, async: true

  alias Visor.Server.Relay

  @members %{members: [:a, :b], primary: :a}

  defp entry(n), do: %{ref: make_ref(), caller: self(), payload: "#{n}", deadline: 0, from: n}

  # FIXED (choose/2 leaves no target once every member is passed over; the
  # passed set is reset when that answer is given).
  # Relay's moduledoc: a member that refuses as a non-member is passed
  # over; "With no target left, the command is answered {:error,
  # :no_member_reachable} at once (nothing was applied), and every member
  # is a candidate again." choose/2 makes every member a candidate again
  # *before* answering, so when every member the spare reaches refuses
  # (their groups refused at formation, `{:setting_mismatch, ...}`, say
  # the only member reachable from the spare; members that are spares
  # now), the command goes round them again and again, one message pair
  # per turn, until its deadline plus 1 s (forever with `timeout:
  # :infinity`): a busy loop between the spare's server and the members'
  # instead of an answer. (choose/2's reset predates the first review.)
  test "a command every member refused as a non-member is answered, not sent round again" do
    e1 = entry(1)
    {relay, effects} = Relay.forward(Relay.new(), e1, @members)
    assert [{:watch, :a}, {:forward, :a, ^e1}] = effects

    refusal = {:visor_refused, {:setting_mismatch, :pool_size, 8, 16}}

    # Each member refuses it (at most 10 refusals, 5 turns round both).
    {resent, answer} = refuse(relay, e1.ref, refusal, 10, 0)

    assert answer != nil,
           "every member refused command 1 as a non-member, yet it was sent again " <>
             "#{resent} times (of 10 refusals) and never answered"
  end

  defp refuse(_relay, _ref, _refusal, 0, resent), do: {resent, nil}

  defp refuse(relay, ref, refusal, left, resent) do
    {relay, effects} = Relay.answered(relay, ref, refusal, @members)

    case for({:answer, _entry, reply} <- effects, do: reply) do
      [reply] -> {resent, reply}
      [] -> refuse(relay, ref, refusal, left - 1, resent + 1)
    end
  end
end
