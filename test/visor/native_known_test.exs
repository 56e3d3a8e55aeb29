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

  defp id(index), do: <<index::little-unsigned-128>>

  test "start/2 refuses a bad known with an error term, never a panic" do
    cluster = cluster_id()
    added = <<1::1, 0::127>>
    members = [{0, id(0), 0}, {1, id(1), 0}, {3, added, 1}]
    good = %{recover: true, known: {1, members}}

    # A genesis member, and a member a change added (named by member/joined).
    {:ok, e} = Native.start(opts(cluster, 3, 1, good), self())
    on_exit(fn -> Native.stop(e) end)
    assert %{status: :recovering, epoch: 1, members: ^members} = Native.status(e)

    {:ok, e2} =
      Native.start(opts(cluster, 3, 3, Map.merge(good, %{member: added, joined: 1})), self())

    on_exit(fn -> Native.stop(e2) end)
    assert %{status: :recovering, epoch: 1, replica_index: 3} = Native.status(e2)

    long = Enum.map(0..100_000, &{rem(&1, 12), id(&1), 0})

    bad = [
      {%{recover: true, known: :none}, 1, :known},
      {%{recover: true, known: {1, members, 0}}, 1, :known},
      {%{recover: true, known: {0, members}}, 1, :known},
      {%{recover: true, known: {-1, members}}, 1, :known},
      {%{recover: true, known: {1 <<< 63, members}}, 1, :known},
      {%{recover: true, known: {1, []}}, 1, :known},
      {%{recover: true, known: {1, [{0, id(0), 0} | {1, id(1), 0}]}}, 1, :known},
      {%{recover: true, known: {1, long}}, 1, :known},
      {%{recover: true, known: {1, [{0, id(0)}, {1, id(1), 0}]}}, 1, :known},
      {%{recover: true, known: {1, [{12, id(0), 0}, {1, id(1), 0}]}}, 1, :known},
      {%{recover: true, known: {1, [{0, <<0::120>>, 0}, {1, id(1), 0}]}}, 1, :known},
      {%{recover: true, known: {1, [{0, id(0), 2}, {1, id(1), 0}]}}, 1, :known},
      {%{recover: true, known: {1, [{0, id(0), 0}, {0, id(1), 0}]}}, 1, :known},
      {%{recover: true, known: {1, [{0, id(0), 0}, {1, id(0), 0}]}}, 1, :known},
      {%{recover: true, known: {1, Enum.map(0..6, &{&1, id(&1), 0})}}, 1, :known},
      # Only a recovering replica, in memory mode, and never a learner.
      {%{known: {1, members}}, 1, :known},
      {%{recover: false, known: {1, members}}, 1, :known},
      {%{recover: true, known: {1, members}, data_dir: "/nonexistent", group: "g"}, 1, :known},
      {%{recover: true, known: {1, members}, member: added, joined: 1, learner: true}, 3, :known},
      # It must list this replica at its slot, as the member it is.
      {%{recover: true, known: {1, members}}, 2, :known},
      {%{recover: true, known: {1, members}, member: added, joined: 2}, 3, :known},
      {%{recover: true, known: {1, members}, member: id(7), joined: 1}, 3, :known},
      {%{recover: true, known: {1, members}}, 3, :replica_index},
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

    c =
      pump(c, fn c ->
        {:reconfigured, 1, :done} in c.membership[0] and
          Enum.any?(c.membership[3], &match?({:removed, 1}, &1))
      end)

    assert {:epoch, 1, members, :member} = List.keyfind(c.membership[2], :epoch, 0)

    # Replica 2 loses its state; it comes back knowing epoch 1's list.
    :ok = Native.stop(c.engines[2])
    {:ok, e} = Native.start(opts(cluster, 4, 2, %{recover: true, known: {1, members}}), self())

    c = %{
      c
      | engines: Map.put(c.engines, 2, e),
        index_of: c.index_of |> Map.delete(c.engines[2]) |> Map.put(e, 2),
        executes: Map.put(c.executes, 2, [])
    }

    assert %{status: :recovering, epoch: 1} = Native.status(e)
    c = pump(c, fn _ -> Native.status(e).status == :normal end)
    assert %{epoch: 1, role: :member, members: ^members} = Native.status(e)

    # It takes part: with replica 1 gone, 0 and 2 still commit.
    :ok = Native.stop(c.engines[1])
    {c, op} = commit(c, 0, client, session, 2, "after")
    assert pump(c, &Enum.any?(&1.executes[2], fn {:execute, o, _, _, _} -> o == op end))
  end
end
