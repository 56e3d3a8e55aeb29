defmodule Visor.SettingsTest do
  # "Lose nothing" #4: the settings that decide execution (client_table_max,
  # derived from pool_size; checkpoint_interval, from checkpoint_every;
  # checkpoint_chunk_bytes) must be equal on every replica. They are agreed
  # at formation, folded into the cluster id, and recorded in a disk store;
  # a node started with another value is refused, naming the setting and
  # both values. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  @moduletag :tmp_dir

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1))

  test "nodes: members with different pool sizes never form a cluster together" do
    [a, b, c] = nodes = nodes(3)
    opts = fn n -> if n == c, do: [nodes: nodes, pool_size: 512], else: [nodes: nodes] end

    for n <- nodes do
      {:ok, _} = :erpc.call(n, Cluster, :start_group_here, [Counter, opts.(n), :critical])
    end

    Process.sleep(1_500)
    for n <- nodes, do: assert(Cluster.status(n, Counter).status == :forming, "#{n} formed")

    # Started again with the same value, it forms.
    :ok = Cluster.stop_group(c, Counter)
    :ok = Cluster.start_group([c], Counter, nodes: nodes)
    assert :erpc.call(c, Counter, :commit, [{:incr, 1}]) == 1
    assert :erpc.call(a, Counter, :get, []) == :erpc.call(b, Counter, :get, [])
  end

  test "cluster_size: a node with another checkpoint_every is never proposed; the others wait for it" do
    [a, b, c] = nodes = nodes(3)

    opts = fn n ->
      if n == a, do: [cluster_size: 3, checkpoint_every: 100], else: [cluster_size: 3]
    end

    for n <- nodes do
      {:ok, _} = :erpc.call(n, Cluster, :start_group_here, [Counter, opts.(n), :critical])
    end

    Process.sleep(1_500)
    for n <- nodes, do: assert(Cluster.status(n, Counter).status == :forming, "#{n} formed")

    :ok = Cluster.stop_group(a, Counter)
    :ok = Cluster.start_group([a], Counter, cluster_size: 3)

    for n <- [b, c],
        do: Cluster.eventually(fn -> Cluster.status(n, Counter).status == :normal end)

    assert :erpc.call(c, Counter, :commit, [{:incr, 1}]) == 1
  end

  test "nodes: a member restarted with another pool size is refused, naming the setting and both values" do
    [a, _b, c] = nodes = nodes(3)
    :ok = Cluster.start_group(nodes, Counter, nodes: nodes)
    assert :erpc.call(a, Counter, :commit, [{:incr, 1}]) == 1

    :ok = Cluster.stop_group(c, Counter)

    {:ok, _} =
      :erpc.call(c, Cluster, :start_group_here, [
        Counter,
        [nodes: nodes, pool_size: 512],
        :critical
      ])

    expected = {:setting_mismatch, :client_table_max, 4 * 512 * 6, 4096}
    Cluster.eventually(fn -> Cluster.status(c, Counter).status == :refused end)
    assert Cluster.status(c, Counter).refused == expected
    assert :erpc.call(c, Counter, :commit, [{:incr, 2}]) == {:error, expected}
    # The others go on without it.
    assert :erpc.call(a, Counter, :commit, [{:incr, 3}]) == 2
  end

  test "disk mode: a restart with another checkpoint_every is refused, naming the setting and both values",
       %{tmp_dir: tmp} do
    [a, b] = nodes = nodes(2)

    opts = fn n, extra ->
      [nodes: nodes, storage: :disk, data_dir: Path.join(tmp, "#{n}")] ++ extra
    end

    :ok = Cluster.start_group(nodes, Counter, &opts.(&1, []))
    assert :erpc.call(a, Counter, :commit, [{:incr, 1}]) == 1

    :ok = Cluster.stop_group(b, Counter)

    assert {:error,
            {:shutdown,
             {:failed_to_start_child, Counter,
              {:shutdown, {:failed_to_start_child, Visor.Formation, {:storage_refused, message}}}}}} =
             :erpc.call(b, Cluster, :start_group_here, [
               Counter,
               opts.(b, checkpoint_every: 500),
               :critical
             ])

    assert message =~ "checkpoint_interval"
    assert message =~ "10000"
    assert message =~ "500"
  end
end
