defmodule Visor.Server.LifecycleTest do
  # When the engine starts, with what, and what its failures mean.
  use ExUnit.Case, async: true

  alias Visor.{Formation, Options}
  alias Visor.Server.Lifecycle
  alias Visor.Test.Counter

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
    recover = {:member, %{cluster: <<7::128>>, members: @nodes, recover: true}}

    assert {lc,
            [{:start_engine, %{recover: true}}, {:after, 10_000, {:visor_still_recovering, ^tag}}]} =
             Lifecycle.formation(lc, recover)

    assert [{:log, :error, message}] = Lifecycle.still_recovering(lc, :recovering)
    assert message =~ "replica 1 is still recovering"
    assert Lifecycle.still_recovering(lc, :normal) == []
  end

  test "a spare or a refused node answers every caller with why" do
    {lc, effects} = Lifecycle.formation(lifecycle(), :spare)
    assert effects == [{:fail_callers, :spare}]
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
end
