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

  @doc "Stops callers (from any node); each answers `{:stopped, caller, last_seq}`."
  def stop(pids), do: Enum.each(pids, &send(&1, :stop))

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
