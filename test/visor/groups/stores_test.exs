defmodule Visor.Groups.StoresTest do
  # The directory of a module's keyed groups in disk mode, without nodes:
  # what a start may claim, what a restarted host finds, what a stop
  # removes (the cluster tests: test/visor/keyed_disk_test.exs).
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog

  alias Visor.Groups.Stores
  alias Visor.Options

  @moduletag :tmp_dir

  @a %{members: [:a@h, :b@h, :c@h], id: 1}
  @b %{members: [:a@h, :b@h, :c@h], id: 2}
  # What this node stopped of the key (Visor.Lifetime.tombstones/1).
  @none %{}
  @a_stopped %{[:a@h, :b@h, :c@h] => 1}

  defp dir(tmp, key), do: Options.keyed_store_dir(tmp, key)

  test "a claimed directory is found again with its key and instance; another instance of the key, or another key, is refused and left as it is",
       %{tmp_dir: tmp} do
    key = {:user, 1.0, %{"x" => [1, :two]}}
    assert Stores.claim(dir(tmp, key), key, @a, @none) == :ok
    assert Stores.claim(dir(tmp, key), key, @a, @none) == :ok
    assert Stores.scan(tmp) == [{key, @a}]

    # Another instance of the key, which this node did not stop.
    store = Path.join(dir(tmp, key), "superblock")
    File.write!(store, "the store")
    assert {:error, {:store_taken, _, why}} = Stores.claim(dir(tmp, key), key, @b, @none)
    assert why =~ "instance 1"
    assert File.read!(store) == "the store"

    # Another key's record in this key's directory (a hash collision, or
    # a directory moved by hand).
    other = dir(tmp, :other)
    File.cp_r!(dir(tmp, key), other)
    assert {:error, {:store_taken, ^other, why}} = Stores.claim(other, :other, @a, @none)
    assert why =~ inspect(key)

    assert capture_log(fn -> assert Stores.scan(tmp) == [{key, @a}] end) =~
             "whose directory is another"
  end

  test "a directory of a stopped instance, or without a record, is cleared for the new one",
       %{tmp_dir: tmp} do
    assert Stores.claim(dir(tmp, :k), :k, @a, @none) == :ok
    File.write!(Path.join(dir(tmp, :k), "superblock"), "the old store")
    assert Stores.claim(dir(tmp, :k), :k, @b, @a_stopped) == :ok
    assert File.ls!(dir(tmp, :k)) == ["keyed_group"]
    assert Stores.scan(tmp) == [{:k, @b}]

    # A stop of the same generation with other members is not this one's.
    File.write!(Path.join(dir(tmp, :k), "superblock"), "a live store")
    other_members = %{[:a@h, :b@h, :d@h] => 2}

    assert {:error, {:store_taken, _, _}} =
             Stores.claim(dir(tmp, :k), :k, %{@a | id: 3}, other_members)

    assert File.read!(Path.join(dir(tmp, :k), "superblock")) == "a live store"

    # A removal cut short after the record went.
    File.rm!(Path.join(dir(tmp, :k), "keyed_group"))
    File.write!(Path.join(dir(tmp, :k), "wal.a"), "left over")
    assert capture_log(fn -> assert Stores.scan(tmp) == [] end) =~ "no record"
    assert Stores.claim(dir(tmp, :k), :k, @a, @none) == :ok
    assert File.ls!(dir(tmp, :k)) == ["keyed_group"]

    assert Stores.remove(dir(tmp, :k)) == :ok
    refute File.exists?(dir(tmp, :k))
    assert Stores.scan(tmp) == []
  end

  test "a damaged record is skipped by a scan and refused by a claim, and its directory left as it is",
       %{tmp_dir: tmp} do
    for key <- [:kept, :flipped, :truncated],
        do: :ok = Stores.claim(dir(tmp, key), key, @a, @none)

    flipped = Path.join(dir(tmp, :flipped), "keyed_group")
    <<head::binary-30, byte, rest::binary>> = File.read!(flipped)
    File.write!(flipped, <<head::binary, Bitwise.bxor(byte, 1), rest::binary>>)
    truncated = Path.join(dir(tmp, :truncated), "keyed_group")
    File.write!(truncated, binary_part(File.read!(truncated), 0, 10))

    log = capture_log(fn -> assert Stores.scan(tmp) == [{:kept, @a}] end)
    assert log =~ "damaged"

    assert {:error, {:store_taken, _, "its record is damaged"}} =
             Stores.claim(dir(tmp, :flipped), :flipped, @a, @none)

    assert File.exists?(flipped)
  end
end
