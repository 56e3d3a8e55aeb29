defmodule Visor.CheckpointBytesTest do
  # The log's memory is bounded in bytes (checkpoint_bytes), not only in
  # ops: large commands on real nodes, with checkpoint_every far away, and
  # every node's log stays within about two budgets. Not async: real nodes.
  use ExUnit.Case, async: false

  alias Visor.Test.{Cluster, Counter}

  @command_bytes 256 * 1024
  @budget 4 * 1024 * 1024
  # Commands of 256 KiB (and a few bytes of encoding) fill a 4 MiB budget
  # in 16: a span is 16 ops.
  @span div(@budget, @command_bytes)
  @commands 5 * @span

  test "large commands: byte checkpoints keep every node's log within two budgets" do
    nodes = Cluster.start_peers(3) |> Enum.map(&elem(&1, 1))
    opts = [nodes: nodes, checkpoint_bytes: @budget]
    :ok = Cluster.start_group(nodes, Counter, opts)

    blob = :binary.copy(<<7>>, @command_bytes)

    for i <- 1..@commands do
      node = Enum.at(nodes, rem(i, 3))
      assert commit(node, {:blob, blob}) == @command_bytes
    end

    # Every node checkpoints at the same ops (by bytes: the interval,
    # 10,000 ops, is never reached), and keeps the log since its previous
    # checkpoint only. Without the budget every log would hold all
    # #{@commands} commands (80 MiB).
    Cluster.eventually(fn ->
      statuses = Enum.map(nodes, &Cluster.status(&1, Counter))
      checkpoints = statuses |> Enum.map(& &1.checkpoint) |> Enum.uniq()

      match?([c] when c >= 3 * @span and c < 10_000, checkpoints) and
        Enum.all?(statuses, &(&1.log_base > 0 and &1.op - &1.log_base <= 2 * @span + 8))
    end)

    for n <- nodes do
      status = Cluster.status(n, Counter)

      assert status.op - status.log_base <= 2 * @span + 8,
             inspect(Map.take(status, [:op, :log_base]))
    end
  end

  defp commit(node, command),
    do: :erpc.call(node, Counter, :commit, [command, [timeout: 20_000]], 25_000)
end
