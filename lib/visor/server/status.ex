defmodule Visor.Server.Status do
  @moduledoc false
  # The map `Visor.status/1` returns (docs/operations.md, "Status"), built
  # from the server's parts: a pure function of what it is given, so what
  # the map says is decided here and nowhere else.

  alias Visor.Server.Lifecycle

  @typedoc """
  What the server knows besides its lifecycle: this node, the nodes it is
  connected to (`Node.list/0`), the pool (`Visor.Server.Callers.pool/1`),
  the poison command (`Visor.Server.Machine`'s), the state machine
  versions (`Visor.Server.Machine.versions/1`), whom formation last said
  it waits for (`Visor.Formation.subscribe/2`), automatic replacement's
  state (`Visor.Server.AutoReplace.status/2`, nil when off) and the
  server's counters.
  """
  @type server :: %{
          node: node(),
          connected: [node()],
          pool: map(),
          poison: map() | nil,
          version: map(),
          waiting_for: map() | nil,
          auto_replace: map() | nil,
          stats: map()
        }

  @doc """
  The status map. `engine` is `Visor.Native.status/1` of the running
  engine (`nil` when no replica runs).
  """
  @spec build(Lifecycle.t(), map() | nil, server()) :: map()
  def build(%Lifecycle{phase: :running} = lifecycle, engine, server) when is_map(engine) do
    # A recovering replica does not know the view yet, and one whose store
    # is still opening has no replica yet: no primary to show. A leaving
    # replica's view is its last epoch's: the new one's primary is not
    # known here.
    primary_index =
      if engine.status in [:recovering, :starting] or lifecycle.role != :member,
        do: nil,
        else: engine.primary

    primary =
      primary_index &&
        Enum.find_value(lifecycle.current, fn {slot, node} -> slot == primary_index && node end)

    connected = MapSet.new(server.connected)

    # The members of the current membership, by slot (the index the
    # group was formed with: a change that adds no member keeps it).
    replicas =
      for {index, node} <- lifecycle.current do
        %{
          index: index,
          node: node,
          role: if(index == primary_index, do: :primary, else: :backup),
          health:
            cond do
              node == server.node -> :self
              MapSet.member?(connected, node) -> :connected
              true -> :disconnected
            end
        }
      end

    %{
      status: engine.status,
      role: role(lifecycle, engine.is_primary),
      node: server.node,
      index: lifecycle.index,
      epoch: lifecycle.epoch,
      members: Lifecycle.current_nodes(lifecycle),
      view: engine.view,
      log_view: engine.log_view,
      op: engine.op,
      commit: engine.commit,
      commit_max: engine.commit_max,
      checkpoint: engine.checkpoint,
      log_base: engine.log_base,
      primary: primary,
      replicas: replicas,
      cluster: Base.encode16(lifecycle.cluster, case: :lower),
      pool: server.pool,
      storage: storage(lifecycle, engine.storage),
      poison: server.poison,
      refused: nil,
      version: server.version,
      waiting_for: nil,
      auto_replace: server.auto_replace,
      sync: engine.sync,
      quiet: engine.quiet,
      stats: Map.merge(engine.stats, server.stats)
    }
  end

  # Removed from the group: its replica stopped; it serves as a spare.
  def build(%Lifecycle{phase: :removed} = lifecycle, nil, server) do
    Map.merge(no_replica(), %{
      status: :removed,
      role: :removed,
      node: server.node,
      epoch: lifecycle.epoch,
      members: Lifecycle.current_nodes(lifecycle),
      cluster: Base.encode16(lifecycle.cluster, case: :lower),
      pool: server.pool,
      storage: storage(lifecycle, nil),
      poison: server.poison,
      refused: nil,
      version: server.version,
      waiting_for: nil,
      auto_replace: server.auto_replace,
      stats: server.stats
    })
  end

  def build(%Lifecycle{} = lifecycle, nil, server) do
    Map.merge(no_replica(), %{
      status:
        case lifecycle.phase do
          {:failed, _} -> :failed
          {:refused, _} -> :refused
          phase -> phase
        end,
      node: server.node,
      pool: server.pool,
      storage: storage(lifecycle, nil),
      poison: server.poison,
      refused: with({:refused, reason} <- lifecycle.phase, do: reason, else: (_ -> nil)),
      version: server.version,
      waiting_for: if(lifecycle.phase == :forming, do: server.waiting_for),
      auto_replace: server.auto_replace,
      stats: server.stats
    })
  end

  @doc """
  The status of a group whose server does not answer on `node`: `status`
  is `:not_running` (the group is not started there, or is stopping) or
  `:unresponsive` (no answer in time, or the server exited during the
  call; `error` says which). The keys are those of a running group's
  status, so that `status().primary` and the like are always safe.
  """
  @spec unavailable(node(), term()) :: map()
  def unavailable(node, error) do
    Map.merge(no_replica(), %{
      status: if(error == :not_running, do: :not_running, else: :unresponsive),
      error: error,
      node: node,
      pool: nil,
      storage: nil,
      poison: nil,
      refused: nil,
      version: nil,
      waiting_for: nil,
      auto_replace: nil,
      stats: %{}
    })
  end

  # `:primary` or `:backup` as a member; `:leaving` once left out of the
  # membership (until a quorum of the new members has entered it).
  defp role(%Lifecycle{role: :member}, true), do: :primary
  defp role(%Lifecycle{role: :member}, false), do: :backup
  defp role(%Lifecycle{role: role}, _is_primary), do: role

  # The replica's part of a status where no replica runs on this node.
  defp no_replica do
    %{
      role: :none,
      index: nil,
      epoch: nil,
      members: [],
      view: 0,
      log_view: 0,
      op: 0,
      commit: 0,
      commit_max: 0,
      checkpoint: 0,
      log_base: 0,
      primary: nil,
      replicas: [],
      cluster: nil,
      sync: nil,
      quiet: false
    }
  end

  # The engine's storage map (if it runs), and how the store opened. The
  # base has every key of the engine's map (0 for what it has not
  # reported), so `status.storage.checkpoint` is safe before it runs.
  defp storage(%Lifecycle{config: %{storage: :memory}}, _engine), do: %{mode: :memory}

  defp storage(%Lifecycle{config: %{storage: {:disk, dir}}} = lifecycle, engine) do
    base = %{
      mode: :disk,
      data_dir: dir,
      error: nil,
      syncs: 0,
      wal_bytes: 0,
      wal_size: 0,
      compactions: 0,
      checkpoint: 0
    }

    base |> Map.merge(engine || %{}) |> Map.put(:opened, lifecycle.opened)
  end
end
