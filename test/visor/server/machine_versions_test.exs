defmodule Visor.Server.MachineVersionsTest do
  # Versioned state machines in the application state machine, fed engine
  # events by hand, with the module's code swapped under it as a hot code
  # load does (Visor.Test.CodeVersions). Not async: it loads code.
  use ExUnit.Case, async: false

  alias Visor.Executor
  alias Visor.Server.Machine
  alias Visor.Test.CodeVersions

  @module Visor.Server.MachineVersionsTest.Hot

  # The module's state is the list of what it executed, newest first.
  # Every version is compiled before any is loaded (a module compiled while
  # another version of it is loaded is a redefinition).
  defp compile(bodies) do
    for body <- bodies do
      CodeVersions.state_machine(@module, """
      @impl Visor
      #{body}
      """)
    end
  end

  setup do
    # A switch is logged on its first execution in this VM only.
    :ok = Visor.Lifetime.forget(@module)
    on_exit(fn -> CodeVersions.unload(@module) end)
  end

  defp machine do
    {m, []} = Machine.new(@module, [], :atomics.new(3, []), nil)
    m
  end

  defp execute(op, requests), do: {:execute, op, 1, 1_000 + op, requests}
  defp executed(client, term), do: {client, 1, :executed, :erlang.term_to_binary(term)}

  test "each execution runs the module's current code: a hot load that adds handle_commit/3 gets meta" do
    [two, three] =
      compile([
        "def handle_commit(x, state), do: {:ok, {:two, x}, [x | state]}",
        "def handle_commit(x, meta, state), do: {:ok, {:three, meta.op}, [x | state]}"
      ])

    CodeVersions.load(two)
    m = machine()

    {m, [{:result, "a", 1, {:ok, {:two, :x}}}]} =
      Machine.event(m, execute(1, [executed("a", :x)]))

    # The new code defines only handle_commit/3: calling /2 would fail here
    # while a replica started with this code succeeds.
    CodeVersions.load(three)
    {m, effects} = Machine.event(m, execute(2, [executed("b", :y)]))
    assert effects == [{:result, "b", 1, {:ok, {:three, 2}}}]
    assert Machine.read(m, []) == {:ok, [:y, :x]}
  end

  # Version n of the module: version/0 returns n; every command records the
  # version it ran under. Its checkpoint of [:reserved] starts with the
  # bytes Visor reserves for versioned checkpoints.
  defp versions(ns) do
    compile(
      for n <- ns do
        """
        def handle_commit(x, meta, state), do: {:ok, meta.version, [{x, meta.version} | state]}
        @impl Visor
        def version, do: #{n}
        @impl Visor
        def encode_snapshot([:reserved]), do: <<0, "visor.version", 1::64>>
        def encode_snapshot(state), do: :erlang.term_to_binary(state)
        @impl Visor
        def decode_snapshot(<<0, "visor.version", 1::64>>), do: [:reserved]
        def decode_snapshot(bytes), do: :erlang.binary_to_term(bytes)
        """
      end
    )
  end

  defp switch(client, version), do: {client, 1, :executed, Executor.switch_payload(version)}

  defp run(machine, events) do
    Enum.reduce(events, {machine, []}, fn event, {m, effects} ->
      {m, more} = Machine.event(m, event)
      {m, effects ++ more}
    end)
  end

  test "a switch entry: commands before it run under the old version, after it under the new one" do
    [v2] = versions([2])
    CodeVersions.load(v2)
    m = machine()
    assert Machine.versions(m) == %{running: 0, supported: 2, blocked: nil}

    {m, effects} =
      run(m, [
        execute(1, [executed("a", :a), switch("s", 2), executed("b", :b)]),
        # A repeated or older switch (a new primary's proposal) changes nothing.
        execute(2, [switch("s", 1), switch("s", 2), executed("c", :c)])
      ])

    # The switch never reaches handle_commit; its caller gets the version.
    assert Machine.read(m, []) == {:ok, [c: 2, b: 2, a: 0]}
    assert [{:result, "a", 1, {:ok, 0}}, {:log, :info, message} | _] = effects
    assert message =~ "runs state machine version 2 from op 1 on (it ran 0)"
    assert Enum.count(effects, &match?({:log, _, _}, &1)) == 1
    assert {:result, "s", 1, {:ok, 2}} in effects
    assert Machine.versions(m) == %{running: 2, supported: 2, blocked: nil}
    assert Machine.refusal(m) == nil
  end

  test "code older than a switch stops at its op, holds what follows, and resumes once upgraded" do
    [v1, v2] = versions([1, 2])
    CodeVersions.load(v1)

    {m, effects} =
      run(machine(), [
        execute(1, [switch("s", 1), executed("a", :a)]),
        execute(2, [executed("b", :b), switch("s", 2), executed("c", :c)]),
        {:snapshot, 2},
        execute(3, [executed("d", :d)])
      ])

    # Op 2 is held whole: not even the command before the switch ran.
    refute Enum.any?(effects, &match?({:result, "b", 1, {:ok, _}}, &1))
    assert [{:log, :error, message}] = for({:log, :error, _} = log <- effects, do: log)

    assert message =~
             "runs state machine version 2 from op 2 on, but this node's code supports version 1"

    assert message =~ "stops executing at op 2"
    refute Enum.any?(effects, &match?({:snapshot, _, _}, &1))

    # Callers of held commands, new commits and reads get a clear error.
    refused = {:error, {:unsupported_version, 2}}
    for c <- ["b", "c", "d"], do: assert({:result, c, 1, refused} in effects)
    assert Machine.refusal(m) == {:unsupported_version, 2}
    assert Machine.read(m, []) == refused
    # Local reads too: the state is stale (and after a restart, below, the
    # initial one).
    assert Machine.read_local(m, []) == refused
    assert Machine.versions(m) == %{running: 1, supported: 1, blocked: %{op: 2, version: 2}}

    # The same old code: still blocked, nothing logged again.
    assert Machine.code_loaded(m) == {m, []}

    CodeVersions.load(v2)
    {m, effects} = Machine.code_loaded(m)
    assert [{:log, :warning, resumed} | rest] = effects
    assert resumed =~ "supports version 2 now; the replica executes again from op 2"

    assert [
             {:result, "b", 1, {:ok, 1}},
             {:result, "s", 1, {:ok, 2}},
             {:result, "c", 1, {:ok, 2}},
             {:snapshot, 2, _},
             {:result, "d", 1, {:ok, 2}}
           ] = Enum.reject(rest, &match?({:log, _, _}, &1))

    assert Machine.read(m, []) == {:ok, [d: 2, c: 2, b: 1, a: 1]}
    assert Machine.versions(m) == %{running: 2, supported: 2, blocked: nil}
  end

  test "code loaded after the switch that no longer supports the version stops at the next op" do
    [v1, v2] = versions([1, 2])
    CodeVersions.load(v2)
    {m, _} = run(machine(), [execute(1, [switch("s", 2), executed("a", :a)])])

    # A rollback of this node's code, after the cluster switched.
    CodeVersions.load(v1)
    {m, effects} = Machine.event(m, execute(2, [executed("b", :b)]))

    assert [{:log, :error, message}, {:result, "b", 1, {:error, {:unsupported_version, 2}}}] =
             effects

    assert message =~ "version 2 from op 2 on, but this node's code supports version 1"
    assert Machine.read_local(m, []) == {:error, {:unsupported_version, 2}}
  end

  test "a version/0 that is not a non-negative integer supports nothing: the replica stops, saying why" do
    [bad] =
      compile([
        "def handle_commit(x, _meta, s), do: {:ok, x, s}\n@impl Visor\ndef version, do: -1"
      ])

    CodeVersions.load(bad)
    m = machine()
    assert Machine.versions(m).supported == :invalid
    {_m, [{:log, :error, message} | _]} = Machine.event(m, execute(1, [executed("a", :a)]))

    assert message =~
             "Visor.Server.MachineVersionsTest.Hot.version/0 does not return a non-negative integer"
  end

  test "checkpoints keep the version; those at version 0 are encode_snapshot's bytes alone" do
    [v2] = versions([2])
    CodeVersions.load(v2)

    {m, [_, {:snapshot, 1, v0}]} =
      run(machine(), [execute(1, [executed("a", :a)]), {:snapshot, 1}])

    # As before versions existed: a checkpoint written then reads as version 0.
    assert v0 == :erlang.term_to_binary(a: 0)

    {m, [{:log, :info, _}, _, {:snapshot, 2, v2_bytes}]} =
      run(m, [execute(2, [switch("s", 2)]), {:snapshot, 2}])

    # State sync, or a restart from a checkpoint: the version comes with it.
    {fresh, []} = Machine.event(machine(), {:install_snapshot, 2, v2_bytes})
    assert Machine.read(fresh, []) == {:ok, [a: 0]}
    assert Machine.versions(fresh).running == 2
    {fresh, []} = Machine.event(fresh, {:install_snapshot, 1, v0})
    assert Machine.versions(fresh).running == 0

    # At version 0, an encoding that starts with the reserved bytes would
    # read as a versioned checkpoint: refused, as any encoding failure.
    {fresh, []} =
      Machine.event(fresh, {:install_snapshot, 1, :erlang.term_to_binary([:reserved])})

    assert {_, [{:log, :error, message}]} = Machine.event(fresh, {:snapshot, 1})
    assert message =~ "encode_snapshot failed at op 1"
    assert message =~ "Visor reserves"
    # At a version above 0 the prefix tells them apart.
    {m, []} = Machine.event(m, {:install_snapshot, 2, :erlang.term_to_binary([:reserved])})
    {m, _} = Machine.event(m, execute(3, [switch("s", 2)]))
    {_, [{:snapshot, 3, bytes}]} = Machine.event(m, {:snapshot, 3})
    {again, []} = Machine.event(machine(), {:install_snapshot, 3, bytes})
    assert Machine.read(again, []) == {:ok, [:reserved]}
  end

  test "a checkpoint of a version this node's code does not support waits, undecoded, for code that does" do
    [v1, v2] = versions([1, 2])
    CodeVersions.load(v2)

    {_m, effects} =
      run(machine(), [execute(1, [switch("s", 2), executed("a", :a)]), {:snapshot, 1}])

    assert {:snapshot, 1, bytes} = List.last(effects)

    CodeVersions.load(v1)

    {m, effects} =
      run(machine(), [{:install_snapshot, 1, bytes}, execute(2, [executed("b", :b)])])

    assert [{:log, :error, message}, {:result, "b", 1, {:error, {:unsupported_version, 2}}}] =
             effects

    assert message =~ "version 2 from op 1 on"
    # The state is still the initial one: a local read must not serve it.
    assert Machine.read_local(m, []) == {:error, {:unsupported_version, 2}}
    assert Machine.versions(m).blocked == %{op: 1, version: 2}

    CodeVersions.load(v2)
    {m, [{:log, :warning, _}, {:result, "b", 1, {:ok, 2}}]} = Machine.code_loaded(m)
    assert Machine.read(m, []) == {:ok, [b: 2, a: 2]}
  end
end
