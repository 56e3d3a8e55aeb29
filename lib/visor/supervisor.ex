defmodule Visor.Supervisor do
  @moduledoc false
  # One group's processes on one node: the `:pg` scope (discovery mode only),
  # `Visor.Formation`, `Visor.Router` (peer traffic), `Visor.Backstop`
  # (pipelined commands' timeouts), then `Visor.Server`.
  #
  # `:one_for_all`: the application state and the replica live only in the
  # server's memory, so a restarted server is a replica with amnesia (and
  # the engine lives only as long as the router that owns it). Formation
  # restarts with it, under a new incarnation, which the peers recognise as a
  # restart: the new replica rejoins and recovers its state from them before
  # it takes part (`Visor.Formation`). Restarting the pair is safe;
  # restarting only the server would not be (a fresh replica that forgot what
  # it acknowledged). The group's `Visor.Lifetime` record outlives such
  # restarts, and restarts of this supervisor too (it lasts as long as the
  # VM, until `Visor.forget/1`): in memory mode a restarted pair rejoins even
  # if no peer remembers this node.
  #
  # A keyed group (`{module, key}`, under `Visor.Groups`) runs the same
  # processes, named without atoms: through the module's `Registry`
  # (`name/2`), one per module per node. A peer cannot address a `:via`
  # name on another node, so a message for a keyed group's process on
  # another node goes to that node's group host (`Visor.Groups.Host`,
  # registered under one atom per module), which hands it to the process
  # the key names there (`send_remote/5`). One hop more per peer message,
  # but deterministic: the host looks the process up when the message
  # arrives, so a restarted peer is reached at once, with no pid to learn
  # or forget (docs/architecture.md, "Keyed groups").

  use Supervisor

  alias Visor.Options

  @typedoc "A module's default group, or one of its keyed groups."
  @type group :: module() | {module(), term()}
  @type role :: :router | :server | :formation | :scope | :supervisor | :backstop

  @doc """
  Starts the group described by validated options. A keyed group's
  supervisor is registered with its instance (`%{members:, id:}`) as the
  registry's value (`Visor.Groups` lists them from there).
  """
  @spec start_link(Options.t()) :: Supervisor.on_start()
  def start_link(%Options{group: {module, key}, membership: {:nodes, nodes}} = config) do
    instance = %{members: Enum.sort(nodes), id: config.instance}
    name = {:via, Registry, {Visor.Groups.registry(module), {key, :supervisor}, instance}}
    Supervisor.start_link(__MODULE__, config, name: name)
  end

  def start_link(%Options{group: group} = config) do
    Supervisor.start_link(__MODULE__, config, name: name(group, :supervisor))
  end

  @doc """
  The names of a group's processes on a node. A default group's are
  locally registered atoms, as they always were: the router is registered
  under the module itself, so a peer reaches it as `{module, node}`. A
  keyed group's are `:via` names in its module's registry
  (`Visor.Groups.registry/1`): no atom per group.
  """
  @spec name(group(), role()) :: atom() | {:via, Registry, {atom(), {term(), role()}}}
  def name({module, key}, role),
    do: {:via, Registry, {Visor.Groups.registry(module), {key, role}}}

  def name(module, :router), do: module
  def name(module, :server), do: Module.concat([module, Visor, Server])
  def name(module, :formation), do: Module.concat([module, Visor, Formation])
  def name(module, :scope), do: Module.concat([module, Visor, Scope])
  def name(module, :supervisor), do: Module.concat([module, Visor, Supervisor])
  def name(module, :backstop), do: Module.concat([module, Visor, Backstop])

  @doc "The pid of a group's process `role` on this node, or `nil`."
  @spec whereis(group(), role()) :: pid() | nil
  def whereis(group, role) do
    GenServer.whereis(name(group, role))
  rescue
    # A keyed group's registry that does not run: no Visor.Groups here.
    ArgumentError -> nil
  end

  @doc """
  Sends `message` to the group's process `role` on `node`, with
  `:erlang.send/3`'s `opts`: straight to the registered name for a default
  group, through `node`'s group host for a keyed one (see the top of this
  module), which drops it if the group does not run there.
  """
  @spec send_remote(group(), role(), node(), term(), [:noconnect | :nosuspend]) ::
          :ok | :noconnect | :nosuspend
  def send_remote({module, key}, role, node, message, opts),
    do: :erlang.send({Visor.Groups.host(module), node}, {:visor_to, key, role, message}, opts)

  def send_remote(module, role, node, message, opts),
    do: :erlang.send({name(module, role), node}, message, opts)

  @impl Supervisor
  def init(%Options{group: group} = config) do
    scope =
      case config.membership do
        {:cluster_size, _} -> [%{id: :pg, start: {:pg, :start_link, [name(group, :scope)]}}]
        {:nodes, _} -> []
      end

    children =
      scope ++
        [
          {Visor.Formation, config},
          {Visor.Router, config},
          {Visor.Backstop, group},
          {Visor.Server, config}
        ]

    Supervisor.init(children, strategy: :one_for_all)
  end
end
