defmodule Visor.Groups.Tombstones do
  @moduledoc false
  # Disk mode: the tombstones of a module's keyed groups on one node
  # (`Visor.Lifetime.stopped/2`), kept in a file `tombstones` in the
  # module's keyed directory (`Visor.Options.keyed_dir/1`), so that they
  # outlive the VM. Without it, a VM restart forgets what this node
  # stopped: a member cut off from a stop, coming back with the stopped
  # instance on its disk, would not be told to stop it (and could be
  # adopted back, a group recovering from a minority), and the key's next
  # start could take the stopped instance's id again.
  #
  # The host appends a record for each stop (`record/3`), synced before
  # the stop goes on (its directory removed, its caller answered), and
  # loads them all when it starts (`load/1`), before it scans the stores.
  #
  # Why append-only, not a whole file written aside and renamed as
  # `Visor.Groups.Stores` writes its records: a stop then costs one
  # record's write and sync, whatever the number of stops before it,
  # where a rewrite copies them all. It changes the directory only once,
  # at the file's creation by the first stop on the node; the directory is
  # synced after every append all the same (`Visor.Native.sync_dir/1`),
  # so that a sync that failed once is tried again.
  #
  # Each record (`Visor.Groups.Stores.encode_record/2`: an md5, then the
  # key and the instance) is framed as `<<magic, stuffed record, 0xF8>>`:
  # the record's bytes 0xF6, 0xF7 and 0xF8 are escaped (`stuff/1`), and
  # so is every byte one bit away from 0xF7 (so that no single flipped
  # bit makes a marker of a key's bytes), and the magic, which starts
  # with 0xF7, and the end byte 0xF8 occur
  # nowhere else in the file, whatever a key holds. The file is read by
  # splitting it at the magic, in one pass; no frame can be found inside
  # another. A record that reads back is never given up for damage before
  # or after it:
  #
  #   * An append that fails is cut back to where it began (`record/3`),
  #     so a full disk leaves no fragment for the next stop to follow.
  #   * A frame that does not read back whole (rot, a fragment a failed
  #     cut left) is *damage*: it is skipped, and every frame after it is
  #     read. The file is copied aside once per damage found last at an
  #     offset (`tombstones.damaged-at-<byte>`, never overwritten) for
  #     the operator, and is left as it is: the records after the damage
  #     were acknowledged, and rewriting the file would need a rename
  #     (above) to be safe against a crash.
  #   * Only a *torn* end is cut off: a last frame without its end byte,
  #     or zeros after the last end byte; an append a crash cut short,
  #     whose stop was never acknowledged. A last frame with its end byte
  #     that fails its md5 was synced whole: damage.
  #
  # The file holds one record per stop and is read whole when the host
  # starts: a few hundred bytes a stop, never compacted (docs/operations.md,
  # "Limits of keyed groups").

  require Logger

  alias Visor.Groups.Stores
  alias Visor.{Lifetime, Native}

  @file_name "tombstones"
  # Starts every frame; no record byte is 0xF7 once stuffed.
  @magic <<0xF7, "VtMb", 0x0D, 0x0A, 0x1A>>
  # Ends every frame; no record byte is 0xF8 once stuffed.
  @frame_end 0xF8

  @typedoc """
  What `parse/1` found besides the good records: the byte offsets of the
  damage it skipped, and whether the file ends in a torn last record
  (and where it begins).
  """
  @type findings :: %{damaged: [non_neg_integer()], torn: nil | non_neg_integer()}

  @doc "Whether `name`, in a keyed directory, is this module's (not a group's directory)."
  @spec file?(String.t()) :: boolean()
  def file?(name), do: name == @file_name or String.starts_with?(name, @file_name <> ".damaged")

  @doc """
  Appends the tombstone of `instance` of the keyed group of `key` to the
  file in `keyed_dir`, synced. A failure is logged, and what the append
  wrote is cut off: the tombstone then lasts only as long as the VM
  (`Visor.Lifetime`).
  """
  @spec record(Path.t(), term(), Lifetime.instance()) :: :ok
  def record(keyed_dir, key, instance) do
    record = Stores.encode_record(key, instance)
    file = Path.join(keyed_dir, @file_name)

    # <data_dir>/<module>.keyed: its entry in data_dir, and data_dir's.
    with {:mkdir, :ok} <- {:mkdir, Native.create_dir(keyed_dir, Path.dirname(keyed_dir))},
         {:open, {:ok, fd}} <- {:open, :file.open(file, [:read, :write, :raw, :binary])} do
      result = append(fd, <<@magic, stuff(record)::binary, @frame_end>>)
      _ = :file.close(fd)

      # The file's own entry: durable only once its directory is synced.
      # Every time, not only at its creation: a sync that failed once
      # would otherwise never be tried again.
      case result do
        :ok -> with {:error, reason} <- Native.sync_dir(keyed_dir), do: unsynced(file, reason)
        {:error, reason} -> cannot_record(file, key, reason)
      end
    else
      {_step, {:error, reason}} -> cannot_record(file, key, reason)
    end
  end

  defp unsynced(file, reason) do
    Logger.error(
      "recorded a stop in #{file}, but cannot sync its directory " <>
        "(#{:file.format_error(reason)}): after a power loss this node may not know it " <>
        "stopped it"
    )
  end

  defp append(fd, frame) do
    with {:ok, at} <- :file.position(fd, :eof) do
      with {:error, _} = error <- write_synced(fd, frame) do
        # A write that failed part-way (a full disk) leaves part of a
        # frame: cut it off, or the next stop's record would follow it.
        _ = truncate_at(fd, at)
        error
      end
    end
  end

  defp write_synced(fd, frame) do
    with :ok <- :file.write(fd, frame), do: :file.sync(fd)
  end

  defp cannot_record(file, key, reason) do
    Logger.error(
      "cannot record in #{file} that this node stopped the keyed group #{inspect(key)} " <>
        "(#{:file.format_error(reason)}): if this node's VM restarts, it no longer " <>
        "knows it stopped it"
    )
  end

  @doc """
  The tombstones recorded in `keyed_dir`: `[{key, instance}]`, oldest
  first. A file that cannot be read is logged, and nothing is returned;
  damage is logged, skipped, and the file copied aside; a torn last
  record is dropped and cut off (see the top of this module).
  """
  @spec load(Path.t()) :: [{term(), Lifetime.instance()}]
  def load(keyed_dir) do
    file = Path.join(keyed_dir, @file_name)

    case File.read(file) do
      {:ok, bytes} ->
        {tombstones, findings} = parse(bytes)
        :ok = report_damage(file, bytes, findings.damaged, length(tombstones))
        :ok = cut_torn(file, findings.torn, length(tombstones))
        tombstones

      {:error, :enoent} ->
        []

      {:error, reason} ->
        Logger.error(
          "cannot read #{file} (#{:file.format_error(reason)}): this node does not know which " <>
            "keyed groups it stopped before its VM started, and does not tell a member cut " <>
            "off from their stop to stop them"
        )

        []
    end
  end

  @doc """
  The records of a tombstones file, `{[{key, instance}], findings}`
  (pure, one pass): the frames between magics that read back whole; the
  offsets of those that do not (damage); and where a torn end begins.
  """
  @spec parse(binary()) :: {[{term(), Lifetime.instance()}], findings()}
  def parse(bytes) do
    [before | frames] = :binary.split(bytes, @magic, [:global])

    # Bytes before the first magic are damage, unless zeros, or (in a
    # file of no frame) the start of a first append cut short.
    findings =
      cond do
        zeros?(before) -> %{damaged: [], torn: nil}
        frames == [] and torn_tail?(before) -> %{damaged: [], torn: 0}
        true -> %{damaged: [0], torn: nil}
      end

    at = byte_size(before)
    {found, findings} = frames(frames, at, [], findings)
    {Enum.reverse(found), %{findings | damaged: Enum.reverse(findings.damaged)}}
  end

  defp frames([], _at, found, findings), do: {found, findings}

  defp frames([frame | rest], at, found, findings) do
    next = at + byte_size(@magic) + byte_size(frame)

    case read_frame(frame) do
      {:ok, key, instance, ""} ->
        frames(rest, next, [{key, instance} | found], findings)

      # A whole frame, then bytes that are no frame: at the very end, the
      # start of a marker or zeros are a torn append after it; anything
      # else is damage.
      {:ok, key, instance, tail} ->
        end_at = next - byte_size(tail)

        findings =
          if rest == [] and torn_tail?(tail),
            do: %{findings | torn: end_at},
            else: %{findings | damaged: [end_at | findings.damaged]}

        frames(rest, next, [{key, instance} | found], findings)

      # The last frame without its end byte: an append cut short, unless
      # the frame reads back whole without its last byte (the end byte
      # itself rotted): that one was synced, and is kept, as damage.
      :no_end when rest == [] ->
        case read_frame(binary_part(frame, 0, max(byte_size(frame) - 1, 0)) <> <<@frame_end>>) do
          {:ok, key, instance, ""} ->
            {[{key, instance} | found], %{findings | damaged: [next - 1 | findings.damaged]}}

          _cut_short ->
            {found, %{findings | torn: at}}
        end

      _damaged ->
        frames(rest, next, found, %{findings | damaged: [at | findings.damaged]})
    end
  end

  # A frame's bytes after the magic: `{:ok, key, instance, after_end}`,
  # `:no_end`, or `:error`.
  defp read_frame(frame) do
    case :binary.split(frame, <<@frame_end>>) do
      [_no_end] ->
        :no_end

      [stuffed, after_end] ->
        with {:ok, record} <- unstuff(stuffed),
             {:ok, key, instance} <- Stores.decode_record(record),
             do: {:ok, key, instance, after_end}
    end
  end

  # Each escaped byte becomes 0xF6 and its code. Escaped: 0xF7 (the
  # marker's first byte), 0xF6 (the escape), 0xF8 (the end byte), and the
  # bytes one bit away from 0xF7, so that one flipped bit in a record can
  # never start a marker there (a flipped escape 0xF6 is followed by a
  # code, never by the marker's second byte).
  @codes %{
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
  @escaped Map.new(@codes, fn {byte, code} -> {code, byte} end)

  defp stuff(record), do: for(<<byte <- record>>, into: <<>>, do: escape(byte))

  defp escape(byte) when is_map_key(@codes, byte), do: <<0xF6, Map.fetch!(@codes, byte)>>
  defp escape(byte), do: <<byte>>

  defp unstuff(stuffed), do: unstuff(stuffed, [])

  defp unstuff(<<>>, acc), do: {:ok, IO.iodata_to_binary(Enum.reverse(acc))}

  defp unstuff(<<0xF6, code, rest::binary>>, acc) do
    case @escaped do
      %{^code => byte} -> unstuff(rest, [byte | acc])
      _ -> :error
    end
  end

  defp unstuff(<<0xF6>>, _acc), do: :error

  defp unstuff(bytes, acc) do
    # The run up to the next escape, at once.
    case :binary.match(bytes, <<0xF6>>) do
      :nomatch ->
        unstuff(<<>>, [bytes | acc])

      {at, _} ->
        unstuff(binary_part(bytes, at, byte_size(bytes) - at), [binary_part(bytes, 0, at) | acc])
    end
  end

  defp zeros?(bytes), do: bytes == :binary.copy(<<0>>, byte_size(bytes))

  # What an append a crash cut short leaves after the last whole frame:
  # the start of a marker (then, maybe, zeros), or zeros.
  defp torn_tail?(tail) do
    marker = binary_part(tail, 0, min(byte_size(tail), byte_size(@magic)))

    zeros?(tail) or
      (marker == binary_part(@magic, 0, byte_size(marker)) and
         zeros?(binary_part(tail, byte_size(marker), byte_size(tail) - byte_size(marker))))
  end

  defp report_damage(_file, _bytes, [], _count), do: :ok

  defp report_damage(file, bytes, damaged, count) do
    # One copy per load, named by its last damage (damage never moves:
    # appends go after it): a later damage gets a copy of its own, and a
    # restart that finds the same damage makes no other.
    aside = "#{file}.damaged-at-#{List.last(damaged)}"
    copied = if File.exists?(aside), do: nil, else: copy(bytes, aside)

    Logger.error(
      "#{file} is damaged at byte(s) #{Enum.join(damaged, ", ")}: skipped, #{count} " <>
        "tombstones read around the damage (a stop whose record was there is forgotten: a " <>
        "member cut off from it is not told to stop it)" <>
        if(copied, do: "; the file is copied to #{copied}", else: "")
    )
  end

  # Written aside, synced and renamed, so that a copy cut short (a full
  # disk, a power loss) never stands as the copy.
  defp copy(bytes, aside) do
    with :ok <- :file.write_file(aside <> ".new", bytes, [:sync]),
         :ok <- File.rename(aside <> ".new", aside),
         :ok <- Native.sync_dir(Path.dirname(aside)) do
      aside
    else
      {:error, reason} ->
        _ = File.rm(aside <> ".new")
        "(not #{aside}: #{:file.format_error(reason)})"
    end
  end

  defp cut_torn(_file, nil, _count), do: :ok

  defp cut_torn(file, at, count) do
    Logger.warning(
      "#{file}: it ends in an append cut short (a crash during a stop, never " <>
        "acknowledged), cut off at byte #{at}; #{count} tombstones read"
    )

    cut(file, at)
  end

  # Cut in place (not rewritten aside and renamed: see the top).
  defp cut(file, at) do
    case :file.open(file, [:read, :write, :raw, :binary]) do
      {:ok, fd} ->
        result = truncate_at(fd, at)
        _ = :file.close(fd)
        with {:error, reason} <- result, do: failed(file, reason)

      {:error, reason} ->
        failed(file, reason)
    end
  end

  # Cuts the open file at `at`, synced.
  defp truncate_at(fd, at) do
    with {:ok, ^at} <- :file.position(fd, at), :ok <- :file.truncate(fd), do: :file.sync(fd)
  end

  defp failed(path, reason) do
    Logger.error("cannot repair #{path} (#{:file.format_error(reason)})")
  end
end
