defmodule Visor.Test.TombstoneFiles do
  @moduledoc """
  The tombstones file of a module's keyed groups in disk mode
  (`Visor.Groups.Tombstones`), for the tests that build or damage one by
  hand: frames as `record/3` writes them, the file and its copies aside,
  a load with its log, a flipped bit.
  """
  import ExUnit.CaptureLog

  alias Visor.Groups.{Stores, Tombstones}

  @doc "The frame marker (`Visor.Groups.Tombstones`' `@magic`)."
  def magic, do: <<0xF7, "VtMb", 0x0D, 0x0A, 0x1A>>

  @doc """
  A frame as `Tombstones.record/3` writes one around `record` (any
  binary: a record of `Stores.encode_record/2`, or a forged one): its
  escaped bytes (0xF7, 0xF6, 0xF8, and those one bit from 0xF7) written
  as 0xF6 and a code, between the marker and the end byte.
  """
  def frame(record) do
    codes = %{
      0xF7 => 0x01,
      0xF6 => 0x02,
      0xF8 => 0x03,
      0xF5 => 0x04,
      0xF3 => 0x05,
      0xFF => 0x06,
      0xE7 => 0x07,
      0xD7 => 0x08,
      0xB7 => 0x09,
      0x77 => 0x0A
    }

    stuffed =
      for <<byte <- record>>, into: <<>> do
        case codes do
          %{^byte => code} -> <<0xF6, code>>
          _ -> <<byte>>
        end
      end

    <<magic()::binary, stuffed::binary, 0xF8>>
  end

  @doc "The frame of the tombstone of `instance` of `key`."
  def frame(key, instance), do: frame(Stores.encode_record(key, instance))

  @doc "The tombstones file in the keyed directory `dir`."
  def file(dir), do: Path.join(dir, "tombstones")

  @doc "Its copies aside (`tombstones.damaged-at-<byte>`)."
  def copies(dir), do: Path.wildcard(file(dir) <> ".damaged-at-*")

  @doc "`Tombstones.load/1` of `dir`, and what it logged: `{loaded, log}`."
  def load(dir) do
    log = capture_log(fn -> send(self(), {:loaded, Tombstones.load(dir)}) end)

    receive do
      {:loaded, loaded} -> {loaded, log}
    end
  end

  @doc "Flips the bits `mask` of the file's byte at `at`; returns the file's new bytes."
  def flip(dir, at, mask) do
    <<before::binary-size(at), byte, rest::binary>> = File.read!(file(dir))
    damaged = <<before::binary, Bitwise.bxor(byte, mask), rest::binary>>
    File.write!(file(dir), damaged)
    damaged
  end
end
