defmodule Visor.ContractTest do
  # The contract the NIF reports (Visor.Contract) is what the engine and
  # Visor.Options enforce, and what docs/operations.md documents.
  use ExUnit.Case, async: true

  import Bitwise
  import Visor.NativeTest.Harness

  alias Visor.{Contract, Native, Options}

  @u64_max (1 <<< 64) - 1

  describe "the interface version" do
    test "the loaded library speaks this code's version" do
      assert Native.protocol_version() == Contract.protocol_version()
      assert Native.nif_contract().protocol_version == Contract.protocol_version()
    end

    test "check_version/1 accepts only this code's version, and says how to rebuild" do
      assert Contract.check_version(Contract.protocol_version()) == :ok

      for stale <- [Contract.protocol_version() - 1, Contract.protocol_version() + 1, nil] do
        assert {:error, message} = Contract.check_version(stale)
        assert message =~ "interface version #{inspect(stale)}"
        assert message =~ "mix compile"
        assert message =~ "cargo build --release -p visor_nif"
      end
    end
  end

  describe "the replica limit" do
    test "Options and the engine accept max_replicas members and refuse one more" do
      max = Contract.max_replicas()
      assert Options.max_replicas() == max
      names = fn n -> Enum.map(1..n, &:"n#{&1}@h") end

      assert %Options{} = Options.validate!(Cache, cluster_size: max)
      assert %Options{} = Options.validate!(Cache, nodes: names.(max))

      assert_raise ArgumentError, ~r/cluster_size/, fn ->
        Options.validate!(Cache, cluster_size: max + 1)
      end

      assert_raise ArgumentError, ~r/nodes/, fn ->
        Options.validate!(Cache, nodes: names.(max + 1))
      end

      {:ok, engine} = Native.start(opts(cluster_id(), max, max - 1), self())
      :ok = Native.stop(engine)

      assert_raise ArgumentError, ~r/replica_count/, fn ->
        Native.start(opts(cluster_id(), max + 1, 0), self())
      end

      assert {:error, {:bad_option, :replica_count, _}} =
               Native.nif_start(opts(cluster_id(), max + 1, 0), self())
    end
  end

  describe "the engine options" do
    test "Options accepts each option's bounds and refuses one past them" do
      for key <- Contract.option_keys() do
        first..last//1 = Contract.range(key)
        # checkpoint_interval is set through checkpoint_every; wal_compact_bytes is disk mode's.
        option = if key == :checkpoint_interval, do: :checkpoint_every, else: key
        base = [cluster_size: 3, storage: :disk, data_dir: "/nonexistent/visor"]

        # The bounds are accepted, but where they break the rules that tie
        # the timeouts together (Config::validate, which Options asks
        # through Native.check_options/1): then the rule is named.
        for value <- [first, last] do
          if (key in [:heartbeat_ticks, :resend_ticks] and value == last) or
               (key == :view_change_ticks and value == first) do
            assert_raise ArgumentError,
                         ~r/(view_change_ticks must exceed|resend_ticks must be below)/,
                         fn -> Options.validate!(Cache, [{option, value} | base]) end
          else
            assert %Options{} = Options.validate!(Cache, [{option, value} | base])
          end
        end

        for value <- [first - 1, last + 1] do
          error =
            assert_raise ArgumentError, fn ->
              Options.validate!(Cache, [{option, value} | base])
            end

          assert error.message =~ "#{option} must be an integer in #{first}..#{last}"
        end
      end
    end

    test "the engine refuses one past each option's bounds, and takes its bounds" do
      good = opts(cluster_id(), 1, 0)

      for key <- Contract.option_keys() -- [:wal_compact_bytes] do
        first..last//1 = Contract.range(key)

        # The timeouts are also bound to each other (Config::validate, which
        # speaks first): view_change_ticks must exceed twice heartbeat_ticks,
        # so heartbeat_ticks and resend_ticks at their maximum break that.
        blamed = if key == :heartbeat_ticks, do: [key, :view_change_ticks], else: [key]

        for value <- [first - 1, last + 1], value >= 0 and value <= @u64_max do
          assert {:error, {:bad_option, refused, _}} =
                   Native.nif_start(Map.put(good, key, value), self())

          assert refused in blamed
        end

        for value <- [first, last],
            not (key in [:heartbeat_ticks, :resend_ticks] and value == last),
            not (key == :view_change_ticks and value == first) do
          assert {:ok, engine} = Native.nif_start(Map.put(good, key, value), self()),
                 "#{key}: #{value}"

          :ok = Native.stop(engine)
        end
      end
    end

    test "each option's default is what the engine runs with" do
      %Options{engine: engine} = Options.validate!(Cache, cluster_size: 1, pool_size: 1)
      assert engine.tick_ms == Contract.default(:tick_ms)
      assert engine.batch_max_bytes == Contract.default(:batch_max_bytes)
      assert engine.client_table_max == Contract.default(:client_table_max)

      assert Options.shared_settings(engine).checkpoint_chunk_bytes ==
               Contract.default(:checkpoint_chunk_bytes)
    end

    # The table under "Starting a group": one row per option, with its
    # default and range as the engine reports them.
    test "docs/operations.md documents every engine option with the contract's default and range" do
      rows = option_rows()

      visor_only =
        ~w(nodes cluster_size storage data_dir pool_size busy_poll_us checkpoint_every replace_after)

      documented = for {key, _, _} <- rows, key not in visor_only, do: String.to_atom(key)
      assert Enum.sort(documented) == Contract.option_keys() -- [:checkpoint_interval]

      for {key, default, range} <- rows, key not in visor_only do
        key = String.to_atom(key)
        assert number(default) == Contract.default(key), "default of #{key}: #{default}"
        assert range(range) == Contract.range(key), "range of #{key}: #{range}"
      end

      rows = Map.new(rows, fn {key, default, range} -> {key, {default, range}} end)
      max = Contract.max_replicas()

      assert rows["checkpoint_every"] |> elem(1) |> range() ==
               Contract.range(:checkpoint_interval)

      assert rows["cluster_size"] |> elem(1) |> range() == 1..max
      assert elem(rows["nodes"], 1) == "1 to #{max} names"
    end
  end

  describe "size limits" do
    test "deliver takes a list of deliver_list_max messages, and drops a longer one" do
      {:ok, engine} = Native.start(opts(cluster_id(), 1, 0), self())
      max = Contract.limit(:deliver_list_max)
      assert Native.deliver(engine, List.duplicate("junk", max)) == :ok
      assert {:malformed, _} = Native.deliver(engine, List.duplicate("junk", max + 1))
      :ok = Native.stop(engine)
    end

    @tag :tmp_dir
    test "a store's group and meta may be as long as the limits, not longer", %{tmp_dir: dir} do
      for {key, limit} <- [group: :group_bytes_max, meta: :meta_bytes_max] do
        max = Contract.limit(limit)
        disk = %{data_dir: Path.join(dir, "#{key}"), group: "g"}
        good = opts(cluster_id(), 1, 0, disk)

        {:ok, engine} = Native.start(Map.put(good, key, :binary.copy("x", max)), self())
        :ok = Native.stop(engine)

        too_long = Map.put(good, key, :binary.copy("x", max + 1))
        assert_raise ArgumentError, ~r/#{key}/, fn -> Native.start(too_long, self()) end
        assert {:error, {:bad_option, ^key, _}} = Native.nif_start(too_long, self())
      end
    end
  end

  defp option_rows do
    "docs/operations.md"
    |> File.read!()
    |> String.split("## Starting a group")
    |> Enum.at(1)
    |> String.split("\n###")
    |> hd()
    |> String.split("\n")
    |> Enum.flat_map(fn line ->
      case Regex.run(~r/^\| `(\w+)` \|([^|]*)\|([^|]*)\|/, line) do
        [_, key, default, range] -> [{key, String.trim(default), String.trim(range)}]
        nil -> []
      end
    end)
  end

  # "64 MiB", "2^30", "2^64-1", "4096, or 24 × `pool_size` if larger": the first number.
  defp number(text) do
    text = text |> String.split(",") |> hd() |> String.trim()

    cond do
      m = Regex.run(~r/^(\d+) MiB$/, text) -> String.to_integer(Enum.at(m, 1)) <<< 20
      m = Regex.run(~r/^2\^(\d+)-1$/, text) -> (1 <<< String.to_integer(Enum.at(m, 1))) - 1
      m = Regex.run(~r/^2\^(\d+)$/, text) -> 1 <<< String.to_integer(Enum.at(m, 1))
      true -> String.to_integer(text)
    end
  end

  # "1..65536", "3..1000000, and over 2 × `heartbeat_ticks`".
  defp range(text) do
    [first, last] = text |> String.split(",") |> hd() |> String.split("..")
    number(first)..number(last)//1
  end
end
