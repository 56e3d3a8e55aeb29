defmodule Visor.Beacon do
  @moduledoc false
  # The node's failure detector, for quiet groups (`quiet_after_ticks:`;
  # docs/operations.md, "Quiet groups"): which other nodes are up, for
  # every group on this node at once, so that a group that sends nothing
  # still learns that its primary's node died.
  #
  # The decisions are the engine's pure detector (`Visor.Native.detector_*`,
  # the one the simulator runs over its faulty network): this process only
  # carries them out. Every beat interval it ticks the detector and sends
  # the beats it returns to the beacons of the other nodes (`{Visor.Beacon,
  # node}`, `:noconnect`: never setting up a lost link). Not `:nosuspend`:
  # a beat dropped because the link is busy with replica traffic would
  # make the peer suspect this node exactly when it is loaded; the beacon
  # waits instead, and a wait longer than two beats is its own stall,
  # which the detector forgives. It hands the detector the beats it
  # receives and distribution's `nodeup`/`nodedown`. A peer is up while
  # it beats and echoes this node's beats within `node_timeout_ms` (so a
  # link must work both ways); a `nodedown` makes it down at once.
  #
  # Each group's router subscribes (`subscribe/0`, when its engine starts
  # with quiet on) and gets `{:visor_nodes_up, beacon, nodes}` whenever the
  # set changes; it hands the engine its members' ids (`Visor.Native.peers/2`),
  # which wakes a quiet replica the change concerns.
  #
  # One per node, started on the first subscription and kept for the VM's
  # life like `Visor.Lifetime`'s keeper: linked to no supervisor, with
  # `init`'s group leader (an application's stop does not end it). Should
  # it die anyway, its subscribers' monitors fire and they subscribe
  # again, which starts a new one.

  use GenServer

  # A peer silent this long (or not echoing us) is down: the design's
  # `node_timeout_ms`. Beats go 8 times per default timeout, and no less
  # often with a longer one, so that a node with a longer timeout than a
  # peer's still beats often enough for it.
  @default_timeout_ms 800
  @beat_max_ms 100

  # A node down this long (and not connected again) is forgotten: names
  # of short-lived nodes (remote shells, tools) are not beaten for ever.
  @forget_after_ms 60_000

  @doc """
  Subscribes the caller: it gets `{:visor_nodes_up, beacon, nodes}` at
  each change. Returns `{beacon, nodes}`: the beacon's pid (to monitor)
  and the nodes held up now.
  """
  @spec subscribe() :: {pid(), [node()]}
  def subscribe, do: GenServer.call(ensure_started(), {:subscribe, self()}, 30_000)

  @doc "The nodes this node's beacon holds up (`[]` if it does not run)."
  @spec up() :: [node()]
  def up do
    case Process.whereis(__MODULE__) do
      nil -> []
      pid -> GenServer.call(pid, :up, 30_000)
    end
  end

  @doc """
  The beat interval for a node timeout of `timeout_ms`: 8 beats per
  timeout, but at most #{@beat_max_ms} ms (and at least 10), so that a
  node with a longer timeout still beats often enough for a peer with the
  default one.
  """
  @spec beat_ms(pos_integer()) :: pos_integer()
  def beat_ms(timeout_ms), do: timeout_ms |> div(8) |> min(@beat_max_ms) |> max(10)

  @doc "The node timeout in ms (`config :visor, node_timeout_ms:`, default 800)."
  @spec timeout_ms() :: pos_integer()
  def timeout_ms do
    case Application.get_env(:visor, :node_timeout_ms, @default_timeout_ms) do
      ms when is_integer(ms) and ms >= 80 -> ms
      _ -> @default_timeout_ms
    end
  end

  defp ensure_started do
    case Process.whereis(__MODULE__) do
      nil ->
        case GenServer.start(__MODULE__, [], name: __MODULE__) do
          {:ok, pid} -> pid
          {:error, {:already_started, pid}} -> pid
        end

      pid ->
        pid
    end
  end

  # ---- Process ------------------------------------------------------------

  @impl true
  def init([]) do
    {:group_leader, leader} = Process.info(Process.whereis(:init), :group_leader)
    Process.group_leader(self(), leader)
    :ok = :net_kernel.monitor_nodes(true)
    timeout = timeout_ms()
    beat = beat_ms(timeout)
    detector = Visor.Native.detector_new(node(), beat, timeout, now_ms())
    names = Map.new(Node.list(), &{Atom.to_string(&1), &1})
    Enum.each(Node.list(), &Visor.Native.detector_add(detector, &1))

    state = %{
      detector: detector,
      beat: beat,
      names: names,
      subscribers: %{},
      up: Enum.sort(Node.list())
    }

    {:ok, tick(state)}
  end

  @impl true
  def handle_call({:subscribe, pid}, _from, state) when is_pid(pid) do
    subscribers =
      if Map.has_key?(state.subscribers, pid),
        do: state.subscribers,
        else: Map.put(state.subscribers, pid, Process.monitor(pid))

    {:reply, {self(), state.up}, %{state | subscribers: subscribers}}
  end

  def handle_call(:up, _from, state), do: {:reply, state.up, state}
  def handle_call(_request, _from, state), do: {:reply, {:error, :unknown_call}, state}

  @impl true
  def handle_cast(_request, state), do: {:noreply, state}

  @impl true
  def handle_info(:visor_beat_tick, state) do
    wall_ns = System.os_time(:nanosecond)

    for {name, bytes} <- Visor.Native.detector_tick(state.detector, now_ms(), wall_ns),
        node = Map.get(state.names, name),
        node != nil do
      :erlang.send({__MODULE__, node}, {:visor_beat, bytes}, [:noconnect])
    end

    {:noreply, state |> changed() |> tick()}
  end

  # Peer input: untrusted, and the NIF says what it makes of it.
  def handle_info({:visor_beat, bytes}, state) do
    _ = Visor.Native.detector_beat(state.detector, bytes, now_ms())
    {:noreply, changed(state)}
  end

  # Distribution's word, but any node may send this process anything: a
  # node is watched only if it is connected, and only names are taken.
  def handle_info({:nodeup, node}, state) when is_atom(node) do
    if node in Node.list() do
      :ok = Visor.Native.detector_add(state.detector, node)
      {:noreply, changed(%{state | names: Map.put(state.names, Atom.to_string(node), node)})}
    else
      {:noreply, state}
    end
  end

  # (A forged one costs a false suspicion: a view change, never a loss.)
  def handle_info({:nodedown, node}, state) when is_atom(node) do
    :ok = Visor.Native.detector_down(state.detector, node, now_ms())
    Process.send_after(self(), {:visor_forget, node}, @forget_after_ms)
    {:noreply, changed(state)}
  end

  def handle_info({:visor_forget, node}, state) when is_atom(node) do
    if node in Node.list() do
      {:noreply, state}
    else
      :ok = Visor.Native.detector_remove(state.detector, node)
      {:noreply, changed(%{state | names: Map.delete(state.names, Atom.to_string(node))})}
    end
  end

  def handle_info({:DOWN, _ref, :process, pid, _reason}, state),
    do: {:noreply, %{state | subscribers: Map.delete(state.subscribers, pid)}}

  def handle_info(_message, state), do: {:noreply, state}

  # Tells the subscribers when the set of nodes held up changed (a node
  # that connects is up at once, as heard then, without the detector
  # calling it a change).
  defp changed(state) do
    {_changed, names} = Visor.Native.detector_up(state.detector)
    up = Enum.sort(for name <- names, node = Map.get(state.names, name), node != nil, do: node)

    if up == state.up do
      state
    else
      for pid <- Map.keys(state.subscribers), do: send(pid, {:visor_nodes_up, self(), up})
      %{state | up: up}
    end
  end

  defp tick(state) do
    Process.send_after(self(), :visor_beat_tick, state.beat)
    state
  end

  # Monotonic ms since the VM started: never negative, and a beacon that
  # restarts keeps counting up (the detector reads an echo ahead of its
  # clock as a previous life's).
  defp now_ms do
    System.convert_time_unit(
      System.monotonic_time() - :erlang.system_info(:start_time),
      :native,
      :millisecond
    )
  end
end
