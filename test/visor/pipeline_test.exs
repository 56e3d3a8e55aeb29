defmodule Visor.PipelineTest do
  # Pipelined commits (Visor.pipeline/3) on real nodes: one caller's
  # commands applied in the order sent, each ref answered by exactly one
  # message, across a primary's death, a timeout, a caller on a spare,
  # and the death of the caller's own server. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Pipeliner, Sequence}

  defp nodes(n), do: Cluster.start_peers(n) |> Enum.map(&elem(&1, 1))

  # A cluster whose members all know that every member executes batches.
  defp cluster(n) do
    nodes = nodes(n)
    :ok = Cluster.start_group(nodes, Sequence, nodes: nodes)

    for node <- nodes,
        do: Cluster.eventually(fn -> Cluster.status(node, Sequence).pool.batches end)

    nodes
  end

  # Starts a pipeliner on `node` for `count` commands `{:seq, stream, n}`.
  defp pipeline(node, stream, range, opts \\ [], window \\ 500) do
    commands = for n <- range, do: {n, {:seq, stream, n}, opts}
    :erpc.call(node, Pipeliner, :start, [Sequence, commands, self(), window])
  end

  defp report(pid, timeout \\ 90_000) do
    receive do
      {:pipelined, ^pid, results, arrival} -> {results, arrival}
    after
      timeout -> flunk("the pipeliner did not report")
    end
  end

  defp applied(node, stream),
    do: Sequence.applied(:erpc.call(node, Visor, :get, [Sequence]), stream)

  defp assert_one_message_each(results) do
    for {n, messages} <- results do
      assert length(messages) == 1, "command #{n} got #{inspect(messages)}"
    end
  end

  defp increasing?(list), do: list == Enum.sort(list) and list == Enum.uniq(list)

  test "one caller's commands are applied in the order sent, once each, and answered once each, in order" do
    [a, b, c] = cluster(3)
    backup = hd([a, b, c] -- [Cluster.primary(a, Sequence)])

    # Two pipelining callers at once, one on the primary's node and one
    # on a backup's, and a synchronous caller in between.
    first = pipeline(backup, :first, 1..3000)
    second = pipeline(Cluster.primary(a, Sequence), :second, 1..3000)
    assert :erpc.call(c, Sequence, :commit, [{:seq, :sync, 1}]) == 1

    for {pid, stream} <- [{first, :first}, {second, :second}] do
      {results, arrival} = report(pid)
      assert_one_message_each(results)
      for {n, [{_ref, reply}]} <- results, do: assert(reply == n)
      assert arrival == Enum.to_list(1..3000)
      assert applied(a, stream) == Enum.to_list(1..3000)
    end

    # Batched: far fewer ops than commands.
    assert Cluster.status(a, Sequence).commit < 3000
  end

  test "the primary is killed while a backup's caller pipelines: every command applied once, in order" do
    nodes = cluster(3)
    primary = Cluster.primary(hd(nodes), Sequence)
    [caller, other] = nodes -- [primary]

    # Long timeouts: a survivor's command must not give up during the failover.
    pid = pipeline(caller, :failover, 1..20_000, [timeout: 30_000], 200)
    Cluster.eventually(fn -> length(applied(caller, :failover)) > 1000 end, 30_000)
    :ok = Cluster.kill_node(primary, [caller, other])

    {results, arrival} = report(pid)
    assert_one_message_each(results)
    for {n, [{_ref, reply}]} <- results, do: assert(reply == n)
    assert arrival == Enum.to_list(1..20_000)
    assert applied(other, :failover) == Enum.to_list(1..20_000)
    assert Cluster.primary(other, Sequence) in [caller, other]
  end

  test "a command that times out in flight is still applied before the caller's next ones" do
    nodes = cluster(3)
    primary = Cluster.primary(hd(nodes), Sequence)
    [caller | _] = others = nodes -- [primary]

    # A session registered (so the first command goes to the engine at
    # once); then, cut off from the others, the caller's node commits
    # nothing: its first command times out in flight; the next ones wait
    # behind it.
    assert :erpc.call(caller, Sequence, :commit, [{:seq, :warm_up, 1}]) == 1
    :ok = Cluster.partition([caller], nodes -- [caller])

    commands =
      [{1, {:seq, :timeout, 1}, [timeout: 200]}] ++
        for n <- 2..50, do: {n, {:seq, :timeout, n}, [timeout: 20_000]}

    pid = :erpc.call(caller, Pipeliner, :start, [Sequence, commands, self(), 50])
    Process.sleep(1_000)
    :ok = Cluster.heal([caller], nodes -- [caller])

    {results, _arrival} = report(pid)
    assert_one_message_each(results)
    assert [{1, [{_, {:error, :timeout}}]} | rest] = results
    for {n, [{_ref, reply}]} <- rest, do: assert(reply == n)

    # The engine sent the first one again once the node was back: applied
    # once, first.
    for node <- others, do: assert(applied(node, :timeout) == Enum.to_list(1..50))
  end

  test "this node's server dies: each command in flight gets one message, and await/2 says :server_down" do
    [a | _] = cluster(3)

    # Slow commands keep the caller's commands in flight (and waiting
    # behind them) while the server is killed.
    commands = for n <- 1..20, do: {n, {:slow, :death, n, 50}, [timeout: 10_000]}
    pid = :erpc.call(a, Pipeliner, :start, [Sequence, commands, self(), 20, 1_000])
    Process.sleep(120)
    server = :erpc.call(a, Process, :whereis, [Visor.Supervisor.name(Sequence, :server)])
    :erpc.call(a, Process, :exit, [server, :kill])

    {results, _arrival} = report(pid)
    assert_one_message_each(results)
    downs = for {n, [{:DOWN, _, :process, ^server, :killed}]} <- results, do: n
    answered = for {n, [{_ref, reply}]} <- results, reply == n, do: n
    assert downs != [] and length(downs) + length(answered) == 20
    # Answered in order: those answered come before those that were not.
    assert answered == Enum.to_list(1..length(answered)//1)

    # await/2 gives the error commit/3 would have; a ref whose server is
    # gone already gets its :DOWN at once.
    Cluster.eventually(fn -> Cluster.status(a, Sequence).status == :normal end, 15_000)
    command = {:slow, :await, 1, 1_000}

    assert :erpc.call(a, Pipeliner, :await_killed, [Sequence, command]) ==
             {:error, {:server_down, :killed}}
  end

  test "a caller on a spare: in order and once each through a member; the member's death fails what it held, once" do
    [a, b, c, d] = nodes(4)
    :ok = Cluster.start_group([a, b, c, d], Sequence, nodes: [a, b, c])
    assert Cluster.status(d, Sequence).status == :spare

    first = pipeline(d, :spare, 1..2000)
    {results, arrival} = report(first)
    assert_one_message_each(results)
    for {n, [{_ref, reply}]} <- results, do: assert(reply == n)
    assert arrival == Enum.to_list(1..2000)
    assert applied(a, :spare) == Enum.to_list(1..2000)

    # Slow commands, so that some are still held by the member the spare
    # relays to when that member dies.
    commands = for n <- 1..30, do: {n, {:slow, :spare_down, n, 50}, [timeout: 10_000]}
    pid = :erpc.call(d, Pipeliner, :start, [Sequence, commands, self(), 30, 1_000])
    Process.sleep(150)
    target = relay_target(d)
    :ok = Cluster.kill_node(target, [a, b, c, d] -- [target])

    {results, _arrival} = report(pid)
    assert_one_message_each(results)
    lost = for {n, [{_, {:error, {:member_down, ^target}}}]} <- results, do: n
    assert lost != []

    # Whatever was applied was applied once, in order.
    survivor = hd([a, b, c] -- [target])
    Cluster.eventually(fn -> Cluster.status(survivor, Sequence).status == :normal end, 15_000)
    done = applied(survivor, :spare_down)
    assert increasing?(done)
  end

  # The member a spare's server relays to: the one whose server it monitors.
  defp relay_target(spare) do
    server = :erpc.call(spare, Process, :whereis, [Visor.Supervisor.name(Sequence, :server)])
    {:monitors, monitors} = :erpc.call(spare, Process, :info, [server, :monitors])
    [node] = for {:process, {_name, node}} <- monitors, do: node
    node
  end

  test "batches only once every other member's code executes them: one command per request before" do
    [a, b, c] = nodes = cluster(3)

    # c runs code that does not execute batches (as an older release):
    # its server is restarted with it, and says so when asked.
    old =
      "lib/visor/executor.ex"
      |> File.read!()
      |> String.replace("@features [:batch]", "@features []")

    :ok = :erpc.call(c, Code, :put_compiler_option, [:ignore_module_conflict, true])
    [_ | _] = :erpc.call(c, Code, :compile_string, [old])
    server = :erpc.call(c, Process, :whereis, [Visor.Supervisor.name(Sequence, :server)])
    :erpc.call(c, Process, :exit, [server, :kill])
    Cluster.eventually(fn -> Cluster.status(c, Sequence).status == :normal end, 15_000)

    Cluster.eventually(fn -> not Cluster.status(a, Sequence).pool.batches end)
    refute Cluster.status(b, Sequence).pool.batches

    # a's pipelined commands go one per request: one op each, in order.
    before = Cluster.status(a, Sequence).commit
    {results, _} = report(pipeline(a, :unbatched, 1..200))
    assert_one_message_each(results)
    assert applied(c, :unbatched) == Enum.to_list(1..200)
    assert Cluster.status(a, Sequence).commit - before >= 200

    # c's code is upgraded: it says so at the next question, within a second.
    true = :erpc.call(c, :code, :soft_purge, [Visor.Executor])
    {:module, Visor.Executor} = :erpc.call(c, :code, :load_file, [Visor.Executor])
    Cluster.eventually(fn -> Cluster.status(a, Sequence).pool.batches end, 5_000)
    for node <- nodes, do: assert(Visor.Test.Cluster.status(node, Sequence).status == :normal)
  end
end
