defmodule Visor.Lifetime do
  @moduledoc """
  What a group remembers on this node across restarts of its server and
  formation process, for as long as its `Visor.Supervisor` runs: a crash of
  either restarts both (`:one_for_all`), but not the supervisor, nor this
  record (a `:persistent_term` keyed by the module, tagged with the
  supervisor's pid; a new supervisor, i.e. the group stopped and started
  again, finds no record of its own).

    * **the cluster this node's replica joined** (memory mode): a restarted
      server lost its replica's memory, so `Visor.Formation` starts it
      recovering at once, whatever its peers say. If every server
      restarted at once, no peer remembers anything: without this record
      they would form a fresh, empty cluster and serve it.
    * **the op a `handle_commit` was running** (an `:atomics`, written by
      the server around each execute), so a restarted server knows its
      predecessor died inside `handle_commit` at that op, and how many
      times in a row (`Visor.Server` stops executing at an op that killed
      it #{2} times: a poison command).
  """

  @executing 1
  @streak_op 2
  @streak_count 3

  @doc "This group instance's record on this node (created on first use)."
  @spec get(module()) :: %{formed: map() | nil, counters: :atomics.atomics_ref()}
  def get(module) do
    supervisor = Process.whereis(Visor.Supervisor.name(module, :supervisor))

    case :persistent_term.get({__MODULE__, module}, nil) do
      %{supervisor: ^supervisor} = record ->
        record

      _none_or_stale ->
        record = %{supervisor: supervisor, formed: nil, counters: :atomics.new(3, [])}
        :persistent_term.put({__MODULE__, module}, record)
        record
    end
  end

  @doc "Records the cluster this node's replica joined (once per group instance)."
  @spec put_formed(module(), map()) :: :ok
  def put_formed(module, formed) do
    record = get(module)

    if record.formed != formed,
      do: :persistent_term.put({__MODULE__, module}, %{record | formed: formed})

    :ok
  end

  @doc "Marks `op` as being executed (`0`: none)."
  @spec executing(:atomics.atomics_ref(), non_neg_integer()) :: :ok
  def executing(counters, op), do: :atomics.put(counters, @executing, op)

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
