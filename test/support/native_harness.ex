defmodule Visor.NativeTest.Harness do
  @moduledoc false
  # Drives engines owned by the calling test process: routes their
  # {:send, to, messages} events with deliver/2, as Visor.Server does over
  # distribution, and records what each replica executed and replied.

  import ExUnit.Assertions

  alias Visor.Native

  def cluster_id, do: :rand.bytes(16)
  def client_id, do: :rand.bytes(16)

  def opts(cluster, count, index, extra \\ %{}) do
    Map.merge(%{cluster: cluster, replica_count: count, replica_index: index, tick_ms: 5}, extra)
  end

  @doc "Starts `count` replicas of one group, all owned by the caller."
  def start_cluster(count, extra \\ %{}), do: start_group(cluster_id(), count, fn _ -> extra end)

  @doc "Starts `count` replicas of cluster `cluster`; `extra.(index)` adds options."
  def start_group(cluster, count, extra) do
    engines =
      Map.new(0..(count - 1), fn i ->
        {:ok, engine} = Native.start(opts(cluster, count, i, extra.(i)), self())
        {i, engine}
      end)

    %{
      engines: engines,
      index_of: Map.new(engines, fn {i, e} -> {e, i} end),
      executes: Map.new(engines, fn {i, _} -> {i, []} end),
      replies: Map.new(engines, fn {i, _} -> {i, []} end),
      storage: Map.new(engines, fn {i, _} -> {i, []} end),
      # Membership events, per replica, oldest first.
      membership: Map.new(engines, fn {i, _} -> {i, []} end),
      ready: [],
      last_send: nil,
      # Quiet groups: whether the engine last said it ticks each replica no more.
      asleep: Map.new(engines, fn {i, _} -> {i, false} end),
      # Per replica, {status, view, primary} as the status read on each
      # `:status_changed` showed them, oldest first.
      changes: Map.new(engines, fn {i, _} -> {i, []} end)
    }
  end

  def stop_cluster(c), do: Enum.each(c.engines, fn {_, e} -> :ok = Native.stop(e) end)

  @doc """
  Routes engine messages until `done?.(c)` holds; fails after `timeout` ms.
  Executes and replies are kept in arrival order (newest last).
  """
  def pump(c, done?, timeout \\ 5_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    do_pump(c, done?, deadline)
  end

  defp do_pump(c, done?, deadline) do
    if done?.(c) do
      c
    else
      remaining = max(deadline - System.monotonic_time(:millisecond), 0)
      index_of = c.index_of

      receive do
        {:visor_engine, engine, events} when is_map_key(index_of, engine) ->
          c |> handle(c.index_of[engine], events) |> do_pump(done?, deadline)
      after
        remaining ->
          flunk("""
          cluster did not reach the expected state in time
          executes: #{inspect(c.executes, limit: 20)}
          replies: #{inspect(c.replies)}
          status: #{inspect(Map.new(c.engines, fn {i, e} -> {i, Native.status(e)} end))}
          """)
      end
    end
  end

  defp handle(c, from, events) do
    Enum.reduce(events, c, fn
      {:send, to, _id, messages}, c ->
        assert to != from and messages != [] and Enum.all?(messages, &is_binary/1)
        :ok = Native.deliver(c.engines[to], messages)
        %{c | last_send: {to, List.last(messages)}}

      {:execute, _op, _view, _ts, _requests} = e, c ->
        update_in(c.executes[from], &(&1 ++ [e]))

      {:reply, _client, _request, _op, _outcome} = r, c ->
        update_in(c.replies[from], &(&1 ++ [r]))

      # The engine's word that its status changed (the router's watch):
      # the copy read on receipt already shows the change.
      :status_changed, c ->
        s = Native.status(c.engines[from])
        update_in(c.changes[from], &(&1 ++ [{s.status, s.view, s.primary}]))

      {:read_ready, _id, _op} = r, c ->
        %{c | ready: c.ready ++ [{from, r}]}

      {:storage, _kind, _detail} = n, c ->
        update_in(c.storage[from], &(&1 ++ [n]))

      {:reconfigured, _id, _result} = m, c ->
        update_in(c.membership[from], &(&1 ++ [m]))

      {:epoch, _epoch, _members, _role, _membership} = m, c ->
        update_in(c.membership[from], &(&1 ++ [m]))

      {:removed, _epoch} = m, c ->
        update_in(c.membership[from], &(&1 ++ [m]))

      {:quiet, asleep}, c when is_boolean(asleep) ->
        put_in(c.asleep[from], asleep)
    end)
  end

  def replied?(c, index, client, request) do
    Enum.any?(c.replies[index], &match?({:reply, ^client, ^request, _, _}, &1))
  end

  def reply(c, index, client, request) do
    Enum.find(c.replies[index], &match?({:reply, ^client, ^request, _, _}, &1))
  end

  @doc "Every replica has executed `op`."
  def all_executed?(c, op) do
    Enum.all?(c.executes, fn {_, list} ->
      Enum.any?(list, &match?({:execute, ^op, _, _, _}, &1))
    end)
  end

  @doc "Registers `client` through replica `via`; returns the session."
  def register(c, via, client) do
    :ok = Native.submit(c.engines[via], client, 0, 0, "")
    c = pump(c, &replied?(&1, via, client, 0))
    {:reply, ^client, 0, op, {:registered, session}} = reply(c, via, client, 0)
    assert session == op
    {c, session}
  end

  @doc """
  Submits request `request` of `client` through replica `via`, waits for
  its reply and asserts it executed; returns `{c, op}`.
  """
  def commit(c, via, client, session, request, payload) do
    :ok = Native.submit(c.engines[via], client, session, request, payload)
    c = pump(c, &replied?(&1, via, client, request))
    {:reply, ^client, ^request, op, :executed} = reply(c, via, client, request)
    {c, op}
  end

  # Engine state settles within milliseconds; two seconds is generous.
  def wait_until(fun), do: Visor.Test.Cluster.eventually(fun, 2_000)

  def dropped(stats) do
    stats
    |> Enum.filter(fn {k, _} -> String.starts_with?(Atom.to_string(k), "dropped_") end)
    |> Enum.map(fn {_, v} -> v end)
    |> Enum.sum()
  end
end
