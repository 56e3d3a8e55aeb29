defmodule Visor.Test.MembershipBytes do
  @moduledoc false
  # A membership's bytes, written out here by hand for tests: the core's
  # encoding of `vsr::Membership` (postcard, native/vsr/src/membership.rs:
  # the epoch, the change's name `{origin, id}`, then the members, each
  # its slot (one byte), id, joined, incarnation and life; integers other
  # than the slot as LEB128 varints). The engine takes only exactly these
  # bytes back (`Visor.Native.start/2`'s `:known`), so a test that builds
  # a list here also checks that the engine's encoding is this one.

  import Bitwise

  @doc """
  The bytes of the membership `epoch`, made by the change `{origin, id}`
  (origin a 16-byte member id), of `members`: `{slot, member_id,
  joined}` or `{slot, member_id, joined, incarnation, life}`.
  """
  @spec encode(non_neg_integer(), list(), {binary(), non_neg_integer()}) :: binary()
  def encode(epoch, members, {origin, id} \\ {<<0::128>>, 0}) do
    listed =
      for member <- members, into: <<>> do
        {slot, member_id, joined, incarnation, life} =
          case member do
            {slot, member_id, joined} -> {slot, member_id, joined, 0, 0}
            full -> full
          end

        <<slot, u128(member_id)::binary, varint(joined)::binary, varint(incarnation)::binary,
          varint(life)::binary>>
      end

    <<varint(epoch)::binary, u128(origin)::binary, varint(id)::binary,
      varint(length(members))::binary, listed::binary>>
  end

  defp u128(<<value::little-unsigned-128>>), do: varint(value)

  @doc "`n` as a LEB128 varint (postcard's integers)."
  @spec varint(non_neg_integer()) :: binary()
  def varint(n) when n < 128, do: <<n>>
  def varint(n), do: <<(n &&& 127) ||| 128, varint(n >>> 7)::binary>>
end
