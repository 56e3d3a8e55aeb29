defmodule Visor do
  @moduledoc """
  Visor replicates the state of a GenServer across BEAM nodes with
  Viewstamped Replication (VSR).

  You write a module with `use Visor`, start it on every node, and get one
  logical GenServer whose state survives the loss of any minority of nodes.
  The protocol engine is written in Rust and loaded as a NIF; the
  application state stays in Elixir as plain terms.

  This release ships the build pipeline and the native bridge only; the
  `use Visor` API (`commit/1`, `get/0`, ...) arrives in the next release.
  """
end
