defmodule Visor.Test.FailureSummary do
  @moduledoc false
  # An ExUnit formatter beside the CLI one: it repeats every failure, whole,
  # after the suite's last line. The CLI formatter prints a failure where
  # it happens, and a distributed suite logs hundreds of lines after it;
  # a CI log whose tail is all that survives then says "1 failure" without
  # saying which. This makes the tail name it.
  use GenServer

  @impl true
  def init(_opts), do: {:ok, %{failures: []}}

  @impl true
  def handle_cast({:test_finished, %ExUnit.Test{state: {:failed, failures}} = test}, state) do
    {:noreply, %{state | failures: [{test, failures} | state.failures]}}
  end

  def handle_cast(
        {:module_finished, %ExUnit.TestModule{state: {:failed, failures}} = module},
        state
      ) do
    {:noreply, %{state | failures: [{module, failures} | state.failures]}}
  end

  def handle_cast({:suite_finished, _times}, %{failures: []} = state), do: {:noreply, state}

  def handle_cast({:suite_finished, _times}, state) do
    IO.puts("\n==> the suite's failures, repeated:")

    state.failures
    |> Enum.reverse()
    |> Enum.with_index(1)
    |> Enum.each(fn {failure, counter} -> IO.puts(format(failure, counter)) end)

    {:noreply, state}
  end

  def handle_cast(_event, state), do: {:noreply, state}

  defp format({%ExUnit.Test{} = test, failures}, counter),
    do: ExUnit.Formatter.format_test_failure(test, failures, counter, 100, &plain/2)

  defp format({%ExUnit.TestModule{} = module, failures}, counter),
    do: ExUnit.Formatter.format_test_all_failure(module, failures, counter, 100, &plain/2)

  defp plain(_key, text), do: text
end
