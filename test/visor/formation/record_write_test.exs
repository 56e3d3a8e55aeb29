defmodule Visor.Formation.RecordWriteTest do
  # Disk mode writes the formation record (the `formation` file) before
  # the replica creates its store. A write that fails refuses this node's
  # replica: one error naming the file and why, the group reported as not
  # started with that reason, and no restart loop of the group.
  #
  # The group runs in the test node (its lines are captured). The write is
  # made to fail with a directory where the record's temporary file goes,
  # which fails for root too (chmod does not stop root).
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Visor.Formation.Restore
  alias Visor.Test.{Cluster, Counter}

  @moduletag :tmp_dir

  test "a formation record that cannot be written refuses the replica, once, naming the file",
       %{tmp_dir: tmp} do
    Cluster.ensure_distributed!()
    dir = Path.join(tmp, Atom.to_string(Counter))
    record = Restore.formation_file(dir)
    File.mkdir_p!(Path.join(record <> ".new", "in_the_way"))

    log =
      capture_log(fn ->
        start_supervised!({Counter, nodes: [node()], storage: :disk, data_dir: tmp})
        formation = Process.whereis(Visor.Supervisor.name(Counter, :formation))

        status = Cluster.eventually(fn -> Visor.status(Counter).status == :refused end)
        assert status

        assert {:refused, {:storage_refused, message}} = Visor.Formation.decision(Counter)

        assert message =~ record <> ".new"
        assert Visor.status(Counter).refused == {:storage_refused, message}
        assert Visor.commit(Counter, {:incr, 1}) == {:error, {:storage_refused, message}}

        # No restart: the same formation process, well after its decision.
        Process.sleep(500)
        assert Process.whereis(Visor.Supervisor.name(Counter, :formation)) == formation
        assert Visor.status(Counter).status == :refused
        stop_supervised!(Counter)
      end)

    assert [line] = for(line <- String.split(log, "\n"), line =~ "[error]", do: line)
    assert line =~ "#{inspect(Counter)}: "
    assert line =~ record <> ".new"
    assert line =~ "illegal operation on a directory"
    refute log =~ "starting replica"
    # Nothing was created: the store is created only after the record.
    refute File.exists?(Path.join(dir, "superblock"))
  end
end
