defmodule Visor.DurableFile do
  @moduledoc false
  # Writes the small records Visor keeps beside a store (the formation
  # record, a keyed group's `keyed_group`) so that a crash leaves the old
  # file or the new, and a power loss neither: written aside and synced,
  # renamed over, its directory created durably and synced after the
  # rename (Erlang cannot sync a directory: `Visor.Native.create_dir/2`
  # and `sync_dir/1` do, docs/storage.md, "Files").

  alias Visor.Native

  @doc """
  Writes `bytes` to `file`, durably. `root` is the directory from which
  the entries down to `file`'s directory are made durable
  (`Visor.Native.create_dir/2`): `data_dir`, or the directory holding the
  store. `:ok`, or `{:error, path, reason}` naming what failed.
  """
  @spec write(Path.t(), iodata(), Path.t()) :: :ok | {:error, String.t(), term()}
  def write(file, bytes, root) do
    dir = Path.dirname(file)

    with {:mkdir, :ok} <- {:mkdir, Native.create_dir(dir, root)},
         {:write, :ok} <- {:write, :file.write_file(file <> ".new", bytes, [:sync])},
         {:rename, :ok} <- {:rename, File.rename(file <> ".new", file)},
         {:sync, :ok} <- {:sync, Native.sync_dir(dir)} do
      :ok
    else
      {:mkdir, {:error, reason}} -> {:error, dir, reason}
      {:write, {:error, reason}} -> {:error, file <> ".new", reason}
      {:rename, {:error, reason}} -> {:error, file, reason}
      {:sync, {:error, reason}} -> {:error, "#{dir} (syncing the directory)", reason}
    end
  end
end
