defmodule Visor.Sessions do
  @moduledoc false
  # The pool of client sessions through which one node's server submits
  # commands (a pure data structure; `Visor.Server.Callers` owns it).
  #
  # The protocol's client table allows one outstanding request per client id
  # (docs/protocol.md, "Client table"), so a server that wants many commands
  # in flight keeps many client ids: *slots*. A slot is registered lazily (its
  # request 0 is a registration, answered with the session), then numbers its
  # requests 1, 2, 3, ... and is busy while one is in flight. The engine
  # retries a request itself, with the same client id and number, until it is
  # settled, so a slot never resubmits; a slot whose caller gave up stays busy
  # until the engine settles the request.

  @enforce_keys [:max]
  defstruct max: 0, slots: %{}, idle: [], registering: 0

  @typedoc "A client id: 16 random bytes."
  @type client :: <<_::128>>
  @typedoc "A slot: registering, idle (next request number) or busy (request in flight)."
  @type slot ::
          :registering
          | {:idle, session :: pos_integer(), next :: pos_integer()}
          | {:busy, session :: pos_integer(), request :: pos_integer()}
  @type t :: %__MODULE__{
          max: pos_integer(),
          slots: %{client() => slot()},
          idle: [client()],
          registering: non_neg_integer()
        }

  @doc "An empty pool that will hold at most `max` slots."
  @spec new(pos_integer()) :: t()
  def new(max) when is_integer(max) and max > 0, do: %__MODULE__{max: max}

  @doc """
  Takes an idle slot for a new request: `{:ok, client, session, request,
  pool}` (the slot is now busy with `request`), or `:none`.
  """
  @spec checkout(t()) :: {:ok, client(), pos_integer(), pos_integer(), t()} | :none
  def checkout(%__MODULE__{idle: [client | rest]} = pool) do
    {:idle, session, next} = Map.fetch!(pool.slots, client)
    slots = Map.put(pool.slots, client, {:busy, session, next})
    {:ok, client, session, next, %{pool | idle: rest, slots: slots}}
  end

  def checkout(%__MODULE__{}), do: :none

  @doc """
  Adds slots to register, so that idle plus registering slots cover
  `wanted` waiting requests, within `max`. Returns the new clients (each
  must be registered with request 0) and the pool.
  """
  @spec grow(t(), non_neg_integer()) :: {[client()], t()}
  def grow(%__MODULE__{} = pool, wanted) do
    room = pool.max - map_size(pool.slots)
    missing = wanted - pool.registering - length(pool.idle)
    count = max(0, min(room, missing))
    clients = for _ <- 1..count//1, do: new_client()
    slots = Enum.reduce(clients, pool.slots, &Map.put(&2, &1, :registering))
    {clients, %{pool | slots: slots, registering: pool.registering + count}}
  end

  @doc "The slot of `client`, or `nil` if it is not this pool's."
  @spec lookup(t(), client()) :: slot() | nil
  def lookup(%__MODULE__{slots: slots}, client), do: Map.get(slots, client)

  @doc "A registering slot got its session: it becomes idle, next request 1."
  @spec registered(t(), client(), pos_integer()) :: t()
  def registered(%__MODULE__{} = pool, client, session) do
    case Map.get(pool.slots, client) do
      :registering ->
        %{
          pool
          | slots: Map.put(pool.slots, client, {:idle, session, 1}),
            idle: [client | pool.idle],
            registering: pool.registering - 1
        }

      _ ->
        pool
    end
  end

  @doc "The busy slot's request `request` is settled: the slot is idle again."
  @spec settle(t(), client(), pos_integer()) :: t()
  def settle(%__MODULE__{} = pool, client, request) do
    case Map.get(pool.slots, client) do
      {:busy, session, ^request} ->
        %{
          pool
          | slots: Map.put(pool.slots, client, {:idle, session, request + 1}),
            idle: [client | pool.idle]
        }

      _ ->
        pool
    end
  end

  @doc "Forgets a slot (its session was evicted); a later `grow/2` replaces it."
  @spec drop(t(), client()) :: t()
  def drop(%__MODULE__{} = pool, client) do
    case Map.pop(pool.slots, client) do
      {nil, _} ->
        pool

      {:registering, slots} ->
        %{pool | slots: slots, registering: pool.registering - 1}

      {_, slots} ->
        %{pool | slots: slots, idle: List.delete(pool.idle, client)}
    end
  end

  @doc "Counts for `status`: slots, idle, busy and registering."
  @spec counts(t()) :: %{
          slots: non_neg_integer(),
          idle: non_neg_integer(),
          busy: non_neg_integer(),
          registering: non_neg_integer()
        }
  def counts(%__MODULE__{} = pool) do
    slots = map_size(pool.slots)
    idle = length(pool.idle)

    %{
      slots: slots,
      idle: idle,
      busy: slots - idle - pool.registering,
      registering: pool.registering
    }
  end

  # Client ids must be unique across the cluster and over time (a reused id
  # would share another client's at-most-once bookkeeping); hash everything
  # that differs between nodes, processes and moments.
  defp new_client do
    :erlang.md5(
      :erlang.term_to_binary(
        {node(), self(), make_ref(), :erlang.unique_integer(), System.system_time(),
         :rand.bytes(16)}
      )
    )
  end
end
