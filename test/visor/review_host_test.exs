defmodule Visor.ReviewHostTest do
  # Adversarial review of the host's "Lose nothing" #4, #12 and #13: shapes
  # of peer messages, restarts and settings that the fixes did not cover.
  # Tests tagged :skip describe a bug still open (see each comment). Not
  # async: real nodes.
  use ExUnit.Case, async: false

  import Bitwise
  alias Visor.Test.{Cluster, Counter}

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1))
  defp server(node), do: :erpc.call(node, Process, :whereis, [Cache])

  defp formation(node),
    do: :erpc.call(node, Process, :whereis, [Visor.Supervisor.name(Cache, :formation)])

  test "a call with a deadline too far for a timer does not crash the server" do
    [a | _] = nodes = nodes(3)
    :ok = Cluster.start_group(nodes, Cache, nodes: nodes)
    assert :erpc.call(a, Cache, :commit, [{:add, %{before: 1}}]) == nil
    before = server(a)

    # From another node (this one), as a raw call: any deadline is an integer.
    payload = :erlang.term_to_binary({:add, %{far: 1}})
    server = Visor.Supervisor.name(Cache, :server)
    assert {:ok, nil} = GenServer.call({server, a}, {{:commit, payload}, 1 <<< 62}, 5_000)
    # Through the API, the longest timeout is :infinity (2^32-1 ms, the
    # longest a timer waits); one of some 35 years raises before sending.
    assert :erpc.call(a, Cache, :commit, [{:add, %{api: 1}}, [timeout: :infinity]]) == nil

    assert {:exception, %ArgumentError{}, _} =
             catch_error(:erpc.call(a, Cache, :commit, [{:add, %{api: 2}}, [timeout: 1 <<< 40]]))

    assert server(a) == before
    assert :erpc.call(a, Cache, :get, []) == %{before: 1, far: 1, api: 1}
  end

  test "a skip names an op of the log (a u64): a larger op does not wrap onto another" do
    wrapped = (1 <<< 64) + 5
    assert_raise FunctionClauseError, fn -> Visor.skip(Cache, wrapped) end
    assert_raise FunctionClauseError, fn -> Visor.Executor.skip_payload(wrapped) end
    assert Visor.Executor.skip_target(Visor.Executor.skip_payload(5)) == 5
  end

  test "formation messages with malformed members crash no formation process" do
    [a, b] = nodes = nodes(2)

    # cluster_size 3 with two nodes: both stay discovering.
    for n <- nodes,
        do:
          {:ok, _} =
            :erpc.call(n, Cluster, :start_group_here, [Cache, [cluster_size: 3], :critical])

    Process.sleep(300)
    before = for n <- nodes, do: formation(n)
    name = Visor.Supervisor.name(Cache, :formation)

    # A formed cluster naming only the receiver, with other settings.
    send(
      {name, a},
      {:visor_formed,
       %{id: 1, cluster: <<0::128>>, members: [a], incarnations: %{}, settings: %{}}}
    )

    # A proposal whose member list is an improper list.
    send({name, b}, {:visor_propose, self(), %{id: 1, cluster: <<0::128>>, members: [:x | :y]}})

    Process.sleep(300)
    assert for(n <- nodes, do: formation(n)) == before
  end

  test "odd but well-formed calls, casts, exits and deep terms from a peer crash neither process" do
    [a | _] = nodes = nodes(3)
    :ok = Cluster.start_group(nodes, Cache, nodes: nodes)
    assert :erpc.call(a, Cache, :commit, [{:add, %{before: 1}}]) == nil
    before = for n <- nodes, do: {server(n), formation(n)}
    deep = Enum.reduce(1..100_000, :bottom, &[&1 | [&2]])
    alias_from = {self(), [:alias | make_ref()]}

    messages = [
      {:"$gen_call", {self(), :not_a_ref}, :junk},
      {:"$gen_call", {self(), make_ref()}, {{:commit, :not_binary}, 1}},
      {:"$gen_call", {self(), make_ref()}, {{:read_local, [:no, :such, :path]}, 1}},
      {:"$gen_call", {self(), make_ref()}, {{:skip, 0}, 1}},
      {:"$gen_call", alias_from, {:subscribe_typo, self(), make_ref()}},
      {:"$gen_cast", :junk},
      {:system, {self(), make_ref()}, :junk_request},
      # An EXIT from a process that is not the parent is an ordinary message.
      {:EXIT, self(), :kill},
      {:visor_peer, deep},
      {:visor_peer, [<<1, 2, 3>> | :improper]},
      {:visor_hello, self(), :x@nowhere, 1, deep},
      {:visor_hello_reply, self(), :x@nowhere, 1, {:ok, deep}},
      {:visor_hello_reply, self(), :x@nowhere, 1, {:mismatch, deep, deep, true}},
      {:visor_propose, self(), %{id: 1, cluster: <<0::128>>, members: deep}},
      {:visor_formed, %{deep: deep}},
      deep
    ]

    for n <- nodes,
        name <- [Cache, Visor.Supervisor.name(Cache, :formation)],
        m <- messages,
        do: send({name, n}, m)

    Process.sleep(1_000)
    assert for(n <- nodes, do: {server(n), formation(n)}) == before
    for n <- nodes, do: assert(:erpc.call(n, Cache, :get, []) == %{before: 1})
  end

  test "an EXIT message naming the supervisor, sent by a peer, stops no formation process" do
    [a | _] = nodes = nodes(3)
    :ok = Cluster.start_group(nodes, Cache, nodes: nodes)
    assert :erpc.call(a, Cache, :commit, [{:add, %{before: 1}}]) == nil
    before = for n <- nodes, do: {server(n), formation(n)}
    supervisor = Visor.Supervisor.name(Cache, :supervisor)

    # The formation process does not trap exits: a real EXIT from its
    # parent kills it as a signal, so one that arrives as a message is
    # only ever a plain message a peer sent (pids are no secret).
    for n <- nodes do
      parent = :erpc.call(n, Process, :whereis, [supervisor])
      send(formation(n), {:EXIT, parent, :shutdown})
    end

    Process.sleep(500)
    assert for(n <- nodes, do: {server(n), formation(n)}) == before
    for n <- nodes, do: assert(:erpc.call(n, Cache, :get, []) == %{before: 1})
  end

  # Lose nothing #12, memory mode: a supervisor that gives up (more than 3
  # restarts in 5 s, e.g. a server crash loop) is restarted by its parent
  # with a new pid. Visor.Lifetime lasts as long as the VM (until
  # Visor.forget/1), so the node still knows its replica ran: when that
  # happens on every node at once, the group comes back :recovering, never
  # as a fresh cluster serving an EMPTY state as :normal (before the fix,
  # with the record tied to the supervisor's pid, usually "...@vm:
  # :normal, state %{}" at the first crash loop). Three loops to be sure.
  test "servers that crash-loop on every node until their supervisors give up never come back fresh" do
    [a | _] = nodes = nodes(3)
    :ok = Cluster.start_group(nodes, Cache, nodes: nodes)
    assert :erpc.call(a, Cache, :commit, [{:add, %{before: 1}}]) == nil
    supervisor = Visor.Supervisor.name(Cache, :supervisor)

    for _loop <- 1..3 do
      supervisors = for n <- nodes, do: :erpc.call(n, Process, :whereis, [supervisor])

      # Four crashes of every server within 5 s: max_restarts (3) exceeded.
      for _ <- 1..4 do
        servers = for n <- nodes, do: {n, server(n)}
        for {_n, pid} <- servers, do: Process.exit(pid, :kill)

        for {n, pid} <- servers,
            do: Cluster.eventually(fn -> server(n) not in [nil, pid] end, 10_000)
      end

      Process.sleep(2_000)
      # The supervisors were restarted by their parents (the test holder).
      for {n, old} <- Enum.zip(nodes, supervisors),
          do: refute(:erpc.call(n, Process, :whereis, [supervisor]) == old)

      for n <- nodes do
        status = Cluster.status(n, Cache)
        local = :erpc.call(n, Visor, :get, [Cache, [consistency: :local]])

        assert status.status == :recovering,
               "#{n}: #{inspect(status.status)}, state #{inspect(local)}"
      end
    end
  end

  # Lose nothing #4, cluster_size: mode: before the fix, maybe_propose/2
  # picked the proposer among discovering nodes *with its own settings*,
  # so each settings class had its own "lowest" node and both proposed at
  # once: two clusters of the same group side by side on fully connected
  # nodes (split brain). Now only the lowest-named discovering node of all
  # may propose, among the nodes with its settings. Here n1, n3 run
  # checkpoint_every 100 and n2, n4 the default; the proposers n1 and n2
  # are suspended while n3 and n4 start, so that both become ready in the
  # same tick (without it the race split about one run in two; with it,
  # before the fix, both pairs came up :normal with different cluster ids).
  test "cluster_size: nodes with two different settings never form two clusters" do
    [n1, n2, n3, n4] = nodes = Enum.sort(nodes(4))
    s1 = [cluster_size: 2, checkpoint_every: 100]
    s2 = [cluster_size: 2]

    start = fn n, opts ->
      {:ok, _} = :erpc.call(n, Cluster, :start_group_here, [Counter, opts, :critical])
    end

    start.(n1, s1)
    start.(n2, s2)
    Process.sleep(600)

    name = Visor.Supervisor.name(Counter, :formation)
    for n <- [n1, n2], do: :ok = :erpc.call(n, :sys, :suspend, [name])
    start.(n3, s1)
    start.(n4, s2)
    Process.sleep(300)
    for n <- [n1, n2], do: :ok = :erpc.call(n, :sys, :resume, [name])

    Process.sleep(2_000)

    clusters =
      for n <- nodes, %{status: :normal, cluster: c} <- [Cluster.status(n, Counter)], do: c

    assert length(Enum.uniq(clusters)) == 1, "clusters formed: #{inspect(clusters)}"
  end
end
