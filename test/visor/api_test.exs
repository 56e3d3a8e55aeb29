defmodule Visor.ApiTest do
  # Issue 13, "Honest errors and a predictable API": what a caller meets
  # without a running cluster (options, timeouts, status, `use Visor`).
  use ExUnit.Case, async: true

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
end
