defmodule Visor.Formation.RestoreEpochTest do
  # Visor.Formation.Restore after membership changes (docs/operations.md,
  # "Membership changes", disk mode): a store names its node by its member
  # id (its place in the list the group was formed with), whatever its
  # epoch or role; a member of a later epoch and a node left out restart
  # from it (the engine says where they stand), a node a change added
  # restarts as the member its store records, and a store still belongs
  # to one node only.
  use ExUnit.Case, async: true

  alias Visor.Formation.Restore
  alias Visor.Options

  @nodes [:a@re, :b@re, :c@re, :d@re, :e@re]
  @settings %{client_table_max: 4096, checkpoint_interval: 10_000, checkpoint_chunk_bytes: 1}

  defp probe(node, overrides) do
    index = Enum.find_index(@nodes, &(&1 == node))

    Map.merge(
      %{
        group: "g",
        replica: index,
        member: <<index::little-unsigned-128>>,
        joined: 0,
        role: :member,
        epoch: 0,
        cluster: Options.cluster_id(__MODULE__, @nodes, @settings),
        meta: Restore.store_meta(@nodes, @settings),
        view: 0,
        commit: 0
      },
      overrides
    )
  end

  defp expected(node) do
    %{
      group: "g",
      node: node,
      dir: "/d",
      settings: @settings,
      membership: {:nodes, @nodes, Options.cluster_id(__MODULE__, @nodes, @settings)}
    }
  end

  test "a member of a later epoch restarts from its store, as the member it records" do
    assert {:ok, %{replica: 1, epoch: 2, role: :member}} =
             Restore.check({:ok, probe(:b@re, %{epoch: 2})}, expected(:b@re))
  end

  test "a store left out of its epoch restarts too (its slot there is nil): leaving or removed" do
    for role <- [:leaving, :removed] do
      info = probe(:e@re, %{epoch: 1, role: role, replica: nil})

      assert {:ok, %{replica: 4, epoch: 1, role: ^role}} =
               Restore.check({:ok, info}, expected(:e@re))

      # Its member id names e@re: no other node takes it.
      assert {:error, message} = Restore.check({:ok, info}, expected(:d@re))
      assert message =~ "not to this node"
    end
  end

  test "a genesis member's store whose slot and member id disagree is refused" do
    assert {:error, _} = Restore.check({:ok, probe(:c@re, %{replica: 3})}, expected(:c@re))
  end

  test "a node a change added restarts as the member its store records; a learner's store makes a spare" do
    id = Visor.MemberId.hashed(:f@re)
    added = probe(:a@re, %{member: id, joined: 2, epoch: 2, replica: 5})

    assert {:ok, %{replica: 5, joining: %{slot: 5, member: ^id, joined: 2}}} =
             Restore.check({:ok, added}, expected(:f@re))

    assert {:error, message} = Restore.check({:ok, added}, expected(:a@re))
    assert message =~ "not to this node"

    # An earlier learner's store: a spare (its store is moved aside when
    # it is asked to learn again); on a node of the genesis list, refused.
    assert :empty = Restore.check({:ok, %{added | role: :learner}}, expected(:f@re))

    again = probe(:c@re, %{joined: 3, epoch: 3, role: :learner, replica: 2})
    assert {:error, message} = Restore.check({:ok, again}, expected(:c@re))
    assert message =~ "learner"

    # A genesis node added again restarts as its new membership.
    assert {:ok, %{replica: 4, joining: %{slot: 4, joined: 3}}} =
             Restore.check({:ok, %{again | role: :member, replica: 4}}, expected(:c@re))

    # One that left the list since cannot restart from its store.
    assert {:error, _} = Restore.check({:ok, %{added | role: :removed}}, expected(:f@re))
  end
end
