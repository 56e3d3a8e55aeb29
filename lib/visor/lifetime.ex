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

  @executing 1
  @streak_op 2
  @streak_count 3

  @doc "This group's record on this node (created on first use)."
  @spec get(module()) :: %{
          formed: %{term() => map()},
          counters: :atomics.atomics_ref(),
          executed: :atomics.atomics_ref()
        }
  def get(module) do
    case :persistent_term.get({__MODULE__, module}, nil) do
      %{formed: _, counters: _, executed: _} = record ->
        record

      nil ->
        record = %{formed: %{}, counters: :atomics.new(3, []), executed: :atomics.new(1, [])}
        :persistent_term.put({__MODULE__, module}, record)
        record
    end
  end

  @doc "The cluster this node's replica joined under configuration `key`, or `nil`."
  @spec formed(module(), term()) :: map() | nil
  def formed(module, key), do: Map.get(get(module).formed, key)

  @doc "Records the cluster this node's replica joined under configuration `key`."
  @spec put_formed(module(), term(), map()) :: :ok
  def put_formed(module, key, formed) do
    record = get(module)

    if Map.get(record.formed, key) != formed do
      record = %{record | formed: Map.put(record.formed, key, formed)}
      :persistent_term.put({__MODULE__, module}, record)
    end

    :ok
  end

  @doc """
  Erases the group's record on this node (`Visor.forget/1`): only while the
  group is not running here, since a running one would write it again.
  """
  @spec forget(module()) :: :ok | {:error, :running}
  def forget(module) do
    if Process.whereis(Visor.Supervisor.name(module, :supervisor)) do
      {:error, :running}
    else
      _ = :persistent_term.erase({__MODULE__, module})
      :ok
    end
  end

  @doc """
  The other members whose server said its code executes batches, as this
  node's last server heard (`Visor.Server`): kept so that a restarted
  server goes on batching while one of them is down.
  """
  @spec batch_members(module()) :: [node()]
  def batch_members(module), do: Map.get(get(module), :batch_members, [])

  @doc "Records `batch_members/1` (written only when it changed)."
  @spec batch_members(module(), [node()]) :: :ok
  def batch_members(module, nodes) do
    record = get(module)
    nodes = Enum.sort(nodes)

    if Map.get(record, :batch_members, []) != nodes,
      do: :persistent_term.put({__MODULE__, module}, Map.put(record, :batch_members, nodes))

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
