defmodule Visor.NativeKnownTest do
  # start/2's `known:` (docs/nif.md, "Recovering in a later epoch"): a
  # memory-mode replica that lost its state after a change recovers in the
  # newest membership its host knows. Bad input is an error term from the
  # raw NIF (an ArgumentError from the wrapper), never a panic; and a
  # replica of a group that shrank, restarted with the new list, recovers
  # in it and serves.
  use ExUnit.Case, async: true

  import Bitwise
  import Visor.NativeTest.Harness

  alias Visor.Native
  alias Visor.Test.MembershipBytes

  defp id(index), do: <<index::little-unsigned-128>>

  test "start/2 refuses a bad known with an error term, never a panic" do
    cluster = cluster_id()
    added = <<1::1, 0::127>>
    members = [{0, id(0), 0}, {1, id(1), 0}, {3, added, 1}]
    # As a change's entry records them: incarnations, the added member's
    # learner life, and the change's name.
    listed = [{0, id(0), 0, 2, 0}, {1, id(1), 0, 0, 0}, {3, added, 1, 0, 77}]
    known = MembershipBytes.encode(1, listed, {id(0), 5})
    assert Native.decode_membership(known) == {:ok, {1, members}}
    good = %{recover: true, known: known}

    # A genesis member, and a member a change added (named by member/joined),
    # each in exactly that membership.
    {:ok, e} = Native.start(opts(cluster, 3, 1, good), self())
    on_exit(fn -> Native.stop(e) end)

    assert %{status: :recovering, epoch: 1, members: ^members, membership: ^known} =
             Native.status(e)

    {:ok, e2} =
      Native.start(opts(cluster, 3, 3, Map.merge(good, %{member: added, joined: 1})), self())

    on_exit(fn -> Native.stop(e2) end)

    assert %{status: :recovering, epoch: 1, replica_index: 3, membership: ^known} =
             Native.status(e2)

    enc = &MembershipBytes.encode/2
    max = Visor.Contract.limit(:membership_bytes_max)

    bad = [
      # Not bytes, or not exactly one membership's.
      {%{recover: true, known: :none}, 1, :known},
      {%{recover: true, known: {1, members}}, 1, :known},
      {%{recover: true, known: ""}, 1, :known},
      {%{recover: true, known: <<0>>}, 1, :known},
      {%{recover: true, known: binary_part(known, 0, byte_size(known) - 1)}, 1, :known},
      {%{recover: true, known: known <> <<0>>}, 1, :known},
      {%{recover: true, known: :binary.copy(<<255>>, max + 1)}, 1, :known},
      {%{recover: true, known: :binary.copy(<<255>>, max)}, 1, :known},
      {%{recover: true, known: :crypto.strong_rand_bytes(64)}, 1, :known},
      # A varint padded with a continuation byte: decodes, but is not the
      # membership's encoding.
      {%{recover: true, known: <<0x81, 0x00>> <> binary_part(known, 1, byte_size(known) - 1)}, 1,
       :known},
      # Not a well-formed list, or not one after the genesis.
      {%{recover: true, known: enc.(1, [])}, 1, :known},
      {%{recover: true, known: enc.(0, members)}, 1, :known},
      {%{recover: true, known: enc.(1 <<< 63, members)}, 1, :known},
      {%{recover: true, known: enc.(1, [{12, id(0), 0}, {1, id(1), 0}])}, 1, :known},
      {%{recover: true, known: enc.(1, [{0, id(0), 2}, {1, id(1), 0}])}, 1, :known},
      {%{recover: true, known: enc.(1, [{0, id(0), 0}, {0, id(1), 0}])}, 1, :known},
      {%{recover: true, known: enc.(1, [{0, id(0), 0}, {1, id(0), 0}])}, 1, :known},
      {%{recover: true, known: enc.(1, Enum.map(0..6, &{&1, id(&1), 0}))}, 1, :known},
      {%{recover: true, known: enc.(1, [{0, id(0), 0, 1 <<< 63, 0}, {1, id(1), 0}])}, 1, :known},
      # Another cluster's: a genesis member this genesis of 3 has not.
      {%{recover: true, known: enc.(1, [{0, id(0), 0}, {1, id(1), 0}, {4, id(4), 0}])}, 1,
       :known},
      {%{recover: true, known: enc.(1, [{0, id(5), 0}, {1, id(1), 0}])}, 1, :known},
      # Only a recovering replica, in memory mode, and never a learner.
      {%{known: known}, 1, :known},
      {%{recover: false, known: known}, 1, :known},
      {%{recover: true, known: known, data_dir: "/nonexistent", group: "g"}, 1, :known},
      {%{recover: true, known: known, member: added, joined: 1, learner: true}, 3, :known},
      # It must list this replica at its slot, as the member it is.
      {%{recover: true, known: known}, 2, :known},
      {%{recover: true, known: enc.(1, [{0, id(0), 0}, {3, added, 1}])}, 1, :known},
      {%{recover: true, known: known, member: added, joined: 2}, 3, :known},
      {%{recover: true, known: known, member: id(7), joined: 1}, 3, :known},
      {%{recover: true, known: known}, 3, :replica_index},
      # A member a change added needs known to recover without a store.
      {%{recover: true, member: added, joined: 1}, 3, :recover}
    ]

    for {extra, index, key} <- bad do
      assert {:error, {:bad_option, ^key, why}} =
               Native.nif_start(opts(cluster, 3, index, extra), self()),
             "#{inspect(extra, limit: 5)} at #{index}"

      assert is_binary(why)
      assert_raise ArgumentError, fn -> Native.start(opts(cluster, 3, index, extra), self()) end
    end

    # decode_membership/1 takes any bytes: an error, never a panic.
    for bytes <- ["", <<0>>, known <> <<0>>, :binary.copy(<<255>>, 4096), enc.(1, [])] do
      assert {:error, why} = Native.decode_membership(bytes)
      assert is_binary(why)
    end

    assert {:ok, {0, [{0, _, 0}]}} = Native.decode_membership(enc.(0, [{0, id(0), 0}]))
  end

  test "a replica of a group that shrank, restarted without its state in the new list, recovers there and serves" do
    cluster = cluster_id()
    c = start_group(cluster, 4, fn _ -> %{} end)
    on_exit(fn -> stop_cluster(c) end)
    client = client_id()
    {c, session} = register(c, 0, client)
    {c, _op} = commit(c, 0, client, session, 1, "before")

    # Replica 3 leaves: epoch 1 is {0, 1, 2}.
    :ok = Native.reconfigure(c.engines[0], 1, [id(0), id(1), id(2)], 1_000)

    # (A quorum of the new list entering is enough for 3's removal: wait
    # for all three.)
    c =
      pump(c, fn c ->
        {:reconfigured, 1, :done} in c.membership[0] and
          Enum.any?(c.membership[3], &match?({:removed, 1}, &1)) and
          Enum.all?(0..2, &List.keymember?(c.membership[&1], :epoch, 0))
      end)

    assert {:epoch, 1, members, :member, known} = List.keyfind(c.membership[2], :epoch, 0)

    # Every member has the same list, to the byte: the change's entry
    # records its name and the members' incarnations, which the readable
    # list leaves out (a copy rebuilt from that would differ).
    for i <- 0..2 do
      assert {:epoch, 1, ^members, :member, ^known} = List.keyfind(c.membership[i], :epoch, 0)
      assert %{membership: ^known} = Native.status(c.engines[i])
    end

    refute known == MembershipBytes.encode(1, members)

    # Replica 2 loses its state; it comes back knowing epoch 1's list.
    :ok = Native.stop(c.engines[2])
    {:ok, e} = Native.start(opts(cluster, 4, 2, %{recover: true, known: known}), self())

    c = %{
      c
      | engines: Map.put(c.engines, 2, e),
        index_of: c.index_of |> Map.delete(c.engines[2]) |> Map.put(e, 2),
        executes: Map.put(c.executes, 2, [])
    }

    assert %{status: :recovering, epoch: 1} = Native.status(e)
    c = pump(c, fn _ -> Native.status(e).status == :normal end)
    # Recovered in exactly the others' membership.
    assert %{epoch: 1, role: :member, members: ^members, membership: ^known} = Native.status(e)

    # It takes part: with replica 1 gone, 0 and 2 still commit.
    :ok = Native.stop(c.engines[1])
    {c, op} = commit(c, 0, client, session, 2, "after")
    assert pump(c, &Enum.any?(&1.executes[2], fn {:execute, o, _, _, _} -> o == op end))
  end
end
