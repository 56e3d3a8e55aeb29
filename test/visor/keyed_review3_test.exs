defmodule Visor.KeyedReview3Test do
  # Third adversarial review of keyed groups (calls from a node with no
  # replica: the members' lookup and its per-process cache). Each test
  # shows a defect from a user's side and fails until it is fixed. Tagged
  # :review_break, which test_helper.exs excludes by default; run them with
  # `mix test test/visor/keyed_review3_test.exs --include review_break`.
  # The test node runs no host: it is the node with no replica.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1))
  defp rpc(node, fun, args), do: :erpc.call(node, Visor, fun, args, 60_000)

  @tag :review_break
  test "status/1 of a stopped keyed group says :spare, not :no_group, in a process that called it before (its cached members are never forgotten by status)" do
    [a, _b, _c] = members = nodes(3) |> Enum.sort()
    :ok = Cluster.start_groups_host(members, Counter, members: members)
    group = {Counter, "stale status"}
    assert {:ok, _} = rpc(a, :start_group, [group])

    # This process calls the group once: its members are kept here.
    assert Visor.commit(group, {:incr, :one}) == 1
    assert :ok = Visor.stop_group(group)
    Cluster.eventually(fn -> Visor.lookup(group) == [] end)

    # A process that never called it is told the truth...
    assert Task.await(Task.async(fn -> Visor.status(group).status end)) == :no_group

    # ...this one (a long-lived GenServer, say) is told a member serves
    # it, as long as it lives: status never drops the kept members.
    Process.sleep(200)
    assert Visor.status(group).status == :no_group
  end
end
