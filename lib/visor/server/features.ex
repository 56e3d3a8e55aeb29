defmodule Visor.Server.Features do
  @moduledoc false
  # Whether this node's pipelining callers may send batches (a pure
  # decider; `Visor.Server` carries out its effects). A request that
  # carries a batch (payload tag 2, `Visor.Server.Callers`) is executed
  # by every replica, so it may go only once every other member's code
  # says it executes batches: a member on older code would otherwise fail
  # every command of it.
  #
  # What each member said, by node:
  #
  #   * `{server, monitor}`: its server said so, and is monitored; it
  #     exiting may mean it comes back with other code, so its word ends
  #     with it (`down/4`), unless it was only cut off;
  #   * `{server_or_nil, nil}`: it said so (this server, or a predecessor
  #     on this node: `new/1`), and this node is cut off from it. Its word
  #     stands while it is down (batches go on, as they would have), and it
  #     is asked again once its node reconnects (`nodeup/2`), since its
  #     group may have restarted with other code meanwhile.
  #
  # Asked of every other member when the engine starts and each second
  # after (`ask/2`), so that a member hot-loaded back to code without
  # batches is noticed within a second: it answers without `:batch`
  # (`heard/5`), and no batch goes from then on (one in flight does).
  #
  # Effects, in order:
  #
  #   * `{:ask_features, nodes}`: send each node's server
  #     `{:visor_features, server_pid, features, true}`;
  #   * `{:monitor_features, node, server}`: monitor `server` and tell
  #     `monitored/4` the monitor;
  #   * `{:demonitor, monitor}`;
  #   * `{:remember_features, nodes}`: the members whose word stands, for
  #     this server's successor (`Visor.Lifetime.batch_members/2`);
  #   * `:batches_changed`: callers waiting may now go with batches.

  defstruct said: %{}

  @type t :: %__MODULE__{said: %{node() => {pid() | nil, reference() | nil}}}
  @type effect ::
          {:ask_features, [node()]}
          | {:monitor_features, node(), pid()}
          | {:demonitor, reference()}
          | {:remember_features, [node()]}
          | :batches_changed

  @doc """
  A server's start: a predecessor's `remembered` members stand only for
  those this node is cut off from (not in `connected`); a connected one
  must answer this server first.
  """
  @spec new([node()], [node()]) :: t()
  def new(remembered, connected) do
    %__MODULE__{
      said: for(node <- remembered, node not in connected, into: %{}, do: {node, {nil, nil}})
    }
  end

  @doc "Whether every member but this node said its code executes batches."
  @spec batches?(t(), [node()]) :: boolean()
  def batches?(%__MODULE__{said: said}, members),
    do: Enum.all?(members -- [node()], &Map.has_key?(said, &1))

  @doc "Asks every other member (the engine started, or a second passed)."
  @spec ask(t(), [node()]) :: {t(), [effect()]}
  def ask(features, members), do: {features, [{:ask_features, members -- [node()]}]}

  @doc """
  `server` on `node` said what its code executes (`executes`). Only a
  member's word counts.
  """
  @spec heard(t(), pid(), node(), [atom()], [node()]) :: {t(), [effect()]}
  def heard(%__MODULE__{said: said} = features, server, node, executes, members) do
    known = Map.get(said, node)

    cond do
      node not in members ->
        {features, []}

      :batch in executes and match?({^server, monitor} when monitor != nil, known) ->
        {features, []}

      :batch in executes ->
        {features, demonitor(known) ++ [{:monitor_features, node, server}]}

      # It said so before: its code was hot-loaded back to code without
      # batches.
      known != nil ->
        forget(features, node, demonitor(known))

      true ->
        {features, []}
    end
  end

  @doc "The monitor of `server`, which said it executes batches (`heard/5`)."
  @spec monitored(t(), node(), pid(), reference()) :: {t(), [effect()]}
  def monitored(%__MODULE__{said: said}, node, server, monitor) do
    said = Map.put(said, node, {server, monitor})
    {%__MODULE__{said: said}, [{:remember_features, Map.keys(said)}, :batches_changed]}
  end

  @doc """
  A monitored server exited: cut off (`:noconnection`), its word stands
  until its node reconnects; otherwise it may come back with other code.
  """
  @spec down(t(), pid(), reference(), term()) :: {t(), [effect()]}
  def down(%__MODULE__{said: said} = features, server, monitor, reason) do
    case Enum.find(said, fn {_node, known} -> known == {server, monitor} end) do
      nil ->
        {features, []}

      {node, _known} when reason == :noconnection ->
        {%__MODULE__{said: Map.put(said, node, {server, nil})}, []}

      {node, _known} ->
        forget(features, node, [])
    end
  end

  @doc "`node` reconnected: one whose word stood while cut off is asked again."
  @spec nodeup(t(), node()) :: {t(), [effect()]}
  def nodeup(%__MODULE__{said: said} = features, node) do
    case said do
      %{^node => {_server, nil}} -> forget(features, node, [{:ask_features, [node]}])
      _ -> {features, []}
    end
  end

  defp forget(%__MODULE__{said: said}, node, effects) do
    said = Map.delete(said, node)
    {%__MODULE__{said: said}, effects ++ [{:remember_features, Map.keys(said)}]}
  end

  defp demonitor({_server, monitor}) when is_reference(monitor), do: [{:demonitor, monitor}]
  defp demonitor(_known), do: []
end
