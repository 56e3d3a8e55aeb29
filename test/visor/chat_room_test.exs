defmodule Visor.ChatRoomTest do
  # The README's per-entity example (examples/chat_room.ex) on three real
  # nodes, as the README shows it: rooms started on demand by their first
  # post, from any node, each its own group; a room outlives the node of
  # its primary; a closed room is gone. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.Cluster

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
  defp rpc(node, fun, args), do: :erpc.call(node, ChatRoom, fun, args, 30_000)

  setup do
    members = nodes(3)
    :ok = Cluster.start_groups_host(members, ChatRoom, replicas: 3)
    %{members: members}
  end

  test "the README's walkthrough: the first post starts the room, any node posts and reads it",
       %{members: [a, b, c]} do
    assert rpc(a, :history, ["elixir"]) == []
    assert rpc(a, :post, ["elixir", "ana", "hello"]) == {:ok, 1}
    assert rpc(b, :post, ["elixir", "bo", "hi ana"]) == {:ok, 2}
    assert rpc(c, :history, ["elixir"]) == [{1, "ana", "hello"}, {2, "bo", "hi ana"}]

    # Another room is another group, with its own numbering.
    assert rpc(c, :post, ["erlang", "cy", "first"]) == {:ok, 1}

    assert Enum.sort(Enum.map(Visor.which_groups(ChatRoom, :cluster), & &1.key)) == [
             "elixir",
             "erlang"
           ]

    assert rpc(a, :close, ["elixir"]) == :ok
    assert rpc(b, :history, ["elixir"]) == []
    assert rpc(b, :history, ["erlang"]) == [{1, "cy", "first"}]
  end

  test "posts from every node to one new room at once start it once, and every post is numbered once",
       %{members: members} do
    posts =
      for node <- members, i <- 1..5 do
        Task.async(fn -> {node, i, rpc(node, :post, ["busy", node, "post #{i}"])} end)
      end
      |> Task.await_many(30_000)

    numbers = for {_node, _i, {:ok, n}} <- posts, do: n
    assert Enum.sort(numbers) == Enum.to_list(1..15), inspect(posts)
    assert length(Visor.which_groups(ChatRoom, :cluster)) == 1
  end

  test "a room keeps its messages when the node of its primary is killed", %{members: members} do
    assert rpc(hd(members), :post, ["ops", "ana", "before"]) == {:ok, 1}

    # The room's start returns once a quorum runs it: the third member may
    # still be forming (a member killed then no longer leaves it waiting
    # for good: test/visor/groups/death_while_forming_test.exs). This test
    # is about a room that formed: wait until every member runs its
    # replica.
    for node <- members do
      Cluster.eventually(fn -> Cluster.status(node, {ChatRoom, "ops"}).status == :normal end)
    end

    primary = Visor.status({ChatRoom, "ops"}).primary
    [survivor | _] = others = members -- [primary]
    :ok = Cluster.kill_node(primary, others)

    # Once the survivors run a view of their own (how long that takes is
    # the failover bench's to measure; a post in the meantime may time
    # out, as one did in a full suite on a loaded machine).
    Cluster.eventually(
      fn ->
        status = :erpc.call(survivor, Visor, :status, [{ChatRoom, "ops"}])
        status.status == :normal and status.primary in others
      end,
      30_000
    )

    assert rpc(survivor, :post, ["ops", "bo", "after"]) == {:ok, 2}
    assert rpc(survivor, :history, ["ops"]) == [{1, "ana", "before"}, {2, "bo", "after"}]
  end
end
