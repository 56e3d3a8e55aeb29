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
  # Each record is framed, `<<size::32, record::binary-size(size)>>`, the
  # record a store's (`Visor.Groups.Stores.encode_record/2`: an md5, then
  # the key and the instance). A crash during an append leaves a torn
  # last record (cut short, or zeros), which is dropped: its stop was
  # never acknowledged. A bad record with others after it is damage: the
  # records before it are kept, the file copied aside for the operator
  # and logged. Either way the file is cut back to its good records, in
  # place, so that the next append follows them.
  #
  # The file holds one record per stop and is read whole when the host
  # starts: a few hundred bytes a stop.

  require Logger

  alias Visor.Groups.Stores
  alias Visor.Lifetime

  @file_name "tombstones"

  @typedoc """
  What `parse/1` found after the good records: nothing, a torn last
  record, or damage; with its byte offset.
  """
  @type tail :: :clean | {:torn, non_neg_integer()} | {:damaged, non_neg_integer()}

  @doc "Whether `name`, in a keyed directory, is this module's (not a group's directory)."
  @spec file?(String.t()) :: boolean()
  def file?(name), do: name in [@file_name, @file_name <> ".damaged"]

  @doc """
  Appends the tombstone of `instance` of the keyed group of `key` to the
  file in `keyed_dir`, synced. A failure is logged: the tombstone then
  lasts only as long as the VM (`Visor.Lifetime`).
  """
  @spec record(Path.t(), term(), Lifetime.instance()) :: :ok
  def record(keyed_dir, key, instance) do
    record = Stores.encode_record(key, instance)
    file = Path.join(keyed_dir, @file_name)

    with :ok <- File.mkdir_p(keyed_dir),
         :ok <-
           :file.write_file(file, <<byte_size(record)::32, record::binary>>, [:append, :sync]) do
      :ok
    else
      {:error, reason} ->
        Logger.error(
          "cannot record in #{file} that this node stopped the keyed group #{inspect(key)} " <>
            "(#{:file.format_error(reason)}): if this node's VM restarts, it no longer " <>
            "knows it stopped it"
        )
    end
  end

  @doc """
  The tombstones recorded in `keyed_dir`: `[{key, instance}]`, oldest
  first. A file that cannot be read, or is damaged, is logged, and what
  can be read of it is returned; the file is cut back to that (a damaged
  one copied aside first).
  """
  @spec load(Path.t()) :: [{term(), Lifetime.instance()}]
  def load(keyed_dir) do
    file = Path.join(keyed_dir, @file_name)

    case File.read(file) do
      {:ok, bytes} ->
        {tombstones, tail} = parse(bytes)
        :ok = repair(file, tail, length(tombstones))
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
  The records of a tombstones file, `{[{key, instance}], tail}`: read up
  to the first that is cut short or does not decode. That one is torn
  when nothing but zeros follows it (an append cut short), else damage.
  """
  @spec parse(binary()) :: {[{term(), Lifetime.instance()}], tail()}
  def parse(bytes), do: parse(bytes, 0, [])

  defp parse(<<>>, _at, found), do: {Enum.reverse(found), :clean}

  defp parse(<<size::32, record::binary-size(size), rest::binary>> = bytes, at, found) do
    case Stores.decode_record(record) do
      {:ok, key, instance} -> parse(rest, at + 4 + size, [{key, instance} | found])
      :error -> {Enum.reverse(found), bad(rest, bytes, at)}
    end
  end

  defp parse(_cut_short, at, found), do: {Enum.reverse(found), {:torn, at}}

  defp bad(rest, bytes, at) do
    if rest == <<>> or zeros?(bytes), do: {:torn, at}, else: {:damaged, at}
  end

  defp zeros?(bytes), do: bytes == :binary.copy(<<0>>, byte_size(bytes))

  defp repair(_file, :clean, _count), do: :ok

  defp repair(file, {:torn, at}, count) do
    Logger.warning(
      "#{file}: its last record was cut short (a crash during a stop, never acknowledged), " <>
        "dropped; #{count} read"
    )

    cut(file, at)
  end

  defp repair(file, {:damaged, at}, count) do
    aside = file <> ".damaged"

    Logger.error(
      "#{file} is damaged at byte #{at}: #{count} tombstones read before it, those after it " <>
        "lost (a member cut off from those stops is not told to stop them); the file is " <>
        "copied to #{aside} and cut back to what was read"
    )

    # Cut back even if the copy fails: the stops recorded after this must
    # be read at the next start.
    with {:error, reason} <- File.copy(file, aside), do: failed(aside, reason)
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
