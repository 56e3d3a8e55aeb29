defmodule Visor.Test.Load do
  @moduledoc """
  Callers that commit `{:incr, id}` in a loop on a peer node and report
  every outcome to a process on the test node, for the fault tests.

  Each caller has one commit outstanding at a time and ids
  `{{node, caller}, seq}` with `seq = 1, 2, 3, ...`, so the test can tell
  which increments were acknowledged, which failed, and which were in
  flight when a node died.
  """

  @doc """
  Spawns `count` callers on this node, numbered from `first`; returns
  their pids. A node restarted under the same name numbers its new callers
  apart from its earlier ones, so that their ids never collide.
  """
  def spawn_callers(module, count, report_to, opts, first \\ 1) do
    for i <- first..(first + count - 1) do
      spawn(fn -> loop(module, {node(), i}, 1, report_to, opts) end)
    end
  end

  @doc """
  As `spawn_callers/5`, over many groups: caller `i` commits to `groups`
  in turn, starting at the `i`-th, and reports `{:acked, {group, id},
  count}` or `{:failed, {group, id}, reason}`.
  """
  def spawn_callers_over(groups, count, report_to, opts) do
    groups = List.to_tuple(groups)

    for i <- 1..count do
      spawn(fn -> loop_over(groups, i, {node(), i}, 1, report_to, opts) end)
    end
  end

  @doc "Stops callers (from any node); each answers `{:stopped, caller, last_seq}`."
  def stop(pids), do: Enum.each(pids, &send(&1, :stop))

  @doc """
  Collects `{:acked, id, count}` reports into `acks` (id => count) until
  there are `target` of them; fails the test on a `{:failed, ...}` report
  or after 15 s without reaching it.
  """
  def await_acks(acks, target) when map_size(acks) >= target, do: acks

  def await_acks(acks, target) do
    receive do
      {:acked, id, count} ->
        await_acks(Map.put(acks, id, count), target)

      {:failed, id, reason} ->
        ExUnit.Assertions.flunk("commit #{inspect(id)} failed: #{inspect(reason)}")
    after
      15_000 ->
        ExUnit.Assertions.flunk("no progress: #{map_size(acks)} of #{target} acknowledgements")
    end
  end

  @doc "Takes every report already in the mailbox: `{acks, failed}`."
  def drain(acks, failed) do
    receive do
      {:acked, id, count} -> drain(Map.put(acks, id, count), failed)
      {:failed, id, reason} -> drain(acks, [{id, reason} | failed])
    after
      0 -> {acks, failed}
    end
  end

  @doc """
  Exactly once, for a `Visor.Test.Counter` state `final` and the
  acknowledgements `acks` (id => count): nothing applied twice (every
  applied id counted once), nothing acknowledged lost, and every
  acknowledged reply a distinct count.
  """
  def assert_exactly_once(final, acks, acked \\ nil) do
    import ExUnit.Assertions
    acked = acked || MapSet.new(Map.keys(acks))
    assert final.count == MapSet.size(final.applied)
    assert MapSet.subset?(acked, final.applied)
    assert acks |> Map.values() |> Enum.uniq() |> length() == map_size(acks)
  end

  defp loop_over(groups, turn, caller, seq, report_to, opts) do
    receive do
      :stop -> send(report_to, {:stopped, caller, seq - 1})
    after
      0 ->
        group = elem(groups, rem(turn, tuple_size(groups)))
        id = {caller, seq}

        case Visor.commit(group, {:incr, id}, opts) do
          count when is_integer(count) -> send(report_to, {:acked, {group, id}, count})
          {:error, reason} -> send(report_to, {:failed, {group, id}, reason})
        end

        loop_over(groups, turn + 1, caller, seq + 1, report_to, opts)
    end
  end

  defp loop(module, caller, seq, report_to, opts) do
    receive do
      :stop -> send(report_to, {:stopped, caller, seq - 1})
    after
      0 ->
        id = {caller, seq}

        case Visor.commit(module, {:incr, id}, opts) do
          count when is_integer(count) -> send(report_to, {:acked, id, count})
          {:error, reason} -> send(report_to, {:failed, id, reason})
        end

        loop(module, caller, seq + 1, report_to, opts)
    end
  end
end
