defmodule Visor.Formation.WaitingLogTest do
  # A group that does not form says whom it waits for: one line per change
  # of that set (not one per 100 ms retry) and a reminder every 5 s, naming
  # the nodes, with the
  # group's Logger metadata, and `status().waiting_for` the same. The formation runs here, in the test node
  # (its lines are captured), its peer on a real node.
  #
  # async: false: capture_log also takes other processes' lines, and the
  # group (Counter) runs in the test node itself.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Visor.Test.{Cluster, Counter}

  @capture [level: :info, format: "$metadata[$level] $message\n", metadata: [:visor_group]]

  test "nodes: one line naming the members that have not answered, again only when they change" do
    [peer] = Cluster.start_peers(1) |> Enum.map(&elem(&1, 1))
    # A member that never starts: the cluster cannot form.
    ghost = :"visor_ghost@#{peer |> Atom.to_string() |> String.split("@") |> List.last()}"
    members = Enum.sort([node(), peer, ghost])
    [first, second] = members -- [node()]

    log =
      capture_log(@capture, fn ->
        start_supervised!({Counter, nodes: members})

        assert %{status: :forming, waiting_for: %{nodes: [^first, ^second]}} =
                 Visor.status(Counter)

        # Ticks go by: nothing new to say.
        Process.sleep(500)

        {:ok, _} =
          :erpc.call(peer, Cluster, :start_group_here, [Counter, [nodes: members], :error])

        Cluster.eventually(fn -> waiting(Counter) == %{nodes: [ghost]} end)
        Process.sleep(500)
        stop_supervised!(Counter)
      end)

    group = "visor_group=#{inspect(Counter)} [info] #{inspect(Counter)}: waiting for"
    both = "#{group} #{first}, #{second} to answer"
    ghost_only = "#{group} #{ghost} to answer"

    assert count(log, both) == 1, log
    assert count(log, ghost_only) == 1, log
    assert count(log, "waiting for") == 2, log
    assert first_index(log, both) < first_index(log, ghost_only)
    assert every_group_line_has_metadata?(log)
  end

  test "cluster_size: one line saying how many more nodes, and which were found" do
    [peer] = Cluster.start_peers(1) |> Enum.map(&elem(&1, 1))

    log =
      capture_log(@capture, fn ->
        start_supervised!({Counter, cluster_size: 3})
        assert %{status: :forming, waiting_for: %{more: 2, found: []}} = Visor.status(Counter)
        Process.sleep(500)

        {:ok, _} =
          :erpc.call(peer, Cluster, :start_group_here, [Counter, [cluster_size: 3], :error])

        Cluster.eventually(fn -> waiting(Counter) == %{more: 1, found: [peer]} end)
        Process.sleep(500)
        stop_supervised!(Counter)
      end)

    group = "visor_group=#{inspect(Counter)} [info] #{inspect(Counter)}: waiting for"

    assert count(log, "#{group} 2 more connected nodes running the group") == 1, log
    assert count(log, "(cluster_size: 3; found: none yet)") == 1, log
    assert count(log, "#{group} 1 more connected node running the group") == 1, log
    assert count(log, "(cluster_size: 3; found: #{peer})") == 1, log
    assert count(log, "waiting for") == 2, log
    assert every_group_line_has_metadata?(log)
  end

  test "a group that still waits says so again every few seconds" do
    # A member that never starts: the cluster cannot form.
    ghost = :"visor_ghost@#{node() |> Atom.to_string() |> String.split("@") |> List.last()}"
    members = Enum.sort([node(), ghost])

    log =
      capture_log(@capture, fn ->
        start_supervised!({Counter, nodes: members})
        Process.sleep(5_600)
        stop_supervised!(Counter)
      end)

    line =
      "visor_group=#{inspect(Counter)} [info] #{inspect(Counter)}: waiting for #{ghost} to answer"

    # Once at start, and once more after 5 s: a reminder, not a line per tick.
    assert count(log, line) == 2, log
  end

  # Whom a forming node waits for, as its status shows it.
  defp waiting(module), do: Visor.status(module).waiting_for

  defp every_group_line_has_metadata?(log) do
    log
    |> String.split("\n")
    |> Enum.filter(&(&1 =~ "#{inspect(Counter)}:"))
    |> Enum.all?(&String.starts_with?(&1, "visor_group=#{inspect(Counter)} "))
  end

  defp count(log, line), do: length(String.split(log, line)) - 1

  defp first_index(log, line) do
    {index, _} = :binary.match(log, line)
    index
  end
end
