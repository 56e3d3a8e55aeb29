defmodule Visor.Test.TelemetryForward do
  @moduledoc """
  A `:telemetry` handler that sends every event to a process (its config),
  tagged with the node that emitted it: test/visor/telemetry_test.exs
  attaches it on peer nodes, where the test's own module is not loaded.
  """

  @doc "The handler: `{:telemetry, node, event, measurements, metadata}` to `pid`."
  def handle(event, measurements, metadata, pid),
    do: send(pid, {:telemetry, node(), event, measurements, metadata})
end
