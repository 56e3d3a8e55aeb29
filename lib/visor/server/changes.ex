defmodule Visor.Server.Changes do
  @moduledoc false
  # Membership changes asked for through this node (`Visor.reconfigure/3`;
  # a pure decider, `Visor.Server` carries out its effects), on a member
  # whose replica runs. docs/operations.md, "Membership changes".
  #
  # Each request is a condition on the member list, and a call whose
  # condition already holds is answered `{:ok, %{epoch:, members:}}` at
  # once: `{:remove, c}` holds when `c` is not a member, `{:set, nodes}`
  # when the list has exactly `nodes`, `{:add, d}` when `d` is one,
  # `{:replace, c, d}` when `c` is not and `d` is. So calling again after
  # a `:timeout` is truthful. A request whose condition does not hold
  # becomes a target list (the members it leaves, in any order: the
  # engine builds the next epoch from it, `Visor.Native.reconfigure/4`)
  # and is handed to the engine with a number of its own; the engine's
  # `{:reconfigured, id, result}` settles it. A node the target adds needs
  # a learner first: the server asks that node (a spare running the
  # group) to start one at the slot the change gives it (`learners/2`)
  # before it hands the change over, and stops them on a final "no".
  #
  # Answers (the design's table, docs/design/membership.md 2.13):
  #
  #   * `:done`: `{:ok, %{epoch:, members:}}` once this replica has entered
  #     the new epoch (the `{:epoch, ...}` event follows the result, in
  #     disk mode after a sync);
  #   * `:busy`: `{:error, {:change_in_progress, epoch}}`; `:stale` (the
  #     list moved on, or this node was behind) is asked again once with a
  #     fresh target if its condition still does not hold, then answered
  #     so too;
  #   * `:not_member`: `{:error, {:not_a_member, node}}` (this node);
  #   * `:unreachable`: `{:error, {:unreachable, node}}` (a new node's
  #     learner could not be started, or was never heard by the deadline);
  #   * `:no_quorum`, `:abandoned`: `{:error, :no_quorum}` (the new list
  #     would lack a live, caught-up quorum by the deadline, or the primary
  #     could not be reached; every one is a final "no");
  #   * `:unknown`, the caller's deadline, or the replica's removal while
  #     the change was under way: `{:error, :timeout}`, a "maybe" (call
  #     again with the same request: its condition tells).
  #
  # The engine's deadline for a change is three quarters of the time the
  # caller has left, so that its final "no" reaches the caller before the
  # caller's own deadline makes it a "maybe".
  #
  # Effects, in order:
  #
  #   * `{:reply, from, reply}`;
  #   * `{:reconfigure, id, member_ids, ticks, learners}`: start the
  #     learners (`[{node, slot, member_id}]`) on their nodes, then hand
  #     the change to the engine (`Visor.Native.reconfigure/4`); a learner
  #     that cannot be started settles the change as `{:unreachable, node}`;
  #   * `{:stop_learners, nodes}`: the change will not happen: its learners
  #     stop, and their nodes serve as spares again;
  #   * `{:after, ms, message}`: the caller's deadline, as a message to the
  #     server (`{:visor_change_deadline, tag, id}`).

  @typedoc """
  Where this node stands, as the server knows it: the epoch, the members
  in order (and as `{slot, node}`), the list the group was formed with
  (member ids derive from it: `Visor.MemberId`), this node, the server's
  tag, and the engine's tick.
  """
  @type view :: %{
          epoch: non_neg_integer(),
          members: [node()],
          current: [{non_neg_integer(), node()}],
          genesis: tuple(),
          node: node(),
          tag: reference(),
          tick_ms: pos_integer()
        }

  @type request ::
          {:remove, node()} | {:set, [node()]} | {:add, node()} | {:replace, node(), node()}

  defstruct pending: %{}, next_id: 1

  @type t :: %__MODULE__{}

  @doc "Whether `request` has the shape of a request (`Visor.reconfigure/3` checks it first)."
  @spec request?(term()) :: boolean()
  def request?({:remove, node}), do: node?(node)
  def request?({:add, node}), do: node?(node)
  def request?({:replace, old, new}), do: node?(old) and node?(new) and old != new

  def request?({:set, [_ | _] = nodes}),
    do: Enum.all?(nodes, &node?/1) and length(Enum.uniq(nodes)) == length(nodes)

  def request?(_other), do: false

  defp node?(node), do: is_atom(node) and node not in [nil, true, false]

  @doc """
  What `request` asks of the list `members`: `:holds` (its condition
  holds already), `{:change, nodes}` (the list to change to), or
  `{:error, reason}`.
  """
  @spec target([node()], request()) :: :holds | {:change, [node()]} | {:error, term()}
  def target(members, {:remove, node}) do
    cond do
      node not in members -> :holds
      members == [node] -> {:error, :last_member}
      true -> {:change, members -- [node]}
    end
  end

  def target(members, {:add, node}) do
    cond do
      node in members -> :holds
      true -> sized(members ++ [node])
    end
  end

  def target(members, {:replace, old, new}) do
    cond do
      old not in members and new in members -> :holds
      old not in members -> {:error, {:not_a_member, old}}
      new not in members -> {:change, (members -- [old]) ++ [new]}
      true -> {:change, members -- [old]}
    end
  end

  def target(members, {:set, nodes}) do
    cond do
      Enum.sort(nodes) == Enum.sort(members) -> :holds
      true -> sized(nodes)
    end
  end

  defp sized(nodes) do
    max = Visor.Contract.max_replicas()
    if length(nodes) > max, do: {:error, {:too_many_members, max}}, else: {:change, nodes}
  end

  @doc """
  The learners a change to `nodes` needs, as `{node, slot, member_id}`: one
  for each node outside the list, in the order named, each taking the
  lowest slot free in the list (as the engine's `Membership::next` does).
  """
  @spec learners([node()], view()) :: [{node(), non_neg_integer(), <<_::128>>}]
  def learners(nodes, view) do
    taken = Enum.map(view.current, &elem(&1, 0))

    {learners, _taken} =
      nodes
      |> Enum.reject(&(&1 in view.members))
      |> Enum.map_reduce(taken, fn node, taken ->
        slot = Enum.find(0..11, &(&1 not in taken))
        {{node, slot, member_id(view, node)}, [slot | taken]}
      end)

    learners
  end

  defp member_id(view, node), do: Visor.MemberId.of(view.genesis, node)

  @doc """
  A caller asks for `request` (checked with `request?/1`), to be answered
  by `deadline` (monotonic ms; `now` is the time).
  """
  @spec request(t(), request(), GenServer.from(), integer(), integer(), view()) ::
          {t(), [tuple()]}
  def request(%__MODULE__{} = changes, request, from, deadline, now, view) do
    case target(view.members, request) do
      :holds ->
        {changes, [{:reply, from, ok(view)}]}

      {:error, _reason} = error ->
        {changes, [{:reply, from, error}]}

      {:change, nodes} ->
        pending = %{from: from, request: request, deadline: deadline, epoch: view.epoch}
        {changes, submit} = submit(changes, pending, nodes, now, view)
        {changes, submit ++ [{:after, max(deadline - now, 0), deadline_message(view, changes)}]}
    end
  end

  # The deadline message names the change by the number it was first
  # given; a resubmission (after :stale) moves it to a new number and
  # keeps the first in `first`.
  defp deadline_message(view, changes),
    do: {:visor_change_deadline, view.tag, changes.next_id - 1}

  defp submit(changes, pending, nodes, now, view) do
    id = changes.next_id
    ids = Enum.map(nodes, &member_id(view, &1))
    left = max(pending.deadline - now, 0)
    ticks = max(div(div(left * 3, 4), view.tick_ms), 1)
    learners = learners(nodes, view)
    pending = pending |> Map.put_new(:first, id) |> Map.put(:learners, learners)

    {%{changes | pending: Map.put(changes.pending, id, pending), next_id: id + 1},
     [{:reconfigure, id, ids, ticks, learners}]}
  end

  @doc "The engine's `{:reconfigured, id, result}`."
  @spec result(t(), non_neg_integer(), atom(), integer(), view()) :: {t(), [tuple()]}
  def result(%__MODULE__{} = changes, id, result, now, view) do
    case Map.pop(changes.pending, id) do
      {nil, _} ->
        {changes, []}

      {pending, rest} ->
        changes = %{changes | pending: rest}
        settle(changes, id, pending, result, now, view)
    end
  end

  defp settle(changes, id, pending, :done, _now, view) do
    if view.epoch > pending.epoch,
      do: {changes, [{:reply, pending.from, ok(view)}]},
      # The next epoch's event is on its way: answer then (entered/2).
      else: {put_in(changes.pending[id], Map.put(pending, :done, true)), []}
  end

  defp settle(changes, _id, pending, :stale, now, view) do
    case target(view.members, pending.request) do
      :holds ->
        {changes, [{:reply, pending.from, ok(view)}]}

      {:error, _reason} = error ->
        {changes, [{:reply, pending.from, error}]}

      {:change, nodes} ->
        if Map.get(pending, :retried, false) or now >= pending.deadline do
          stop =
            case Map.get(pending, :learners, []) do
              [] -> []
              learners -> [{:stop_learners, Enum.map(learners, &elem(&1, 0))}]
            end

          {changes, [{:reply, pending.from, {:error, {:change_in_progress, view.epoch}}} | stop]}
        else
          pending = %{pending | epoch: view.epoch} |> Map.put(:retried, true)
          submit(changes, pending, nodes, now, view)
        end
    end
  end

  defp settle(changes, _id, pending, result, _now, view) do
    learners = Map.get(pending, :learners, [])

    reply =
      case result do
        :unchanged -> ok(view)
        :busy -> {:error, {:change_in_progress, view.epoch}}
        :not_member -> {:error, {:not_a_member, view.node}}
        :unknown -> {:error, :timeout}
        # A learner was never heard by the deadline (the core does not say
        # which: the first one named), or could not be started.
        :unreachable -> {:error, {:unreachable, learners |> hd() |> elem(0)}}
        {:unreachable, node} -> {:error, {:unreachable, node}}
        # :no_quorum and :abandoned are each a final "no" by the deadline.
        _no -> {:error, :no_quorum}
      end

    # A final "no": the change never happens, its learners stop. (A
    # "maybe" keeps them: the change may still commit.)
    stop =
      if learners != [] and reply != {:error, :timeout},
        do: [{:stop_learners, Enum.map(learners, &elem(&1, 0))}],
        else: []

    {changes, [{:reply, pending.from, reply} | stop]}
  end

  @doc """
  The replica entered a new epoch (`view` is the new one): the changes
  done meanwhile are answered.
  """
  @spec entered(t(), view()) :: {t(), [tuple()]}
  def entered(%__MODULE__{} = changes, view) do
    {done, rest} =
      Enum.split_with(changes.pending, fn {_id, p} ->
        Map.get(p, :done, false) and view.epoch > p.epoch
      end)

    {%{changes | pending: Map.new(rest)}, for({_id, p} <- done, do: {:reply, p.from, ok(view)})}
  end

  @doc """
  The caller's deadline for the change first numbered `first`: a "maybe".
  """
  @spec deadline(t(), non_neg_integer()) :: {t(), [tuple()]}
  def deadline(%__MODULE__{} = changes, first) do
    case Enum.find(changes.pending, fn {_id, p} -> p.first == first end) do
      nil ->
        {changes, []}

      {id, pending} ->
        {%{changes | pending: Map.delete(changes.pending, id)},
         [{:reply, pending.from, {:error, :timeout}}]}
    end
  end

  @doc """
  The replica stopped (removed, or its engine went down): every change
  under way is a "maybe", whatever it became.
  """
  @spec abandon(t()) :: {t(), [tuple()]}
  def abandon(%__MODULE__{} = changes) do
    {%{changes | pending: %{}},
     for({_id, p} <- changes.pending, do: {:reply, p.from, {:error, :timeout}})}
  end

  defp ok(view), do: {:ok, %{epoch: view.epoch, members: view.members}}
end
