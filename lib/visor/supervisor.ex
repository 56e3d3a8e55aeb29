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

  use Supervisor

  alias Visor.Options

  @doc "Starts the group described by validated options."
  @spec start_link(Options.t()) :: Supervisor.on_start()
  def start_link(%Options{module: module} = config) do
    Supervisor.start_link(__MODULE__, config, name: name(module, :supervisor))
  end

  @doc """
  Locally registered names of a group's processes. The router is registered
  under the module itself, so a peer reaches it as `{module, node}`.
  """
  @spec name(module(), :router | :server | :formation | :scope | :supervisor | :backstop) ::
          atom()
  def name(module, :router), do: module
  def name(module, :server), do: Module.concat([module, Visor, Server])
  def name(module, :formation), do: Module.concat([module, Visor, Formation])
  def name(module, :scope), do: Module.concat([module, Visor, Scope])
  def name(module, :supervisor), do: Module.concat([module, Visor, Supervisor])
  def name(module, :backstop), do: Module.concat([module, Visor, Backstop])

  @impl Supervisor
  def init(%Options{module: module} = config) do
    scope =
      case config.membership do
        {:cluster_size, _} -> [%{id: :pg, start: {:pg, :start_link, [name(module, :scope)]}}]
        {:nodes, _} -> []
      end

    children =
      scope ++
        [
          {Visor.Formation, config},
          {Visor.Router, config},
          {Visor.Backstop, module},
          {Visor.Server, config}
        ]

    Supervisor.init(children, strategy: :one_for_all)
  end
end
