defmodule Visor.KeyedReview8Test do
  # Review of f14f07e (keyed groups' tombstones on disk) on real nodes,
  # in disk mode as test/visor/keyed_disk_test.exs: each node its own
  # data_dir under the test's tmp_dir. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  @moduletag :tmp_dir

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
  defp rpc(node, fun, args), do: :erpc.call(node, Visor, fun, args, 60_000)

  import Cluster, only: [disk_opts: 2, store_dir: 3]

  # The order the commit's own test does not cover: the member cut off
  # from the stop comes back first (restarting the stopped instance from
  # its store, with no peer up to tell it), and only then do the nodes
  # that stopped it restart, reading their tombstones back. Held on
  # f427c74 (no review_break tag: it passes).
  test "a member cut off from a stop, back before the nodes that stopped it restart, is told to stop it once they do",
       %{tmp_dir: tmp} do
    [a, b, c] = members = nodes(3)
    opts = disk_opts(tmp, members: members)
    :ok = Cluster.start_groups_host(members, Counter, opts)
    group = {Counter, "cut off, back first"}
    assert {:ok, _} = rpc(a, :start_group, [group])
    assert rpc(a, :commit, [group, {:incr, :old}]) == 1
    Cluster.eventually(fn -> rpc(c, :status, [group]).storage.opened == :created end)

    :ok = Cluster.kill_node(c, [a, b])
    assert rpc(a, :stop_group, [group]) == :ok
    :ok = Cluster.kill_nodes([a, b])

    # c alone, with the stopped instance on its disk.
    Cluster.restart_peer(c, [])
    :ok = Cluster.start_groups_host([c], Counter, opts)
    Cluster.eventually(fn -> rpc(c, :which_groups, [Counter]) != [] end, 15_000)

    Cluster.restart_peer(a, [c])
    Cluster.restart_peer(b, [a, c])
    :ok = Cluster.start_groups_host([a, b], Counter, opts)

    Cluster.eventually(
      fn -> not File.exists?(store_dir(tmp, c, group)) end,
      20_000
    )

    for node <- members, do: assert(rpc(node, :which_groups, [Counter]) == [])
  end

  # A stop's append that failed part-way (ENOSPC, EDQUOT, EIO) leaves part
  # of a record in the tombstones file; Visor.Groups.Tombstones.record/3
  # logs it and the stop goes on, and nothing cuts the fragment off until
  # the host next starts. Here each of a and b holds such a fragment (the
  # bytes a failed write leaves, written directly) when they stop the
  # group: both stops are appended, synced and acknowledged, but after a
  # VM restart both are unreadable, and the member cut off from the stop
  # brings the stopped group back.
  test "a stop appended after a failed, partial append still outlives the VM", %{tmp_dir: tmp} do
    [a, b, c] = members = nodes(3)
    opts = disk_opts(tmp, members: members)
    :ok = Cluster.start_groups_host(members, Counter, opts)
    group = {Counter, "stopped after a failed append"}
    assert {:ok, _} = rpc(a, :start_group, [group])
    assert rpc(a, :commit, [group, {:incr, :old}]) == 1
    Cluster.eventually(fn -> rpc(c, :status, [group]).storage.opened == :created end)

    failed = Visor.Groups.Stores.encode_record("another group", %{members: members, id: 1})
    fragment = binary_part(<<byte_size(failed)::32, failed::binary>>, 0, 20)

    for node <- [a, b] do
      file = Path.join([tmp, Atom.to_string(node), "#{Counter}.keyed", "tombstones"])
      :ok = File.write!(file, fragment, [:append])
    end

    :ok = Cluster.kill_node(c, [a, b])
    assert rpc(a, :stop_group, [group]) == :ok
    :ok = Cluster.kill_nodes([a, b])
    Cluster.restart_all([a, b])
    :ok = Cluster.start_groups_host([a, b], Counter, opts)
    Cluster.restart_peer(c, [a, b])
    :ok = Cluster.start_groups_host([c], Counter, opts)

    gone? = fn -> not File.exists?(store_dir(tmp, c, group)) end

    try do
      Cluster.eventually(gone?, 15_000)
    rescue
      _ in ExUnit.AssertionError -> :ok
    end

    running = for node <- members, do: {node, rpc(node, :which_groups, [Counter])}
    assert gone?.(), "the stopped group is back: #{inspect(running)}"
    for {_node, groups} <- running, do: assert(groups == [])
  end
end
