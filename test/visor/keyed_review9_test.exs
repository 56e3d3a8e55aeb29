defmodule Visor.KeyedReview9Test do
  # Review of d5c4e33 (keyed groups' tombstones file, framed with a
  # magic) on real nodes, in disk mode as test/visor/keyed_disk_test.exs:
  # each node its own data_dir under the test's tmp_dir. Not async: real
  # nodes.
  use ExUnit.Case, async: false

  import Visor.Test.TombstoneFiles, only: [frame: 1]

  alias Visor.Groups.Stores
  alias Visor.Test.{Cluster, Counter}

  @moduletag :tmp_dir

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
  defp rpc(node, fun, args), do: :erpc.call(node, Visor, fun, args, 60_000)

  import Cluster, only: [disk_opts: 2]

  defp keyed_dir(tmp, node), do: Path.join(Cluster.data_dir(tmp, node), "#{Counter}.keyed")
  defp store_dir(tmp, node, key), do: Cluster.store_dir(tmp, node, {Counter, key})

  # A key is any term, so any binary a user chooses (a chat room's name).
  # One holding a whole tombstone frame, of another key's instance: its
  # stop records the frame inside its own. One bit of rot in that record
  # on one node (or a crash during its append) and the reader, skipping
  # the damage to the next magic, reads the inner frame as a tombstone
  # that node never recorded. At its host's start it removes its store of
  # the other group, and tells the other members their instance is
  # stale: they stop it. operations.md: "only the stops whose records
  # were damaged are forgotten".
  test "damage in the tombstone of a key holding a frame does not stop another group",
       %{tmp_dir: tmp} do
    [a, b, c] = members = nodes(3)
    opts = disk_opts(tmp, members: members)
    :ok = Cluster.start_groups_host(members, Counter, opts)
    victim = "victim"
    assert {:ok, _} = rpc(a, :start_group, [{Counter, victim}])
    assert rpc(a, :commit, [{Counter, victim}, {:incr, :x}]) == 1

    {:ok, ^victim, instance} =
      File.read!(Path.join(store_dir(tmp, a, victim), "keyed_group")) |> Stores.decode_record()

    forged = Stores.encode_record(victim, %{instance | id: instance.id + 1_000})
    room = "room:" <> frame(forged) <> "!"
    assert {:ok, _} = rpc(a, :start_group, [{Counter, room}])
    assert rpc(a, :stop_group, [{Counter, room}]) == :ok

    # One flipped bit in the md5 of a's only record (after its magic).
    :ok = Cluster.kill_node(a, [b, c])
    file = Path.join(keyed_dir(tmp, a), "tombstones")
    <<head::binary-size(12), byte, rest::binary>> = File.read!(file)
    File.write!(file, <<head::binary, Bitwise.bxor(byte, 1), rest::binary>>)
    Cluster.restart_peer(a, [b, c])
    :ok = Cluster.start_groups_host([a], Counter, opts)

    gone? = fn -> Enum.any?([b, c], &(rpc(&1, :which_groups, [Counter]) == [])) end

    try do
      Cluster.eventually(gone?, 10_000)
    rescue
      _ in ExUnit.AssertionError -> :ok
    end

    running = for node <- members, do: {node, rpc(node, :which_groups, [Counter])}
    refute gone?.(), "the victim group was stopped: #{inspect(running)}"
    assert File.exists?(store_dir(tmp, a, victim)), "a's store of the victim group was removed"
    assert rpc(b, :commit, [{Counter, victim}, {:incr, :x}]) == 2
  end
end
