defmodule Visor.Server.CallersTest do
  # What a caller relies on, decided by Visor.Server.Callers alone: no
  # engine, no process, no clock (time is an argument).
  use ExUnit.Case, async: true

  alias Visor.Executor
  alias Visor.Server.Callers

  @open %{refusal: nil, halted: nil, max_bytes: 100}
  @now 1_000

  # A caller's `from`, as GenServer.call makes it.
  defp from(n), do: {self(), {:tag, n}}

  defp admit!(callers, request, n, deadline \\ @now + 5_000) do
    {:ok, callers, effects} = Callers.admit(callers, request, from(n), deadline, @now, @open)
    assert [{:deadline, _id, _ms}] = effects
    callers
  end

  defp replies(effects), do: for({:reply, from, reply} <- effects, do: {from, reply})
  defp submits(effects), do: for({:submit, c, s, r, p} <- effects, do: {c, s, r, p})

  # Registers every slot the pool asked for, as the engine would answer.
  defp register_all(callers, effects) do
    effects
    |> submits()
    |> Enum.filter(fn {_c, session, request, _p} -> session == 0 and request == 0 end)
    |> Enum.with_index(1)
    |> Enum.reduce(callers, fn {{client, 0, 0, <<>>}, session}, callers ->
      {callers, []} = Callers.settle(callers, client, 0, {:registered, session})
      callers
    end)
  end

  # Admits the requests (caller n is the n-th, from 0), registers the
  # sessions the pool asks for and dispatches again: what went to the
  # engine, registrations left out.
  defp hand_over(callers, requests) do
    callers = Enum.reduce(Enum.with_index(requests), callers, fn {r, n}, c -> admit!(c, r, n) end)
    {callers, first} = Callers.dispatch(callers)
    {callers, second} = Callers.dispatch(register_all(callers, first))
    {callers, Enum.reject(first ++ second, &match?({:submit, _, 0, 0, <<>>}, &1))}
  end

  describe "admission" do
    test "a refusal, a command too large, or a halted replica answers at once; a skip passes a halt" do
      callers = Callers.new(4)

      assert Callers.admit(callers, {:commit, "x"}, from(1), @now, @now, %{
               @open
               | refusal: :spare
             }) ==
               {:error, :spare}

      assert Callers.admit(callers, {:commit, <<0::808>>}, from(1), @now, @now, @open) ==
               {:error, {:command_too_large, 101, 100}}

      halted = %{@open | halted: 7}

      assert Callers.admit(callers, {:commit, "x"}, from(1), @now, @now, halted) ==
               {:error, {:halted, 7}}

      assert Callers.admit(callers, {:read, []}, from(1), @now, @now, halted) ==
               {:error, {:halted, 7}}

      assert {:ok, callers, _} = Callers.admit(callers, {:skip, 7}, from(1), @now, @now, halted)
      {callers, regs} = Callers.dispatch(callers)
      {_callers, effects} = Callers.dispatch(register_all(callers, regs))
      assert [{_client, 1, 1, payload}] = submits(effects)
      assert Executor.skip_target(payload) == 7
    end

    test "the deadline's timer: the time left, never negative, at most 2^32 - 1 ms" do
      callers = Callers.new(1)

      for {deadline, ms} <- [{@now + 250, 250}, {@now - 10, 0}, {@now + 2 ** 40, 0xFFFF_FFFF}] do
        assert {:ok, _, [{:deadline, _id, ^ms}]} =
                 Callers.admit(callers, {:commit, "x"}, from(1), deadline, @now, @open)
      end
    end
  end

  describe "dispatch" do
    test "requests go to the engine in arrival order, reads in line with commits" do
      callers = Callers.new(4)
      requests = [{:commit, "a"}, {:read, [:k]}, {:commit, "b"}, {:commit, "c"}]

      callers =
        Enum.reduce(Enum.with_index(requests), callers, fn {r, n}, c -> admit!(c, r, n) end)

      # No session yet: the first commit waits for one, and the read behind it waits too.
      {callers, effects} = Callers.dispatch(callers)
      assert [_ | _] = effects
      assert Enum.all?(effects, &match?({:submit, _, 0, 0, <<>>}, &1))

      {_callers, effects} = Callers.dispatch(register_all(callers, effects))

      assert [
               {:submit, _, _, 1, "a"},
               {:read, 1},
               {:submit, _, _, 1, "b"},
               {:submit, _, _, 1, "c"}
             ] = effects
    end

    test "a pool of one: each command waits for the previous one's reply" do
      {callers, effects} = hand_over(Callers.new(1), [{:commit, "a"}, {:commit, "b"}])
      assert [{client, session, 1, "a"}] = submits(effects)

      callers = Callers.result(callers, client, 1, {:ok, :a})
      {callers, effects} = Callers.settle(callers, client, 1, :executed)
      assert replies(effects) == [{from(0), {:ok, :a}}]

      {_callers, effects} = Callers.dispatch(callers)
      assert submits(effects) == [{client, session, 2, "b"}]
    end
  end

  describe "answers" do
    test "a caller whose deadline passes gets :timeout exactly once, and never the later reply" do
      {callers, effects} = hand_over(Callers.new(2), [{:commit, "a"}])
      [{client, _session, 1, "a"}] = submits(effects)
      assert Callers.in_flight(callers) == 1

      {callers, effects} = Callers.deadline(callers, 1)
      assert effects == [{:cancel_deadline, 1}, {:reply, from(0), {:error, :timeout}}]
      assert {^callers, []} = Callers.deadline(callers, 1)

      # The engine settles it later: the slot is freed, nobody is answered.
      callers = Callers.result(callers, client, 1, {:ok, :late})
      {callers, effects} = Callers.settle(callers, client, 1, :executed)
      assert effects == []
      assert Callers.in_flight(callers) == 0
      assert Callers.pool(callers).waiting == 0
    end

    test "a caller that timed out in line never reaches the engine" do
      callers = admit!(Callers.new(1), {:commit, "a"}, 0)

      {callers, [{:cancel_deadline, 1}, {:reply, _, {:error, :timeout}}]} =
        Callers.deadline(callers, 1)

      {callers, regs} = Callers.dispatch(callers)
      assert regs == []
      assert {_, []} = Callers.dispatch(register_all(callers, regs))
    end

    test "each outcome the engine settles with means the documented answer" do
      for {result, outcome, answer} <- [
            {{:ok, 1}, :executed, {:ok, 1}},
            {nil, :executed, {:error, :unknown_outcome}},
            {{:ok, 2}, {:duplicate, 9}, {:ok, 2}},
            {nil, {:duplicate, 9}, {:error, {:duplicate, 9}}},
            {{:ok, 3}, :refused, {:error, :refused}},
            {{:ok, 4}, :evicted, {:error, :unknown_outcome}}
          ] do
        {callers, effects} = hand_over(Callers.new(1), [{:commit, "a"}])
        [{client, _, 1, "a"}] = submits(effects)
        callers = if result, do: Callers.result(callers, client, 1, result), else: callers
        {callers, effects} = Callers.settle(callers, client, 1, outcome)
        assert replies(effects) == [{from(0), answer}], inspect(outcome)

        # A refused or evicted session is dropped, and replaced by a fresh one.
        busy_or_idle = Callers.pool(callers)

        if outcome in [:refused, :evicted],
          do: assert(busy_or_idle.slots == 0),
          else: assert(busy_or_idle.idle == 1)
      end
    end

    test "results of other nodes' requests are not kept" do
      {callers, _} = hand_over(Callers.new(1), [{:commit, "a"}])
      assert Callers.result(callers, <<0::128>>, 1, {:ok, :theirs}) == callers
    end

    test "a read is answered from the state when ready; a timed-out one is not computed" do
      {callers, effects} = hand_over(Callers.new(1), [{:read, [:a]}, {:read, [:b]}])
      assert [{:read, 1}, {:read, 2}] = effects

      {callers, effects} = Callers.read_ready(callers, 1, &{:ok, &1})
      assert replies(effects) == [{from(0), {:ok, [:a]}}]

      {callers, _} = Callers.deadline(callers, 2)
      {callers, effects} = Callers.read_ready(callers, 2, fn _ -> flunk("computed") end)
      assert effects == []
      assert {_, []} = Callers.read_ready(callers, 1, &{:ok, &1})
    end

    test "fail_all answers every waiting caller once, and nothing is left to dispatch" do
      {callers, _} = hand_over(Callers.new(1), [{:commit, "a"}, {:read, []}, {:commit, "b"}])
      {callers, effects} = Callers.fail_all(callers, :spare)

      assert Enum.sort(replies(effects)) ==
               Enum.sort(for n <- 0..2, do: {from(n), {:error, :spare}})

      assert Callers.in_flight(callers) == 0
      assert {_, []} = Callers.dispatch(callers)
      assert {_, []} = Callers.fail_all(callers, :spare)
    end

    test "requeue: what an engine that never ran held goes to the next one first, on new sessions" do
      {callers, effects} = hand_over(Callers.new(1), [{:commit, "a"}, {:commit, "b"}])
      [{old, _, 1, "a"}] = submits(effects)

      callers = Callers.requeue(callers)
      assert Callers.in_flight(callers) == 0
      {callers, regs} = Callers.dispatch(callers)
      {_callers, effects} = Callers.dispatch(register_all(callers, regs))
      assert [{new, _, 1, "a"}] = submits(effects)
      refute new == old
    end
  end

  describe "holding commands for a version switch" do
    test "held, commands and what follows them wait; the switch goes ahead of them" do
      callers =
        Enum.reduce(Enum.with_index([{:commit, "a"}, {:read, [:k]}]), Callers.new(2), fn {r, n},
                                                                                         c ->
          admit!(c, r, n)
        end)

      {callers, effects} = Callers.dispatch(callers, true)
      assert effects == []

      callers = admit!(callers, {:switch_version, 2}, 9)
      {callers, effects} = Callers.dispatch(callers, true)
      callers = register_all(callers, effects)
      {callers, effects} = Callers.dispatch(callers, true)
      assert [{_client, _session, _request, switch}] = submits(effects)
      assert Executor.switch_target(switch) == 2

      # Released: the command, then the read behind it.
      {callers, first} = Callers.dispatch(callers, false)
      {_callers, second} = Callers.dispatch(register_all(callers, first))
      effects = Enum.reject(first ++ second, &match?({:submit, _, 0, 0, <<>>}, &1))
      assert [{:submit, _, _, _, "a"}, {:read, _}] = effects
    end

    # A second review's break (API), fixed: docs/operations.md says the hold is on "its
    # callers' commands" and that a halted replica accepts Visor.skip/3 as
    # its one command; nothing says the skip waits. A halted replica whose
    # node was restarted with fixed code of a newer version (the fix the
    # docs advise before skipping) is exactly one whose engine start holds:
    # its operator's skip waits up to 500 ms behind the hold, and a
    # halted primary never runs the round that could end the hold early.
    test "a skip is not held for the version round (it is the halted replica's one command)" do
      callers = admit!(Callers.new(1), {:skip, 7}, 0)
      {callers, regs} = Callers.dispatch(callers, true)
      {_callers, effects} = Callers.dispatch(register_all(callers, regs), true)
      assert [{_client, _session, _request, payload}] = submits(effects)
      assert Executor.skip_target(payload) == 7
    end
  end

  describe "pipelined commands (streams)" do
    @batch 100

    # Admits pipelined commands of `key` (payloads "a", "b", ...), caller n
    # for the n-th.
    defp pipeline!(callers, key, payloads, deadline \\ @now + 5_000) do
      Enum.reduce(payloads, callers, fn payload, callers ->
        admit!(callers, {:pipeline, key, payload}, payload, deadline)
      end)
    end

    # A pool with one registered session per `n`.
    defp registered(n) do
      {callers, effects} = hand_over(Callers.new(n), for(i <- 1..n, do: {:commit, "w#{i}"}))

      Enum.reduce(submits(effects), callers, fn {client, _, request, _}, callers ->
        {callers, _} = Callers.settle(callers, client, request, :executed)
        callers
      end)
    end

    defp settle_batch(callers, client, request, results) do
      callers = Callers.result(callers, client, request, results)
      Callers.settle(callers, client, request, :executed)
    end

    test "one request of a stream at a time; what arrives meanwhile goes next, as one batch, in order" do
      callers = pipeline!(registered(4), :p, ["a"])
      {callers, effects} = Callers.dispatch(callers, false, @batch)
      assert [{client, _session, request, "a"}] = submits(effects)

      # More commands, with idle sessions: nothing goes while "a" is in flight.
      callers = pipeline!(callers, :p, ["b", "c", "d"])
      assert {callers, []} = Callers.dispatch(callers, false, @batch)

      # Another caller's stream is not held back by this one.
      callers = pipeline!(callers, :q, ["x"])
      {callers, effects} = Callers.dispatch(callers, false, @batch)
      assert [{_, _, _, "x"}] = submits(effects)

      {callers, effects} = settle_batch(callers, client, request, {:ok, :a})
      assert replies(effects) == [{from("a"), {:ok, :a}}]

      {callers, effects} = Callers.dispatch(callers, false, @batch)
      assert [{client, _, request, payload}] = submits(effects)
      assert Executor.batch_commands(payload) == ["b", "c", "d"]

      # Each command gets its own result, in order.
      {_callers, effects} = settle_batch(callers, client, request, {:batch, [1, 2, 3]})
      assert replies(effects) == [{from("b"), 1}, {from("c"), 2}, {from("d"), 3}]
    end

    test "a batch fits in batch_bytes; without batches, one command per request" do
      payloads = for n <- 1..10, do: String.duplicate("#{n - 1}", 20)
      callers = pipeline!(registered(2), :p, payloads)

      # 20-byte commands: 1 + 4 * 4 + 4 * 20 = 97 bytes fit in 100, a fifth would not.
      {callers, effects} = Callers.dispatch(callers, false, @batch)
      assert [{client, _, request, payload}] = submits(effects)
      assert Executor.batch_commands(payload) == Enum.take(payloads, 4)

      {callers, _} = settle_batch(callers, client, request, {:batch, [1, 2, 3, 4]})
      {_callers, effects} = Callers.dispatch(callers, false, 0)
      assert [{_, _, _, payload}] = submits(effects)
      assert payload == Enum.at(payloads, 4)
    end

    test "a command that times out in flight keeps the stream's next ones back until the engine settles it" do
      callers = pipeline!(registered(4), :p, ["a"], @now + 100)
      {callers, effects} = Callers.dispatch(callers, false, @batch)
      [{client, _, request, "a"}] = submits(effects)
      callers = pipeline!(callers, :p, ["b"])

      {callers, effects} = Callers.deadline(callers, 5)
      assert replies(effects) == [{from("a"), {:error, :timeout}}]
      assert {callers, []} = Callers.dispatch(callers, false, @batch)

      {callers, effects} = settle_batch(callers, client, request, {:ok, :late})
      assert effects == []
      {_callers, effects} = Callers.dispatch(callers, false, @batch)
      assert [{_, _, _, "b"}] = submits(effects)
    end

    test "commands that time out waiting never reach the engine; an error of the request goes to each" do
      callers = pipeline!(registered(4), :p, ["a"])
      {callers, effects} = Callers.dispatch(callers, false, @batch)
      [{client, _, request, "a"}] = submits(effects)
      callers = pipeline!(callers, :p, ["b", "c", "d"])

      # "b" times out while waiting in the stream.
      {callers, [_cancel, {:reply, _, {:error, :timeout}}]} = Callers.deadline(callers, 6)
      {callers, _} = settle_batch(callers, client, request, {:ok, :a})
      {callers, effects} = Callers.dispatch(callers, false, @batch)
      assert [{client, _, request, payload}] = submits(effects)
      assert Executor.batch_commands(payload) == ["c", "d"]

      {_callers, effects} = Callers.settle(callers, client, request, :evicted)
      unknown = {:error, :unknown_outcome}
      assert replies(effects) == [{from("c"), unknown}, {from("d"), unknown}]
    end

    test "requeue: a stream's request goes to the next engine whole, ahead of its later commands" do
      callers = pipeline!(registered(4), :p, ["a", "b"])
      {callers, _} = Callers.dispatch(callers, false, @batch)
      callers = pipeline!(callers, :p, ["c"])

      callers = Callers.requeue(callers)
      {callers, regs} = Callers.dispatch(callers, false, @batch)
      {_callers, effects} = Callers.dispatch(register_all(callers, regs), false, @batch)
      assert [{_, _, 1, payload}] = submits(effects)
      assert Executor.batch_commands(payload) == ["a", "b", "c"]
    end

    test "take_pipelined: a spare's waiting commands, in each stream's order, with their deadlines" do
      callers = pipeline!(Callers.new(4), :p, ["a", "b"], @now + 700)
      callers = admit!(callers, {:commit, "x"}, "x")
      callers = pipeline!(callers, :q, ["c"], @now + 900)

      {callers, taken, effects} = Callers.take_pipelined(callers)

      assert Enum.sort(taken) == [
               {from("a"), :p, "a", @now + 700},
               {from("b"), :p, "b", @now + 700},
               {from("c"), :q, "c", @now + 900}
             ]

      assert effects == [{:cancel_deadline, 1}, {:cancel_deadline, 2}, {:cancel_deadline, 4}]
      # The plain commit is still there, for fail_all.
      assert {_, [{:cancel_deadline, 3}, {:reply, _, {:error, :spare}}]} =
               Callers.fail_all(callers, :spare)
    end
  end
end
