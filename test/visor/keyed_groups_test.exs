defmodule Visor.KeyedGroupsTest do
  # Keyed groups (`{module, key}`, Visor.Groups): started, used, stopped
  # from any node, across real nodes. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  doctest Visor.Groups

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1))
  defp rpc(node, fun, args), do: :erpc.call(node, Visor, fun, args, 30_000)

  test "smoke" do
    [a, b, c, d] = nodes(4)
    members = Enum.sort([a, b, c])
    :ok = Cluster.start_groups_host([a, b, c], Counter, members: [a, b, c])
    assert {:ok, %{members: ^members}} = rpc(d, :start_group, [{Counter, "k1"}])
    assert rpc(d, :commit, [{Counter, "k1"}, {:incr, 1}]) == 1
    assert rpc(a, :commit, [{Counter, "k1"}, {:incr, 2}]) == 2
    assert rpc(d, :get_in, [{Counter, "k1"}, [:count]]) == 2
    IO.inspect(rpc(d, :status, [{Counter, "k1"}]))
    IO.inspect(rpc(a, :which_groups, [Counter]))
    ref = :erpc.call(d, Visor.Test.KeyedHelpers, :pipeline_await, [{Counter, "k1"}, {:incr, 3}])
    IO.inspect(ref)
    IO.inspect(rpc(d, :lookup, [{Counter, "k1"}]))
    assert rpc(d, :stop_group, [{Counter, "k1"}]) == :ok
    IO.inspect(rpc(d, :commit, [{Counter, "k1"}, {:incr, 2}]))
    IO.inspect(rpc(a, :commit, [{Counter, "k1"}, {:incr, 2}]))
    IO.inspect(rpc(a, :status, [{Counter, "k1"}]).status)
    IO.inspect(rpc(d, :stop_group, [{Counter, "k1"}]))
  end
end
