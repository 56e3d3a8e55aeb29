defmodule Visor.ReviewFormationBreakTest do
  # Adversarial review of the formation fix (502193f..06b491d: a rejoined
  # member answers by its records while its replica recovers). Each test
  # is a break the review found; they FAIL on 06b491d and are excluded
  # from `mix test` (`:review_break`, test_helper.exs); `mix test --only
  # review_break` runs them. They drive the pure deciders through one
  # scripted interleaving, as test/visor/formation_model_test.exs does.
  use ExUnit.Case, async: true

  alias Visor.Formation.{Decider, Explicit, Restore}
  alias Visor.Options
  alias Visor.Test.ExplicitScript

  @three [:a@rfb, :b@rfb, :c@rfb]
  @settings %{client_table_max: 4096, checkpoint_interval: 10_000, checkpoint_chunk_bytes: 1}

  defp forming(node, inc, restored \\ nil),
    do: ExplicitScript.explicit(__MODULE__, node, inc, @three, restored)

  # What Visor.Formation.Restore makes of `node`'s store: its superblock
  # `info` fields over a store of this cluster, and the formation file
  # `record`.
  defp from_store(node, record, info) do
    cluster = Options.cluster_id(__MODULE__, @three, @settings)

    info =
      Map.merge(
        %{
          group: "g",
          replica: Enum.find_index(@three, &(&1 == node)),
          replica_count: 3,
          cluster: cluster,
          meta: Restore.store_meta(@three, @settings)
        },
        info
      )

    expected = %{
      group: "g",
      node: node,
      dir: "/d",
      settings: @settings,
      membership: {:nodes, @three, cluster}
    }

    {:ok, restored} = Restore.check({:ok, info}, expected, record)
    restored
  end

  # `from`'s hello reaches `to`, and `to`'s answer reaches `from`; the
  # effects `from` returns on the answer are kept in `:effects`.
  defp exchange(states, from, to) do
    f = states[from]
    hello = {:visor_hello, from, from, f.incarnation, f.cluster}
    {answerer, effects} = Explicit.handle(states[to], hello)
    [reply] = for {:send, ^from, reply} <- effects, do: reply
    {asker, effects} = Explicit.handle(f, reply)
    states |> Map.put(to, answerer) |> Map.put(from, asker) |> Map.put(:effects, effects)
  end

  # BREAK (safety, within the fault model: one data_dir wiped, one
  # restart). The fix reads the superblock's `recovering` flag as "this
  # replica has no memory"; a store that says `recovering: false` is taken
  # for one of a replica that holds the cluster's state. But a rejoining
  # replica's store is created saying `recovering: false` (view 0, empty
  # log), and only the next sync records that it recovers
  # (vsr_host's Host::start): a machine crash between the two leaves
  # exactly that store (native/vsr_host/tests/review_formation_break.rs
  # shows it on a MemDisk: "crash after 3 disk operations: the store says
  # recovering=false, and the replica restarts Normal at view 0").
  # Formation then restarts the node from it as a member with memory
  # (`recover: false`), and its replica is a normal, empty replica of view
  # 0 although its earlier incarnation ran: it acknowledges and votes in
  # view changes without the ops it acknowledged before (a quorum of it
  # and a lagging member loses committed ops). The formation record,
  # written before the store, is where a rejoin could be told apart.
  @tag :review_break
  test "a rejoined member whose boot crashed right after creating its store restarts recovering" do
    [a, b, c] = @three
    states = %{a => forming(a, 1), b => forming(b, 2), c => forming(c, 3)}

    # All three form fresh; b's replica runs (and acknowledges ops).
    states = for f <- @three, t <- @three, f != t, reduce: states, do: (s -> exchange(s, f, t))
    for n <- @three, do: assert({:member, %{recover: false}} = Decider.decision(states[n]))

    # b's data_dir is wiped: it forms again, a tells it to rejoin, and it
    # writes its formation record before its replica creates the store.
    states = states |> Map.put(b, forming(b, 20)) |> exchange(b, a)
    assert {:member, %{recover: true}} = Decider.decision(states[b])
    [record] = for {:persist, record} <- states.effects, do: record

    # The machine dies after the store's creation, before the recovering
    # state's sync: the superblock says view 0, commit 0, not recovering.
    restored =
      from_store(b, Restore.formation_record(record), %{view: 0, commit: 0, recovering: false})

    restarted = forming(b, 21, restored)

    assert match?({:member, %{recover: true}}, Decider.decision(restarted)),
           "b's replica ran as incarnation 2, yet b restarts a normal, empty replica " <>
             "(#{inspect(Decider.decision(restarted))}) from the store its rejoin created"
  end

  # BREAK (the fix's timing premise: "Formation hears that the replica is
  # normal within one look of the router, 10 ms"). The router told
  # formation only on Watch's `{:primary, view, ours}`, which needs a look
  # that finds the replica `:normal`. A recovered replica that is normal
  # only briefly (StartView installed, then a view change begins before
  # the next look: its primary fails, or the look comes late behind a
  # busy router's mailbox) is seen going
  # from `:recovering` to `:view_change`: Watch logged "recovered" and
  # nothing told formation. The replica then holds the cluster's state
  # (its store no longer says recovering, it votes in the view change),
  # yet its formation kept answering members its snapshot does not name
  # by its records (`:ok` to one it has no record of) for as long as the
  # view change lasts (a partition: unbounded), not 10 ms. Watch now says
  # `:has_state` at the first look past starting and recovering, whatever
  # the status it finds.
  test "a replica seen leaving recovery into a view change tells formation it has its state" do
    alias Visor.Router.Watch

    engine = fn status, view ->
      %{
        status: status,
        view: view,
        primary: rem(view, 3),
        is_primary: false,
        checkpoint: 0,
        sync: nil,
        stats: %{checkpoints_installed: 0}
      }
    end

    observe = fn watch, engine -> Watch.observe(watch, engine, 0, fn -> [] end) end

    {watch, first} =
      observe.(Watch.new(__MODULE__, List.to_tuple(@three), 1, 0), engine.(:recovering, 0))

    refute :has_state in first

    # Between two looks: recovered in view 4, then a view change to 5.
    {watch, effects} = observe.(watch, engine.(:view_change, 5))
    assert [_] = for({:log, :info, message} <- effects, message =~ "recovered", do: message)

    # The view change lasts (no quorum reachable): more looks.
    {_watch, later} = observe.(watch, engine.(:view_change, 5))

    assert :has_state in effects,
           "the replica left recovery with the cluster's state, yet the router has nothing " <>
             "to tell formation (Visor.Formation.replica_normal/1), which keeps answering " <>
             "unknown members by its records: " <> inspect(effects)

    refute :has_state in later, "said once, not at every look"
  end
end
