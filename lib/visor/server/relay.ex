defmodule Visor.Server.Relay do
  @moduledoc false
  # A spare's pipelined commands (`Visor.pipeline/3`), relayed by the
  # spare's server to one member's server (a pure decider; `Visor.Server`
  # carries out its effects). The member takes them as its own callers'
  # (in the stream of the caller, so in order) and sends each answer back
  # here, which passes it on: every answer goes through this server, so
  # that each command is answered exactly once even when the member goes
  # down.
  #
  #   * One target at a time, for every caller of this node: the primary a
  #     member named lately if this node is connected to it, else the first
  #     connected member. It stays the target until it goes down or refuses
  #     as a non-member, so one caller's commands all go, in order, to one
  #     member's server (a message order the runtime keeps between two
  #     processes).
  #   * A target that goes down (its server exits, or its node
  #     disconnects: the server's monitor says so) fails every command
  #     relayed to it and not answered yet with `{:error, {:member_down,
  #     node}}`: it may or may not have been applied, as for `commit/3`.
  #     The next command goes to another target.
  #   * A target that refuses a command before admitting it as a
  #     non-member (`:spare`, `{:setting_mismatch, ...}`) received nothing
  #     that counts: it is passed over, and the command goes to the next
  #     target. Any other refusal is the command's answer, `{:error,
  #     reason}`, as a member's own caller would get it. With no target
  #     left, the command is answered `{:error, :no_member_reachable}` at
  #     once (nothing was applied), and every member is a candidate again.
  #
  # Effects, in order:
  #
  #   * `{:watch, node}`: monitor the group's server on `node`; its exit
  #     comes back as `down/2`;
  #   * `{:forward, node, entry}`: send the command to that server;
  #   * `{:answer, entry, reply}`: the caller's answer.

  defstruct target: nil, outstanding: %{}, watched: MapSet.new(), passed: MapSet.new()

  @typedoc """
  A relayed command: the caller's reference, the caller (its stream), the
  encoded command, its deadline (monotonic ms on this node), and what the
  answer needs (`from`, as `Visor.Server` answers a pipelining caller).
  """
  @type entry :: %{
          ref: reference(),
          caller: pid(),
          payload: binary(),
          deadline: integer(),
          from: term()
        }
  @typedoc "Where the members are: those this node is connected to, and the primary a member named."
  @type candidates :: %{members: [node()], primary: node() | nil}
  @type t :: %__MODULE__{}
  @type effect ::
          {:watch, node()} | {:forward, node(), entry()} | {:answer, entry(), term()}

  @doc "Nothing relayed."
  @spec new() :: t()
  def new, do: %__MODULE__{}

  @doc "Relays `entry` to the target (chosen among `candidates` if there is none)."
  @spec forward(t(), entry(), candidates()) :: {t(), [effect()]}
  def forward(%__MODULE__{} = relay, entry, candidates) do
    relay = if relay.target, do: relay, else: choose(relay, candidates)

    case relay.target do
      nil ->
        {relay, [{:answer, entry, {:error, :no_member_reachable}}]}

      node ->
        watch = if MapSet.member?(relay.watched, node), do: [], else: [{:watch, node}]

        relay = %{
          relay
          | outstanding: Map.put(relay.outstanding, entry.ref, {node, entry}),
            watched: MapSet.put(relay.watched, node)
        }

        {relay, watch ++ [{:forward, node, entry}]}
    end
  end

  defp choose(relay, %{members: members, primary: primary}) do
    open = Enum.reject(members, &MapSet.member?(relay.passed, &1))

    cond do
      members == [] -> relay
      open == [] -> choose(%{relay | passed: MapSet.new()}, %{members: members, primary: primary})
      primary in open -> %{relay | target: primary}
      true -> %{relay | target: hd(open)}
    end
  end

  @doc """
  The member's answer for `ref` (`{:visor_refused, reason}` for a refusal
  before admission). Answers from unknown refs (already answered) are
  dropped.
  """
  @spec answered(t(), reference(), term(), candidates()) :: {t(), [effect()]}
  def answered(%__MODULE__{} = relay, ref, reply, candidates) do
    case Map.pop(relay.outstanding, ref) do
      {nil, _} ->
        {relay, []}

      {{node, entry}, outstanding} ->
        relay = %{relay | outstanding: outstanding}

        case reply do
          {:visor_refused, reason}
          when reason == :spare or elem(reason, 0) == :setting_mismatch ->
            relay = %{relay | passed: MapSet.put(relay.passed, node)}
            relay = if relay.target == node, do: %{relay | target: nil}, else: relay
            forward(relay, entry, candidates)

          {:visor_refused, reason} ->
            {relay, [{:answer, entry, {:error, reason}}]}

          reply ->
            {relay, [{:answer, entry, reply}]}
        end
    end
  end

  @doc """
  The server on `node` exited, or `node` disconnected: every command
  relayed there and not answered fails with `{:error, {:member_down,
  node}}`. `:noproc` (the group does not run there) passes the node over.
  """
  @spec down(t(), node(), term()) :: {t(), [effect()]}
  def down(%__MODULE__{} = relay, node, reason) do
    {lost, kept} = Enum.split_with(relay.outstanding, fn {_ref, {n, _}} -> n == node end)
    passed = if reason == :noproc, do: MapSet.put(relay.passed, node), else: relay.passed

    relay = %{
      relay
      | outstanding: Map.new(kept),
        watched: MapSet.delete(relay.watched, node),
        target: if(relay.target == node, do: nil, else: relay.target),
        passed: passed
    }

    answers =
      for {_ref, {_node, entry}} <- lost, do: {:answer, entry, {:error, {:member_down, node}}}

    {relay, answers}
  end

  @doc "Commands relayed and not answered yet."
  @spec outstanding(t()) :: non_neg_integer()
  def outstanding(%__MODULE__{outstanding: outstanding}), do: map_size(outstanding)
end
