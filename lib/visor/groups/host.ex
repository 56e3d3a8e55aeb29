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
  #     per module per node; so routers use it only until they have heard
  #     from each other, and then send to each other's pids, monitored
  #     (`Visor.Router`): protocol messages may be lost, a server's not.
  #   * **Starting, stopping, restarting.** Groups are started here (one
  #     `Visor.Supervisor` each, a `:temporary` child of a partitioned
  #     `DynamicSupervisor`), monitored, and started again after they
  #     exit or fail to start, 1 s after a first failure and longer after
  #     each failure in a row (`Visor.Groups.Backoff`, at most 30 s),
  #     rather than by a supervisor's restart intensity, which one
  #     crash-looping group would exhaust for every group of the module.
  #     What this node hosts is recorded in `Visor.Lifetime`, which outlives
  #     this process and `Visor.Groups`: a restarted host starts again what
  #     it hosted, and each group rejoins (recovering, never fresh) as a
  #     restarted default group does. `stop/2` forgets it.
  #   * **Adopting.** A node that restarted (its VM, and its memory with
  #     it) does not know which groups it was a member of. So at its start,
  #     and whenever a node connects, the host asks the other node's host
  #     which of its formed groups name this node a member
  #     (`Visor.Groups.offers/2`), and starts those that do not run here.
  #     Each one's formation finds that the peers remember an earlier
  #     incarnation of this node, and the replica rejoins, recovering, as
  #     a restarted default group's does (`Visor.Formation`): a keyed
  #     group gets its full membership back after a node restart, without
  #     a `start_group` call.
  #
  #   * **Disk mode.** Each group's store is a directory of its own,
  #     claimed (`Visor.Groups.Stores.claim/4`) by the start's process
  #     before the store is created, with a record of its key and
  #     instance. When this process starts it also starts every group
  #     recorded there: after a VM restart `Visor.Lifetime` is empty, and
  #     each replica restarts from its store (even if every member
  #     restarted, which adoption cannot cover). A stop removes the
  #     directory once the group's processes exited.
  #
  #   * **Stopped groups.** A host that stops a group keeps a tombstone of
  #     the instance it stopped (`Visor.Lifetime.stopped/2`): a member cut
  #     off at the stop that still runs that instance, when it connects
  #     again, is not adopted from but told to stop it (`{:visor_stale,
  #     key, instance}`), and the host never starts that instance again.
  #     So is a member whose node was down at the stop and that restarted
  #     the instance from its store (disk mode): its host, when it starts,
  #     tells the connected hosts what it runs (`{:visor_hosted, node,
  #     hosted}`), and those that stopped any of it answer so. In disk
  #     mode the tombstones outlive the VM (`Visor.Groups.Tombstones`:
  #     each appended and synced before the stop goes on, loaded when
  #     this process starts), so even nodes that stopped the group and
  #     restarted since answer so, and a store of a stopped instance found
  #     at the start is removed, not restarted.
  #
  # Instances. Every message that starts, stops or adopts a group names
  # the instance it means (`t:Visor.Lifetime.instance/0`: the members and
  # the generation `Visor.start_group/2` chose), never just the key: a
  # stop or a stale notice that arrives late, after the key was started
  # again with the same members, names the old instance and leaves the
  # new one alone; and the generation is part of the cluster id, so the
  # replicas of two instances never take each other's messages.
  #
  # One instance per key: a host never runs or records two groups of one
  # key, and never replaces what it recorded with another instance (a
  # start or adoption of another is refused with `{:error,
  # {:already_started, %{members: recorded}}}`), so a group whose
  # processes are between exit and restart keeps its place.
  #
  # Starts run outside this process (the group's `Visor.Server` runs
  # `initial_state/1` while it starts, which may be slow): the caller is
  # answered when its group's start ends, and meanwhile this process
  # carries messages and starts other groups.
  #
  # It runs in `Visor.Guard`: no message a peer sends crashes it, and a
  # member list from a peer is checked for shape before anything else.

  require Logger

  alias Visor.{Lifetime, Options}
  alias Visor.Formation.Decider
  alias Visor.Groups.{Backoff, Stores, Tombstones}

  # The processes a peer's message may be for.
  @roles [:router, :formation, :server]
  # How long a stop waits for a group's supervisor before it kills it.
  @terminate_ms 2_000

  # groups: key => {supervisor, monitor}; starting: key => %{ref:,
  # instance:, waiters:, keep?:, partition:} (waiters: the callers to
  # answer; keep?: on failure, try again rather than forget, as the group
  # was recorded here before, or adopted; partition: where it starts).
  # backoff: key => Visor.Groups.Backoff, for groups that failed here;
  # stopping: key => %{ref:, waiters:, deferred:}, the groups whose
  # processes are ending (stop/4; deferred: the starts that wait);
  # restarts: key => the timer of its next start after a failure;
  # keyed_dir: where the groups' stores are in disk mode, else nil.
  defstruct [
    :module,
    :keyed_dir,
    groups: %{},
    monitors: %{},
    starting: %{},
    backoff: %{},
    stopping: %{},
    restarts: %{}
  ]

  @doc false
  def child_spec(module), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [module]}}

  @doc "Starts the host of `module`'s keyed groups (under `Visor.Groups`)."
  @spec start_link(module()) :: GenServer.on_start()
  def start_link(module),
    do: Visor.Guard.start_link(__MODULE__, module, Visor.Groups.host(module))

  @doc false
  def init(module) do
    :ok = :net_kernel.monitor_nodes(true)
    %{keyed_dir: keyed_dir} = Visor.Groups.host_options(module)
    state = %__MODULE__{module: module, keyed_dir: keyed_dir}
    :ok = load_tombstones(state)
    :ok = record_on_disk(state)
    send(self(), :visor_restore)
    {:ok, state}
  end

  # Disk mode: the tombstones this node recorded (Visor.Groups.Tombstones),
  # back in Visor.Lifetime before the stores are scanned and any peer is
  # heard: after a VM restart it is empty, and only the file says which
  # instances this node stopped.
  defp load_tombstones(%{keyed_dir: nil}), do: :ok

  defp load_tombstones(state) do
    for {key, instance} <- Tombstones.load(state.keyed_dir),
        do: :ok = Lifetime.stopped({state.module, key}, instance)

    :ok
  end

  # Disk mode: every group whose store is on disk is recorded as hosted
  # here (and so started by :visor_restore), before this host starts and
  # any start_group can ask it what it holds: after a VM restart
  # Visor.Lifetime is empty, and only the stores' records say what this
  # node hosted. Where Lifetime already says something of a key (this
  # host restarted, not the VM), it is this VM's latest word. A store of
  # an instance this node stopped (its removal cut short by the VM's end)
  # is removed.
  defp record_on_disk(state) do
    for {key, instance} <- on_disk(state),
        group = {state.module, key},
        Lifetime.hosting(group) == nil do
      if Lifetime.stale?(group, instance),
        do: :ok = remove_store(state, key),
        else: :ok = Lifetime.host(group, instance)
    end

    :ok
  end

  @doc false
  # Only under a key: nil names the module's default group. Answered when
  # the start ends: `{:ok, :started | :already_started}`, or `{:error,
  # {:already_started, %{members:}} | {:not_a_member, node} | {:bad_members,
  # text} | {:start_failed, node, reason}}`.
  def handle_call({:visor_start, key, instance}, from, state) when key != nil do
    key = Options.canonical_key(key)

    case instance(state.module, instance) do
      {:ok, instance} -> {:noreply, start(state, key, instance, from, :caller)}
      error -> {:reply, error, state}
    end
  end

  # Stops the group if this host holds one of `instances` of it. The
  # caller is answered once its processes are gone (stop/4).
  def handle_call({:visor_stop, key, instances}, from, state) do
    key = Options.canonical_key(key)

    cond do
      not proper_list?(instances) ->
        {:reply, :no_group, state}

      Lifetime.hosting({state.module, key}) in instances ->
        {:noreply, stop(state, key, :stopped, from)}

      true ->
        {dropped, state} = drop_deferred(state, key, instances, :stopped)
        {:reply, if(dropped, do: :ok, else: :no_group), state}
    end
  end

  # A refused start's undo (`Visor.Groups.Control`): only the instance a
  # peer names, checked first, as a start's.
  def handle_call({:visor_undo, key, instance}, from, state) do
    key = Options.canonical_key(key)

    case instance(state.module, instance) do
      {:ok, instance} ->
        if Lifetime.hosting({state.module, key}) == instance do
          {:noreply, stop(state, key, :undone, from)}
        else
          {dropped, state} = drop_deferred(state, key, [instance], :undone)
          {:reply, if(dropped, do: :ok, else: :no_group), state}
        end

      error ->
        {:reply, error, state}
    end
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
  # Visor.Groups did, or the VM did, in disk mode: record_on_disk/1):
  # started again, or watched if it still runs.
  def handle_info(:visor_restore, state) do
    state =
      Enum.reduce(Lifetime.hosted(state.module), state, fn {key, instance}, state ->
        start(state, key, instance, nil, :restart)
      end)

    adopt_from(Node.list(), state.module)
    :ok = announce_hosted(Node.list(), state.module)
    {:noreply, state}
  end

  def handle_info({:nodeup, node}, state) do
    adopt_from([node], state.module)
    {:noreply, state}
  end

  def handle_info({:nodedown, _node}, state), do: {:noreply, state}

  # A formed group `node` runs with this one among its members (see the
  # top of this module): started here, unless this host stopped that
  # instance, which `node` then is told to stop.
  def handle_info({:visor_adopt, node, key, instance}, state) when is_atom(node) and key != nil do
    key = Options.canonical_key(key)

    with {:ok, instance} <- instance(state.module, instance) do
      if Lifetime.stale?({state.module, key}, instance) do
        :ok = tell_stale(state.module, node, key, instance)
        {:noreply, state}
      else
        {:noreply, start(state, key, instance, nil, :adopt)}
      end
    else
      _ -> {:noreply, state}
    end
  end

  # A host that started (`announce_hosted/2`) says what it runs: each of
  # those instances this host stopped is one it missed the stop of (its
  # node was down, and it restarted the group from its store: disk mode),
  # and is told to stop it, as at adoption. Checked element by element: a
  # peer's list may be junk.
  def handle_info({:visor_hosted, node, hosted}, state) when is_atom(node) do
    :ok = tell_stopped(state.module, node, hosted)
    {:noreply, state}
  end

  # A peer that stopped `instance` of the group, which this host runs: it
  # was cut off from the stop, and stops now. Any other instance (the key
  # started again since) is left alone.
  def handle_info({:visor_stale, key, instance}, state) do
    key = Options.canonical_key(key)

    if Lifetime.hosting({state.module, key}) == instance do
      Logger.warning(
        "#{inspect({state.module, key})}: stopped on a member while this node was cut " <>
          "off from it; stopping it here"
      )

      {:noreply, stop(state, key, :stopped, nil)}
    else
      {_dropped, state} = drop_deferred(state, key, [instance], :stopped)
      {:noreply, state}
    end
  end

  def handle_info({:visor_started, key, ref, result}, state) do
    case state.starting do
      %{^key => %{ref: ^ref} = start} ->
        state = %{state | starting: Map.delete(state.starting, key)}
        {:noreply, started(state, key, start, result)}

      # Stopped while it started (stop/4): its processes end now.
      %{} ->
        case state.stopping do
          %{^key => %{ref: ^ref}} ->
            case result do
              {:ok, pid} ->
                terminate_async(state, key, pid, ref)
                {:noreply, state}

              failed ->
                {:noreply, terminated(state, key, not found_taken?(failed))}
            end

          _junk ->
            {:noreply, state}
        end
    end
  end

  def handle_info({:visor_terminated, key, ref}, state) do
    case state.stopping do
      %{^key => %{ref: ^ref}} -> {:noreply, terminated(state, key, true)}
      _junk -> {:noreply, state}
    end
  end

  def handle_info({:DOWN, monitor, :process, _pid, reason}, state)
      when is_map_key(state.monitors, monitor) do
    {key, monitors} = Map.pop(state.monitors, monitor)
    state = %{state | monitors: monitors, groups: Map.delete(state.groups, key)}

    {wait, failures, state} = backoff(state, key)

    Logger.warning(
      "#{inspect({state.module, key})}: this node's processes of the group exited " <>
        "(#{inspect(reason)}); starting them again in #{wait} ms (its replica rejoins)" <>
        in_a_row(failures)
    )

    {:noreply, retry(state, key, wait)}
  end

  # Only this host's own timer (a peer could send the message, and skip
  # the backoff).
  def handle_info({:timeout, timer, {:visor_restart, key}}, state)
      when is_map_key(state.restarts, key) and :erlang.map_get(key, state.restarts) == timer do
    state = %{state | restarts: Map.delete(state.restarts, key)}

    case Lifetime.hosting({state.module, key}) do
      nil -> {:noreply, state}
      instance -> {:noreply, start(state, key, instance, nil, :restart)}
    end
  end

  def handle_info(_message, state), do: {:noreply, state}

  # Any node may send a start or an adoption: an instance that is not one
  # (checked for shape first: a proper list of atoms, a non-negative
  # integer id), or whose members do not name this node (a keyed group
  # has no spares), is refused, never recorded, and never crashes this
  # process.
  defp instance(module, %{members: members, id: id}) when is_integer(id) and id >= 0 do
    if Decider.node_list?(members) do
      members = Options.nodes!(module, members)

      if node() in members,
        do: {:ok, %{members: members, id: id}},
        else: {:error, {:not_a_member, node()}}
    else
      {:error, {:bad_members, "not a list of node names: #{inspect(members)}"}}
    end
  rescue
    e in ArgumentError -> {:error, {:bad_members, Exception.message(e)}}
  end

  defp instance(_module, other),
    do: {:error, {:bad_members, "not a group instance: #{inspect(other)}"}}

  # The groups whose stores are in the keyed directory, less those whose
  # record does not name this node a member (a data_dir moved to another
  # node), which are logged and skipped.
  defp on_disk(%{keyed_dir: nil}), do: []

  defp on_disk(state) do
    for {key, recorded} <- Stores.scan(state.keyed_dir),
        instance = on_disk_instance(state, key, recorded),
        do: {key, instance}
  end

  defp on_disk_instance(state, key, recorded) do
    case instance(state.module, recorded) do
      {:ok, instance} ->
        instance

      {:error, reason} ->
        Logger.warning(
          "#{inspect({state.module, key})}: its store in #{store_dir(state, key)} is not " <>
            "restarted: #{inspect(reason)}"
        )

        nil
    end
  end

  defp store_dir(%{keyed_dir: nil}, _key), do: nil
  defp store_dir(state, key), do: Options.keyed_store_dir(state.keyed_dir, key)

  defp proper_list?([]), do: true
  defp proper_list?([_ | rest]), do: proper_list?(rest)
  defp proper_list?(_other), do: false

  # A stop or undo of an instance whose start waits behind the key's stop
  # (stop/4): it never starts, its callers answered {:error, :no_group},
  # and a stop's tombstone recorded. Whether one was dropped.
  defp drop_deferred(state, key, instances, how) do
    case state.stopping do
      %{^key => %{deferred: deferred} = stop} ->
        {dropped, kept} = Enum.split_with(deferred, fn {i, _, _} -> i in instances end)

        for {instance, from, _origin} <- dropped do
          if how == :stopped, do: :ok = tombstone(state, key, instance)
          reply(from, {:error, :no_group})
        end

        {dropped != [], put_in(state.stopping[key], %{stop | deferred: kept})}

      _ ->
        {false, state}
    end
  end

  # Tells `nodes`' hosts what this one runs, so that each tells it which
  # of those it stopped (handle_info {:visor_hosted, ...}): a node that
  # was down while a group was stopped, and restarted it from its store,
  # learns of the stop from the nodes up when its host starts. (Nodes that
  # connect later ask this one for its groups when they adopt: the same.)
  #
  # This and tell_stale/4 send without :nosuspend, unlike the routers:
  # a dropped notice here is not resent (a stopped group would run on),
  # while a send that suspends waits only until the busy link drains or
  # drops. They are rare (a host's start, a stale group found).
  defp announce_hosted(nodes, module) do
    with [_ | _] = hosted <- Lifetime.hosted(module) do
      for node <- nodes,
          do:
            :erlang.send({Visor.Groups.host(module), node}, {:visor_hosted, node(), hosted}, [
              :noconnect
            ])
    end

    :ok
  end

  defp tell_stopped(module, node, [{key, instance} | rest]) when key != nil do
    with {:ok, instance} <- instance(module, instance),
         true <- Lifetime.stale?({module, Options.canonical_key(key)}, instance),
         do: :ok = tell_stale(module, node, key, instance)

    tell_stopped(module, node, rest)
  end

  defp tell_stopped(module, node, [_junk | rest]), do: tell_stopped(module, node, rest)
  defp tell_stopped(_module, _node, _end), do: :ok

  defp tell_stale(module, node, key, instance) do
    _ =
      :erlang.send({Visor.Groups.host(module), node}, {:visor_stale, key, instance}, [:noconnect])

    :ok
  end

  # Asks `nodes`' hosts, in a process of its own (a node may be slow to
  # answer), for the formed groups they run that name this node a member.
  defp adopt_from(nodes, module) do
    host = self()

    spawn(fn ->
      for node <- nodes,
          {key, instance} <- offers(node, module),
          do: send(host, {:visor_adopt, node, key, instance})
    end)

    :ok
  end

  defp offers(node, module) do
    :erpc.call(node, Visor.Groups, :offers, [module, node()], 5_000)
  catch
    _kind, _reason -> []
  end

  # `from` (a caller of {:visor_start, ...}, or nil) is answered when the
  # start ends; `origin` is :caller, :restart or :adopt.
  defp start(state, key, instance, from, origin) do
    group = {state.module, key}
    recorded = Lifetime.hosting(group)

    cond do
      # The key's processes are ending: this start waits for them.
      Map.has_key?(state.stopping, key) ->
        update_in(state.stopping[key].deferred, &[{instance, from, origin} | &1])

      # Stopped here (a stop_group overtook the caller).
      Lifetime.stale?(group, instance) ->
        reply(from, {:error, {:start_failed, node(), :stopped}})
        state

      recorded not in [nil, instance] ->
        reply(from, {:error, {:already_started, %{members: recorded.members}}})
        state

      Map.has_key?(state.starting, key) ->
        update_in(state.starting[key].waiters, &[from | &1])

      true ->
        case Visor.Groups.running(state.module, key) do
          {pid, ^instance} ->
            reply(from, {:ok, :already_started})
            watch(state, key, pid)

          {_pid, other} ->
            reply(from, {:error, {:already_started, %{members: other.members}}})
            state

          nil ->
            start_new(state, key, instance, from, recorded != nil or origin != :caller)
        end
    end
  end

  defp start_new(state, key, instance, from, keep?) do
    group = {state.module, key}
    %{opts: opts} = Visor.Groups.host_options(state.module)
    config = Options.validate!(state.module, [nodes: instance.members] ++ opts)
    config = Options.keyed(config, key, instance.id)
    # Recorded first: a group this host starts is one it restarts, and
    # one no other instance of the key may replace.
    :ok = Lifetime.host(group, instance)
    spec = Supervisor.child_spec({Visor.Supervisor, config}, restart: :temporary)
    index = free_partition(state)
    partition = {:via, PartitionSupervisor, {Visor.Groups.partitions(state.module), index}}
    host = self()
    ref = make_ref()
    claim = claim(store_dir(state, key), group, instance, Lifetime.tombstones(group))

    spawn(fn ->
      result =
        with :ok <- claim.() do
          try do
            DynamicSupervisor.start_child(partition, spec)
          catch
            :exit, reason -> {:error, reason}
          end
        end

      send(host, {:visor_started, key, ref, result})
    end)

    start = %{ref: ref, instance: instance, waiters: [from], keep?: keep?, partition: index}
    %{state | starting: Map.put(state.starting, key, start)}
  end

  # Disk mode: the group's directory is made its own before its store is
  # created (Visor.Groups.Stores), in the start's process (it syncs a
  # file). This host runs one start of a key at a time, and removes no
  # directory while its start runs (stop/4); a start of the key after a
  # stop waits until the stop's processes have ended (stopping/4).
  defp claim(nil, _group, _instance, _stopped), do: fn -> :ok end

  # A stop that overtook this start has removed the record (stop/4): the
  # start writes none, so a VM restart finds no record to restore.
  defp claim(dir, {_module, key} = group, instance, stopped) do
    fn ->
      if Lifetime.hosting(group) == instance,
        do: Stores.claim(dir, key, instance, stopped),
        else: {:error, :stopped}
    end
  end

  defp remove_store(state, key) do
    with dir when dir != nil <- store_dir(state, key), do: Stores.remove(dir)
    :ok
  end

  # A start that found its directory holding something else left it as
  # it was (Visor.Groups.Stores.claim/4): it is not the start's to remove.
  defp found_taken?(result), do: match?({:error, {:store_taken, _, _}}, result)

  defp started(state, key, start, {:ok, pid}) do
    Enum.each(start.waiters, &reply(&1, {:ok, :started}))
    watch(state, key, pid)
  end

  # Another start of the key won the registry (a start never runs two).
  defp started(state, key, start, {:error, {:already_started, pid}}) do
    Enum.each(start.waiters, &reply(&1, {:ok, :already_started}))
    watch(state, key, pid)
  end

  defp started(state, key, start, {:error, reason}) do
    group = {state.module, key}
    Enum.each(start.waiters, &reply(&1, {:error, {:start_failed, node(), reason}}))

    if start.keep? do
      {wait, failures, state} = backoff(state, key)

      Logger.warning(
        "#{inspect(group)}: cannot start this node's processes of the group " <>
          "(#{inspect(reason)}); trying again in #{wait} ms" <> in_a_row(failures)
      )

      retry(state, key, wait)
    else
      # A caller's first start here: nothing of it is left behind.
      _ = Lifetime.forget(group)
      unless found_taken?({:error, reason}), do: :ok = remove_store(state, key)
      state
    end
  end

  defp reply(nil, _reply), do: :ok
  defp reply(from, reply), do: GenServer.reply(from, reply)

  # The partition with the fewest starts in progress: a DynamicSupervisor
  # starts one child at a time, and a group's start runs its
  # initial_state/1, so a slow one holds up only the starts sent to its
  # partition, none while another partition is free.
  defp free_partition(state) do
    busy = state.starting |> Map.values() |> Enum.frequencies_by(& &1.partition)
    count = PartitionSupervisor.partitions(Visor.Groups.partitions(state.module))
    Enum.min_by(0..(count - 1), &Map.get(busy, &1, 0))
  end

  # The group's supervisor is stopped itself, not through the partition
  # that holds it: a partition busy starting another group (a slow
  # initial_state) would hold this process up until that start ends. The
  # partition drops its :temporary child when it sees it exit. One that
  # does not stop within @terminate_ms (it is busy restarting a server
  # whose initial_state is slow) is killed, with every process of the
  # group (run in a process of its own: stopping/4).
  defp terminate(pid, module, key) do
    :proc_lib.stop(pid, :shutdown, @terminate_ms)
  catch
    :exit, :timeout ->
      for role <- [:supervisor | @roles],
          [{process, _}] <- [Registry.lookup(Visor.Groups.registry(module), {key, role})],
          do: Process.exit(process, :kill)

      Process.exit(pid, :kill)
      :ok

    # Gone already.
    :exit, _ ->
      :ok
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

  # The wait before the next start of a group that failed (exited, or
  # did not start) now (`Visor.Groups.Backoff`).
  defp backoff(state, key) do
    backoff = Map.get(state.backoff, key, Backoff.new())
    {wait, failures, backoff} = Backoff.failed(backoff, System.monotonic_time(:millisecond))
    {wait, failures, %{state | backoff: Map.put(state.backoff, key, backoff)}}
  end

  defp in_a_row(1), do: ""
  defp in_a_row(failures), do: " (#{failures} failures in a row)"

  defp retry(state, key, wait) do
    timer = :erlang.start_timer(wait, self(), {:visor_restart, key})
    %{state | restarts: Map.put(state.restarts, key, timer)}
  end

  # Stops the group here: the stop is recorded at once (the instance no
  # longer hosted, and with `how` `:stopped`, stop_group's, a tombstone;
  # `:undone`, a refused start's, none: it never formed), and its
  # processes end in a process of their own (stopping/4), `from` answered
  # `:ok` then: a group's supervisor may be busy (restarting a server
  # whose initial_state is slow), and this process never waits for it. A
  # start in progress is answered {:error, :no_group}, `from` at once,
  # and its group stopped once its start ends.
  defp stop(state, key, how, from) do
    group = {state.module, key}
    recorded = Lifetime.hosting(group)
    {starting, left} = Map.pop(state.starting, key)
    state = forget_monitor(state, Map.get(state.groups, key))

    state = %{
      state
      | groups: Map.delete(state.groups, key),
        starting: left,
        backoff: Map.delete(state.backoff, key)
    }

    :ok = Lifetime.unhost(group)
    if recorded != nil and how == :stopped, do: :ok = tombstone(state, key, recorded)

    case {starting, Visor.Groups.running(state.module, key)} do
      # Its replica here never ran: the stop is answered at once, not
      # after a start that may be slow.
      # Disk mode: its record goes now, so that a VM restart before the
      # start ends does not bring it back (claim/4).
      {%{ref: ref, waiters: waiters}, _} ->
        for waiter <- waiters, do: reply(waiter, {:error, :no_group})
        with dir when dir != nil <- store_dir(state, key), do: :ok = Stores.unclaim(dir)
        reply(from, :ok)
        stopping(state, key, {:starting, ref}, nil)

      {nil, {pid, _instance}} ->
        stopping(state, key, {:running, pid}, from)

      {nil, nil} ->
        reply(from, if(recorded, do: :ok, else: :no_group))
        stopped(state, key, true)
    end
  end

  # Records that this host stopped `instance` (Visor.Lifetime.stopped/2),
  # and in disk mode on disk (Visor.Groups.Tombstones), synced before the
  # stop goes on: before its directory is removed and its caller answered.
  # Written once per instance: a stop of one already stopped adds nothing.
  # In this process, which carries peers' messages meanwhile: a stop is
  # an operator's action, and costs one small write and sync here, as
  # its directory's removal (stopped/3) costs a few unlinks.
  defp tombstone(state, key, instance) do
    group = {state.module, key}

    unless Lifetime.stale?(group, instance) do
      :ok = Lifetime.stopped(group, instance)
      if state.keyed_dir, do: :ok = Tombstones.record(state.keyed_dir, key, instance)
    end

    :ok
  end

  # The group's processes (running, or still starting: `{:starting,
  # ref}`) end in a process of their own, which says so with
  # {:visor_terminated, key, ref} (a ref no peer can forge); meanwhile a
  # start of the key waits (start/5), and another stop joins `from`.
  defp stopping(state, key, what, from) do
    case state.stopping do
      %{^key => stop} ->
        put_in(state.stopping[key], %{stop | waiters: [from | stop.waiters]})

      _ ->
        ref =
          case what do
            {:starting, ref} ->
              ref

            {:running, pid} ->
              ref = make_ref()
              terminate_async(state, key, pid, ref)
              ref
          end

        stop = %{ref: ref, waiters: [from], deferred: []}
        %{state | stopping: Map.put(state.stopping, key, stop)}
    end
  end

  defp terminate_async(state, key, pid, ref) do
    host = self()
    module = state.module

    spawn(fn ->
      :ok = terminate(pid, module, key)
      send(host, {:visor_terminated, key, ref})
    end)
  end

  # The key's stop has ended: its callers answered, and the starts that
  # waited for it run now, in the order they came.
  defp terminated(state, key, remove?) do
    {stop, stopping} = Map.pop(state.stopping, key)
    state = stopped(%{state | stopping: stopping}, key, remove?)
    for waiter <- stop.waiters, do: reply(waiter, :ok)

    stop.deferred
    |> Enum.reverse()
    |> Enum.reduce(state, fn {instance, from, origin}, state ->
      start(state, key, instance, from, origin)
    end)
  end

  # The group's processes are gone: its record forgotten (unless a start
  # since took the key), its directory removed (unless `remove?` is false:
  # its start found the directory holding something else).
  defp stopped(state, key, remove?) do
    group = {state.module, key}

    if Lifetime.hosting(group) == nil do
      _ = Lifetime.forget(group)
      if remove?, do: :ok = remove_store(state, key)
    end

    state
  end
end
