defmodule ChatRoom do
  @moduledoc """
  The README's per-entity example: one replicated chat room per room
  name, a keyed group started on demand by the first post to it.

  Every node that may hold rooms runs the module's group host:

      children = [{Visor.Groups, module: ChatRoom, replicas: 3}]

  Then, from any node:

      ChatRoom.post("elixir", "ana", "hello")   #=> {:ok, 1}
      ChatRoom.post("elixir", "bo", "hi ana")   #=> {:ok, 2}
      ChatRoom.history("elixir")                #=> [{1, "ana", "hello"}, {2, "bo", "hi ana"}]
      ChatRoom.close("elixir")                  #=> :ok

  Compiled in the `:dev` and `:test` environments of this repository
  only, as `Cache` is: it is not part of the library.
  """
  use Visor

  # The room keeps its last messages only: a group's state is replicated
  # and checkpointed whole, so it should stay small.
  @keep 100

  @impl Visor
  def initial_state(_init_arg), do: %{room: nil, next: 1, messages: []}

  @impl Visor
  def initial_state(room, _init_arg), do: %{room: room, next: 1, messages: []}

  @impl Visor
  def handle_commit({:post, from, text}, %{next: n, messages: messages} = state) do
    {:ok, n, %{state | next: n + 1, messages: Enum.take([{n, from, text} | messages], @keep)}}
  end

  @doc """
  Posts `text` as `from` to `room`, starting the room's group first if it
  does not run: `{:ok, number}` (the message's number in the room), or
  `{:error, reason}` (as `Visor.commit/3` and `Visor.start_group/2` give
  it). Two nodes posting to a new room at once both start it: a start of
  a running group starts nothing and returns `{:error, {:already_started,
  _}}`, which `post/3` takes as started.
  """
  @spec post(term(), term(), String.t()) :: {:ok, pos_integer()} | {:error, term()}
  def post(room, from, text) do
    case Visor.commit({__MODULE__, room}, {:post, from, text}) do
      {:error, :no_group} ->
        with {:ok, _} <- started(Visor.start_group({__MODULE__, room})),
             do: reply(Visor.commit({__MODULE__, room}, {:post, from, text}))

      reply ->
        reply(reply)
    end
  end

  # A post from another node may have started the room meanwhile.
  defp started({:error, {:already_started, info}}), do: {:ok, info}
  defp started(result), do: result

  defp reply({:error, _} = error), do: error
  defp reply(number), do: {:ok, number}

  @doc "The room's last messages, oldest first: `[{number, from, text}]` (`[]` for a room never posted to)."
  @spec history(term()) :: [{pos_integer(), term(), String.t()}]
  def history(room) do
    case Visor.get({__MODULE__, room}) do
      {:error, :no_group} -> []
      %{messages: messages} -> Enum.reverse(messages)
    end
  end

  @doc "Closes `room` on every node: its messages are gone (`Visor.stop_group/2`)."
  @spec close(term()) :: :ok | {:error, :no_group}
  def close(room), do: Visor.stop_group({__MODULE__, room})
end
