defmodule Visor.TelemetryTest do
  # Issue 13, "Observability": the :telemetry events a running group emits,
  # on real nodes. The hex package cannot be fetched here, so a test double
  # with its semantics (test/support/telemetry.erl) is compiled and loaded
  # on the peers before the group starts, as the real library would be in
  # an application that depends on it. The test node itself never loads it:
  # there, Visor.Telemetry must find it absent. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter, Skewed, TelemetryForward}

  @double Path.expand("../support/telemetry.erl", __DIR__)

  test "without :telemetry, spans run their function and events are dropped" do
    refute Visor.Telemetry.available?()
    assert Visor.Telemetry.span([:visor, :commit], %{}, fn -> {:result, %{}} end) == :result
    assert Visor.Telemetry.execute([:visor, :diverged], %{}, %{}) == :ok

    assert_raise FunctionClauseError, fn ->
      Visor.Telemetry.execute([:visor, :undocumented], %{}, %{})
    end
  end

  test "a group's events: commit, read and skip spans, checkpoints, roles, a view change, a recovery, drops; log metadata" do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    opts = [nodes: nodes, checkpoint_every: 5]
    Enum.each(nodes, &listen/1)
    :ok = Cluster.start_group(nodes, Counter, opts)
    [a, b, _c] = nodes

    # Every member takes a role once it is normal: one primary.
    roles =
      for n <- nodes do
        assert_receive {:telemetry, ^n, [:visor, :role, :changed], %{}, %{role: role} = meta},
                       10_000

        assert meta.group == Counter and meta.node == n and meta.view == 0
        role
      end

    assert Enum.sort(roles) == [:backup, :backup, :primary]

    # A commit's span: start and stop, one context, the outcome.
    assert :erpc.call(a, Visor, :commit, [Counter, {:incr, 1}]) == 1
    assert_receive {:telemetry, ^a, [:visor, :commit, :start], %{monotonic_time: _}, start}
    assert_receive {:telemetry, ^a, [:visor, :commit, :stop], %{duration: duration}, stop}
    assert duration > 0
    assert %{group: Counter, node: ^a, outcome: :ok} = stop
    assert start.telemetry_span_context == stop.telemetry_span_context

    assert {:error, {:handle_commit_failed, _}} = :erpc.call(b, Visor, :commit, [Counter, :raise])

    assert_receive {:telemetry, ^b, [:visor, :commit, :stop], _,
                    %{outcome: :handle_commit_failed}}

    # Reads: linearizable and local; a path that does not fit raises.
    assert :erpc.call(b, Visor, :get_in, [Counter, [:count]]) == 1
    assert_receive {:telemetry, ^b, [:visor, :read, :stop], _, read}
    assert %{consistency: :linearizable, outcome: :ok, group: Counter} = read

    assert :erpc.call(b, Visor, :get, [Counter, [consistency: :local]]).count == 1
    assert_receive {:telemetry, ^b, [:visor, :read, :stop], _, %{consistency: :local}}

    assert {:exception, _, _} =
             catch_error(:erpc.call(b, Visor, :get_in, [Counter, [:count, :x]]))

    assert_receive {:telemetry, ^b, [:visor, :read, :exception], %{duration: _}, %{kind: :error}}

    # Skipping an op this replica executed without dying: a span of its own.
    assert :erpc.call(b, Visor, :skip, [Counter, 1]) == :ok
    assert_receive {:telemetry, ^b, [:visor, :skip, :start], %{monotonic_time: _}, skip_start}
    assert_receive {:telemetry, ^b, [:visor, :skip, :stop], %{duration: _}, skip_stop}
    assert %{group: Counter, node: ^b, op: 1, outcome: :ok} = skip_stop
    assert skip_start.telemetry_span_context == skip_stop.telemetry_span_context

    assert {:error, :not_running} = :erpc.call(b, Visor, :skip, [NotStarted, 2])

    assert_receive {:telemetry, ^b, [:visor, :skip, :stop], _,
                    %{group: NotStarted, op: 2, outcome: :not_running, error: :not_running}}

    # A pipelined commit: start in the caller, stop from the server when
    # it sends the result; the ref is the context.
    assert :erpc.call(b, Visor.Test.Pipeliner, :await_one, [Counter, {:incr, :pipelined}]) == 2
    assert_receive {:telemetry, ^b, [:visor, :pipeline, :start], %{monotonic_time: _}, pstart}
    assert_receive {:telemetry, ^b, [:visor, :pipeline, :stop], %{duration: pduration}, pstop}
    assert pduration > 0
    assert %{group: Counter, node: ^b, outcome: :ok} = pstop
    assert is_reference(pstart.telemetry_span_context)
    assert pstart.telemetry_span_context == pstop.telemetry_span_context

    # A checkpoint at op 5, on every replica.
    for i <- 2..5, do: :erpc.call(a, Visor, :commit, [Counter, {:incr, i}])

    for n <- nodes do
      assert_receive {:telemetry, ^n, [:visor, :checkpoint, :taken], %{bytes: bytes, duration: _},
                      %{op: 5}},
                     5_000

      assert bytes > 0
    end

    # A message the router does not expect.
    send({Counter, a}, :junk)
    assert_receive {:telemetry, ^a, [:visor, :message, :dropped], %{count: 1}, drop}
    assert drop.reason == :unexpected_messages

    # The primary dies: the others change views, one becomes primary.
    primary = Cluster.primary(a, Counter)
    survivors = nodes -- [primary]
    :ok = Cluster.kill_node(primary, survivors)

    for n <- survivors do
      assert_receive {:telemetry, ^n, [:visor, :view_change, :stop], %{duration: _}, change},
                     15_000

      assert change.view > change.from_view
    end

    assert_receive {:telemetry, new_primary, [:visor, :role, :changed], _, %{role: :primary}},
                   5_000

    assert new_primary in survivors

    # Every log line of the server and the router says which group,
    # replica and view it is about.
    for n <- survivors, role <- [:server, :router] do
      index = Cluster.status(n, Counter).index

      Cluster.eventually(fn ->
        match?(
          %{visor_group: Counter, replica: ^index, view: view} when view > 0,
          metadata(n, role)
        )
      end)
    end

    # It comes back with an empty memory and recovers.
    Cluster.restart_peer(primary, survivors)
    listen(primary)
    :ok = Cluster.start_group([primary], Counter, opts)
    assert_receive {:telemetry, ^primary, [:visor, :recovery, :start], _, _}, 10_000
    assert_receive {:telemetry, ^primary, [:visor, :recovery, :stop], %{duration: _}, _}, 15_000
  end

  test "a divergence, and the checkpoint that heals it" do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    Enum.each(nodes, &listen/1)
    :ok = Cluster.start_group(nodes, Skewed, nodes: nodes, checkpoint_every: 5)
    [odd, healthy, _] = Cluster.backups_first(nodes, Skewed)
    :erpc.call(odd, Skewed, :skew, [1])
    for i <- 1..6, do: :erpc.call(healthy, Skewed, :commit, [{:incr, i}])

    assert_receive {:telemetry, ^odd, [:visor, :diverged], %{}, diverged}, 10_000
    assert %{group: Skewed, op: 5, digest: digest, quorum: quorum} = diverged
    assert digest != quorum

    :erpc.call(odd, Skewed, :skew, [0])

    assert_receive {:telemetry, ^odd, [:visor, :checkpoint, :installed], %{bytes: bytes},
                    %{op: op}},
                   15_000

    assert bytes > 0 and op >= 5
    refute_received {:telemetry, _, [:visor, :diverged], _, _}
  end

  test "a replica cut off past the others' checkpoints syncs their state: start, then stop" do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    Enum.each(nodes, &listen/1)
    # A state of about 40 KB sent 4 bytes a chunk: the checkpoint takes
    # about 160 round trips (a window of 64 chunks each), so the router
    # sees the sync under way.
    opts = [nodes: nodes, checkpoint_every: 5, checkpoint_chunk_bytes: 4]
    :ok = Cluster.start_group(nodes, Counter, opts)
    [behind | others] = Cluster.backups_first(nodes, Counter)
    :ok = Cluster.partition([behind], others)

    for i <- 1..40,
        do:
          :erpc.call(hd(others), Visor, :commit, [Counter, {:incr, {i, :binary.copy("x", 1000)}}])

    # The others' logs start after their checkpoint: what it lacks is gone.
    Cluster.eventually(fn -> Enum.all?(others, &(Cluster.status(&1, Counter).log_base > 0)) end)
    refute_received {:telemetry, ^behind, [:visor, :state_sync, :start], _, _}

    :ok = Cluster.heal([behind], others)

    assert_receive {:telemetry, ^behind, [:visor, :state_sync, :start], %{monotonic_time: began},
                    start},
                   15_000

    assert_receive {:telemetry, ^behind, [:visor, :state_sync, :stop],
                    %{duration: duration, monotonic_time: ended}, stop},
                   15_000

    assert %{group: Counter, node: ^behind, op: op, bytes: bytes} = start
    assert bytes > 30_000
    assert %{group: Counter, node: ^behind, op: installed, installed: true} = stop
    assert op >= 5 and installed >= op
    assert duration == ended - began
    assert Cluster.status(behind, Counter).stats.checkpoints_installed >= 1

    for n <- others,
        do: refute_received({:telemetry, ^n, [:visor, :state_sync, _], _, _})
  end

  defp metadata(node, role) do
    pid = :erpc.call(node, Process, :whereis, [Visor.Supervisor.name(Counter, role)])
    {:dictionary, dictionary} = :erpc.call(node, Process, :info, [pid, :dictionary])
    Map.new(Keyword.get(dictionary, :"$logger_metadata$", %{}))
  end

  # Loads the double of :telemetry on `node` and forwards its events here.
  defp listen(node) do
    {:ok, :telemetry, binary} = :compile.file(String.to_charlist(@double), [:binary, :report])

    {:module, :telemetry} =
      :erpc.call(node, :code, :load_binary, [:telemetry, String.to_charlist(@double), binary])

    :ok =
      :erpc.call(node, :telemetry, :attach_many, [
        :visor_test,
        Visor.Telemetry.events(),
        &TelemetryForward.handle/4,
        self()
      ])
  end
end
