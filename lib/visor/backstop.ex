defmodule Visor.Backstop do
  @moduledoc false
  # The pipelined commands' backstop (`Visor.pipeline/3`): one process per
  # group on each node, which answers a command `{:error, :timeout}` when
  # this node's server has not answered it by its deadline plus a grace
  # (a server busy in a slow `handle_commit`, a member whose code drops a
  # spare's relayed command, any message lost on the way). It does
  # nothing else, so it is never busy when its timers fire.
  #
  # It cannot add a second message: the caller's reference is an alias
  # created with the monitor of the server (`alias: :reply_demonitor`),
  # which the runtime deactivates when the first message through it, or
  # the monitor's `:DOWN`, arrives. Whichever of the server's answer, the
  # backstop's `:timeout` and the `:DOWN` comes first is the only one; the
  # others are dropped by the runtime. (A timer cannot be aimed at an
  # alias itself, `erlang:send_after/3` takes a pid or a name, hence this
  # process.) The server cancels the timer before it answers, so the
  # backstop only hears of the commands it has to answer; a timer that
  # fired already makes the server send nothing and report the `:timeout`
  # in its telemetry span.

  use GenServer

  @doc "Starts the group's backstop (under `Visor.Supervisor`)."
  @spec start_link(Visor.Supervisor.group()) :: GenServer.on_start()
  def start_link(group),
    do: GenServer.start_link(__MODULE__, nil, name: Visor.Supervisor.name(group, :backstop))

  @doc false
  def child_spec(group), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [group]}}

  @doc """
  Arms the backstop of `group`'s pipelined command `ref` (the caller's
  alias): `{ref, {:error, :timeout}}` in `ms`, unless the timer returned
  is cancelled first. A keyed group's backstop is aimed at by pid (a timer
  takes no `:via` name): `nil`, no timer, when it is not running.
  """
  @spec arm(Visor.Supervisor.group(), reference(), non_neg_integer()) :: reference() | nil
  def arm(module, ref, ms) when is_atom(module),
    do: :erlang.send_after(ms, Visor.Supervisor.name(module, :backstop), {:visor_backstop, ref})

  def arm(group, ref, ms) do
    with pid when is_pid(pid) <- Visor.Supervisor.whereis(group, :backstop),
         do: :erlang.send_after(ms, pid, {:visor_backstop, ref})
  end

  @impl GenServer
  def init(nil), do: {:ok, nil}

  @impl GenServer
  def handle_info({:visor_backstop, ref}, state) when is_reference(ref) do
    send(ref, {ref, {:error, :timeout}})
    {:noreply, state}
  end

  def handle_info(_message, state), do: {:noreply, state}

  # Any node may send to a registered name: nothing it sends stops this
  # process (its exit would restart the group, `:one_for_all`).
  @impl GenServer
  def handle_call(_request, _from, state), do: {:reply, {:error, :unknown_call}, state}

  @impl GenServer
  def handle_cast(_request, state), do: {:noreply, state}
end
