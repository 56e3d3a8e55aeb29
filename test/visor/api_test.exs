defmodule Visor.ApiTest do
  # Issue 13, "Honest errors and a predictable API": what a caller meets
  # without a running cluster (options, timeouts, status, `use Visor`).
  use ExUnit.Case, async: true

  # The examples in Visor's docs (options, timeouts, status without a
  # running group): the public API's docs cannot drift from what it does.
  doctest Visor

  alias Visor.Options

  describe "options" do
    test "an unknown or misspelled option raises, naming it (and the likely one meant)" do
      error =
        assert_raise ArgumentError, fn ->
          Options.validate!(Cache, cluster_size: 3, tick_msec: 5)
        end

      assert error.message =~ "unknown option tick_msec"
      assert error.message =~ "tick_ms"

      error =
        assert_raise ArgumentError, fn ->
          Options.validate!(Cache, cluster_size: 3, my_seed: 1, other: 2)
        end

      assert error.message =~ "my_seed"
      assert error.message =~ "other"
      assert error.message =~ "init_arg"
    end

    test "checkpoint_interval is the engine's name; the option is checkpoint_every" do
      error =
        assert_raise ArgumentError, fn ->
          Options.validate!(Cache, cluster_size: 3, checkpoint_interval: 100)
        end

      assert error.message =~ "checkpoint_every"
      o = Options.validate!(Cache, cluster_size: 3, checkpoint_every: 100)
      assert o.engine.checkpoint_interval == 100
    end

    test "init_arg travels apart from Visor's options (default [])" do
      assert Options.validate!(Cache, cluster_size: 3).init_arg == []
      o = Options.validate!(Cache, cluster_size: 3, init_arg: %{seed: 7})
      assert o.init_arg == %{seed: 7}
      refute Map.has_key?(o.engine, :init_arg)
    end

    test "replace_after: off by default (nil or :infinity), else 1000..2^32-1 ms" do
      assert Options.validate!(Cache, cluster_size: 3).replace_after == nil
      assert Options.validate!(Cache, cluster_size: 3, replace_after: nil).replace_after == nil

      assert Options.validate!(Cache, cluster_size: 3, replace_after: :infinity).replace_after ==
               nil

      assert Options.validate!(Cache, cluster_size: 3, replace_after: 30_000).replace_after ==
               30_000

      assert Options.validate!(Cache, nodes: [:a@h], replace_after: 1_000).replace_after == 1_000

      for bad <- [0, 999, -1, 0x1_0000_0000, 1.5e3, "30s", :never] do
        error =
          assert_raise ArgumentError, fn ->
            Options.validate!(Cache, cluster_size: 3, replace_after: bad)
          end

        assert error.message =~ "replace_after must be an integer in 1000..4294967295"
      end
    end

    test "the initial state is built from init_arg only" do
      defmodule InitArg do
        use Visor
        @impl Visor
        def initial_state(arg), do: arg
        @impl Visor
        def handle_commit(_command, state), do: {:ok, nil, state}
      end

      counters = :atomics.new(3, [])
      config = Options.validate!(InitArg, cluster_size: 1, init_arg: {:seed, 7})
      {machine, []} = Visor.Server.Machine.new(InitArg, config.init_arg, counters, nil)
      assert machine.app_state == {:seed, 7}
    end
  end

  describe "timeouts" do
    test "a timeout the runtime cannot represent, or not a timeout, raises before anything is sent" do
      # Cache is not running here: a call would answer {:error, :not_running}.
      for bad <- [5_000_000_000, -1, :soon, 1.5] do
        assert_raise ArgumentError, ~r/timeout/, fn -> Visor.commit(Cache, :x, timeout: bad) end
        assert_raise ArgumentError, ~r/timeout/, fn -> Visor.get(Cache, timeout: bad) end
        assert_raise ArgumentError, ~r/timeout/, fn -> Visor.commit(Cache, :x, bad) end
      end
    end

    test "a positional timeout and :infinity are accepted" do
      assert Visor.commit(Cache, {:add, %{}}, 10_000) == {:error, :not_running}
      assert Cache.commit({:add, %{}}, 10_000) == {:error, :not_running}
      assert Visor.commit(Cache, {:add, %{}}, timeout: :infinity) == {:error, :not_running}
      assert Visor.get(Cache, timeout: :infinity) == {:error, :not_running}
      assert Cache.get(:infinity) == {:error, :not_running}
    end
  end

  describe "status" do
    test "a group not running on this node has a status map all the same" do
      status = Visor.status(Cache)
      assert status.status == :not_running
      assert status.primary == nil
      assert status.role == :none
      assert status.replicas == []
      assert Cache.status().status == :not_running
    end
  end

  describe "use Visor" do
    test "a module that uses Visor can call Kernel.get_in/2 unqualified" do
      [{module, _}] =
        Code.compile_string("""
        defmodule Visor.ApiTest.Nested do
          use Visor
          @impl Visor
          def initial_state(_), do: %{a: %{b: 1}}
          @impl Visor
          def handle_commit(path, state), do: {:ok, get_in(state, path), state}
        end
        """)

      meta = %{op: 1, view: 0, timestamp: 1}
      payload = :erlang.term_to_binary([:a, :b])
      assert {{:ok, 1}, _} = Visor.Executor.apply(module, 2, payload, meta, %{a: %{b: 1}})
      # The group's own read is still there, with and without options.
      assert module.get_in([:a]) == {:error, :not_running}
      assert module.get_in([:a], consistency: :local) == {:error, :not_running}
    end

    test "use Visor, opts: child spec keys and default start options, as use GenServer does" do
      [{module, _}] =
        Code.compile_string("""
        defmodule Visor.ApiTest.Transient do
          use Visor, restart: :transient, id: :my_cache, cluster_size: 3, pool_size: 4
          @impl Visor
          def initial_state(_), do: nil
          @impl Visor
          def handle_commit(_, state), do: {:ok, nil, state}
        end
        """)

      spec = module.child_spec(pool_size: 8)
      assert spec.restart == :transient
      assert spec.id == :my_cache
      assert spec.type == :supervisor
      assert {Visor, :start_link, [^module, opts]} = spec.start
      assert Keyword.get(opts, :cluster_size) == 3
      assert Keyword.get(opts, :pool_size) == 8
      assert Visor.Options.validate!(module, opts).pool_size == 8

      # A membership given at start replaces the default one, of either kind.
      {Visor, :start_link, [^module, opts]} = module.child_spec(nodes: [:a@h]).start
      assert Visor.Options.validate!(module, opts).membership == {:nodes, [:a@h]}
    end

    test "use Visor with an unknown option does not compile" do
      assert_raise ArgumentError, ~r/tick_msec/, fn ->
        Code.compile_string("""
        defmodule Visor.ApiTest.Typo do
          use Visor, tick_msec: 5
          @impl Visor
          def initial_state(_), do: nil
          @impl Visor
          def handle_commit(_, state), do: {:ok, nil, state}
        end
        """)
      end
    end
  end
end
