defmodule Visor.KeyedGroupsTest do
  # Keyed groups (`{module, key}`, Visor.Groups): started, used and stopped
  # from any node, across real nodes; a node's death loses nothing; no atom
  # per group; a restarted host rejoins, never fresh. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter, Entity, Fragile, KeyedHelpers}

  doctest Visor.Groups

  defmodule OnDisk do
    @moduledoc "A module whose default group runs in disk mode."
    use Visor, storage: :disk, data_dir: "/nonexistent/visor", tick_ms: 20

    @impl Visor
    def initial_state(_), do: 0

    @impl Visor
    def handle_commit(n, state), do: {:ok, n, state + n}
  end

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1))
  defp rpc(node, fun, args), do: :erpc.call(node, Visor, fun, args, 60_000)

  # Starts `keys` from `node`, a few at a time; returns each one's result.
  defp start_all(node, keys, opts \\ []) do
    keys
    |> Task.async_stream(&rpc(node, :start_group, [{Counter, &1}, opts]),
      max_concurrency: 8,
      timeout: 60_000
    )
    |> Enum.map(fn {:ok, result} -> result end)
  end

  test "50 groups on 3 nodes: a node with no replica starts and uses them; a member's death loses nothing, and it rejoins them when it comes back" do
    [a, b, c, d] = nodes(4)
    members = Enum.sort([a, b, c])
    # d runs no group host: it holds no replica, and calls through members.
    :ok = Cluster.start_groups_host(members, Counter, members: members)
    keys = for i <- 1..50, do: {:user, i}

    for result <- start_all(d, keys), do: assert({:ok, %{members: ^members}} = result)

    # Idempotent: started again, it is the same group.
    assert {:error, {:already_started, %{members: ^members}}} =
             rpc(a, :start_group, [{Counter, {:user, 1}}])

    # Every group is its own state, committed to from the node without a
    # replica (commit, pipeline) and from a member.
    for {:user, i} = key <- keys do
      assert rpc(d, :commit, [{Counter, key}, {:incr, {i, :first}}]) == 1
    end

    for key <- Enum.take(keys, 10) do
      assert :erpc.call(d, KeyedHelpers, :pipeline_await, [{Counter, key}, {:echo, key}]) == key
      assert rpc(b, :commit, [{Counter, key}, {:echo, :member}]) == :member
    end

    # One process's pipelined commands from the node without a replica are
    # applied in the order sent.
    group = {Counter, {:user, 50}}
    commands = for n <- 1..20, do: {:incr, {:pipelined, n}}
    assert :erpc.call(d, KeyedHelpers, :pipeline_all, [group, commands]) == Enum.to_list(2..21)

    assert %{status: :spare, group: {Counter, {:user, 7}}, primary: primary} =
             rpc(d, :status, [{Counter, {:user, 7}}])

    assert primary in members
    assert length(rpc(a, :which_groups, [Counter])) == 50
    assert rpc(d, :which_groups, [Counter]) == []
    cluster = rpc(d, :which_groups, [Counter, :cluster])
    assert Enum.sort(Enum.map(cluster, & &1.key)) == Enum.sort(keys)

    for entry <- cluster do
      assert %{members: ^members, replicas: replicas} = entry
      assert Enum.map(replicas, & &1.node) == members
      assert Enum.count(replicas, &(&1.role == :primary)) == 1
    end

    assert rpc(d, :lookup, [{Counter, {:user, 3}}]) |> Keyword.keys() |> Enum.sort() == members

    # The primaries are spread over the members (a keyed group's members
    # are ranked by key: Visor.Options.keyed/3). One member is killed:
    # about a third of the groups lose their primary.
    primaries = Enum.frequencies_by(keys, &rpc(b, :status, [{Counter, &1}]).primary)
    assert primaries |> Map.keys() |> Enum.sort() == members
    assert Enum.all?(Map.values(primaries), &(&1 >= 5)), inspect(primaries)
    [dead | survivors] = members
    :ok = Cluster.kill_node(dead, survivors ++ [d])

    # Every group still commits, from the node without a replica and from
    # a survivor, and holds every command acknowledged before.
    for {:user, i} = key <- keys do
      expected = if i == 50, do: 22, else: 2
      assert rpc(d, :commit, [{Counter, key}, {:incr, {i, :second}}, 20_000]) == expected
    end

    expected =
      for {:user, i} = key <- keys, into: %{} do
        state = rpc(hd(survivors), :get, [{Counter, key}])
        pipelined = if i == 50, do: for(n <- 1..20, do: {:pipelined, n}), else: []
        assert state.count == 2 + length(pipelined)
        assert state.applied == MapSet.new([{i, :first}, {i, :second} | pipelined])
        {key, state}
      end

    # The dead node comes back, with an empty memory, and its group host:
    # it adopts every group that names it a member, and each of its
    # replicas rejoins (never fresh) and recovers the group's state.
    Cluster.restart_peer(dead, survivors ++ [d])
    :ok = Cluster.start_groups_host([dead], Counter, members: members)

    Cluster.eventually(
      fn -> Enum.count(rpc(dead, :which_groups, [Counter]), &(&1.status == :normal)) == 50 end,
      60_000
    )

    for key <- keys do
      assert {:member, %{recover: true}} =
               :erpc.call(dead, Visor.Formation, :decision, [{Counter, key}])

      Cluster.eventually(fn ->
        rpc(dead, :get, [{Counter, key}, [consistency: :local]]) == expected[key]
      end)
    end
  end

  test "stop_group stops a group everywhere: calls say :no_group; started again, it is new and empty" do
    [a, b, c] = members = nodes(3) |> Enum.sort()
    :ok = Cluster.start_groups_host(members, Counter, replicas: 3)
    group = {Counter, "cart-42"}

    assert {:ok, %{members: ^members}} = rpc(c, :start_group, [group])
    assert rpc(a, :commit, [group, {:incr, :x}]) == 1
    assert rpc(b, :stop_group, [group]) == :ok
    assert rpc(b, :lookup, [group]) == []

    for node <- members do
      assert rpc(node, :commit, [group, {:incr, :y}]) == {:error, :no_group}
      assert rpc(node, :get, [group]) == {:error, :no_group}
      assert rpc(node, :get_in, [group, [:count]]) == {:error, :no_group}
      assert rpc(node, :status, [group]).status == :no_group

      assert :erpc.call(node, KeyedHelpers, :pipeline_await, [group, :meta]) ==
               {:error, :no_group}

      assert rpc(node, :which_groups, [Counter]) == []
    end

    assert rpc(c, :stop_group, [group]) == {:error, :no_group}
    assert rpc(a, :commit, [{Counter, "never started"}, {:incr, :z}]) == {:error, :no_group}

    # Its records went with it: the same key forms a new, empty group.
    assert {:ok, _} = rpc(a, :start_group, [group])
    assert rpc(b, :get_in, [group, [:count]]) == 0
  end

  # The member cut off from a stop still runs the old group, with its
  # log. Started again as soon as the cut heals, with the same members
  # (the same cluster id), the group must be new and empty: the old
  # replica is stopped (told by a node that stopped it, or by the start),
  # never a member of the new group with its old log.
  test "a group stopped while a member was cut off, started again at once after the cut heals, is new and empty" do
    [a, b, c] = members = nodes(3) |> Enum.sort()
    :ok = Cluster.start_groups_host(members, Counter, members: members)
    group = {Counter, "restarted key"}
    assert {:ok, _} = rpc(a, :start_group, [group])
    assert rpc(a, :commit, [group, {:incr, :old}]) == 1

    :ok = Cluster.partition([a, b], [c])
    assert rpc(a, :stop_group, [group]) == :ok
    assert rpc(c, :which_groups, [Counter]) |> Enum.map(& &1.members) == [members]
    :ok = Cluster.heal([a, b], [c])

    assert {:ok, %{members: ^members}} = rpc(b, :start_group, [group])
    assert rpc(a, :commit, [group, {:incr, :new}]) == 1

    Cluster.eventually(fn -> rpc(c, :get_in, [group, [:count], [timeout: 2_000]]) == 1 end)
    assert rpc(c, :get, [group]).applied == MapSet.new([:new])
  end

  test "one group started from two nodes at once is one group" do
    [a, b, c] = members = nodes(3) |> Enum.sort()
    :ok = Cluster.start_groups_host(members, Counter, replicas: 3)
    group = {Counter, %{tenant: "t1"}}

    results =
      [a, b, c]
      |> Enum.map(&Task.async(fn -> rpc(&1, :start_group, [group]) end))
      |> Enum.map(&Task.await(&1, 60_000))

    for result <- results do
      assert match?({:ok, %{members: ^members}}, result) or
               match?({:error, {:already_started, %{members: ^members}}}, result)
    end

    assert rpc(a, :lookup, [group]) |> Keyword.keys() |> Enum.sort() == members
    assert rpc(c, :commit, [group, {:incr, :once}]) == 1
    assert rpc(b, :get_in, [group, [:count]]) == 1
  end

  test "replicas: n places each group on n of the hosts, by rendezvous hashing of its key" do
    nodes = nodes(3) |> Enum.sort()
    :ok = Cluster.start_groups_host(nodes, Counter, replicas: 2)

    for i <- 1..6 do
      group = {Counter, i}
      expected = Visor.Groups.place(group, nodes, 2) |> Enum.sort()
      assert {:ok, %{members: ^expected}} = rpc(hd(nodes), :start_group, [group])
      assert rpc(hd(nodes), :lookup, [group]) |> Keyword.keys() |> Enum.sort() == expected
      [outside] = nodes -- expected
      assert rpc(outside, :commit, [group, {:incr, i}]) == 1
    end

    assert rpc(hd(nodes), :start_group, [{Counter, :x}, [replicas: 4]]) ==
             {:error, {:not_enough_nodes, 4, 3}}

    [a | _] = nodes
    [spare] = nodes(1)

    assert rpc(a, :start_group, [{Counter, :y}, [members: [a, spare]]]) ==
             {:error, {:no_group_host, spare}}

    # Any node may ask a host to start a group: junk is refused, and the
    # host goes on.
    host = :erpc.call(a, Process, :whereis, [Visor.Groups.host(Counter)])

    for request <- [
          {:visor_start, :z, ["a@h", 1]},
          {:visor_start, :z, %{members: ["a@h", 1], id: 1}},
          {:visor_start, :z, %{members: [:b@h], id: 1}},
          {:visor_start, :z, %{members: [a], id: -1}},
          {:visor_start, nil, %{members: [a], id: 1}},
          :junk
        ] do
      assert {:error, _} = :erpc.call(a, GenServer, :call, [host, request])
    end

    assert :erpc.call(a, Process, :whereis, [Visor.Groups.host(Counter)]) == host
  end

  test "the default group and keyed groups of one module coexist, with distinct clusters" do
    members = nodes(3) |> Enum.sort()
    :ok = Cluster.start_group(members, Counter, nodes: members)
    :ok = Cluster.start_groups_host(members, Counter, members: members)
    [a, b, _c] = members

    assert {:ok, _} = rpc(a, :start_group, [{Counter, :k}])
    assert rpc(a, :commit, [Counter, {:incr, :default}]) == 1
    assert rpc(b, :commit, [{Counter, :k}, {:incr, :keyed}]) == 1
    assert rpc(b, :commit, [{Counter, nil}, {:incr, :default_again}]) == 2
    assert rpc(a, :get_in, [{Counter, :k}, [:count]]) == 1

    default = Cluster.status(a, Counter)
    keyed = rpc(a, :status, [{Counter, :k}])
    refute Map.has_key?(default, :group)
    # The default group's cluster id is the one it always had (version 2,
    # no key), so its disk store is unchanged too; the keyed one differs.
    assert default.cluster ==
             Base.encode16(Visor.Options.cluster_id(Counter, members), case: :lower)

    %{id: id} = :erpc.call(a, Visor.Lifetime, :hosting, [{Counter, :k}])
    settings = Visor.Options.validate!(Counter, nodes: members).settings

    assert keyed.cluster ==
             Base.encode16(Visor.Options.cluster_id({Counter, :k}, members, settings, id),
               case: :lower
             )

    refute keyed.cluster == default.cluster
  end

  test "initial_state/2: every member builds a keyed group's start state from its key; the default group starts from initial_state/1" do
    members = nodes(3) |> Enum.sort()
    [a, b, c] = members
    :ok = Cluster.start_group(members, Entity, nodes: members, init_arg: :shared)
    :ok = Cluster.start_groups_host(members, Entity, members: members, init_arg: :shared)

    assert {:ok, _} = rpc(a, :start_group, [{Entity, {:cart, 2}}])
    assert {:ok, _} = rpc(b, :start_group, [{Entity, {:cart, 3}}])
    assert rpc(c, :commit, [{Entity, {:cart, 3}}, {:add, :more}]) == :ok

    # Read on each member's own replica: each built it from the key.
    for node <- members do
      Cluster.eventually(fn ->
        rpc(node, :get, [{Entity, {:cart, 2}}, [consistency: :local]]) ==
          %{key: {:cart, 2}, init_arg: :shared, items: [:item, :item]}
      end)

      Cluster.eventually(fn ->
        rpc(node, :get_in, [{Entity, {:cart, 3}}, [:items], [consistency: :local]]) ==
          [:more, :item, :item, :item]
      end)

      Cluster.eventually(fn ->
        rpc(node, :get, [Entity, [consistency: :local]]) == %{key: :default, init_arg: :shared}
      end)
    end
  end

  test "no atom per group: 200 groups on a node create none" do
    [node] = nodes(1)
    :ok = Cluster.start_groups_host([node], Counter, replicas: 1)
    # The first group loads the code the others use.
    assert {:ok, _} = rpc(node, :start_group, [{Counter, "warm-up"}])
    before = :erpc.call(node, :erlang, :system_info, [:atom_count])

    for result <- start_all(node, Enum.map(1..200, &"key-#{&1}")), do: assert({:ok, _} = result)
    assert rpc(node, :commit, [{Counter, "key-200"}, {:incr, :one}]) == 1
    assert length(rpc(node, :which_groups, [Counter])) == 201

    created = :erpc.call(node, :erlang, :system_info, [:atom_count]) - before
    assert created < 20, "#{created} atoms created by 200 groups"
  end

  test "a group that cannot start on a node is tried again less and less often, the others serve meanwhile, and it rejoins once it can" do
    [a, _b, c] = members = nodes(3) |> Enum.sort()
    :ok = Cluster.start_groups_host(members, Fragile, members: members)
    group = {Fragile, "fragile"}
    assert {:ok, _} = rpc(a, :start_group, [group])
    assert rpc(a, :commit, [group, :incr]) == 1

    # From now on its start state cannot be built on c, and its processes
    # there exit: tried 1 s later, then 2 s, then 4 s after that...
    :ok = Fragile.raise_on(c, true)
    before = Fragile.attempts(c)
    supervisor = :erpc.call(c, Visor.Supervisor, :whereis, [group, :supervisor])
    :erpc.call(c, Process, :exit, [supervisor, :kill])
    Process.sleep(7_500)
    attempts = Fragile.attempts(c) - before
    # At about 1, 3 and 7 s; a retry every second would be 7.
    assert attempts in 2..4, "#{attempts} attempts in 7.5 s"
    assert rpc(a, :commit, [group, :incr]) == 2

    # Mended, the next try (8 s after the last) starts it; it rejoins.
    refute :erpc.call(c, Visor.Supervisor, :whereis, [group, :server])
    :ok = Fragile.raise_on(c, false)

    Cluster.eventually(
      fn ->
        :erpc.call(c, Visor.Supervisor, :whereis, [group, :server]) &&
          rpc(c, :status, [group]).status == :normal
      end,
      15_000
    )

    assert rpc(c, :get, [group, [consistency: :local]]) == 2
  end

  test "a restarted host (Visor.Groups) starts its groups again, rejoining, never fresh" do
    [a, b, c] = members = nodes(3) |> Enum.sort()
    :ok = Cluster.start_groups_host(members, Counter, members: members)
    groups = for i <- 1..3, do: {Counter, i}
    for g <- groups, do: assert({:ok, _} = rpc(a, :start_group, [g]))
    for g <- groups, do: assert(rpc(a, :commit, [g, {:incr, :kept}]) == 1)

    # One node's host restarts (its parent restarts it), and starts its
    # groups again: each replica rejoins and recovers the state.
    :ok = Cluster.restart_groups_hosts([c], Counter)

    for g <- groups do
      Cluster.eventually(fn -> rpc(c, :status, [g]).status == :normal end, 15_000)

      assert {:member, %{recover: true}} = :erpc.call(c, Visor.Formation, :decision, [g])

      assert rpc(c, :get, [g, [consistency: :local]]).applied == MapSet.new([:kept])
    end

    # One group's processes exit on b: its host starts them again, and
    # its replica rejoins too.
    [g | _] = groups
    supervisor = :erpc.call(b, Visor.Supervisor, :whereis, [g, :supervisor])
    :erpc.call(b, Process, :exit, [supervisor, :kill])
    Cluster.eventually(fn -> rpc(b, :status, [g]).status == :normal end, 15_000)
    assert match?({:member, %{recover: true}}, :erpc.call(b, Visor.Formation, :decision, [g]))

    # Every host at once: every replica lost its state, so none may start
    # fresh (an empty state served as if nothing had been committed); they
    # all stay recovering.
    :ok = Cluster.restart_groups_hosts(members, Counter)
    Process.sleep(3_000)

    for node <- [a, b, c], g <- groups do
      assert rpc(node, :status, [g]).status in [:recovering, :forming]

      assert match?(
               {:member, %{recover: true}},
               :erpc.call(node, Visor.Formation, :decision, [g])
             )
    end
  end

  test "a keyed group's lifetime record outlives the process that wrote it, in a table no application owns" do
    group = {__MODULE__, make_ref()}

    {pid, monitor} =
      spawn_monitor(fn ->
        Visor.Lifetime.put_formed(group, :config, %{members: [node()]})
        Visor.Lifetime.host(group, %{members: [node()], id: 7})
      end)

    assert_receive {:DOWN, ^monitor, :process, ^pid, :normal}
    assert Visor.Lifetime.formed(group, :config) == %{members: [node()]}
    assert Visor.Lifetime.hosting(group) == %{members: [node()], id: 7}

    keeper = Process.whereis(Visor.Lifetime.Keeper)
    assert :ets.info(Visor.Lifetime, :owner) == keeper
    assert Process.info(keeper, :links) == {:links, []}

    assert Process.info(keeper, :group_leader) ==
             Process.info(Process.whereis(:init), :group_leader)

    assert Visor.Lifetime.forget(group) == :ok
    assert Visor.Lifetime.formed(group, :config) == nil
  end

  test "Visor.Groups refuses bad and misplaced options, naming them" do
    # Disk mode (test/visor/keyed_disk_test.exs) checks data_dir as a
    # default group does, and the store name the engine will record.
    assert_raise ArgumentError, ~r/data_dir must be a non-empty string/, fn ->
      Visor.Groups.start_link(module: Counter, storage: :disk, data_dir: "")
    end

    assert_raise ArgumentError, ~r/storage: :disk needs data_dir/, fn ->
      Visor.Groups.start_link(module: Counter, storage: :disk)
    end

    long = String.to_atom("Elixir." <> String.duplicate("A", 230))

    assert_raise ArgumentError, ~r/too long for keyed groups in disk mode/, fn ->
      Visor.Groups.start_link(module: long, storage: :disk, data_dir: "/tmp/x")
    end

    assert_raise ArgumentError, ~r/not nodes/, fn ->
      Visor.Groups.start_link(module: Counter, nodes: [node()])
    end

    assert_raise ArgumentError, ~r/replicas must be/, fn ->
      Visor.Groups.start_link(module: Counter, replicas: 0)
    end

    assert_raise ArgumentError, ~r/default group/, fn -> Visor.start_group(Counter) end

    # The module's `use Visor` defaults apply, but its default group's
    # storage is its own: a keyed group never opens that store.
    {:ok, pid} = Visor.Groups.start_link(module: OnDisk)
    assert Visor.Groups.host_options(OnDisk).opts == [busy_poll_us: 0, tick_ms: 20]
    Supervisor.stop(pid)
  end
end
