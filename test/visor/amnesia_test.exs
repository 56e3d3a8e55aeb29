defmodule Visor.AmnesiaTest do
  # Memory mode, "Lose nothing" #12: no message from another node crashes a
  # server, and servers that restart on every node at once (their nodes
  # still up) never come back as a fresh, empty cluster: they wait in
  # :recovering until the operator stops the group everywhere, forgets it
  # (Visor.forget/1) and starts it again.
  # Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.Cluster

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1))

  defp pids(nodes) do
    for n <- nodes do
      {:erpc.call(n, Process, :whereis, [Cache]),
       :erpc.call(n, Process, :whereis, [Visor.Supervisor.name(Cache, :formation)])}
    end
  end

  test "malformed $gen_call and system messages from a peer are dropped and counted, crashing nothing" do
    [a | _] = nodes = nodes(3)
    :ok = Cluster.start_group(nodes, Cache, nodes: nodes)
    assert :erpc.call(a, Cache, :commit, [{:add, %{before: 1}}]) == nil
    before = pids(nodes)

    junk = [{:"$gen_call", :not_a_from, :status}, {:system, :junk, :junk}, {:system, {}, :junk}]
    # Well-formed senders with requests sys does not expect: sys answers them.
    from = {self(), make_ref()}

    odd_requests =
      for r <- [
            :junk,
            {:replace_state, :junk},
            {:debug, :junk},
            {:change_code, 1, 2, 3},
            :get_status
          ],
          do: {:system, from, r}

    # From this node: any connected node can send them.
    for n <- nodes,
        name <- [Cache, Visor.Supervisor.name(Cache, :formation)],
        m <- junk ++ odd_requests do
      send({name, n}, m)
    end

    Process.sleep(500)
    assert pids(nodes) == before

    for n <- nodes do
      assert Cluster.status(n, Cache).stats.unexpected_messages >= length(junk)
      assert :erpc.call(n, Cache, :get, []) == %{before: 1}
    end

    # A well-formed system message still works (sys:get_state).
    # (Cache is the router now; the server has a name of its own.)
    assert %Visor.Router{} = :erpc.call(a, :sys, :get_state, [Cache])
    server = Visor.Supervisor.name(Cache, :server)
    assert %Visor.Server{} = :erpc.call(a, :sys, :get_state, [server])
  end

  test "servers restarted on every node at once stay :recovering; stopping and starting the group everywhere starts anew" do
    nodes = nodes(3)
    :ok = Cluster.start_group(nodes, Cache, nodes: nodes)
    assert :erpc.call(hd(nodes), Cache, :commit, [{:add, %{before: 1}}]) == nil

    servers = for n <- nodes, do: {n, :erpc.call(n, Process, :whereis, [Cache])}
    # Every server at once (exit signals from this node).
    for {_n, pid} <- servers, do: Process.exit(pid, :kill)

    for {n, pid} <- servers do
      Cluster.eventually(fn ->
        new = :erpc.call(n, Process, :whereis, [Cache])
        new != nil and new != pid
      end)
    end

    # A majority lost its memory: nobody may serve (an empty state would
    # be a lost history), however long we wait.
    Process.sleep(2_000)

    for n <- nodes do
      status = Cluster.status(n, Cache)

      assert status.status == :recovering,
             "#{n}: #{inspect(Map.take(status, [:status, :op, :commit]))}"

      assert Cluster.rejoined?(n, Cache)
    end

    assert :erpc.call(hd(nodes), Cache, :commit, [{:add, %{x: 1}}, [timeout: 300]]) ==
             {:error, :timeout}

    # The operator's way out: stop the group on every node, forget, then
    # start it. Stopped and started again without forgetting, it recovers.
    for n <- nodes, do: :ok = Cluster.stop_group(n, Cache)
    :ok = Cluster.start_group(nodes, Cache, nodes: nodes)
    for n <- nodes, do: assert(Cluster.status(n, Cache).status == :recovering)
    assert :erpc.call(hd(nodes), Visor, :forget, [Cache]) == {:error, :running}

    for n <- nodes, do: :ok = Cluster.stop_group(n, Cache)
    for n <- nodes, do: :ok = :erpc.call(n, Visor, :forget, [Cache])
    :ok = Cluster.start_group(nodes, Cache, nodes: nodes)
    assert :erpc.call(hd(nodes), Cache, :commit, [{:add, %{anew: 1}}]) == nil
    assert :erpc.call(List.last(nodes), Cache, :get, []) == %{anew: 1}
  end
end
