defmodule Visor.Formation.ExplicitLogTest do
  # One event, one line: what a forming node logs when it learns that it
  # restarted (a peer knows an earlier incarnation of it).
  use ExUnit.Case, async: true

  alias Visor.Formation.Explicit
  alias Visor.Options

  @settings %{client_table_max: 4096, checkpoint_interval: 10_000, checkpoint_chunk_bytes: 1}
  @members [:a@log, :b@log, :c@log]

  test "a node told it restarted logs its rejoin once, saying who knew" do
    {a, _} =
      Explicit.new(%{
        module: __MODULE__,
        name: :formation,
        node: :a@log,
        self: :a@log,
        incarnation: 2,
        settings: @settings,
        members: @members,
        cluster: Options.cluster_id(__MODULE__, @members, @settings),
        storage: :memory,
        earlier: nil,
        restored: nil
      })

    {_a, effects} = Explicit.handle(a, {:visor_hello_reply, :b@log, :b@log, 7, {:restarted, %{}}})

    assert [{:log, :warning, _key, line}] = for({:log, _, _, _} = log <- effects, do: log)
    assert line =~ "b@log knows an earlier incarnation of this node"
    assert line =~ "rejoins the cluster"
    assert Enum.any?(effects, &match?({:notify, {:member, %{recover: true}}}, &1))
  end
end
