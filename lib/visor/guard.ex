defmodule Visor.Guard do
  @moduledoc false
  # Runs a `GenServer` callback module in a receive loop of its own, so that
  # no message a peer can send crashes the process.
  #
  # `Visor.Router`, `Visor.Server` and `Visor.Formation` are registered
  # names that any connected node can reach. OTP's `gen_server` handles two message shapes
  # itself, before any callback sees them, and crashes on malformed ones: a
  # call whose `from` is not `{pid, tag}` (`{:"$gen_call", :junk, :status}`:
  # the reply to `:junk` raises) and a system message with a malformed
  # sender (`{:system, :junk, :junk}`: `sys` replies to `:junk`). A crashed
  # server is a replica that lost its memory, so this loop checks both shapes
  # first: a well-formed call or system message is handled exactly as
  # `gen_server` would (`GenServer.call/3`, `GenServer.reply/2` and the
  # `:sys` functions work as usual); a malformed one goes to the module's
  # `handle_info/2` like any other unexpected message (the router and the
  # server count those in `status().stats.unexpected_messages`).
  #
  # Only what the three modules use is supported: `init/1` returning `{:ok,
  # state}` or `{:stop, reason}`; `handle_call/3`, `handle_cast/2`,
  # `handle_info/2` returning `{:reply, reply, state}`, `{:noreply, state}`
  # (either with an integer timeout) or `{:stop, reason, state}`; and
  # `format_status/1` (OTP 25's), which `:sys.get_status/1` shows the state
  # through, as gen_server does.
  #
  # Nor may a crash show the state: a callback that raises has the arguments
  # of its stacktrace's calls replaced by their count (an Erlang stacktrace
  # carries the arguments of a call that matched no clause, the state among
  # them) before the process exits with it.

  @doc """
  Starts `module` with `arg`, registered as `name` (a local atom, or a
  keyed group's `{:via, Registry, _}` name), linked to the caller.
  """
  @spec start_link(module(), term(), atom() | {:via, module(), term()}) :: GenServer.on_start()
  def start_link(module, arg, name) do
    :proc_lib.start_link(__MODULE__, :init_it, [self(), module, arg, name])
  end

  @doc false
  def init_it(parent, module, arg, name) do
    # What observer and `:proc_lib.initial_call/1` show, as for a GenServer
    # of `module` (and how a profile tells routers from servers).
    Process.put(:"$initial_call", {module, :init, 1})

    if register(name) do
      case callback(module, :init, [arg]) do
        {:ok, state} ->
          :proc_lib.init_ack({:ok, self()})
          loop(parent, [], {module, state, :infinity})

        {:stop, reason} ->
          :proc_lib.init_ack({:error, reason})
          exit(reason)
      end
    else
      :proc_lib.init_ack({:error, {:already_started, GenServer.whereis(name)}})
    end
  end

  defp register({:via, registry, name}), do: registry.register_name(name, self()) == :yes

  defp register(name) do
    Process.register(self(), name)
  rescue
    ArgumentError -> false
  end

  defp loop(parent, debug, {module, state, timeout} = misc) do
    receive do
      message -> handle(message, parent, debug, misc)
    after
      timeout ->
        reply(callback(module, :handle_info, [:timeout, state]), nil, parent, debug, module)
    end
  end

  # Returns before the loop goes on, so the loop stays a tail call.
  defp callback(module, function, args) do
    apply(module, function, args)
  catch
    kind, reason -> :erlang.raise(kind, reason, Enum.map(__STACKTRACE__, &without_args/1))
  end

  defp without_args({module, function, args, location}) when is_list(args),
    do: {module, function, length(args), location}

  defp without_args(entry), do: entry

  defp handle({:system, from, request}, parent, debug, misc) do
    if valid_from?(from) do
      :sys.handle_system_msg(request, from, parent, __MODULE__, debug, misc)
    else
      unexpected({:system, from, request}, parent, debug, misc)
    end
  end

  # A process that traps exits (Visor.Server does) gets its supervisor's
  # EXIT signal as this message: it ends the process, as in gen_server. One
  # that does not (Visor.Formation) is killed by the signal itself, so for
  # it this message can only be a plain one that a peer sent, naming the
  # parent's pid (pids are no secret): an ordinary unexpected message.
  defp handle({:EXIT, parent, reason} = message, parent, debug, {module, state, _} = misc) do
    if Process.info(self(), :trap_exit) == {:trap_exit, true},
      do: terminate(module, reason, state),
      else: unexpected(message, parent, debug, misc)
  end

  defp handle({:"$gen_call", from, request} = message, parent, debug, {module, state, _} = misc) do
    if valid_from?(from),
      do:
        reply(callback(module, :handle_call, [request, from, state]), from, parent, debug, module),
      else: unexpected(message, parent, debug, misc)
  end

  defp handle({:"$gen_cast", request}, parent, debug, {module, state, _}) do
    reply(callback(module, :handle_cast, [request, state]), nil, parent, debug, module)
  end

  defp handle(message, parent, debug, misc), do: unexpected(message, parent, debug, misc)

  defp unexpected(message, parent, debug, {module, state, _}) do
    reply(callback(module, :handle_info, [message, state]), nil, parent, debug, module)
  end

  # What GenServer.reply/2 accepts: {pid, tag} (tag a reference, or an
  # alias list in OTP 24+). A from naming a pid of another node is fine:
  # the reply is a plain send.
  defp valid_from?({pid, _tag}) when is_pid(pid), do: true
  defp valid_from?(_), do: false

  defp reply(result, from, parent, debug, module) do
    case result do
      {:reply, answer, state} ->
        GenServer.reply(from, answer)
        loop(parent, debug, {module, state, :infinity})

      {:reply, answer, state, timeout} ->
        GenServer.reply(from, answer)
        loop(parent, debug, {module, state, timeout})

      {:noreply, state} ->
        loop(parent, debug, {module, state, :infinity})

      {:noreply, state, timeout} ->
        loop(parent, debug, {module, state, timeout})

      {:stop, reason, state} ->
        terminate(module, reason, state)
    end
  end

  defp terminate(module, reason, state) do
    if function_exported?(module, :terminate, 2), do: module.terminate(reason, state)
    exit(reason)
  end

  # ---- :sys callbacks -----------------------------------------------------

  @doc false
  def system_continue(parent, debug, misc), do: loop(parent, debug, misc)

  @doc false
  def system_terminate(reason, _parent, _debug, {module, state, _}),
    do: terminate(module, reason, state)

  # :sys.get_status/1 of a process run by this module (not gen_server): the
  # state as the callback module's format_status/1 shows it, in
  # gen_server's layout.
  @doc false
  def format_status(_opt, [_pdict, _sys_state, _parent, _debug, {module, state, _timeout}]) do
    state =
      if function_exported?(module, :format_status, 1),
        do: module.format_status(%{state: state}).state,
        else: state

    [{:data, [{~c"State", state}]}]
  end

  @doc false
  def system_get_state({_module, state, _}), do: {:ok, state}

  @doc false
  def system_replace_state(fun, {module, state, timeout}) do
    new_state = fun.(state)
    {:ok, new_state, {module, new_state, timeout}}
  end

  @doc false
  def system_code_change(misc, _module, _old_vsn, _extra), do: {:ok, misc}
end
