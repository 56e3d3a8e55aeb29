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
  #   * One caller's order across a change of target: a caller's commands
  #     go to one node at a time. While some of them are unanswered at a
  #     node that is no longer the target (passed over, or another
  #     caller's refusal moved the target on), its next commands wait here,
  #     and so do those the node refuses; once none is left unanswered
  #     there, the refused ones go to the new target, in the order sent,
  #     then the waiting ones. A refused command sent before one that node
  #     took in (answered otherwise, or lost with it) is not sent again,
  #     which could apply it after that later one: it is answered with its
  #     refusal, `{:error, reason}` (nothing applied).
  #   * A command not answered 1 s past its deadline (`expire/4`; a member
  #     whose code drops relayed commands) is answered `{:error,
  #     :timeout}` and forgotten; the caller's backstop (`Visor.Backstop`)
  #     answered it already, so this only frees it here. Like
  #     `:member_down`, it has no definite outcome.
  #
  # Effects, in order:
  #
  #   * `{:watch, node}`: monitor the group's server on `node`; its exit
  #     comes back as `down/2`;
  #   * `{:forward, node, entry}`: send the command to that server;
  #   * `{:answer, entry, reply}`: the caller's answer.

  # The unanswered commands (ref => {node, seq, entry}, `seq` the order
  # they were first relayed in), and each caller's (`t:stream/0`).
  defstruct target: nil,
            outstanding: %{},
            callers: %{},
            next_seq: 0,
            watched: MapSet.new(),
            passed: MapSet.new()

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
  @typedoc """
  One caller's commands: the node its unanswered ones went to and how
  many; those that node refused as a non-member (`{seq, entry, reason}`,
  newest first) and those that came meanwhile, waiting for the last
  answer from that node; the last `seq` that node took in (or lost).
  """
  @type stream :: %{
          node: node(),
          count: non_neg_integer(),
          refused: [{non_neg_integer(), entry(), term()}],
          held: :queue.queue(entry()),
          taken: integer()
        }
  @typedoc "Where the members are: those this node is connected to, and the primary a member named."
  @type candidates :: %{members: [node()], primary: node() | nil}
  @type t :: %__MODULE__{}
  @type effect ::
          {:watch, node()} | {:forward, node(), entry()} | {:answer, entry(), term()}

  @doc "Nothing relayed."
  @spec new() :: t()
  def new, do: %__MODULE__{}

  @doc """
  Relays `entry` to the target (chosen among `candidates` if there is
  none), or holds it while its caller's earlier commands are unanswered
  at another node (see the top).
  """
  @spec forward(t(), entry(), candidates()) :: {t(), [effect()]}
  def forward(%__MODULE__{} = relay, entry, candidates) do
    relay = if relay.target, do: relay, else: choose(relay, candidates)
    caller = entry.caller

    case relay.callers do
      %{^caller => stream} ->
        if stream.node != relay.target or stream.refused != [] or
             not :queue.is_empty(stream.held) do
          held = %{stream | held: :queue.in(entry, stream.held)}
          {%{relay | callers: Map.put(relay.callers, caller, held)}, []}
        else
          send_to_target(relay, entry)
        end

      _ ->
        send_to_target(relay, entry)
    end
  end

  # No target left: answered at once, and every member is a candidate for
  # the next command (a spare refusing now may be a member by then).
  defp send_to_target(%{target: nil} = relay, entry),
    do: {%{relay | passed: MapSet.new()}, [{:answer, entry, {:error, :no_member_reachable}}]}

  defp send_to_target(%{target: node} = relay, entry) do
    watch = if MapSet.member?(relay.watched, node), do: [], else: [{:watch, node}]
    seq = relay.next_seq

    stream =
      Map.get(relay.callers, entry.caller, %{
        node: node,
        count: 0,
        refused: [],
        held: :queue.new(),
        taken: -1
      })

    relay = %{
      relay
      | outstanding: Map.put(relay.outstanding, entry.ref, {node, seq, entry}),
        callers: Map.put(relay.callers, entry.caller, %{stream | count: stream.count + 1}),
        next_seq: seq + 1,
        watched: MapSet.put(relay.watched, node)
    }

    {relay, watch ++ [{:forward, node, entry}]}
  end

  # Only among the members not passed over: with none left, no target.
  defp choose(relay, %{members: members, primary: primary}) do
    open = Enum.reject(members, &MapSet.member?(relay.passed, &1))

    cond do
      open == [] -> relay
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

      {{node, seq, entry}, outstanding} ->
        relay = %{relay | outstanding: outstanding}

        {relay, effects} =
          case reply do
            {:visor_refused, reason}
            when reason == :spare or elem(reason, 0) == :setting_mismatch ->
              relay = %{relay | passed: MapSet.put(relay.passed, node)}
              relay = if relay.target == node, do: %{relay | target: nil}, else: relay

              {update(relay, entry.caller, &%{&1 | refused: [{seq, entry, reason} | &1.refused]}),
               []}

            {:visor_refused, reason} ->
              {relay, [{:answer, entry, {:error, reason}}]}

            reply ->
              {taken(relay, entry.caller, seq), [{:answer, entry, reply}]}
          end

        settled(relay, entry.caller, effects, candidates)
    end
  end

  @doc """
  The server on `node` exited, or `node` disconnected: every command
  relayed there and not answered fails with `{:error, {:member_down,
  node}}`. `:noproc` (the group does not run there) passes the node over.
  """
  @spec down(t(), node(), term(), candidates()) :: {t(), [effect()]}
  def down(%__MODULE__{} = relay, node, reason, candidates) do
    passed = if reason == :noproc, do: MapSet.put(relay.passed, node), else: relay.passed

    relay = %{
      relay
      | watched: MapSet.delete(relay.watched, node),
        target: if(relay.target == node, do: nil, else: relay.target),
        passed: passed
    }

    lose(relay, fn {n, _seq, _entry} -> n == node end, {:error, {:member_down, node}}, candidates)
  end

  @doc """
  The commands relayed and not answered 1 s (`grace`) past their deadline
  are answered `{:error, :timeout}` and forgotten (`now` in monotonic ms).
  """
  @spec expire(t(), integer(), non_neg_integer(), candidates()) :: {t(), [effect()]}
  def expire(%__MODULE__{} = relay, now, grace, candidates) do
    lose(
      relay,
      fn {_n, _seq, entry} -> entry.deadline + grace < now end,
      {:error, :timeout},
      candidates
    )
  end

  # Commands that may or may not have been applied: answered `reply`,
  # counted as taken in by their node, in the order sent.
  defp lose(relay, lost?, reply, candidates) do
    {lost, kept} = Enum.split_with(relay.outstanding, fn {_ref, value} -> lost?.(value) end)
    relay = %{relay | outstanding: Map.new(kept)}

    {relay, acc} =
      lost
      |> Enum.map(fn {_ref, value} -> value end)
      |> Enum.sort_by(fn {_node, seq, _entry} -> seq end)
      |> Enum.reduce({relay, []}, fn {_node, seq, entry}, {relay, acc} ->
        relay = taken(relay, entry.caller, seq)
        settle(relay, entry.caller, [{:answer, entry, reply} | acc], candidates)
      end)

    {relay, Enum.reverse(acc)}
  end

  defp update(relay, caller, fun),
    do: %{relay | callers: Map.update!(relay.callers, caller, fun)}

  defp taken(relay, caller, seq), do: update(relay, caller, &%{&1 | taken: max(&1.taken, seq)})

  defp settled(relay, caller, effects, candidates) do
    {relay, acc} = settle(relay, caller, Enum.reverse(effects), candidates)
    {relay, Enum.reverse(acc)}
  end

  # One of the caller's commands is answered: once none is left at its
  # node, what waited goes on, refused ones first. Effects accumulate
  # newest first in `acc`.
  defp settle(relay, caller, acc, candidates) do
    stream = Map.fetch!(relay.callers, caller)

    if stream.count > 1 do
      {update(relay, caller, &%{&1 | count: &1.count - 1}), acc}
    else
      relay = %{relay | callers: Map.delete(relay.callers, caller)}

      {relay, acc} =
        stream.refused
        |> Enum.reverse()
        |> Enum.reduce({relay, acc}, fn {seq, entry, reason}, {relay, acc} ->
          if seq < stream.taken,
            do: {relay, [{:answer, entry, {:error, reason}} | acc]},
            else: forward_onto(relay, entry, acc, candidates)
        end)

      Enum.reduce(:queue.to_list(stream.held), {relay, acc}, fn entry, {relay, acc} ->
        forward_onto(relay, entry, acc, candidates)
      end)
    end
  end

  defp forward_onto(relay, entry, acc, candidates) do
    {relay, effects} = forward(relay, entry, candidates)
    {relay, Enum.reverse(effects, acc)}
  end

  @doc "Commands relayed and not answered yet."
  @spec outstanding(t()) :: non_neg_integer()
  def outstanding(%__MODULE__{outstanding: outstanding}), do: map_size(outstanding)
end
