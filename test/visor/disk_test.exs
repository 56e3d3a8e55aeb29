defmodule Visor.DiskTest do
  # Disk mode end to end on real nodes: every node SIGKILLed under load and
  # restarted from its own disk, a corrupted log, a wiped data_dir, discovery
  # mode, and stores that do not belong to the node. Each node has its own
  # data_dir under the test's tmp_dir. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter, Load}
  import Load, only: [await_acks: 2, drain: 2, assert_exactly_once: 2]

  @moduletag :tmp_dir
  @callers_per_node 4

  test "nodes: every node killed mid-load restarts from its disk with every acknowledged commit once; " <>
         "a corrupted log and a wiped data_dir recover from the peers",
       %{tmp_dir: tmp} do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    opts = disk_opts(tmp, nodes: nodes)
    :ok = Cluster.start_group(nodes, Counter, opts)
    # (The store opens on the engine thread, a moment after formation.)
    for n <- nodes do
      Cluster.eventually(fn -> Cluster.status(n, Counter).storage.opened == :created end)
    end

    for n <- nodes do
      :erpc.call(n, Load, :spawn_callers, [Counter, @callers_per_node, self(), [timeout: 20_000]])
    end

    acks = await_acks(%{}, 60)

    # Power loss: every node at once, callers and all, mid-load.
    :ok = Cluster.kill_nodes(nodes)
    {acks, failed} = drain(acks, [])
    assert failed == [], "commits failed before the kill: #{inspect(Enum.take(failed, 5))}"

    # Each restarts from its own disk, without waiting for the others: two
    # of the three (a quorum) serve before the third is back.
    [first, second, third] = nodes
    Cluster.restart_all([first, second])
    :ok = Cluster.start_group([first, second], Counter, opts)
    assert is_integer(commit(first, {:incr, {:after_restart, first}}))

    Cluster.restart_peer(third, [first, second])
    :ok = Cluster.start_group([third], Counter, opts)

    for n <- nodes do
      Cluster.eventually(fn -> Cluster.status(n, Counter).storage.opened == :restarted end)
      refute Cluster.rejoined?(n, Counter)
    end

    # The cluster serves through every node.
    for n <- [second, third], do: assert(is_integer(commit(n, {:incr, {:after_restart, n}})))

    final = :erpc.call(hd(nodes), Counter, :get, [])
    assert_exactly_once(final, acks)

    # Applied without an acknowledgement: the increments in flight when the
    # nodes died (or whose acknowledgement died with them), at most two per
    # caller, and this test's own commits.
    unacked = MapSet.difference(final.applied, MapSet.new(Map.keys(acks)))
    {ours, theirs} = Enum.split_with(unacked, &match?({:after_restart, _}, &1))
    assert length(ours) == 3

    for {caller, ids} <- Enum.group_by(theirs, &elem(&1, 0)) do
      assert length(ids) <= 2, "#{inspect(caller)} had #{length(ids)} unacknowledged increments"
    end

    Cluster.converged(nodes, Counter, final, 10_000)

    # A corrupted log: one byte flipped in the middle of a node's WAL while
    # it is down. It recovers from its peers and converges.
    [victim | others] = Cluster.backups_first(nodes, Counter)
    # The log's length, not the file's: zeros are written ahead of the log.
    log_size = Cluster.status(victim, Counter).storage.wal_size
    :ok = Cluster.kill_node(victim, others)
    for i <- 1..5, do: assert(is_integer(commit(hd(others), {:incr, {:while_down, i}})))
    # No compaction at the default threshold: the log is in the first file.
    wal = Path.join(store_dir(tmp, victim), "wal.a")
    assert log_size > 1_000 and File.stat!(wal).size >= log_size
    flip_byte(wal, div(log_size, 2))

    Cluster.restart_peer(victim, others)
    :ok = Cluster.start_group([victim], Counter, opts)
    # (Most likely in an entry, which it repairs from a peer; damage the
    # records after it do not explain means recovering the whole log, and
    # a rotted seal loses nothing: docs/storage.md.)
    Cluster.eventually(fn ->
      Cluster.status(victim, Counter).storage.opened in [:repairing, :recovering, :restarted]
    end)

    Cluster.eventually(fn -> Cluster.status(victim, Counter).status == :normal end, 15_000)
    assert is_integer(commit(victim, {:incr, :after_corruption}))
    Cluster.converged(nodes, Counter, :erpc.call(hd(others), Counter, :get, []), 10_000)

    # A wiped data_dir: the node restarted with nothing; it rejoins (it
    # must not start as a fresh replica) and recovers.
    [wiped | others] = Cluster.backups_first(nodes, Counter) -- [victim]
    others = others ++ [victim]
    :ok = Cluster.kill_node(wiped, others)
    File.rm_rf!(Cluster.data_dir(tmp, wiped))
    assert is_integer(commit(hd(others), {:incr, :while_wiped}))

    assert Cluster.rejoin(wiped, others, Counter, opts).storage.opened == :created
    assert is_integer(commit(wiped, {:incr, :after_wipe}))

    final = :erpc.call(wiped, Counter, :get, [])
    assert_exactly_once(final, acks)
    assert final.count == MapSet.size(final.applied)
    assert final.count == map_size(acks) + length(theirs) + 3 + 5 + 1 + 1 + 1
    Cluster.converged(nodes, Counter, final, 10_000)
  end

  test "nodes: each member's formation file names the incarnations of the members it formed with",
       %{tmp_dir: tmp} do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    :ok = Cluster.start_group(nodes, Counter, disk_opts(tmp, nodes: nodes))

    for n <- nodes do
      Cluster.eventually(fn -> Cluster.status(n, Counter).storage.opened == :created end)
    end

    records =
      for n <- nodes do
        record = File.read!(Path.join(store_dir(tmp, n), "formation"))

        assert %{visor: 1, cluster: <<_::128>>, formed_with: formed_with} =
                 record = :erlang.binary_to_term(record)

        others = for other <- nodes -- [n], do: Atom.to_string(other)
        assert Enum.sort(Map.keys(formed_with)) == Enum.sort(others)
        assert Enum.all?(Map.values(formed_with), &is_integer/1)
        record
      end

    # One cluster; and every member names the same incarnation of each.
    assert records |> Enum.map(& &1.cluster) |> Enum.uniq() |> length() == 1

    for n <- nodes do
      named = for r <- records, inc = r.formed_with[Atom.to_string(n)], uniq: true, do: inc
      assert length(named) == 1
    end
  end

  test "cluster_size: every node killed and restarted keeps the same cluster; a wiped node rejoins it",
       %{tmp_dir: tmp} do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    opts = disk_opts(tmp, cluster_size: 3)
    :ok = Cluster.start_group(nodes, Counter, opts)
    cluster = Cluster.status(hd(nodes), Counter).cluster
    for {n, i} <- Enum.with_index(nodes), do: assert(commit(n, {:incr, i}) == i + 1)

    :ok = Cluster.power_cycle(nodes, Counter, opts)

    # The store, not a new discovery, decides the cluster: the same id.
    for n <- nodes, do: assert(Cluster.status(n, Counter).cluster == cluster)

    assert commit(List.last(nodes), {:incr, :after}) == 4

    [wiped | others] = Cluster.backups_first(nodes, Counter)
    :ok = Cluster.kill_node(wiped, others)
    File.rm_rf!(Cluster.data_dir(tmp, wiped))
    assert Cluster.rejoin(wiped, others, Counter, opts).cluster == cluster
    assert commit(wiped, {:incr, :after_wipe}) == 5
    Cluster.converged(nodes, Counter, :erpc.call(hd(others), Counter, :get, []), 10_000)
  end

  test "a data_dir of another group, member list or node is refused, and left as it was",
       %{tmp_dir: tmp} do
    [a, b] = nodes = Cluster.start_peers(2) |> Enum.map(&elem(&1, 1))
    opts = disk_opts(tmp, nodes: nodes)
    :ok = Cluster.start_group(nodes, Counter, opts)
    assert commit(a, {:incr, 1}) == 1
    for n <- nodes, do: :ok = Cluster.stop_group(n, Counter)

    # Stores where they do not belong: a's where Cache's would be (another
    # group), and where b's would be (another node).
    store_a = store_dir(tmp, a)

    for copy <- ["cache/Elixir.Cache", "copy/Elixir.Visor.Test.Counter"] do
      File.mkdir_p!(Path.join(tmp, copy))
      File.cp_r!(store_a, Path.join(tmp, copy))
    end

    files = snapshot(tmp)
    dir_a = Cluster.data_dir(tmp, a)

    assert refusal(a, Counter, nodes: [a], storage: :disk, data_dir: dir_a) =~
             "started with nodes: [#{inspect(a)}]"

    assert refusal(a, Counter, cluster_size: 3, storage: :disk, data_dir: dir_a) =~
             "cluster_size: 3"

    assert refusal(a, Cache, nodes: nodes, storage: :disk, data_dir: Path.join(tmp, "cache")) =~
             ~s(holds group "Elixir.Visor.Test.Counter")

    assert refusal(b, Counter, nodes: nodes, storage: :disk, data_dir: Path.join(tmp, "copy")) =~
             "belongs to member #{Enum.find_index(Enum.sort(nodes), &(&1 == a))} (#{inspect(a)})"

    # Nothing was written to any store.
    assert snapshot(tmp) == files

    # The right options still restart both from their disks.
    :ok = Cluster.start_group(nodes, Counter, opts)
    assert commit(b, {:incr, 2}) == 2

    # A killed server (its supervisor restarts it) restarts from its disk
    # too, once its previous engine has let go of the store: even in a
    # 2-member cluster, where the member leading it could never recover
    # had it lost its state (the next view needs its log).
    server = :erpc.call(b, Process, :whereis, [Counter])
    true = :erpc.call(b, Process, :exit, [server, :kill])

    Cluster.eventually(fn ->
      pid = :erpc.call(b, Process, :whereis, [Counter])
      pid != nil and pid != server
    end)

    assert commit(b, {:incr, 3}) == 3
    assert Cluster.status(b, Counter).storage.opened == :restarted
    refute Cluster.rejoined?(b, Counter)

    # A store still locked by a live replica for a moment (here an engine
    # of the same identity, owned by a process that exits after 1 s): the
    # server tries again until it is free, instead of failing.
    :ok = Cluster.stop_group(b, Counter)

    hold_store(b, %{
      cluster: Visor.Options.cluster_id(Counter, nodes),
      replica_count: 2,
      replica_index: Enum.find_index(Enum.sort(nodes), &(&1 == b)),
      data_dir: store_dir(tmp, b),
      group: "Elixir.Visor.Test.Counter"
    })

    :ok = Cluster.start_group([b], Counter, opts)
    assert commit(b, {:incr, 4}) == 4
    assert Cluster.status(b, Counter).stats.engine_starts > 1
  end

  defp disk_opts(tmp, membership), do: Cluster.disk_opts(tmp, membership)
  defp store_dir(tmp, node), do: Cluster.store_dir(tmp, node, Counter)

  defp commit(node, command),
    do: :erpc.call(node, Counter, :commit, [command, [timeout: 20_000]], 25_000)

  # Opens the store with an engine owned by a process on `node` that exits
  # after 1 s (and so releases it); returns once the engine holds it. The
  # stopped group's engine may still hold it for a moment: then again.
  defp hold_store(node, engine_opts, attempts \\ 50) do
    assert attempts > 0, "the store stayed locked"
    owner = :erpc.call(node, :erlang, :spawn, [:timer, :sleep, [1_000]])
    {:ok, engine} = :erpc.call(node, Visor.Native, :start, [engine_opts, owner])
    status = fn -> :erpc.call(node, Visor.Native, :status, [engine]).status end
    Cluster.eventually(fn -> status.() != :starting end)
    if status.() == :failed, do: hold_store(node, engine_opts, attempts - 1), else: :ok
  end

  defp flip_byte(path, offset) do
    {:ok, file} = :file.open(path, [:read, :write, :binary, :raw])
    {:ok, <<byte>>} = :file.pread(file, offset, 1)
    :ok = :file.pwrite(file, offset, <<Bitwise.bxor(byte, 0xFF)>>)
    :ok = :file.close(file)
  end

  # Every file under `dir` with its contents.
  defp snapshot(dir) do
    for path <- Path.wildcard(Path.join(dir, "**/*")), File.regular?(path), into: %{} do
      {path, File.read!(path)}
    end
  end

  # Starts the group on `node` expecting formation to refuse its store;
  # returns the message.
  defp refusal(node, module, opts) do
    result = :erpc.call(node, Cluster, :start_group_here, [module, opts, :critical])

    assert {:error,
            {:shutdown,
             {:failed_to_start_child, ^module,
              {:shutdown, {:failed_to_start_child, Visor.Formation, {:storage_refused, message}}}}}} =
             result

    message
  end
end
