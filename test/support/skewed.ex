defmodule Visor.Test.Skewed do
  @moduledoc """
  A counter whose `handle_commit` can be made nondeterministic on one node
  (`skew/1` there): every increment then adds the skew too, so that node's
  state, and its checkpoints, differ from the others'. For the divergence
  test.
  """
  use Visor

  @impl Visor
  def initial_state(_opts), do: %{count: 0, ids: []}

  @impl Visor
  def handle_commit({:incr, id}, state) do
    count = state.count + 1 + :persistent_term.get({__MODULE__, :skew}, 0)
    {:ok, count, %{state | count: count, ids: [id | state.ids]}}
  end

  @doc "Makes this node's increments add `n` more (0: deterministic again)."
  def skew(n), do: :persistent_term.put({__MODULE__, :skew}, n)
end

defmodule Visor.Test.Watch do
  @moduledoc """
  Watches a group on a peer node for a test process elsewhere: forwards
  the node's error logs, and reports the first time its status is a given
  one (with what a local read answers at that moment).
  """

  @doc "Sends `pid` `{:visor_log, message}` for every error logged on this node."
  def forward_errors(pid) do
    :logger.add_handler(:visor_test_watch, __MODULE__, %{level: :error, config: %{pid: pid}})
  end

  @doc false
  # The `:logger` handler callback.
  def log(%{msg: msg}, %{config: %{pid: pid}}), do: send(pid, {:visor_log, text(msg)})

  defp text({:string, chardata}), do: IO.chardata_to_string(chardata)
  defp text({:report, report}), do: inspect(report)
  defp text({format, args}), do: format |> :io_lib.format(args) |> IO.chardata_to_string()

  @doc """
  Polls `module`'s status on this node every millisecond (for up to
  `timeout` ms) and sends `pid` `{:visor_status, status_map, local_read}`
  the first time it is `wanted`.
  """
  def report_status(module, wanted, pid, timeout \\ 30_000) do
    spawn(fn -> poll(module, wanted, pid, System.monotonic_time(:millisecond) + timeout) end)
    :ok
  end

  defp poll(module, wanted, pid, deadline) do
    status = Visor.status(module)

    cond do
      is_map(status) and status.status == wanted ->
        send(pid, {:visor_status, status, Visor.get(module, consistency: :local)})

      System.monotonic_time(:millisecond) > deadline ->
        :ok

      true ->
        Process.sleep(1)
        poll(module, wanted, pid, deadline)
    end
  end
end
