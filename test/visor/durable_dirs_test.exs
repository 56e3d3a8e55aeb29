defmodule Visor.DurableDirsTest do
  # Directory entries made durable (Visor.Native.create_dir/2, docs/
  # storage.md, "Files"). A power loss cannot be shown here: ext4, XFS and
  # Linux's ext2 all persist a new directory's entry when something below
  # it is fsync'd (a review checked it by copying a loop-mounted ext2
  # image). So this test watches the syscalls instead: strace, attached to
  # this VM, records which directories the NIF opens and fsyncs, and the
  # test asserts that the directory whose entry is at stake is. Written
  # by that review, against the first version, which synced only the
  # parents of the directories a call created itself.
  use ExUnit.Case, async: false

  alias Visor.Native

  @moduletag :tmp_dir
  @moduletag :tmpfs
  @moduletag :strace

  defp cmd!(bin, args) do
    {out, status} = System.cmd(bin, args, stderr_to_stdout: true)
    if status != 0, do: flunk("#{bin} #{Enum.join(args, " ")}: #{status}: #{out}")
    out
  end

  # The directories `fun` opens read-only then fsyncs, per strace.
  defp synced_dirs(tmp, fun) do
    log = Path.join(tmp, "strace-#{System.unique_integer([:positive])}.log")
    pid = List.to_string(:os.getpid())

    port =
      Port.open(
        {:spawn_executable, System.find_executable("strace")},
        [
          :binary,
          :exit_status,
          args: ["-f", "-qq", "-e", "trace=openat,fsync", "-o", log, "-p", pid]
        ]
      )

    {:os_pid, strace} = Port.info(port, :os_pid)
    # Attached once its log names a call.
    Process.sleep(1500)
    fun.()
    Process.sleep(200)
    System.cmd("kill", ["-INT", "#{strace}"])
    receive do: ({^port, {:exit_status, _}} -> :ok), after: (5000 -> :ok)

    lines = File.read!(log) |> String.split("\n")

    fds =
      for line <- lines,
          [_, path, fd] <- [
            Regex.run(~r/openat\(AT_FDCWD, "([^"]*)", O_RDONLY\|O_CLOEXEC\) = (\d+)/, line)
          ],
          do: {fd, path}

    synced = for line <- lines, [_, fd] <- [Regex.run(~r/fsync\((\d+)\)\s+= 0/, line)], do: fd
    for {fd, path} <- fds, fd in synced, uniq: true, do: path
  end

  # An ancestor that a failed create_dir made (ENOSPC here: the last inode
  # went to `<module>.keyed`, none was left for the group's directory) is
  # synced into its parent by the retry: a directory that exists is not
  # taken as durable. The first version synced only the parents of the
  # directories a call created itself, so the retry created the group's
  # directory inside a `<module>.keyed` whose own entry in `data_dir` no
  # one synced: on a file system that does not order metadata, a power
  # loss would lose every keyed store of the module and its tombstones.
  # The same held for a directory another caller created and had not
  # synced yet (two keyed starts at once on a fresh node), and for one
  # whose parent's sync had failed (EIO).
  test "a retried create_dir syncs the entry of an ancestor that a failed one made",
       %{tmp_dir: tmp} do
    mnt = Path.join(tmp, "mnt")
    File.mkdir_p!(mnt)
    cmd!("mount", ["-t", "tmpfs", "-o", "size=64k,nr_inodes=16", "tmpfs", mnt])
    on_exit(fn -> System.cmd("umount", [mnt]) end)
    data = Path.join(mnt, "data")
    File.mkdir!(data)
    # Use up the inodes, then free exactly one.
    fillers =
      Enum.reduce_while(1..100, [], fn i, acc ->
        file = Path.join(mnt, "filler#{i}")

        case File.write(file, "") do
          :ok -> {:cont, [file | acc]}
          {:error, :enospc} -> {:halt, acc}
        end
      end)

    [one, two | _] = fillers
    File.rm!(one)

    keyed = Path.join(data, "Elixir.M.keyed")
    store = Path.join(keyed, "3f2a")
    assert Native.create_dir(store, data) == {:error, :enospc}
    assert File.dir?(keyed)

    # Space again (a store removed, say); the keyed start is retried.
    File.rm!(two)

    synced = synced_dirs(tmp, fn -> assert Native.create_dir(store, data) == :ok end)
    assert keyed in synced

    assert data in synced,
           "#{keyed} was created by the failed call and never synced into #{data}; " <>
             "the retry synced only #{inspect(synced)}"
  end
end
