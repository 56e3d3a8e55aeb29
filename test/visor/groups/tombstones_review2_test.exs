defmodule Visor.Groups.TombstonesReview2Test do
  # Second review of the tombstones file (commit d5c4e33: frames started
  # with a magic and a size, damage was skipped to the next magic, only a
  # torn last frame cut off, damage copied aside once per offset). Each
  # test was a case where Visor.Groups.Tombstones' moduledoc or
  # docs/operations.md ("Keyed groups in disk mode") was not met; all
  # pass since frames are escaped and end with an end byte (no magic can
  # occur inside a record, whatever a key holds), and the frames builder
  # below writes today's format.
  # Not async: capture_log takes every process's log, another test's too.
  use ExUnit.Case, async: false

  import Visor.Test.TombstoneFiles
  alias Visor.Test.{Cluster, TombstoneFiles}

  alias Visor.Groups.Tombstones

  @moduletag :tmp_dir

  @one %{members: [:a@h, :b@h, :c@h], id: 1}
  @two %{members: [:a@h, :b@h, :c@h], id: 2}
  @magic TombstoneFiles.magic()

  # A record (md5, then body) of any members, names or not.
  defp record(key, members, id) do
    body =
      :erlang.term_to_binary(%{visor: 1, key: key, members: members, id: id}, minor_version: 1)

    :erlang.md5(body) <> body
  end

  # The size field is outside the md5. Rot that makes the LAST record's
  # size larger makes a whole, synced record (acknowledged) look like an
  # append a crash cut short: it is dropped with a warning that it was
  # never acknowledged, and the file is cut, destroying its bytes with no
  # copy aside. (The record is readable: its md5 matches the rest of the
  # file.) operations.md only drops a record "cut short (a crash during a
  # stop, never acknowledged)"; damage is "logged as an error ... copied".
  test "rot in the last record is damage, not a torn never-acknowledged append",
       %{tmp_dir: tmp} do
    :ok = Tombstones.record(tmp, :a, @one)
    at = byte_size(File.read!(file(tmp)))
    :ok = Tombstones.record(tmp, :b, @two)
    # The high bit of the first byte after :b's 8-byte magic (its size,
    # when frames had one; its md5 now).
    damaged = flip(tmp, at + 8, 0x80)

    {loaded, log} = load(tmp)

    refute log =~ "never acknowledged",
           "an acknowledged record reported as a torn append (loaded #{inspect(loaded)}):\n#{log}"

    assert File.read!(file(tmp)) == damaged or copies(tmp) != [],
           "the acknowledged record's bytes were cut off, with no copy aside " <>
             "(file now #{File.stat!(file(tmp)).size} of #{byte_size(damaged)} bytes)"
  end

  # parse/1 must never raise. decode_record/1 rescues only ArgumentError:
  # a record whose md5 matches but whose member name is longer than an
  # atom may be (255 characters) raises SystemLimitError in
  # String.to_atom/1.
  test "parse/1 does not raise on a record naming a member longer than an atom may be" do
    bytes = frame(record(:k, [String.duplicate("n", 300) <> "@h"], 1))

    result =
      try do
        Tombstones.parse(bytes)
      rescue
        e -> {:raised, e}
      end

    refute match?({:raised, _}, result), "parse/1 raised: #{inspect(result)}"
    assert {[], _findings} = result
  end

  # The same through a key, which is any term and so may be a binary a
  # user chose (a chat room's name): a key holding a whole frame like the
  # one above. A crash while its stop is appended (never acknowledged)
  # tears the outer frame after the inner one; the reader skips to the
  # inner magic, and load/1 raises: the host's init crashes at every
  # start, and none of the module's keyed groups on the node comes back.
  test "a crash during the stop of a key holding a frame does not make load/1 raise",
       %{tmp_dir: tmp} do
    :ok = Tombstones.record(tmp, :a, @one)
    good = File.read!(file(tmp))
    inner = frame(record(:x, [String.duplicate("n", 300) <> "@h"], 1))
    :ok = Tombstones.record(tmp, "room:" <> inner <> String.duplicate("-", 64), @two)
    # The crash: the last 20 bytes of the frame (its members) never written.
    whole = File.read!(file(tmp))
    File.write!(file(tmp), binary_part(whole, 0, byte_size(whole) - 20))

    result =
      try do
        load(tmp)
      rescue
        e -> {:raised, e}
      end

    refute match?({:raised, _}, result), "load/1 raised: #{inspect(result)}"
    assert {[{:a, @one}], _log} = result
    assert File.read!(file(tmp)) == good
  end

  # A torn frame read as a record: a key holding a whole frame (any
  # binary a user chose) whose stop is cut short by a crash makes the
  # reader find the inner frame, and load/1 returns its tombstone: a stop
  # nobody made, of another key. At the host's start, that key's store on
  # this node is then removed as a stopped instance's (Host.record_on_disk),
  # and its members are told to stop it. Never acknowledged, the outer
  # stop should just be dropped.
  test "a torn frame whose key holds a frame is not read as the inner frame's tombstone",
       %{tmp_dir: tmp} do
    :ok = Tombstones.record(tmp, :a, @one)
    good = File.read!(file(tmp))
    forged = frame(record(:victim, ["a@h", "b@h", "c@h"], 1_000_000))
    :ok = Tombstones.record(tmp, "room:" <> forged <> String.duplicate("-", 64), @two)
    whole = File.read!(file(tmp))
    File.write!(file(tmp), binary_part(whole, 0, byte_size(whole) - 20))

    {loaded, log} = load(tmp)

    refute {:victim, %{members: [:a@h, :b@h, :c@h], id: 1_000_000}} in loaded,
           "a tombstone nobody recorded was loaded: #{inspect(loaded)}\n#{log}"

    assert loaded == [{:a, @one}]
    assert File.read!(file(tmp)) == good
  end

  # A key that merely holds the magic (8 bytes any binary key may hold):
  # a crash during its stop leaves a torn last frame, which operations.md
  # says "loses that record, and is cut back to the records before it".
  # Instead the magic inside it makes it damage: logged as an error, the
  # whole file copied aside, and the file cut at the inner magic, leaving
  # half a frame in it.
  test "a torn last frame whose key holds the magic is cut back to the records before it",
       %{tmp_dir: tmp} do
    :ok = Tombstones.record(tmp, :a, @one)
    good = File.read!(file(tmp))
    :ok = Tombstones.record(tmp, "before " <> @magic <> " after, a room's name", @two)
    whole = File.read!(file(tmp))
    File.write!(file(tmp), binary_part(whole, 0, byte_size(whole) - 20))

    {loaded, log} = load(tmp)

    assert loaded == [{:a, @one}]
    refute log =~ "is damaged", "a torn append reported as damage:\n#{log}"
    assert copies(tmp) == [], "a torn append copied aside as damage: #{inspect(copies(tmp))}"

    assert File.read!(file(tmp)) == good,
           "not cut back to the records before it: #{File.stat!(file(tmp)).size} bytes, " <>
             "#{byte_size(good)} before the torn frame"
  end

  # One flipped bit in one record whose (binary) key holds the magic n
  # times reads as n + 1 damaged offsets (every inner magic is "damage"),
  # and load/1 copies the whole file once per offset: one rot costs
  # n + 1 copies of a file that grows without bound ("a few hundred
  # bytes a stop ... hundreds of MB").
  test "one damaged record makes one copy aside, whatever its key holds", %{tmp_dir: tmp} do
    key = for i <- 1..20, into: "", do: @magic <> "room #{i}"
    for i <- 1..50, do: :ok = Tombstones.record(tmp, {:filler, i}, @one)
    at = byte_size(File.read!(file(tmp)))
    :ok = Tombstones.record(tmp, key, @one)
    :ok = Tombstones.record(tmp, :after, @two)
    # A bit of the damaged record's md5 (after its magic and size).
    flip(tmp, at + 12, 1)

    {loaded, log} = load(tmp)
    assert {:after, @two} in loaded
    assert length(loaded) == 51

    total = copies(tmp) |> Enum.map(&File.stat!(&1).size) |> Enum.sum()

    assert length(copies(tmp)) <= 1,
           "one flipped bit made #{length(copies(tmp))} copies (#{total} bytes, the file " <>
             "#{File.stat!(file(tmp)).size}); log: #{String.slice(log, 0, 300)}"
  end

  # Past damage the reader tries a frame at every magic, each an md5 of
  # up to the rest of the file: time quadratic in the damage's length.
  # A key of 240 kB holding the magic 20,000 times, each followed by a
  # size of 200 kB, and one flipped bit in its record: parse/1 hashes
  # about 4 GB, seconds where a read of the file takes milliseconds (and
  # load/1 would copy the file aside 20,000 times, 4.8 GB). A host's init
  # on a file like it stalls for as long; a key ten times larger, a
  # hundred times longer.
  test "parse/1 of one damaged record holding many magics takes time linear in the file" do
    key = for _ <- 1..20_000, into: "", do: @magic <> <<200_000::32>>
    <<head::binary-size(12), byte, rest::binary>> = frame(record(key, ["a@h"], 1))
    bytes = <<head::binary, Bitwise.bxor(byte, 1), rest::binary>>

    {micros, {_found, findings}} = :timer.tc(fn -> Tombstones.parse(bytes) end)

    assert micros < 1_000_000,
           "parse/1 of #{byte_size(bytes)} bytes took #{div(micros, 1000)} ms, " <>
             "#{length(findings.damaged)} damaged offsets"
  end

  # A copy aside that fails part-way (the disk full: the very case that
  # leaves fragments) leaves a partial `tombstones.damaged-at-<byte>`.
  # "Never overwritten": once room is made, the next start sees the name
  # exists and makes no copy, so the operator's copy of the damage is a
  # truncated one for good, and later starts no longer say so.
  @tag :tmpfs
  test "a copy aside cut short by a full disk is made whole once there is room",
       %{tmp_dir: tmp} do
    dir = Path.join(tmp, "fs")
    Cluster.mount_tmpfs!(dir, "128k")

    for i <- 1..150, do: :ok = Tombstones.record(dir, {:k, i}, @one)
    at = byte_size(File.read!(file(dir)))
    :ok = Tombstones.record(dir, :damaged, @one)
    :ok = Tombstones.record(dir, :after, @two)
    damaged = flip(dir, at + 12, 1)
    assert byte_size(damaged) > 3 * 4096

    # Fill the disk, then free two pages: less than the copy needs.
    filler = Cluster.fill!(Path.join(dir, "filler"))
    {:ok, fd} = :file.open(filler, [:read, :write, :raw, :binary])
    {:ok, _} = :file.position(fd, File.stat!(filler).size - 2 * 4096)
    :ok = :file.truncate(fd)
    :ok = :file.close(fd)

    {_, log} = load(dir)
    assert log =~ "not #{file(dir)}.damaged-at-#{at}"

    File.rm!(filler)
    {loaded, _log} = load(dir)
    assert {:after, @two} in loaded

    assert File.read!(file(dir) <> ".damaged-at-#{at}") == damaged,
           "the copy aside stays cut short: #{File.stat!(file(dir) <> ".damaged-at-#{at}").size} " <>
             "of #{byte_size(damaged)} bytes"
  end
end
