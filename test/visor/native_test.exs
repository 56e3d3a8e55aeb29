defmodule Visor.NativeTest do
  use ExUnit.Case, async: true

  import Bitwise
  import Visor.NativeTest.Harness

  alias Visor.Native

  test "the NIF is loaded" do
    assert is_integer(Native.protocol_version())
  end

  test "checksum is 16 bytes, deterministic and input-sensitive" do
    a = Native.checksum("hello")
    assert is_binary(a) and byte_size(a) == 16
    assert Native.checksum("hello") == a
    assert Native.checksum("hellp") != a
    assert byte_size(Native.checksum("")) == 16
  end

  describe "quiet groups" do
    test "an idle group goes quiet and the engine stops ticking it; a request wakes it" do
      c = start_cluster(3, %{quiet_after_ticks: 5, tick_ms: 5})
      client = client_id()
      {c, session} = register(c, 0, client)
      {c, _op} = commit(c, 0, client, session, 1, "x")

      c = pump(c, fn c -> Enum.all?(0..2, &c.asleep[&1]) end)
      assert Enum.all?(0..2, &Native.status(c.engines[&1]).quiet)
      sent = Enum.map(0..2, &Native.status(c.engines[&1]).stats.sent)
      refute_receive {:visor_engine, _, _}, 200
      assert Enum.map(0..2, &Native.status(c.engines[&1]).stats.sent) == sent

      # A request through a backup wakes it; it is committed, with no view change.
      {c, _op} = commit(c, 1, client, session, 2, "y")
      assert Native.status(c.engines[0]).view == 0
      c = pump(c, fn c -> Enum.all?(0..2, &c.asleep[&1]) end)
      stop_cluster(c)
    end

    test "a quiet backup whose primary's node the detector holds down campaigns at once" do
      c = start_cluster(3, %{quiet_after_ticks: 5, tick_ms: 5})
      c = pump(c, fn c -> Enum.all?(0..2, &c.asleep[&1]) end)

      # Replica 0, the primary, dies; the detector holds its node down:
      # only 1 and 2 are up.
      :ok = Native.stop(c.engines[0])
      ids = [<<1::little-128>>, <<2::little-128>>]
      :ok = Native.peers(c.engines[1], ids)
      :ok = Native.peers(c.engines[2], ids)

      # Each survivor says, unasked, that its status changed, and the
      # copy read then shows it normal in a later view: the router's
      # watch needs no polling (:status_changed).
      c =
        pump(c, fn c ->
          Enum.all?([1, 2], fn i ->
            Enum.any?(c.changes[i], fn {status, view, _} -> status == :normal and view > 0 end)
          end)
        end)

      assert Enum.all?([1, 2], fn i -> Native.status(c.engines[i]).view > 0 end)
      stop_cluster(c)
    end

    test "peers/2 takes only a list of 16-byte member ids" do
      c = start_cluster(1)
      engine = c.engines[0]
      assert :ok = Native.peers(engine, [])
      assert :ok = Native.peers(engine, [<<7::128>>])
      assert_raise ArgumentError, fn -> Native.peers(engine, [<<1>>]) end
      assert_raise ArgumentError, fn -> Native.peers(engine, :all) end
      assert_raise ArgumentError, fn -> Native.nif_peers(engine, [<<0::128>> | :improper]) end

      assert_raise ArgumentError, fn ->
        Native.nif_peers(engine, List.duplicate(<<0::128>>, 1025))
      end

      stop_cluster(c)
    end

    test "the detector: beats both ways keep a peer up, nodedown takes it down, bad beats are malformed" do
      a = Native.detector_new(:a@h, 10, 80, 0)
      b = Native.detector_new(:b@h, 10, 80, 0)
      :ok = Native.detector_add(a, :b@h)
      :ok = Native.detector_add(b, :a@h)
      assert [{"b@h", to_b}] = Native.detector_tick(a, 1, 0)
      assert [{"a@h", to_a}] = Native.detector_tick(b, 1, 0)
      assert :ok = Native.detector_beat(b, to_b, 2)
      assert :ok = Native.detector_beat(a, to_a, 2)
      assert {_, ["b@h"]} = Native.detector_up(a)

      # Not for this node, damaged, or not a beat at all: dropped.
      assert :malformed = Native.detector_beat(a, to_b, 3)
      <<head::binary-size(10), byte, rest::binary>> = to_a

      assert :malformed =
               Native.detector_beat(a, <<head::binary, bxor(byte, 1), rest::binary>>, 3)

      assert :malformed = Native.detector_beat(a, "not a beat", 3)
      assert :malformed = Native.detector_beat(a, :not_binary, 3)

      :ok = Native.detector_down(a, :b@h, 4)
      assert {true, []} = Native.detector_up(a)
      # A stale beat (sent before the nodedown) does not bring it back.
      assert :ok = Native.detector_beat(a, to_a, 5)
      assert {false, []} = Native.detector_up(a)
    end
  end

  test "a non-binary argument raises ArgumentError" do
    assert_raise ArgumentError, fn -> Native.checksum(:not_binary) end
    assert_raise ArgumentError, fn -> Native.checksum(~c"charlist") end
  end

  @tag :tmp_dir
  test "create_dir/2 makes missing directories and leaves existing ones; both calls name errors as File does",
       %{tmp_dir: tmp} do
    data_dir = Path.join(tmp, "data")
    dir = Path.join([data_dir, "Elixir.M.keyed", "3f2a"])
    assert Native.create_dir(dir, data_dir) == :ok
    assert File.dir?(dir)
    File.write!(Path.join(dir, "keep"), "x")
    assert Native.create_dir(dir, dir) == :ok
    assert File.read!(Path.join(dir, "keep")) == "x"
    assert Native.sync_dir(dir) == :ok

    # The errors File.mkdir_p/1 and :file give, as the same atoms.
    file = Path.join(tmp, "file")
    File.write!(file, "y")
    below = Path.join(file, "below")
    assert Native.create_dir(below, tmp) == File.mkdir_p(below)
    assert Native.create_dir(below, tmp) == {:error, :enotdir}
    assert Native.sync_dir(Path.join(tmp, "absent")) == {:error, :enoent}

    # Not a directory: refused before it is opened (a FIFO would block).
    assert Native.sync_dir(file) == {:error, :enotdir}
    assert File.read!(file) == "y"

    # A root that is not an ancestor, and names that name no file.
    assert Native.create_dir(Path.join(tmp, "x"), Path.join(tmp, "y")) == {:error, :einval}
    refute File.exists?(Path.join(tmp, "x"))
    assert Native.create_dir("", tmp) == {:error, :einval}
    assert Native.sync_dir(<<"a", 0, "b">>) == {:error, :einval}
    assert_raise FunctionClauseError, fn -> Native.create_dir(~c"charlist", tmp) end
  end

  describe "start/2 rejects bad options, naming the field" do
    setup do
      %{good: opts(cluster_id(), 3, 0)}
    end

    test "required fields and their types", %{good: good} do
      for {change, field} <- [
            {&Map.delete(&1, :cluster), "cluster"},
            {&Map.put(&1, :cluster, "short"), "cluster"},
            {&Map.put(&1, :cluster, :atom), "cluster"},
            {&Map.delete(&1, :replica_count), "replica_count"},
            {&Map.put(&1, :replica_count, 0), "replica_count"},
            {&Map.put(&1, :replica_count, 7), "replica_count"},
            {&Map.put(&1, :replica_count, "3"), "replica_count"},
            {&Map.delete(&1, :replica_index), "replica_index"},
            {&Map.put(&1, :replica_index, 3), "replica_index"},
            {&Map.put(&1, :replica_index, -1), "replica_index"},
            {&Map.put(&1, :tick_ms, 0), "tick_ms"},
            {&Map.put(&1, :tick_ms, 1.5), "tick_ms"},
            {&Map.put(&1, :pipeline_max, -1), "pipeline_max"},
            {&Map.put(&1, :heartbeat_ticks, 1 <<< 64), "heartbeat_ticks"},
            {&Map.put(&1, :bogus, 1), "bogus"}
          ] do
        error = assert_raise ArgumentError, fn -> Native.start(change.(good), self()) end
        assert error.message =~ field, "#{inspect(error.message)} should name #{field}"
      end
    end

    test "vsr's Config::validate has the last word", %{good: good} do
      error =
        assert_raise ArgumentError, fn ->
          Native.start(Map.put(good, :pipeline_max, 0), self())
        end

      assert error.message =~ "pipeline_max must be positive"

      bad = Map.merge(good, %{heartbeat_ticks: 10, view_change_ticks: 20})
      error = assert_raise ArgumentError, fn -> Native.start(bad, self()) end
      assert error.message =~ "view_change_ticks"

      # Issue "Lose nothing" 14: ranges, checked by the NIF too.
      for {key, value} <- [pipeline_max: (1 <<< 64) - 1, view_change_ticks: (1 <<< 64) - 1] do
        error =
          assert_raise ArgumentError, fn -> Native.start(Map.put(good, key, value), self()) end

        range = Visor.Contract.range(key)
        assert error.message =~ "#{key} must be an integer in #{range.first}..#{range.last}"
      end
    end

    test "opts and owner must have the right shape", %{good: good} do
      assert_raise ArgumentError, ~r/opts/, fn -> Native.start(:nope, self()) end
      assert_raise ArgumentError, ~r/owner/, fn -> Native.start(good, :nope) end
    end

    test "the raw NIF is as strict as the wrapper", %{good: good} do
      assert {:error, {:bad_option, :replica_count, why}} =
               Native.nif_start(Map.put(good, :replica_count, 256), self())

      assert why =~ "got 256"

      assert {:error, {:bad_option, :cluster, _}} =
               Native.nif_start(Map.put(good, :cluster, "x"), self())

      assert {:error, {:bad_option, :opts, _}} = Native.nif_start([], self())
      assert_raise ArgumentError, fn -> Native.nif_start(good, :not_a_pid) end
    end
  end

  test "submit, deliver, status and stop reject bad arguments" do
    {:ok, e} = Native.start(opts(cluster_id(), 1, 0), self())
    on_exit(fn -> Native.stop(e) end)

    error = assert_raise ArgumentError, fn -> Native.submit(e, <<0::120>>, 0, 0, "") end
    assert error.message =~ "client"
    assert error.message =~ "15-byte"
    assert_raise ArgumentError, ~r/session/, fn -> Native.submit(e, client_id(), -1, 0, "") end

    assert_raise ArgumentError, ~r/request/, fn ->
      Native.submit(e, client_id(), 0, 1 <<< 64, "")
    end

    assert_raise ArgumentError, ~r/payload/, fn -> Native.submit(e, client_id(), 0, 0, :x) end
    assert_raise ArgumentError, ~r/messages/, fn -> Native.deliver(e, :x) end
    assert_raise ArgumentError, fn -> Native.nif_deliver(e, %{}) end
    assert_raise ArgumentError, ~r/engine/, fn -> Native.status(:nope) end
    # A reference that is not an engine passes the wrapper's check but not the NIF's.
    assert_raise ArgumentError, fn -> Native.status(make_ref()) end
    assert_raise ArgumentError, fn -> Native.stop(make_ref()) end
    assert_raise ArgumentError, fn -> Native.nif_submit(e, <<0::120>>, 0, 0, "") end
  end

  test "a single-replica group registers, executes and replies" do
    {:ok, e} = Native.start(opts(cluster_id(), 1, 0), self())
    on_exit(fn -> Native.stop(e) end)
    client = client_id()

    assert :ok = Native.submit(e, client, 0, 0, "")
    assert_receive {:visor_engine, ^e, events}, 2_000

    assert [{:reply, ^client, 0, op, {:registered, session}}] =
             for({:reply, _, _, _, _} = r <- events, do: r)

    assert session == op

    assert [{:execute, ^op, 0, ts, [{^client, 0, {:registered, ^session}, ""}]}] =
             for({:execute, _, _, _, _} = x <- events, do: x)

    assert abs(ts - System.os_time(:nanosecond)) < 60_000_000_000

    assert :ok = Native.submit(e, client, session, 1, "payload-1")
    assert_receive {:visor_engine, ^e, events}, 2_000

    assert [{:execute, op1, 0, ts1, [{^client, 1, :executed, "payload-1"}]}] =
             for({:execute, _, _, _, _} = x <- events, do: x)

    assert op1 == op + 1 and ts1 > ts

    assert [{:reply, ^client, 1, ^op1, :executed}] =
             for({:reply, _, _, _, _} = r <- events, do: r)

    # A retry is answered from the client table, not executed again.
    assert :ok = Native.submit(e, client, session, 1, "payload-1")
    assert_receive {:visor_engine, ^e, [{:reply, ^client, 1, ^op1, {:duplicate, ^op1}}]}, 2_000

    # An unknown session is refused deterministically, through the log.
    assert :ok = Native.submit(e, client, session + 100, 2, "x")
    assert_receive {:visor_engine, ^e, events}, 2_000
    assert {:reply, ^client, 2, _, :evicted} = List.keyfind(events, :reply, 0)

    status = Native.status(e)

    assert %{
             status: :normal,
             view: 0,
             primary: 0,
             is_primary: true,
             replica_index: 0,
             replica_count: 1,
             stats: %{sent: 0}
           } = status

    assert status.commit == op1 + 1 and status.commit_max == status.commit and
             status.op == status.commit
  end

  test "three replicas in one process agree on every execute" do
    c = start_cluster(3)
    on_exit(fn -> stop_cluster(c) end)
    client = client_id()

    # Replica 1 is a backup in view 0: it forwards to the primary, replica 0.
    {c, session} = register(c, 1, client)

    {c, op} = commit(c, 1, client, session, 1, "first")
    assert op == session + 1

    :ok = Native.submit(c.engines[1], client, session, 2, "second")
    c = pump(c, &(replied?(&1, 1, client, 2) and all_executed?(&1, op + 1)))

    # The replies went to the replica the client submitted through only.
    assert c.replies[0] == [] and c.replies[2] == []
    assert c.executes[0] == c.executes[1] and c.executes[1] == c.executes[2]

    assert [
             {:execute, ^session, 0, _, [{^client, 0, {:registered, ^session}, ""}]},
             {:execute, ^op, 0, _, [{^client, 1, :executed, "first"}]},
             {:execute, op2, 0, _, [{^client, 2, :executed, "second"}]}
           ] = c.executes[0]

    assert op2 == op + 1

    for {i, e} <- c.engines do
      status = Native.status(e)
      assert %{status: :normal, view: 0, primary: 0, replica_index: ^i, replica_count: 3} = status
      assert status.is_primary == (i == 0)
      assert status.commit >= op2
      assert status.stats.sent > 0
    end
  end

  test "a read through a backup is ready once it has executed what was committed before" do
    c = start_cluster(3)
    on_exit(fn -> stop_cluster(c) end)
    client = client_id()
    {c, session} = register(c, 1, client)
    {c, op} = commit(c, 1, client, session, 1, "written")

    assert_raise ArgumentError, ~r/read id/, fn -> Native.read(c.engines[2], -1) end
    :ok = Native.read(c.engines[2], 42)
    ready? = fn c -> Enum.any?(c.ready, &match?({2, {:read_ready, 42, _}}, &1)) end
    c = pump(c, ready?)
    assert [{2, {:read_ready, 42, read_op}}] = c.ready
    assert read_op >= op
    # By then replica 2 has executed everything up to the read's index.
    assert Enum.any?(c.executes[2], &match?({:execute, ^read_op, _, _, _}, &1))
  end

  test "garbage from peers is dropped and counted, and the group keeps working" do
    c = start_cluster(3)
    on_exit(fn -> stop_cluster(c) end)
    client = client_id()
    {c, session} = register(c, 1, client)
    c = pump(c, &(&1.last_send != nil))
    {_to, real} = c.last_send

    e2 = c.engines[2]
    before = dropped(Native.status(e2).stats)

    flip = fn bytes, bit ->
      <<head::bitstring-size(bit), b::1, tail::bitstring>> = bytes
      <<head::bitstring, 1 - b::1, tail::bitstring>>
    end

    garbage =
      [<<>>, <<0>>, :binary.copy(<<0>>, 37), :binary.copy(<<255>>, 300)] ++
        for(n <- [1, 10, 36, 37, 38, 100, 1000], do: :crypto.strong_rand_bytes(n)) ++
        for(n <- [1, 16, 20, 36, 37, byte_size(real) - 1], do: binary_part(real, 0, n)) ++
        for(
          bit <- [0, 100, 8 * 18, 8 * 20 + 3, 8 * 36, 8 * byte_size(real) - 1],
          do: flip.(real, bit)
        )

    for bytes <- garbage, do: assert(:ok = Native.deliver(e2, bytes))
    # The same as one peer's list, with non-binaries among them: those are
    # skipped and counted by the caller, the rest reach the replica.
    assert {:malformed, 2} = Native.deliver(e2, [:x | garbage] ++ [{1, 2}])
    # A list longer than any engine sends is dropped whole, unread.
    assert {:malformed, 1} = Native.deliver(e2, List.duplicate(real, 257))
    assert {:malformed, 1} = Native.deliver(e2, List.duplicate(:x, 10_000))
    # An improper list: the element and the tail are dropped, nothing raises.
    assert {:malformed, 2} = Native.deliver(e2, [:x | :improper])

    expected = before + 2 * length(garbage)
    wait_until(fn -> dropped(Native.status(e2).stats) >= expected end)
    assert dropped(Native.status(e2).stats) == expected

    :ok = Native.submit(c.engines[2], client, session, 1, "after garbage")
    c = pump(c, &replied?(&1, 2, client, 1))
    {:reply, ^client, 1, op, :executed} = reply(c, 2, client, 1)
    c = pump(c, &all_executed?(&1, op))
    assert c.executes[0] == c.executes[1] and c.executes[1] == c.executes[2]
    assert Native.status(e2).status == :normal
  end

  # No NIF call may wait for the engine thread: status/1 reads the last
  # published copy, submit/5 and deliver/2 only enqueue. The test hook holds
  # the engine thread busy until the test releases it, so every call below
  # runs while the thread is stalled. Had any of them to wait for the engine
  # thread, it could return only after the release, which comes after the
  # calls: the test would hang until the hook's own 30 s limit, and then
  # find :visor_engine_resumed already in its mailbox. No wall-clock
  # threshold is involved.
  test "status, submit and deliver answer while the engine thread is busy" do
    {:ok, e} = Native.start(opts(cluster_id(), 1, 0), self())
    on_exit(fn -> Native.stop(e) end)
    client = client_id()
    :ok = Native.submit(e, client, 0, 0, "")
    assert_receive {:visor_engine, ^e, events}, 2_000

    assert [{:reply, ^client, 0, _, {:registered, session}}] =
             for({:reply, _, _, _, _} = r <- events, do: r)

    release = Native.stall_for_test(e)
    assert_receive :visor_engine_stalled, 2_000
    before = Native.status(e)

    statuses = for _ <- 1..1000, do: Native.status(e)
    assert :ok = Native.submit(e, client, session, 1, "during the stall")
    assert :ok = Native.deliver(e, ["not a message"])
    assert :ok = Native.read(e, 1)
    refute_received :visor_engine_resumed

    # A consistent copy: nothing is published while the thread is stalled,
    # so every status is the one before, without the submission.
    assert Enum.uniq(statuses) == [before]
    assert before.status == :normal

    # Released, the engine takes what was queued meanwhile, in order: the
    # command executes, the junk is dropped, the read sees the command.
    :ok = Native.release_for_test(release)
    assert_receive :visor_engine_resumed, 2_000
    assert_receive {:visor_engine, ^e, events}, 2_000
    assert [{:reply, ^client, 1, op, :executed}] = for({:reply, _, _, _, _} = r <- events, do: r)
    assert op == before.op + 1
    assert [{:read_ready, 1, ^op}] = for({:read_ready, _, _} = r <- events, do: r)
    assert dropped(Native.status(e).stats) == dropped(before.stats) + 1
  end

  test "a failing group reports down once, is :failed, and the VM lives on" do
    {:ok, e} = Native.start(opts(cluster_id(), 1, 0), self())
    client = client_id()
    :ok = Native.submit(e, client, 0, 0, "")
    assert_receive {:visor_engine, ^e, _}, 2_000

    :ok = Native.crash_for_test(e)
    assert_receive {:visor_engine_down, ^e, reason}, 2_000
    assert {:engine_bug, detail} = reason
    assert detail =~ "deliberate crash"
    assert Native.status(e).status == :failed

    # Nothing more arrives, and every call on the dead group is a harmless :ok.
    :ok = Native.crash_for_test(e)
    :ok = Native.submit(e, client, 1, 1, "x")
    :ok = Native.deliver(e, "x")
    assert :ok = Native.stop(e)
    assert :ok = Native.stop(e)
    refute_receive {:visor_engine_down, ^e, _}, 100
    refute_receive {:visor_engine, ^e, _}, 50
    assert Native.status(e).status == :failed
  end
end

defmodule Visor.NativeResourceTest do
  # Not async: it counts the engine's groups, which other tests change.
  use ExUnit.Case, async: false

  import Visor.NativeTest.Harness

  alias Visor.Native

  # The group count once groups released by earlier tests are gone.
  defp settled_groups do
    wait_until(fn ->
      a = Native.engine_info().groups
      Process.sleep(30)
      a == Native.engine_info().groups
    end)

    Native.engine_info().groups
  end

  test "stop/1 releases the group, is idempotent, and status says :stopped" do
    before = settled_groups()
    engines = for i <- 0..2, do: elem(Native.start(opts(cluster_id(), 3, i), self()), 1)
    assert Native.engine_info().groups == before + 3

    for e <- engines, do: assert(:ok = Native.stop(e))
    for e <- engines, do: assert(:ok = Native.stop(e))
    wait_until(fn -> Native.engine_info().groups == before end)
    for e <- engines, do: assert(%{status: :stopped} = Native.status(e))

    # Calls on a stopped group are no-ops.
    [e | _] = engines
    assert :ok = Native.submit(e, client_id(), 0, 0, "")
    assert :ok = Native.deliver(e, "bytes")
    refute_receive {:visor_engine, ^e, _}, 50
  end

  test "the owner's exit releases its groups, even while others hold the reference" do
    before = settled_groups()
    test = self()

    owner =
      spawn(fn ->
        {:ok, kept} = Native.start(opts(cluster_id(), 3, 0), self())
        {:ok, _dropped} = Native.start(opts(cluster_id(), 1, 0), self())
        send(test, {:engine, kept})
        receive do: (:exit -> :ok)
      end)

    assert_receive {:engine, kept}, 1_000
    assert Native.engine_info().groups == before + 2
    ref = Process.monitor(owner)
    send(owner, :exit)
    assert_receive {:DOWN, ^ref, :process, ^owner, _}, 1_000

    wait_until(fn -> Native.engine_info().groups == before end)
    assert %{status: :stopped} = Native.status(kept)
  end

  test "an owner that is already dead gets a stopped engine" do
    before = settled_groups()
    {pid, ref} = spawn_monitor(fn -> :ok end)
    assert_receive {:DOWN, ^ref, :process, ^pid, _}

    assert {:ok, e} = Native.start(opts(cluster_id(), 1, 0), pid)
    assert %{status: :stopped} = Native.status(e)
    assert Native.engine_info().groups == before
  end

  test "hundreds of groups share a few engine threads" do
    before = settled_groups()
    engines = for _ <- 1..300, do: elem(Native.start(opts(cluster_id(), 1, 0), self()), 1)
    info = Native.engine_info()
    assert info.groups == before + 300
    assert info.threads in 2..4

    # Every one of them works.
    client = client_id()
    for e <- engines, do: :ok = Native.submit(e, client, 0, 0, "")

    for e <- engines do
      assert_receive {:visor_engine, ^e, events}, 5_000
      assert {:reply, ^client, 0, _, {:registered, _}} = List.keyfind(events, :reply, 0)
    end

    Enum.each(engines, &Native.stop/1)
    wait_until(fn -> Native.engine_info().groups == before end)
    assert Native.engine_info().threads == info.threads
  end
end
