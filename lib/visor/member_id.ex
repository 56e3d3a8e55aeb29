defmodule Visor.MemberId do
  @moduledoc false
  # The member id the engine knows a node by (16 bytes, a little-endian
  # u128), computed the same way on every node from two things every
  # member has: the list the group was formed with (`nodes:`, or the
  # store's metadata) and the node's name. docs/operations.md,
  # "Membership changes".
  #
  #   * A node of that genesis list: its index in it (the engine's genesis,
  #     `Config::new`, numbers members so, and format-6 stores of genesis
  #     members record these ids), also if it is removed and added again.
  #   * Any other node (one a change adds): the md5 of its name
  #     (`Atom.to_string/1`) read as a little-endian u128, with its top bit
  #     set, so that it never equals a genesis index (at most 6). Two names
  #     collide only if their md5s agree in 127 bits.
  #
  # The way back, from an id to a node, is the genesis list for an index,
  # and hashing the names of the nodes one knows (this node, the connected
  # ones, the members) for the rest.

  import Bitwise

  @top 1 <<< 127

  @doc "The member id of `node`, given the genesis list (a list or a tuple)."
  @spec of([node()] | tuple(), node()) :: <<_::128>>
  def of(genesis, node) when is_tuple(genesis), do: of(Tuple.to_list(genesis), node)

  def of(genesis, node) when is_list(genesis) do
    case Enum.find_index(genesis, &(&1 == node)) do
      nil -> hashed(node)
      index -> <<index::little-unsigned-128>>
    end
  end

  @doc "The id of a node outside the genesis list: md5 of its name, top bit set."
  @spec hashed(node()) :: <<_::128>>
  def hashed(node) do
    <<value::little-unsigned-128>> = :erlang.md5(Atom.to_string(node))
    <<bor(value, @top)::little-unsigned-128>>
  end

  @doc """
  The node whose id is `id`: a genesis index names its node, any other id
  the first of `candidates` whose hashed name it is; `nil` if none.
  """
  @spec node_of([node()] | tuple(), binary(), [node()]) :: node() | nil
  def node_of(genesis, id, candidates) when is_list(genesis),
    do: node_of(List.to_tuple(genesis), id, candidates)

  def node_of(genesis, <<index::little-unsigned-128>>, _candidates)
      when index < tuple_size(genesis),
      do: elem(genesis, index)

  def node_of(_genesis, <<value::little-unsigned-128>> = id, candidates)
      when value >= @top,
      do: Enum.find(candidates, &(hashed(&1) == id))

  def node_of(_genesis, _id, _candidates), do: nil
end
