defmodule Visor.Formation.Decider do
  @moduledoc false
  # What the two agreement deciders, `Visor.Formation.Explicit` (`nodes:`)
  # and `Visor.Formation.Discovery` (`cluster_size:`), share: the effects
  # they return, the decisions they take and how each one is announced.
  #
  # A decider is a pure state machine. `handle(state, input)` takes a message
  # a peer sent (already checked by `Visor.Formation` to name a pid to answer
  # to), a tick or a timer, and returns the new state and the effects to
  # carry out, in order. It reads no clock, draws no random number (the
  # incarnation and a `:rand` state come in with its state), and touches no
  # process, table or file: `Visor.Formation` carries the effects out, and a
  # test can run many deciders in one process, through any interleaving.
  #
  # While a decider function runs, its effects gather in the state (`emit/2`,
  # newest first); `flush/1` hands them out in order.

  alias Visor.Options

  @reconnect_every_ticks 10

  @doc "How many ticks apart an unsettled decider asks to reconnect (a settled one: every tick)."
  @spec reconnect_every_ticks() :: pos_integer()
  def reconnect_every_ticks, do: @reconnect_every_ticks

  @typedoc """
  `recover: true` when this node restarted and must rejoin: its replica
  starts with `Visor.Native.start/2`'s `recover: true`.
  """
  @type decision ::
          :pending
          | {:member, %{cluster: <<_::128>>, members: [node()], recover: boolean()}}
          | :spare
          | {:refused, {:setting_mismatch, atom(), term(), term()}}

  @typedoc """
  What a decider asks of `Visor.Formation`:

    * `{:send, dest, message}`: send, best effort (never connects);
    * `{:timer, ms, message}`: send `message` to this process in `ms`;
    * `{:notify, decision}`: tell the group's server the decision;
    * `{:remember, formed}`: memory mode: record in `Visor.Lifetime` the
      cluster this node's replica joins;
    * `{:persist, record}`: disk mode, `nodes:`: write
      `Visor.Formation.Restore.formation_record/1` of `record` to the
      store's directory, before the replica creates the store;
    * `{:connect, node}`: keep distribution connected to `node`;
    * `{:log, level, key, message}`: log `message`; `key` names the event.
  """
  @type effect ::
          {:send, term(), term()}
          | {:timer, non_neg_integer(), term()}
          | {:notify, decision()}
          | {:remember, map()}
          | {:persist, map()}
          | {:connect, node()}
          | {:log, Logger.level(), atom(), String.t()}

  @typedoc """
  What a store that this node's replica wrote says (`Visor.Formation.Restore`);
  `recovering`: the replica was recovering when it stopped.
  """
  @type restored :: %{
          cluster: <<_::128>>,
          members: [node()],
          settings: map(),
          replica: non_neg_integer(),
          view: non_neg_integer(),
          commit: non_neg_integer(),
          dir: String.t(),
          formed_with: %{node() => integer()},
          recovering: boolean()
        }

  @doc "Adds `effect` to those `state` will hand out."
  @spec emit(map(), effect()) :: map()
  def emit(state, effect), do: %{state | out: [effect | state.out]}

  @doc "The state without its gathered effects, and those effects in order."
  @spec flush(map()) :: {map(), [effect()]}
  def flush(state), do: {%{state | out: []}, Enum.reverse(state.out)}

  @doc "Logs `message` (a string) at `level`; `key` names the event."
  @spec log(map(), Logger.level(), atom(), String.t()) :: map()
  def log(state, level, key, message),
    do: emit(state, {:log, level, key, "#{inspect(state.module)}: #{message}"})

  @doc "Logs `message.()` the first time `once` is seen, and never again."
  @spec warn_once(map(), term(), Logger.level(), atom(), (() -> String.t())) :: map()
  def warn_once(state, once, level, key, message) do
    if MapSet.member?(state.warned, once) do
      state
    else
      log(%{state | warned: MapSet.put(state.warned, once)}, level, key, message.())
    end
  end

  @doc """
  Logs, once per peer, that `from` runs other shared settings than this
  node; `consequence` says what follows from it.
  """
  @spec warn_setting_mismatch(map(), node(), tuple(), String.t()) :: map()
  def warn_setting_mismatch(state, from, {:setting_mismatch, key, ours, theirs}, consequence) do
    warn_once(state, {:mismatch, from}, :error, :setting_mismatch, fn ->
      "#{from} is started with #{key} #{inspect(theirs)}, this node with #{inspect(ours)} " <>
        "(option #{Options.setting_source(key)}); #{consequence}"
    end)
  end

  @doc """
  One tick: counts it, and every #{@reconnect_every_ticks} ticks asks to
  keep distribution connected to `targets` (a healed partition then heals
  the cluster: replica traffic never sets up connections itself). A
  `settled` decider (it has nothing left to send on ticks: `settled?/1`
  of its module) is ticked #{@reconnect_every_ticks} times less often
  (`Visor.Formation`), and asks at every tick.
  """
  @spec tick(map(), [node()], boolean()) :: map()
  def tick(state, targets, settled \\ false) do
    state = %{state | ticks: state.ticks + 1}

    if settled or rem(state.ticks, @reconnect_every_ticks) == 1,
      do: Enum.reduce(targets -- [state.node], state, &emit(&2, {:connect, &1})),
      else: state
  end

  @doc """
  Whether `term` is a proper list of at most `Visor.Options.max_replicas/0`
  elements: peers are untrusted, and an improper or a huge list is junk.
  """
  @spec member_list?(term()) :: boolean()
  def member_list?(term), do: short_list?(term, Options.max_replicas())

  @doc "A `member_list?/1` of node names (atoms), checked before any is used as one."
  @spec node_list?(term()) :: boolean()
  def node_list?(term), do: member_list?(term) and Enum.all?(term, &is_atom/1)

  defp short_list?([], _room), do: true
  defp short_list?([_ | rest], room) when room > 0, do: short_list?(rest, room - 1)
  defp short_list?(_, _room), do: false

  # ---- Decisions -----------------------------------------------------------

  @doc """
  Memory mode, at start: this node's server restarted (the node did not),
  and `Visor.Lifetime` says its replica joined `formed`. Never fresh,
  whatever the peers say: they may all have restarted too and remember
  nothing, and a fresh start of a majority would serve an empty state as
  if nothing had been committed.
  """
  @spec restarted_server(map(), map()) :: map()
  def restarted_server(state, formed) do
    state
    |> log(
      :warning,
      :restarted_server,
      "this node's server restarted (the node did not), so its " <>
        "replica lost its memory. If a majority of the members lost theirs at once, the " <>
        "state is lost and the replicas stay :recovering until the group is stopped on every " <>
        "node, Visor.forget/1 is called there, and the group is started again (a new, " <>
        "empty cluster)"
    )
    |> become_member(formed, true)
  end

  @doc """
  Disk mode, at start: this node's replica ran and wrote everything it
  acknowledged, so it restarts from its store as the member the store
  records, whoever else is up. `formed` is the cluster the store records.
  """
  @spec restore(map(), map(), restored()) :: map()
  def restore(state, formed, restored) do
    state
    |> log(
      :info,
      :restored,
      "restarting replica #{restored.replica} of the cluster " <>
        "#{inspect(restored.members)} from its store in #{restored.dir} " <>
        "(view #{restored.view}, commit #{restored.commit})"
    )
    |> Map.merge(%{
      phase: :member,
      formed: Map.put(formed, :joining, Map.get(restored, :joining)),
      recover: false
    })
  end

  @doc """
  This node's replica starts, as a member of `formed`: fresh, or rejoining
  (`recover`). `why` says how this node learned that it restarted, for
  the one line a rejoin logs.

  A decider whose state has `held: true` (`Visor.Formation.Explicit`: a
  fresh start that waits for word that every member decided) takes the
  decision (its records, the `Visor.Lifetime` record) but does not start
  the replica yet: `start/2` does, later.
  """
  @spec become_member(map(), map(), boolean(), String.t() | nil) :: map()
  def become_member(state, formed, recover, why \\ nil) do
    state = if state.storage == :memory, do: emit(state, {:remember, formed}), else: state
    state = %{state | phase: :member, formed: formed, recover: recover}
    if Map.get(state, :held, false), do: state, else: start(state, why)
  end

  @doc """
  This node's replica starts, as the member `become_member/4` made it:
  logs how, and tells the group's server.
  """
  @spec start(map(), String.t() | nil) :: map()
  def start(%{formed: formed, recover: recover} = state, why \\ nil) do
    index = Enum.find_index(formed.members, &(&1 == state.node))

    state =
      if recover do
        log(
          state,
          :warning,
          :rejoin,
          "this node restarted#{if why, do: " (#{why})"}; replica #{index} rejoins the cluster " <>
            "#{inspect(formed.members)} and recovers its state from the others"
        )
      else
        log(
          state,
          :info,
          :formed,
          "cluster formed with #{inspect(formed.members)}; starting replica #{index}"
        )
      end

    notify(state)
  end

  @doc """
  This node's replica never starts in this group's life: its settings
  differ from the cluster's (`from` runs it).
  """
  @spec refuse(map(), node(), tuple()) :: map()
  def refuse(state, from, {:setting_mismatch, key, ours, theirs} = reason) do
    state
    |> log(
      :error,
      :refused,
      "refusing to start this node's replica: it is started with " <>
        "#{key} #{inspect(ours)}, the cluster (#{from}) runs with #{inspect(theirs)} " <>
        "(option #{Options.setting_source(key)}); every member must have the same value: " <>
        "restart this node's group with #{key} #{inspect(theirs)}"
    )
    |> Map.put(:phase, {:refused, reason})
    |> notify()
  end

  @doc "This node is a spare, not a replica, for `why`."
  @spec decide_spare(map(), String.t()) :: map()
  def decide_spare(state, why) do
    state
    |> log(:warning, :spare, "this node is a spare, not a replica: #{why}")
    |> Map.put(:phase, :spare)
    |> notify()
  end

  defp notify(state), do: emit(state, {:notify, decision(state)})

  @doc "The decision so far."
  @spec decision(map()) :: decision()
  # Decided, but the replica does not start yet (`become_member/4`).
  def decision(%{held: true}), do: :pending

  def decision(%{phase: :member, formed: formed, recover: recover}) do
    decision = %{cluster: formed.cluster, members: formed.members, recover: recover}

    # A node a change added, restarting from its store: its slot, member
    # id and the epoch that admitted it.
    case Map.get(formed, :joining) do
      nil -> {:member, decision}
      joining -> {:member, Map.put(decision, :joining, joining)}
    end
  end

  def decision(%{phase: :spare}), do: :spare
  def decision(%{phase: {:refused, reason}}), do: {:refused, reason}
  def decision(_state), do: :pending

  @doc "How a restarted member comes back, for the logs of the others."
  @spec restart_note(map()) :: String.t()
  def restart_note(%{storage: :memory}),
    do: "it rejoins and recovers its state from the others"

  def restart_note(_disk),
    do: "it restarts from its disk, or rejoins and recovers its state from the others without one"
end
