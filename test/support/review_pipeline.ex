defmodule Visor.Test.Ids do
  @moduledoc """
  A group that names each new item by `{meta.op, meta.index}`, as the
  README advises ("Unique ids"): the reply is the id with the timestamp,
  the state maps ids to items, so two commands given one id show.
  """
  use Visor

  @impl Visor
  def initial_state(_opts), do: %{}

  @impl Visor
  def handle_commit({:new, item}, meta, state) do
    id = {meta.op, meta.index}
    {:ok, {id, meta.timestamp}, Map.put(state, id, item)}
  end

  @doc "Commits `{:new, n}` for each n in 1..count, `concurrency` callers at once: the replies."
  def commit_concurrently(count, concurrency) do
    1..count
    |> Task.async_stream(&commit({:new, &1}), max_concurrency: concurrency, ordered: false)
    |> Enum.map(fn {:ok, reply} -> reply end)
  end
end

defmodule Visor.Test.FirstMessage do
  @moduledoc """
  Pipelines one command on this node and returns the first message that
  came for its ref within `wait` ms (`:no_message` if none), without
  `Visor.await/2`, whose own timeout would hide a missing answer.
  """
  def pipeline(module, command, opts, wait) do
    ref = Visor.pipeline(module, command, opts)

    receive do
      {^ref, result} -> {:answer, result}
      {:DOWN, ^ref, _, _, reason} -> {:down, reason}
    after
      wait -> :no_message
    end
  end
end

defmodule Visor.Test.PacedPipeliner do
  @moduledoc """
  Pipelines `{:seq, stream, n}` for n in 1..count, spinning `gap_us`
  between sends (a caller that sends steadily rather than in one burst),
  then awaits each ref: the results, in the order sent.
  """
  def run(module, stream, count, gap_us) do
    refs =
      for n <- 1..count do
        spin(System.monotonic_time(:microsecond) + gap_us)
        Visor.pipeline(module, {:seq, stream, n}, timeout: 30_000)
      end

    Enum.map(refs, &Visor.await(&1, 60_000))
  end

  defp spin(until) do
    if System.monotonic_time(:microsecond) < until, do: spin(until), else: :ok
  end
end
