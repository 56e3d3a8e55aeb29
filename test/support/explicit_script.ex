defmodule Visor.Test.ExplicitScript do
  @moduledoc """
  Drives `Visor.Formation.Explicit` deciders (`nodes:`, disk mode) through
  a scripted interleaving: `states` maps each node (its own address) to
  its decider.
  """

  alias Visor.Formation.{Decider, Explicit}
  alias Visor.Options

  @settings %{client_table_max: 4096, checkpoint_interval: 10_000, checkpoint_chunk_bytes: 1}

  @doc """
  A forming decider of `module`'s group on `node`, in disk mode; `restored`
  is what its store says (`nil`: no store).
  """
  def explicit(module, node, inc, members, restored) do
    {state, _effects} =
      Explicit.new(%{
        module: module,
        name: :formation,
        node: node,
        self: node,
        incarnation: inc,
        settings: @settings,
        members: members,
        cluster: Options.cluster_id(module, members, @settings),
        storage: :disk,
        earlier: nil,
        restored: restored
      })

    state
  end

  @doc """
  The decision `state` took: as `Visor.Formation.Decider.decision/1`,
  but a fresh start that waits for word that every member decided (its
  replica does not start yet) counts as taken.
  """
  def taken(state), do: Decider.decision(Map.put(state, :held, false))

  @doc """
  `from` ticks; each hello is delivered unless `cut?.(from, to)` or `to`
  is down (not in `states`), and its answer comes back.
  """
  def round(states, from, cut? \\ fn _, _ -> false end) do
    {state, effects} = Explicit.handle(states[from], :tick)
    states = Map.put(states, from, state)

    for {:send, {:formation, to}, hello} <- effects,
        Map.has_key?(states, to) and not cut?.(from, to),
        reduce: states do
      states ->
        {state, replies} = Explicit.handle(states[to], hello)
        states = Map.put(states, to, state)

        for {:send, ^from, reply} <- replies, reduce: states do
          states -> Map.update!(states, from, &elem(Explicit.handle(&1, reply), 0))
        end
    end
  end
end
