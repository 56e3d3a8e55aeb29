defmodule Visor.DocsTest do
  # The status maps the docs show (README.md, docs/operations.md "Status",
  # docs/nif.md "status(engine)") against the maps the code returns, key
  # for key, so that neither can drift from the other. The options table is
  # checked against the engine's contract in contract_test.exs; here every
  # option it names must be one that Visor.Options accepts.
  use ExUnit.Case, async: false

  alias Visor.{Contract, Native, Options}
  alias Visor.Test.{Cluster, Counter}
  import Visor.NativeTest.Harness, only: [opts: 3, opts: 4, cluster_id: 0]

  @moduletag :tmp_dir

  describe "key_paths/1 (the parser of the docs' examples)" do
    test "gives each key with the keys of the maps it is nested in" do
      block = ~S"""
      %{a: 1, b: %{c: "x, y: z", d: [%{e: :f}]},
        g: %{h: 0, ...}, i: %{j: 1} | %{k: 2}}
      """

      assert key_paths(block) ==
               MapSet.new([
                 [:a],
                 [:b],
                 [:b, :c],
                 [:b, :d],
                 [:b, :d, :e],
                 [:g],
                 [:g, :h],
                 [:i],
                 [:i, :j],
                 [:i, :k]
               ])
    end
  end

  describe "Visor.status/1" do
    test "docs/operations.md and README.md show every key a disk-mode member's status has",
         %{tmp_dir: tmp} do
      [node] = Cluster.start_peers(1) |> Enum.map(&elem(&1, 1))

      :ok = Cluster.start_group([node], Counter, nodes: [node], storage: :disk, data_dir: tmp)

      status =
        Cluster.eventually(fn ->
          status = Cluster.status(node, Counter)
          status.status == :normal and status.storage.opened == :created and status
        end)

      actual = key_paths(status)
      operations = key_paths(example("docs/operations.md", "## Status"))
      readme = key_paths(example("README.md", "### `status/0`"))

      for {doc, documented} <- [{"docs/operations.md", operations}, {"README.md", readme}] do
        # Every key but the stats' (the example abbreviates them: "...").
        # README.md shows memory mode's storage: checked against the text below.
        paths =
          if doc == "README.md",
            do: [[], [:replicas], [:pool], [:version]],
            else: [[], [:replicas], [:pool], [:storage], [:version]]

        for path <- paths do
          {shown, real} = {keys_under(documented, path), keys_under(actual, path)}

          assert shown == real,
                 "#{doc}: status keys under #{inspect(path)}: not shown " <>
                   "#{inspect(MapSet.difference(real, shown))}, not real " <>
                   "#{inspect(MapSet.difference(shown, real))}"
        end

        assert MapSet.subset?(keys_under(documented, [:stats]), keys_under(actual, [:stats])),
               "#{doc} shows stats the status does not have"
      end

      # The stats operations.md names in its text are real ones.
      text = section("docs/operations.md", "## Status")

      for stat <- ~w(peer_malformed unexpected_messages send_noconnect send_busy)a do
        assert text =~ "`#{stat}`"
        assert Map.has_key?(status.stats, stat)
      end

      # Both texts list disk mode's storage keys.
      for text <- [text, section("README.md", "### `status/0`")] do
        [_, listed] = Regex.run(~r/`%\{mode: :disk, ([^}]*)\}`/, text)

        assert [:mode | keys(listed)] |> Enum.sort() ==
                 status.storage |> Map.keys() |> Enum.sort()
      end
    end
  end

  describe "Visor.Native.status/1" do
    test "docs/nif.md shows every key of the engine's status, memory and disk mode",
         %{tmp_dir: tmp} do
      documented = key_paths(example("docs/nif.md", "### `status(engine)`"))

      {:ok, memory} = Native.start(opts(cluster_id(), 1, 0), self())
      disk_opts = opts(cluster_id(), 1, 0, %{data_dir: tmp, group: "docs"})
      {:ok, disk} = Native.start(disk_opts, self())
      Cluster.eventually(fn -> Native.status(disk).status == :normal end)

      actual = MapSet.union(key_paths(Native.status(memory)), key_paths(Native.status(disk)))
      assert documented == actual

      :ok = Native.stop(memory)
      :ok = Native.stop(disk)
    end
  end

  describe "the start options table of docs/nif.md" do
    test "names exactly the keys Visor.Native.start/2 takes" do
      rows =
        "docs/nif.md"
        |> section("### `start(opts, owner)`")
        |> String.split("\n\n")
        |> Enum.find(&String.starts_with?(&1, "| key |"))
        |> String.split("\n")
        |> Enum.flat_map(fn row ->
          [first | _] = row |> String.trim_leading("| ") |> String.split(" |")
          for [_, key] <- Regex.scan(~r/`:(\w+)`/, first), do: String.to_atom(key)
        end)

      identity =
        [:cluster, :replica_count, :replica_index, :recover, :data_dir, :group, :meta] ++
          [:member, :joined, :learner, :known]

      assert Enum.sort(rows) == Enum.sort(identity ++ Contract.option_keys())

      # And Visor.Native refuses any other key.
      error =
        assert_raise ArgumentError, fn ->
          Native.start(Map.put(opts(cluster_id(), 1, 0), :tick_msec, 5), self())
        end

      assert error.message =~ "tick_msec"
    end
  end

  describe "the options table of docs/operations.md" do
    # Each option the table names is one Visor.Options takes: a value in its
    # documented range is accepted, one below it (or a wrong one) refused
    # with a message naming the option.
    test "names only options that Visor.Options takes" do
      rows = option_rows()
      assert length(rows) > 20
      memory = [cluster_size: 1]
      disk = [cluster_size: 1, storage: :disk, data_dir: "/nonexistent/visor"]

      for {key, range} <- rows do
        low = low_end(range)
        # The engine's own default where its range's low end breaks a
        # rule between options (view_change_ticks over 2 × heartbeat_ticks).
        good = if key in Contract.option_keys(), do: Contract.default(key), else: low
        base = if key == :wal_compact_bytes, do: disk, else: memory

        {good, bad} =
          case key do
            :nodes -> {[nodes: [:a@h]], [nodes: []]}
            :cluster_size -> {[cluster_size: low], [cluster_size: low - 1]}
            :storage -> {disk, [cluster_size: 1, storage: :tape]}
            :data_dir -> {disk, [cluster_size: 1, storage: :disk]}
            # Any term is a valid init_arg: nothing to refuse.
            :init_arg -> {[init_arg: {:any, "term"}] ++ base, nil}
            _ when is_integer(low) -> {[{key, good} | base], [{key, low - 1} | base]}
            _ -> flunk("#{key}: no numeric range documented; teach this test its values")
          end

        assert %Options{} = Options.validate!(Counter, good), "#{inspect(good)}"

        if bad do
          message =
            try do
              Options.validate!(Counter, bad)
              flunk("#{inspect(bad)} was accepted")
            rescue
              e in ArgumentError -> e.message
            end

          assert message =~ "#{key}", "#{inspect(bad)}: #{message}"
        end
      end
    end
  end

  describe "Telemetry" do
    test "docs/operations.md's table names exactly the events Visor emits" do
      documented =
        for [_, event] <-
              Regex.scan(
                ~r/^\| `(\[:visor(?:, :\w+)+\])` \|/m,
                section("docs/operations.md", "## Telemetry")
              ) do
          {event, []} = Code.eval_string(event)
          event
        end

      assert Enum.sort(documented) == Enum.sort(Visor.Telemetry.events())
    end
  end

  describe "Errors a caller can see" do
    # Each reason by its name: the atom, or a tuple's first element.
    test "docs/operations.md names exactly the reasons of Visor's error type; README.md only those" do
      {:ok, types} = Code.Typespec.fetch_types(Visor)

      [{:union, members}] =
        for {:type, {:error, {:type, _, kind, ms}, []}} <- types, do: {kind, ms}

      real =
        MapSet.new(members, fn
          {:atom, _, name} -> name
          {:type, _, :tuple, [{:atom, _, name} | _]} -> name
        end)

      operations =
        "docs/operations.md"
        |> section("## Errors a caller can see")
        |> String.split("\n## ", parts: 2)
        |> hd()

      documented = error_names(operations)

      # halted and skipped are named in the text below the table.
      in_text = for name <- [:halted, :skipped], operations =~ "`{:#{name},", do: name

      assert MapSet.size(real) > 15
      assert MapSet.union(documented, MapSet.new(in_text)) == real

      readme = error_names(section("README.md", "## Errors a caller can see"))
      assert MapSet.size(readme) > 10

      assert MapSet.subset?(readme, real),
             "README.md: not real #{inspect(MapSet.difference(readme, real))}"
    end
  end

  # The reasons named by the first term of each row of the first table.
  defp error_names(text) do
    [table | _] = Regex.run(~r/^\| reason \|.*?(?=\n\n)/ms, text)

    for [_, name] <- Regex.scan(~r/^\| `\{?:(\w+)/m, table),
        into: MapSet.new(),
        do: String.to_atom(name)
  end

  # The first ```elixir block after `heading` in `file`.
  defp example(file, heading) do
    [_, block] = Regex.run(~r/```elixir\n(.*?)```/s, section(file, heading))
    block
  end

  defp section(file, heading) do
    [_, rest] = file |> File.read!() |> String.split(heading <> "\n", parts: 2)
    rest
  end

  # "data_dir:, opened: :created | :restarted, error:": the keys.
  defp keys(listed) do
    for [_, key] <- Regex.scan(~r/(\w+):(?!\w)/, listed), do: String.to_atom(key)
  end

  defp keys_under(paths, prefix) do
    depth = length(prefix) + 1

    for path <- paths,
        length(path) == depth,
        List.starts_with?(path, prefix),
        into: MapSet.new(),
        do: List.last(path)
  end

  # Every key of a map (and of the maps in it, lists of maps included) as
  # the list of keys leading to it: from a term, or from the text of a
  # documented example (`key:` tokens at their nesting, strings skipped).
  defp key_paths(map) when is_map(map), do: term_paths(map, []) |> MapSet.new()
  defp key_paths(text) when is_binary(text), do: text_paths(text, [], nil, []) |> MapSet.new()

  defp term_paths(map, prefix) when is_map(map) do
    Enum.flat_map(map, fn {key, value} ->
      path = prefix ++ [key]
      [path | term_paths(value, path)]
    end)
  end

  defp term_paths(list, prefix) when is_list(list),
    do: Enum.flat_map(list, &term_paths(&1, prefix))

  defp term_paths(_, _), do: []

  # stack: the key paths of the open maps and lists; last: the last key seen.
  defp text_paths("", _stack, _last, acc), do: Enum.reverse(acc)

  defp text_paths(<<?", rest::binary>>, stack, last, acc) do
    [_, rest] = String.split(rest, "\"", parts: 2)
    text_paths(rest, stack, last, acc)
  end

  defp text_paths(<<open, rest::binary>>, stack, last, acc) when open in [?{, ?[] do
    prefix = if last && stack != [], do: last, else: List.first(stack, [])
    text_paths(rest, [prefix | stack], nil, acc)
  end

  # After a closing bracket, `|` and another map continue the same key.
  defp text_paths(<<close, rest::binary>>, [prefix | stack], _last, acc)
       when close in [?}, ?]],
       do: text_paths(rest, stack, prefix, acc)

  defp text_paths(text, stack, last, acc) do
    case Regex.run(~r/^(\w+)(: )?/, text) do
      [word, key, _] when stack != [] ->
        path = hd(stack) ++ [String.to_atom(key)]
        text_paths(drop(text, word), stack, path, [path | acc])

      [word | _] ->
        text_paths(drop(text, word), stack, last, acc)

      nil ->
        <<_, rest::binary>> = text
        # A comma ends the value the last key introduced.
        last = if String.starts_with?(text, ","), do: nil, else: last
        text_paths(rest, stack, last, acc)
    end
  end

  defp drop(text, prefix),
    do: binary_part(text, byte_size(prefix), byte_size(text) - byte_size(prefix))

  defp option_rows do
    "docs/operations.md"
    |> section("## Starting a group")
    |> String.split("\n###")
    |> hd()
    |> String.split("\n")
    |> Enum.flat_map(fn line ->
      case Regex.run(~r/^\| `(\w+)` \|[^|]*\|([^|]*)\|/, line) do
        [_, key, range] -> [{String.to_atom(key), String.trim(range)}]
        nil -> []
      end
    end)
  end

  # "1..60000", "0..2^32", "3..1000000, and ...": the range's low end.
  defp low_end(range) do
    case Regex.run(~r/^(\d+)\.\./, range) do
      [_, low] -> String.to_integer(low)
      nil -> nil
    end
  end
end
