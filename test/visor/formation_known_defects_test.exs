defmodule Visor.FormationKnownDefectsTest do
  # Open formation defects, each driving the pure deciders
  # through one scripted interleaving. They FAIL today: they are excluded
  # from `mix test` (test_helper.exs) and listed in docs/testing.md, "Known
  # defects"; `mix test --only known_defect` runs them. A fix removes the
  # tag from its test.
  use ExUnit.Case, async: true

  @moduletag :known_defect

  alias Visor.Formation.{Decider, Explicit}
  alias Visor.Test.ExplicitScript

  describe "nodes:, disk mode" do
    @three [:a@rf, :b@rf, :c@rf]

    defp forming(node, inc),
      do: ExplicitScript.explicit(__MODULE__, node, inc, @three, nil)

    # `from`'s hello reaches `to`, and `to`'s answer reaches `from`.
    defp exchange(states, from, to) do
      f = states[from]
      hello = {:visor_hello, from, from, f.incarnation, f.cluster}
      {answerer, effects} = Explicit.handle(states[to], hello)
      [reply] = for {:send, ^from, reply} <- effects, do: reply
      {asker, _effects} = Explicit.handle(f, reply)
      states |> Map.put(to, answerer) |> Map.put(from, asker)
    end

    # DEFECT (liveness inside the fault model; the model's seeds 64, 7664
    # and 10176, excluded as `needless_rejoin?` although `beyond?` is false
    # in all three): one node restarting once while the cluster forms (a
    # minority; no data_dir wiped, no replica ever ran) wedges the cluster
    # for good. b's second process rejoins (c had let b's first one in,
    # correctly), and its snapshot holds only what c told it: so it tells
    # a, which never restarted and never ran, to rejoin. a and b recover
    # and c alone is normal: no quorum, ever; nothing was ever committed.
    test "one restart of a forming node does not send a node that never restarted to recover" do
      [a, b, c] = @three
      states = %{a => forming(a, 1), b => forming(b, 2), c => forming(c, 3)}

      # b's first process says hello to c; then b restarts before it decides
      # (its store never existed).
      states = states |> exchange(b, c) |> Map.put(b, forming(b, 20))

      # c knows b as 2: b's new process is told to rejoin (safe: c cannot
      # tell whether 2 ran).
      states = exchange(states, b, c)
      assert {:member, %{recover: true}} = Decider.decision(states[b])

      # a, first started and never restarted, says hello to the members.
      states = states |> exchange(a, b) |> exchange(a, c)

      refute match?({:member, %{recover: true}}, Decider.decision(states[a])),
             "a never restarted nor ran, yet is told to rejoin: with b recovering too, " <>
               "only c is normal and the replicas never finish recovering"
    end

    # The same defect in the model: the seeds excluded from its liveness
    # check as a "needless rejoin" (a documented limit) never had more
    # than a minority without its memory (beyond?: false), yet end with
    # fewer than a quorum normal for good. Within the fault model. Seed
    # 28270 (beyond the 2000 seeds `mix test` runs) is the same defect
    # where even that excuse misses it: the rejoined n6's needless
    # :rejoin verdict on n2 reaches n2 through a forming member's records
    # (n3 learned it from n6), so the model's own run fails there.
    test "model seeds 64, 7664, 10176 and 28270: liveness within a minority without memory" do
      for seed <- [64, 7664, 10176, 28270] do
        case Visor.Test.FormationModel.run(seed, 80, needless_rejoin_excused: false) do
          :ok ->
            :ok

          {:error, report} ->
            flunk(report |> String.split("\n") |> Enum.take(3) |> Enum.join("\n"))
        end
      end
    end
  end

  describe "nodes:, disk mode, five members" do
    @five [:x@rot, :m1@rot, :m2@rot, :m3@rot, :m4@rot]

    defp one_of_five(node, inc),
      do: ExplicitScript.explicit(__MODULE__, node, inc, @five, nil)

    # DEFECT (safety, within the fault model when the cluster tolerates
    # two memory losses at once): x's data_dir is wiped after its replica
    # ran, and x's new process is cut off from every member that
    # remembers it. Then each other member in turn loses its data_dir
    # and rejoins (one at a time: its replica finishes recovering from
    # the three others before the next is wiped; at most two of five
    # without memory at once). Each comes back as a forming process that
    # knows nothing of x, and answers x's hello :ok, as every forming
    # process answers a member it has no record of (that is how a new
    # cluster forms). x keeps each :ok, and once it has all four starts a
    # fresh, empty replica: acknowledged commands can be lost. No answer
    # rule fixes it: x collects its :oks over time, and each came from a
    # process that could not know. See docs/testing.md for the protocol
    # change it needs.
    test "sequential data_dir losses do not let a wiped member start fresh" do
      [x | others] = @five
      states = for {n, i} <- Enum.with_index(@five, 1), into: %{}, do: {n, one_of_five(n, i)}
      states = for f <- @five, t <- @five, f != t, reduce: states, do: (s -> exchange(s, f, t))
      for n <- @five, do: assert({:member, %{recover: false}} = Decider.decision(states[n]))

      states = Map.put(states, x, one_of_five(x, 100))

      states =
        others
        |> Enum.with_index(1)
        |> Enum.reduce(states, fn {m, i}, states ->
          # m's data_dir is wiped: its new process answers x, then
          # rejoins (a member that remembers m tells it so).
          witness = Enum.at(others, rem(i, 4))
          states = states |> Map.put(m, one_of_five(m, 200 + i)) |> exchange(x, m)
          states = exchange(states, m, witness)
          assert {:member, %{recover: true}} = Decider.decision(states[m])
          states
        end)

      refute match?({:member, %{recover: false}}, Decider.decision(states[x])),
             "x's replica ran, yet x starts a fresh one"
    end
  end
end
