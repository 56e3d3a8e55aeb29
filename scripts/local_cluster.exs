# Shared by scripts/demo.exs and bench/bench.exs: a throw-away cluster of
# local BEAM nodes (OTP's :peer), each loading this project's code.
defmodule Visor.Scripts.LocalCluster do
  @moduledoc false

  @boot_timeout 30_000

  @doc "Makes this node distributed (short names), starting epmd if needed."
  def start_distribution(prefix) do
    unless Node.alive?() do
      if epmd = System.find_executable("epmd"), do: System.cmd(epmd, ["-daemon"])
      {:ok, _} = :net_kernel.start([:"#{prefix}_#{System.pid()}", :shortnames])
    end

    :ok
  end

  @doc """
  Starts one peer per name (`"a"` becomes `a_<ospid>@host`), fully meshed,
  with this node's code paths, `:elixir` and `:logger` at `log_level`.
  Returns the node names in order.
  """
  def start_nodes(names, log_level \\ :warning) do
    peers = Enum.map(names, &start_node(&1, log_level))
    nodes = Enum.map(peers, &elem(&1, 1))

    for a <- nodes, b <- nodes, a < b do
      true = :erpc.call(a, :net_kernel, :connect_node, [b], @boot_timeout)
    end

    nodes
  end

  @doc """
  Starts a new VM under the name of a node `start_nodes/2` started from
  this script (`"a"`) and that has died, and connects it to `others`: the
  same node, restarted with an empty memory. Returns its node name.
  """
  def restart_node(name, others, log_level \\ :warning) do
    {_pid, node} = start_node(name, log_level)
    for other <- others, do: true = :erpc.call(node, :net_kernel, :connect_node, [other])
    node
  end

  defp start_node(name, log_level) do
    {:ok, pid, node} =
      :peer.start(%{
        name: ~c"#{name}_#{System.pid()}",
        args: [
          ~c"-setcookie",
          Atom.to_charlist(Node.get_cookie()),
          ~c"-pa" | Enum.map(:code.get_path(), &to_charlist/1)
        ],
        wait_boot: @boot_timeout
      })

    {:ok, _} = :erpc.call(node, :application, :ensure_all_started, [:elixir], @boot_timeout)
    {:ok, _} = :erpc.call(node, :application, :ensure_all_started, [:logger], @boot_timeout)
    :ok = :erpc.call(node, :logger, :set_primary_config, [:level, log_level])
    {pid, node}
  end

  @doc """
  Loads modules compiled by a script on every node: scripts are not on the
  peers' code path. Takes what `defmodule` returns (`{:module, mod, bin,
  _}`) or what `Code.require_file/1` returns (`[{mod, bin}]`). Include
  this file's own modules: the peers run `start_group_here/2`.
  """
  def load_modules(nodes, modules) do
    objects =
      for m <- List.flatten(modules) do
        case m do
          {:module, mod, bin, _} -> {mod, bin}
          {mod, bin} -> {mod, bin}
        end
      end

    for node <- nodes, {mod, bin} <- objects do
      {:module, ^mod} = :erpc.call(node, :code, :load_binary, [mod, ~c"nofile", bin])
    end

    :ok
  end

  @doc """
  Starts `module`'s group on each node under a holder process (the group
  must outlive the :erpc call that starts it), then waits until every node
  has formed. `opts` may be a function of the node (disk mode's `data_dir`).
  """
  def start_group(nodes, module, opts) do
    opts_of = if is_function(opts, 1), do: opts, else: fn _node -> opts end

    for node <- nodes do
      {:ok, _} = :erpc.call(node, __MODULE__, :start_group_here, [module, opts_of.(node)])
    end

    wait_until(fn -> Enum.all?(nodes, &(status(&1, module).status == :normal)) end, 15_000)
  end

  @doc false
  def start_group_here(module, opts) do
    parent = self()

    spawn(fn ->
      send(parent, {:started, Supervisor.start_link([{module, opts}], strategy: :one_for_one)})
      Process.sleep(:infinity)
    end)

    receive do
      {:started, result} -> result
    end
  end

  @doc "`Visor.status(module)` on `node`."
  def status(node, module), do: :erpc.call(node, Visor, :status, [module])

  @doc "SIGKILLs `node`'s OS process, like a crashed machine, and returns its OS pid."
  def kill(node) do
    os_pid = :erpc.call(node, :os, :getpid, [])
    {_, 0} = System.cmd("kill", ["-9", to_string(os_pid)])
    wait_until(fn -> node not in Node.list() end, 10_000)
    os_pid
  end

  @doc "Polls `fun` every 10 ms until it is truthy; raises after `timeout` ms."
  def wait_until(fun, timeout) do
    deadline = System.monotonic_time(:millisecond) + timeout
    poll(fun, deadline)
  end

  defp poll(fun, deadline) do
    cond do
      result = fun.() ->
        result

      System.monotonic_time(:millisecond) > deadline ->
        raise "timed out waiting for #{inspect(fun)}"

      true ->
        Process.sleep(10)
        poll(fun, deadline)
    end
  end
end
