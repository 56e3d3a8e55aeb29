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

defmodule Visor.Test.OlderCode do
  # Visor's own modules as a release from before pipelining had them,
  # hot-loaded on a peer node: built from today's source with the
  # pipelining parts taken out (each edit must apply, or the code loaded
  # would not be the older code the test means).

  # An executor that runs no batches and says so (`features/0`).
  def load_executor_without_batches(node) do
    "lib/visor/executor.ex"
    |> File.read!()
    |> edit("@features [:batch]", "@features []")
    |> edit(
      "def apply(module, arity, <<@batch_tag, _::binary>> = payload",
      "def apply(module, arity, <<@batch_tag, 255, 255, 255, 255, _::binary>> = payload"
    )
    |> load(node)
  end

  # A server from before the feature question: it neither answers
  # `{:visor_features, ...}` nor asks it (it sends a message the others drop).
  def load_server_without_features(node) do
    "lib/visor/server.ex"
    |> File.read!()
    |> edit("    if ask do\n", "    if ask and false do\n")
    |> edit(
      "query = {:visor_features, self(), Executor.features(), true}",
      "query = :visor_older_code"
    )
    |> load(node)
  end

  defp edit(source, from, to) do
    if not String.contains?(source, from),
      do: raise("the source no longer holds #{inspect(from)}")

    String.replace(source, from, to)
  end

  defp load(source, node) do
    :ok = :erpc.call(node, Code, :put_compiler_option, [:ignore_module_conflict, true])
    [_ | _] = :erpc.call(node, Code, :compile_string, [source])
    :ok
  end
end
