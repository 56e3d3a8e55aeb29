defmodule Visor.Telemetry do
  @moduledoc false
  # Visor's `:telemetry` events (the table is in docs/operations.md,
  # "Telemetry"): emitted through `:telemetry.execute/3` and
  # `:telemetry.span/3` when the `:telemetry` application is loaded, and
  # nothing at all when it is not.
  #
  # `:telemetry` is not a declared dependency of Visor: an application that
  # wants the events depends on it itself. Whether it is there is checked
  # once per VM (on the first event) and kept in a `:persistent_term`, so an
  # event costs one `:persistent_term.get/2` when it is absent.
  #
  # Visor's tests run the emission against a test double of `:telemetry`
  # (test/support/telemetry.erl: `execute/3` and `span/3` with the real
  # library's semantics, loaded on the test's peer nodes), since the hex
  # package cannot be fetched where Visor is built.

  # :telemetry is optional: the calls below are only made when it is loaded.
  @compile {:no_warn_undefined, :telemetry}

  @available {__MODULE__, :available}

  # Every event Visor emits; emitting another raises (FunctionClauseError),
  # and test/visor/docs_test.exs checks docs/operations.md lists exactly these.
  @spans [[:visor, :commit], [:visor, :read], [:visor, :skip]]

  @events [
            [:visor, :checkpoint, :taken],
            [:visor, :checkpoint, :installed],
            [:visor, :storage, :error],
            [:visor, :storage, :resumed],
            [:visor, :diverged],
            [:visor, :role, :changed],
            [:visor, :view_change, :start],
            [:visor, :view_change, :stop],
            [:visor, :recovery, :start],
            [:visor, :recovery, :stop],
            [:visor, :state_sync, :start],
            [:visor, :state_sync, :stop],
            [:visor, :message, :dropped],
            [:visor, :pipeline, :start],
            [:visor, :pipeline, :stop]
          ] ++ for(span <- @spans, suffix <- [:start, :stop, :exception], do: span ++ [suffix])

  @doc "The name of every event Visor emits (spans' `:start`, `:stop`, `:exception` included)."
  @spec events() :: [[atom()]]
  def events, do: @events

  @doc "Whether `:telemetry` is loaded in this VM (checked once)."
  @spec available?() :: boolean()
  def available? do
    case :persistent_term.get(@available, nil) do
      nil ->
        available = Code.ensure_loaded?(:telemetry) and function_exported?(:telemetry, :span, 3)
        :persistent_term.put(@available, available)
        available

      available ->
        available
    end
  end

  @doc "Emits `event` (one of `events/0`) if `:telemetry` is loaded."
  @spec execute([atom()], map(), map()) :: :ok
  def execute(event, measurements, metadata) when event in @events do
    if available?(), do: :telemetry.execute(event, measurements, metadata)
    :ok
  end

  @doc """
  Runs `fun` as `:telemetry.span/3` does (`fun` returns `{result,
  stop_metadata}`; `result` is returned) under `prefix` (`[:visor,
  :commit]`, `[:visor, :read]` or `[:visor, :skip]`); without `:telemetry`, just runs it.
  """
  @spec span([atom()], map(), (() -> {term(), map()})) :: term()
  def span(prefix, metadata, fun) when prefix in @spans do
    if available?() do
      :telemetry.span(prefix, metadata, fun)
    else
      {result, _metadata} = fun.()
      result
    end
  end

  @doc """
  A span's stop metadata for an error: `outcome` is the error's name (a
  low-cardinality tag for metrics), `error` the whole reason.
  """
  @spec outcome(map(), term()) :: map()
  def outcome(metadata, reason) do
    name = if is_tuple(reason), do: elem(reason, 0), else: reason
    Map.merge(metadata, %{outcome: name, error: reason})
  end
end
