defmodule Visor.Test.Sequence do
  @moduledoc """
  A group that keeps, per stream, the numbers its commands carried, in the
  order they were applied: one caller's order, and anything applied twice,
  show in the state.
  """
  use Visor

  @impl Visor
  def initial_state(_opts), do: %{}

  @impl Visor
  def handle_commit({:seq, stream, n}, state), do: {:ok, n, append(state, stream, n)}

  # Slow on every replica: keeps a request in flight for `ms`.
  def handle_commit({:slow, stream, n, ms}, state) do
    Process.sleep(ms)
    {:ok, n, append(state, stream, n)}
  end

  def handle_commit({:fail, _stream, _n}, _state), do: raise(ArgumentError, "boom")

  defp append(state, stream, n), do: Map.update(state, stream, [n], &[n | &1])

  @doc "The numbers `stream`'s commands applied, in the order applied."
  def applied(state, stream), do: state |> Map.get(stream, []) |> Enum.reverse()
end

defmodule Visor.Test.Pipeliner do
  @moduledoc """
  One process that pipelines numbered commands (`Visor.pipeline/3`) on the
  node it runs on, at most `window` unanswered at a time, and reports
  every message it got for each ref to a process on the test node.
  """

  @doc """
  Spawns the pipeliner: it sends `commands` (a list of `{n, command,
  opts}`), then waits `settle_ms` more for stray messages, and sends
  `report_to` `{:pipelined, self(), results}`: `{n, [message]}` for each
  command in the order sent, every message received for its ref, in
  arrival order; and `arrival`, the numbers in the order their first
  message came.
  """
  def start(module, commands, report_to, window, settle_ms \\ 500) do
    spawn(fn -> run(module, commands, report_to, window, settle_ms) end)
  end

  defp run(module, commands, report_to, window, settle_ms) do
    {refs, got} = send_all(module, commands, window, %{}, {%{}, []})
    {answers, arrival} = collect(refs, got, settle_ms)
    results = for {n, _, _} <- commands, do: {n, Enum.reverse(Map.get(answers, n, []))}
    send(report_to, {:pipelined, self(), results, Enum.reverse(arrival)})
  end

  # `got`: {n => messages (newest first), numbers in order of first answer (newest first)}.
  defp send_all(_module, [], _window, refs, got), do: {refs, got}

  defp send_all(module, [{n, command, opts} | rest], window, refs, got) do
    got = wait_below(refs, got, window)
    ref = Visor.pipeline(module, command, opts)
    send_all(module, rest, window, Map.put(refs, ref, n), got)
  end

  # At most `window` commands without an answer.
  defp wait_below(refs, {answers, _} = got, window) do
    if map_size(refs) - map_size(answers) < window,
      do: got,
      else: wait_below(refs, receive_one(refs, got, :infinity), window)
  end

  # Every ref answered, then `settle_ms` of silence: a second message for
  # any ref would show.
  defp collect(refs, {answers, _} = got, settle_ms) do
    timeout = if map_size(answers) < map_size(refs), do: 60_000, else: settle_ms

    case receive_one(refs, got, timeout) do
      :none -> got
      got -> collect(refs, got, settle_ms)
    end
  end

  defp receive_one(refs, got, timeout) do
    receive do
      {ref, _result} = message when is_map_key(refs, ref) -> note(got, refs[ref], message)
      {:DOWN, ref, _, _, _} = message when is_map_key(refs, ref) -> note(got, refs[ref], message)
    after
      timeout -> :none
    end
  end

  defp note({answers, arrival}, n, message) do
    arrival = if Map.has_key?(answers, n), do: arrival, else: [n | arrival]
    {Map.update(answers, n, [message], &[message | &1]), arrival}
  end

  @doc """
  Pipelines `command`, kills this node's server of `module` before it can
  answer, and returns what `Visor.await/2` makes of it.
  """
  def await_killed(module, command) do
    server = Process.whereis(Visor.Supervisor.name(module, :server))
    ref = Visor.pipeline(module, command, timeout: 5_000)
    Process.exit(server, :kill)
    Visor.await(ref, 5_000)
  end

  @doc "Pipelines one command and awaits its result (in one process: the ref is its own)."
  def await_one(module, command), do: module |> Visor.pipeline(command) |> Visor.await()
end
