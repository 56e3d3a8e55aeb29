defmodule Visor.NativeReconfigureTest do
  # The NIF's side of membership changes (docs/nif.md, "Membership
  # changes"): reconfigure/4 and its raw NIF refuse bad input with an
  # error, never a panic, and replicas driven in one process shrink, each
  # telling its owner the new epoch, and the one left out its removal.
  use ExUnit.Case, async: true

  import Bitwise
  import Visor.NativeTest.Harness

  alias Visor.Native

  defp id(index), do: <<index::little-unsigned-128>>

  test "reconfigure/4 and its raw NIF refuse bad input with an error term" do
    {:ok, e} = Native.start(opts(cluster_id(), 1, 0), self())
    on_exit(fn -> Native.stop(e) end)

    bad = [
      {:a, [id(0)], 10, :id},
      {-1, [id(0)], 10, :id},
      {1 <<< 64, [id(0)], 10, :id},
      {1, [id(0)], -5, :ticks},
      {1, [id(0)], "10", :ticks},
      {1, [], 10, :members},
      {1, :none, 10, :members},
      {1, [id(0) | id(1)], 10, :members},
      {1, [<<0::120>>], 10, :members},
      {1, [id(0), 7], 10, :members},
      {1, [id(0), id(0)], 10, :members},
      {1, Enum.map(0..6, &id/1), 10, :members}
    ]

    for {change, members, ticks, name} <- bad do
      assert {:error, {:bad_argument, ^name, why}} =
               Native.nif_reconfigure(e, change, members, ticks)

      assert is_binary(why)
      assert_raise ArgumentError, fn -> Native.reconfigure(e, change, members, ticks) end
    end

    # A long improper or cyclic-looking list is walked cell by cell, never
    # all at once: one far too long is refused at the limit.
    long = Enum.map(1..100_000, &id/1)
    assert {:error, {:bad_argument, :members, _}} = Native.nif_reconfigure(e, 1, long, 10)
    assert_raise ArgumentError, fn -> Native.nif_reconfigure(make_ref(), 1, [id(0)], 10) end
    assert_raise ArgumentError, ~r/engine/, fn -> Native.reconfigure(:nope, 1, [id(0)], 10) end

    # Nothing of the above reached the replica: the one good call is
    # answered, and nothing else.
    assert %{epoch: 0, role: :member, members: [{0, <<0::128>>, 0}]} = Native.status(e)
    assert :ok = Native.reconfigure(e, 42, [id(0)], 100)
    assert_receive {:visor_engine, ^e, events}, 2_000
    assert [{:reconfigured, 42, :unchanged}] = for({:reconfigured, _, _} = r <- events, do: r)
    refute_receive {:visor_engine, ^e, [_ | _]}, 200
  end

  test "start/2 starts a learner at a slot outside the genesis, and refuses bad learner options" do
    cluster = cluster_id()
    member = <<1::1, 0::127>>
    learner = %{member: member, joined: 1, learner: true}
    {:ok, e} = Native.start(opts(cluster, 3, 4, learner), self())
    on_exit(fn -> Native.stop(e) end)
    assert %{role: :learner, replica_index: 4, epoch: 0} = Native.status(e)

    bad = [
      {%{member: <<1::120>>, joined: 1, learner: true}, 4, :member},
      {%{member: member, joined: 0, learner: true}, 4, :joined},
      {%{member: member, joined: -1, learner: true}, 4, :joined},
      {%{member: member, joined: 1, learner: :yes}, 4, :learner},
      {%{joined: 1, learner: true}, 4, :member},
      {%{joined: 1}, 0, :joined},
      {%{member: member, joined: 1, learner: true, recover: true}, 4, :recover},
      # Memory mode has no store to say a member joined.
      {%{member: member, joined: 1}, 4, :learner},
      {%{member: member, joined: 1, learner: true}, 12, :replica_index}
    ]

    for {extra, index, key} <- bad do
      assert {:error, {:bad_option, ^key, why}} =
               Native.nif_start(opts(cluster, 3, index, extra), self())

      assert is_binary(why)
      assert_raise ArgumentError, fn -> Native.start(opts(cluster, 3, index, extra), self()) end
    end
  end

  test "three replicas shrink to two: each enters epoch 1, the one left out is removed" do
    c = start_cluster(3)
    on_exit(fn -> stop_cluster(c) end)
    client = client_id()
    {c, session} = register(c, 1, client)
    {c, op} = commit(c, 1, client, session, 1, "before")

    # Asked through a backup: remove replica 2.
    :ok = Native.reconfigure(c.engines[1], 7, [id(1), id(0)], 1_000)

    c =
      pump(c, fn c ->
        {:reconfigured, 7, :done} in c.membership[1] and
          Enum.any?(c.membership[2], &match?({:removed, 1}, &1))
      end)

    members = [{0, id(0), 0}, {1, id(1), 0}]

    for i <- [0, 1] do
      assert {:epoch, 1, ^members, :member, _} = List.keyfind(c.membership[i], :epoch, 0)
      assert %{epoch: 1, role: :member, members: ^members} = Native.status(c.engines[i])
    end

    assert {:epoch, 1, ^members, :leaving, _} = List.keyfind(c.membership[2], :epoch, 0)
    assert %{epoch: 1, role: :removed} = Native.status(c.engines[2])

    # The two go on committing; the removed one executes nothing more.
    executed = length(c.executes[2])
    {c, op2} = commit(c, 1, client, session, 2, "after")
    assert op2 > op
    c = pump(c, &all_executed?(%{&1 | executes: Map.delete(&1.executes, 2)}, op2))
    assert length(c.executes[2]) == executed

    # Asking again for what holds: unchanged. A removed replica answers
    # that it is not a member.
    :ok = Native.reconfigure(c.engines[0], 8, [id(0), id(1)], 1_000)
    :ok = Native.reconfigure(c.engines[2], 9, [id(0), id(1)], 1_000)

    c =
      pump(c, fn c ->
        {:reconfigured, 8, :unchanged} in c.membership[0] and
          {:reconfigured, 9, :not_member} in c.membership[2]
      end)

    assert c
  end

  test "four replicas drop their primary: the next member leads epoch 1 and commits" do
    c = start_cluster(4)
    on_exit(fn -> stop_cluster(c) end)
    client = client_id()
    {c, session} = register(c, 2, client)

    # Asked through replica 2; replica 0 leads view 0 and leaves.
    :ok = Native.reconfigure(c.engines[2], 1, [id(3), id(2), id(1)], 1_000)

    c =
      pump(c, fn c ->
        {:reconfigured, 1, :done} in c.membership[2] and
          Enum.any?(c.membership[0], &match?({:removed, 1}, &1))
      end)

    for i <- 1..3 do
      assert {:epoch, 1, members, :member, _} = List.keyfind(c.membership[i], :epoch, 0)
      assert Enum.map(members, &elem(&1, 0)) == [1, 2, 3]
    end

    {c, _op} = commit(c, 3, client, session, 1, "after")
    assert %{epoch: 1, is_primary: true, status: :normal} = Native.status(c.engines[1])
    assert %{role: :removed} = Native.status(c.engines[0])
  end
end
