defmodule Visor.Server.StatusTest do
  # The status map docs/operations.md ("Status") documents, built from
  # given parts: no engine, no cluster.
  use ExUnit.Case, async: true

  alias Visor.Options
  alias Visor.Server.{Lifecycle, Status}
  alias Visor.Test.Counter

  @nodes [:a@h, :b@h, :c@h]
  @member {:member, %{cluster: <<0xAB, 0::120>>, members: @nodes, recover: false}}

  # The keys docs/operations.md shows and explains.
  @documented [
    :status,
    :role,
    :node,
    :index,
    :epoch,
    :members,
    :view,
    :log_view,
    :op,
    :commit,
    :commit_max,
    :checkpoint,
    :log_base,
    :primary,
    :replicas,
    :cluster,
    :pool,
    :storage,
    :poison,
    :refused,
    :version,
    :waiting_for,
    :auto_replace,
    :sync,
    :quiet,
    :stats
  ]

  @pool %{slots: 2, idle: 1, busy: 1, registering: 0, waiting: 3}
  @server %{
    node: :b@h,
    connected: [:a@h],
    pool: @pool,
    poison: nil,
    version: %{running: 1, supported: 2, blocked: nil},
    waiting_for: %{nodes: [:c@h]},
    auto_replace: nil,
    stats: %{send_busy: 4, unexpected_messages: 0}
  }

  defp engine(overrides \\ %{}) do
    Map.merge(
      %{
        status: :normal,
        is_primary: false,
        primary: 0,
        view: 3,
        log_view: 3,
        op: 1042,
        commit: 1042,
        commit_max: 1043,
        checkpoint: 1000,
        log_base: 900,
        replica_index: 1,
        replica_count: 3,
        stats: %{views_started: 2},
        storage: %{mode: :memory},
        sync: %{op: 1100, received: 512, bytes: 2048},
        quiet: false
      },
      overrides
    )
  end

  defp running(opts \\ []) do
    config = Options.validate!(Counter, [nodes: @nodes] ++ opts)
    {lc, _} = Lifecycle.formation(Lifecycle.new(config, :b@h, make_ref()), @member)
    lc
  end

  test "a running replica: the engine's view, its members' roles and health" do
    status = Status.build(running(), engine(), @server)
    assert Enum.sort(Map.keys(status)) == Enum.sort(@documented)

    assert %{
             status: :normal,
             role: :backup,
             node: :b@h,
             index: 1,
             epoch: 0,
             members: @nodes,
             view: 3,
             op: 1042,
             commit: 1042,
             commit_max: 1043,
             checkpoint: 1000,
             log_base: 900,
             primary: :a@h,
             cluster: "ab000000000000000000000000000000",
             pool: @pool,
             storage: %{mode: :memory},
             poison: nil,
             refused: nil,
             version: %{running: 1, supported: 2, blocked: nil},
             waiting_for: nil,
             sync: %{op: 1100, received: 512, bytes: 2048},
             stats: %{views_started: 2, send_busy: 4, unexpected_messages: 0}
           } = status

    assert status.replicas == [
             %{index: 0, node: :a@h, role: :primary, health: :connected},
             %{index: 1, node: :b@h, role: :backup, health: :self},
             %{index: 2, node: :c@h, role: :backup, health: :disconnected}
           ]
  end

  test "after a change: the new epoch's members; a node left out is leaving, then removed" do
    id = &<<&1::little-unsigned-128>>
    # c@h (index 2) left; b@h leads the new epoch.
    members = [{1, id.(1), 0}, {0, id.(0), 0}]
    bytes = Visor.Test.MembershipBytes.encode(1, members, {id.(1), 1})
    {lc, effects} = Lifecycle.epoch(running(), 1, members, :member, bytes)
    # Memory mode: the newest list this node knows is recorded
    # (Visor.Lifetime), with its exact bytes.
    assert [
             {:log, :info, _},
             {:remember_membership, %{epoch: 1, members: ^members, membership: ^bytes}}
           ] = effects

    status = Status.build(lc, engine(%{is_primary: true, primary: 1}), @server)
    assert %{epoch: 1, members: [:b@h, :a@h], role: :primary, primary: :b@h} = status

    assert Enum.map(status.replicas, &{&1.index, &1.node, &1.role}) == [
             {1, :b@h, :primary},
             {0, :a@h, :backup}
           ]

    assert Lifecycle.refusal(lc) == nil

    # b@h left out of epoch 2: it says so, fails its waiting callers
    # with :timeout, and passes new ones on as a spare.
    {lc, effects} = Lifecycle.epoch(lc, 2, [{0, id.(0), 0}], :leaving, <<"epoch 2's bytes">>)

    assert [{:log, :warning, line}, {:fail_callers, :timeout}, {:remember_membership, _}] =
             effects

    assert line =~ "not a member of epoch 2"
    assert Lifecycle.refusal(lc) == :spare
    status = Status.build(lc, engine(%{is_primary: true, primary: 1}), @server)
    assert %{epoch: 2, members: [:a@h], role: :leaving, primary: nil} = status

    # An older epoch's event changes nothing.
    assert {^lc, []} = Lifecycle.epoch(lc, 1, members, :member, bytes)

    {lc, effects} = Lifecycle.removed(lc, 2)
    assert [{:log, :warning, line}, :stop_engine, {:fail_callers, :spare}] = effects
    assert line =~ "removed from the group in epoch 2"
    assert Lifecycle.refusal(lc) == :spare
    status = Status.build(lc, nil, @server)
    assert Enum.sort(Map.keys(status)) == Enum.sort(@documented)
    assert %{status: :removed, role: :removed, epoch: 2, members: [:a@h], primary: nil} = status
  end

  test "no primary to show while recovering or while the store opens" do
    for engine_status <- [:recovering, :starting] do
      status = Status.build(running(), engine(%{status: engine_status}), @server)
      assert status.status == engine_status
      assert status.primary == nil
      assert Enum.all?(status.replicas, &(&1.role == :backup))
    end
  end

  test "disk mode: the engine's storage map, and how the store opened" do
    lc = running(storage: :disk, data_dir: "/data")
    {lc, _} = Lifecycle.storage(lc, :restarted, nil)
    storage = %{mode: :disk, data_dir: "/data/Elixir.Visor.Test.Counter", syncs: 7, error: nil}
    status = Status.build(lc, engine(%{storage: storage}), @server)

    assert status.storage == %{
             mode: :disk,
             data_dir: "/data/Elixir.Visor.Test.Counter",
             opened: :restarted,
             error: nil,
             syncs: 7,
             wal_bytes: 0,
             wal_size: 0,
             compactions: 0,
             checkpoint: 0
           }
  end

  test "no replica: forming, spare, refused (with why) or failed, and the same keys" do
    config = Options.validate!(Counter, nodes: @nodes, storage: :disk, data_dir: "/data")
    forming = Lifecycle.new(config, :b@h, make_ref())
    {spare, _} = Lifecycle.formation(forming, :spare)
    mismatch = {:setting_mismatch, :client_table_max, 1, 2}
    {refused, _} = Lifecycle.formation(forming, {:refused, mismatch})
    {failed, _} = Lifecycle.fail(running(), :bad)
    poisoned = %{@server | poison: %{op: 5, crashes: 2}}

    for {lc, status, refused_reason} <- [
          {forming, :forming, nil},
          {spare, :spare, nil},
          {refused, :refused, mismatch},
          {failed, :failed, nil}
        ] do
      map = Status.build(lc, nil, poisoned)
      assert Enum.sort(Map.keys(map)) == Enum.sort(@documented)

      assert %{status: ^status, role: :none, node: :b@h, index: nil, primary: nil, replicas: []} =
               map

      assert map.refused == refused_reason
      assert map.poison == %{op: 5, crashes: 2}
      assert map.pool == @pool
      assert map.version == @server.version
      assert map.stats == @server.stats
      assert map.sync == nil
      # Only a forming node waits for anyone.
      assert map.waiting_for == if(status == :forming, do: %{nodes: [:c@h]})
    end

    # Disk mode, before the engine runs: every key the engine's storage
    # map has (docs/operations.md lists them), not only those known yet.
    assert Status.build(forming, nil, @server).storage.opened == nil

    assert Status.build(forming, nil, @server).storage |> Map.keys() |> Enum.sort() ==
             Enum.sort(
               [:mode, :data_dir, :error, :syncs, :wal_bytes, :wal_size, :compactions] ++
                 [:checkpoint, :opened]
             )

    assert Status.build(failed, nil, @server).storage == %{mode: :memory}
  end
end
