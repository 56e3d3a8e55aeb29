defmodule Visor.DiscoveryReviewTest do
  # The cluster_size: decider driven through interleavings reviews found
  # (two clusters, acceptors waiting for ever), scripted step by step.
  use ExUnit.Case, async: true

  import Visor.Test.DiscoveryScript

  alias Visor.Formation.Decider

  describe "cluster_size:" do
    # DEFECT (safety, two clusters sharing a node; new in this merge: "a
    # new proposal from the proposer it is bound to also frees it"): a
    # *stale* copy of the proposer's earlier, aborted proposal (a
    # duplicate, or one that was slow on the way) frees an acceptor from
    # the proposal it is bound to, which still counts its accept. The
    # acceptor re-binds to the dead proposal, reminds its proposer, is told
    # that one was aborted, and is free to accept a second proposer's.
    # Visibility is partial (q does not see p), but not disjoint: x sees
    # both, which the moduledoc says is enough ("two clusters can never
    # share a node").
    test "a stale copy of an aborted proposal does not unbind an acceptor from the live one" do
      [p, q, x, y, z] = for i <- [1, 2, 3, 4, 5], do: :"n#{i}@rf"
      states = for n <- [p, q, x, y, z], into: %{}, do: {n, discovering(n, :erlang.phash2(n))}
      hellos = [:visor_hello, :visor_hello_reply]

      # p sees x and y, and proposes them (id1); only x's copy arrives, and
      # a duplicate of it stays on the way.
      states = states |> tick(p, [x, y]) |> deliver(hellos) |> drop_net() |> tick(p, [x, y])
      {[{^x, propose1}], states} = take(states, &match?({^x, {:visor_propose, _, _}}, &1))
      states = states |> drop_net() |> feed(x, propose1) |> deliver([:visor_accept])

      # y never answered: id1 times out and is aborted; x is free.
      states = feed(states, p, {:proposal_timeout, states[p].proposal.id})
      states = states |> deliver([:visor_abort]) |> drop_net()

      # p proposes again (id2); x and y accept, their accepts on the way.
      states = states |> tick(p, [x, y]) |> deliver([:visor_propose])
      {accepts2, states} = take(states, &match?({^p, {:visor_accept, _, _, _}}, &1))
      assert length(accepts2) == 2
      states = drop_net(states)

      # The stale copy of id1 reaches x; x reminds p of id1, p aborts it.
      states = states |> feed(x, propose1) |> drop_net() |> tick(x, [p, y])
      {bound, states} = take(states, &match?({^p, {:visor_bound, _, _}}, &1))

      states =
        states |> drop_net() |> Map.put(:net, bound) |> deliver([:visor_bound, :visor_abort])

      # q sees x and z (not p): it proposes q, x, z, and x accepts.
      states = states |> drop_net() |> tick(q, [x, z]) |> deliver(hellos) |> drop_net()

      states =
        states |> tick(q, [x, z]) |> deliver([:visor_propose, :visor_accept, :visor_formed])

      # p's accepts of id2 arrive.
      states = states |> drop_net() |> Map.put(:net, accepts2) |> deliver([:visor_accept])

      clusters =
        for {n, s} <- states,
            n != :net,
            {:member, m} <- [Decider.decision(s)],
            uniq: true,
            do: m.members

      assert length(clusters) <= 1, "two clusters formed, both with x: #{inspect(clusters)}"
    end

    # Was a known defect (liveness within the fault model): the proposer
    # forms and starts its replica, but its announcement is lost (sends
    # are best effort, :nosuspend) and it restarts, from its own disk,
    # before the acceptors' reminders reach it. Its store keeps no
    # incarnations, so it could not tell them to start: they waited
    # forever, and restarting them (the remedy documented then) made it
    # permanent (two recovering replicas with one normal never finish).
    # Now a node bound to the very proposal that formed starts when any
    # member advertises that cluster.
    test "disk mode: acceptors of a lost announcement start once the proposer is back from its store" do
      [p, x, y] = for i <- [1, 2, 3], do: :"n#{i}@rf"

      states = for n <- [p, x, y], into: %{}, do: {n, discovering(n, :erlang.phash2(n), :disk)}

      hellos = [:visor_hello, :visor_hello_reply]
      states = states |> tick(p, [x, y]) |> deliver(hellos) |> drop_net() |> tick(p, [x, y])
      states = states |> deliver([:visor_propose, :visor_accept]) |> drop_net()
      assert {:member, %{recover: false} = formed} = Decider.decision(states[p])
      assert Decider.decision(states[x]) == :pending

      # p restarts from the store its replica created.
      restored = %{
        cluster: formed.cluster,
        members: formed.members,
        settings: settings(),
        replica: 0,
        view: 0,
        commit: 0,
        dir: "/d",
        formed_with: %{}
      }

      states = Map.put(states, p, discovering(p, 100, :disk, restored))

      # x and y (the accepted processes) keep ticking and hear from p.
      states =
        Enum.reduce(1..5, states, fn _, states ->
          states
          |> tick(x, [p, y])
          |> tick(y, [p, x])
          |> deliver(hellos ++ [:visor_bound, :visor_formed, :visor_abort])
          |> drop_net()
        end)

      for n <- [x, y] do
        assert match?({:member, %{recover: false}}, Decider.decision(states[n])),
               "#{n} (accepted, never ran) still waits for the proposer's dead process"
      end
    end

    # Was a known defect (safety, two clusters): a node held back only
    # while a *lower* node's proposal was in flight, not while a higher
    # one's was. n1 (the lowest) is down while n2 proposes [n2, n3, n4];
    # it comes back, sees n2 proposing, and, being the lowest of the
    # undecided nodes, proposed [n1, n5, n6] at once. Both proposals were
    # accepted: two clusters of the group, every node seeing every other.
    test "a lower node coming back while a higher one's proposal is in flight does not form a second cluster" do
      [n1, n2, n3, n4, n5, n6] = for i <- 1..6, do: :"n#{i}@rf"
      hello_tags = [:visor_hello, :visor_hello_reply]

      # n2..n6 up; n1 is down. n2 hears everyone, and proposes n2, n3, n4.
      states =
        for n <- [n2, n3, n4, n5, n6], into: %{}, do: {n, discovering(n, :erlang.phash2(n))}

      states = states |> tick(n2) |> deliver(hello_tags) |> drop_net() |> tick(n2)

      assert Enum.any?(
               states.net,
               &match?({_, {:visor_propose, ^n2, %{members: [^n2, ^n3, ^n4]}}}, &1)
             )

      # n3 and n4 accept; their accepts are on their way to n2.
      states = deliver(states, [:visor_propose])
      {to_n2, _} = Enum.split_with(states.net, &match?({^n2, {:visor_accept, _, _, _}}, &1))
      states = drop_net(states)

      # n1 starts and hears everyone: n2 :proposing, n3 and n4 :accepted,
      # n5 and n6 :discovering.
      states = Map.put(states, n1, discovering(n1, 1))
      states = states |> tick(n1) |> deliver(hello_tags) |> drop_net() |> tick(n1)
      states = deliver(states, [:visor_propose, :visor_accept, :visor_formed])

      # n2's accepts arrive.
      states =
        states |> Map.update!(:net, &(&1 ++ to_n2)) |> deliver([:visor_accept, :visor_formed])

      clusters =
        for {n, s} <- states,
            n != :net,
            {:member, m} <- [Decider.decision(s)],
            uniq: true,
            do: {m.cluster, m.members}

      assert length(clusters) <= 1, "two clusters formed: #{inspect(clusters)}"
    end

    # What keeps the two clusters apart when no view shows the other
    # proposal: n1 sees only n5 and n6 (all discovering, as they were),
    # n2 sees n3 to n6. Each proposes; n5 and n6 are asked by both, and
    # whichever proposal reaches them first binds them, so the other is
    # rejected. Both orders, one cluster.
    test "two proposers whose views share nodes but not each other form one cluster" do
      [n1, n2, n3, n4, n5, n6] = for i <- 1..6, do: :"n#{i}@rf"
      hellos = [:visor_hello, :visor_hello_reply]

      for first <- [n1, n2] do
        states =
          for n <- [n1, n2, n3, n4, n5, n6], into: %{}, do: {n, discovering(n, :erlang.phash2(n))}

        views = %{n1 => [n5, n6], n2 => [n3, n4, n5, n6]}

        # Both hear their peers (all discovering), then both propose.
        states = states |> tick(n1, views[n1]) |> tick(n2, views[n2]) |> deliver(hellos)
        states = states |> drop_net() |> tick(n1, views[n1]) |> tick(n2, views[n2])

        for n <- [n1, n2], do: assert({:accepted, %{proposer: ^n}} = states[n].phase)

        # One proposer's messages arrive first, then the other's.
        {firsts, states} = take(states, &match?({_, {:visor_propose, ^first, _}}, &1))
        states = states |> Map.update!(:net, &(firsts ++ &1))
        tags = [:visor_propose, :visor_accept, :visor_reject, :visor_abort, :visor_formed]
        states = deliver(states, tags)

        # Everyone keeps ticking; the network delivers everything.
        states =
          Enum.reduce(1..5, states, fn _, states ->
            states
            |> tick(n1, views[n1])
            |> tick(n2, views[n2])
            |> tick(n3, [n2])
            |> tick(n4, [n2])
            |> tick(n5, [n1, n2])
            |> tick(n6, [n1, n2])
            |> deliver(hellos ++ tags ++ [:visor_bound])
          end)

        clusters =
          for {n, s} <- states,
              n != :net,
              {:member, m} <- [Decider.decision(s)],
              uniq: true,
              do: m.members

        assert length(clusters) == 1, "#{first} first: #{inspect(clusters)}"
      end
    end
  end
end
