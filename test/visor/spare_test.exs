defmodule Visor.SpareTest do
  # A spare (a node running the group, not among its members) commits and
  # reads through a member (Visor.Forward): the same answers as on a
  # member, each command applied once, and a clear error when no member
  # can be reached. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Accessors, Cluster, Counter, Load}

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1))

  # Members a, b, c and the spare d.
  defp spare_cluster do
    [a, b, c, d] = nodes(4)
    :ok = Cluster.start_group([a, b, c, d], Counter, nodes: [a, b, c])
    assert Cluster.status(d, Counter).status == :spare
    {[a, b, c], d}
  end

  test "a spare commits and reads, at every consistency, as a member does; members see its commits" do
    {[a, b, c] = members, d} = spare_cluster()

    assert :erpc.call(d, Counter, :commit, [{:incr, :from_spare}]) == 1
    assert :erpc.call(d, Counter, :commit, [{:echo, :hello}, 2_000]) == :hello

    # Linearizable reads on every member see the spare's commit at once.
    for n <- members, do: assert(:erpc.call(n, Counter, :get_in, [[:count]]) == 1)
    assert MapSet.member?(:erpc.call(b, Counter, :get, []).applied, :from_spare)

    # The spare reads what a member reads.
    expected = :erpc.call(a, Counter, :get, [])
    assert :erpc.call(d, Counter, :get, []) == expected
    assert :erpc.call(d, Counter, :get, [[consistency: :local]]) == expected
    assert :erpc.call(d, Counter, :get_in, [[:count], [timeout: 1_000]]) == 1
    assert :erpc.call(d, Counter, :get_in, [[:count], [consistency: :local]]) == 1

    # A spare's :local read is linearizable: it sees a commit made just
    # before on another node, whichever member serves it.
    assert :erpc.call(c, Counter, :commit, [{:incr, :from_member}]) == 2
    assert :erpc.call(d, Counter, :get_in, [[:count], [consistency: :local]]) == 2

    # Errors are the member's, as they are: the callback's failure, and a
    # path that does not fit the state, which raises in the caller.
    assert {:error, {:handle_commit_failed, %ArgumentError{}}} =
             :erpc.call(d, Counter, :commit, [:raise])

    assert {:exception, _, _} = catch_error(:erpc.call(d, Counter, :get_in, [[:count, :deeper]]))

    # An accessor function runs in the caller, on the spare.
    assert :erpc.call(d, Counter, :get_in, [[:count, Accessors.here()]]) == {d, 2}

    # A spare is still a spare (it runs no replica), and tells where the
    # cluster stands as a member sees it.
    member = Cluster.status(a, Counter)
    replicas = for r <- member.replicas, do: %{r | health: :connected}

    assert %{status: :spare, role: :none, node: ^d, index: nil, op: 0} =
             spare = Cluster.status(d, Counter)

    assert Map.take(spare, [:cluster, :view, :primary, :replicas]) ==
             %{
               cluster: member.cluster,
               view: member.view,
               primary: member.primary,
               replicas: replicas
             }
  end

  test "cluster_size: a spare forwards to the formed members, passing over the other spare" do
    nodes = nodes(5)
    :ok = Cluster.start_group(nodes, Counter, cluster_size: 3)
    spares = Enum.filter(nodes, &(Cluster.status(&1, Counter).status == :spare))
    assert length(spares) == 2

    for {spare, i} <- Enum.with_index(spares, 1) do
      assert :erpc.call(spare, Counter, :commit, [{:incr, spare}]) == i
      assert :erpc.call(spare, Counter, :get_in, [[:count]]) == i
    end

    for n <- nodes -- spares, do: assert(:erpc.call(n, Counter, :get_in, [[:count]]) == 2)
  end

  test "the primary is killed while a spare commits: each command is applied at most once, and the spare goes on" do
    {members, d} = spare_cluster()
    callers = :erpc.call(d, Load, :spawn_callers, [Counter, 4, self(), [timeout: 20_000]])
    acks = Load.await_acks(%{}, 50)

    # The primary as the spare knows it (a view change may have moved it
    # since the start), which is where its calls go; one commit keeps the
    # primary's server busy until it is killed, and a read waits behind it.
    primary = Cluster.status(d, Counter).primary
    assert primary in members
    slow = Task.async(fn -> :erpc.call(d, Counter, :commit, [{:sleep_on, primary, 5_000}]) end)
    read = Task.async(fn -> :erpc.call(d, Counter, :get_in, [[:count], 20_000]) end)
    Process.sleep(500)
    survivors = members -- [primary]
    :ok = Cluster.kill_node(primary, survivors ++ [d])

    # A commit in flight to the primary when it died may or may not have
    # been applied, and says so; a read goes on to another member.
    assert Task.await(slow) == {:error, {:member_down, primary}}
    assert is_integer(Task.await(read, 25_000))

    # The spare's commits go on through a surviving member; the only error
    # is the one above.
    {acks, failed} = collect(acks, [], map_size(acks) + 50)
    Load.stop(callers)
    {acks, failed} = settle(acks, failed, length(callers))
    for {_id, reason} <- failed, do: assert(reason == {:member_down, primary})

    final = :erpc.call(hd(survivors), Counter, :get, [])
    Load.assert_exactly_once(final, acks)
  end

  test "no member reachable: a clear error within the caller's timeout, and nothing applied" do
    {members, d} = spare_cluster()
    Cluster.partition([d], members)
    assert %{status: :spare, primary: nil, replicas: []} = Cluster.status(d, Counter)

    for call <- [
          fn -> :erpc.call(d, Counter, :commit, [{:incr, :lost}, 300]) end,
          fn -> :erpc.call(d, Counter, :get, [[timeout: 300]]) end
        ] do
      {elapsed, result} = :timer.tc(call)
      assert result == {:error, :no_member_reachable}
      assert div(elapsed, 1000) in 300..1_000
    end

    Cluster.heal([d], members)
    Cluster.eventually(fn -> :erpc.call(d, Counter, :get_in, [[:count]]) == 0 end)

    # The members are connected, but the group no longer runs on them.
    for n <- members, do: :ok = Cluster.stop_group(n, Counter)

    assert :erpc.call(d, Counter, :commit, [{:incr, :lost}, 300]) ==
             {:error, :no_member_reachable}
  end

  # A server restarted on a member between the two lookups of its name
  # that a call by name makes (one for the monitor, one for the send)
  # would take the command while the caller, told :noproc, tries another
  # member: applied twice. The spare's call goes to the pid it looked up,
  # so the process it watches is the process it sent to. (The window
  # itself cannot be hit on purpose; this asserts what closes it.)
  test "a spare sends a forwarded request to the member server's pid, the process it monitors" do
    [a, b, c] = members = nodes(3)
    :ok = Cluster.start_group(members, Counter, nodes: members)
    start_supervised!({Counter, nodes: members})
    Cluster.eventually(fn -> Visor.status(Counter).status == :spare end)

    test = self()

    caller =
      spawn(fn ->
        receive do
          :go -> send(test, {:committed, Counter.commit({:incr, :traced})})
        end
      end)

    :erlang.trace(caller, true, [:send, {:tracer, self()}])
    send(caller, :go)
    assert_receive {:committed, 1}, 5_000

    servers =
      for n <- [a, b, c],
          do: :erpc.call(n, Process, :whereis, [Visor.Supervisor.name(Counter, :server)])

    sent_to =
      for {:trace, ^caller, :send, {:"$gen_call", _, {:visor_forwarded, _, _}}, to} <-
            flush_traces(),
          do: to

    assert [to] = sent_to
    assert to in servers, "forwarded to #{inspect(to)}, not to a member server's pid"
  end

  defp flush_traces(acc \\ []) do
    receive do
      {:trace, _, _, _, _} = trace -> flush_traces([trace | acc])
    after
      100 -> Enum.reverse(acc)
    end
  end

  # Acknowledgements and failures until `target` acknowledgements.
  defp collect(acks, failed, target) when map_size(acks) >= target, do: {acks, failed}

  defp collect(acks, failed, target) do
    receive do
      {:acked, id, count} -> collect(Map.put(acks, id, count), failed, target)
      {:failed, id, reason} -> collect(acks, [{id, reason} | failed], target)
    after
      20_000 -> flunk("no progress: #{map_size(acks)} of #{target} acknowledgements")
    end
  end

  # Every report of the stopped callers, up to their `:stopped`.
  defp settle(acks, failed, 0), do: {acks, failed}

  defp settle(acks, failed, running) do
    receive do
      {:acked, id, count} -> settle(Map.put(acks, id, count), failed, running)
      {:failed, id, reason} -> settle(acks, [{id, reason} | failed], running)
      {:stopped, _caller, _seq} -> settle(acks, failed, running - 1)
    after
      25_000 -> flunk("callers did not stop")
    end
  end
end
