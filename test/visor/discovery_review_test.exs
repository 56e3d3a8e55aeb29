defmodule Visor.DiscoveryReviewTest do
  # The cluster_size: decider driven through an interleaving a review
  # found (two clusters sharing a node), scripted step by step.
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
  end
end
