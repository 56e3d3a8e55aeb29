defmodule Visor.UnitsTest do
  # The pure pieces: option checking, the session pool, the executor.
  use ExUnit.Case, async: true

  import Bitwise

  alias Visor.{Executor, Options, Sessions}

  describe "Options" do
    test "explicit nodes are sorted, and the cluster id depends on module and set only" do
      o = Options.validate!(Cache, nodes: [:c@h, :a@h, :b@h])
      assert o.membership == {:nodes, [:a@h, :b@h, :c@h]}
      id = Options.cluster_id(Cache, [:c@h, :a@h, :b@h])
      assert byte_size(id) == 16
      assert id == Options.cluster_id(Cache, [:a@h, :b@h, :c@h])
      refute id == Options.cluster_id(Visor.Test.Counter, [:a@h, :b@h, :c@h])
      refute id == Options.cluster_id(Cache, [:a@h, :b@h])
    end

    test "the cluster id's bytes are pinned: another OTP release computes the same id" do
      # OTP 26 changed term_to_binary/1's default encoding (minor_version
      # 2); nodes of a rolling OTP upgrade must still agree on the id, and
      # a disk store keeps it. These are the ids of OTP 25 (minor_version 1).
      assert Base.encode16(Options.cluster_id(Cache, [:c@h, :a@h, :b@h]), case: :lower) ==
               "a6b893859a32a8fc141149fa5f47f4cf"

      settings = %{
        checkpoint_interval: 100,
        client_table_max: 4096,
        checkpoint_chunk_bytes: 65536
      }

      assert Base.encode16(Options.cluster_id(Cache, [:a@h, :b@h], settings), case: :lower) ==
               "d1d7edccf6c90b1c90386ca4c2913558"
    end

    test "shared settings: the ones that decide execution, folded into the cluster id" do
      default = Options.validate!(Cache, cluster_size: 3).settings

      assert default == %{
               client_table_max: 4096,
               checkpoint_interval: 10_000,
               checkpoint_chunk_bytes: 1_048_576,
               checkpoint_bytes: 67_108_864
             }

      # Pace and batching are each replica's own business.
      assert Options.validate!(Cache, cluster_size: 3, tick_ms: 5, pipeline_max: 2).settings ==
               default

      bigger = Options.validate!(Cache, cluster_size: 3, pool_size: 512).settings
      assert Options.setting_mismatch(default, default) == nil

      assert Options.setting_mismatch(default, bigger) ==
               {:setting_mismatch, :client_table_max, 4096, 12_288}

      assert Options.setting_mismatch(default, :junk) ==
               {:setting_mismatch, :settings, default, :junk}

      nodes = [:a@h, :b@h]
      assert Options.cluster_id(Cache, nodes) == Options.cluster_id(Cache, nodes, default)
      refute Options.cluster_id(Cache, nodes) == Options.cluster_id(Cache, nodes, bigger)

      # checkpoint_bytes is shared, and hashed only when it is not its
      # default: ids (and stores) of groups formed before it existed, with
      # the defaults, stay; members that differ in it have different ids.
      small = Options.validate!(Cache, cluster_size: 3, checkpoint_bytes: 4096).settings

      assert Options.setting_mismatch(default, small) ==
               {:setting_mismatch, :checkpoint_bytes, 67_108_864, 4096}

      refute Options.cluster_id(Cache, nodes, small) == Options.cluster_id(Cache, nodes, default)

      assert Options.cluster_id(Cache, nodes, Map.delete(default, :checkpoint_bytes)) ==
               Options.cluster_id(Cache, nodes)

      # A store of a release without it recorded none: it ran with the
      # default.
      old_store = Map.delete(default, :checkpoint_bytes)
      assert Options.complete_settings(old_store) == default
      assert Options.complete_settings(small) == small
      assert Options.complete_settings(:junk) == :junk
    end

    test "defaults: 1 MiB commands, a client table with room for every node's pool" do
      o = Options.validate!(Cache, cluster_size: 3, pool_size: 1000)
      assert o.engine.batch_max_bytes == 1_048_576
      assert o.engine.tick_ms == 10
      assert o.busy_poll_us == 50
      refute Map.has_key?(o.engine, :busy_poll_us)
      assert Options.validate!(Cache, cluster_size: 3, busy_poll_us: 0).busy_poll_us == 0
      assert o.engine.client_table_max >= 6 * 1000
      assert o.opts == [cluster_size: 3, pool_size: 1000]
    end

    test "mistakes raise ArgumentError naming the option" do
      for {opts, message} <- [
            {[], ~r/:nodes.*:cluster_size/},
            {[nodes: [:a@h], cluster_size: 1], ~r/not both/},
            {[cluster_size: 7], ~r/cluster_size/},
            {[cluster_size: 0], ~r/cluster_size/},
            {[nodes: []], ~r/nodes/},
            {[nodes: [:a@h, :a@h]], ~r/duplicates/},
            {[nodes: ["a@h"]], ~r/nodes/},
            {[nodes: Enum.map(1..7, &:"n#{&1}@h")], ~r/nodes/},
            {[cluster_size: 3, pool_size: 0], ~r/pool_size/},
            {[cluster_size: 3, view_change_ticks: -1], ~r/view_change_ticks/},
            {[cluster_size: 3, busy_poll_us: -1], ~r/busy_poll_us/},
            {[cluster_size: 3, busy_poll_us: 5000], ~r/busy_poll_us/},
            {[:not_keyword], ~r/keyword/}
          ] do
        assert_raise ArgumentError, message, fn -> Options.validate!(Cache, opts) end
      end
    end

    # Issue "Lose nothing" 14: pipeline_max 2^64-1 made nothing commit,
    # view_change_ticks 2^64-1 stopped backups executing.
    test "huge_limits_do_not_overflow: every numeric option has a range checked at start" do
      huge = (1 <<< 64) - 1

      for key <- Visor.Contract.option_keys() -- [:checkpoint_interval, :wal_compact_bytes] do
        first..last//1 = Visor.Contract.range(key)
        range = "#{first}..#{last}"

        for value <- [huge, last + 1] do
          error =
            assert_raise ArgumentError, fn ->
              Options.validate!(Cache, [{:cluster_size, 3}, {key, value}])
            end

          assert error.message =~ "#{key} must be an integer in #{range}", error.message
        end
      end

      for {key, bad} <- [
            pool_size: 10_001,
            checkpoint_every: huge,
            tick_ms: 60_001,
            busy_poll_us: 1001
          ] do
        error =
          assert_raise ArgumentError, fn ->
            Options.validate!(Cache, [{:cluster_size, 3}, {key, bad}])
          end

        assert error.message =~ "#{key} must be an integer in", error.message
      end

      # The largest values of the ranges are accepted.
      assert %Options{} = Options.validate!(Cache, cluster_size: 3, pipeline_max: 1024)
    end

    # Options each in range but against each other refused by the engine
    # used to pass validate!/2 and fail the group's server at its start,
    # again at each restart.
    test "options the engine would refuse together raise at validate!, naming the option" do
      hb = Visor.Contract.default(:heartbeat_ticks)
      vc = Visor.Contract.default(:view_change_ticks)

      for {opts, message} <- [
            {[resend_ticks: vc], ~r/^Cache: .*resend_ticks must be below view_change_ticks/},
            {[view_change_ticks: 2 * hb],
             ~r/view_change_ticks must exceed twice heartbeat_ticks/},
            {[heartbeat_ticks: div(vc, 2)],
             ~r/view_change_ticks must exceed twice heartbeat_ticks/}
          ] do
        assert_raise ArgumentError, message, fn ->
          Options.validate!(Cache, [cluster_size: 3] ++ opts)
        end
      end

      # At the edges of the rules, and moved together, they are accepted.
      assert %Options{} = Options.validate!(Cache, cluster_size: 3, resend_ticks: vc - 1)
      assert %Options{} = Options.validate!(Cache, cluster_size: 3, view_change_ticks: 2 * hb + 1)

      assert %Options{} =
               Options.validate!(Cache,
                 cluster_size: 3,
                 heartbeat_ticks: vc,
                 view_change_ticks: 2 * vc + 1,
                 resend_ticks: 2 * vc
               )
    end
  end

  describe "Options: storage" do
    test "memory by default; disk keeps the group's store in data_dir/<module>" do
      assert Options.validate!(Cache, cluster_size: 3).storage == :memory

      o = Options.validate!(Cache, cluster_size: 3, storage: :disk, data_dir: "/var/lib/app")
      assert o.storage == {:disk, "/var/lib/app/Elixir.Cache"}
      refute Map.has_key?(o.engine, :data_dir)
      refute Map.has_key?(o.engine, :wal_compact_bytes)

      o =
        Options.validate!(Cache,
          nodes: [:a@h],
          storage: :disk,
          data_dir: "/d",
          wal_compact_bytes: 4096
        )

      assert o.engine.wal_compact_bytes == 4096

      # A relative data_dir is taken from the current directory, once.
      o = Options.validate!(Cache, nodes: [:a@h], storage: :disk, data_dir: "data")
      assert o.storage == {:disk, Path.join([File.cwd!(), "data", "Elixir.Cache"])}
    end

    test "mistakes raise ArgumentError naming the option" do
      for {opts, message} <- [
            {[storage: :disk], ~r/storage: :disk needs data_dir/},
            {[storage: :disk, data_dir: ""], ~r/data_dir must be a non-empty string/},
            {[storage: :disk, data_dir: ~c"/tmp"], ~r/data_dir must be a non-empty string/},
            {[data_dir: "/tmp"], ~r/data_dir is only used with storage: :disk/},
            {[storage: :memory, data_dir: "/tmp"], ~r/data_dir is only used/},
            {[storage: :ssd, data_dir: "/tmp"], ~r/storage must be :memory or :disk/},
            {[wal_compact_bytes: 1], ~r/wal_compact_bytes is only used with storage: :disk/},
            {[storage: :disk, data_dir: "/d", wal_compact_bytes: 0],
             ~r/wal_compact_bytes must be an integer in 1\.\./}
          ] do
        assert_raise ArgumentError, message, fn ->
          Options.validate!(Cache, [cluster_size: 3] ++ opts)
        end
      end
    end
  end

  describe "Sessions" do
    test "slots register lazily, up to the pool size, and serve one request at a time" do
      pool = Sessions.new(2)
      assert Sessions.checkout(pool) == :none

      # Three requests waiting: only two slots may exist.
      {[c1, c2], pool} = Sessions.grow(pool, 3)
      assert {[], ^pool} = Sessions.grow(pool, 3)
      assert c1 != c2 and byte_size(c1) == 16
      assert Sessions.lookup(pool, c1) == :registering
      assert Sessions.checkout(pool) == :none

      pool = Sessions.registered(pool, c1, 7)
      assert {:ok, ^c1, 7, 1, pool} = Sessions.checkout(pool)
      assert Sessions.checkout(pool) == :none
      assert Sessions.counts(pool) == %{slots: 2, idle: 0, busy: 1, registering: 1}

      # A stale settle (wrong request number) changes nothing.
      assert Sessions.settle(pool, c1, 2) == pool
      pool = Sessions.settle(pool, c1, 1)
      assert {:ok, ^c1, 7, 2, _} = Sessions.checkout(pool)

      # A dropped (evicted) slot frees room for a new one.
      pool = Sessions.drop(pool, c2)
      assert {[c3], _} = Sessions.grow(pool, 2)
      refute c3 in [c1, c2]
    end
  end

  describe "Executor" do
    defmodule Two do
      def handle_commit(:ok, s), do: {:ok, :two, s + 1}
    end

    defmodule Three do
      def handle_commit(:ok, s), do: {:ok, :two, s + 1}
      def handle_commit(:ok, meta, s), do: {:ok, meta.op, s + 10}
    end

    @meta %{op: 5, view: 1, timestamp: 1}

    test "uses handle_commit/3 when defined, else /2" do
      assert Executor.arity(Two) == 2
      assert Executor.arity(Three) == 3
      bin = :erlang.term_to_binary(:ok)
      assert Executor.apply(Two, 2, bin, @meta, 0) == {{:ok, :two}, 1}
      assert Executor.apply(Three, 3, bin, @meta, 0) == {{:ok, 5}, 10}
    end

    @tag :capture_log
    test "failures keep the state and name the reason" do
      bin = :erlang.term_to_binary(:unknown)

      assert {{:error, {:handle_commit_failed, %FunctionClauseError{}}}, :same} =
               Executor.apply(Two, 2, bin, @meta, :same)

      assert {{:error, {:handle_commit_failed, %ArgumentError{}}}, :same} =
               Executor.apply(Two, 2, "not a term", @meta, :same)
    end
  end

  test "a module without handle_commit does not compile" do
    assert_raise CompileError, ~r/handle_commit/, fn ->
      Code.compile_string("""
      defmodule Visor.UnitsTest.NoCommit do
        use Visor
        def initial_state(_), do: nil
      end
      """)
    end
  end
end
