defmodule Visor.LostStoreTest do
  # Disk mode on real nodes, stores that lost a file while their node was
  # down. A node whose write-ahead log was deleted or cut short must not
  # restart from the short log. One node
  # is down while the other two acknowledge 30 commits; both are killed;
  # one restarts next to the stale node with its WAL gone (or cut to 30%).
  # It must recover from its peers (waiting for the third node), never
  # start a view with the stale node that forgets the 30 commits. Not
  # async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  @moduletag :tmp_dir

  for damage <- [:deleted, :cut_to_30_percent] do
    test "a WAL #{damage} after it was synced is recovered from the peers, never trusted",
         %{tmp_dir: tmp} do
      nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
      opts = disk_opts(tmp, nodes: nodes)
      :ok = Cluster.start_group(nodes, Counter, opts)
      assert commit(hd(nodes), {:incr, 0}) == 1

      # The stale node: down (its disk intact) while the others commit.
      [stale, victim, intact] = Cluster.backups_first(nodes, Counter)
      :ok = Cluster.kill_node(stale, [victim, intact])
      for i <- 1..30, do: assert(commit(intact, {:incr, i}) == i + 1)
      log_size = Cluster.status(victim, Counter).storage.wal_size
      :ok = Cluster.kill_nodes([victim, intact])

      damage(Path.join(store_dir(tmp, victim), "wal.a"), unquote(damage), log_size)

      Cluster.restart_all([stale, victim])
      :ok = Cluster.start_group([stale, victim], Counter, opts)
      Cluster.eventually(fn -> Cluster.status(stale, Counter).storage.opened == :restarted end)
      Cluster.eventually(fn -> Cluster.status(victim, Counter).storage.opened != nil end)
      assert Cluster.status(victim, Counter).storage.opened == :recovering

      # With the third node back, every node holds the 30 commits.
      Cluster.restart_peer(intact, [stale, victim])
      :ok = Cluster.start_group([intact], Counter, opts)
      assert commit(victim, {:incr, :after}) == 32
      final = :erpc.call(intact, Counter, :get, [])
      assert final.count == 32
      Cluster.converged(nodes, Counter, final, 10_000)
    end
  end

  # A store that lost its superblock but kept its log cannot say whose it is
  # or what it acknowledged: refused before the group starts, never taken
  # for "no store" (which would start the engine on it, to be refused there,
  # and the group to crash-loop).
  test "a store without its superblock is refused at start, and left untouched", %{tmp_dir: tmp} do
    [a, _b] = nodes = Cluster.start_peers(2) |> Enum.map(&elem(&1, 1))
    opts = disk_opts(tmp, nodes: nodes)
    :ok = Cluster.start_group(nodes, Counter, opts)
    assert commit(a, {:incr, 1}) == 1
    for n <- nodes, do: :ok = Cluster.stop_group(n, Counter)

    File.rm!(Path.join(store_dir(tmp, a), "superblock"))
    files = snapshot(tmp)

    message = refusal(a, Counter, opts.(a))
    assert message =~ "no superblock"
    assert message =~ store_dir(tmp, a)
    assert snapshot(tmp) == files
  end

  # Protocol-Aware Recovery: with one node down, a node whose log has one
  # damaged entry (named by the next entry's checksum) fetches it from the
  # one peer up and serves again, instead of discarding its log and waiting
  # for a quorum of others to recover from.
  test "one damaged WAL entry is repaired from the one peer up", %{tmp_dir: tmp} do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    opts = disk_opts(tmp, nodes: nodes)
    :ok = Cluster.start_group(nodes, Counter, opts)
    for i <- 1..20, do: assert(commit(hd(nodes), {:incr, i}) == i)

    [down, victim, up] = Cluster.backups_first(nodes, Counter)
    :ok = Cluster.kill_node(down, [victim, up])
    :ok = Cluster.kill_node(victim, [up])
    wal = Path.join(store_dir(tmp, victim), "wal.a")
    entries = entry_records(File.read!(wal))
    # An entry in the middle: intact entries follow it.
    {offset, _len} = Enum.at(entries, div(length(entries), 2))
    flip_byte(wal, offset + 40)

    Cluster.restart_peer(victim, [up])
    :ok = Cluster.start_group([victim], Counter, opts)
    Cluster.eventually(fn -> Cluster.status(victim, Counter).storage.opened != nil end)
    assert Cluster.status(victim, Counter).storage.opened == :repairing
    assert commit(victim, {:incr, :after_repair}) == 21
    assert :erpc.call(victim, Counter, :get, [[consistency: :local]]).count == 21

    # The repair is durable: restarted again, it opens its whole log.
    :ok = Cluster.kill_node(victim, [up])
    Cluster.restart_peer(victim, [up])
    :ok = Cluster.start_group([victim], Counter, opts)
    Cluster.eventually(fn -> Cluster.status(victim, Counter).storage.opened == :restarted end)
    assert commit(victim, {:incr, :after_restart}) == 22
  end

  # {offset, length} of every entry record in a WAL file's bytes (records:
  # 16-byte checksum, "VWAL", 4-byte length, postcard body whose first byte
  # is the variant, 0 for an entry; docs/storage.md).
  defp entry_records(bytes, offset \\ 0, acc \\ []) do
    case bytes do
      <<_::binary-size(offset), _sum::binary-16, "VWAL", len::little-32, variant, _::binary>> ->
        acc = if variant == 0, do: [{offset, 24 + len} | acc], else: acc
        entry_records(bytes, offset + 24 + len, acc)

      _ ->
        Enum.reverse(acc)
    end
  end

  defp flip_byte(path, offset) do
    {:ok, file} = :file.open(path, [:read, :write, :binary, :raw])
    {:ok, <<byte>>} = :file.pread(file, offset, 1)
    :ok = :file.pwrite(file, offset, <<Bitwise.bxor(byte, 0xFF)>>)
    :ok = :file.close(file)
  end

  defp damage(wal, :deleted, _log_size), do: File.rm!(wal)

  defp damage(wal, :cut_to_30_percent, log_size) do
    {:ok, file} = :file.open(wal, [:read, :write, :binary, :raw])
    {:ok, _} = :file.position(file, div(log_size * 3, 10))
    :ok = :file.truncate(file)
    :ok = :file.close(file)
  end

  defp disk_opts(tmp, membership), do: Cluster.disk_opts(tmp, membership)
  defp store_dir(tmp, node), do: Cluster.store_dir(tmp, node, Counter)

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

  defp commit(node, command),
    do: :erpc.call(node, Counter, :commit, [command, [timeout: 20_000]], 25_000)
end
