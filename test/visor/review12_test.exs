defmodule Visor.Review12SlowGroup do
  @moduledoc false
  # A group whose command keeps the server busy inside handle_commit.
  use Visor

  @impl Visor
  def initial_state(_opts), do: 0

  @impl Visor
  def handle_commit({:sleep, ms}, state) do
    Process.sleep(ms)
    {:ok, :slept, state + 1}
  end
end

defmodule Visor.Review12Test do
  # Adversarial review of the restructure (773d105..09ed8d9): behaviour
  # that changed although it was meant to stay. Each test names its defect
  # and fails on 09ed8d9. Not async: one test runs a real group here.
  use ExUnit.Case, async: false

  alias Visor.Formation.{Decider, Explicit, Restore}
  alias Visor.Options

  # ---- Visor.Server ----------------------------------------------------------

  # DEFECT (review12 #1): a caller's deadline timer that fires while the
  # server is busy, for a caller the engine's reply then answers, is no
  # longer dropped silently: before, `{:visor_deadline, ref}` had its own
  # clause (answer/3 of an answered ref: a no-op); now the stale
  # `{:timeout, timer, {:visor_deadline, id}}` fails the timers guard
  # (cancel_deadline already popped it) and falls into the catch-all, which
  # counts it in stats.unexpected_messages (meant for junk from peers) and
  # logs it as "dropped unexpected message".
  test "a deadline that fires while its caller is being answered is not an unexpected message" do
    Visor.Test.Cluster.ensure_distributed!()
    group = Visor.Review12SlowGroup
    start_supervised!({group, nodes: [node()]})

    Visor.Test.Cluster.eventually(fn -> Visor.status(group).status == :normal end, 15_000)
    assert Visor.commit(group, {:sleep, 0}) == :slept
    before = Visor.status(group).stats.unexpected_messages

    # The server sleeps 600 ms in handle_commit; the caller's deadline
    # (300 ms) fires meanwhile; the engine's reply, already in the mailbox
    # ahead of the timer's message, answers the caller first.
    assert Visor.commit(group, {:sleep, 600}, timeout: 300) == :slept
    Process.sleep(50)

    assert Visor.status(group).stats.unexpected_messages == before
  end

  # ---- Visor.Formation.Explicit: the restored-member fix -----------------------

  @nodes [:a@r12, :b@r12, :c@r12]
  @settings %{client_table_max: 4096, checkpoint_interval: 10_000, checkpoint_chunk_bytes: 1}

  defp explicit(node, inc, restored) do
    {state, _effects} =
      Explicit.new(%{
        module: __MODULE__,
        name: :formation,
        node: node,
        self: node,
        incarnation: inc,
        settings: @settings,
        members: @nodes,
        cluster: Options.cluster_id(__MODULE__, @nodes, @settings),
        storage: :disk,
        earlier: nil,
        restored: restored
      })

    state
  end

  # What a's store says once a's replica ran (it decided fresh).
  defp restored(node) do
    cluster = Options.cluster_id(__MODULE__, @nodes, @settings)
    replica = Enum.find_index(@nodes, &(&1 == node))

    info = %{
      group: "g",
      replica: replica,
      replica_count: 3,
      cluster: cluster,
      meta: Restore.store_meta(@nodes, @settings),
      view: 0,
      commit: 0
    }

    expected = %{
      group: "g",
      node: node,
      dir: "/d",
      settings: @settings,
      membership: {:nodes, @nodes, cluster}
    }

    {:ok, restored} = Restore.check({:ok, info}, expected)
    restored
  end

  # `from` ticks; each hello is delivered unless `cut?.(from, to)`, and its
  # answer comes back.
  defp round(states, from, cut? \\ fn _, _ -> false end) do
    {state, effects} = Explicit.handle(states[from], :tick)
    states = Map.put(states, from, state)

    for {:send, {:formation, to}, hello} <- effects, not cut?.(from, to), reduce: states do
      states ->
        {state, replies} = Explicit.handle(states[to], hello)
        states = Map.put(states, to, state)

        for {:send, ^from, reply} <- replies, reduce: states do
          states -> Map.update!(states, from, &elem(Explicit.handle(&1, reply), 0))
        end
    end
  end

  # DEFECT (review12 #2, liveness, the deliberate fix in explicit.ex): a
  # member restarted from its store answers :restarted to the first hello
  # of every member, even one that is still forming under the very
  # incarnation that let the earlier process in, and never ran a replica.
  # a decides fresh (b and c answered its hellos), its group restarts from
  # the store before b's and c's own hellos reached it; b and c (each
  # already acked by the other) then ask only a, and both are told to
  # rejoin. a is the only normal replica: a recovering replica of 3 needs
  # 2 normal others, so b and c stay :recovering forever (no state was
  # ever committed: nothing to protect). Before the fix, a's first tick
  # learned b's and c's records from their answers and let them in.
  test "a restored member does not make a forming majority rejoin (wedge)" do
    [a, b, c] = @nodes
    states = %{a => explicit(a, 1, nil), b => explicit(b, 2, nil), c => explicit(c, 3, nil)}

    # b and c answer each other first; then a comes up and hears them both.
    states = states |> round(b, fn _, to -> to == a end) |> round(c, fn _, to -> to == a end)
    states = round(states, a)
    assert {:member, %{recover: false}} = Decider.decision(states[a])
    assert Decider.decision(states[b]) == :pending
    assert Decider.decision(states[c]) == :pending

    # a's group restarts (its store is there) before b or c asked it again;
    # its first tick comes first, as in Visor.Formation.init/1.
    states = Map.put(states, a, explicit(a, 4, restored(a)))
    states = states |> round(a) |> round(b) |> round(c) |> round(b) |> round(c)

    recovering =
      for n <- [b, c], match?({:member, %{recover: true}}, Decider.decision(states[n])), do: n

    assert length(recovering) < 2,
           "#{inspect(recovering)} rejoin with only #{a} normal: recovery never finishes"
  end
end
