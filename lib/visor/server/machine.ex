defmodule Visor.Server.Machine do
  @moduledoc false
  # The application's state machine on this replica (a decider; `Visor.Server`
  # carries out its effects): it applies the engine's events about the
  # application state, in op order, to the state.
  #
  #   * `{:execute, op, view, timestamp, requests}`: each executed command
  #     goes through `Visor.Executor` (the user's `handle_commit`);
  #   * `{:snapshot, op}`: a checkpoint is due; the state is encoded
  #     (`encode_snapshot/1`) for the engine;
  #   * `{:install_snapshot, op, bytes}`: the state becomes a checkpoint's
  #     (`decode_snapshot/1`);
  #   * `{:diverged, op, digest, quorum}`: this state differs from the
  #     quorum's; nothing is served from it until a checkpoint is installed;
  #   * a poison command (docs/operations.md, "Poison commands"): from its op
  #     on, executes and checkpoints wait until a committed `Visor.skip/3`
  #     names it; then that op's commands answer `{:error, {:skipped, op}}`.
  #
  # It calls the application's own functions (`initial_state/1`,
  # `handle_commit`, `encode_snapshot/1`, `decode_snapshot/1`) directly
  # rather than asking the server to: they are the application's pure,
  # deterministic functions, and their results decide this module's next
  # state, so an effect carried out later could not. The one side effect here
  # is `Visor.Lifetime.executing/2` around each execute: it must bracket the
  # user's code exactly (replayed held events included), so that a
  # `handle_commit` that kills the server is charged to its own op.
  #
  # Effects, in order:
  #
  #   * `{:result, client, request, result}`: this replica's result for a
  #     request (`Visor.Server.Callers.result/4` keeps it for this node's own);
  #   * `{:snapshot, op, bytes}`: the checkpoint for the engine
  #     (`Visor.Native.snapshot/3`);
  #   * `{:log, level, message}`;
  #   * `{:fail, reason}`: a checkpoint that does not decode; this replica
  #     cannot know its state (`Visor.Server.Lifecycle.fail/2`).

  alias Visor.{Executor, Lifetime}

  # A server that died inside handle_commit at the same op this many times
  # in a row stops executing there (a poison command; see `Visor.skip/3`).
  @poison_deaths 2

  defstruct [
    :module,
    :arity,
    :app_state,
    # Visor.Lifetime's counters: the op handle_commit is running, for the
    # next server if this one dies in it.
    :counters,
    # Visor.Lifetime's highest op executed on this node: a failure met
    # again when the log is replayed is not logged again.
    :executed,
    # A poison command: %{op, crashes}, and the engine events from that op
    # on, held (newest first) until a committed skip of the op arrives.
    poison: nil,
    held: [],
    # The op where this replica's state was found to differ from the
    # quorum's, until it installs the quorum's checkpoint (nil: it does not).
    diverged: nil
  ]

  @type t :: %__MODULE__{}
  @type effect ::
          {:result, binary(), non_neg_integer(), term()}
          | {:snapshot, pos_integer(), binary()}
          | {:log, :error | :warning, String.t()}
          | {:fail, term()}

  @doc """
  The state machine at `module.initial_state(init_arg)`. `death_at` is
  `Visor.Lifetime.death_at/1`: whether this node's previous server died
  inside `handle_commit`, at which op and how many times in a row; after
  #{@poison_deaths} the machine is halted there (a poison command).
  """
  @spec new(module(), term(), :atomics.atomics_ref(), {pos_integer(), pos_integer()} | nil) ::
          {t(), [effect()]}
  def new(module, init_arg, counters, death_at) do
    {poison, effects} = poison(module, death_at)

    machine = %__MODULE__{
      module: module,
      arity: Executor.arity(module),
      app_state: module.initial_state(init_arg),
      counters: counters,
      executed: Lifetime.get(module).executed,
      poison: poison
    }

    {machine, effects}
  end

  defp poison(_module, nil), do: {nil, []}

  defp poison(module, {op, deaths}) when deaths < @poison_deaths do
    {nil,
     [
       {:log, :warning,
        "#{inspect(module)}: this node's previous server died inside handle_commit at op #{op}; " <>
          "the replica executes it again (it stops there if it dies there again)"}
     ]}
  end

  defp poison(module, {op, deaths}) do
    {%{op: op, crashes: deaths},
     [
       {:log, :error,
        "#{inspect(module)}: handle_commit at op #{op} killed this node's server #{deaths} times " <>
          "in a row; the replica stops executing at op #{op} (it keeps its log and keeps voting). " <>
          "To skip that op on every replica: Visor.skip(#{inspect(module)}, #{op})"}
     ]}
  end

  @doc "The op of the poison command this machine is halted at, or `nil`."
  @spec halted(t()) :: pos_integer() | nil
  def halted(%__MODULE__{poison: nil}), do: nil
  def halted(%__MODULE__{poison: %{op: op}}), do: op

  @doc """
  A linearizable read's answer (once the engine says it may be served):
  `{:ok, value}`, `{:raise, kind, reason, stacktrace}` for a path that does
  not fit the state, `{:get_in, data, rest}` for the caller to finish with
  `Kernel.get_in(data, rest)` where the path reaches user code, or
  `{:error, {:halted, op}}`.
  """
  @spec read(t(), [term()]) :: term()
  def read(%__MODULE__{poison: %{op: op}}, _path), do: {:error, {:halted, op}}
  def read(%__MODULE__{app_state: app_state}, path), do: extract(app_state, path)

  @doc "A `consistency: :local` read: as `read/2`, but `{:error, :diverged}` on a diverged state."
  @spec read_local(t(), [term()]) :: term()
  def read_local(%__MODULE__{diverged: op}, _path) when op != nil, do: {:error, :diverged}
  def read_local(%__MODULE__{app_state: app_state}, path), do: extract(app_state, path)

  # Computed here, as Kernel.get_in/2 would, so that only the requested
  # part is copied to the caller; but only through plain data (maps, lists,
  # nil). Where the path reaches user code (an accessor function, a
  # struct's Access implementation), the rest is the caller's to compute
  # ({:get_in, data, rest}): user code in a read must not stall the replica
  # or kill it. A path that does not fit the state raises; that is the
  # caller's error, so it is re-raised there (Visor.get_in/3), never here.
  defp extract(app_state, path) do
    walk(app_state, path)
  catch
    kind, reason -> {:raise, kind, reason, __STACKTRACE__}
  end

  defp walk(data, []), do: {:ok, data}

  defp walk(data, [key | rest])
       when not is_function(key) and
              (data == nil or is_list(data) or (is_map(data) and not is_struct(data))),
       do: walk(Access.get(data, key), rest)

  defp walk(data, path), do: {:get_in, data, path}

  @doc "Applies one engine event (see the top of this module); other events change nothing."
  @spec event(t(), tuple()) :: {t(), [effect()]}
  def event(%__MODULE__{} = machine, event) do
    {machine, effects} = apply_event(event, machine, [])
    {machine, Enum.reverse(effects)}
  end

  # Effects accumulate newest first.

  # Halted at a poison command: from its op on, executes and checkpoint
  # requests wait (in order) for a committed skip of that op.
  defp apply_event({:execute, op, _, _, _} = event, %{poison: %{op: poison}} = machine, effects)
       when op >= poison,
       do: hold(event, machine, effects)

  defp apply_event({:snapshot, op} = event, %{poison: %{op: poison}} = machine, effects)
       when op >= poison,
       do: hold(event, machine, effects)

  defp apply_event({:execute, op, view, timestamp, requests}, machine, effects) do
    meta = %{op: op, view: view, timestamp: timestamp}
    log? = Lifetime.first_execution?(machine.executed, op)
    # Lifetime tells the next server where this one died, if it dies in
    # handle_commit (two atomics writes per op).
    :ok = Lifetime.executing(machine.counters, op)
    result = Enum.reduce(requests, {machine, effects}, &execute(&1, meta, log?, &2))
    :ok = Lifetime.executing(machine.counters, 0)
    result
  end

  # A checkpoint is due: the state as of `op` (every execute up to it, and
  # none after, has been applied: events come in order).
  defp apply_event({:snapshot, op}, machine, effects) do
    {machine, [{:snapshot, op, encode_snapshot(machine.module, machine.app_state)} | effects]}
  catch
    kind, reason ->
      # No checkpoint at this op; the next one is tried as usual.
      message =
        "#{inspect(machine.module)}: encode_snapshot failed at op #{op}: " <>
          Exception.format(kind, reason, __STACKTRACE__)

      {machine, [{:log, :error, message} | effects]}
  end

  # Restart from a checkpoint, or a state sync: the state becomes the
  # checkpoint's (the executes that follow continue from it).
  defp apply_event({:install_snapshot, op, bytes}, machine, effects) do
    app_state = decode_snapshot(machine.module, bytes)
    # The engine executes again from the checkpoint on: held events are
    # stale, and a checkpoint at or past the poison op has it applied.
    poison = if machine.poison && op >= machine.poison.op, do: nil, else: machine.poison
    {%{machine | app_state: app_state, held: [], poison: poison, diverged: nil}, effects}
  rescue
    error ->
      message =
        "#{inspect(machine.module)}: cannot decode the checkpoint at op #{op} " <>
          "(#{byte_size(bytes)} bytes): #{Exception.message(error)}; this node's server stops"

      reason = {:snapshot_decode_failed, op, Exception.message(error)}
      {machine, [{:fail, reason}, {:log, :error, message} | effects]}
  end

  # This replica's checkpoint differs from the one a quorum holds: its
  # state diverged. The engine executes and serves nothing until it has
  # installed the quorum's checkpoint (an `install_snapshot` event).
  defp apply_event({:diverged, op, digest, quorum}, machine, effects) do
    message =
      "#{inspect(machine.module)}: this replica's state diverged from the quorum's: " <>
        "its checkpoint at op #{op} has digest #{digest}, a quorum's has #{quorum} " <>
        "(a nondeterministic handle_commit or encode_snapshot?); it stops executing " <>
        "and serving, and recovers the quorum's state by state sync"

    {%{machine | diverged: op}, [{:log, :error, message} | effects]}
  end

  defp apply_event(_other, machine, effects), do: {machine, effects}

  defp execute({client, request, :executed, payload}, meta, log?, {machine, effects}) do
    {result, app_state} =
      Executor.apply(machine.module, machine.arity, payload, meta, machine.app_state, log?)

    {%{machine | app_state: app_state}, [{:result, client, request, result} | effects]}
  end

  # Registrations, duplicates and evicted requests apply nothing.
  defp execute(_request, _meta, _log?, acc), do: acc

  defp hold(event, machine, effects) do
    machine = %{machine | held: [event | machine.held]}

    if skips_poison?(event, machine.poison.op),
      do: skip_poison(machine, effects),
      else: {machine, effects}
  end

  defp skips_poison?({:execute, _op, _view, _ts, requests}, poison) do
    Enum.any?(requests, fn
      {_client, _request, :executed, payload} -> Executor.skip_target(payload) == poison
      _ -> false
    end)
  end

  defp skips_poison?(_event, _poison), do: false

  # The skip of the poison op is committed: every replica that stopped
  # there drops that op's commands (their callers get `{:error, {:skipped,
  # op}}`) and executes the held events after it, the skip included.
  defp skip_poison(%{poison: %{op: op}, held: held} = machine, effects) do
    effects = [
      {:log, :warning, "#{inspect(machine.module)}: op #{op} skipped; the replica executes again"}
      | effects
    ]

    {poisoned, rest} = Enum.split_with(Enum.reverse(held), &match?({:execute, ^op, _, _, _}, &1))

    skipped =
      for {:execute, _, _, _, requests} <- poisoned,
          {client, request, :executed, _payload} <- requests,
          do: {:result, client, request, {:error, {:skipped, op}}}

    acc = {%{machine | poison: nil, held: []}, Enum.reverse(skipped, effects)}

    Enum.reduce(rest, acc, fn event, {machine, effects} ->
      apply_event(event, machine, effects)
    end)
  end

  defp encode_snapshot(module, app_state) do
    bytes =
      if function_exported?(module, :encode_snapshot, 1),
        do: module.encode_snapshot(app_state),
        else: :erlang.term_to_binary(app_state, [:deterministic])

    # Checked here, where the failure is logged as encode_snapshot's (the
    # engine would raise on it in the server, after this decision).
    unless is_binary(bytes),
      do: raise(ArgumentError, "snapshot must be a binary, got: #{inspect(bytes)}")

    bytes
  end

  defp decode_snapshot(module, bytes) do
    if function_exported?(module, :decode_snapshot, 1),
      do: module.decode_snapshot(bytes),
      else: :erlang.binary_to_term(bytes)
  end
end
