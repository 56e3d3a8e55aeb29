defmodule Visor.Executor do
  @moduledoc false
  # Applies one committed command to the application state.
  #
  # Every replica runs this on the same commands in the same order, so it must
  # reach the same result everywhere, failures included: a callback that
  # raises, throws, exits or returns a malformed value leaves the state as it
  # was (on every replica, since every replica fails the same way) and yields
  # `{:error, {:handle_commit_failed, reason}}` for the caller. Nothing a
  # callback does can crash the server or make replicas diverge, as long as
  # the callback itself is deterministic.
  #
  # What cannot be caught here: a process linked to the callback that dies
  # sends the server an exit signal, which the server traps (it becomes a
  # message, counted in `unexpected_messages`); but a callback that kills
  # its own process (`Process.exit(self(), :kill)`) or the VM
  # (`:erlang.halt/0`) cannot be stopped. `Visor.Server` then stops at that
  # op after it killed the server twice in a row, until `Visor.skip/3`
  # (docs/operations.md, "Poison commands").
  #
  # A failure is logged as a warning, with its stacktrace, by every replica
  # (each fails the same way, by design), once: a replica that executes the
  # log again (a restarted server replays it) passes `log?: false`.

  require Logger

  # `Visor.skip/3`'s command, the switch to a new state machine version
  # (Visor.Server.Upgrade), and a batch of one caller's pipelined commands
  # (Visor.pipeline/3), executed in order. Visor.commit/3 encodes every
  # command with term_to_binary/1, whose output starts with 131: a payload
  # starting with 0, 1 or 2 can never be a user's command.
  @skip_tag 0
  @switch_tag 1
  @batch_tag 2

  # What this code executes beyond users' commands, skips and switches:
  # servers tell each other (`features/0`), and a server submits a batch
  # only once every member's code said it executes batches. Older code
  # would run a batch's payload as a command that fails to decode
  # (`handle_commit_failed`, state unchanged) where the others apply it.
  @features [:batch]

  # The largest version a switch entry holds.
  @max_version 0xFFFF_FFFF_FFFF_FFFF

  @typedoc """
  What the caller of `commit` gets back; for a batch, what each of its
  commands' callers gets, in order.
  """
  @type result ::
          {:ok, reply :: term()}
          | {:error, {:handle_commit_failed, term()}}
          | {:batch, [result()]}

  @doc """
  The `handle_commit` arity a module's current code implements (3 wins
  when both exist, so a module can add metadata without removing its /2).
  Asked again at each execution: a hot code load may change it.
  """
  @spec arity(module()) :: 2 | 3
  def arity(module) do
    Code.ensure_loaded(module)
    if function_exported?(module, :handle_commit, 3), do: 3, else: 2
  end

  @doc """
  The state machine version a module's current code supports: its
  `version/0`, 0 when it defines none, or `:invalid` when `version/0`
  raises or returns anything but an integer in 0..2^64 - 1 (code that
  supports no version: the replica refuses to execute, and says why; a
  switch entry holds 64 bits, so a larger version could never be
  proposed).
  """
  @spec version(module()) :: non_neg_integer() | :invalid
  def version(module) do
    # Asked after every command (a hot code load may land mid-op): a
    # loaded module is asked at once; only one not loaded goes through
    # the code server (`Code.ensure_loaded/1`, a tenth of a backup's
    # server time when it ran for every command).
    cond do
      function_exported?(module, :version, 0) -> checked(module.version())
      :erlang.module_loaded(module) -> 0
      match?({:module, _}, Code.ensure_loaded(module)) -> version(module)
      true -> 0
    end
  catch
    _kind, _reason -> :invalid
  end

  defp checked(version) when version in 0..@max_version, do: version
  defp checked(_other), do: :invalid

  @doc """
  Decodes `payload` and applies it: `{result, new_state}`. `new_state` is
  `state` itself when the callback failed; the failure is logged unless
  `log?` is `false`.
  """
  @spec apply(module(), 2 | 3, binary(), Visor.meta(), term(), boolean()) :: {result(), term()}
  def apply(module, arity, payload, meta, state, log? \\ true)

  def apply(_module, _arity, <<@skip_tag, _op::64>>, _meta, state, _log?),
    do: {{:ok, :ok}, state}

  # Each command of a batch as if it were alone, in order: one that fails
  # leaves the state as the command before it left it, and the next runs.
  # Each gets its own `meta.index`, from the batch's on.
  def apply(module, arity, <<@batch_tag, _::binary>> = payload, meta, state, log?) do
    {results, {state, _index}} =
      Enum.map_reduce(batch_commands(payload), {state, meta.index}, fn command, {state, index} ->
        {result, state} = apply(module, arity, command, %{meta | index: index}, state, log?)
        {result, {state, index + 1}}
      end)

    {{:batch, results}, state}
  end

  def apply(module, arity, payload, meta, state, log?) do
    command = :erlang.binary_to_term(payload)

    returned =
      case arity do
        3 -> module.handle_commit(command, meta, state)
        2 -> module.handle_commit(command, state)
      end

    case returned do
      {:ok, reply, new_state} -> {{:ok, reply}, new_state}
      other -> failed({:bad_return, other}, [], {module, meta, state, log?})
    end
  catch
    :error, reason ->
      reason = Exception.normalize(:error, reason, __STACKTRACE__)
      failed(reason, __STACKTRACE__, {module, meta, state, log?})

    :throw, value ->
      failed({:throw, value}, __STACKTRACE__, {module, meta, state, log?})

    :exit, reason ->
      failed({:exit, reason}, __STACKTRACE__, {module, meta, state, log?})
  end

  defp failed(reason, stacktrace, {module, meta, state, log?}) do
    if log? do
      Logger.warning(
        "#{inspect(module)}.handle_commit failed at op #{meta.op} (state unchanged): " <>
          describe(reason) <> trace(stacktrace)
      )
    end

    {{:error, {:handle_commit_failed, reason}}, state}
  end

  defp trace([]), do: ""
  defp trace(stacktrace), do: "\n" <> Exception.format_stacktrace(stacktrace)

  # An exception's message/1 is user code too, and may itself raise.
  defp describe(%{__exception__: true} = exception) do
    Exception.format_banner(:error, exception)
  rescue
    _ -> inspect(exception)
  end

  defp describe(reason), do: inspect(reason)

  @doc """
  Whether `payload` may be a caller's command: `:erlang.term_to_binary/1`'s
  output (`Visor.commit/3` encodes so), which starts with 131. The server
  refuses any other commit payload (`{:error, :malformed_command}`): those
  starting with 0 or 1 are Visor's own entries (a skip, a version
  switch), which only `Visor.skip/3` and the primary's server submit,
  and a commit call may come from any node.
  """
  @spec command?(binary()) :: boolean()
  def command?(<<131, _::binary>>), do: true
  def command?(_payload), do: false

  @doc "The payload of a command that skips the poison command at `op` (`Visor.skip/3`)."
  @spec skip_payload(pos_integer()) :: binary()
  def skip_payload(op) when op in 1..0xFFFF_FFFF_FFFF_FFFF, do: <<@skip_tag, op::64>>

  @doc "The op a skip payload skips, or `nil` for any other payload."
  @spec skip_target(binary()) :: pos_integer() | nil
  def skip_target(<<@skip_tag, op::64>>), do: op
  def skip_target(_payload), do: nil

  @doc """
  The payload of the entry that switches the cluster to state machine
  `version` (`Visor.Server.Upgrade`); `Visor.Server.Machine` executes it,
  never the module's `handle_commit`.
  """
  @spec switch_payload(non_neg_integer()) :: binary()
  def switch_payload(version) when version in 0..@max_version,
    do: <<@switch_tag, version::64>>

  @doc "The version a switch payload names, or `nil` for any other payload."
  @spec switch_target(binary()) :: non_neg_integer() | nil
  def switch_target(<<@switch_tag, version::64>>), do: version
  def switch_target(_payload), do: nil

  @doc "What this code executes besides commands, skips and switches (see the top)."
  @spec features() :: [atom()]
  def features, do: @features

  @doc """
  The payload of a batch: callers' commands (each `command?/1`), executed
  in order as one request. Each is prefixed with its size.
  """
  @spec batch_payload([binary(), ...]) :: binary()
  def batch_payload([_ | _] = commands) do
    IO.iodata_to_binary([@batch_tag | Enum.map(commands, &[<<byte_size(&1)::32>>, &1])])
  end

  @doc "The bytes `batch_payload/1` adds to its commands: a tag, and a size for each."
  @spec batch_overhead(non_neg_integer()) :: pos_integer()
  def batch_overhead(count), do: 1 + 4 * count

  @doc """
  How many `meta.index` values executing `payload` takes: one per
  `handle_commit` call (a batch's commands each, a command one; a skip
  and a switch, which run none, take none).
  """
  @spec commands(binary()) :: non_neg_integer()
  def commands(<<@batch_tag, _::binary>> = payload), do: length(batch_commands(payload))
  def commands(<<@skip_tag, _::binary>>), do: 0
  def commands(<<@switch_tag, _::binary>>), do: 0
  def commands(_payload), do: 1

  @doc "The commands of a batch payload, in order (`[]` for any other payload)."
  @spec batch_commands(binary()) :: [binary()]
  def batch_commands(<<@batch_tag, rest::binary>>), do: split(rest, [])
  def batch_commands(_payload), do: []

  defp split(<<size::32, command::binary-size(size), rest::binary>>, acc),
    do: split(rest, [command | acc])

  defp split(_rest, acc), do: Enum.reverse(acc)
end
