defmodule Visor.Lifetime do
  @moduledoc false
  # What a group remembers on this node for the life of the VM: across
  # restarts of its server and formation process (a crash of either
  # restarts both, `:one_for_all`), of its `Visor.Supervisor` (which gives up
  # after more than 3 restarts in 5 s and is restarted by its parent), and of
  # any supervisor above it. The record is a `:persistent_term` keyed by the
  # module; only `forget/1` (an explicit operator action, while the group is
  # stopped on this node) or the end of the VM erases it.
  #
  # Why not less: nothing Visor can see tells an operator's stop of the group
  # from an automatic one. A supervisor that gives up and one stopped by its
  # parent both exit `:shutdown`, and a parent stops its children the same
  # way whether an operator asked it to, a sibling crashed (`:one_for_all`)
  # or the parent itself gave up. A record that died with any of them would
  # let a crash loop on every node end in a fresh, empty cluster.
  #
  #   * **the clusters this node's replica joined** (memory mode), one per
  #     configuration (`nodes:` by cluster id; `cluster_size:` by size and
  #     settings): a restarted server lost its replica's memory, so
  #     `Visor.Formation` starts it recovering at once, whatever its peers
  #     say. If every server restarted at once, no peer remembers anything:
  #     without this record they would form a fresh, empty cluster and serve
  #     it.
  #   * **the newest membership its replica knew** (memory mode), per
  #     configuration as above: the epoch, its list (`[{slot, member_id,
  #     joined}]`, as the engine's `{:epoch, ...}` event gives it) and the
  #     list's exact bytes (the event's `membership`, which the replica
  #     recovers in), and the cluster and genesis list it belongs to. A restarted server whose
  #     node is in that list starts its replica recovering in it, at its
  #     slot there (a node a change added, which formation alone would
  #     make a spare, included); one left out of it is removed
  #     (`Visor.Server.Lifecycle`). Without it, a member of a later epoch
  #     would recover against the list the group was formed with, whose
  #     members may have left.
  #   * **the op a `handle_commit` was running** (an `:atomics`, written by
  #     the server around each execute), so a restarted server knows its
  #     predecessor died inside `handle_commit` at that op, and how many
  #     times in a row (`Visor.Server` stops executing at an op that killed
  #     it 2 times: a poison command).
  #   * **which members said their code executes batches** (pipelined
  #     commits): a server restarted while one of them is down goes on
  #     batching, as its predecessor did (written when it changes: a
  #     member's answer, its server's exit); a hint only, trusted for the
  #     members the restarted server is cut off from (`Visor.Server`).
  #   * **the highest op its replica executed** (an `:atomics`): a restarted
  #     server executes the log again (from op 1 when it rejoins, from its
  #     checkpoint in disk mode), and a `handle_commit` failure it meets
  #     again is not logged again (`Visor.Executor`).
  #
  # ## Keyed groups
  #
  # A keyed group's record (`{module, key}`, `Visor.Groups`) holds the same,
  # plus the instance its group host started (`hosted/1`: the members, and
  # the id that tells it from an earlier start of the same key and
  # members), so that a restarted host (its `Visor.Groups` supervisor
  # restarted) starts the groups it hosted again, each rejoining. It lives in one ETS table per
  # node, not in a `:persistent_term` per group: a `:persistent_term.put`
  # copies the whole table and replacing a term scans every process's
  # heap, once per formation, which does not scale to thousands of groups.
  #
  # The table must last as long as the VM, as a `:persistent_term` does:
  # a memory-mode replica that lost its state must rejoin recovering, never
  # start fresh. It is owned by a keeper process (`Visor.Lifetime.Keeper`)
  # spawned on first use, linked to nothing and supervised by nothing, so
  # no supervisor's exit or shutdown reaches it; its group leader is
  # `init`'s, so that no application's stop (which kills the processes of
  # its group leader) ends it; it receives nothing and never returns. Only
  # an explicit `Process.exit(keeper, :kill)`, or the end of the VM, ends
  # it, as only `:persistent_term.erase/1` ends the default group's record.
  # Rows are written on a group's first use, at each formation decision
  # and when a host starts or stops a group: one `:ets.insert/2` each.

  @table __MODULE__
  @keeper Visor.Lifetime.Keeper

  @executing 1
  @streak_op 2
  @streak_count 3

  @typedoc "A module's default group, or one of its keyed groups."
  @type group :: module() | {module(), term()}

  @doc "This group's record on this node (created on first use)."
  @spec get(group()) :: %{
          formed: %{term() => map()},
          counters: :atomics.atomics_ref(),
          executed: :atomics.atomics_ref()
        }
  def get(group) do
    case read(group) do
      %{formed: _, counters: _, executed: _} = record ->
        record

      nil ->
        record = %{formed: %{}, counters: :atomics.new(3, []), executed: :atomics.new(1, [])}
        create(group, record)
    end
  end

  @doc "The cluster this node's replica joined under configuration `key`, or `nil`."
  @spec formed(group(), term()) :: map() | nil
  def formed(group, key), do: Map.get(get(group).formed, key)

  @doc "Records the cluster this node's replica joined under configuration `key`."
  @spec put_formed(group(), term(), map()) :: :ok
  def put_formed(group, key, formed) do
    record = get(group)

    if Map.get(record.formed, key) != formed,
      do: write(group, %{record | formed: Map.put(record.formed, key, formed)})

    :ok
  end

  @typedoc """
  A membership as this node knew it (memory mode): the cluster and the
  list the group was formed with (which name the member ids), the epoch,
  its members as the engine reports them, `[{slot, member_id, joined}]`
  in the order that decides the primaries, the exact list's bytes as the
  engine gave them (`membership`: opaque, with the incarnations and
  lives the change recorded, for `Visor.Native.start/2`'s `:known`),
  and their nodes as this node
  knew them (`Visor.MemberId.node_of/3`'s candidates: a member id is the
  hash of its node's name, so a name that does not hash to an id names
  nothing).
  """
  @type membership :: %{
          cluster: <<_::128>>,
          genesis: [node()],
          epoch: pos_integer(),
          members: [{non_neg_integer(), <<_::128>>, non_neg_integer()}],
          membership: binary(),
          nodes: [node()]
        }

  @doc """
  The newest membership this node's replica knew under configuration
  `key` (memory mode), or `nil`.
  """
  @spec membership(group(), term()) :: membership() | nil
  def membership(group, key), do: get(group) |> Map.get(:memberships, %{}) |> Map.get(key)

  @doc """
  Records `membership` under configuration `key` if it is newer (a
  higher epoch) than the one recorded, or of another cluster.
  """
  @spec put_membership(group(), term(), membership()) :: :ok
  def put_membership(group, key, %{cluster: cluster, epoch: epoch} = membership) do
    record = get(group)
    memberships = Map.get(record, :memberships, %{})

    case Map.get(memberships, key) do
      %{cluster: ^cluster, epoch: known} when known >= epoch ->
        :ok

      _older ->
        write(group, Map.put(record, :memberships, Map.put(memberships, key, membership)))
        :ok
    end
  end

  @doc """
  Erases the group's record on this node (`Visor.forget/1`, and
  `Visor.stop_group/2` for a keyed group): only while the group is not
  running here, since a running one would write it again.
  """
  @spec forget(group()) :: :ok | {:error, :running}
  def forget(group) do
    cond do
      Visor.Supervisor.whereis(group, :supervisor) ->
        {:error, :running}

      is_atom(group) ->
        _ = :persistent_term.erase({__MODULE__, group})
        :ok

      true ->
        {:ok, table} = table()
        true = :ets.delete(table, group)
        :ok
    end
  end

  @typedoc """
  One instance of a keyed group: its members, and its *generation* `id`:
  one more than the highest generation of the key stopped anywhere
  `Visor.start_group/2` looked, when it created it. A group stopped and
  started again under the same key is a later generation (and another
  cluster id, `Visor.Options.cluster_id/4`); two calls that create one
  key at once, seeing the same hosts, create the same instance.
  """
  @type instance :: %{members: [node()], id: pos_integer()}

  @typedoc """
  What a host stopped of a key: for each member list, the highest
  generation stopped with it.
  """
  @type stops :: %{[node()] => pos_integer()}

  @doc """
  Records that this node's group host runs `instance` of the keyed group
  `group`, until `forget/1`.
  """
  @spec host({module(), term()}, instance()) :: :ok
  def host({_module, _key} = group, %{members: _, id: _} = instance) do
    record = get(group)
    if Map.get(record, :hosted) != instance, do: write(group, Map.put(record, :hosted, instance))
    :ok
  end

  @doc "The keyed groups of `module` this node's group host runs: `[{key, instance}]`."
  @spec hosted(module()) :: [{term(), instance()}]
  def hosted(module) do
    case :ets.whereis(@table) do
      :undefined ->
        []

      table ->
        for [key, %{hosted: instance}] <- :ets.match(table, {{module, :"$1"}, :"$2"}),
            do: {key, instance}
    end
  end

  @doc "The instance of the keyed group `group` this node's group host runs, or `nil`."
  @spec hosting({module(), term()}) :: instance() | nil
  def hosting({_module, _key} = group), do: with(%{} = record <- read(group), do: record[:hosted])

  @doc """
  Records that this node's group host stopped `instance` of the keyed
  group `group` with `stop_group` (a tombstone, kept for the life of the
  VM as the rest of the table is, in a row of its own; in disk mode the
  host also keeps it on disk, `Visor.Groups.Tombstones`, and records it
  here again when it starts): every instance of
  the key with those members, up to its generation, is stopped. An
  instance of these members is only created once no member holds an
  earlier one (every member answers a start), so an earlier one still
  running is a replica cut off from its stop. Such a member is told to
  stop it, rather than given back, and this host never starts one again
  (`stale?/2`). Per member list: an instance of other members may have
  the same generation (created where this stop was not seen, across a
  partition), and is not this stop's.
  """
  @spec stopped({module(), term()}, instance()) :: :ok
  def stopped({_module, _key} = group, %{members: members, id: id}) do
    stops = Map.update(tombstones(group), members, id, &max(&1, id))
    {:ok, table} = table()
    true = :ets.insert(table, {{:stopped, group}, stops})
    :ok
  end

  @doc "What this node's group host stopped of `group` (`stopped/2`)."
  @spec tombstones({module(), term()}) :: stops()
  def tombstones({_module, _key} = group) do
    with table when table != :undefined <- :ets.whereis(@table),
         [{_, stops}] <- :ets.lookup(table, {:stopped, group}) do
      stops
    else
      _ -> %{}
    end
  end

  @doc "Whether `instance` of `group` is one this node's host stopped."
  @spec stale?({module(), term()}, instance()) :: boolean()
  def stale?({_module, _key} = group, instance),
    do: stopped_in?(tombstones(group), instance)

  @doc "Whether `instance` is one `stops` (`tombstones/1`, or several merged) stopped."
  @spec stopped_in?(stops(), instance()) :: boolean()
  def stopped_in?(stops, %{members: members, id: id}), do: id <= Map.get(stops, members, 0)

  @doc """
  Drops the instance this node's host records for `group` (it is being
  stopped), keeping the rest of the record until `forget/1`, which waits
  for the group's processes to be gone.
  """
  @spec unhost({module(), term()}) :: :ok
  def unhost({_module, _key} = group) do
    with %{hosted: _} = record <- read(group), do: write(group, Map.delete(record, :hosted))
    :ok
  end

  # A default group's record is a :persistent_term (one per module); a
  # keyed group's a row of the keeper's table (see the top of this module).
  defp read(module) when is_atom(module), do: :persistent_term.get({__MODULE__, module}, nil)

  defp read(group) do
    case :ets.whereis(@table) do
      :undefined -> nil
      table -> with([{_, record}] <- :ets.lookup(table, group), do: record, else: (_ -> nil))
    end
  end

  defp write(module, record) when is_atom(module),
    do: :persistent_term.put({__MODULE__, module}, record)

  defp write(group, record) do
    {:ok, table} = table()
    true = :ets.insert(table, {group, record})
  end

  # The first record wins: two processes of one group may create it at once.
  defp create(module, record) when is_atom(module) do
    write(module, record)
    record
  end

  defp create(group, record) do
    {:ok, table} = table()

    if :ets.insert_new(table, {group, record}),
      do: record,
      else: read(group)
  end

  # The keeper's table, started on first use (see the top of this module).
  defp table do
    case :ets.whereis(@table) do
      :undefined -> start_keeper()
      table -> {:ok, table}
    end
  end

  defp start_keeper do
    caller = self()
    {pid, monitor} = spawn_monitor(fn -> keep(caller) end)

    receive do
      {@keeper, ^pid} ->
        Process.demonitor(monitor, [:flush])
        table()

      # Another keeper registered first, and creates the table.
      {:DOWN, ^monitor, :process, ^pid, _} ->
        Process.sleep(1)
        table()
    end
  end

  # A keeper that finds another registered leaves quietly: that one
  # creates the table.
  defp keep(caller) do
    {:group_leader, leader} = Process.info(Process.whereis(:init), :group_leader)
    Process.group_leader(self(), leader)

    if register(@keeper) do
      _ = :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
      send(caller, {@keeper, self()})
      Process.sleep(:infinity)
    end
  end

  defp register(name) do
    Process.register(self(), name)
  rescue
    ArgumentError -> false
  end

  @doc """
  The other members whose server said its code executes batches, as this
  node's last server heard (`Visor.Server`): kept so that a restarted
  server goes on batching while one of them is down.
  """
  @spec batch_members(group()) :: [node()]
  def batch_members(group), do: Map.get(get(group), :batch_members, [])

  @doc "Records `batch_members/1` (written only when it changed)."
  @spec batch_members(group(), [node()]) :: :ok
  def batch_members(group, nodes) do
    record = get(group)
    nodes = Enum.sort(nodes)

    if Map.get(record, :batch_members, []) != nodes,
      do: write(group, Map.put(record, :batch_members, nodes))

    :ok
  end

  @doc "Marks `op` as being executed (`0`: none)."
  @spec executing(:atomics.atomics_ref(), non_neg_integer()) :: :ok
  def executing(counters, op), do: :atomics.put(counters, @executing, op)

  @doc """
  Records that this node's replica executed `op` (`executed` is the
  record's `:executed`); `true` the first time in this VM (a later server
  executing it again replays the log), `false` after. Only the group's one
  server calls it.
  """
  @spec first_execution?(:atomics.atomics_ref(), pos_integer()) :: boolean()
  def first_execution?(executed, op) do
    if op > :atomics.get(executed, 1) do
      :atomics.put(executed, 1, op)
      true
    else
      false
    end
  end

  @doc """
  Called once by a starting server: if its predecessor died inside
  `handle_commit`, counts that death against the op, and returns `{op,
  deaths in a row at it}`; else `nil`.
  """
  @spec death_at(:atomics.atomics_ref()) :: {pos_integer(), pos_integer()} | nil
  def death_at(counters) do
    case :atomics.exchange(counters, @executing, 0) do
      0 ->
        nil

      op ->
        if :atomics.get(counters, @streak_op) != op do
          :atomics.put(counters, @streak_op, op)
          :atomics.put(counters, @streak_count, 0)
        end

        {op, :atomics.add_get(counters, @streak_count, 1)}
    end
  end
end
