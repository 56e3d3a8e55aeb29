defmodule Visor.Groups.Host do
  @moduledoc false
  # A module's keyed groups on one node (under `Visor.Groups`), registered
  # under one atom per module (`Visor.Groups.host/1`). Two jobs:
  #
  #   * **Peers' messages.** A keyed group's processes have `:via` names
  #     in the module's registry, which a peer cannot address on another
  #     node; a peer sends `{:visor_to, key, role, message}` to this
  #     process instead (`Visor.Supervisor.send_remote/5`), which looks the
  #     process up and hands the message on (dropped when the group does
  #     not run here: the protocol resends what matters). One message
  #     order is kept: the messages one process sends to another through
  #     this one arrive in the order sent. Why not peers' pids, exchanged
  #     at formation: a restarted router or server has a new pid, which
  #     every peer would have to learn before it can reach it, and a
  #     stale pid drops messages silently; a lookup at arrival has neither
  #     problem. The cost is one more hop per peer message, on one process
  #     per module per node; the node-level links of docs/design/
  #     many-groups.md (step 3) replace it.
  #   * **Starting, stopping, restarting.** Groups are started here (one
  #     `Visor.Supervisor` each, a `:temporary` child of a partitioned
  #     `DynamicSupervisor`), monitored, and started again 1 s after they
  #     exit, rather than by a supervisor's restart intensity, which one
  #     crash-looping group would exhaust for every group of the module.
  #     What this node hosts is recorded in `Visor.Lifetime`, which outlives
  #     this process and `Visor.Groups`: a restarted host starts again what
  #     it hosted, and each group rejoins (recovering, never fresh) as a
  #     restarted default group does. `stop/2` forgets it.
  #   * **Adopting.** A node that restarted (its VM, and its memory with
  #     it) does not know which groups it was a member of. So at its start,
  #     and whenever a node connects, the host asks the other node's host
  #     which of its groups name this node a member, and starts those that
  #     do not run here. Each one's formation finds that the peers
  #     remember an earlier incarnation of this node, and the replica
  #     rejoins, recovering, as a restarted default group's does
  #     (`Visor.Formation`): a keyed group gets its full membership back
  #     after a node restart, without a `start_group` call.
  #
  # It runs in `Visor.Guard`: no message a peer sends crashes it.

  require Logger

  alias Visor.{Lifetime, Options}

  # The processes a peer's message may be for.
  @roles [:router, :formation, :server]
  @restart_ms 1_000

  defstruct [:module, groups: %{}, monitors: %{}]

  @doc false
  def child_spec(module), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [module]}}

  @doc "Starts the host of `module`'s keyed groups (under `Visor.Groups`)."
  @spec start_link(module()) :: GenServer.on_start()
  def start_link(module),
    do: Visor.Guard.start_link(__MODULE__, module, Visor.Groups.host(module))

  @doc false
  def init(module) do
    :ok = :net_kernel.monitor_nodes(true)
    send(self(), :visor_restore)
    {:ok, %__MODULE__{module: module}}
  end

  @doc false
  # Only under a key: nil names the module's default group.
  def handle_call({:visor_start, key, members}, _from, state) when key != nil do
    case members(state.module, members) do
      {:ok, members} ->
        {reply, state} = start(state, key, members)
        {:reply, reply, state}

      error ->
        {:reply, error, state}
    end
  end

  def handle_call({:visor_stop, key}, _from, state) do
    {reply, state} = stop(state, key)
    {:reply, reply, state}
  end

  def handle_call(_request, _from, state), do: {:reply, {:error, :unknown_call}, state}

  @doc false
  def handle_cast(_request, state), do: {:noreply, state}

  @doc false
  def handle_info({:visor_to, key, role, message}, state) when role in @roles do
    case Registry.lookup(Visor.Groups.registry(state.module), {key, role}) do
      [{pid, _}] -> send(pid, message)
      [] -> :ok
    end

    {:noreply, state}
  end

  # What this node hosted before this process started (it restarted, or
  # Visor.Groups did): started again, or watched if it still runs.
  def handle_info(:visor_restore, state) do
    state =
      Enum.reduce(Lifetime.hosted(state.module), state, fn {key, members}, state ->
        state |> start(key, members) |> elem(1)
      end)

    adopt_from(Node.list(), state.module)
    {:noreply, state}
  end

  def handle_info({:nodeup, node}, state) do
    adopt_from([node], state.module)
    {:noreply, state}
  end

  def handle_info({:nodedown, _node}, state), do: {:noreply, state}

  # A group another node runs with this one among its members (see the
  # top of this module); started here unless it runs already.
  def handle_info({:visor_adopt, key, members}, state) when key != nil do
    with {:ok, members} <- members(state.module, members),
         nil <- Visor.Groups.running(state.module, key) do
      {:noreply, state |> start(key, members) |> elem(1)}
    else
      _ -> {:noreply, state}
    end
  end

  def handle_info({:DOWN, monitor, :process, _pid, reason}, state)
      when is_map_key(state.monitors, monitor) do
    {key, monitors} = Map.pop(state.monitors, monitor)
    state = %{state | monitors: monitors, groups: Map.delete(state.groups, key)}

    Logger.warning(
      "#{inspect({state.module, key})}: this node's processes of the group exited " <>
        "(#{inspect(reason)}); starting them again in #{@restart_ms} ms (its replica rejoins)"
    )

    {:noreply, retry(state, key)}
  end

  def handle_info({:timeout, _timer, {:visor_restart, key}}, state) do
    case Lifetime.hosting({state.module, key}) do
      nil -> {:noreply, state}
      members -> {:noreply, state |> start(key, members) |> elem(1)}
    end
  end

  def handle_info(_message, state), do: {:noreply, state}

  # Any node may send a start or an adoption: a member list that is not
  # one, or that does not name this node (a keyed group has no spares),
  # is refused, never recorded, and never crashes this process.
  defp members(module, members) do
    members = Visor.Options.nodes!(module, members)
    if node() in members, do: {:ok, members}, else: {:error, {:not_a_member, node()}}
  rescue
    e in ArgumentError -> {:error, {:bad_members, Exception.message(e)}}
  end

  # Asks `nodes`' hosts, in a process of its own (a node may be slow to
  # answer), for their groups that name this node a member.
  defp adopt_from(nodes, module) do
    host = self()

    spawn(fn ->
      for node <- nodes,
          {key, members, _server} <- groups_on(node, module),
          node() in members,
          do: send(host, {:visor_adopt, key, members})
    end)

    :ok
  end

  defp groups_on(node, module) do
    :erpc.call(node, Visor.Groups, :local, [module], 5_000)
  catch
    _kind, _reason -> []
  end

  defp start(state, key, members) do
    case Visor.Groups.running(state.module, key) do
      {pid, ^members} ->
        {{:ok, :already_started}, watch(state, key, pid)}

      {_pid, others} ->
        {{:error, {:already_started, %{members: others}}}, state}

      nil ->
        start_new(state, key, members)
    end
  end

  defp start_new(state, key, members) do
    group = {state.module, key}
    %{opts: opts} = Visor.Groups.host_options(state.module)
    config = Options.keyed(Options.validate!(state.module, [nodes: members] ++ opts), key)
    # Recorded first: a group this host started is one it restarts.
    :ok = Lifetime.host(group, config.membership |> elem(1))
    spec = Supervisor.child_spec({Visor.Supervisor, config}, restart: :temporary)
    partition = {:via, PartitionSupervisor, {Visor.Groups.partitions(state.module), key}}

    case DynamicSupervisor.start_child(partition, spec) do
      {:ok, pid} ->
        {{:ok, :started}, watch(state, key, pid)}

      {:error, reason} ->
        Logger.warning(
          "#{inspect(group)}: cannot start this node's processes of the group " <>
            "(#{inspect(reason)}); trying again in #{@restart_ms} ms"
        )

        {{:error, reason}, retry(state, key)}
    end
  end

  defp watch(state, key, pid) do
    case state.groups do
      %{^key => {^pid, _monitor}} ->
        state

      groups ->
        monitor = Process.monitor(pid)

        state = forget_monitor(state, Map.get(groups, key))

        %{
          state
          | groups: Map.put(state.groups, key, {pid, monitor}),
            monitors: Map.put(state.monitors, monitor, key)
        }
    end
  end

  defp forget_monitor(state, nil), do: state

  defp forget_monitor(state, {_pid, monitor}) do
    Process.demonitor(monitor, [:flush])
    %{state | monitors: Map.delete(state.monitors, monitor)}
  end

  defp retry(state, key) do
    _ = :erlang.start_timer(@restart_ms, self(), {:visor_restart, key})
    state
  end

  defp stop(state, key) do
    group = {state.module, key}
    hosted? = Lifetime.hosting(group) != nil
    state = forget_monitor(state, Map.get(state.groups, key))
    state = %{state | groups: Map.delete(state.groups, key)}

    running =
      case Visor.Groups.running(state.module, key) do
        {pid, _members} ->
          partition = {:via, PartitionSupervisor, {Visor.Groups.partitions(state.module), key}}
          _ = DynamicSupervisor.terminate_child(partition, pid)
          true

        nil ->
          false
      end

    :ok = Lifetime.forget(group)
    {if(running or hosted?, do: :ok, else: :no_group), state}
  end
end
