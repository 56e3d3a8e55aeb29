defmodule Visor.FailoverTest do
  # Kills primaries (SIGKILL of the node's OS process) under load and
  # checks the outcome of every single increment; then kills nodes one at a
  # time and restarts them, each rejoining with an empty memory and
  # recovering its state from the others. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter, Load}
  import Load, only: [await_acks: 2, drain: 2, assert_exactly_once: 3]

  @callers_per_node 4

  test "3 nodes: the primary is killed while every node commits; a new primary takes over" do
    run(3, 1)
  end

  test "5 nodes: two primaries are killed in turn while every node commits" do
    run(5, 2)
  end

  test "3 nodes (nodes:): every node in turn, the primary first, is killed and restarted while every node commits" do
    rolling(3, :nodes, 3)
  end

  test "5 nodes (cluster_size:): the primary and two backups in turn are killed and restarted while every node commits" do
    rolling(5, :cluster_size, 3)
  end

  defp run(size, kills) do
    nodes = Cluster.start_peers(size) |> Enum.map(&elem(&1, 1))
    :ok = Cluster.start_group(nodes, Counter, nodes: nodes)

    callers =
      for n <- nodes, into: %{} do
        # Long timeouts: a survivor's commit must never give up during failover.
        pids =
          :erpc.call(n, Load, :spawn_callers, [
            Counter,
            @callers_per_node,
            self(),
            [timeout: 20_000]
          ])

        {n, pids}
      end

    acks = await_acks(%{}, 50)

    {killed, survivors, acks} =
      Enum.reduce(1..kills, {[], nodes, acks}, fn _, {killed, alive, acks} ->
        %{view: view, primary: primary} = Cluster.status(hd(alive), Counter)
        alive = alive -- [primary]
        :ok = Cluster.kill_node(primary, alive)

        # Progress after the kill: a new primary, in a later view, commits
        # the survivors' increments. (Drained first: acknowledgements sent
        # before the kill do not count; at most one per caller was still in
        # flight, far fewer than 50.)
        {acks, []} = drain(acks, [])
        acks = await_acks(acks, map_size(acks) + 50)

        Cluster.eventually(fn ->
          status = Cluster.status(hd(alive), Counter)
          status.primary in alive and status.view > view
        end)

        {[primary | killed], alive, acks}
      end)

    # Stop the survivors' callers; each reports its last sequence number
    # after its last outcome, so then every outcome is in the mailbox.
    for n <- survivors, do: :erpc.call(n, Load, :stop, [callers[n]])
    last = for _ <- 1..(length(survivors) * @callers_per_node), into: %{}, do: receive_stopped()
    {acks, failed} = drain(acks, [])

    assert failed == [], "survivors' commits failed: #{inspect(Enum.take(failed, 5))}"

    for {{n, _} = caller, last_seq} <- last, n in survivors, seq <- 1..last_seq//1 do
      assert Map.has_key?(acks, {caller, seq}), "no outcome for #{inspect({caller, seq})}"
    end

    final = :erpc.call(hd(survivors), Counter, :get, [])
    acked = MapSet.new(Map.keys(acks))

    assert_exactly_once(final, acks, acked)

    # The only increments applied without an acknowledgement here belong to
    # callers on killed nodes: the one in flight when the node died (or one
    # whose acknowledgement died with it), so at most two per caller.
    unacked = MapSet.difference(final.applied, acked) |> Enum.to_list()
    assert Enum.all?(unacked, fn {{n, _}, _} -> n in killed end), inspect(unacked)

    for {caller, ids} <- Enum.group_by(unacked, &elem(&1, 0)) do
      assert length(ids) <= 2, "#{inspect(caller)} had #{length(ids)} unacknowledged increments"
    end

    assert final.count == map_size(acks) + length(unacked)

    # Every survivor converges on the same state.
    for n <- survivors do
      Cluster.eventually(fn ->
        :erpc.call(n, Counter, :get, [[consistency: :local]]) == final
      end)
    end
  end

  # Kills `victims` nodes one at a time (the primary first, then backups
  # not killed yet), restarting each under the same name and waiting until
  # it is normal again before the next kill. Callers commit from every node
  # all along, including from a restarted node while it recovers.
  defp rolling(size, membership, victims) do
    nodes = Cluster.start_peers(size) |> Enum.map(&elem(&1, 1))

    opts =
      case membership do
        :nodes -> [nodes: nodes]
        :cluster_size -> [cluster_size: size]
      end

    :ok = Cluster.start_group(nodes, Counter, opts)

    # node => {first caller index, pids} of its callers now running.
    callers = for n <- nodes, into: %{}, do: {n, {1, spawn_load(n, 1)}}
    acks = await_acks(%{}, 30)

    {callers, dead, acks} =
      Enum.reduce(1..victims, {callers, [], acks}, fn round, {callers, dead, acks} ->
        %{primary: primary} = Cluster.status(hd(nodes), Counter)
        killed_before = dead |> Enum.map(&elem(&1, 0)) |> Enum.uniq()

        # A backup not killed yet if there is one; else the last one left.
        victim =
          cond do
            round == 1 -> primary
            (backups = nodes -- [primary | killed_before]) != [] -> hd(backups)
            true -> hd(nodes -- killed_before)
          end

        survivors = nodes -- [victim]
        {first, _pids} = callers[victim]
        dead = dead ++ for(i <- first..(first + @callers_per_node - 1), do: {victim, i})

        :ok = Cluster.kill_node(victim, survivors)
        # The survivors go on without it (a new primary if it was the primary).
        acks = await_acks(acks, map_size(acks) + 30)

        {_pid, ^victim} = Cluster.restart_peer(victim, survivors)
        :ok = Cluster.start_group([victim], Counter, opts)
        assert Cluster.rejoined?(victim, Counter)
        # New callers at once: their commits wait while the replica recovers.
        first = round * 100 + 1
        callers = Map.put(callers, victim, {first, spawn_load(victim, first)})

        Cluster.eventually(fn -> Cluster.status(victim, Counter).status == :normal end, 15_000)
        # And it takes part again: everyone's commits go on, its own included.
        acks = await_acks(acks, map_size(acks) + 30)
        {callers, dead, acks}
      end)

    for {n, {_first, pids}} <- callers, do: :erpc.call(n, Load, :stop, [pids])
    last = for _ <- 1..(size * @callers_per_node), into: %{}, do: receive_stopped()
    {acks, failed} = drain(acks, [])

    assert failed == [], "commits failed: #{inspect(Enum.take(failed, 5))}"

    # Every caller alive at the end has an outcome for each of its commits,
    # the restarted nodes' new callers included.
    for {caller, last_seq} <- last, seq <- 1..last_seq//1 do
      assert Map.has_key?(acks, {caller, seq}), "no outcome for #{inspect({caller, seq})}"
    end

    assert Enum.all?(Map.keys(last), &(&1 not in dead))

    final = :erpc.call(hd(nodes), Counter, :get, [])
    acked = MapSet.new(Map.keys(acks))

    assert_exactly_once(final, acks, acked)

    # Applied without an acknowledgement: only increments of callers that
    # died with their node (in flight, or acknowledged to a dead caller).
    unacked = MapSet.difference(final.applied, acked) |> Enum.to_list()
    assert Enum.all?(unacked, fn {caller, _seq} -> caller in dead end), inspect(unacked)

    for {caller, ids} <- Enum.group_by(unacked, &elem(&1, 0)) do
      assert length(ids) <= 2, "#{inspect(caller)} had #{length(ids)} unacknowledged increments"
    end

    assert final.count == map_size(acks) + length(unacked)

    # Every node, each restarted one included, converges on the same state.
    for n <- nodes do
      Cluster.eventually(fn ->
        :erpc.call(n, Counter, :get, [[consistency: :local]]) == final
      end)
    end
  end

  defp spawn_load(node, first) do
    # Long timeouts: no commit may give up during a failover or a recovery.
    :erpc.call(node, Load, :spawn_callers, [
      Counter,
      @callers_per_node,
      self(),
      [timeout: 20_000],
      first
    ])
  end

  defp receive_stopped do
    receive do
      {:stopped, caller, seq} -> {caller, seq}
    after
      30_000 -> flunk("a caller did not stop")
    end
  end
end
