defmodule Visor.KeyedGroupsReviewTest do
  # Adversarial review of keyed groups (safety): each test showed a defect
  # (tagged :review_break then); all are fixed, and run with the suite.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1))
  defp rpc(node, fun, args), do: :erpc.call(node, Visor, fun, args, 60_000)
  defp host_pid(node), do: :erpc.call(node, Process, :whereis, [Visor.Groups.host(Counter)])

  # Visor.Groups.Host.members/2 rescues only ArgumentError; Options.nodes!/2
  # raises FunctionClauseError from Enum.all?/2 on an improper list. Any
  # connected node can send {:visor_adopt, ...} (or {:visor_start, ...}):
  # the host crashes, and a few crashes in 5 s take Visor.Groups down, its
  # registry and every keyed group of the module with it. Done on every
  # member, every replica has lost its memory: they restart recovering
  # (their lifetime records say they ran) with no one to recover from, so
  # the acknowledged command is never served again.
  @tag timeout: 180_000
  test "a peer's adopt message with an improper member list crashes the host; repeated, it wipes every keyed group" do
    [a, b, c] = members = nodes(3) |> Enum.sort()
    :ok = Cluster.start_groups_host(members, Counter, members: members)
    group = {Counter, "acked"}
    assert {:ok, _} = rpc(a, :start_group, [group])
    assert rpc(a, :commit, [group, {:incr, :acked}]) == 1

    hosts = Map.new(members, &{&1, host_pid(&1)})

    for _ <- 1..5, node <- members do
      Cluster.eventually(fn -> host_pid(node) end)
      host = {Visor.Groups.host(Counter), node}
      send(host, {:visor_adopt, :junk, [node | :junk]})
      send(host, {:visor_adopt, node, :junk, [node | :junk]})
      send(host, {:visor_adopt, node, :junk, %{members: [node | :junk], id: 1}})
      send(host, {:visor_stale, :junk, [node | :junk]})
      send(host, {:visor_stale, :junk, %{members: [node | :junk], id: 1}})

      assert {:error, {:bad_members, _}} =
               GenServer.call(host, {:visor_start, :junk, [node | :junk]})

      assert {:error, {:bad_members, _}} =
               GenServer.call(host, {:visor_start, :junk, %{members: [node | :junk], id: 1}})

      # An undo names an instance checked as a start's is.
      for instance <- [:junk, %{members: [node], id: :junk}, %{members: [node | :junk], id: 1}] do
        assert {:error, {:bad_members, _}} =
                 GenServer.call(host, {:visor_undo, "acked", instance})
      end

      Process.sleep(50)
    end

    Process.sleep(2_000)

    # The acknowledged command is still there, and the group commits.
    assert rpc(b, :commit, [group, {:incr, :after}, 20_000]) == 2
    assert rpc(c, :get_in, [group, [:count]]) == 2

    # The host survives a peer's junk: the same process goes on.
    for node <- members, do: assert(host_pid(node) == hosts[node])
  end

  # Visor.Groups.Host.start/3 checks only the running processes, not what
  # the host has recorded that it hosts (Visor.Lifetime.hosting/1): in the
  # 1 s between a group's processes exiting and the host starting them
  # again, a start_group with other members is not refused with
  # {:error, {:already_started, ...}} as documented; it overwrites the
  # hosted record and starts a new group (another cluster id, no lifetime
  # record under it) on those nodes. If they are a majority of the old
  # group, the new group forms fresh and empty: the acknowledged command
  # is gone, and the old group's replicas there are never started again.
  @tag timeout: 180_000
  test "start_group with other members during a member's restart window replaces the group, losing its state" do
    [a, b, c, d] = nodes(4) |> Enum.sort()
    old = [a, b, c]
    :ok = Cluster.start_groups_host([a, b, c, d], Counter, members: old)
    group = {Counter, "cart-7"}
    assert {:ok, %{members: ^old}} = rpc(a, :start_group, [group])
    assert rpc(a, :commit, [group, {:incr, :acked}]) == 1

    # The group's processes exit on a and b (a crash); their hosts will
    # start them again in 1 s. Meanwhile an "ensure started" call with
    # other members (a node joined, placement changed) comes in.
    for node <- [a, b] do
      supervisor = :erpc.call(node, Visor.Supervisor, :whereis, [group, :supervisor])
      :erpc.call(node, Process, :exit, [supervisor, :kill])
    end

    # Once the old processes have unregistered (well within the 1 s).
    Process.sleep(300)

    result = rpc(d, :start_group, [group, [members: [a, b, d]]])

    # Documented: the running group (members a, b, c) refuses other members.
    refute match?({:ok, _}, result), "replaced by a new group: #{inspect(result)}"

    # a and b are a majority of the group that lost its memory at once:
    # its state cannot be served again (docs/operations.md), but it must
    # never be replaced by a fresh one. They stay members of the group
    # (a, b, c), and no replica of it starts fresh.
    Process.sleep(3_000)

    for node <- [a, b] do
      assert %{members: ^old} = :erpc.call(node, Visor.Lifetime, :hosting, [group])

      refute match?(
               {:member, %{recover: false}},
               :erpc.call(node, Visor.Formation, :decision, [group])
             ),
             "#{node}'s replica started fresh"
    end

    assert rpc(d, :which_groups, [Counter]) == []
    assert rpc(c, :get_in, [group, [:count], [timeout: 2_000]]) in [1, {:error, :timeout}]
  end

  # 0.0 and -0.0 are one key to the Registry, the lifetime table and maps
  # (=:= on OTP < 27), but term_to_binary tells them apart, so their
  # cluster ids differ (Visor.Options.cluster_id/3 hashes the key). A start
  # under -0.0 while the group's processes of 0.0 restart finds the
  # lifetime record (same row) but no cluster formed under the new id:
  # every member forms fresh, and the acknowledged state is gone.
  @tag timeout: 180_000
  test "a key equal to a running group's key but encoded differently (-0.0 vs 0.0) restarts it fresh" do
    [a, b, c] = members = nodes(3) |> Enum.sort()
    :ok = Cluster.start_groups_host(members, Counter, members: members)
    group = {Counter, 0.0}
    assert {:ok, _} = rpc(a, :start_group, [group])
    assert rpc(a, :commit, [group, {:incr, :acked}]) == 1

    # Every member's replica has taken part before all lose their memory:
    # one whose formation had not decided yet never promised anything, and
    # may rightly start fresh.
    for node <- members do
      Cluster.eventually(fn -> rpc(node, :status, [group]).status == :normal end, 15_000)
    end

    # Every member's processes exit (a crash loop, say): each host starts
    # them again in 1 s, recovering. A start_group comes in meanwhile.
    for node <- members do
      supervisor = :erpc.call(node, Visor.Supervisor, :whereis, [group, :supervisor])
      :erpc.call(node, Process, :exit, [supervisor, :kill])
    end

    # Once the old processes have unregistered (well within the 1 s).
    Process.sleep(300)

    # Built at run time: the compiler (OTP < 27) merges literals that are
    # =:=, so a -0.0 literal here would be 0.0.
    negative_zero = :erlang.binary_to_term(<<131, 70, 0x80, 0::56>>)
    refute :erlang.term_to_binary(negative_zero) == :erlang.term_to_binary(0.0)
    _ = rpc(b, :start_group, [{Counter, negative_zero}])
    Process.sleep(3_000)

    # No replica may start fresh: they all lost their memory.
    for node <- members do
      refute match?(
               {:member, %{recover: false}},
               :erpc.call(node, Visor.Formation, :decision, [group])
             ),
             "#{node}'s replica started fresh"
    end

    assert rpc(c, :get_in, [group, [:count], [timeout: 2_000]]) in [1, {:error, :timeout}]
  end
end

defmodule Visor.KeyedGroupsReviewNoGroupTest do
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  defp rpc(node, fun, args), do: :erpc.call(node, Visor, fun, args, 60_000)

  # Visor.call/3 on a member turns any :not_running of its local server
  # (an exit :shutdown/:normal/:noproc during the call) into {:error,
  # :no_group}, documented as "no connected node holds the group ...
  # Nothing was applied". A sibling's crash restarts the group's processes
  # (one_for_all): the server is shut down with the caller's command in
  # flight, which the primary may already have committed and applied. The
  # caller is told the group does not exist and nothing was applied; a
  # retry applies the command twice.
  @tag timeout: 180_000
  test "a member's commit in flight when its processes restart answers :no_group, though the group exists and the command was applied" do
    # A long tick: a backup learns of a commit up to a tick after the
    # primary applied it, which widens the window.
    members = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
    :ok = Cluster.start_groups_host(members, Counter, members: members, tick_ms: 500)
    group = {Counter, "in-flight"}
    assert {:ok, %{primary: a}} = rpc(List.last(members), :start_group, [group])
    # b: a backup, whose processes restart under its callers.
    [b | _] = members -- [a]

    results =
      for i <- 1..12 do
        Cluster.eventually(fn -> rpc(b, :status, [group]).status == :normal end, 15_000)
        caller = Task.async(fn -> rpc(b, :commit, [group, {:incr, i}, [timeout: 5_000]]) end)
        Process.sleep(rem(i, 3))
        router = :erpc.call(b, Visor.Supervisor, :whereis, [group, :router])
        :erpc.call(b, Process, :exit, [router, :kill])
        result = Task.await(caller, 10_000)
        Process.sleep(1_500)
        {i, result}
      end

    applied =
      Cluster.eventually(fn -> rpc(a, :get, [group, [timeout: 5_000]]) end, 15_000).applied

    lies = for {i, {:error, :no_group}} <- results, do: {i, MapSet.member?(applied, i)}

    assert lies == [],
           "the group answered :no_group ({id, applied?}): #{inspect(lies)}; all: #{inspect(results)}"
  end
end

defmodule Visor.KeyedGroupsReviewStrayTest do
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  defp rpc(node, fun, args), do: :erpc.call(node, Visor, fun, args, 60_000)

  # Visor.Groups.Control.start/2 asks every chosen member to start the
  # group at once, and returns the first refusal: a start_group whose
  # members differ from the running group's (another node's view of the
  # hosts, a node that joined) answers {:error, {:already_started, ...}},
  # but the members that did not run the key started a replica of the
  # other membership, which never forms and is never stopped: it shows in
  # lookup/which_groups, and its host offers it for adoption to every
  # node that connects.
  @tag timeout: 180_000
  test "a refused start_group leaves a stray replica on the members that accepted it" do
    [a, b, c, d] = Cluster.start_peers(4) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
    running = [a, b, c]
    :ok = Cluster.start_groups_host([a, b, c, d], Counter, members: running)
    group = {Counter, "stray"}
    assert {:ok, %{members: ^running}} = rpc(a, :start_group, [group])

    assert {:error, {:already_started, %{members: ^running}}} =
             rpc(d, :start_group, [group, [members: [a, b, d]]])

    assert rpc(d, :which_groups, [Counter]) == [], "a replica of a refused start runs on d"
    assert rpc(a, :lookup, [group]) |> Keyword.keys() |> Enum.sort() == running
  end

  # The stray replica on d names a, b and d. When a's VM restarts, its
  # host adopts the groups other nodes run that name it, from every node,
  # first answer first (Visor.Groups.Host.adopt_from/2): if d answers
  # before b, a starts the stray membership, which never forms, and never
  # rejoins the running group: that group has lost a replica for good.
  @tag timeout: 180_000
  test "a restarted node adopts a stray replica's membership instead of the running group's" do
    [a, b, c, d] = Cluster.start_peers(4) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
    running = [a, b, c]
    :ok = Cluster.start_groups_host([a, b, c, d], Counter, members: running)
    group = {Counter, "stray"}
    assert {:ok, %{members: ^running}} = rpc(a, :start_group, [group])
    assert rpc(a, :commit, [group, {:incr, :acked}]) == 1
    assert {:error, {:already_started, _}} = rpc(d, :start_group, [group, [members: [a, b, d]]])

    :ok = Cluster.kill_node(a, [b, c, d])
    # d connects to the restarted a first.
    Cluster.restart_peer(a, [d, b, c])
    :ok = Cluster.start_groups_host([a], Counter, members: running)

    # Time to adopt and rejoin (a rejoin takes well under a second here).
    Process.sleep(8_000)
    on_a = rpc(a, :which_groups, [Counter])

    assert match?([%{members: ^running, status: :normal}], on_a),
           "a runs #{inspect(on_a)}, not the running group (members #{inspect(running)})"
  end
end
