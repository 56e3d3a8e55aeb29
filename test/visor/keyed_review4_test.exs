defmodule Visor.KeyedReview4Test do
  # Fourth adversarial review of keyed groups (start/stop fixes: tombstones,
  # stale replicas, undo). Each test shows a defect. The two still open
  # are tagged :known_defect (docs/testing.md, "Known defects"), excluded
  # by default: run them with `mix test <this file> --only known_defect`.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1))
  defp rpc(node, fun, args), do: :erpc.call(node, Visor, fun, args, 60_000)

  # c stalls (SIGSTOP) through stop_group and the next start_group. Both
  # ask c with a 5 s :erpc timeout, so start_group's hosts/1 leaves c out:
  # no_other_membership/3 never sees c's stale replica, and the members
  # come from the host's members: option, which place/4 does not check
  # against the hosts that answered (the docs say a start needs every
  # member). a and b start; their formations, once c thaws, find c's old
  # replica remembering the cluster id and decide to recover. On c the
  # start's message (queued directly in c's host) overtakes the stop's
  # (sent by an :erpc process spawned only after the thaw): the old
  # replica answers :already_started, then the late stop kills it (c ends
  # :spare). a and b stay :recovering for good: the group start_group
  # started never serves and does not heal by itself.
  @tag :known_defect
  @tag timeout: 180_000
  test "a member stalled through a stop and the next start leaves a new group that never serves: its replicas recover from the old incarnation, which then stops" do
    [a, _b, c] = members = nodes(3) |> Enum.sort()
    :ok = Cluster.start_groups_host(members, Counter, members: members)
    group = {Counter, "stalled through stop and start"}
    assert {:ok, _} = rpc(a, :start_group, [group])
    for i <- 1..3, do: assert(rpc(a, :commit, [group, {:incr, {:old, i}}]) == i)

    pid = Cluster.freeze(c)

    start =
      try do
        assert rpc(a, :stop_group, [group]) == :ok
        rpc(a, :start_group, [group, [timeout: 8_000]])
      after
        Cluster.thaw(pid)
      end

    # Whatever start_group answered (c did not), the group it started is new.
    assert match?({:ok, _}, start) or start == {:error, :timeout}

    # The new group serves, and from an empty state.
    served =
      Enum.find_value(1..150, fn _ ->
        case rpc(a, :commit, [group, {:incr, :new}, [timeout: 200]]) do
          reply when is_integer(reply) -> reply
          _ -> nil
        end
      end)

    statuses = for n <- members, do: {n, rpc(n, :status, [group]) |> Map.take([:status, :view])}
    c_count = rpc(c, :get_in, [group, [:count], [timeout: 2_000]])

    assert served == 1,
           "commit after restart: #{inspect(served)}; c's count #{inspect(c_count)}; #{inspect(statuses)}"

    Cluster.eventually(fn -> rpc(c, :get_in, [group, [:count], [timeout: 2_000]]) == 1 end)
    assert rpc(c, :get, [group]).applied == MapSet.new([:new])
  end

  # A host that sees a peer offer a membership it stopped answers
  # {:visor_stale, key, members}, and the peer stops what it runs with
  # those members (Host.handle_info/2, :visor_stale). The message names
  # no incarnation: one sent for the old replica, arriving after
  # start_group started the group again with the same members (the
  # sender's adoption check and the start race, and the two come from
  # different processes, so nothing orders them), stops the new replica
  # and leaves a tombstone there. That tombstone then answers the next
  # offer from any member (a reconnect is enough) with :visor_stale: the
  # new group is stopped member by member, though nobody stopped it.
  @tag :known_defect
  @tag timeout: 180_000
  test "a :visor_stale for an old incarnation that arrives after the group was started again stops the new group, and its tombstone spreads the stop on the next reconnect" do
    [a, b, c] = members = nodes(3) |> Enum.sort()
    :ok = Cluster.start_groups_host(members, Counter, members: members)
    group = {Counter, "late stale"}
    assert {:ok, _} = rpc(a, :start_group, [group])
    assert rpc(a, :commit, [group, {:incr, :one}]) == 1

    # a's answer to c's offer of the previous incarnation, late.
    send({Visor.Groups.host(Counter), c}, {:visor_stale, "late stale", members})
    Process.sleep(500)
    c_runs? = rpc(c, :lookup, [group]) |> Keyword.has_key?(c)

    # A blip between c and the others: c's host asks theirs for offers.
    :ok = Cluster.partition([a, b], [c])
    :ok = Cluster.heal([a, b], [c])
    Process.sleep(2_000)

    running = rpc(a, :lookup, [group]) |> Keyword.keys() |> Enum.sort()
    assert {c_runs?, running} == {true, members}
  end

  # Groups.place/3 (public, documented) hashes the key as given, while
  # start_group places the canonical key (Control.start/2): for a key
  # with -0.0 in it, place/3 names other members than start_group picks
  # for the same key, which the docs say is one group.
  test "Visor.Groups.place/3 of a key with -0.0 names other members than of the same key with 0.0 (one group)" do
    nodes = for i <- 1..10, do: :"n#{i}@h"
    # Built at run time: the compiler may merge a -0.0 literal with 0.0.
    negative_zero = Process.get(:no_such_key, 0.0) * -1
    minus = Visor.Groups.place({Counter, {:k, negative_zero}}, nodes, 3) |> Enum.sort()
    plus = Visor.Groups.place({Counter, {:k, 0.0}}, nodes, 3) |> Enum.sort()
    assert minus == plus
  end
end
