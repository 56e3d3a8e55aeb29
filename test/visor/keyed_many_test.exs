defmodule Visor.KeyedManyTest do
  # Many keyed groups under load while nodes are SIGKILLed and restarted,
  # in memory and disk mode: afterwards every group's counter holds each
  # acknowledged increment exactly once, and nothing twice. The group
  # count is VISOR_MANY_GROUPS (default 100, so the suite stays quick on
  # two cores; `VISOR_MANY_GROUPS=1000 mix test test/visor/keyed_many_test.exs`
  # runs the thousand groups of docs/operations.md's sizing notes).
  # Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter, Load}

  @moduletag :tmp_dir
  @moduletag timeout: 600_000

  @callers 32

  defp groups_wanted, do: String.to_integer(System.get_env("VISOR_MANY_GROUPS", "100"))
  defp rpc(node, fun, args), do: :erpc.call(node, Visor, fun, args, 120_000)

  for mode <- [:memory, :disk] do
    test "#{mode}: every counter of many groups equals its acknowledged increments after a member is killed and restarted, then another",
         %{tmp_dir: tmp} do
      mode = unquote(mode)
      [a, b, c] = members = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1)) |> Enum.sort()
      opts = host_opts(mode, tmp)
      :ok = Cluster.start_groups_host(members, Counter, opts)

      groups = for i <- 1..groups_wanted(), do: {Counter, {:account, i}}
      start_all(a, groups)

      # The callers run on a, which is never killed.
      callers =
        :erpc.call(a, Load, :spawn_callers_over, [groups, @callers, self(), [timeout: 10_000]])

      acks = collect(%{}, length(groups))

      # c dies with its replicas (a third of the groups' primaries): their
      # groups elect new primaries among a and b, and commit on.
      :ok = Cluster.kill_node(c, [a, b])
      acks = collect(acks, map_size(acks) + length(groups))

      # c comes back, its host takes its groups again (from their stores
      # in disk mode, adopted from a and b in memory mode), and each of
      # its replicas catches up; then b dies, and c must count in every
      # group's quorum.
      Cluster.restart_peer(c, [a, b])
      :ok = Cluster.start_groups_host([c], Counter, opts)

      for group <- groups do
        Cluster.eventually(fn -> serving?(c, group) end, 60_000)
      end

      :ok = Cluster.kill_node(b, [a, c])
      acks = collect(acks, map_size(acks) + length(groups))

      Load.stop(callers)
      acks = stopped(acks, @callers)

      for group <- groups do
        final = rpc(c, :get, [group])
        Load.assert_exactly_once(final, acked_in(acks, group))
      end
    end
  end

  defp host_opts(:memory, _tmp), do: fn _node -> [replicas: 3] end

  defp host_opts(:disk, tmp) do
    fn node -> [replicas: 3, storage: :disk, data_dir: Path.join(tmp, Atom.to_string(node))] end
  end

  defp start_all(node, groups) do
    for group <- groups, do: assert({:ok, _} = rpc(node, :start_group, [group]))
  end

  defp serving?(node, group) do
    match?(%{status: :normal}, rpc(node, :status, [group]))
  end

  # Acknowledgements until there are `target`; failed commits (a timeout
  # while a primary was being replaced) are allowed, since such a command
  # may or may not have run, but 60 s without reaching the target fails.
  defp collect(acks, target) do
    deadline = System.monotonic_time(:millisecond) + 60_000
    collect(acks, target, deadline)
  end

  defp collect(acks, target, _deadline) when map_size(acks) >= target, do: acks

  defp collect(acks, target, deadline) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:acked, id, count} -> collect(Map.put(acks, id, count), target, deadline)
      {:failed, _id, _reason} -> collect(acks, target, deadline)
    after
      left -> flunk("no progress: #{map_size(acks)} of #{target} acknowledgements")
    end
  end

  # Every caller's last report arrives before its :stopped.
  defp stopped(acks, 0), do: acks

  defp stopped(acks, callers) do
    receive do
      {:acked, id, count} -> stopped(Map.put(acks, id, count), callers)
      {:failed, _id, _reason} -> stopped(acks, callers)
      {:stopped, _caller, _seq} -> stopped(acks, callers - 1)
    after
      30_000 -> flunk("#{callers} callers did not stop")
    end
  end

  defp acked_in(acks, group) do
    for {{^group, id}, count} <- acks, into: %{}, do: {id, count}
  end
end
