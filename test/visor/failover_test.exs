defmodule Visor.FailoverTest do
  # Kills primaries (SIGKILL of the node's OS process) under load and
  # checks the outcome of every single increment. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter, Load}

  @callers_per_node 4

  test "3 nodes: the primary is killed while every node commits; a new primary takes over" do
    run(3, 1)
  end

  test "5 nodes: two primaries are killed in turn while every node commits" do
    run(5, 2)
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

    # Nothing applied twice: every applied id counted once.
    assert final.count == MapSet.size(final.applied)
    # Nothing lost: every acknowledged increment is in the state.
    assert MapSet.subset?(acked, final.applied)
    # Every acknowledged reply was a distinct count.
    assert acks |> Map.values() |> Enum.uniq() |> length() == map_size(acks)

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

  # Collects acknowledgements until there are `target` of them.
  defp await_acks(acks, target) when map_size(acks) >= target, do: acks

  defp await_acks(acks, target) do
    receive do
      {:acked, id, count} -> await_acks(Map.put(acks, id, count), target)
      {:failed, id, reason} -> flunk("commit #{inspect(id)} failed: #{inspect(reason)}")
    after
      15_000 -> flunk("no progress: #{map_size(acks)} of #{target} acknowledgements")
    end
  end

  defp receive_stopped do
    receive do
      {:stopped, caller, seq} -> {caller, seq}
    after
      30_000 -> flunk("a caller did not stop")
    end
  end

  defp drain(acks, failed) do
    receive do
      {:acked, id, count} -> drain(Map.put(acks, id, count), failed)
      {:failed, id, reason} -> drain(acks, [{id, reason} | failed])
    after
      0 -> {acks, failed}
    end
  end
end
