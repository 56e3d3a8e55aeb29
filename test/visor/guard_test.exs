defmodule Visor.GuardTest do
  # Issue 13, "No state in crash reports": what :sys.get_status/1 and a
  # crash show of a process run by Visor.Guard, and of a group's server.
  # Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  defmodule Secretive do
    @moduledoc false
    def init(secret), do: {:ok, %{secret: secret}}
    def handle_call(:crash, _from, state), do: {:reply, unlock(state, :wrong_key), state}
    def handle_info(_message, state), do: {:noreply, state}
    def format_status(status), do: %{status | state: :hidden}

    # No clause matches: an Erlang stacktrace carries this call's arguments.
    def unlock(%{secret: secret}, secret), do: :open
  end

  test "a crashing callback's exit reason and :sys.get_status show no state" do
    Process.flag(:trap_exit, true)
    {:ok, pid} = Visor.Guard.start_link(Secretive, "s3cr3t", :visor_guard_test)
    assert {:status, ^pid, _, items} = :sys.get_status(pid)
    assert inspect(items) =~ ":hidden"
    refute inspect(items) =~ "s3cr3t"

    catch_exit(GenServer.call(pid, :crash))
    assert_receive {:EXIT, ^pid, {:function_clause, stacktrace} = reason}
    assert [{Secretive, :unlock, 2, _} | _] = stacktrace
    refute inspect(reason, limit: :infinity) =~ "s3cr3t"
  end

  test "a group's server: neither the application state nor the options in its status" do
    [node] = Cluster.start_peers(1) |> Enum.map(&elem(&1, 1))
    :ok = Cluster.start_group([node], Counter, nodes: [node], init_arg: "s3cr3t-init")
    assert :erpc.call(node, Visor, :commit, [Counter, {:incr, "s3cr3t-state"}]) == 1
    server = :erpc.call(node, Process, :whereis, [Visor.Supervisor.name(Counter, :server)])

    # The secrets are in the state (so this test can fail) ...
    state = :erpc.call(node, :sys, :get_state, [server])
    assert inspect(state.machine.app_state) =~ "s3cr3t-state"
    assert state.config.init_arg == "s3cr3t-init"

    # ... but not in what a status or a supervisor's report shows.
    status = inspect(:erpc.call(node, :sys, :get_status, [server]), limit: :infinity)
    refute status =~ "s3cr3t"
    assert status =~ "phase: :running"

    options = Visor.Options.validate!(Counter, nodes: [node], init_arg: "s3cr3t-init")
    refute inspect(options) =~ "s3cr3t"
    assert inspect(options) =~ "Visor.Test.Counter"
  end

  test "a group's formation process: not the start options in its status" do
    [node] = Cluster.start_peers(1) |> Enum.map(&elem(&1, 1))
    :ok = Cluster.start_group([node], Counter, nodes: [node], init_arg: "s3cr3t-init")
    formation = :erpc.call(node, Process, :whereis, [Visor.Supervisor.name(Counter, :formation)])

    # The options are in the state (so this test can fail), and a crash
    # report prints them as a plain map (Erlang's ~p), init_arg included ...
    assert :erpc.call(node, :sys, :get_state, [formation]).config.init_arg == "s3cr3t-init"

    # ... but not what a status shows: where formation stands.
    status = :erpc.call(node, :sys, :get_status, [formation])
    refute inspect(status, limit: :infinity, structs: false) =~ "s3cr3t"
    assert inspect(status) =~ "decision: {:member"
  end
end
