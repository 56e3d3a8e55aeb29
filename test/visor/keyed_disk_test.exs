defmodule Visor.KeyedDiskTest do
  # Keyed groups in disk mode (`{Visor.Groups, storage: :disk}`) on real
  # nodes: a restarted node's host starts its groups again from their
  # stores, even when every member restarted at once; stop_group removes
  # their directories; a damaged record is skipped. Each node has its own
  # data_dir under the test's tmp_dir. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter, Fragile}

  @moduletag :tmp_dir

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
  defp rpc(node, fun, args), do: :erpc.call(node, Visor, fun, args, 60_000)

  import Cluster, only: [disk_opts: 2, store_dir: 3]

  defp start_all(node, groups) do
    for group <- groups, do: assert({:ok, _} = rpc(node, :start_group, [group]))
  end

  # Until `node`'s replica of `group` is normal, opened as `opened`, and
  # holds `applied` (read on its own replica).
  # How the store opened reaches the server as an event through the
  # router, so the engine may say `:normal` a moment before the server
  # knows (`opened: nil`, as documented).
  defp serves(node, group, opened, applied) do
    Cluster.eventually(fn -> rpc(node, :status, [group]).status == :normal end, 30_000)
    Cluster.eventually(fn -> rpc(node, :status, [group]).storage.opened != nil end)
    assert rpc(node, :status, [group]).storage.opened == opened

    Cluster.eventually(fn ->
      rpc(node, :get, [group, [consistency: :local]]).applied == MapSet.new(applied)
    end)
  end

  test "a member SIGKILLed and restarted gets its keyed groups back from their stores, with every acknowledged commit",
       %{tmp_dir: tmp} do
    [a, b, c] = members = nodes(3)
    opts = disk_opts(tmp, members: members)
    :ok = Cluster.start_groups_host(members, Counter, opts)
    groups = for i <- 1..4, do: {Counter, {:user, i}}
    start_all(a, groups)

    for {_, {:user, i}} = group <- groups do
      assert rpc(b, :commit, [group, {:incr, {i, :before}}]) == 1
    end

    # Each group's store is its own, named in the store by its key.
    for group <- groups, node <- members do
      Cluster.eventually(fn -> rpc(node, :status, [group]).storage.opened == :created end)
      dir = store_dir(tmp, node, group)
      assert {:ok, %{group: name}} = :erpc.call(node, Visor.Native, :probe, [dir])
      assert name == "Elixir.Visor.Test.Counter.keyed/" <> Path.basename(dir)
    end

    :ok = Cluster.kill_node(c, [a, b])

    for {_, {:user, i}} = group <- groups do
      assert rpc(a, :commit, [group, {:incr, {i, :while_down}}, 20_000]) == 2
    end

    Cluster.restart_peer(c, [a, b])
    :ok = Cluster.start_groups_host([c], Counter, opts)

    # From its store (not rejoining with an empty one), with the commits
    # acknowledged before it died, and those made while it was down.
    for {_, {:user, i}} = group <- groups do
      serves(c, group, :restarted, [{i, :before}, {i, :while_down}])
      assert {:member, %{recover: false}} = :erpc.call(c, Visor.Formation, :decision, [group])
    end
  end

  test "every member killed at once: restarted with their hosts, every keyed group serves again with every acknowledged commit",
       %{tmp_dir: tmp} do
    [a, b, c] = members = nodes(3)
    opts = disk_opts(tmp, replicas: 3)
    :ok = Cluster.start_groups_host(members, Counter, opts)
    groups = for i <- 1..4, do: {Counter, "cart-#{i}"}
    start_all(b, groups)

    for group <- groups, n <- 1..2 do
      assert rpc(a, :commit, [group, {:incr, n}]) == n
    end

    # start_group and commit answer once a quorum has: a third member may
    # not have created its store yet, and would rightly come back created
    # (empty, catching up), having acknowledged nothing. Each member holds
    # both commits before the power goes, so each comes back restarted.
    for group <- groups, node <- members do
      Cluster.eventually(fn ->
        rpc(node, :get, [group, [consistency: :local]]).applied == MapSet.new([1, 2])
      end)
    end

    # Power loss. No node remembers anything in memory, and none can adopt
    # the groups from another: only their stores bring them back.
    :ok = Cluster.kill_nodes(members)
    Cluster.restart_all(members)
    :ok = Cluster.start_groups_host(members, Counter, opts)

    for group <- groups, node <- members, do: serves(node, group, :restarted, [1, 2])
    for group <- groups, do: assert(rpc(c, :commit, [group, {:incr, 3}]) == 3)
    assert length(rpc(a, :which_groups, [Counter])) == length(groups)
  end

  test "stop_group removes the group's directory on every member, and a start again is new and empty; so does a failed start's",
       %{tmp_dir: tmp} do
    [a, b, c] = members = nodes(3)
    opts = disk_opts(tmp, members: members)
    :ok = Cluster.start_groups_host(members, Counter, opts)
    group = {Counter, %{tenant: "t1"}}
    assert {:ok, _} = rpc(a, :start_group, [group])
    assert rpc(b, :commit, [group, {:incr, :old}]) == 1

    for node <- members do
      Cluster.eventually(fn -> rpc(node, :status, [group]).storage.opened == :created end)
      assert File.exists?(Path.join(store_dir(tmp, node, group), "keyed_group"))
    end

    assert rpc(c, :stop_group, [group]) == :ok
    for node <- members, do: refute(File.exists?(store_dir(tmp, node, group)))

    assert {:ok, _} = rpc(b, :start_group, [group])
    for node <- members, do: serves(node, group, :created, [])
    assert rpc(c, :commit, [group, {:incr, :new}]) == 1

    # A new group one member cannot start: its start began there (its
    # formation may have answered), so the group is left on the others;
    # stop_group removes it, and no member keeps a directory of it.
    :ok = Cluster.start_groups_host(members, Fragile, opts)
    :ok = Fragile.raise_on(c, true)
    failed = {Fragile, "failed"}
    assert {:error, {:start_failed, ^c, _}} = rpc(a, :start_group, [failed])
    assert rpc(a, :lookup, [failed]) |> Keyword.keys() |> Enum.sort() == Enum.sort([a, b])
    assert rpc(a, :stop_group, [failed]) == :ok

    for node <- members do
      Cluster.eventually(fn -> not File.exists?(store_dir(tmp, node, failed)) end)
    end
  end

  test "a member down during stop_group restarts the group from its store, is told to stop it by a node that stopped it, and its directory goes",
       %{tmp_dir: tmp} do
    [a, b, c] = members = nodes(3)
    opts = disk_opts(tmp, members: members)
    :ok = Cluster.start_groups_host(members, Counter, opts)
    group = {Counter, "stopped while down"}
    assert {:ok, _} = rpc(a, :start_group, [group])
    assert rpc(a, :commit, [group, {:incr, :old}]) == 1
    Cluster.eventually(fn -> rpc(c, :status, [group]).storage.opened == :created end)

    :ok = Cluster.kill_node(c, [a, b])
    assert rpc(a, :stop_group, [group]) == :ok
    assert File.exists?(Path.join(store_dir(tmp, c, group), "keyed_group"))

    Cluster.restart_peer(c, [a, b])
    :ok = Cluster.start_groups_host([c], Counter, opts)
    Cluster.eventually(fn -> not File.exists?(store_dir(tmp, c, group)) end, 15_000)
    assert rpc(c, :which_groups, [Counter]) == []

    for node <- members,
        do: assert(rpc(node, :commit, [group, {:incr, :x}]) == {:error, :no_group})
  end

  test "the nodes that stopped a group remember it across a VM restart: a member cut off from the stop is told to stop it, and the key starts again as a later instance",
       %{tmp_dir: tmp} do
    [a, b, c] = members = nodes(3)
    opts = disk_opts(tmp, members: members)
    :ok = Cluster.start_groups_host(members, Counter, opts)
    group = {Counter, "stopped, then its stoppers restarted"}
    assert {:ok, _} = rpc(a, :start_group, [group])
    assert rpc(a, :commit, [group, {:incr, :old}]) == 1
    Cluster.eventually(fn -> rpc(c, :status, [group]).storage.opened == :created end)
    old_cluster = rpc(a, :status, [group]).cluster

    :ok = Cluster.kill_node(c, [a, b])
    assert rpc(a, :stop_group, [group]) == :ok
    for node <- [a, b], do: refute(File.exists?(store_dir(tmp, node, group)))

    # Every node that stopped it loses its memory before c comes back
    # with the stopped instance on its disk. a's VM ended before its stop
    # removed the directory (a copy of c's stands for it): its host
    # removes it rather than restart it.
    :ok = Cluster.kill_nodes([a, b])
    File.cp_r!(store_dir(tmp, c, group), store_dir(tmp, a, group))
    Cluster.restart_all([a, b])
    :ok = Cluster.start_groups_host([a, b], Counter, opts)
    refute File.exists?(store_dir(tmp, a, group))
    Cluster.restart_peer(c, [a, b])
    :ok = Cluster.start_groups_host([c], Counter, opts)

    # c is told to stop it (not left running it, nor given it back by a
    # and b, a group recovering from a minority's state).
    Cluster.eventually(fn -> not File.exists?(store_dir(tmp, c, group)) end, 15_000)
    for node <- members, do: assert(rpc(node, :which_groups, [Counter]) == [])
    assert rpc(a, :lookup, [group]) == []

    # Started again: a new, empty group, of a later instance than the one
    # stopped (another cluster id; an instance id reused would give the
    # stopped one's, whose store a cut-off member may still hold).
    assert {:ok, _} = rpc(b, :start_group, [group])
    for node <- members, do: serves(node, group, :created, [])
    assert rpc(c, :commit, [group, {:incr, :new}]) == 1
    assert rpc(a, :status, [group]).cluster != old_cluster

    for node <- members do
      assert %{id: 2, members: recorded} = recorded_instance(store_dir(tmp, node, group))
      assert Enum.sort(recorded) == members
    end
  end

  # The instance a store directory's record names (`Visor.Groups.Stores`:
  # an md5, then the record's term).
  defp recorded_instance(dir) do
    <<_md5::binary-16, body::binary>> = File.read!(Path.join(dir, "keyed_group"))
    %{members: names, id: id} = :erlang.binary_to_term(body)
    %{members: Enum.map(names, &String.to_atom/1), id: id}
  end

  test "a damaged record is logged and skipped: the host restores the other groups", %{
    tmp_dir: tmp
  } do
    [node] = nodes(1)
    opts = disk_opts(tmp, replicas: 1)
    :ok = Cluster.start_groups_host([node], Counter, opts)
    groups = for i <- 1..3, do: {Counter, i}
    start_all(node, groups)
    for {_, i} = group <- groups, do: assert(rpc(node, :commit, [group, {:incr, i}]) == 1)

    :ok = Cluster.kill_node(node)
    [kept1, damaged, kept2] = groups
    record = Path.join(store_dir(tmp, node, damaged), "keyed_group")
    File.write!(record, binary_part(File.read!(record), 0, 20) <> "garbage")

    Cluster.restart_peer(node, [])
    :ok = Cluster.start_groups_host([node], Counter, opts, :critical)

    serves(node, kept1, :restarted, [1])
    serves(node, kept2, :restarted, [3])
    assert rpc(node, :which_groups, [Counter]) |> Enum.map(& &1.key) |> Enum.sort() == [1, 3]
    assert :erpc.call(node, Process, :whereis, [Visor.Groups.host(Counter)]) |> is_pid()
    # Its files are left as they were.
    assert File.exists?(Path.join(store_dir(tmp, node, damaged), "superblock"))
  end
end
