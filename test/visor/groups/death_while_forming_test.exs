defmodule Visor.Groups.DeathWhileFormingTest do
  # Found as a flaky test/visor/chat_room_test.exs, and fixed
  # (docs/testing.md, "Known defects", lists it among the fixed ones).
  #
  # `Visor.start_group/2` returns once a quorum of the members runs a
  # normal replica, and a `nodes:` member starts a fresh replica only
  # once **every** member answered its hello (`Visor.Formation.Explicit`).
  # Before the fix the last member to form often still waited for one
  # answer then: its hello had reached a member whose group had not
  # started yet, and the next one went out a formation tick (100 ms)
  # later. If that member's node died in between, the last member waited
  # for it for good, and the group was left with one running replica of
  # three: no view change, no commit, until the dead node came back.
  #
  # Now a fresh replica starts only once its formation process has word
  # that every member decided (each has all the answers it needs), which
  # any member that decided passes on: a member's death after a quorum
  # started leaves nobody waiting for its answer.
  use ExUnit.Case, async: false

  alias Visor.Test.Cluster

  @group_keys 50

  @tag timeout: 180_000
  test "a member killed as soon as start_group returns does not stop the group" do
    members = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
    :ok = Cluster.start_groups_host(members, ChatRoom, replicas: 3)
    os_pids = Map.new(members, &{&1, to_string(:erpc.call(&1, :os, :getpid, []))})

    {group, dead} = pick_victim(members)
    {_, 0} = System.cmd("kill", ["-9", os_pids[dead]])
    survivors = members -- [dead]

    for n <- survivors,
        do: Cluster.eventually(fn -> dead not in :erpc.call(n, :erlang, :nodes, []) end)

    # The two survivors are a quorum: they elect a primary and serve.
    [poster | _] = survivors

    # (A post's reply is its number.)
    assert is_integer(
             :erpc.call(
               poster,
               Visor,
               :commit,
               [group, {:post, "bo", "after"}, [timeout: 10_000]],
               15_000
             )
           )
  end

  # Starts groups until, as start_group returns, a member does not run a
  # normal replica yet: the member it waits for is the victim (before the
  # fix, it waited for that member's answer), or another member if it
  # names none. Without such a start in @group_keys (the usual case now:
  # a quorum starts only once every member has its answers), the last
  # group's first member is killed at once.
  defp pick_victim(members) do
    Enum.find_value(1..@group_keys, fn i ->
      group = {ChatRoom, "room #{i}"}
      {:ok, _} = :erpc.call(hd(members), Visor, :start_group, [group])

      found =
        Enum.find_value(members, fn node ->
          case Cluster.status(node, group) do
            %{status: :normal} -> nil
            %{waiting_for: %{nodes: [dead | _]}} -> {group, dead}
            _ -> {group, hd(members -- [node])}
          end
        end)

      cond do
        found -> found
        i == @group_keys -> {group, hd(members)}
        true -> nil
      end
    end)
  end
end
