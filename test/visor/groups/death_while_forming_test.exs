defmodule Visor.Groups.DeathWhileFormingTest do
  # An open defect (docs/testing.md, "Known defects"): it FAILS today,
  # and `mix test` excludes it; `mix test --only known_defect` runs it.
  #
  # `Visor.start_group/2` returns once a quorum of the members runs a
  # normal replica, and a `nodes:` member starts a fresh replica only
  # once **every** member answered its hello (`Visor.Formation.Explicit`).
  # The last member to form often still waits for one answer then: its
  # hello reached a member whose group had not started yet, and the next
  # one goes out a formation tick (100 ms) later. If that member's node
  # dies in between, the last member waits for it for good, and the group
  # is left with one running replica of three: no view change, no commit,
  # until the dead node comes back. One crash, within what three members
  # tolerate, stops a group that had formed and served. It is what made
  # test/visor/chat_room_test.exs's failover test fail once on a loaded
  # machine (the survivors stayed in view 0, one :normal with the dead
  # primary, the other :forming).
  use ExUnit.Case, async: false

  @moduletag :known_defect

  alias Visor.Test.Cluster

  @group_keys 50

  @tag timeout: 180_000
  test "a member killed before the last member heard its answer does not stop the group" do
    {group, survivors} = kill_while_a_member_waits_for_it(5)

    # The two survivors are a quorum: they elect a primary and serve.
    [poster | _] = survivors

    assert {:ok, _} =
             :erpc.call(
               poster,
               Visor,
               :commit,
               [group, {:post, "bo", "after"}, [timeout: 10_000]],
               15_000
             )
  end

  # Starts groups on three new nodes until, as start_group returns, a
  # member still waits for one other member's answer; kills that member's
  # node at once (its OS pid read beforehand). Tries another cluster if
  # the waiting member heard the answer before the kill after all.
  defp kill_while_a_member_waits_for_it(0), do: flunk("the window was never hit")

  defp kill_while_a_member_waits_for_it(tries) do
    members = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
    :ok = Cluster.start_groups_host(members, ChatRoom, replicas: 3)
    os_pids = Map.new(members, &{&1, to_string(:erpc.call(&1, :os, :getpid, []))})

    found =
      Enum.find_value(1..@group_keys, fn i ->
        group = {ChatRoom, "room #{i}"}
        {:ok, _} = :erpc.call(hd(members), Visor, :start_group, [group])

        Enum.find_value(members, fn node ->
          case Cluster.status(node, group) do
            %{status: :forming, waiting_for: %{nodes: [dead]}} -> {group, node, dead}
            _ -> nil
          end
        end)
      end)

    case found do
      nil ->
        kill_while_a_member_waits_for_it(tries - 1)

      {group, waiting, dead} ->
        {_, 0} = System.cmd("kill", ["-9", os_pids[dead]])
        survivors = members -- [dead]

        for n <- survivors,
            do: Cluster.eventually(fn -> dead not in :erpc.call(n, :erlang, :nodes, []) end)

        Process.sleep(1_000)

        if Cluster.status(waiting, group).status == :forming,
          do: {group, survivors},
          else: kill_while_a_member_waits_for_it(tries - 1)
    end
  end
end
