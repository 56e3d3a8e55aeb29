defmodule Visor.ReplicationTest do
  # Three real BEAM nodes (OTP :peer), shared by the tests of this module:
  # none of them breaks the cluster. Not async: distribution is VM-wide.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  setup_all do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    :ok = Cluster.start_group(nodes, Cache, nodes: nodes)
    :ok = Cluster.start_group(nodes, Counter, nodes: nodes)
    %{nodes: nodes}
  end

  defp on(node, fun, args), do: :erpc.call(node, Visor, fun, args, 30_000)

  test "the README's Cache: commit, get and get_in from every node", %{nodes: nodes} do
    for {node, i} <- Enum.with_index(nodes) do
      user = :"user#{i}"

      assert :erpc.call(node, Cache, :commit, [{:add, %{user => %{email: "#{i}@example.com"}}}]) ==
               nil
    end

    expected = %{
      user0: %{email: "0@example.com"},
      user1: %{email: "1@example.com"},
      user2: %{email: "2@example.com"}
    }

    # Linearizable reads from every node see every commit that returned.
    for node <- nodes do
      assert :erpc.call(node, Cache, :get, []) == expected
      assert :erpc.call(node, Cache, :get_in, [[:user1, :email]]) == "1@example.com"
      assert :erpc.call(node, Cache, :get_in, [[:nobody, :email]]) == nil
    end

    Cluster.converged(nodes, Cache, expected)

    for node <- nodes do
      assert :erpc.call(node, Cache, :get_in, [[:user2], [consistency: :local]]) ==
               %{email: "2@example.com"}
    end
  end

  test "a read on one node sees a commit that just returned on another", %{nodes: nodes} do
    # Across all ordered pairs: a backup's local state may lag the commit,
    # but a linearizable read never does.
    for writer <- nodes, reader <- nodes do
      id = {:seen, writer, reader}
      count = on(writer, :commit, [Counter, {:incr, id}])
      state = on(reader, :get, [Counter])
      assert id in state.applied
      assert state.count >= count
    end
  end

  test "handle_commit/3 gets the op, view and the primary's timestamp, the same everywhere",
       %{nodes: nodes} do
    metas = for node <- nodes, do: on(node, :commit, [Counter, :meta])

    for meta <- metas do
      assert %{op: op, view: view, timestamp: ts} = meta
      assert is_integer(op) and op > 0 and is_integer(view) and view >= 0
      # Nanoseconds since the epoch, near now.
      assert abs(ts - System.os_time(:nanosecond)) < 60_000_000_000
    end

    # Ops and timestamps strictly increase along the log.
    assert metas |> Enum.map(& &1.op) |> Enum.sort() == Enum.map(metas, & &1.op)
    assert Enum.map(metas, & &1.timestamp) == Enum.sort(Enum.map(metas, & &1.timestamp))
    assert Enum.uniq(Enum.map(metas, & &1.timestamp)) == Enum.map(metas, & &1.timestamp)

    # Every replica stored the metadata of the last command it applied.
    last = List.last(metas)
    state = on(hd(nodes), :get, [Counter])
    assert {state.last_op, state.last_timestamp} == {last.op, last.timestamp}
    Cluster.converged(nodes, Counter, state)
  end

  test "a failing handle_commit changes no replica's state and names the failure",
       %{nodes: nodes} do
    [a, b, c] = nodes
    before = on(a, :get, [Counter])

    assert {:error, {:handle_commit_failed, %ArgumentError{message: "boom"}}} =
             on(a, :commit, [Counter, :raise])

    assert {:error, {:handle_commit_failed, {:throw, :oops}}} = on(b, :commit, [Counter, :throw])
    assert {:error, {:handle_commit_failed, {:exit, :bye}}} = on(c, :commit, [Counter, :exit])

    assert {:error, {:handle_commit_failed, {:bad_return, {:reply, :not_ok, _}}}} =
             on(a, :commit, [Counter, :bad_return])

    # The log moved on (each failure took an op) but the state did not; the
    # servers are alive and serve the next command.
    assert on(b, :get, [Counter]) == before
    Cluster.converged(nodes, Counter, before)
    assert on(c, :commit, [Counter, {:incr, :after_failures}]) == before.count + 1
  end

  test "a command over batch_max_bytes is refused before it reaches the log",
       %{nodes: [a | _] = nodes} do
    # The primary's log head: only a prepare moves it. (A backup's commit
    # number may still be catching up with earlier commits meanwhile: the
    # primary tells idle backups at its next tick.)
    primary = Cluster.status(a, Counter).primary
    op_before = Cluster.status(primary, Counter).op
    big = {:echo, :binary.copy("x", 1_100_000)}
    assert {:error, {:command_too_large, size, 1_048_576}} = on(a, :commit, [Counter, big])
    assert size > 1_048_576
    assert Cluster.status(primary, Counter).op == op_before

    # Just under the limit goes through, from a backup too.
    fits = {:echo, :binary.copy("y", 1_000_000)}
    assert on(List.last(nodes), :commit, [Counter, fits]) == elem(fits, 1)
  end

  test "malformed messages from another node are dropped and counted", %{nodes: nodes} do
    [a, b, c] = nodes
    formation = Visor.Supervisor.name(Counter, :formation)
    before = for n <- nodes, into: %{}, do: {n, Cluster.status(n, Counter).stats}
    pids = fn -> for n <- nodes, name <- [Counter, formation], do: pid(n, name) end
    pids_before = pids.()

    junk = [
      :junk,
      {:visor_peer, :not_a_binary},
      {:visor_peer, ""},
      {:visor_peer, :rand.bytes(200)},
      {:visor_peer, [:rand.bytes(50), :not_a_binary, ""]},
      {:visor_peer, [:x | :improper]},
      # A plausible header (magic, version) with garbage after it.
      {:visor_peer, <<0::128, 0x5356::little-16, 1::little-16, 0::128, 0, "garbage">>},
      {:visor_engine, make_ref(), [{:execute, 1, 0, 0, []}]},
      {:visor_engine, nil, :not_a_list},
      {:visor_deadline, make_ref()},
      {:visor_formation, make_ref(), {:member, %{cluster: "x", members: [:nope]}}}
    ]

    formation_junk = [
      :junk,
      {:visor_hello, :not_a_pid, :x, 1, :y},
      {:visor_hello_reply, self(), :x, 1, :restarted},
      # Plausible verdicts from a member, with junk records.
      {:visor_hello_reply, self(), b, 1, {:restarted, :not_a_map}},
      {:visor_hello_reply, self(), b, 1, {:ok, %{c => :junk, :nope => {1, :fresh}, 7 => 8}}},
      {:visor_hello, self(), b, 1, :not_the_cluster},
      {:visor_formed, %{members: :bad}},
      {:visor_propose, self(), %{id: 1, cluster: <<0::128>>, members: [a]}},
      {:visor_abort, :whatever}
    ]

    # Sent from a peer (not the test node), to every node.
    for n <- nodes do
      for m <- junk, do: :erpc.call(a, :erlang, :send, [{Counter, n}, m])
      for m <- formation_junk, do: :erpc.call(a, :erlang, :send, [{formation, n}, m])
    end

    for bad <- [:nonsense, {{:commit, "x"}, :no_deadline}, {{:read, :no_path}, 0}] do
      assert {:error, :unknown_call} = :erpc.call(b, GenServer, :call, [{Counter, c}, bad])
    end

    # Only a node's own server may have its router start an engine.
    start = {:visor_start_engine, %{}, {}}
    assert {:error, :unknown_call} = :erpc.call(b, GenServer, :call, [{Counter, c}, start])

    assert {:error, :unknown_call} = :erpc.call(b, GenServer, :call, [{formation, c}, :nonsense])
    GenServer.cast({Counter, c}, :nonsense)
    GenServer.cast({formation, c}, :nonsense)

    # Still one cluster, still working, from every node.
    for n <- nodes, do: assert(is_integer(on(n, :commit, [Counter, {:incr, {:junk, n}}])))

    for n <- nodes do
      stats = Cluster.status(n, Counter).stats
      old = before[n]
      assert stats.peer_malformed > old.peer_malformed
      assert stats.unexpected_messages > old.unexpected_messages

      dropped =
        for k <- [:dropped_truncated, :dropped_corrupt, :dropped_unknown_format],
            do: stats[k] - old[k]

      assert Enum.sum(dropped) >= 3
    end

    statuses = for n <- nodes, do: Cluster.status(n, Counter)
    assert statuses |> Enum.map(& &1.cluster) |> Enum.uniq() |> length() == 1
    assert Enum.all?(statuses, &(&1.status == :normal))
    # Nothing crashed or restarted (a restarted server would have to rejoin).
    assert pids.() == pids_before
  end

  test "a get_in path that does not fit the state raises in the caller; the server lives on",
       %{nodes: [a | _]} do
    server = pid(a, Counter)

    for consistency <- [:linearizable, :local] do
      # The count is an integer: there is nothing below it.
      assert_raise ErlangError, fn ->
        :erpc.call(a, Counter, :get_in, [[:count, :deeper], [consistency: consistency]])
      end
    end

    assert pid(a, Counter) == server
    assert is_integer(:erpc.call(a, Counter, :get_in, [[:count]]))
  end

  defp pid(node, name), do: :erpc.call(node, Process, :whereis, [name])

  test "status names the primary and every replica's node and health", %{nodes: nodes} do
    statuses = for n <- nodes, do: Cluster.status(n, Counter)
    [primary] = statuses |> Enum.map(& &1.primary) |> Enum.uniq()
    assert primary in nodes

    for {s, n} <- Enum.zip(statuses, nodes) do
      assert s.node == n
      assert s.status == :normal
      assert s.role == if(n == primary, do: :primary, else: :backup)
      assert Enum.map(s.replicas, & &1.node) == Enum.sort(nodes)

      for r <- s.replicas do
        assert r.health == if(r.node == n, do: :self, else: :connected)
        assert r.role == if(r.node == primary, do: :primary, else: :backup)
      end

      assert s.commit <= s.commit_max
    end
  end

  test "busy polling ends: between commits an idle server sleeps", %{nodes: nodes} do
    # Every node polls after its hand-offs (busy_poll_us, default 50 µs)
    # while one of its commands is in flight; afterwards it must wait in
    # receive like any idle process, not spin.
    for node <- nodes, do: on(node, :commit, [Counter, {:incr, {:poll, node}}])
    Process.sleep(20)

    for node <- nodes do
      server = pid(node, Visor.Supervisor.name(Counter, :server))

      samples =
        for _ <- 1..50 do
          Process.sleep(2)
          {:status, status} = :erpc.call(node, Process, :info, [server, :status])
          status
        end

      waiting = Enum.count(samples, &(&1 == :waiting))
      assert waiting >= 45, "#{node}'s server was not waiting in #{50 - waiting} of 50 samples"
    end
  end

  test "a node where the group is not running gets :not_running" do
    assert Cache.commit({:add, %{x: 1}}) == {:error, :not_running}
    assert Cache.get() == {:error, :not_running}
    assert %{status: :not_running, primary: nil} = Visor.status(Cache)
  end

  test "timeouts: positional, :infinity; one the runtime cannot represent raises before sending",
       %{nodes: [a, b | _]} do
    count = on(a, :get, [Counter]).count
    assert :erpc.call(a, Counter, :commit, [{:incr, :positional}, 10_000]) == count + 1
    assert on(b, :commit, [Counter, {:incr, :infinity}, [timeout: :infinity]]) == count + 2
    assert on(b, :get, [Counter, [timeout: :infinity]]).count == count + 2
    assert on(b, :get_in, [Counter, [:count], 10_000]) == count + 2

    for bad <- [5_000_000_000, [timeout: 5_000_000_000], [timeout: -1]] do
      # Raised there, in the caller (erpc wraps it).
      assert {:exception, %ArgumentError{message: message}, _} =
               catch_error(on(a, :commit, [Counter, {:incr, {:bad_timeout, bad}}, bad]))

      assert message =~ "timeout"
    end

    # Nothing was sent: a later linearizable read sees only the good ones.
    state = on(b, :get, [Counter])
    assert state.count == count + 2
    refute Enum.any?(state.applied, &match?({:bad_timeout, _}, &1))
  end
end
