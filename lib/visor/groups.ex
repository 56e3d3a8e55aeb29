defmodule Visor.Groups do
  @moduledoc """
  The host of a module's keyed groups on one node: a replicated GenServer
  per entity, `{module, key}`, started and stopped at run time.

  Start it once per module on every node that may hold keyed groups of
  the module, beside (or instead of) the module's default group:

      children = [
        {Cache, nodes: [...]},                 # the default group, as before (optional)
        {Visor.Groups, module: Cache, replicas: 3}
      ]

  then, from any node, `Visor.start_group({Cache, key})` (or
  `Cache.start_group(key)`), and `Visor.commit({Cache, key}, command)`;
  see `Visor.start_group/2` for the rest of the API.

  Options: `:module` (required); `:members`, the member nodes of every
  keyed group started without `members:` of its own, or `:replicas`, how
  many members `Visor.start_group/2` chooses among the connected nodes
  running this host (default 3); and the group options of `Visor` (the
  module's `use Visor` defaults apply, but for the default group's
  membership and storage: `:nodes`, `:cluster_size`, `:storage`,
  `:data_dir`, `:wal_compact_bytes`). Every keyed group of the module on
  this node runs with them. `busy_poll_us` defaults to 0 here: with many
  groups a spinning server per hand-off costs more than the latency it
  saves.

  Disk mode (`storage: :disk, data_dir: dir`, checked as a default
  group's): each keyed group has a store of its own in
  `<dir>/Elixir.Cache.keyed/<hash of the key>/`, beside a record of its
  key and instance. When the host starts (after
  a node restart, say) it starts every group whose store it finds, each
  restarting from its store; `Visor.stop_group/2` removes the group's
  directory. docs/operations.md, "Keyed groups in disk mode".

  What it runs: the module's `Registry` of keyed groups' processes (names
  without atoms), a `PartitionSupervisor` of `DynamicSupervisor`s that
  hold one `Visor.Supervisor` per keyed group (its formation, router,
  backstop and server, as a default group's), and `Visor.Groups.Host`,
  which starts, stops and restarts them, and carries peers' messages to
  them. One registered name per module: `Module.concat(module,
  Visor.Groups)` and its children's, never one per group.
  """

  use Supervisor

  alias Visor.{Lifetime, Options}

  @default_replicas 3

  @doc false
  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.get(opts, :module)},
      start: {__MODULE__, :start_link, [opts]},
      type: :supervisor
    }
  end

  @doc """
  Starts the host of `opts[:module]`'s keyed groups on this node. A bad
  option raises `ArgumentError` naming it, before anything starts.
  """
  @spec start_link(keyword()) :: Supervisor.on_start()
  def start_link(opts) when is_list(opts) do
    host = options!(opts)
    Supervisor.start_link(__MODULE__, host, name: name(host.module))
  end

  @impl Supervisor
  def init(%{module: module} = host) do
    children = [
      {Registry,
       keys: :unique,
       name: registry(module),
       partitions: System.schedulers_online(),
       meta: [visor: host]},
      # A group's start runs its initial_state/1 inside its partition's
      # start_child: that many slow starts at once hold up no other start
      # (Visor.Groups.Host sends each to the least busy partition).
      {PartitionSupervisor,
       child_spec: DynamicSupervisor,
       name: partitions(module),
       partitions: max(System.schedulers_online(), 8)},
      {Visor.Groups.Host, module}
    ]

    # A registry that restarts has lost every name: the groups restart
    # with it. The host restarts alone, and starts again whatever it
    # hosted that does not run (Visor.Groups.Host).
    Supervisor.init(children, strategy: :rest_for_one)
  end

  # The host's options: the group options every keyed group of the module
  # runs with (checked here, with this node as a stand-in member), and the
  # default members or their number.
  defp options!(opts) do
    module = Keyword.get(opts, :module)

    unless is_atom(module) and module != nil do
      raise ArgumentError, "Visor.Groups needs module: (a module that uses Visor)"
    end

    {placement, group_opts} = Keyword.split(Keyword.delete(opts, :module), [:members, :replicas])

    for key <- [:nodes, :cluster_size], Keyword.has_key?(group_opts, key) do
      raise ArgumentError,
            "#{inspect(module)}: Visor.Groups takes members: or replicas:, not #{key}: " <>
              "(that is the default group's)"
    end

    # The default group's membership and storage in `use Visor`'s
    # defaults are its own: a keyed group must never open its store.
    group_opts =
      defaults(module)
      |> Keyword.drop([:nodes, :cluster_size, :storage, :data_dir, :wal_compact_bytes])
      |> Keyword.merge(group_opts)
      |> Keyword.put_new(:busy_poll_us, 0)

    config = Options.validate!(module, Keyword.put(group_opts, :nodes, [node()]))
    keyed_dir = Options.keyed_dir(config)
    if keyed_dir, do: store_group_fits!(config)

    members =
      case Keyword.fetch(placement, :members) do
        {:ok, members} -> Options.nodes!(module, members)
        :error -> nil
      end

    %{
      module: module,
      opts: group_opts,
      keyed_dir: keyed_dir,
      members: members,
      replicas: replicas!(module, Keyword.get(placement, :replicas, @default_replicas))
    }
  end

  # Disk mode: every keyed group's store records a name of the same length
  # (Visor.Options.store_group/1), which the engine bounds.
  defp store_group_fits!(config) do
    name = Options.store_group(Options.keyed(config, :any_key, 0))
    max = Visor.Contract.limit(:group_bytes_max)

    if byte_size(name) > max do
      raise ArgumentError,
            "#{inspect(config.module)}: its name is too long for keyed groups in disk mode: " <>
              "their stores' group names (#{inspect(name)}) exceed #{max} bytes"
    end
  end

  # `use Visor`'s default options of the module.
  defp defaults(module) do
    Code.ensure_loaded(module)

    if function_exported?(module, :__visor_defaults__, 0),
      do: module.__visor_defaults__(),
      else: []
  end

  @doc false
  # How many members a keyed group gets when neither `members:` nor
  # `replicas:` says.
  @spec default_replicas() :: pos_integer()
  def default_replicas, do: @default_replicas

  @doc false
  @spec replicas!(module(), term()) :: pos_integer()
  def replicas!(module, n) do
    if is_integer(n) and n in 1..Options.max_replicas() do
      n
    else
      raise ArgumentError,
            "#{inspect(module)}: replicas must be an integer in 1..#{Options.max_replicas()}, " <>
              "got: #{inspect(n)}"
    end
  end

  # ---- Names (one per module, never one per group) -------------------------

  @doc false
  @spec name(module()) :: atom()
  def name(module), do: Module.concat(module, Visor.Groups)

  @doc false
  @spec registry(module()) :: atom()
  def registry(module), do: Module.concat([module, Visor.Groups, Registry])

  @doc false
  @spec partitions(module()) :: atom()
  def partitions(module), do: Module.concat([module, Visor.Groups, Partitions])

  @doc false
  @spec host(module()) :: atom()
  def host(module), do: Module.concat([module, Visor.Groups, Host])

  # ---- This node (called here, or by other nodes through :erpc) ----------

  @doc false
  # The host's options on this node, or nil when it does not run here.
  @spec host_options(module()) :: map() | nil
  def host_options(module) do
    case Registry.meta(registry(module), :visor) do
      {:ok, host} -> host
      :error -> nil
    end
  rescue
    ArgumentError -> nil
  end

  @doc false
  # The keyed group's supervisor on this node and its instance
  # (`t:Visor.Lifetime.instance/0`), or nil.
  @spec running(module(), term()) :: {pid(), Lifetime.instance()} | nil
  def running(module, key) do
    case Registry.lookup(registry(module), {key, :supervisor}) do
      [{pid, instance}] -> if Process.alive?(pid), do: {pid, instance}
      [] -> nil
    end
  rescue
    ArgumentError -> nil
  end

  @doc false
  # The members of the keyed group when this node is one of them: it runs
  # here, or this node's host records that it does (its processes are
  # being started again); else nil.
  @spec members_here(module(), term()) :: [node()] | nil
  def members_here(module, key) do
    case running(module, key) || Lifetime.hosting({module, key}) do
      {_pid, %{members: members}} -> members
      %{members: members} -> members
      nil -> nil
    end
  end

  @doc false
  # The host's options on this node and what it holds of the keyed group:
  # the instance it runs (or starts, or restarts), or nil, and the
  # instances of it it stopped (`Visor.Lifetime.stopped/2`). nil when the
  # host does not run here.
  @spec membership(module(), term()) ::
          %{options: map(), hosted: Lifetime.instance() | nil, stopped: Lifetime.stops()}
          | nil
  def membership(module, key) do
    if options = host_options(module) do
      group = {module, Options.canonical_key(key)}
      %{options: options, hosted: Lifetime.hosting(group), stopped: Lifetime.tombstones(group)}
    end
  end

  @doc false
  # Stops the keyed group here and forgets it, if the host holds one of
  # `instances` of it (never another instance, started since): `:ok`, or
  # `:no_group`.
  @spec stop_here(module(), term(), [Lifetime.instance()]) :: :ok | :no_group
  def stop_here(module, key, instances) when is_list(instances) do
    if host_options(module),
      do: GenServer.call(host(module), {:visor_stop, key, instances}, :infinity),
      else: :no_group
  end

  @doc false
  # Undoes a refused start of `instance` here (`Visor.Groups.Control`):
  # stops and forgets it if the host holds it (no tombstone: it never
  # formed anywhere): `:ok`, or `:no_group`.
  @spec undo_here(module(), term(), Lifetime.instance()) :: :ok | :no_group | {:error, term()}
  def undo_here(module, key, instance) do
    if host_options(module),
      do: GenServer.call(host(module), {:visor_undo, key, instance}, :infinity),
      else: :no_group
  end

  @doc false
  # The keyed groups this node runs, that name `node` a member, and whose
  # replica here was admitted to its cluster (its formation decided): a
  # group that never formed (a replica of a refused start, say) is not
  # offered to a restarted member, which would join it rather than the
  # group that runs (`Visor.Groups.Host`).
  @spec offers(module(), node()) :: [{term(), Lifetime.instance()}]
  def offers(module, node) do
    for {key, instance, _server} <- local(module),
        node in instance.members,
        formed?({module, key}),
        do: {key, instance}
  end

  defp formed?(group) do
    match?({:member, _}, Visor.Formation.decision(group))
  catch
    :exit, _ -> false
  end

  @doc false
  # The keyed groups with a replica on this node: `[{key, instance, server}]`.
  @spec local(module()) :: [{term(), Lifetime.instance(), pid() | nil}]
  def local(module) do
    registry = registry(module)

    supervisors =
      Registry.select(registry, [
        {{{:"$1", :supervisor}, :"$2", :"$3"}, [], [{{:"$1", :"$2", :"$3"}}]}
      ])

    for {key, pid, instance} <- supervisors, Process.alive?(pid) do
      {key, instance, Visor.Supervisor.whereis({module, key}, :server)}
    end
  rescue
    ArgumentError -> []
  end

  # ---- Placement -----------------------------------------------------------

  @doc """
  The `n` nodes of `nodes` that rendezvous (highest-random-weight) hashing
  picks for `group`, highest score first: each node scores
  `md5({group, node})`, so every node that sees the same `nodes` picks the
  same members, and a node added to `nodes` takes over only the groups
  it now scores into the top `n` for.

      iex> Visor.Groups.place({Cache, "a"}, [:x@h, :y@h, :z@h], 3) |> Enum.sort()
      [:x@h, :y@h, :z@h]
      iex> Visor.Groups.place({Cache, "a"}, [:x@h, :y@h, :z@h], 2) ==
      ...>   Visor.Groups.place({Cache, "a"}, [:z@h, :y@h, :x@h], 2)
      true
  """
  @spec place({module(), term()}, [node()], pos_integer()) :: [node()]
  def place({module, key}, nodes, n) do
    # Keys start_group treats as one (Visor.Options.canonical_key/1) place alike.
    group = {module, Options.canonical_key(key)}

    nodes
    |> Enum.uniq()
    |> Enum.sort_by(&score(group, &1), :desc)
    |> Enum.take(n)
  end

  # The group's identity rather than its cluster id, which depends on the
  # members being chosen here.
  defp score(group, node) do
    <<score::64, _::64>> = :erlang.md5(:erlang.term_to_binary({group, node}, minor_version: 1))
    score
  end
end
