defmodule Visor.Groups.TombstonesTest do
  # The tombstones file of a module's keyed groups in disk mode, without
  # nodes: what a stop appends, what a restarted host loads, and what it
  # does with a file cut short or damaged (the cluster test: "the nodes
  # that stopped a group remember it across a VM restart" in
  # test/visor/keyed_disk_test.exs).
  # Not async: capture_log takes every process's log, another test's too.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Visor.Groups.{Stores, Tombstones}

  @moduletag :tmp_dir

  @one %{members: [:a@h, :b@h, :c@h], id: 1}
  @two %{members: [:a@h, :b@h, :c@h], id: 2}
  @other %{members: [:a@h, :b@h, :d@h], id: 1}

  defp file(tmp), do: Path.join(tmp, "tombstones")

  test "every stop recorded is loaded again, in order, keys of any term included", %{
    tmp_dir: tmp
  } do
    assert Tombstones.load(tmp) == []
    key = {:user, %{"x" => [1.0, :y]}}
    :ok = Tombstones.record(tmp, key, @one)
    :ok = Tombstones.record(tmp, "k", @other)
    :ok = Tombstones.record(tmp, key, @two)
    assert Tombstones.load(tmp) == [{key, @one}, {"k", @other}, {key, @two}]
    # Loading changes nothing.
    assert Tombstones.load(tmp) == [{key, @one}, {"k", @other}, {key, @two}]
  end

  test "a torn last record (cut short, or zeros) is dropped and cut off, so the next one is read",
       %{tmp_dir: tmp} do
    :ok = Tombstones.record(tmp, :a, @one)
    :ok = Tombstones.record(tmp, :b, @one)
    whole = File.read!(file(tmp))

    for torn <- [binary_part(whole, 0, byte_size(whole) - 3), whole <> <<0::8*40>>] do
      File.write!(file(tmp), torn)

      assert capture_log(fn -> assert [{:a, @one} | _] = Tombstones.load(tmp) end) =~
               "cut short"

      :ok = Tombstones.record(tmp, :c, @two)
      assert List.last(Tombstones.load(tmp)) == {:c, @two}
      File.write!(file(tmp), whole)
    end
  end

  test "a damaged record is logged and skipped, the records around it kept, the file copied aside once, and later stops read",
       %{tmp_dir: tmp} do
    :ok = Tombstones.record(tmp, :a, @one)
    first = File.read!(file(tmp))
    :ok = Tombstones.record(tmp, :b, @one)
    :ok = Tombstones.record(tmp, :c, @one)
    damaged = File.read!(file(tmp))
    at = byte_size(first) + 10

    damaged =
      binary_part(damaged, 0, at) <>
        "X" <> binary_part(damaged, at + 1, byte_size(damaged) - at - 1)

    File.write!(file(tmp), damaged)

    log = capture_log(fn -> assert Tombstones.load(tmp) == [{:a, @one}, {:c, @one}] end)
    assert log =~ "damaged at byte(s) #{byte_size(first)}"
    assert log =~ "2 tombstones read"
    assert File.read!(file(tmp) <> ".damaged-at-#{byte_size(first)}") == damaged

    # The file is left as it is (the records after the damage were
    # acknowledged): later stops follow, and are read; the same damage
    # found again is copied no more.
    :ok = Tombstones.record(tmp, :d, @two)

    log =
      capture_log(fn -> assert Tombstones.load(tmp) == [{:a, @one}, {:c, @one}, {:d, @two}] end)

    refute log =~ "is copied to"
    assert [_one] = Path.wildcard(file(tmp) <> ".damaged*")
  end

  test "a file that cannot be read is logged, and nothing is loaded", %{tmp_dir: tmp} do
    File.mkdir_p!(file(tmp))
    assert capture_log(fn -> assert Tombstones.load(tmp) == [] end) =~ "cannot read"

    assert capture_log(fn -> assert Tombstones.record(tmp, :a, @one) == :ok end) =~
             "cannot record"
  end

  test "a store scan skips the tombstones file", %{tmp_dir: tmp} do
    :ok = Tombstones.record(tmp, :a, @one)
    :ok = Stores.claim(Visor.Options.keyed_store_dir(tmp, :b), :b, @two, %{})
    refute capture_log(fn -> assert Stores.scan(tmp) == [{:b, @two}] end) =~ "tombstones"
  end
end
