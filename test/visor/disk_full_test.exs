defmodule Visor.DiskFullTest do
  # A member's disk fills up on real nodes: each node's data_dir is a small
  # tmpfs of its own, so one can be filled without touching the others or
  # the machine. Mounting needs root; test_helper.exs excludes the :tmpfs
  # tag (saying why) where mounting is not allowed. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  @moduletag :tmp_dir
  @moduletag :tmpfs

  test "a full disk pauses that member, with the error in status; it resumes when space returns " <>
         "and restarts from a disk that is intact",
       %{tmp_dir: tmp} do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    for n <- nodes, do: Cluster.mount_tmpfs!(Cluster.data_dir(tmp, n), "4m")
    opts = Cluster.disk_opts(tmp, nodes: nodes)

    :ok = Cluster.start_group(nodes, Counter, opts)
    [full | others] = Cluster.backups_first(nodes, Counter)
    primary = List.last(others)
    for i <- 1..5, do: assert(commit(primary, {:incr, i}) == i)

    junk = Cluster.fill!(Path.join([tmp, Atom.to_string(full), "junk"]))

    # The majority goes on. The full member writes on into the zeros its
    # store keeps ahead of the log (at most 1 MiB and a page); past them
    # its next WAL append fails, and it says so. 55 commits of 24 KB take
    # it past them (and fit the others' 4 MiB with their own zeros).
    pad = :binary.copy("x", 24_000)
    for i <- 6..60, do: assert(commit(primary, {:incr, {i, pad}}) == i)
    Cluster.eventually(fn -> Cluster.status(full, Counter).storage.error != nil end)
    status = Cluster.status(full, Counter)
    assert status.storage.error =~ ~r/space/i

    # Paused: it takes nothing in while it cannot write, so its state stays put.
    for i <- 61..70, do: assert(commit(primary, {:incr, i}) == i)
    paused = Cluster.status(full, Counter)
    assert paused.storage.error != nil and paused.commit < 70
    assert Cluster.status(full, Counter).commit == paused.commit

    # Space returns: it resumes, catches up and serves.
    File.rm!(junk)
    Cluster.eventually(fn -> Cluster.status(full, Counter).storage.error == nil end, 10_000)
    state = :erpc.call(primary, Counter, :get, [])
    Cluster.converged(nodes, Counter, state, 10_000)
    assert commit(full, {:incr, 71}) == 71

    # Nothing it wrote was damaged: killed, it restarts from its own disk
    # (not by recovering from its peers) with every commit once.
    :ok = Cluster.kill_node(full, others)
    Cluster.restart_peer(full, others)
    :ok = Cluster.start_group([full], Counter, opts)
    Cluster.eventually(fn -> Cluster.status(full, Counter).storage.opened == :restarted end)
    refute Cluster.rejoined?(full, Counter)
    state = :erpc.call(primary, Counter, :get, [])
    assert state.count == 71 and MapSet.size(state.applied) == 71
    Cluster.converged(nodes, Counter, state, 10_000)
  end

  defp commit(node, command),
    do: :erpc.call(node, Counter, :commit, [command, [timeout: 20_000]], 25_000)
end
