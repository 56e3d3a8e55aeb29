defmodule Visor.PeerTest do
  # Not async: distribution and peer nodes are VM-wide.
  use ExUnit.Case, async: false

  alias Visor.Test.Cluster

  test "peers form a mesh and load the NIF" do
    peers = Cluster.start_peers(2)
    nodes = Enum.map(peers, &elem(&1, 1))

    for node <- nodes do
      assert :erpc.call(node, Visor.Native, :protocol_version, []) ==
               Visor.Native.protocol_version()

      others = :erpc.call(node, Node, :list, [])
      assert Enum.all?(nodes -- [node], &(&1 in others))
    end
  end

  test "a stopped peer leaves the cluster, and stopping twice is harmless" do
    [{_, keep}, {_, gone} = peer] = Cluster.start_peers(2)
    :ok = Cluster.stop_peer(peer)
    :ok = Cluster.stop_peer(peer)
    # Nodes notice a lost connection asynchronously.
    Cluster.eventually(fn -> gone not in Node.list() end)
    Cluster.eventually(fn -> gone not in :erpc.call(keep, Node, :list, []) end)
  end
end
