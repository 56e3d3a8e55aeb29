defmodule Visor.Test.DiscoveryScript do
  @moduledoc """
  Drives `Visor.Formation.Discovery` deciders through a scripted
  interleaving, message by message: `states` maps each node (its own
  address) to its decider, and `:net` to the messages in flight.
  """

  alias Visor.Formation.Discovery

  @settings %{client_table_max: 4096, checkpoint_interval: 10_000, checkpoint_chunk_bytes: 1}

  @doc "The shared settings every scripted decider has."
  def settings, do: @settings

  # A decider whose address is its node name (sends name the address).
  def discovering(node, inc, storage \\ :memory, restored \\ nil) do
    {state, _effects} =
      Discovery.new(%{
        module: __MODULE__,
        node: node,
        self: node,
        incarnation: inc,
        settings: @settings,
        size: 3,
        rand: :rand.seed_s(:exsss, inc),
        storage: storage,
        earlier: nil,
        restored: restored
      })

    state
  end

  # Feeds `input` to `node`; its sends are delivered to (and answered
  # by) other deciders only as far as `deliver` says, so they pile up in
  # `:net`.
  def feed(states, node, input) do
    {state, effects} = Discovery.handle(states[node], input)
    sends = for {:send, to, message} <- effects, do: {to, message}
    states |> Map.put(node, state) |> Map.update(:net, sends, &(&1 ++ sends))
  end

  # Delivers every message in flight to `to` whose tag is in `tags`
  # (and whatever those deliveries send, as long as it matches too).
  def deliver(states, tags) do
    {now, later} =
      Enum.split_with(states[:net] || [], fn {to, m} ->
        Map.has_key?(states, to) and elem(m, 0) in tags
      end)

    case now do
      [] ->
        states

      _ ->
        states = Map.put(states, :net, later)

        now
        |> Enum.reduce(states, fn {to, m}, states -> feed(states, to, m) end)
        |> deliver(tags)
    end
  end

  def tick(states, node) do
    visible = for {n, _} <- states, n not in [node, :net], do: n
    feed(states, node, {:tick, visible})
  end

  def drop_net(states), do: Map.put(states, :net, [])

  # Takes out of `:net` the messages to `to` matching `pattern?`.
  def take(states, pattern?) do
    {taken, left} = Enum.split_with(states.net, pattern?)
    {taken, %{states | net: left}}
  end

  def tick(states, node, visible), do: feed(states, node, {:tick, visible})
end
