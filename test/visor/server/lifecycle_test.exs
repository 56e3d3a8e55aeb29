defmodule Visor.Server.LifecycleTest do
  # When the engine starts, with what, and what its failures mean.
  use ExUnit.Case, async: true

  alias Visor.{Formation, Options}
  alias Visor.Server.Lifecycle
  alias Visor.Test.{Counter, MembershipBytes}

  @nodes [:a@h, :b@h, :c@h]
  @member {:member, %{cluster: <<7::128>>, members: @nodes, recover: false}}
  # Engine errors as the NIF reports them (Visor.Native, "Errors").
  @corrupt {:corrupt_store, "/tmp/visor-test", "the superblock is damaged"}
  @bug {:engine_bug, "deliberate crash (test hook)"}

  defp lifecycle(opts \\ []) do
    config = Options.validate!(Counter, [nodes: @nodes] ++ opts)
    Lifecycle.new(config, :b@h, make_ref())
  end

  defp disk, do: lifecycle(storage: :disk, data_dir: "/data")

  test "a member decision starts the engine as this node's replica" do
    lc = lifecycle()
    assert Lifecycle.refusal(lc) == nil
    assert {lc, [{:start_engine, opts}]} = Lifecycle.formation(lc, @member)

    assert %{cluster: <<7::128>>, replica_count: 3, replica_index: 1, recover: false} = opts
    assert opts.batch_max_bytes == 1_048_576
    refute Map.has_key?(opts, :data_dir)
    assert lc.phase == :running
    assert Lifecycle.member(lc, 2) == :c@h

    # Only the first decision counts.
    assert Lifecycle.formation(lc, :spare) == {lc, []}
  end

  test "disk mode: the store is data_dir/<group>, and a new one records the members" do
    {_lc, [{:start_engine, opts}]} = Lifecycle.formation(disk(), @member)
    assert opts.data_dir == "/data/Elixir.Visor.Test.Counter"
    assert opts.group == "Elixir.Visor.Test.Counter"
    assert opts.meta == Formation.store_meta(@nodes, disk().config.settings)
  end

  test "a rejoining replica that still recovers after 10 s says why it may never finish" do
    lc = lifecycle()
    tag = lc.tag
    recover = {:member, %{cluster: cluster(), members: @nodes, recover: true}}

    assert {lc,
            [{:start_engine, %{recover: true}}, {:after, 10_000, {:visor_still_recovering, ^tag}}]} =
             Lifecycle.formation(lc, recover)

    assert [{:log, :error, message}] = Lifecycle.still_recovering(lc, :recovering)
    assert message =~ "replica 1 is still recovering"
    assert Lifecycle.still_recovering(lc, :normal) == []
  end

  test "a spare or a refused node answers every caller with why" do
    {lc, effects} = Lifecycle.formation(disk(), :spare)
    assert effects == [{:fail_callers, :spare}]
    assert Lifecycle.refusal(lc) == :spare

    # Memory mode: a spare also asks the other nodes for the newest
    # membership, now and every 2 s (it may be a member that lost its
    # memory with its node).
    {lc, effects} = Lifecycle.formation(lifecycle(), :spare)
    tag = lc.tag

    assert [
             {:fail_callers, :spare},
             :ask_membership,
             {:after, 2_000, {:visor_ask_membership, ^tag}}
           ] = effects

    assert Lifecycle.refusal(lc) == :spare

    mismatch = {:setting_mismatch, :client_table_max, 1, 2}
    {lc, effects} = Lifecycle.formation(lifecycle(), {:refused, mismatch})
    assert effects == [{:fail_callers, mismatch}]
    assert Lifecycle.refusal(lc) == mismatch
  end

  test "a store still locked by the previous engine is retried, up to 50 starts" do
    {lc, _} = Lifecycle.formation(disk(), @member)
    locked = {:store_in_use, "/tmp/visor-test"}

    assert {retry, [:discard_engine, {:after, 100, :visor_retry_start}]} =
             Lifecycle.engine_down(lc, locked, 1)

    assert retry.phase == :forming
    assert Lifecycle.refusal(retry) == nil
    assert {_, [{:start_engine, _}]} = Lifecycle.formation(retry, retry.decision)

    assert {failed, [{:log, :error, _}, {:fail_callers, {:engine_down, ^locked}}, {:stop, stop}]} =
             Lifecycle.engine_down(lc, locked, 50)

    assert stop == {:storage_refused, locked}
    assert Lifecycle.refusal(failed) == {:engine_down, locked}
  end

  test "any other store refusal stops the server; a failure once running does not" do
    {lc, _} = Lifecycle.formation(disk(), @member)

    assert {_, [{:log, :error, _}, {:fail_callers, _}, {:stop, {:storage_refused, @corrupt}}]} =
             Lifecycle.engine_down(lc, @corrupt, 1)

    {opened, [{:log, :info, _}]} = Lifecycle.storage(lc, :created, nil)
    assert opened.opened == :created

    assert {failed, [{:log, :error, _}, {:fail_callers, {:engine_down, @bug}}]} =
             Lifecycle.engine_down(opened, @bug, 1)

    assert Lifecycle.refusal(failed) == {:engine_down, @bug}
  end

  test "storage events: how the store opened is kept; write errors are logged" do
    {lc, _} = Lifecycle.formation(disk(), @member)
    {lc, [{:log, :info, message}]} = Lifecycle.storage(lc, :restarted, 4096)
    assert message =~ "torn write at its end, byte 4096"
    assert lc.opened == :restarted

    {lc, [{:log, :warning, message}]} = Lifecycle.storage(lc, :error, "ENOSPC")
    assert message =~ "ENOSPC"
    assert lc.opened == :restarted

    # Memory mode has no store.
    memory = lifecycle()
    assert Lifecycle.storage(memory, :created, nil) == {memory, []}
  end

  test "a replica that cannot know its state fails every caller and stops the server" do
    {lc, _} = Lifecycle.formation(lifecycle(), @member)
    reason = {:snapshot_decode_failed, 3, "bad"}
    {lc, effects} = Lifecycle.fail(lc, reason)
    assert effects == [{:fail_callers, {:engine_down, reason}}, {:stop, reason}]
    assert Lifecycle.refusal(lc) == {:engine_down, reason}
  end

  describe "memory mode: rejoining after a change" do
    # The group formed as a, b, c (cluster 7) and grew by d (epoch 1,
    # slot 3); b's and d's servers restart.
    @d :d@h
    defp id(index) when is_integer(index), do: <<index::little-unsigned-128>>
    defp id(node), do: Visor.MemberId.hashed(node)

    defp config, do: Options.validate!(Counter, nodes: @nodes)
    defp cluster, do: Options.cluster_id(Counter, @nodes, config().settings, config().instance)

    defp epoch1,
      do: known(1, [{0, id(0), 0}, {1, id(1), 0}, {2, id(2), 0}, {3, id(@d), 1}])

    # A membership as Visor.Lifetime records it; its bytes as the change's
    # entry recorded it (b's incarnation 3, d's learner life 9, the change
    # a's first).
    defp known(epoch, members) do
      listed =
        for {slot, id, joined} <- members do
          case slot do
            1 -> {slot, id, joined, 3, 0}
            3 -> {slot, id, joined, 0, 9}
            _ -> {slot, id, joined, 0, 0}
          end
        end

      %{
        cluster: cluster(),
        genesis: @nodes,
        epoch: epoch,
        members: members,
        membership: MembershipBytes.encode(epoch, listed, {id(0), 1}),
        nodes: @nodes ++ [@d]
      }
    end

    defp on(node, known), do: Lifecycle.new(config(), node, make_ref(), known)

    test "a genesis member that rejoins recovers in the newest list it knows, at its slot there" do
      recover = {:member, %{cluster: cluster(), members: @nodes, recover: true}}
      known = epoch1()
      {lc, effects} = Lifecycle.formation(on(:b@h, known), recover)

      assert [{:log, :info, line}, {:start_engine, opts}, {:after, 10_000, _}] = effects
      assert line =~ "rejoins as a member of epoch 1"
      assert %{recover: true, replica_index: 1, replica_count: 3} = opts
      assert opts.cluster == cluster()
      # The exact bytes, with what the readable list leaves out.
      assert opts.known == known.membership
      refute opts.known == MembershipBytes.encode(1, known.members)
      refute Map.has_key?(opts, :member)
      assert %{phase: :running, role: :member, epoch: 1, index: 1} = lc
      assert Lifecycle.current_nodes(lc) == [:a@h, :b@h, :c@h, @d]
    end

    test "a node a change added, which formation makes a spare, rejoins as that member" do
      {lc, effects} = Lifecycle.formation(on(@d, epoch1()), :spare)
      assert [{:log, :info, _}, {:start_engine, opts}, {:after, 10_000, _}] = effects
      assert %{replica_index: 3, member: member, joined: 1, recover: true} = opts
      assert member == id(@d)
      assert %{phase: :running, role: :member, index: 3} = lc
    end

    test "a node left out of the newest list it knows is removed" do
      known = known(2, [{0, id(0), 0}, {2, id(2), 0}, {3, id(@d), 1}])

      {lc, effects} =
        Lifecycle.formation(
          on(:b@h, known),
          {:member, %{cluster: cluster(), members: @nodes, recover: true}}
        )

      assert [{:log, :warning, line}, {:fail_callers, :spare}] = effects
      assert line =~ "not a member of epoch 2"
      assert %{phase: :removed, role: :removed, epoch: 2} = lc
      assert Lifecycle.refusal(lc) == :spare
    end

    test "a spare that knows nothing takes a peer's answer that lists it; bad, foreign and older answers are ignored" do
      {lc, _} = Lifecycle.formation(on(@d, nil), :spare)
      known = epoch1()

      for bad <- [
            nil,
            :junk,
            %{known | epoch: 0},
            %{known | members: []},
            %{known | members: [{12, id(0), 0}]},
            %{known | members: [{0, id(0), 2}]},
            %{known | members: [{0, <<1>>, 0}]},
            %{known | genesis: [:a@h, :b@h]},
            %{known | cluster: <<8::128>>},
            Map.delete(known, :nodes),
            %{known | nodes: [:a@h | :b@h]},
            %{known | members: Enum.map(0..6, &{&1, id(&1), 0})},
            # The readable list must be the bytes' list.
            %{known | members: [{0, id(0), 0}, {1, id(1), 0}, {3, id(@d), 1}]},
            %{known | epoch: 2},
            Map.delete(known, :membership),
            %{known | membership: :junk},
            %{known | membership: known.membership <> <<0>>},
            %{known | membership: binary_part(known.membership, 0, 10)},
            %{known | membership: :binary.copy(<<255>>, 100_000)}
          ] do
        assert Lifecycle.membership_answer(lc, bad) == {lc, []}
      end

      {lc2, effects} = Lifecycle.membership_answer(lc, known)

      assert [{:remember_membership, ^known}, {:log, :info, _}, {:start_engine, opts} | _] =
               effects

      assert %{replica_index: 3, joined: 1, known: bytes} = opts
      assert bytes == known.membership
      assert %{phase: :running, known: ^known} = lc2
      # Once running, answers only teach it a newer list.
      assert Lifecycle.membership_answer(lc2, known) == {lc2, []}

      # An answer that does not list it is kept, and it stays a spare.
      {lc3, effects} =
        Lifecycle.membership_answer(
          on(:e@h, nil) |> Lifecycle.formation(:spare) |> elem(0),
          known
        )

      assert effects == [{:remember_membership, known}]
      assert %{phase: :spare, known: ^known} = lc3
    end
  end
end
