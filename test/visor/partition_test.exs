defmodule Visor.PartitionTest do
  # Cuts distribution links between real nodes (Cluster.partition/2) and
  # heals them. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  defp commit(node, command, opts \\ []), do: :erpc.call(node, Counter, :commit, [command, opts])
  defp get(node, opts), do: :erpc.call(node, Counter, :get, [opts])

  test "3 nodes: the primary is cut off; the other two go on, it times out, and after " <>
         "healing every replica converges" do
    run(3, 1)
  end

  test "5 nodes: the primary and one backup are cut off; the majority goes on, the minority " <>
         "times out, and after healing every replica converges" do
    run(5, 2)
  end

  defp run(size, minority_size) do
    nodes = Cluster.start_peers(size) |> Enum.map(&elem(&1, 1))
    :ok = Cluster.start_group(nodes, Counter, nodes: nodes)
    for n <- nodes, do: assert(is_integer(commit(n, {:incr, {:before, n}})))

    %{primary: old_primary, view: old_view} = Cluster.status(hd(nodes), Counter)
    minority = [old_primary | Enum.take(nodes -- [old_primary], minority_size - 1)]
    majority = nodes -- minority
    :ok = Cluster.partition(minority, majority)

    # The majority elects a primary among itself and commits.
    Cluster.eventually(
      fn ->
        s = Cluster.status(hd(majority), Counter)
        s.status == :normal and s.primary in majority and s.view > old_view
      end,
      10_000
    )

    for n <- majority, do: assert(is_integer(commit(n, {:incr, {:majority, n}})))

    # The minority cannot commit: each call gives up after its timeout, not
    # before and not much after, and so does a linearizable read, which a
    # deposed primary must not answer from its stale state.
    for n <- minority do
      {micros, result} = :timer.tc(fn -> commit(n, {:incr, {:minority, n}}, timeout: 1_000) end)
      assert result == {:error, :timeout}
      assert div(micros, 1000) in 1_000..3_000

      {micros, result} = :timer.tc(fn -> get(n, timeout: 500) end)
      assert result == {:error, :timeout}
      assert div(micros, 1000) in 500..2_500

      # A local read answers at once, from the replica's own (stale) state.
      local = get(n, consistency: :local)
      refute Enum.any?(majority, &({:majority, &1} in local.applied))
    end

    :ok = Cluster.heal(minority, majority)

    # Every replica converges on one state holding every acknowledged commit.
    # The minority's timed-out increments had an unknown outcome: they may
    # have been applied after healing, but at most once.
    final =
      Cluster.eventually(
        fn ->
          states = for n <- nodes, do: get(n, consistency: :local)
          s = hd(states)

          Enum.all?(states, &(&1 == s)) and Enum.all?(majority, &({:majority, &1} in s.applied)) and
            s
        end,
        15_000
      )

    assert final.count == MapSet.size(final.applied)
    assert Enum.all?(nodes, &({:before, &1} in final.applied))

    # The old primary serves again, as a backup of the new view.
    for n <- minority, do: assert(is_integer(commit(n, {:incr, {:healed, n}})))
    statuses = for n <- nodes, do: Cluster.status(n, Counter)
    assert statuses |> Enum.map(&{&1.view, &1.primary}) |> Enum.uniq() |> length() == 1
    assert hd(statuses).primary in majority
  end
end
