defmodule Visor.Test.Load do
  @moduledoc """
  Callers that commit `{:incr, id}` in a loop on a peer node and report
  every outcome to a process on the test node, for the fault tests.

  Each caller has one commit outstanding at a time and ids
  `{{node, caller}, seq}` with `seq = 1, 2, 3, ...`, so the test can tell
  which increments were acknowledged, which failed, and which were in
  flight when a node died.
  """

  @doc """
  Spawns `count` callers on this node, numbered from `first`; returns
  their pids. A node restarted under the same name numbers its new callers
  apart from its earlier ones, so that their ids never collide.
  """
  def spawn_callers(module, count, report_to, opts, first \\ 1) do
    for i <- first..(first + count - 1) do
      spawn(fn -> loop(module, {node(), i}, 1, report_to, opts) end)
    end
  end

  @doc """
  As `spawn_callers/5`, over many groups: caller `i` commits to `groups`
  in turn, starting at the `i`-th, and reports `{:acked, {group, id},
  count}` or `{:failed, {group, id}, reason}`.
  """
  def spawn_callers_over(groups, count, report_to, opts) do
    groups = List.to_tuple(groups)

    for i <- 1..count do
      spawn(fn -> loop_over(groups, i, {node(), i}, 1, report_to, opts) end)
    end
  end

  @doc "Stops callers (from any node); each answers `{:stopped, caller, last_seq}`."
  def stop(pids), do: Enum.each(pids, &send(&1, :stop))

  @doc """
  Collects `{:acked, id, count}` reports into `acks` (id => count) until
  there are `target` of them; fails the test on a `{:failed, ...}` report
  or after 15 s without reaching it.
  """
  def await_acks(acks, target) when map_size(acks) >= target, do: acks

  def await_acks(acks, target) do
    receive do
      {:acked, id, count} ->
        await_acks(Map.put(acks, id, count), target)

      {:failed, id, reason} ->
        ExUnit.Assertions.flunk("commit #{inspect(id)} failed: #{inspect(reason)}")
    after
      15_000 ->
        ExUnit.Assertions.flunk("no progress: #{map_size(acks)} of #{target} acknowledgements")
    end
  end

  @doc """
  Spawns `per_node` callers of `module` on each of `nodes` (numbered from
  `first`), reporting here; returns `%{node => pids}`.
  """
  def spawn_load(nodes, module, per_node, opts, first) do
    for n <- nodes, into: %{} do
      {n, :erpc.call(n, __MODULE__, :spawn_callers, [module, per_node, self(), opts, first])}
    end
  end

  @doc """
  Collects reports until there are `target` acknowledgements: `{acks,
  failed}`. Only callers on the nodes in `may_fail` may report a failure
  (else the test fails); the test fails after 20 s without progress.
  """
  def collect(acks, target, may_fail, failed \\ [])

  def collect(acks, target, _may_fail, failed) when map_size(acks) >= target,
    do: {acks, failed}

  def collect(acks, target, may_fail, failed) do
    import ExUnit.Assertions

    receive do
      {:acked, id, count} ->
        collect(Map.put(acks, id, count), target, may_fail, failed)

      {:failed, {{n, _}, _} = id, reason} ->
        assert n in may_fail, "commit #{inspect(id)} failed: #{inspect(reason)}"
        collect(acks, target, may_fail, [{id, reason} | failed])
    after
      20_000 -> flunk("no progress: #{map_size(acks)} of #{target} acknowledgements")
    end
  end

  @doc """
  Stops the `per_node` callers on each of `nodes` (`callers`: as
  `spawn_load/5` returns; each reports its last sequence number after its
  last outcome, so then every outcome is in the mailbox) and returns the
  acknowledgements.
  """
  def stop_callers(nodes, callers, acks, per_node) do
    import ExUnit.Assertions
    for n <- nodes, do: :erpc.call(n, __MODULE__, :stop, [callers[n]])

    for _ <- 1..(length(nodes) * per_node) do
      assert_receive {:stopped, _caller, _last}, 30_000
    end

    {acks, _failed} = drain(acks, [])
    acks
  end

  @doc """
  The callers on the nodes `up` stop; every acknowledged increment is in
  the survivors' `module` state exactly once, and the members among `up`
  all converge on it.
  """
  def finish(up, module, acks, callers, per_node) do
    alias Visor.Test.Cluster
    acks = stop_callers(up, callers, acks, per_node)
    survivor = Enum.find(up, &(Cluster.status(&1, module).role in [:primary, :backup]))
    final = :erpc.call(survivor, module, :get, [])
    assert_exactly_once(final, acks)
    members = Cluster.status(survivor, module).members
    Cluster.converged(Enum.filter(members, &(&1 in up)), module, final, 10_000)
  end

  @doc "Takes every report already in the mailbox: `{acks, failed}`."
  def drain(acks, failed) do
    receive do
      {:acked, id, count} -> drain(Map.put(acks, id, count), failed)
      {:failed, id, reason} -> drain(acks, [{id, reason} | failed])
    after
      0 -> {acks, failed}
    end
  end

  @doc """
  Exactly once, for a `Visor.Test.Counter` state `final` and the
  acknowledgements `acks` (id => count): nothing applied twice (every
  applied id counted once), nothing acknowledged lost, and every
  acknowledged reply a distinct count.
  """
  def assert_exactly_once(final, acks, acked \\ nil) do
    import ExUnit.Assertions
    acked = acked || MapSet.new(Map.keys(acks))
    assert final.count == MapSet.size(final.applied)
    assert MapSet.subset?(acked, final.applied)
    assert acks |> Map.values() |> Enum.uniq() |> length() == map_size(acks)
  end

  defp loop_over(groups, turn, caller, seq, report_to, opts) do
    receive do
      :stop -> send(report_to, {:stopped, caller, seq - 1})
    after
      0 ->
        group = elem(groups, rem(turn, tuple_size(groups)))
        id = {caller, seq}

        case Visor.commit(group, {:incr, id}, opts) do
          count when is_integer(count) -> send(report_to, {:acked, {group, id}, count})
          {:error, reason} -> send(report_to, {:failed, {group, id}, reason})
        end

        loop_over(groups, turn + 1, caller, seq + 1, report_to, opts)
    end
  end

  defp loop(module, caller, seq, report_to, opts) do
    receive do
      :stop -> send(report_to, {:stopped, caller, seq - 1})
    after
      0 ->
        id = {caller, seq}

        case Visor.commit(module, {:incr, id}, opts) do
          count when is_integer(count) -> send(report_to, {:acked, id, count})
          {:error, reason} -> send(report_to, {:failed, id, reason})
        end

        loop(module, caller, seq + 1, report_to, opts)
    end
  end
end
