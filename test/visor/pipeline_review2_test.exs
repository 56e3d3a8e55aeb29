defmodule Visor.PipelineReview2Test do
  # A second adversarial review of pipelined commits: the fixes of the
  # first review (git diff 7359de9 158ee3b). Each test tagged
  # :review_break shows a claim that does not hold.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, FirstMessage, OlderCode, Pipeliner, Sequence, TelemetryForward}

  defp report(pid) do
    receive do
      {:pipelined, ^pid, results, _arrival} -> results
    after
      90_000 -> flunk("the pipeliner did not report")
    end
  end

  # Code from before the feature question existed (the release a rolling
  # upgrade came from): its server does not answer `{:visor_features, ...}`
  # (nor asks it: it sends a message the others drop) and its executor
  # runs no batches.
  defp load_older_code(node) do
    :ok = OlderCode.load_executor_without_batches(node)
    :ok = OlderCode.load_server_without_features(node)
  end

  defp disk_cluster(tmp) do
    [_a, _b, _c] = nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))

    opts = Cluster.disk_opts(tmp, nodes: nodes)

    :ok = Cluster.start_group(nodes, Sequence, opts)

    for node <- nodes,
        do: Cluster.eventually(fn -> Cluster.status(node, Sequence).pool.batches end)

    {nodes, opts}
  end

  # Pipelines 300 commands on `node`; what `other` applied of them.
  defp applied_on(node, other, stream) do
    results =
      report(
        :erpc.call(node, Pipeliner, :start, [
          Sequence,
          for(n <- 1..300, do: {n, {:seq, stream, n}, []}),
          self(),
          300
        ])
      )

    for {n, [{_ref, reply}]} <- results, do: assert(reply == n)

    Cluster.eventually(fn ->
      Cluster.status(other, Sequence).commit >= Cluster.status(node, Sequence).commit
    end)

    Sequence.applied(:erpc.call(other, Visor, :get, [Sequence, [consistency: :local]]), stream)
  end

  # Control: with a's server running throughout, c's restart with older
  # code is noticed (its server's exit drops its answer; it never answers
  # again), and c applies every command.
  @tag :tmp_dir
  test "control: a member restarted with older code while this node's group runs gets no batches",
       %{tmp_dir: tmp} do
    {[a, _b, c], opts} = disk_cluster(tmp)
    Cluster.stop_group(c, Sequence)
    load_older_code(c)
    :ok = Cluster.start_group([c], Sequence, opts)
    Process.sleep(3_000)
    refute Cluster.status(a, Sequence).pool.batches
    assert applied_on(a, c, :control) == Enum.to_list(1..300)
  end

  # FIXED (a restarted server trusts a kept answer only for a member it is
  # cut off from; a connected one must answer it first).
  # operations.md: batches go to a member only once its code said it
  # executes them. Fix (7) keeps the answers in Visor.Lifetime for the
  # life of the VM, as `{nil, nil}` entries with no monitor: only a
  # `nodeup` or a "no" removes them. A member whose group restarted with
  # code that does not answer (older code, from before the question),
  # while this node's group was stopped, is never re-judged: this node
  # batches to it forever, and it leaves its state unchanged where the
  # others apply the commands.
  @tag :tmp_dir
  test "a member restarted with older code while this node's group was stopped gets no batches",
       %{tmp_dir: tmp} do
    {[a, _b, c], opts} = disk_cluster(tmp)

    # a's group stops (an operator, a supervisor giving up); meanwhile c's
    # group is restarted with the older release (a rollback).
    Cluster.stop_group(a, Sequence)
    Cluster.stop_group(c, Sequence)
    load_older_code(c)
    :ok = Cluster.start_group([c], Sequence, opts)
    :ok = Cluster.start_group([a], Sequence, opts)
    Cluster.eventually(fn -> Cluster.status(a, Sequence).status == :normal end, 15_000)
    # Several feature questions (one a second).
    Process.sleep(3_000)
    batches = Cluster.status(a, Sequence).pool.batches
    on_c = applied_on(a, c, :old)

    assert on_c == Enum.to_list(1..300),
           "c (older code, never said it executes batches) applied #{length(on_c)} of 300: " <>
             "a batched to it (a's pool.batches was #{batches})"
  end

  # FIXED (Relay answers :no_member_reachable once no member is left).
  # Visor.pipeline/3: the result is "what commit/3 would have returned".
  # On a spare whose only reachable member refuses as a non-member (its
  # group was refused at formation: another pool size), commit/3 (Visor.
  # Forward, each member once) answers {:error, :no_member_reachable} at
  # once, as operations.md says ("with no member connected, ... at once").
  # pipeline/3's relay sends the command to that member again after each
  # refusal (Relay.choose/2 makes it a candidate again), a busy loop
  # between the two servers until the backstop answers :timeout 1 s past
  # the deadline (relay_review_test.exs shows it on the decider).
  test "a spare whose only reachable member is refused answers a pipelined command as commit/3 does" do
    [a, b, c, d] = Cluster.start_peers(4) |> Enum.map(&elem(&1, 1))
    :ok = Cluster.start_group([a, b, c, d], Sequence, nodes: [a, b, c])
    assert Cluster.status(d, Sequence).status == :spare

    :ok = Cluster.stop_group(a, Sequence)

    {:ok, _} =
      :erpc.call(a, Cluster, :start_group_here, [
        Sequence,
        [nodes: [a, b, c], pool_size: 512],
        :critical
      ])

    Cluster.eventually(fn -> Cluster.status(a, Sequence).status == :refused end)
    :ok = Cluster.partition([d, a], [b, c])

    committed =
      :erpc.call(d, Visor, :commit, [Sequence, {:seq, :lone, 1}, [timeout: 3_000]], 10_000)

    {micros, pipelined} =
      :erpc.call(
        d,
        :timer,
        :tc,
        [FirstMessage, :pipeline, [Sequence, {:seq, :lone, 2}, [timeout: 3_000], 10_000]],
        15_000
      )

    assert {committed, pipelined} ==
             {{:error, :no_member_reachable}, {:answer, {:error, :no_member_reachable}}},
           "commit/3: #{inspect(committed)}; pipeline/3: #{inspect(pipelined)} " <>
             "after #{div(micros, 1000)} ms"
  end

  # Loads test/support/telemetry.erl (a double of :telemetry) on `node`
  # and forwards its events here (as telemetry_test.exs does).
  defp listen(node) do
    double = Path.expand("../support/telemetry.erl", __DIR__)
    {:ok, :telemetry, binary} = :compile.file(String.to_charlist(double), [:binary, :report])

    {:module, :telemetry} =
      :erpc.call(node, :code, :load_binary, [:telemetry, String.to_charlist(double), binary])

    :ok =
      :erpc.call(node, :telemetry, :attach_many, [
        :visor_review,
        Visor.Telemetry.events(),
        &TelemetryForward.handle/4,
        self()
      ])
  end

  # FIXED (the server cancels the backstop before answering; one that
  # fired makes it send nothing and end the span with :timeout).
  # operations.md's telemetry table: `[:visor, :pipeline, :stop]` carries
  # "`outcome`, `error` as for commits", when "this node's server sent its
  # result". When the backstop (fix 3/4) answers the caller `:timeout`,
  # the server still ends the span later with its own, dropped, result:
  # a command whose caller got `{:error, :timeout}` is reported `outcome:
  # :ok` (commit/3's span reports what its caller got), so timeouts that
  # the backstop answered are invisible to telemetry.
  test "the pipeline span of a command the backstop answered :timeout reports the timeout" do
    [a, b, c] = nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    listen(a)
    :ok = Cluster.start_group(nodes, Sequence, nodes: nodes)
    _ = {b, c}

    # Its own handle_commit keeps the server busy past deadline + 1 s.
    got =
      :erpc.call(a, FirstMessage, :pipeline, [
        Sequence,
        {:slow, :span, 1, 2_500},
        [timeout: 200],
        2_000
      ])

    assert got == {:answer, {:error, :timeout}}

    stop =
      receive do
        {:telemetry, ^a, [:visor, :pipeline, :stop], _measurements, metadata} -> metadata
      after
        5_000 -> flunk("no [:visor, :pipeline, :stop] event")
      end

    assert stop[:outcome] == :timeout,
           "the caller got {:error, :timeout}; the span says #{inspect(Map.delete(stop, :telemetry_span_context))}"
  end
end
