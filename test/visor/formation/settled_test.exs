defmodule Visor.Formation.SettledTest do
  # A formation decider that has heard every member and started its
  # replica has nothing left to send on ticks: it is `settled?`, and
  # `Visor.Formation` then ticks it once a second instead of ten times,
  # asking to reconnect the members at every tick (as often as before).
  use ExUnit.Case, async: true

  alias Visor.Formation.{Decider, Explicit}
  alias Visor.Options

  @settings %{client_table_max: 4096, checkpoint_interval: 10_000, checkpoint_chunk_bytes: 1}
  @members [:a@settled, :b@settled, :c@settled]

  defp new do
    {a, _} =
      Explicit.new(%{
        module: __MODULE__,
        name: :formation,
        node: :a@settled,
        self: :a@settled,
        incarnation: 2,
        settings: @settings,
        members: @members,
        cluster: Options.cluster_id(__MODULE__, @members, @settings),
        storage: :memory,
        earlier: nil,
        restored: nil
      })

    a
  end

  defp connects(effects), do: for({:connect, node} <- effects, do: node)
  defp sends(effects), do: for({:send, _, _} = send <- effects, do: send)

  test "unsettled while forming, while a fresh start is held, and settled once started" do
    a = new()
    refute Explicit.settled?(a)

    # b and c answer :ok: a decides fresh, but holds its start until it
    # has word that both decided.
    {a, _} = Explicit.handle(a, {:visor_hello_reply, :b, :b@settled, 7, {:ok, %{}}})
    {a, _} = Explicit.handle(a, {:visor_hello_reply, :c, :c@settled, 8, {:ok, %{}}})
    assert a.phase == :member
    refute Explicit.settled?(a)
    {a, effects} = Explicit.handle(a, :tick)
    assert sends(effects) != [], "a held start asks the others at each tick"

    {a, effects} =
      Explicit.handle(a, {:visor_ready_reply, :b, :b@settled, 7, [:b@settled, :c@settled]})

    assert Enum.any?(effects, &match?({:notify, {:member, _}}, &1))
    assert Explicit.settled?(a)

    # Settled: a tick sends nothing, and asks to reconnect every member
    # at every tick (it comes once a second).
    for _ <- 1..(2 * Decider.reconnect_every_ticks()), reduce: a do
      a ->
        {a, effects} = Explicit.handle(a, :tick)
        assert sends(effects) == []
        assert Enum.sort(connects(effects)) == [:b@settled, :c@settled]
        a
    end
  end

  test "a member not yet heard keeps the decider unsettled" do
    a = new()
    {a, _} = Explicit.handle(a, {:visor_hello_reply, :b, :b@settled, 7, {:restarted, %{}}})
    assert a.phase == :member
    refute Explicit.settled?(a), "c was never heard: a keeps saying hello at each tick"
    {_a, effects} = Explicit.handle(a, :tick)
    assert Enum.any?(sends(effects), &match?({:send, {:formation, :c@settled}, _}, &1))
  end
end
