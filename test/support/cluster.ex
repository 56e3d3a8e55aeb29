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
  require ExUnit.Assertions

  # A loaded CI machine with few cores can take seconds to boot a VM.
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

  @doc """
  Freezes `node`'s OS process (SIGSTOP): it stays connected (no net tick
  missed for a few seconds) but answers nothing, as a node in a long GC
  pause does. Returns the OS pid for `thaw/1`.
  """
  def freeze(node) do
    pid = to_string(:erpc.call(node, :os, :getpid, []))
    {_, 0} = System.cmd("kill", ["-STOP", pid])
    pid
  end

  @doc "Lets a node frozen by `freeze/1` run again."
  def thaw(pid), do: System.cmd("kill", ["-CONT", pid])

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

  @doc """
  Starts `module`'s Visor group with `opts` on each node and waits until
  every node has decided (member or spare). `opts` may be a function of
  the node, for options that differ per node (disk mode's `data_dir`). Peers log at
  `log_level` (`:error`; `:critical` for tests that expect errors). The group lives under
  a holder process on the node, so that it outlives the `:erpc` call.
  """
  def start_group(nodes, module, opts, log_level \\ :error) do
    opts_of = if is_function(opts, 1), do: opts, else: fn _node -> opts end

    for node <- nodes do
      {:ok, _} =
        :erpc.call(
          node,
          __MODULE__,
          :start_group_here,
          [module, opts_of.(node), log_level],
          @boot_timeout
        )
    end

    for node <- nodes do
      eventually(fn -> status(node, module).status != :forming end, 15_000)
    end

    :ok
  end

  @doc false
  def start_group_here(module, opts, log_level),
    do: start_children_here([{module, opts}], holder(module), log_level)

  @doc false
  def start_children_here(children, name, log_level) do
    parent = self()
    # Quiet peers: info logs of every node of every test drown the output.
    :logger.set_primary_config(:level, log_level)

    _ = :logger.add_primary_filter(:visor_test_disallowed, {&__MODULE__.drop_disallowed/2, []})

    spawn(fn ->
      # OTP 25: a child that refuses to start also exits, linked to this
      # process; trap it, so that the refusal is returned to the caller.
      Process.flag(:trap_exit, true)
      result = Supervisor.start_link(children, strategy: :one_for_one, name: name)
      send(parent, {:started, result})
      Process.sleep(:infinity)
    end)

    receive do
      {:started, result} -> result
    end
  end

  @doc """
  Starts `Visor.Groups` for `module` with `opts` on each node (under a
  holder process, as `start_group/4` does), peers logging at `log_level`.
  `opts` may be a function of the node, as for `start_group/4`.
  """
  def start_groups_host(nodes, module, opts, log_level \\ :error) do
    opts_of = if is_function(opts, 1), do: opts, else: fn _node -> opts end

    for node <- nodes do
      {:ok, _} =
        :erpc.call(
          node,
          __MODULE__,
          :start_children_here,
          [[{Visor.Groups, [module: module] ++ opts_of.(node)}], host_holder(module), log_level],
          @boot_timeout
        )
    end

    :ok
  end

  @doc "Stops `module`'s `Visor.Groups` on `node` (started with `start_groups_host/4`)."
  def stop_groups_host(node, module) do
    :erpc.call(node, Supervisor, :stop, [host_holder(module)])
  end

  @doc """
  Stops `module`'s `Visor.Groups` on each of `nodes`, then, once it is
  stopped on all of them, starts it again on each (as its parent does
  when it restarts it).
  """
  def restart_groups_hosts(nodes, module) do
    holder = host_holder(module)
    child = {Visor.Groups, module}
    for node <- nodes, do: :ok = :erpc.call(node, Supervisor, :terminate_child, [holder, child])

    for node <- nodes,
        do: {:ok, _} = :erpc.call(node, Supervisor, :restart_child, [holder, child])

    :ok
  end

  defp host_holder(module), do: Module.concat([module, Visor, TestGroupsHolder])

  @doc "Stops `module`'s group on `node` (started with `start_group/3`)."
  def stop_group(node, module) do
    :erpc.call(node, Supervisor, :stop, [holder(module)])
  end

  defp holder(module), do: Module.concat([module, Visor, TestHolder])

  @doc false
  # `net_kernel:allow/1` logs every refused connection; partitions refuse
  # many on purpose.
  def drop_disallowed(%{msg: {:report, %{label: {:error_logger, _}, format: format}}} = event, _) do
    if :string.find(format, ~c"disallowed node") == :nomatch, do: event, else: :stop
  end

  def drop_disallowed(event, _), do: event

  @doc "`module`'s status on `node` (`Visor.status/1` there)."
  def status(node, module), do: :erpc.call(node, Visor, :status, [module])

  @doc """
  The membership `module`'s replica on `node` is in, as its engine has it:
  `{epoch, bytes}` (`Visor.Native.status/1`'s `epoch` and `membership`,
  the exact list's bytes), or `nil` with no engine running there.
  """
  def engine_membership(node, module),
    do: :erpc.call(node, __MODULE__, :engine_membership_here, [module])

  @doc false
  def engine_membership_here(module) do
    case :sys.get_state(Visor.Supervisor.name(module, :server)) do
      %{engine: engine, lifecycle: %{phase: :running}} when engine != nil ->
        status = Visor.Native.status(engine)
        {status.epoch, status.membership}

      _ ->
        nil
    end
  end

  @doc """
  Whether `module`'s formation on `node` decided that its replica rejoins
  (recovering its state from the others) rather than starting fresh.
  """
  def rejoined?(node, module) do
    match?({:member, %{recover: true}}, :erpc.call(node, Visor.Formation, :decision, [module]))
  end

  @doc "The node `node` believes is `module`'s primary."
  def primary(node, module), do: status(node, module).primary

  @doc """
  Kills `node`'s OS process with SIGKILL: no clean shutdown, no goodbye to
  its peers, exactly like a crashed machine. Waits until the survivors in
  `others` see it gone.
  """
  def kill_node(node, others \\ []) do
    os_pid = :erpc.call(node, :os, :getpid, [])
    {_, 0} = System.cmd("kill", ["-9", to_string(os_pid)])

    for n <- [node() | others] do
      eventually(fn -> node not in :erpc.call(n, :erlang, :nodes, []) end, 10_000)
    end

    :ok
  end

  @doc """
  Kills the OS processes of all `nodes` at once with SIGKILL (one `kill`
  command), as a power loss would, and waits until this node sees them gone.
  """
  def kill_nodes(nodes) do
    os_pids = for n <- nodes, do: to_string(:erpc.call(n, :os, :getpid, []))
    {_, 0} = System.cmd("kill", ["-9" | os_pids])
    for n <- nodes, do: eventually(fn -> n not in Node.list() end, 10_000)
    :ok
  end

  @doc """
  Cuts every distribution link between the nodes of `side_a` and those of
  `side_b`, and keeps them from reconnecting (Visor reconnects members on
  its own). Both sides stay connected to the test node.

  Uses `:net_kernel.allow/1`, whose list only grows: after `heal/2` the
  same peers cannot be partitioned again, so use one partition per peer set.
  """
  def partition(side_a, side_b) do
    everyone = side_a ++ side_b

    for {side, _other} <- [{side_a, side_b}, {side_b, side_a}], n <- side do
      :ok = :erpc.call(n, :net_kernel, :allow, [[node() | side]])
    end

    for a <- side_a, b <- side_b, do: :erpc.call(a, :erlang, :disconnect_node, [b])

    for a <- everyone do
      eventually(fn ->
        visible = :erpc.call(a, :erlang, :nodes, [])
        other = if a in side_a, do: side_b, else: side_a
        Enum.all?(other, &(&1 not in visible))
      end)
    end

    :ok
  end

  @doc "Undoes `partition/2`: allows the links again and reconnects them."
  def heal(side_a, side_b) do
    for {side, other} <- [{side_a, side_b}, {side_b, side_a}], n <- side do
      :ok = :erpc.call(n, :net_kernel, :allow, [other])
    end

    for a <- side_a, b <- side_b do
      eventually(fn -> :erpc.call(a, :net_kernel, :connect_node, [b]) end)
    end

    :ok
  end

  @doc """
  Starts a new VM under the name of `node`, a peer that died (see
  `kill_node/2`), and connects it to `others`: the same node, restarted
  with an empty memory.
  """
  def restart_peer(node, others) do
    [name, _host] = node |> Atom.to_string() |> String.split("@")
    {pid, ^node} = peer = start_peer(String.to_charlist(name))
    on_exit(fn -> stop_peer(peer) end)
    mesh!([node | others])
    {pid, node}
  end

  @doc """
  Restarts the killed `nodes` (`restart_peer/2`) one after another, each
  connected to those restarted before it.
  """
  def restart_all(nodes) do
    Enum.reduce(nodes, [], fn n, up ->
      restart_peer(n, up)
      [n | up]
    end)
  end

  @doc """
  Disk mode's power loss: kills every node at once (`kill_nodes/1`),
  restarts them (`restart_all/1`) with the group of `module`, and waits
  until each has restarted from its own disk.
  """
  def power_cycle(nodes, module, opts) do
    :ok = kill_nodes(nodes)
    restart_all(nodes)
    :ok = start_group(nodes, module, opts)

    for n <- nodes do
      eventually(fn -> status(n, module).storage.opened == :restarted end)
    end

    :ok
  end

  @doc """
  Restarts the killed `node` (`restart_peer/2`) and its group of `module`:
  asserts that the replica rejoins (recovering, never fresh), waits until
  it is normal and returns its status.
  """
  def rejoin(node, others, module, opts) do
    restart_peer(node, others)
    :ok = start_group([node], module, opts)
    ExUnit.Assertions.assert(rejoined?(node, module))
    eventually(fn -> status(node, module).status == :normal end, 15_000)
    status(node, module)
  end

  @doc "The members of `module`'s group, backups first (a backup's kill costs no view change)."
  def backups_first(nodes, module) do
    primary = primary(hd(nodes), module)
    (nodes -- [primary]) ++ [primary]
  end

  @doc "Waits until every node's local state of `module` is `expected`."
  def converged(nodes, module, expected, timeout \\ 5_000) do
    for node <- nodes do
      eventually(
        fn -> :erpc.call(node, Visor, :get, [module, [consistency: :local]]) == expected end,
        timeout
      )
    end
  end

  # random_name/1 embeds the OS pid and a counter, so concurrent test runs
  # on one machine never collide in epmd.
  defp start_peer(name \\ :peer.random_name(~c"visor_peer")) do
    {:ok, pid, node} =
      :peer.start(%{
        name: name,
        args: [
          ~c"-setcookie",
          Atom.to_charlist(Node.get_cookie()),
          # Partition tests cut links between peers on purpose. OTP 25's
          # global would otherwise "heal" them (connect_all) or turn a cut
          # link into more cuts, including to this node, which would halt
          # the peer (prevent_overlapping_partitions).
          ~c"-connect_all",
          ~c"false",
          ~c"-kernel",
          ~c"prevent_overlapping_partitions",
          ~c"false",
          ~c"-pa" | code_paths()
        ],
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

  @doc """
  Disk-mode options for each node: `opts` plus `storage: :disk` and a
  `data_dir` of the node's own under `tmp` (`data_dir/2`). A function of
  the node, as `start_group/4` and `start_groups_host/4` take.
  """
  def disk_opts(tmp, opts),
    do: fn node -> opts ++ [storage: :disk, data_dir: data_dir(tmp, node)] end

  @doc "The data_dir `disk_opts/2` gives `node`: `<tmp>/<node name>`."
  def data_dir(tmp, node), do: Path.join(tmp, Atom.to_string(node))

  @doc """
  Where `node` keeps the store of a group in `disk_opts/2`'s data_dir
  (docs/operations.md, "Disk mode" and "Keyed groups"): `<data_dir>/<module>`
  for a module's default group, `<data_dir>/<module>.keyed/<hash of the
  key>` for a keyed one.
  """
  def store_dir(tmp, node, {module, key}),
    do: Path.join([data_dir(tmp, node), "#{module}.keyed", Visor.Options.store_key(key)])

  def store_dir(tmp, node, module) when is_atom(module),
    do: Path.join(data_dir(tmp, node), Atom.to_string(module))

  @doc """
  A tmpfs of `size` (`"64k"`, `"4m"`) mounted at `dir`, unmounted (lazily:
  a killed node's files may still be closing) when the test ends. Needs
  root: tag the test `:tmpfs` (test_helper.exs excludes it where mounting
  is not allowed).
  """
  def mount_tmpfs!(dir, size) do
    File.mkdir_p!(dir)
    {_, 0} = System.cmd("mount", ["-t", "tmpfs", "-o", "size=#{size}", "tmpfs", dir])
    on_exit(fn -> System.cmd("umount", ["-l", dir]) end)
  end

  @doc "Writes `path` until its filesystem is full; returns `path`."
  def fill!(path) do
    {:ok, file} = :file.open(path, [:write, :raw, :binary])
    fill_loop(file, :binary.copy(<<0>>, 65_536))
    :ok = :file.close(file)
    path
  end

  defp fill_loop(file, chunk) do
    case :file.write(file, chunk) do
      :ok -> fill_loop(file, chunk)
      {:error, :enospc} when byte_size(chunk) > 1 -> fill_loop(file, binary_part(chunk, 0, 1))
      {:error, :enospc} -> :ok
    end
  end
end
