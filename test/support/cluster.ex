defmodule Visor.Test.Cluster do
  @moduledoc """
  Starts throw-away BEAM peer nodes (OTP's `:peer`) for distributed tests.

      peers = Visor.Test.Cluster.start_peers(3)   # [{pid, node}, ...]

  Call it from a test or a `setup` block: the peers are stopped by an
  `on_exit` callback. Every peer loads the test node's code paths, shares
  its cookie, runs `:elixir` and `:logger`, and is connected to every other
  peer, so the group is a full mesh like a real cluster.
  """

  import ExUnit.Callbacks, only: [on_exit: 1]

  # A loaded 2-core CI machine can take seconds to boot a VM.
  @boot_timeout 30_000

  @doc "Makes this node distributed (short names) unless it already is."
  def ensure_distributed! do
    if Node.alive?() do
      :ok
    else
      # Distribution needs the port mapper; `make deps` starts it, but a
      # plain `mix test` should work too (-daemon is a no-op if it runs).
      if epmd = System.find_executable("epmd"), do: System.cmd(epmd, ["-daemon"])
      name = :"visor_test_#{System.unique_integer([:positive])}_#{System.pid()}"

      case :net_kernel.start([name, :shortnames]) do
        {:ok, _} ->
          :ok

        # Another test may have won the race to start distribution.
        {:error, {:already_started, _}} ->
          :ok

        {:error, reason} ->
          raise "cannot start distribution (is epmd running? `epmd -daemon`): " <>
                  inspect(reason)
      end
    end
  end

  @doc """
  Starts `n` connected peers and returns `[{pid, node}]` in start order.

  Peers are started with `:peer.start/1`, not `start_link/1`: a test that
  kills a node on purpose must not take the test process down with it.
  They still die with the test node, as a peer halts when it loses its
  connection to the node that started it.
  """
  def start_peers(n) when is_integer(n) and n > 0 do
    ensure_distributed!()
    peers = Enum.map(1..n, fn _ -> start_peer() end)
    on_exit(fn -> Enum.each(peers, &stop_peer/1) end)
    mesh!(Enum.map(peers, &elem(&1, 1)))
    peers
  end

  @doc "Stops one peer; a no-op if it is already gone."
  def stop_peer({pid, _node}) do
    :peer.stop(pid)
  catch
    :exit, _ -> :ok
  end

  @doc """
  Polls `fun` every 10 ms until it returns a truthy value, which is
  returned; fails the test after `timeout` ms. For conditions that settle
  asynchronously, such as a node noticing that another went down.
  """
  def eventually(fun, timeout \\ 5_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    poll(fun, deadline)
  end

  defp poll(fun, deadline) do
    cond do
      result = fun.() ->
        result

      System.monotonic_time(:millisecond) >= deadline ->
        ExUnit.Assertions.flunk("condition not met in time: #{inspect(fun)}")

      true ->
        Process.sleep(10)
        poll(fun, deadline)
    end
  end

  defp start_peer do
    # random_name/1 embeds the OS pid and a counter, so concurrent test
    # runs on one machine never collide in epmd.
    {:ok, pid, node} =
      :peer.start(%{
        name: :peer.random_name(~c"visor_peer"),
        args: [~c"-setcookie", Atom.to_charlist(Node.get_cookie()), ~c"-pa" | code_paths()],
        wait_boot: @boot_timeout
      })

    {:ok, _} = :erpc.call(node, :application, :ensure_all_started, [:elixir], @boot_timeout)
    {:ok, _} = :erpc.call(node, :application, :ensure_all_started, [:logger], @boot_timeout)
    {pid, node}
  end

  # Explicit full mesh: distribution's implicit transitive connects are
  # lazy, and later tests partition and heal by (dis)connecting pairs.
  defp mesh!(nodes) do
    for a <- nodes, b <- nodes, a < b do
      true = :erpc.call(a, :net_kernel, :connect_node, [b], @boot_timeout)
    end

    :ok
  end

  defp code_paths, do: Enum.map(:code.get_path(), &to_charlist/1)
end
