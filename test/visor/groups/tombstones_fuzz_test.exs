defmodule Visor.Groups.TombstonesFuzzTest do
  # Property tests of Visor.Groups.Tombstones.parse/1 on random files:
  # records with adversarial keys (binaries holding the marker, bytes
  # 0xF6/0xF7/0xF8, whole frames in the current format, large keys), then
  # one damage (flipped bits, truncation, zeros, garbage, inserted or
  # deleted bytes). :rand is seeded; a failure prints its seed, and
  # TOMBSTONES_FUZZ_SEED=<seed> replays it.
  #
  # Not generated here: keys holding a byte one bit from 0xF7 before the
  # marker's other bytes, and their one flipped bit
  # (test/visor/groups/tombstones_review3_test.exs flips every bit of
  # such a file); the last test here sweeps every cut point.
  use ExUnit.Case, async: true

  import Visor.Test.TombstoneFiles, only: [frame: 2]

  alias Visor.Groups.{Stores, Tombstones}
  alias Visor.Test.TombstoneFiles

  @moduletag :tmp_dir

  @magic TombstoneFiles.magic()
  @iterations 3000
  # Ids of the records only found inside keys: never written as a stop.
  @inner_ids 1_000_000_000
  @nodes [:a@h, :b@h, :c@h, :d@host, :"n-1@10.0.0.1"]

  setup do
    seed =
      case System.get_env("TOMBSTONES_FUZZ_SEED") do
        nil -> :erlang.unique_integer([:positive]) + :os.system_time()
        seed -> String.to_integer(seed)
      end

    :rand.seed(:exsss, seed)
    %{seed: seed}
  end

  test "the frames written are those record/3 writes", %{tmp_dir: tmp} do
    records = for i <- 0..30, do: {key(), instance(i)}
    for {key, instance} <- records, do: :ok = Tombstones.record(tmp, key, instance)

    assert File.read!(Path.join(tmp, "tombstones")) ==
             IO.iodata_to_binary(for {key, instance} <- records, do: frame(key, instance))
  end

  test "parse/1 never raises, returns every untouched record in order and none unwritten",
       %{seed: seed} do
    for iteration <- 1..@iterations do
      records = for i <- 0..(:rand.uniform(12) - 1), do: {key(), instance(i)}
      frames = Enum.map(records, fn {key, instance} -> frame(key, instance) end)
      spans = spans(frames)
      bytes = IO.iodata_to_binary(frames)
      {damage, damaged} = damage(bytes)
      touched = touched(damage, spans)

      context =
        "seed #{seed} (TOMBSTONES_FUZZ_SEED=#{seed}), iteration #{iteration}, " <>
          "damage #{inspect(damage, limit: 20)}, spans #{inspect(spans)}"

      {found, findings} =
        try do
          Tombstones.parse(damaged)
        rescue
          e -> flunk("parse/1 raised #{Exception.format(:error, e, __STACKTRACE__)}\n#{context}")
        end

      ids = Enum.map(found, fn {_key, %{id: id}} -> id end)

      assert Enum.all?(found, fn {_key, %{id: id}} = record ->
               id < @inner_ids and Enum.at(records, id) == record
             end),
             "a record that was not written: #{inspect(found -- records, limit: 10)}\n#{context}"

      assert ids == Enum.sort(Enum.uniq(ids)), "out of order: #{inspect(ids)}\n#{context}"

      untouched = for {_, i} <- Enum.with_index(spans), i not in touched, do: i

      assert untouched -- ids == [],
             "untouched records lost: #{inspect(untouched -- ids)} (found #{inspect(ids)}, " <>
               "findings #{inspect(findings)})\n#{context}"

      if damage == :none do
        assert {found, findings} == {records, %{damaged: [], torn: nil}}, context
      end
    end
  end

  test "a truncation outside a marker is a torn end that loses only the record cut", %{
    seed: seed
  } do
    for iteration <- 1..@iterations do
      records = for i <- 0..:rand.uniform(6), do: {key(), instance(i)}
      frames = Enum.map(records, fn {key, instance} -> frame(key, instance) end)
      spans = spans(frames)
      bytes = IO.iodata_to_binary(frames)
      {{start, stop}, cut_in} = Enum.random(Enum.with_index(spans))
      # Inside the frame, past its marker (truncation inside a marker:
      # the :review_break test below).
      at = start + byte_size(@magic) + :rand.uniform(stop - start - byte_size(@magic)) - 1
      context = "seed #{seed}, iteration #{iteration}, cut at #{at} of #{inspect(spans)}"

      assert Tombstones.parse(binary_part(bytes, 0, at)) ==
               {Enum.take(records, cut_in), %{damaged: [], torn: start}},
             context
    end
  end

  test "parse/1 takes time linear in the file: under 1 s a MB" do
    large = for <<byte <- :rand.bytes(1_000_000)>>, into: <<>>, do: <<0xF6 + rem(byte, 3)>>
    frame = frame(large, instance(0))
    small = frame({:k, 1}, instance(1))

    files = %{
      "one frame of a 1 MB key of 0xF6/0xF7/0xF8" => frame,
      "the same frame, one bit flipped in its md5" => flip(frame, 20),
      "the same frame, cut short" => binary_part(frame, 0, byte_size(frame) - 1),
      "1 MB of markers" => :binary.copy(@magic, 131_072),
      "1 MB of small frames" => :binary.copy(small, div(1_000_000, byte_size(small))),
      "1 MB of 0xF6" => :binary.copy(<<0xF6>>, 1_000_000),
      "a frame of 1 MB of escapes" => @magic <> :binary.copy(<<0xF6, 0x02>>, 500_000) <> <<0xF8>>,
      "1 MB of zeros after a frame" => small <> :binary.copy(<<0>>, 1_000_000),
      "1 MB of garbage" => :rand.bytes(1_000_000)
    }

    for {name, bytes} <- files do
      {micros, _} = :timer.tc(fn -> Tombstones.parse(bytes) end)

      assert micros < max(byte_size(bytes), 1_000_000),
             "#{name}: #{byte_size(bytes)} bytes parsed in #{div(micros, 1000)} ms"
    end
  end

  test "a truncation at any point is a torn end that loses only the record cut" do
    records = for i <- 0..3, do: {small_key(), instance(i)}
    frames = Enum.map(records, fn {key, instance} -> frame(key, instance) end)
    spans = spans(frames)
    bytes = IO.iodata_to_binary(frames)

    wrong =
      for {{start, stop}, cut_in} <- Enum.with_index(spans),
          at <- (start + 1)..(stop - 1),
          result = Tombstones.parse(binary_part(bytes, 0, at)),
          result != {Enum.take(records, cut_in), %{damaged: [], torn: start}},
          do: {at - start, elem(result, 1)}

    assert wrong == [],
           "#{length(wrong)} cut points not torn ({bytes of the frame kept, findings}): " <>
             inspect(wrong, limit: 10)
  end

  # ---- Records -------------------------------------------------------------

  defp instance(id), do: %{members: Enum.take_random(@nodes, :rand.uniform(5)), id: id}

  defp key do
    case :rand.uniform(8) do
      1 -> Enum.random([:k, 1, {:user, 7}, %{"x" => [1.0, :y]}, "", <<0>>])
      2 -> bytes(40) <> @magic <> bytes(40) <> @magic
      3 -> for _ <- 1..:rand.uniform(200), into: <<>>, do: <<Enum.random(escapes())>>
      # A whole frame in the current format, of a record never written.
      4 -> bytes(10) <> frame(:victim, instance(@inner_ids)) <> bytes(10)
      # A record unescaped between a marker and an end byte: escaped by
      # the outer frame, it is a frame's bytes in the file.
      5 -> @magic <> Stores.encode_record(:victim, instance(@inner_ids + 1)) <> <<0xF8>>
      6 -> {bytes(30), [@magic, <<0xF8>>], frame(:victim, instance(@inner_ids + 2))}
      7 -> :binary.copy(<<0xF6>>, :rand.uniform(100))
      8 -> if :rand.uniform(8) == 1, do: bytes(100_000 + :rand.uniform(100_000)), else: bytes(300)
    end
  end

  # Every cut point of the file is parsed, a walk quadratic in its size:
  # with a key of 100 to 200 KB (one run in about sixteen) it took over a
  # minute, so the truncation test draws keys of a few KB.
  defp small_key do
    key = key()
    if :erlang.external_size(key) < 4_096, do: key, else: small_key()
  end

  defp escapes, do: [0xF6, 0xF7, 0xF8, 0, 1, 2, 3, 0x1A, ?V]

  defp bytes(max), do: :rand.bytes(:rand.uniform(max + 1) - 1)

  # Each frame's bytes [start, stop) in the file.
  defp spans(frames) do
    {spans, _end} =
      Enum.map_reduce(frames, 0, fn frame, at ->
        {{at, at + byte_size(frame)}, at + byte_size(frame)}
      end)

    spans
  end

  # ---- Damage --------------------------------------------------------------

  # One damage: `{description, damaged bytes}`.
  defp damage(bytes) do
    size = byte_size(bytes)
    at = :rand.uniform(size) - 1
    len = min(:rand.uniform(64), size - at)

    case :rand.uniform(8) do
      1 ->
        {:none, bytes}

      2 ->
        ats = for _ <- 1..:rand.uniform(3), do: :rand.uniform(size) - 1
        {{:flips, ats}, Enum.reduce(ats, bytes, &flip(&2, &1))}

      3 ->
        {{:truncate, at}, binary_part(bytes, 0, at)}

      4 ->
        {{:overwrite, at, len}, overwrite(bytes, at, :binary.copy(<<0>>, len))}

      5 ->
        {{:overwrite, at, len}, overwrite(bytes, at, :rand.bytes(len))}

      6 ->
        inserted = Enum.random([:rand.bytes(len), :binary.copy(<<0>>, len), @magic, <<0xF8>>])
        {{:insert, at, inserted}, binary_part(bytes, 0, at) <> inserted <> tail(bytes, at)}

      7 ->
        {{:delete, at, len}, binary_part(bytes, 0, at) <> tail(bytes, at + len)}

      8 ->
        {{:append, :zeros}, bytes <> :binary.copy(<<0>>, :rand.uniform(5000))}
    end
  end

  defp flip(bytes, at) do
    <<before::binary-size(at), byte, rest::binary>> = bytes
    <<before::binary, Bitwise.bxor(byte, Bitwise.bsl(1, :rand.uniform(8) - 1)), rest::binary>>
  end

  defp overwrite(bytes, at, new),
    do: binary_part(bytes, 0, at) <> new <> tail(bytes, at + byte_size(new))

  defp tail(bytes, at), do: binary_part(bytes, at, byte_size(bytes) - at)

  # The indices of the frames a damage reaches.
  defp touched(:none, _spans), do: []
  defp touched({:append, :zeros}, _spans), do: []
  defp touched({:flips, ats}, spans), do: Enum.flat_map(ats, &reached(spans, &1, &1 + 1))
  defp touched({:truncate, at}, spans), do: reached(spans, at, :infinity)
  defp touched({:overwrite, at, len}, spans), do: reached(spans, at, at + len)
  defp touched({:delete, at, len}, spans), do: reached(spans, at, at + len)
  # Bytes inserted between two frames reach neither.
  defp touched({:insert, at, _}, spans),
    do: for({{start, stop}, i} <- Enum.with_index(spans), start < at and at < stop, do: i)

  defp reached(spans, from, to) do
    for {{start, stop}, i} <- Enum.with_index(spans), start < to and from < stop, do: i
  end
end
