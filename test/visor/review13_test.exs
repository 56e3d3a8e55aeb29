defmodule Visor.Review13V1Group do
  @moduledoc false
  # A group whose code supports state machine version 1.
  use Visor

  @impl Visor
  def initial_state(_opts), do: 0

  @impl Visor
  def version, do: 1

  @impl Visor
  def handle_commit(:incr, state), do: {:ok, state + 1, state + 1}
end

defmodule Visor.Review13HugeVersionGroup do
  @moduledoc false
  # A group whose version/0 returns an integer the switch entry cannot
  # hold (above 2^64 - 1): Visor.Executor.version/1 calls it valid.
  use Visor

  @impl Visor
  def initial_state(_opts), do: 0

  @impl Visor
  def version, do: 0x1_0000_0000_0000_0000

  @impl Visor
  def handle_commit(:incr, state), do: {:ok, state + 1, state + 1}
end

defmodule Visor.Review13Test do
  # Adversarial review of what landed in 3151536..b4d00c0 (versioned state
  # machines, spare forwarding, formation witnesses). Each test names the
  # break it proves (each failed on b4d00c0) and the fix. Not async:
  # groups run here, and code is hot-loaded.
  use ExUnit.Case, async: false

  alias Visor.Executor
  alias Visor.Server.Machine
  alias Visor.Test.{Cluster, CodeVersions}

  defp start_group(group) do
    Cluster.ensure_distributed!()
    start_supervised!({group, nodes: [node()]})
    Cluster.eventually(fn -> Visor.status(group).status == :normal end, 15_000)
  end

  defp server(group), do: Process.whereis(Visor.Supervisor.name(group, :server))

  # FIXED (LIVENESS): a `version/0` above 2^64 - 1 passed
  # Visor.Executor.version/1 (any non-negative integer), so the primary
  # proposed it; Visor.Executor.switch_payload/1's guard then raised a
  # FunctionClauseError inside the server's carry_out({:propose, v}), and
  # the primary's server crashed on every tick (each restart proposing
  # again), taking the group's supervisor down after its restart limit.
  # Such a version is now `:invalid` (code that supports no version): the
  # replica refuses, with a clear error, and its server stays up.
  test "a version/0 above 2^64 - 1 supports no version: the server refuses, and stays up" do
    group = Visor.Review13HugeVersionGroup
    start_group(group)
    before = server(group)
    assert Visor.status(group).version.supported == :invalid

    # Three version ticks.
    Process.sleep(3_500)

    assert server(group) == before,
           "the server was restarted (it crashed proposing the version switch)"

    assert Visor.commit(group, :incr) == {:error, {:unsupported_version, 0}}
    assert Visor.status(group).version.running == 0
  end

  # FIXED (API / LIVENESS; such payloads are refused at admission with
  # {:error, :malformed_command}): the switch entry's reserved encoding (`<<1,
  # v::64>>`) is kept from user commands only by Visor.commit/3 encoding
  # with term_to_binary/1. The server's own commit request accepts any
  # binary, from any node (a spare's forwarded commit, `{:visor_forwarded,
  # {:commit, payload}, left}`, is exactly this message, and the server
  # treats calls from other nodes as untrusted input). One such payload
  # switches the cluster to a version no code supports: every replica
  # stops executing, and versions never go down, so nothing but a release
  # claiming that version brings the group back.
  test "a forwarded commit of a raw switch payload stops every replica for good" do
    group = Visor.Review13V1Group
    start_group(group)
    Cluster.eventually(fn -> Visor.status(group).version.running == 1 end, 10_000)
    assert Visor.commit(group, :incr) == 1

    forged = {:visor_forwarded, {:commit, Executor.switch_payload(7)}, 5_000}
    reply = GenServer.call(Visor.Supervisor.name(group, :server), forged, 10_000)

    version = Visor.status(group).version

    assert version.blocked == nil,
           "a raw payload was executed as a version switch: reply #{inspect(reply)}, " <>
             "status().version #{inspect(version)}"

    # Refused before admission, which a spare's forwarded call is told so.
    assert reply == {:visor_refused, :malformed_command}
    assert version.running == 1

    # The local call too, and any payload that is not term_to_binary's
    # (a skip's reserved encoding included: only {:skip, op} submits one).
    server = Visor.Supervisor.name(group, :server)
    deadline = System.monotonic_time(:millisecond) + 5_000

    for payload <- [Executor.switch_payload(7), Executor.skip_payload(1), <<>>, "plain"] do
      assert GenServer.call(server, {{:commit, payload}, deadline}) ==
               {:error, :malformed_command}
    end

    assert Visor.commit(group, :incr) == 2
  end

  # FIXED (SAFETY, a race; Machine checks again after each request, and
  # holds the rest of the op from the request after which the code no
  # longer supports the version): Machine checked once per op, before its first
  # request, that this node's code supports the version the op needs, and
  # then calls `module.handle_commit` for each request of the op (an
  # external call: always the newest code). A hot code load that rolls the
  # node back (documented: "a member given the old code stops") landing
  # while a batch executes runs the op's remaining commands on the old code
  # under the new version, where every other replica runs the new code:
  # the states diverge. The docs say a load "takes effect from the next op
  # on"; it takes effect at the next request.
  describe "a rollback that lands during a batch" do
    @module Visor.Review13Test.Rolled

    setup do
      :ok = Visor.Lifetime.forget(@module)
      on_exit(fn -> CodeVersions.unload(@module) end)
    end

    defp compile(n, extra) do
      CodeVersions.state_machine(@module, """
      @impl Visor
      def version, do: #{n}
      #{extra}
      @impl Visor
      def handle_commit(x, meta, state), do: {:ok, {:code, #{n}, meta.version}, [x | state]}
      """)
    end

    test "runs the rest of the op on the old code under the new version" do
      v1 = compile(1, "")

      # The new code's :slow command takes a while, as a batch of many
      # commands does; the old code is loaded meanwhile by another process
      # (a release handler's rollback).
      v2 =
        compile(2, """
        def handle_commit(:slow, _meta, state) do
          Process.sleep(300)
          {:ok, :slow, state}
        end
        """)

      CodeVersions.load(v2)
      {m, []} = Machine.new(@module, [], :atomics.new(3, []), nil)

      switch = {"p", 1, :executed, Executor.switch_payload(2)}
      {m, _effects} = Machine.event(m, {:execute, 1, 1, 1_001, [switch]})
      assert Machine.versions(m).running == 2

      test = self()

      spawn(fn ->
        Process.sleep(100)
        CodeVersions.load(v1)
        send(test, :rolled_back)
      end)

      requests = [
        {"a", 1, :executed, :erlang.term_to_binary(:slow)},
        {"b", 1, :executed, :erlang.term_to_binary(:x)}
      ]

      {m, effects} = Machine.event(m, {:execute, 2, 1, 1_002, requests})
      assert_receive :rolled_back, 1_000

      b = for {:result, "b", 1, result} <- effects, do: result

      # Every replica that kept the new code answers {:code, 2, 2}; this
      # one must stop (unsupported_version), not answer otherwise.
      refute b == [{:ok, {:code, 1, 2}}],
             "command b ran on the old code (version 1) under cluster version 2: #{inspect(b)}"

      # The rollback landed during a: its execution is discarded (no
      # result of it), and the replica stops at op 2, from a on.
      refused = {:error, {:unsupported_version, 2}}
      assert for({:result, c, 1, r} <- effects, do: {c, r}) == [{"a", refused}, {"b", refused}]
      assert Machine.versions(m).blocked == %{op: 2, version: 2}
      assert Machine.read_local(m, []) == {:error, {:unsupported_version, 2}}

      # Once the new code is back, a and b run on it, under version 2,
      # each once.
      CodeVersions.load(v2)
      {m, effects} = Machine.code_loaded(m)

      assert for({:result, c, 1, r} <- effects, do: {c, r}) ==
               [{"a", {:ok, :slow}}, {"b", {:ok, {:code, 2, 2}}}]

      assert Machine.versions(m).blocked == nil
      assert Machine.read(m, []) == {:ok, [:x]}
    end
  end

  # FIXED (API / LIVENESS; a member's refusal before admission comes back
  # as {:visor_refused, reason}, and the spare tries the next member): a
  # spare tried the members in turn only while
  # they "received nothing that counts" ({:error, :spare}, a settings
  # mismatch, no group); any other answer is returned as is. A member that
  # refuses at the call (a replica blocked on a version after a rollback,
  # halted at a poison command, its engine down, its store refused)
  # received nothing either, yet its refusal ends the spare's call: with
  # the first member listed rolled back, no commit from a spare succeeds,
  # while the other two members commit normally.
  describe "a spare whose first member refuses at the call" do
    @ledger Visor.Review13Test.SpareLedger

    defp ledger(n) do
      CodeVersions.state_machine(
        @ledger,
        """
        @impl Visor
        def version, do: #{n}
        @impl Visor
        def handle_commit(:incr, _meta, state), do: {:ok, state + 1, state + 1}
        """,
        "0"
      )
    end

    test "fails the spare's commit although a quorum of members commits" do
      [v1, v2] = [ledger(1), ledger(2)]
      [a, b, c, d] = nodes = Cluster.start_peers(4) |> Enum.map(&elem(&1, 1))
      for n <- nodes, do: CodeVersions.load(v2, n)
      :ok = Cluster.start_group(nodes, @ledger, [nodes: [a, b, c]], :critical)

      for n <- [a, b, c],
          do:
            Cluster.eventually(fn -> Cluster.status(n, @ledger).version.running == 2 end, 10_000)

      # The node a spare tries first (the first listed, or the primary a
      # member named) is rolled back, and stops at the next op; one member
      # keeps the new code.
      victims = Enum.uniq([a, Cluster.primary(b, @ledger)])
      [healthy | _] = [a, b, c] -- victims
      for n <- victims, do: CodeVersions.load(v1, n)
      assert :erpc.call(healthy, Visor, :commit, [@ledger, :incr]) == 1

      for n <- victims,
          do:
            Cluster.eventually(
              fn -> Cluster.status(n, @ledger).version.blocked != nil end,
              10_000
            )

      assert :erpc.call(healthy, Visor, :commit, [@ledger, :incr]) == 2
      reply = :erpc.call(d, Visor, :commit, [@ledger, :incr])

      assert reply == 3,
             "the spare's commit failed with a blocked member's refusal: #{inspect(reply)}"

      # Every member rolled back: the spare's caller gets the error a
      # member's own caller gets (the last member admits this one, and
      # stops at it), and once all refuse, the first refusal, at once.
      for n <- [a, b, c] -- victims, do: CodeVersions.load(v1, n)
      unsupported = {:error, {:unsupported_version, 2}}
      assert :erpc.call(d, Visor, :commit, [@ledger, :incr]) == unsupported

      for n <- [a, b, c],
          do: Cluster.eventually(fn -> Cluster.status(n, @ledger).version.blocked != nil end)

      {micros, reply} = :timer.tc(fn -> :erpc.call(d, Visor, :commit, [@ledger, :incr]) end)
      assert reply == unsupported
      assert micros < 1_000_000
    end
  end
end
