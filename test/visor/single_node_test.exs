defmodule Visor.SingleNodeTest do
  # A `cluster_size: 1` group is its own quorum: it forms at once, with no
  # other node to discover, in memory and in disk mode. Not async: real
  # nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  @moduletag :tmp_dir

  for mode <- [:memory, :disk] do
    test "#{mode}: cluster_size: 1 commits within a second of its start", %{tmp_dir: tmp} do
      [{_pid, node}] = Cluster.start_peers(1)
      opts = [cluster_size: 1] ++ storage(unquote(mode), tmp)
      started = System.monotonic_time(:millisecond)
      {:ok, _} = :erpc.call(node, Cluster, :start_group_here, [Counter, opts, :error])

      Cluster.eventually(
        fn -> match?(1, :erpc.call(node, Visor, :commit, [Counter, {:incr, 1}, 100])) end,
        1_000
      )

      assert System.monotonic_time(:millisecond) - started < 1_000

      assert %{status: :normal, role: :primary, replicas: [_], waiting_for: nil} =
               Cluster.status(node, Counter)
    end
  end

  defp storage(:memory, _tmp), do: []
  defp storage(:disk, tmp), do: [storage: :disk, data_dir: tmp]
end
