# Where a node's CPU goes, for the benches (loaded on the nodes with
# LocalCluster.load_modules/2): `sample/1` on a node before and after a
# window, `difference/3` of the two. Reductions count processes alive at
# both samples only (a bench's callers, which exit before the second, show
# as a negative :other).
defmodule Visor.Bench.Profile do
  @moduledoc false

  # The kinds of process told apart, by their `$initial_call` module
  # (Visor.Guard sets it to its callback module, as GenServer does);
  # anything else, callers included, is :other.
  @kinds [Visor.Router, Visor.Server, Visor.Formation, Visor.Groups.Host, Visor.Beacon]

  @doc """
  Counters of this node to difference: reductions by kind of process, and
  the CPU seconds of the engine's threads (`visor-engine-*`) and of the
  VM's other threads (schedulers, distribution, ...), from /proc.
  """
  def sample(ticks_per_s) do
    reductions =
      Enum.reduce(Process.list(), %{}, fn pid, acc ->
        case Process.info(pid, [:reductions, :dictionary]) do
          [reductions: r, dictionary: dict] -> Map.update(acc, kind(dict), r, &(&1 + r))
          nil -> acc
        end
      end)

    threads =
      for dir <- File.ls!("/proc/self/task"), reduce: %{engine: 0.0, vm: 0.0} do
        acc ->
          with {:ok, comm} <- File.read("/proc/self/task/#{dir}/comm"),
               {:ok, stat} <- File.read("/proc/self/task/#{dir}/stat") do
            [_, after_name] = String.split(stat, ") ", parts: 2)
            fields = String.split(after_name, " ")

            ticks =
              String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))

            key = if String.starts_with?(comm, "visor-engine"), do: :engine, else: :vm
            Map.update!(acc, key, &(&1 + ticks / ticks_per_s))
          else
            _ -> acc
          end
      end

    %{reductions: reductions, thread_cpu_s: threads}
  end

  defp kind(dict) do
    case dict[:"$initial_call"] do
      {m, _, _} when m in @kinds -> m
      _ -> :other
    end
  end

  @doc """
  Between two samples `seconds` apart: reductions per second by kind of
  process, and the engine's threads' and the VM's other threads' share of
  one core, in %.
  """
  def difference(before, after_, seconds) do
    reductions =
      for {kind, r} <- after_.reductions, into: %{} do
        {inspect(kind), round((r - Map.get(before.reductions, kind, 0)) / seconds)}
      end

    threads =
      for {key, s} <- after_.thread_cpu_s, into: %{} do
        {key, Float.round((s - before.thread_cpu_s[key]) / seconds * 100, 1)}
      end

    %{reductions_per_s: reductions, thread_cpu_pct: threads}
  end
end
