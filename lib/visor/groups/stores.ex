defmodule Visor.Groups.Stores do
  @moduledoc false
  # Disk mode of a module's keyed groups on one node (`{Visor.Groups,
  # storage: :disk, data_dir: dir}`): what lies in the directory of the
  # module's keyed groups (`Visor.Options.keyed_dir/1`,
  # `<data_dir>/Elixir.Cache.keyed`). Each group has a directory of its
  # own there, named by its key (`Visor.Options.keyed_store_dir/2`), which
  # holds its store (opened by the engine, and checked by
  # `Visor.Formation.Restore`, as a default group's) and its *record*, a
  # file `keyed_group`: the key and the instance (`t:Visor.Lifetime.instance/0`)
  # this node's host runs there. Beside them, the file of this node's
  # tombstones (`Visor.Groups.Tombstones`, whose records are this
  # module's: `encode_record/2`), which `scan/1` skips.
  #
  # Why a record: after a VM restart `Visor.Lifetime` is empty, and a
  # store's name is a hash of the key, not the key. The record is what
  # the host needs to start the group again (`scan/1`), each replica then
  # restarting from its store. It is written before the store is created
  # (`claim/4`), so every store has one, and removed first (`remove/1`),
  # so a directory without a record is the leftover of a creation or a
  # removal cut short, which no scan starts and the next claim clears.
  #
  # Written as the formation record is (`Visor.DurableFile`: aside,
  # synced, renamed, its directory synced): a crash leaves the old file or
  # the new, and the record is durable before the store is created.
  # A removal is synced too, so that a stopped group's directory does
  # not come back after a power loss.

  require Logger

  alias Visor.{DurableFile, Lifetime, Native, Options}
  alias Visor.Formation.Restore
  alias Visor.Groups.Tombstones

  @record "keyed_group"

  @typedoc """
  Why a start cannot use its directory (`why` is for people): it holds
  something else, left as it is; or its record cannot be written.
  """
  @type refusal :: {:store_taken, Path.t(), String.t()} | {:record_failed, Path.t(), String.t()}

  @doc """
  Makes `dir` the store directory of `instance` of the keyed group of
  `key`, before its store is opened: `:ok` when its record names that
  instance already, or once it does. A directory of an instance this
  host stopped (`stopped`, `Visor.Lifetime.tombstones/1`), or one
  without a record, is cleared first.
  Any other (another key's, another instance's, an unreadable record) is
  left as it is: `{:error, {:store_taken, dir, why}}`. A record that
  cannot be written: `{:error, {:record_failed, path, why}}`.
  """
  @spec claim(Path.t(), term(), Lifetime.instance(), Lifetime.stops()) ::
          :ok | {:error, refusal()}
  def claim(dir, key, instance, stopped) do
    case read(dir) do
      {:ok, ^key, ^instance} ->
        :ok

      {:ok, ^key, earlier} ->
        if Lifetime.stopped_in?(stopped, earlier),
          do: create(dir, key, instance),
          else:
            taken(dir, "it holds #{describe(earlier)} of the key, which this node runs or ran")

      {:ok, other, _instance} ->
        taken(dir, "it holds the keyed group #{inspect(other)}")

      :none ->
        create(dir, key, instance)

      {:error, why} ->
        taken(dir, why)
    end
  end

  defp create(dir, key, instance) do
    with :ok <- clear(dir),
         :ok <- write(dir, key, instance) do
      :ok
    else
      {:error, path, reason} ->
        {:error, {:record_failed, path, "#{:file.format_error(reason)} (#{inspect(reason)})"}}
    end
  end

  defp taken(dir, why), do: {:error, {:store_taken, dir, why}}

  defp describe(%{members: members, id: id}),
    do: "the instance #{id} (members #{inspect(members)})"

  @doc """
  The keyed groups whose directories are in `keyed_dir`: `[{key,
  instance}]`. A directory whose record is missing or cannot be read, or
  names a key that is not the directory's, is logged and skipped: its
  files are left as they are.
  """
  @spec scan(Path.t()) :: [{term(), Lifetime.instance()}]
  def scan(keyed_dir) do
    case File.ls(keyed_dir) do
      {:ok, names} ->
        for name <- Enum.sort(names),
            not Tombstones.file?(name),
            found = found(Path.join(keyed_dir, name), name),
            do: found

      {:error, :enoent} ->
        []

      {:error, reason} ->
        Logger.error(
          "cannot list #{keyed_dir} (#{:file.format_error(reason)}): no keyed group " <>
            "restarts from its store there"
        )

        []
    end
  end

  defp found(dir, name) do
    case read(dir) do
      {:ok, key, instance} ->
        if Options.store_key(key) == name,
          do: {key, instance},
          else: skip(dir, "its record names the key #{inspect(key)}, whose directory is another")

      :none ->
        skip(dir, "it has no record (a group's creation or removal was cut short)")

      {:error, why} ->
        skip(dir, why)
    end
  end

  defp skip(dir, why) do
    Logger.warning(
      "#{dir}: not restarted as a keyed group: #{why}; its files are left as they are " <>
        "(remove the directory if no group needs them)"
    )

    nil
  end

  @doc """
  Removes the directory of a stopped keyed group (its processes have
  exited), its record first. A failure is logged: the directory is then
  cleared by the next `claim/4` of the key, as the stopped instance's.
  """
  @spec remove(Path.t()) :: :ok
  def remove(dir) do
    parent = Path.dirname(dir)

    # The record goes first, durably: a removal a crash cuts short leaves a
    # directory without one, which no scan starts.
    with :ok <- drop_record(dir),
         {:ok, _} <- File.rm_rf(dir),
         {:sync, :ok} <- {:sync, Native.sync_dir(parent)} do
      :ok
    else
      {:sync, {:error, reason}} ->
        Logger.warning(
          "cannot sync a directory (#{:file.format_error(reason)}) while removing #{dir}, " <>
            "the store of a stopped keyed group: a power loss may bring it back"
        )

      {:error, reason, path} ->
        Logger.warning(
          "cannot remove #{path} (#{:file.format_error(reason)}), the store of a stopped " <>
            "keyed group"
        )
    end
  end

  @doc """
  Removes the record of the keyed group in `dir`, leaving its store: a
  group stopped while its start runs, whose directory goes once that
  start ends. Until then a scan skips it (a directory without a record).
  """
  @spec unclaim(Path.t()) :: :ok
  def unclaim(dir) do
    with :ok <- drop_record(dir) do
      :ok
    else
      {:sync, {:error, reason}} ->
        Logger.warning(
          "cannot sync #{dir} (#{:file.format_error(reason)}) after removing its record: " <>
            "a power loss may bring the record back"
        )

      {:error, reason, path} ->
        Logger.warning("cannot remove #{path} (#{:file.format_error(reason)})")
    end
  end

  # Removes the record in `dir`, durably. A directory already gone
  # (removed by an earlier, cut-short removal) has nothing to sync.
  defp drop_record(dir) do
    with {:ok, _} <- rm(Path.join(dir, @record)) do
      case Native.sync_dir(dir) do
        :ok -> :ok
        {:error, :enoent} -> :ok
        error -> {:sync, error}
      end
    end
  end

  defp rm(file) do
    case File.rm(file) do
      :ok -> {:ok, [file]}
      {:error, :enoent} -> {:ok, []}
      {:error, reason} -> {:error, reason, file}
    end
  end

  defp clear(dir) do
    case File.rm_rf(dir) do
      {:ok, _} -> :ok
      {:error, reason, path} -> {:error, path, reason}
    end
  end

  # <data_dir>/<module>.keyed/<hash>: every entry from data_dir's down.
  defp write(dir, key, instance) do
    data_dir = dir |> Path.dirname() |> Path.dirname()
    DurableFile.write(Path.join(dir, @record), encode_record(key, instance), data_dir)
  end

  @doc """
  A record of `instance` of the keyed group of `key`, as its store's
  `keyed_group` holds it (and `Visor.Groups.Tombstones`, a tombstone):
  an md5 of the body first, so that a record damaged on disk reads as
  unreadable, not as another key or instance. Node names are kept as
  strings, as in a store's metadata (`Visor.Formation.Restore`).
  """
  @spec encode_record(term(), Lifetime.instance()) :: binary()
  def encode_record(key, %{members: members, id: id}) do
    body =
      :erlang.term_to_binary(
        %{visor: 1, key: key, members: Enum.map(members, &Atom.to_string/1), id: id},
        minor_version: 1
      )

    :erlang.md5(body) <> body
  end

  # The record in `dir`: `{:ok, key, instance}`, `:none` (no record), or
  # `{:error, why}`.
  defp read(dir) do
    case File.read(Path.join(dir, @record)) do
      {:ok, bytes} -> with(:error <- decode_record(bytes), do: {:error, "its record is damaged"})
      {:error, reason} when reason in [:enoent, :enotdir] -> :none
      {:error, reason} -> {:error, "its record cannot be read: #{:file.format_error(reason)}"}
    end
  end

  @doc """
  The key and instance of a record (`encode_record/2`): `{:ok, key,
  instance}`, or `:error` (damaged).

  Not `binary_to_term(_, [:safe])`: a key is any term, and its atoms may
  not exist yet in a restarted VM. The body is decoded only once its md5
  matches, so only what this module wrote is: a record written by
  something else is at worst a key that names another directory, which
  `scan/1` skips.
  """
  @spec decode_record(binary()) :: {:ok, term(), Lifetime.instance()} | :error
  def decode_record(<<sum::binary-16, body::binary>>) do
    with true <- :erlang.md5(body) == sum,
         %{visor: 1, key: key, members: [_ | _] = names, id: id}
         when is_integer(id) and id >= 0 <- :erlang.binary_to_term(body),
         true <- Restore.node_names?(names) do
      {:ok, key, %{members: Enum.map(names, &String.to_atom/1), id: id}}
    else
      _ -> :error
    end
  rescue
    # A name longer than an atom may be (its md5 good: a record inside a
    # key, say) raises SystemLimitError from String.to_atom/1.
    _ in [ArgumentError, SystemLimitError] -> :error
  end

  def decode_record(_bytes), do: :error
end
