defmodule Visor.Groups.BackoffTest do
  use ExUnit.Case, async: true

  alias Visor.Groups.Backoff

  doctest Backoff

  # Failures at the given times (ms) in a row: the waits the host keeps.
  defp waits(times) do
    {waits, _} =
      Enum.map_reduce(times, Backoff.new(), fn now, backoff ->
        {wait, _failures, backoff} = Backoff.failed(backoff, now)
        {wait, backoff}
      end)

    waits
  end

  test "a group that never starts waits twice as long after each failure, never more than 30 s" do
    # Each failure comes 50 ms after the wait before it ended.
    {waits, _} =
      Enum.map_reduce(1..12, {Backoff.new(), 0}, fn _, {backoff, now} ->
        {wait, _, backoff} = Backoff.failed(backoff, now)
        {wait, {backoff, now + wait + 50}}
      end)

    assert waits == [1_000, 2_000, 4_000, 8_000, 16_000] ++ List.duplicate(30_000, 7)
    assert Enum.max(waits) == Backoff.max_ms()
  end

  test "a failure more than 60 s after the previous one starts a new row" do
    assert waits([0, 10_000, 20_000]) == [1_000, 2_000, 4_000]
    assert waits([0, 10_000, 80_001]) == [1_000, 2_000, 1_000]
  end
end
