defmodule Visor.ReviewCbTest do
  # Review of checkpoint_bytes (branch logbytes): a `nodes:` member started
  # with another checkpoint_bytes than the others. checkpoint_bytes was left
  # out of the Elixir cluster id, and explicit formation compares settings
  # only when a hello names another cluster id (`Visor.Formation.Explicit.
  # hello/4`: a hello with the same id goes to `judge/3`, and its verdict
  # is `:ok`). So the three decided, started their replicas, and the odd
  # one's engine dropped every message of the others (another wire
  # cluster, `vsr::Config::wire_cluster`): it never executed anything, with
  # no refusal and no mismatch logged. Now the id holds the setting
  # whenever it is not its default (`Visor.Options.cluster_id/4`). Compare
  # settings_test.exs, "nodes: members with different pool sizes never
  # form a cluster together". Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Options
  alias Visor.Test.{Cluster, Counter}

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1))

  test "nodes: a member with another checkpoint_bytes is not let in silently" do
    [a, b, c] = nodes = nodes(3)

    opts = fn n ->
      if n == c, do: [nodes: nodes, checkpoint_bytes: 4096], else: [nodes: nodes]
    end

    for n <- nodes do
      {:ok, _} = :erpc.call(n, Cluster, :start_group_here, [Counter, opts.(n), :critical])
    end

    Process.sleep(1_500)
    statuses = Map.new(nodes, &{&1, Cluster.status(&1, Counter)})

    # What happens today: a and b form and commit; c decided too, runs a
    # replica, and never executes anything (nor is it refused).
    if Enum.all?([a, b], &(statuses[&1].status != :forming)) do
      assert :erpc.call(a, Counter, :commit, [{:incr, 1}]) == 1
      assert :erpc.call(b, Counter, :commit, [{:incr, 1}]) == 2
      # c's caller: c's engine sends to the primary, which drops it.
      via_c = :erpc.call(c, Counter, :commit, [{:incr, 1}, [timeout: 2_000]], 5_000)
      Process.sleep(1_000)
      status_c = Cluster.status(c, Counter)

      flunk(
        "a member with checkpoint_bytes 4096 among members with the default was let in: " <>
          "a: #{inspect(Map.take(statuses[a], [:status, :op]))}, " <>
          "c: #{inspect(Map.take(status_c, [:status, :op, :refused]))}, " <>
          "a commit through c: #{inspect(via_c)}"
      )
    end

    # What the settings test expects of any shared setting: nobody forms
    # (or c is refused, naming the setting).
    for n <- nodes, do: assert(statuses[n].status in [:forming, :refused], "#{n} formed")
  end

  # The same with stores of a release before checkpoint_bytes: a store
  # records none. It ran with the default, so a member restarted from it
  # with another budget is refused, as for any shared setting changed over
  # a restart; one restarted with the default is accepted.
  test "old stores: a member restarted with another checkpoint_bytes is refused" do
    alias Visor.Formation.Restore

    nodes = [:a@old, :b@old, :c@old]

    old = %{
      client_table_max: 4096,
      checkpoint_interval: 10_000,
      checkpoint_chunk_bytes: 1_048_576
    }

    cluster = Options.cluster_id(__MODULE__, nodes, old)

    probe = fn index ->
      %{
        group: "g",
        replica: index,
        member: <<index::little-unsigned-128>>,
        joined: 0,
        role: :member,
        epoch: 0,
        cluster: cluster,
        meta: Restore.store_meta(nodes, old),
        view: 3,
        commit: 500
      }
    end

    expected = fn node, budget ->
      settings = Map.put(old, :checkpoint_bytes, budget)

      %{
        group: "g",
        node: node,
        dir: "/d",
        settings: settings,
        membership: {:nodes, nodes, Options.cluster_id(__MODULE__, nodes, settings)}
      }
    end

    assert {:error, _} = Restore.check({:ok, probe.(1)}, expected.(:b@old, 4096))

    assert {:ok, %{settings: %{checkpoint_bytes: 67_108_864}}} =
             Restore.check({:ok, probe.(2)}, expected.(:c@old, 67_108_864))

    # A member with another budget hellos with another cluster id: formation
    # compares their settings (a mismatch), instead of judging it a member.
    refute Options.cluster_id(__MODULE__, nodes, Map.put(old, :checkpoint_bytes, 4096)) == cluster
  end
end
