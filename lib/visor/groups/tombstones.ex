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
  # where a rewrite copies them all. And it never changes the directory,
  # which Erlang cannot sync: only the file's creation, by the first stop
  # on the node, adds a directory entry (made durable with the file's
  # sync by ext4 and XFS, though POSIX does not promise it).
  #
  # Each record is framed, `<<magic::8 bytes, size::32, record::binary-size(size)>>`,
  # the record a store's (`Visor.Groups.Stores.encode_record/2`: an md5,
  # then the key and the instance). A record that reads back is never
  # given up for damage before or after it:
  #
  #   * An append that fails is cut back to where it began (`record/3`),
  #     so a full disk leaves no fragment for the next stop to follow.
  #   * A record that does not read back (rot, a fragment a failed cut
  #     left) is *damage*: it is skipped up to the next frame's magic,
  #     and every record after it is read. The file is copied aside once
  #     per damaged offset (`tombstones.damaged-at-<byte>`, never
  #     overwritten) for the operator, and is left as it is: the records
  #     after the damage were acknowledged, and rewriting the file would
  #     need a rename (above) to be safe against a crash.
  #   * Only a *torn* last record is dropped and cut off: one whose frame
  #     runs past the end of the file with no frame after it, or a tail
  #     of zeros; an append a crash cut short, whose stop was never
  #     acknowledged. A complete last record that fails its md5 was
  #     synced whole: damage. (Rot in the size field of the last record
  #     makes it look torn; it is lost either way, unreadable.)
  #
  # The file holds one record per stop and is read whole when the host
  # starts: a few hundred bytes a stop, never compacted (docs/operations.md,
  # "Limits of keyed groups").

  require Logger

  alias Visor.Groups.Stores
  alias Visor.Lifetime

  @file_name "tombstones"
  # Starts every frame: what a reader skips to past damage. (A key may
  # hold these bytes: a frame found inside a record still has to read
  # back whole, md5 and all, to count.)
  @magic <<0xF7, "VtMb", 0x0D, 0x0A, 0x1A>>

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

    with {:mkdir, :ok} <- {:mkdir, File.mkdir_p(keyed_dir)},
         {:open, {:ok, fd}} <- {:open, :file.open(file, [:read, :write, :raw, :binary])} do
      result = append(fd, <<@magic, byte_size(record)::32, record::binary>>)
      _ = :file.close(fd)
      with {:error, reason} <- result, do: cannot_record(file, key, reason)
    else
      {_step, {:error, reason}} -> cannot_record(file, key, reason)
    end
  end

  defp append(fd, frame) do
    with {:ok, at} <- :file.position(fd, :eof) do
      with {:error, _} = error <- write_synced(fd, frame) do
        # A write that failed part-way (a full disk) leaves part of a
        # frame: cut it off, or the next stop's record would follow it.
        with {:ok, ^at} <- :file.position(fd, at), :ok <- :file.truncate(fd), do: :file.sync(fd)
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
        :ok = report_damage(file, findings.damaged, length(tombstones))
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
  (pure). A frame that does not read back whole is damage, skipped to the
  next magic; one that runs past the end with no frame after it, or a
  tail of zeros, is a torn last record.
  """
  @spec parse(binary()) :: {[{term(), Lifetime.instance()}], findings()}
  def parse(bytes), do: parse(bytes, 0, [], %{damaged: [], torn: nil})

  defp parse(bytes, at, found, findings) when at == byte_size(bytes),
    do: {Enum.reverse(found), %{findings | damaged: Enum.reverse(findings.damaged)}}

  defp parse(bytes, at, found, findings) do
    case frame(bytes, at) do
      {:ok, key, instance, next} ->
        parse(bytes, next, [{key, instance} | found], findings)

      :error ->
        case next_magic(bytes, at + 1) do
          nil ->
            ending =
              if torn?(bytes, at), do: %{torn: at}, else: %{damaged: [at | findings.damaged]}

            parse(bytes, byte_size(bytes), found, Map.merge(findings, ending))

          next ->
            parse(bytes, next, found, %{findings | damaged: [at | findings.damaged]})
        end
    end
  end

  defp frame(bytes, at) do
    with <<_::binary-size(at), @magic, size::32, record::binary-size(size), _::binary>> <- bytes,
         {:ok, key, instance} <- Stores.decode_record(record) do
      {:ok, key, instance, at + byte_size(@magic) + 4 + size}
    else
      _ -> :error
    end
  end

  defp next_magic(bytes, from) when from >= byte_size(bytes), do: nil

  defp next_magic(bytes, from) do
    case :binary.match(bytes, @magic, scope: {from, byte_size(bytes) - from}) do
      {next, _} -> next
      :nomatch -> nil
    end
  end

  # The last frame, with nothing after it: torn when it is cut short (its
  # header, or its record, runs past the end) or zeros; a complete one
  # that fails its md5 was synced whole, and is damage.
  defp torn?(bytes, at) do
    tail = binary_part(bytes, at, byte_size(bytes) - at)

    case tail do
      <<@magic, size::32, record::binary>> -> byte_size(record) < size
      _ -> short_header?(tail) or zeros?(tail)
    end
  end

  # A frame's header (magic and size) cut short.
  defp short_header?(tail) do
    header = byte_size(@magic) + 4

    byte_size(tail) < header and
      binary_part(tail, 0, min(byte_size(tail), byte_size(@magic))) ==
        binary_part(@magic, 0, min(byte_size(tail), byte_size(@magic)))
  end

  defp zeros?(tail), do: tail == :binary.copy(<<0>>, byte_size(tail))

  defp report_damage(_file, [], _count), do: :ok

  defp report_damage(file, damaged, count) do
    # One copy per damaged offset, never overwritten: a later damage gets
    # its own, and a restart that finds the same one makes no other.
    copies =
      for at <- damaged,
          aside = "#{file}.damaged-at-#{at}",
          not File.exists?(aside),
          do: copy(file, aside)

    Logger.error(
      "#{file} is damaged at byte(s) #{Enum.join(damaged, ", ")}: skipped, #{count} " <>
        "tombstones read around the damage (a stop whose record was there is forgotten: a " <>
        "member cut off from it is not told to stop it)" <>
        if(copies == [], do: "", else: "; the file is copied to #{Enum.join(copies, ", ")}")
    )
  end

  defp copy(file, aside) do
    case File.copy(file, aside) do
      {:ok, _} -> aside
      {:error, reason} -> "(not #{aside}: #{:file.format_error(reason)})"
    end
  end

  defp cut_torn(_file, nil, _count), do: :ok

  defp cut_torn(file, at, count) do
    Logger.warning(
      "#{file}: its last record was cut short (a crash during a stop, never acknowledged), " <>
        "dropped; #{count} read"
    )

    cut(file, at)
  end

  # Cut in place (not rewritten aside and renamed: see the top).
  defp cut(file, at) do
    case :file.open(file, [:read, :write, :raw, :binary]) do
      {:ok, fd} ->
        result =
          with {:ok, ^at} <- :file.position(fd, at),
               :ok <- :file.truncate(fd),
               do: :file.sync(fd)

        _ = :file.close(fd)
        with {:error, reason} <- result, do: failed(file, reason)

      {:error, reason} ->
        failed(file, reason)
    end
  end

  defp failed(path, reason) do
    Logger.error("cannot repair #{path} (#{:file.format_error(reason)})")
  end
end
