defmodule Visor.Server.MachineTest do
  # The application state machine, fed engine events by hand.
  use ExUnit.Case, async: true

  # Visor.Executor logs the failing handle_commit.
  @moduletag :capture_log

  alias Visor.Executor
  alias Visor.Server.Machine

  defmodule App do
    @moduledoc false
    use Visor

    @impl Visor
    def initial_state(_opts), do: []

    # Replies with the op Visor.Lifetime says is executing (the test puts
    # the counters in the process dictionary): a server that dies in here
    # is charged to that op.
    @impl Visor
    def handle_commit({:add, x}, state),
      do: {:ok, :atomics.get(Process.get(:counters), 1), [x | state]}

    def handle_commit({:replace, x}, _state), do: {:ok, nil, x}
    def handle_commit(:raise, _state), do: raise("boom")

    @impl Visor
    def encode_snapshot(state) do
      if state == [:unencodable], do: :not_a_binary, else: :erlang.term_to_binary(state)
    end
  end

  defp machine(death_at \\ nil) do
    counters = :atomics.new(3, [])
    Process.put(:counters, counters)
    Machine.new(App, [], counters, death_at)
  end

  defp cmd(term), do: :erlang.term_to_binary(term)
  defp execute(op, requests), do: {:execute, op, 1, 1_000 + op, requests}
  defp executed(client, term), do: {client, 1, :executed, cmd(term)}

  defp run(machine, events) do
    Enum.reduce(events, {machine, []}, fn event, {m, effects} ->
      {m, more} = Machine.event(m, event)
      {m, effects ++ more}
    end)
  end

  test "a batch (pipelined commands) runs each command in order, as if alone: one result each" do
    {m, []} = machine()
    batch = Executor.batch_payload([cmd({:add, :a}), cmd(:raise), cmd({:add, :b})])

    {m, effects} = run(m, [execute(1, [{"c1", 1, :executed, batch}, executed("c2", {:add, :c})])])

    # The failing command changed nothing; the one after it ran on the
    # state the one before it left.
    assert Machine.read(m, []) == {:ok, [:c, :b, :a]}

    assert [
             {:result, "c1", 1,
              {:batch, [{:ok, 1}, {:error, {:handle_commit_failed, _}}, {:ok, 1}]}},
             {:result, "c2", 1, {:ok, 1}}
           ] = effects
  end

  test "executes committed commands in order; every executed request has a result, in order" do
    {m, []} = machine()

    {m, effects} =
      run(m, [
        execute(1, [executed("c1", {:add, :a}), {"c2", 0, {:registered, 5}, <<>>}]),
        execute(2, [executed("c2", :raise), executed("c3", {:add, :b})])
      ])

    assert Machine.read(m, []) == {:ok, [:b, :a]}

    assert [
             {:result, "c1", 1, {:ok, 1}},
             {:result, "c2", 1, {:error, {:handle_commit_failed, %RuntimeError{}}}},
             {:result, "c3", 1, {:ok, 2}}
           ] = effects

    # Nothing is marked executing once the event is applied.
    assert :atomics.get(Process.get(:counters), 1) == 0
  end

  test "reads: a path that does not fit is the caller's raise, never the server's" do
    {m, []} = machine()
    {m, _} = run(m, [execute(1, [executed("c", {:add, %{k: 1}})])])
    assert Machine.read(m, []) == {:ok, [%{k: 1}]}
    assert {:raise, :error, %ArgumentError{}, _} = Machine.read_local(m, ["k"])
  end

  # Issue 13: an accessor that sleeps or kills its process ran in the
  # server. The server reads plain data only; from the first function (or
  # struct) on, the path is the caller's to finish.
  test "reads: user code in a path is handed to the caller with the data it applies to" do
    {m, []} = machine()
    {m, _} = run(m, [execute(1, [executed("c", {:add, %{k: %{j: 1}}})])])
    at0 = Access.at(0)
    assert Machine.read(m, [at0, :k]) == {:get_in, [%{k: %{j: 1}}], [at0, :k]}
    assert Machine.read_local(m, [at0, :k]) == {:get_in, [%{k: %{j: 1}}], [at0, :k]}
    {m, _} = run(m, [execute(2, [executed("c", {:replace, %{k: %{j: 1}}})])])
    assert Machine.read(m, [:k, at0]) == {:get_in, %{j: 1}, [at0]}
    assert Machine.read(m, [:k, :j]) == {:ok, 1}
    assert Machine.read(m, [:missing, :j]) == {:ok, nil}
  end

  test "one death in handle_commit: a warning, the op runs again" do
    {m, [{:log, :warning, message}]} = machine({4, 1})
    assert message =~ "op 4"
    assert Machine.halted(m) == nil
  end

  test "a poison command halts at its op until a committed skip; its callers get {:skipped, op}" do
    {m, [{:log, :error, message}]} = machine({2, 2})
    assert message =~ "Visor.skip(Visor.Server.MachineTest.App, 2)"
    assert Machine.halted(m) == 2
    assert Machine.read(m, []) == {:error, {:halted, 2}}

    {m, effects} =
      run(m, [
        execute(1, [executed("c1", {:add, :before})]),
        execute(2, [executed("c2", {:add, :poison})]),
        {:snapshot, 2},
        execute(3, [executed("c3", {:add, :after})])
      ])

    # Op 1 ran; from op 2 on, nothing runs and no checkpoint is taken.
    assert effects == [{:result, "c1", 1, {:ok, 1}}]
    assert m.app_state == [:before]
    # A local read still answers, with the state before the poison op.
    assert Machine.read_local(m, []) == {:ok, [:before]}

    {m, effects} = Machine.event(m, execute(4, [{"c4", 1, :executed, Executor.skip_payload(2)}]))

    assert [
             {:log, :warning, _},
             {:result, "c2", 1, {:error, {:skipped, 2}}},
             {:snapshot, 2, bytes},
             {:result, "c3", 1, {:ok, 3}},
             {:result, "c4", 1, {:ok, :ok}}
           ] = effects

    assert :erlang.binary_to_term(bytes) == [:before]
    assert Machine.halted(m) == nil
    assert Machine.read(m, []) == {:ok, [:after, :before]}
  end

  test "a checkpoint is the state as of its op; one that does not encode is logged and skipped" do
    {m, []} = machine()
    {m, [_]} = Machine.event(m, execute(1, [executed("c", {:add, :x})]))
    assert [{:snapshot, 1, bytes}] = elem(Machine.event(m, {:snapshot, 1}), 1)
    assert :erlang.binary_to_term(bytes) == [:x]

    {m, []} = machine()
    {m, [_]} = Machine.event(m, execute(1, [executed("c", {:add, :unencodable})]))
    assert [{:log, :error, message}] = elem(Machine.event(m, {:snapshot, 1}), 1)
    assert message =~ "encode_snapshot failed at op 1"
  end

  test "installing a checkpoint: the state becomes it; a halt at or before its op is lifted" do
    {m, _} = machine({3, 2})
    {m, [{:log, :error, _}]} = Machine.event(m, {:diverged, 0, "a", "b"})
    assert Machine.read_local(m, []) == {:error, :diverged}

    {m, []} = Machine.event(m, {:install_snapshot, 2, :erlang.term_to_binary([:two])})
    assert Machine.read_local(m, []) == {:ok, [:two]}
    assert Machine.halted(m) == 3

    {m, []} = Machine.event(m, {:install_snapshot, 3, :erlang.term_to_binary([:three])})
    assert Machine.halted(m) == nil
    assert Machine.read(m, []) == {:ok, [:three]}
  end

  test "a checkpoint that does not decode fails the replica, with the documented reason" do
    {m, []} = machine()
    {_m, effects} = Machine.event(m, {:install_snapshot, 9, "junk"})
    assert [{:log, :error, message}, {:fail, {:snapshot_decode_failed, 9, _}}] = effects
    assert message =~ "cannot decode the checkpoint at op 9"
  end

  test "a divergence is logged with both digests" do
    {m, []} = machine()

    {m, [{:log, :error, message}]} = Machine.event(m, {:diverged, 5, "7cbd", "36e2"})
    assert Machine.read_local(m, []) == {:error, :diverged}
    assert message =~ "op 5 has digest 7cbd, a quorum's has 36e2"
  end

  defmodule Replayed do
    @moduledoc false
    use Visor

    @impl Visor
    def initial_state(_opts), do: nil

    @impl Visor
    def handle_commit(:fail, _state), do: raise(ArgumentError, "replayed boom")
  end

  test "a handle_commit failure is logged once, with its stacktrace, not again when the log is replayed" do
    import ExUnit.CaptureLog
    :ok = Visor.Lifetime.forget(Replayed)
    first = fn -> Machine.new(Replayed, [], :atomics.new(3, []), nil) |> elem(0) end
    failing = fn m, op -> Machine.event(m, execute(op, [executed("c", :fail)])) end

    log = capture_log(fn -> failing.(first.(), 1) end)
    assert log =~ "handle_commit failed at op 1"
    assert log =~ "replayed boom"
    assert log =~ "test/visor/server/machine_test.exs:"

    # The next server of this node (same VM) executes the log again.
    replay = first.()

    log =
      capture_log(fn ->
        {m, [{:result, "c", 1, {:error, {:handle_commit_failed, %ArgumentError{}}}}]} =
          failing.(replay, 1)

        failing.(m, 2)
      end)

    refute log =~ "at op 1"
    assert log =~ "handle_commit failed at op 2"
  end
end
