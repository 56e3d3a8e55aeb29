defmodule Visor.Groups.TombstonesReviewTest do
  # Review of the tombstones file's framing and repair (commit f14f07e):
  # cases where a stop that was acknowledged (its record appended and
  # synced) is not read back when the host starts, or damage is taken for
  # a torn last record (dropped with a warning that says it was never
  # acknowledged, and no copy aside), contrary to Visor.Groups.Tombstones'
  # moduledoc and docs/operations.md, "Keyed groups in disk mode".
  # Not async: capture_log takes every process's log, another test's too.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Visor.Groups.{Stores, Tombstones}
  alias Visor.Test.Cluster

  @moduletag :tmp_dir

  @one %{members: [:a@h, :b@h, :c@h], id: 1}
  @two %{members: [:a@h, :b@h, :c@h], id: 2}

  defp file(tmp), do: Path.join(tmp, "tombstones")

  # The size field is outside the md5: a damaged size larger than what
  # follows reads as a record cut short, so every later (acknowledged)
  # record is dropped as "torn", with no copy aside.
  test "a damaged size field in a record with others after it is damage, not a torn tail",
       %{tmp_dir: tmp} do
    :ok = Tombstones.record(tmp, :a, @one)
    first = byte_size(File.read!(file(tmp)))
    :ok = Tombstones.record(tmp, :b, @one)
    :ok = Tombstones.record(tmp, :c, @two)
    whole = File.read!(file(tmp))
    # One bit flipped in the high byte of :b's size (after its 8-byte magic).
    <<before::binary-size(first + 8), high, after_high::binary>> = whole
    damaged = <<before::binary, Bitwise.bxor(high, 0x80), after_high::binary>>
    File.write!(file(tmp), damaged)

    log = capture_log(fn -> send(self(), {:loaded, Tombstones.load(tmp)}) end)
    # The damage is skipped: the record after it is read.
    assert_received {:loaded, [{:a, @one}, {:c, @two}]}
    refute log =~ "never acknowledged", "damage reported as a torn tail:\n#{log}"
    assert log =~ "damaged at byte(s) #{first}"
    assert File.read!(file(tmp) <> ".damaged-at-#{first}") == damaged
  end

  # A complete last record whose md5 fails was synced whole (its stop
  # acknowledged): it is damage, not an append cut short.
  test "a whole last record that fails its md5 is damage, copied aside, not dropped as torn",
       %{tmp_dir: tmp} do
    :ok = Tombstones.record(tmp, :a, @one)
    :ok = Tombstones.record(tmp, :b, @two)
    whole = File.read!(file(tmp))
    at = byte_size(whole) - 5
    <<before::binary-size(at), byte, rest::binary>> = whole
    damaged = <<before::binary, Bitwise.bxor(byte, 1), rest::binary>>
    File.write!(file(tmp), damaged)

    log = capture_log(fn -> send(self(), {:loaded, Tombstones.load(tmp)}) end)
    assert_received {:loaded, [{:a, @one}]}
    refute log =~ "never acknowledged", "a whole synced record reported as torn:\n#{log}"
    assert [_copy] = Path.wildcard(file(tmp) <> ".damaged-at-*")
  end

  # An append that fails part-way (ENOSPC, EDQUOT, EIO: write(2) writes
  # what it can, then fails) leaves part of a record; record/3 logs the
  # failure and the stop goes on. Nothing cuts it off until the next
  # host start, so every later stop is appended after the fragment, and
  # is acknowledged (record/3 returns :ok, synced), but the next load
  # reads from the fragment's size field into those records and loses
  # them all.
  test "a stop recorded after a failed, partial append is read back", %{tmp_dir: tmp} do
    :ok = Tombstones.record(tmp, :a, @one)
    failed = Stores.encode_record(:b, @one)
    fragment = binary_part(<<byte_size(failed)::32, failed::binary>>, 0, 20)
    :ok = File.write!(file(tmp), fragment, [:append])
    # The disk has room again: the next stop is appended and synced.
    assert :ok = Tombstones.record(tmp, :c, @two)

    log = capture_log(fn -> send(self(), {:loaded, Tombstones.load(tmp)}) end)
    assert_received {:loaded, loaded}
    assert {:c, @two} in loaded, "acknowledged stop lost: loaded #{inspect(loaded)}\n#{log}"
  end

  # tombstones.damaged is the operator's only record of the stops a
  # damage lost (docs/operations.md: "copied to tombstones.damaged"); a
  # second damage, before the operator looked, overwrites the first copy.
  test "a second damage keeps the first damaged copy", %{tmp_dir: tmp} do
    # Flips a byte in the md5 of the next to last of `keys`' records.
    damage = fn keys ->
      {early, [damaged, last]} = Enum.split(keys, -2)
      for key <- early, do: :ok = Tombstones.record(tmp, key, @one)
      at = byte_size(File.read!(file(tmp))) + 4
      :ok = Tombstones.record(tmp, damaged, @one)
      :ok = Tombstones.record(tmp, last, @one)
      <<before::binary-size(at), byte, rest::binary>> = File.read!(file(tmp))
      File.write!(file(tmp), <<before::binary, Bitwise.bxor(byte, 1), rest::binary>>)
      File.read!(file(tmp))
    end

    first = damage.([:a, :b, :lost_first, :after_first])
    capture_log(fn -> Tombstones.load(tmp) end)
    second = damage.([:c, :lost_second, :after_second])
    capture_log(fn -> Tombstones.load(tmp) end)

    copies =
      for name <- File.ls!(tmp),
          String.starts_with?(name, "tombstones."),
          do: File.read!(Path.join(tmp, name))

    assert first in copies, "the first damaged copy is gone; copies: #{length(copies)}"
    assert second in copies
  end

  # The same on a real full disk (a tmpfs, as test/visor/disk_full_test.exs;
  # needs root, excluded with :tmpfs where mounting is not allowed): the
  # file ends just short of a page, the disk is full, and a stop's append
  # writes what fits in that page before ENOSPC. record/3 logs it; room is
  # made; the next stop is appended, synced and acknowledged, and is lost
  # at the next load.
  @tag :tmpfs
  test "on a full disk, a stop's failed append makes the next acknowledged stop unreadable",
       %{tmp_dir: tmp} do
    dir = Path.join(tmp, "fs")
    Cluster.mount_tmpfs!(dir, "64k")

    # Records until the file is within one record of a page's end.
    Stream.iterate(0, &(&1 + 1))
    |> Enum.find(fn i ->
      :ok = Tombstones.record(dir, {:k, i}, @one)
      rem(File.stat!(file(dir)).size, 4096) > 4096 - 90
    end)

    filler = Cluster.fill!(Path.join(dir, "filler"))
    before = File.stat!(file(dir)).size

    assert capture_log(fn -> :ok = Tombstones.record(dir, :failed, @one) end) =~ "cannot record"
    # The failed append wrote part of a frame, and cut it off again.
    assert File.stat!(file(dir)).size == before

    File.rm!(filler)
    assert :ok = Tombstones.record(dir, :acknowledged, @two)

    log = capture_log(fn -> send(self(), {:loaded, Tombstones.load(dir)}) end)
    assert_received {:loaded, loaded}

    assert {:acknowledged, @two} in loaded,
           "acknowledged stop lost (#{length(loaded)} read, the file #{before} bytes before the failed append):\n#{log}"
  end
end
