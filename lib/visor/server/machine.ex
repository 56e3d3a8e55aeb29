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
  #     names it; then that op's commands answer `{:error, {:skipped, op}}`;
  #   * the state machine version (docs/operations.md, "Deploying new code"):
  #     the cluster's, switched by an entry in the log and kept in
  #     checkpoints; from the op where it passes what this node's code
  #     supports, executes and checkpoints wait until the code is upgraded
  #     (`code_loaded/1`).
  #
  # It calls the application's own functions (`initial_state/1`,
  # `handle_commit`, `encode_snapshot/1`, `decode_snapshot/1`, `version/0`) directly
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

  # A checkpoint taken at a state machine version above 0 starts with this,
  # then the version; one at version 0 is encode_snapshot's bytes alone, as
  # before versions existed, so those checkpoints read as version 0. The
  # default encoding starts with 131, never 0.
  @versioned <<0, "visor.version">>

  defstruct [
    :module,
    # Whose state this is: the module (its default group) or {module, key}.
    :group,
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
    diverged: nil,
    # The cluster's state machine version as of the last op executed here
    # (replicated: switched by a log entry, kept in checkpoints).
    version: 0,
    # The last op executed here whole, or installed from a checkpoint.
    op: 0,
    # %{op, version}: from `op` on the cluster runs `version`, which this
    # node's code does not support; events from `op` on are held (in
    # `held`) until it does.
    blocked: nil
  ]

  @type t :: %__MODULE__{}
  @type effect ::
          {:result, binary(), non_neg_integer(), term()}
          | {:snapshot, pos_integer(), binary()}
          | {:log, :error | :warning, String.t()}
          | {:fail, term()}

  @doc """
  The state machine at `module.initial_state(init_arg)` (a keyed group's
  at `module.initial_state(key, init_arg)` when the module exports it).
  `death_at` is `Visor.Lifetime.death_at/1`: whether this node's previous server died
  inside `handle_commit`, at which op and how many times in a row; after
  #{@poison_deaths} the machine is halted there (a poison command).
  `opts`: `group:`, the group it is the state of (by default the
  module's default group; a keyed group's `{module, key}`), named in its
  log lines; `executed:`, its `Visor.Lifetime` record's `:executed`.
  """
  @spec new(module(), term(), :atomics.atomics_ref(), {pos_integer(), pos_integer()} | nil,
          group: module() | {module(), term()},
          executed: :atomics.atomics_ref()
        ) ::
          {t(), [effect()]}
  def new(module, init_arg, counters, death_at, opts \\ []) do
    group = Keyword.get(opts, :group, module)
    {poison, effects} = poison(group, death_at)

    machine = %__MODULE__{
      module: module,
      group: group,
      app_state: initial_state(module, group, init_arg),
      counters: counters,
      executed: Keyword.get_lazy(opts, :executed, fn -> Lifetime.get(group).executed end),
      poison: poison
    }

    {machine, effects}
  end

  # A keyed group's start state is built from its key when the module
  # says how (`c:Visor.initial_state/2`); the default group's never is.
  defp initial_state(module, {module, key}, init_arg) do
    if Code.ensure_loaded?(module) and function_exported?(module, :initial_state, 2),
      do: module.initial_state(key, init_arg),
      else: module.initial_state(init_arg)
  end

  defp initial_state(module, _default_group, init_arg), do: module.initial_state(init_arg)

  defp poison(_group, nil), do: {nil, []}

  defp poison(group, {op, deaths}) when deaths < @poison_deaths do
    {nil,
     [
       {:log, :warning,
        "#{inspect(group)}: this node's previous server died inside handle_commit at op #{op}; " <>
          "the replica executes it again (it stops there if it dies there again)"}
     ]}
  end

  defp poison(group, {op, deaths}) do
    {%{op: op, crashes: deaths},
     [
       {:log, :error,
        "#{inspect(group)}: handle_commit at op #{op} killed this node's server #{deaths} times " <>
          "in a row; the replica stops executing at op #{op} (it keeps its log and keeps voting). " <>
          "To skip that op on every replica: Visor.skip(#{inspect(group)}, #{op})"}
     ]}
  end

  @doc "The op of the poison command this machine is halted at, or `nil`."
  @spec halted(t()) :: pos_integer() | nil
  def halted(%__MODULE__{poison: nil}), do: nil
  def halted(%__MODULE__{poison: %{op: op}}), do: op

  @doc """
  The error this node's callers get while the replica is blocked on a
  version its code does not support (`{:unsupported_version, version}`),
  or `nil`.
  """
  @spec refusal(t()) :: {:unsupported_version, non_neg_integer()} | nil
  def refusal(%__MODULE__{blocked: nil}), do: nil
  def refusal(%__MODULE__{blocked: %{version: version}}), do: {:unsupported_version, version}

  @doc """
  `status().version`: the version this replica runs (the cluster's as of
  its last executed op), the one this node's code supports now
  (`Visor.Executor.version/1`), and where it is blocked (`%{op:, version:}`)
  or `nil`.
  """
  @spec versions(t()) :: map()
  def versions(%__MODULE__{} = machine) do
    %{
      running: machine.version,
      supported: Executor.version(machine.module),
      blocked: machine.blocked
    }
  end

  @doc "The last op this replica executed whole, or installed from a checkpoint (0: none)."
  @spec last_op(t()) :: non_neg_integer()
  def last_op(%__MODULE__{op: op}), do: op

  @doc """
  The version the cluster runs as far as this replica knows: the one it is
  blocked on, or else the one it runs. (A replica blocked at a switch
  still runs the version before it, which its code may support.)
  """
  @spec cluster_version(t()) :: non_neg_integer()
  def cluster_version(%__MODULE__{blocked: %{version: version}}), do: version
  def cluster_version(%__MODULE__{version: version}), do: version

  @doc """
  The module's code may have changed (a hot code load): a replica blocked
  on a version the code now supports executes again, from the op it
  stopped at.
  """
  @spec code_loaded(t()) :: {t(), [effect()]}
  def code_loaded(%__MODULE__{blocked: nil} = machine), do: {machine, []}

  def code_loaded(%__MODULE__{blocked: %{op: op, version: version}} = machine) do
    if supports?(Executor.version(machine.module), version) do
      message =
        "#{inspect(machine.group)}: this node's code supports version #{version} now; " <>
          "the replica executes again from op #{op}"

      {machine, effects} =
        apply_events(Enum.reverse(machine.held), {%{machine | blocked: nil, held: []}, []})

      {machine, [{:log, :warning, message} | Enum.reverse(effects)]}
    else
      {machine, []}
    end
  end

  @doc """
  A linearizable read's answer (once the engine says it may be served):
  `{:ok, value}`, `{:raise, kind, reason, stacktrace}` for a path that does
  not fit the state, `{:get_in, data, rest}` for the caller to finish with
  `Kernel.get_in(data, rest)` where the path reaches user code, or
  `{:error, {:halted, op}}`.
  """
  @spec read(t(), [term()]) :: term()
  def read(%__MODULE__{poison: %{op: op}}, _path), do: {:error, {:halted, op}}
  def read(%__MODULE__{blocked: %{version: v}}, _path), do: {:error, {:unsupported_version, v}}
  def read(%__MODULE__{app_state: app_state}, path), do: extract(app_state, path)

  @doc """
  A `consistency: :local` read: as `read/2`, but `{:error, :diverged}` on
  a diverged state, and served at a poison command (the state before it
  is the cluster's up to there). Refused while blocked on a version: the
  state may be one this code cannot read (a checkpoint it could not
  decode leaves the initial state), and the cluster runs code this
  replica cannot reproduce.
  """
  @spec read_local(t(), [term()]) :: term()
  def read_local(%__MODULE__{diverged: op}, _path) when op != nil, do: {:error, :diverged}

  def read_local(%__MODULE__{blocked: %{version: v}}, _path),
    do: {:error, {:unsupported_version, v}}

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

  # Halted at a poison command, or blocked on a version: from its op on,
  # executes and checkpoint requests wait (in order) for a committed skip
  # of that op, or for code that supports the version.
  defguardp stopped_by(stop, op) when is_map(stop) and op >= :erlang.map_get(:op, stop)

  defguardp waits(machine, op)
            when stopped_by(:erlang.map_get(:poison, machine), op) or
                   stopped_by(:erlang.map_get(:blocked, machine), op)

  defp apply_event({:execute, op, _, _, _} = event, machine, effects) when waits(machine, op),
    do: hold(event, machine, effects)

  defp apply_event({:execute, op, _, _, _, _} = event, machine, effects)
       when waits(machine, op),
       do: hold(event, machine, effects)

  defp apply_event({:snapshot, op} = event, machine, effects) when waits(machine, op),
    do: hold(event, machine, effects)

  # The engine's op: its commands are numbered (`meta.index`) from 0.
  defp apply_event({:execute, op, view, timestamp, requests}, machine, effects),
    do: apply_event({:execute, op, view, timestamp, requests, 0}, machine, effects)

  # The module's current code runs it (a hot code load may have changed
  # it), if it supports the version the op needs: the cluster's, or the
  # one a switch in the op names. `index` is the first command's
  # `meta.index`: 0, or where the rest of an op held by execute_all/3
  # resumes.
  defp apply_event({:execute, op, view, timestamp, requests, index} = event, machine, effects) do
    needed = needed_version(requests, machine.version)

    if supports?(machine, needed) do
      code = %{
        arity: Executor.arity(machine.module),
        meta: %{op: op, view: view, timestamp: timestamp, index: index},
        log?: Lifetime.first_execution?(machine.executed, op),
        needed: needed
      }

      # Lifetime tells the next server where this one died, if it dies in
      # handle_commit (two atomics writes per op).
      :ok = Lifetime.executing(machine.counters, op)
      result = execute_all(requests, code, {machine, effects})
      :ok = Lifetime.executing(machine.counters, 0)
      result
    else
      block(event, %{op: op, version: needed}, machine, effects)
    end
  end

  # A checkpoint is due: the state as of `op` (every execute up to it, and
  # none after, has been applied: events come in order), with the version.
  defp apply_event({:snapshot, op}, machine, effects) do
    bytes = checkpoint(machine.version, encode_snapshot(machine.module, machine.app_state))
    {machine, [{:snapshot, op, bytes} | effects]}
  catch
    kind, reason ->
      # No checkpoint at this op; the next one is tried as usual.
      message =
        "#{inspect(machine.group)}: encode_snapshot failed at op #{op}: " <>
          Exception.format(kind, reason, __STACKTRACE__)

      {machine, [{:log, :error, message} | effects]}
  end

  # Restart from a checkpoint, or a state sync: the state becomes the
  # checkpoint's (the executes that follow continue from it), unless this
  # node's code does not support the checkpoint's version: then it waits,
  # undecoded, for code that does.
  defp apply_event({:install_snapshot, op, bytes} = event, machine, effects) do
    {version, app_bytes} = version_of(bytes)

    if supports?(Executor.version(machine.module), version) do
      app_state = decode_snapshot(machine.module, app_bytes)
      # The engine executes again from the checkpoint on: held events are
      # stale, and a checkpoint at or past the poison op has it applied.
      poison = if machine.poison && op >= machine.poison.op, do: nil, else: machine.poison

      machine = %{
        machine
        | app_state: app_state,
          version: version,
          held: [],
          poison: poison,
          op: op
      }

      {%{machine | diverged: nil, blocked: nil}, effects}
    else
      block(event, %{op: op, version: version}, %{machine | held: []}, effects)
    end
  rescue
    error ->
      message =
        "#{inspect(machine.group)}: cannot decode the checkpoint at op #{op} " <>
          "(#{byte_size(bytes)} bytes): #{Exception.message(error)}; this node's server stops"

      reason = {:snapshot_decode_failed, op, Exception.message(error)}
      {machine, [{:fail, reason}, {:log, :error, message} | effects]}
  end

  # This replica's checkpoint differs from the one a quorum holds: its
  # state diverged. The engine executes and serves nothing until it has
  # installed the quorum's checkpoint (an `install_snapshot` event).
  defp apply_event({:diverged, op, digest, quorum}, machine, effects) do
    message =
      "#{inspect(machine.group)}: this replica's state diverged from the quorum's: " <>
        "its checkpoint at op #{op} has digest #{digest}, a quorum's has #{quorum} " <>
        "(a nondeterministic handle_commit or encode_snapshot?); it stops executing " <>
        "and serving, and recovers the quorum's state by state sync"

    {%{machine | diverged: op}, [{:log, :error, message} | effects]}
  end

  defp apply_event(_other, machine, effects), do: {machine, effects}

  # Executes an op's requests in order, checking again after each that
  # this node's code still supports the version the op needs: a hot code
  # load that rolls the module back may land during the op (even during a
  # request: handle_commit is an external call, and the next request runs
  # the old code). The request after which the code no longer supports it
  # is discarded (its new state and its result; the state is immutable)
  # and held, with every request after it, as the rest of the op, executed
  # once the code supports the version again, its commands numbered on
  # from where it stopped (so `meta.index` is the same as on a replica
  # that ran the op whole).
  defp execute_all([], code, {machine, effects}), do: {%{machine | op: code.meta.op}, effects}

  defp execute_all([request | rest] = requests, code, {machine, effects}) do
    {executed, executed_effects} = execute(request, code, {machine, effects})

    if supports?(machine, code.needed) do
      code = %{code | meta: %{code.meta | index: code.meta.index + commands(request)}}
      execute_all(rest, code, {executed, executed_effects})
    else
      %{op: op, view: view, timestamp: timestamp, index: index} = code.meta
      event = {:execute, op, view, timestamp, requests, index}
      block(event, %{op: op, version: code.needed}, machine, effects)
    end
  end

  defp commands({_client, _request, :executed, payload}), do: Executor.commands(payload)
  defp commands(_request), do: 0

  defp execute({client, request, :executed, payload}, code, {machine, effects}) do
    case Executor.switch_target(payload) do
      nil ->
        meta = Map.put(code.meta, :version, machine.version)

        {result, app_state} =
          Executor.apply(machine.module, code.arity, payload, meta, machine.app_state, code.log?)

        {%{machine | app_state: app_state}, [{:result, client, request, result} | effects]}

      version ->
        {machine, effects} = switch(machine, version, code, effects)
        {machine, [{:result, client, request, {:ok, machine.version}} | effects]}
    end
  end

  # Registrations, duplicates and evicted requests apply nothing.
  defp execute(_request, _code, acc), do: acc

  # The versions only go up: a switch to the version the cluster runs or
  # an older one (a proposal repeated by a new primary) changes nothing.
  defp switch(machine, version, code, effects) when version > machine.version do
    effects =
      if code.log?,
        do: [
          {:log, :info,
           "#{inspect(machine.group)}: the cluster runs state machine version #{version} " <>
             "from op #{code.meta.op} on (it ran #{machine.version})"}
          | effects
        ],
        else: effects

    {%{machine | version: version}, effects}
  end

  defp switch(machine, _version, _code, effects), do: {machine, effects}

  # The version an op needs: the cluster's, or the highest a switch in it
  # names. A plain recursion: it runs for every request executed.
  defp needed_version([], needed), do: needed

  defp needed_version([{_client, _request, :executed, payload} | rest], needed) do
    case Executor.switch_target(payload) do
      version when is_integer(version) and version > needed -> needed_version(rest, version)
      _ -> needed_version(rest, needed)
    end
  end

  defp needed_version([_request | rest], needed), do: needed_version(rest, needed)

  # Whether this node's code, as loaded now, supports version `needed`.
  defp supports?(%__MODULE__{module: module}, needed),
    do: supports?(Executor.version(module), needed)

  defp supports?(supported, needed), do: is_integer(supported) and supported >= needed

  # This node's code does not support the version the cluster runs from
  # `blocked.op` on: the replica stops there (keeping `event`), rather than
  # execute what the others execute otherwise.
  defp block(event, %{op: op, version: version} = blocked, machine, effects) do
    module = inspect(machine.module)

    code =
      case Executor.version(machine.module) do
        :invalid -> "#{module}.version/0 does not return a non-negative integer"
        supported -> "this node's code supports version #{supported} (#{module}.version/0)"
      end

    message =
      "#{inspect(machine.group)}: the cluster runs state machine version #{version} from op #{op} on, but " <>
        "#{code}; the replica stops executing at op #{op} (it keeps its log and keeps " <>
        "voting), and its commits and reads fail with {:unsupported_version, #{version}}, " <>
        "until code that supports version #{version} is loaded (a hot code load, or a " <>
        "restart with the new code)"

    hold(event, %{machine | blocked: blocked}, [{:log, :error, message} | effects])
  end

  defp hold(event, machine, effects) do
    machine = %{machine | held: [event | machine.held]}

    cond do
      machine.poison && skips_poison?(event, machine.poison.op) -> skip_poison(machine, effects)
      machine.blocked -> {machine, refuse(event, machine.blocked.version, effects)}
      true -> {machine, effects}
    end
  end

  # This node's callers of held commands get the error now rather than
  # wait: the cluster committed them, and this replica executes them once
  # its code supports the version.
  defp refuse(event, version, effects) when elem(event, 0) == :execute do
    refused =
      for {client, request, :executed, _payload} <- elem(event, 4),
          do: {:result, client, request, {:error, {:unsupported_version, version}}}

    Enum.reverse(refused, effects)
  end

  defp refuse(_event, _version, effects), do: effects

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
      {:log, :warning, "#{inspect(machine.group)}: op #{op} skipped; the replica executes again"}
      | effects
    ]

    {poisoned, rest} = Enum.split_with(Enum.reverse(held), &match?({:execute, ^op, _, _, _}, &1))

    skipped =
      for {:execute, _, _, _, requests} <- poisoned,
          {client, request, :executed, _payload} <- requests,
          do: {:result, client, request, {:error, {:skipped, op}}}

    apply_events(rest, {%{machine | poison: nil, held: []}, Enum.reverse(skipped, effects)})
  end

  # Applies held events again, in order (each may be held again).
  defp apply_events(events, acc) do
    Enum.reduce(events, acc, fn event, {machine, effects} ->
      apply_event(event, machine, effects)
    end)
  end

  defp checkpoint(0, <<@versioned, _::binary>>) do
    raise ArgumentError,
          "encode_snapshot's output starts with #{inspect(@versioned)}, which Visor reserves " <>
            "for checkpoints of a state machine version above 0"
  end

  defp checkpoint(0, bytes), do: bytes
  defp checkpoint(version, bytes), do: <<@versioned, version::64, bytes::binary>>

  defp version_of(<<@versioned, version::64, bytes::binary>>), do: {version, bytes}
  defp version_of(bytes), do: {0, bytes}

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
