# The README's Cache is examples/cache.ex, compiled for the tests too.

defmodule Visor.Test.Counter do
  @moduledoc """
  A group for the fault tests: counts increments, remembers which ids it
  applied (so a double application shows as `count > MapSet.size(applied)`),
  and has commands that fail in every way `handle_commit` can.
  """
  use Visor

  @impl Visor
  def initial_state(_opts), do: %{count: 0, applied: MapSet.new(), last_op: 0, last_timestamp: 0}

  @impl Visor
  def handle_commit({:incr, id}, meta, state) do
    count = state.count + 1
    {:ok, count, %{stamp(state, meta) | count: count, applied: MapSet.put(state.applied, id)}}
  end

  def handle_commit(:meta, meta, state), do: {:ok, meta, stamp(state, meta)}
  def handle_commit({:echo, term}, meta, state), do: {:ok, term, stamp(state, meta)}
  # A large command that leaves only its size: the log holds it, the state does not.
  def handle_commit({:blob, bytes}, meta, state), do: {:ok, byte_size(bytes), stamp(state, meta)}
  def handle_commit(:raise, _meta, _state), do: raise(ArgumentError, "boom")
  def handle_commit(:throw, _meta, _state), do: throw(:oops)
  def handle_commit(:exit, _meta, _state), do: exit(:bye)
  def handle_commit(:bad_return, _meta, state), do: {:reply, :not_ok, state}

  # Poison commands: a linked process that crashes (the server traps it),
  # and a callback that kills its own process (nothing can trap that).
  def handle_commit(:link_crash, meta, state) do
    pid = spawn_link(fn -> exit(:boom) end)
    ref = Process.monitor(pid)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> {:ok, :survived, stamp(state, meta)}
    end
  end

  def handle_commit(:kill_self, _meta, _state), do: Process.exit(self(), :kill)

  # A slow callback (every replica runs it), or one slow on one node only
  # (a loaded machine): the state is the same everywhere either way.
  def handle_commit({:sleep, ms}, meta, state) do
    Process.sleep(ms)
    {:ok, :slept, stamp(state, meta)}
  end

  def handle_commit({:sleep_on, node, ms}, meta, state) do
    if node() == node, do: Process.sleep(ms)
    {:ok, :slept, stamp(state, meta)}
  end

  # Every command leaves a trace of its metadata, so replicas that applied
  # different metadata would differ.
  defp stamp(state, meta), do: %{state | last_op: meta.op, last_timestamp: meta.timestamp}
end

defmodule Visor.Test.Entity do
  @moduledoc """
  A replicated GenServer per entity: a keyed group's state is built from
  its key (`initial_state/2`), the default group's from `init_arg` alone.
  """
  use Visor

  @impl Visor
  def initial_state(init_arg), do: %{key: :default, init_arg: init_arg}

  @impl Visor
  def initial_state({:cart, id} = key, init_arg),
    do: %{key: key, init_arg: init_arg, items: List.duplicate(:item, id)}

  @impl Visor
  def handle_commit({:add, item}, state), do: {:ok, :ok, %{state | items: [item | state.items]}}
end

defmodule Visor.Test.Accessors do
  @moduledoc "`get_in` accessor functions that misbehave, loadable on peer nodes."

  @doc "An accessor that takes `ms` before it reads its key's value."
  def slow(ms) do
    fn :get, data, next ->
      Process.sleep(ms)
      next.(data)
    end
  end

  @doc "An accessor that gives its key's value with the node it runs on: `{node, value}`."
  def here, do: fn :get, data, next -> next.({node(), data}) end

  @doc "An accessor that kills the process it runs in."
  def killer, do: fn :get, _data, _next -> Process.exit(self(), :kill) end
end

defmodule Visor.Test.KeyedHelpers do
  @moduledoc "Calls run on peer nodes for the keyed groups' tests."

  @doc "`Visor.pipeline/3` then `Visor.await/2`, in one process on the node."
  def pipeline_await(group, command, opts \\ []) do
    group |> Visor.pipeline(command, opts) |> Visor.await()
  end

  @doc "Pipelines each of `commands` from one process, then awaits them all, in order."
  def pipeline_all(group, commands) do
    commands |> Enum.map(&Visor.pipeline(group, &1)) |> Enum.map(&Visor.await/1)
  end
end

defmodule Visor.Test.Fragile do
  @moduledoc """
  A keyed group's state machine whose start is slow or fails on a node,
  as with a slow or a down database there: `sleep_once/2` makes the
  node's next keyed start state take a while, `raise_on/2` makes each
  one there raise until turned off, and `attempts/1` counts the node's
  group host's attempts to start a keyed group. Its state is a sum:
  `:incr` adds 1, an integer adds itself.
  """
  use Visor

  @impl Visor
  def initial_state(_init_arg), do: 0

  # Each attempt of the host starts a new Visor.Supervisor, the server's
  # parent, whose own restarts of the server (it may build the state
  # more than once) are one attempt.
  @impl Visor
  def initial_state(_key, _init_arg) do
    {:parent, supervisor} = Process.info(self(), :parent)
    seen = :persistent_term.get({__MODULE__, :attempts}, MapSet.new())
    :persistent_term.put({__MODULE__, :attempts}, MapSet.put(seen, supervisor))
    ms = :persistent_term.get({__MODULE__, :sleep}, 0)
    :persistent_term.erase({__MODULE__, :sleep})
    Process.sleep(ms)
    if :persistent_term.get({__MODULE__, :raise}, false), do: raise("db down on #{node()}")
    0
  end

  @impl Visor
  def handle_commit(:incr, sum), do: {:ok, sum + 1, sum + 1}
  def handle_commit(n, sum) when is_integer(n), do: {:ok, sum + n, sum + n}

  @doc "`node`'s next keyed start state takes `ms` to build."
  def sleep_once(node, ms), do: put(node, :sleep, ms)

  @doc "`node`'s keyed start states raise (`true`) or not (`false`) from now on."
  def raise_on(node, raise?), do: put(node, :raise, raise?)

  @doc "How many times `node`'s host tried to start a keyed group."
  def attempts(node) do
    seen = :erpc.call(node, :persistent_term, :get, [{__MODULE__, :attempts}, MapSet.new()])
    MapSet.size(seen)
  end

  defp put(node, name, value),
    do: :ok = :erpc.call(node, :persistent_term, :put, [{__MODULE__, name}, value])
end
