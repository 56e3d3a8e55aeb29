defmodule Visor.NativeDiskTest do
  # Disk mode at the NIF: stores in temporary directories, replicas driven
  # by the test process (Visor.NativeTest.Harness), restarted from disk.
  use ExUnit.Case, async: true

  import Visor.NativeTest.Harness

  alias Visor.Native

  @moduletag :tmp_dir

  defp disk(dir, i, meta \\ "members"),
    do: %{data_dir: Path.join(dir, "r#{i}"), group: "Elixir.Counter", meta: meta}

  # stop/1 returns at once; the engine thread drops the store, and with it
  # the directory's lock, a moment later. Until then a new start is refused
  # with {:store_in_use, dir}: wait for every lock to be free.
  defp wait_stopped(c, dir) do
    stop_cluster(c)

    wait_until(fn ->
      Enum.all?(c.engines, fn {i, _} -> lock_free?(Path.join(dir, "r#{i}")) end)
    end)
  end

  defp lock_free?(store) do
    # Another cluster's group: refused either way, and the store untouched.
    probe_opts = %{data_dir: store, group: "Elixir.Counter"}
    {:ok, probe} = Native.start(opts(cluster_id(), 1, 0, probe_opts), self())

    receive do
      {:visor_engine_down, ^probe, reason} -> not match?({:store_in_use, _}, reason)
    after
      2_000 -> flunk("no answer from the engine")
    end
  end

  test "every replica restarted from its data_dir replays what was committed", %{tmp_dir: dir} do
    cluster = cluster_id()
    c = start_group(cluster, 3, &disk(dir, &1))
    client = client_id()

    c =
      pump(c, fn c -> Enum.all?(c.storage, fn {_, n} -> n == [{:storage, :created, nil}] end) end)

    {c, session} = register(c, 1, client)
    {c, _} = commit(c, 1, client, session, 1, "a")
    {c, op} = commit(c, 1, client, session, 2, "b")
    c = pump(c, &all_executed?(&1, op))
    before = c.executes[0]

    for {_, e} <- c.engines do
      assert %{mode: :disk, error: nil, syncs: syncs, wal_bytes: bytes} = Native.status(e).storage
      assert syncs > 0 and bytes > 0
    end

    wait_stopped(c, dir)

    # Every node down at once, then back from disk: the same cluster, the
    # committed ops replayed in order, and the session still valid.
    c = start_group(cluster, 3, &disk(dir, &1))
    c = pump(c, &all_executed?(&1, op))

    for {i, _} <- c.engines do
      assert [{:storage, :restarted, nil} | _] = c.storage[i]
      assert Enum.take(c.executes[i], length(before)) == before
    end

    {c, op3} = commit(c, 1, client, session, 3, "c")
    assert op3 > op
    stop_cluster(c)
  end

  test "probe/1 reads a store's identity without opening it", %{tmp_dir: dir} do
    assert Native.probe(Path.join(dir, "nothing")) == :empty
    cluster = cluster_id()
    c = start_group(cluster, 1, &disk(dir, &1, "the meta"))
    c = pump(c, &(&1.storage[0] != []))

    assert {:ok, %{cluster: ^cluster, group: "Elixir.Counter", replica: 0}} =
             info = Native.probe(Path.join(dir, "r0"))

    # The genesis member in slot 0 (member id 0, 16 bytes little-endian),
    # a member of epoch 0, with no learner's life.
    assert %{member: <<0::little-128>>, joined: 0, epoch: 0, role: :member, life: nil} =
             elem(info, 1)

    refute Map.has_key?(elem(info, 1), :replica_count)
    assert elem(info, 1).meta == "the meta"
    stop_cluster(c)

    File.write!(
      Path.join([dir, "junk", "superblock"]) |> tap(&File.mkdir_p!(Path.dirname(&1))),
      "x"
    )

    assert {:error, message} = Native.probe(Path.join(dir, "junk"))
    assert message =~ "superblock"
  end

  test "a store of another cluster or group is refused and left untouched", %{tmp_dir: dir} do
    c = start_group(cluster_id(), 1, &disk(dir, &1))
    c = pump(c, &(&1.storage[0] != []))
    wait_stopped(c, dir)
    files = for f <- ["superblock", "wal.a"], do: File.read!(Path.join([dir, "r0", f]))

    for extra <- [%{}, %{group: "Elixir.Other"}] do
      {:ok, engine} =
        Native.start(Map.merge(opts(cluster_id(), 1, 0, disk(dir, 0)), extra), self())

      assert_receive {:visor_engine_down, ^engine, reason}, 2_000
      store = Path.join(dir, "r0")
      assert {:foreign_store, ^store, detail} = reason
      assert detail =~ "belongs to another replica"
      assert Native.status(engine).status == :failed
    end

    assert files == for(f <- ["superblock", "wal.a"], do: File.read!(Path.join([dir, "r0", f])))
  end

  test "two groups cannot share a data_dir", %{tmp_dir: dir} do
    cluster = cluster_id()
    c = start_group(cluster, 1, &disk(dir, &1))
    c = pump(c, &(&1.storage[0] != []))
    {:ok, second} = Native.start(opts(cluster, 1, 0, disk(dir, 0)), self())
    assert_receive {:visor_engine_down, ^second, reason}, 2_000
    assert reason == {:store_in_use, Path.join(dir, "r0")}
    stop_cluster(c)
  end

  test "disk options are checked" do
    good = opts(cluster_id(), 1, 0)

    for {extra, message} <- [
          {%{data_dir: ""}, "data_dir"},
          {%{data_dir: "/tmp/x"}, "group"},
          {%{data_dir: "/tmp/x", group: ""}, "group"},
          {%{data_dir: "/tmp/x", group: "g", meta: :x}, "meta"},
          {%{data_dir: "/tmp/x", group: "g", wal_compact_bytes: 0}, "wal_compact_bytes"},
          {%{group: "g"}, "only accepted with data_dir"},
          {%{wal_compact_bytes: 1}, "only accepted with data_dir"}
        ] do
      assert_raise ArgumentError, ~r/#{message}/, fn ->
        Native.start(Map.merge(good, extra), self())
      end
    end
  end
end
