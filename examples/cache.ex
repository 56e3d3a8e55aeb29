defmodule Cache do
  @moduledoc """
  The README's example group: a map replicated on every member node.

  Compiled in the `:dev` and `:test` environments of this repository only
  (`mix.exs`), so that `iex -S mix` has it for the README's walkthrough,
  `make demo` runs it, and the tests use it verbatim. It is not part of the
  library: an application that depends on `:visor` never gets it.

      Cache.start_link(nodes: [:a@host, :b@host, :c@host])
      Cache.commit({:add, %{user1: %{email: "a@example.com"}}})  #=> nil
      Cache.get()                                               #=> %{user1: ...}
  """
  use Visor

  @impl Visor
  def initial_state(_opts), do: %{}

  @impl Visor
  def handle_commit({:add, item}, state), do: {:ok, nil, Map.merge(state, item)}
end
