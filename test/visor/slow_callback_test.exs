defmodule Visor.SlowCallbackTest do
  # Issue 13: user code that is slow (or kills its process) must not cost
  # the group its primary. A replica's peer traffic does not wait for its
  # handle_commit, and a read's accessor functions run in the caller.
  # Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Accessors, Cluster, Counter}

  setup do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    :ok = Cluster.start_group(nodes, Counter, nodes: nodes)
    [a | _] = nodes
    assert :erpc.call(a, Counter, :commit, [{:incr, 1}, [timeout: 10_000]]) == 1
    %{nodes: nodes}
  end

  # Every node's view and primary, from the group's public status.
  defp views(nodes) do
    for n <- nodes do
      status = Cluster.status(n, Counter)
      {status.status, status.view, status.primary}
    end
  end

  defp pids(nodes) do
    for n <- nodes,
        name <- [Counter, Visor.Supervisor.name(Counter, :server)],
        do: :erpc.call(n, Process, :whereis, [name])
  end

  test "a 3 s handle_commit deposes no primary", %{nodes: [a | _] = nodes} do
    before = views(nodes)
    assert [{:normal, _view, primary}] = Enum.uniq(before)
    assert primary != nil
    backup = Enum.find(nodes, &(&1 != primary))

    # Sent through a backup; every replica runs the 3 s callback.
    assert :erpc.call(backup, Counter, :commit, [{:sleep, 3_000}, [timeout: 20_000]]) == :slept
    # Time for a view change the stall set off to show.
    Process.sleep(1_000)
    assert views(nodes) == before
    assert :erpc.call(a, Counter, :commit, [{:incr, 2}, [timeout: 10_000]]) == 2
    assert views(nodes) == before
  end

  # The sharpest case: only the primary's server is busy, so before the
  # fix its backups heard nothing from it for 3 s, and elected another.
  test "a handle_commit that takes 3 s on the primary's node alone does not depose it",
       %{nodes: [a | _] = nodes} do
    before = views(nodes)
    assert [{:normal, _view, primary}] = Enum.uniq(before)
    backup = Enum.find(nodes, &(&1 != primary))

    assert :erpc.call(backup, Counter, :commit, [{:sleep_on, primary, 3_000}, [timeout: 20_000]]) ==
             :slept

    Process.sleep(1_000)
    assert views(nodes) == before
    assert :erpc.call(a, Counter, :commit, [{:incr, 2}, [timeout: 10_000]]) == 2
  end

  test "a 4 s accessor in get_in deposes no primary, whatever the consistency",
       %{nodes: nodes} do
    before = views(nodes)
    slow = Accessors.slow(4_000)

    for consistency <- [:local, :linearizable], node <- Enum.take(nodes, 2) do
      assert :erpc.call(node, Counter, :get_in, [[slow, :count], [consistency: consistency]]) ==
               1
    end

    assert views(nodes) == before
  end

  test "an accessor that kills its process restarts no replica", %{nodes: [a | _] = nodes} do
    before = pids(nodes)
    killer = Accessors.killer()

    for consistency <- [:local, :linearizable], node <- nodes do
      # The caller dies, as it would running its own code.
      assert {:signal, :killed} ==
               catch_exit(
                 :erpc.call(node, Counter, :get_in, [[:count, killer], [consistency: consistency]])
               )
    end

    assert pids(nodes) == before
    assert :erpc.call(a, Counter, :commit, [{:incr, 2}, [timeout: 10_000]]) == 2
  end
end
