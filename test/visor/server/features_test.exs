defmodule Visor.Server.FeaturesTest do
  # Whether pipelining callers may send batches: the decisions on members'
  # answers, exits and reconnections, fed by hand.
  use ExUnit.Case, async: true

  alias Visor.Server.Features

  @members [node(), :b@h, :c@h]

  # A member's answer that it executes batches, and the monitor the
  # server then takes.
  defp said_batch(features, node, server, monitor) do
    {features, effects} = Features.heard(features, server, node, [:batch], @members)
    assert List.last(effects) == {:monitor_features, node, server}
    {features, effects} = Features.monitored(features, node, server, monitor)
    assert List.last(effects) == :batches_changed
    features
  end

  test "batches go only once every other member said its code executes them" do
    {b, c} = {spawn(fn -> :ok end), spawn(fn -> :ok end)}
    features = %Features{}
    assert {^features, [{:ask_features, [:b@h, :c@h]}]} = Features.ask(features, @members)

    features = said_batch(features, :b@h, b, make_ref())
    refute Features.batches?(features, @members)
    # A node that is not a member, or an answer without :batch, counts for nothing.
    assert {^features, []} = Features.heard(features, c, :x@h, [:batch], @members)
    assert {^features, []} = Features.heard(features, c, :c@h, [], @members)

    features = said_batch(features, :c@h, c, make_ref())
    assert Features.batches?(features, @members)
    # The same server saying it again changes nothing.
    assert {^features, []} = Features.heard(features, c, :c@h, [:batch], @members)
    # A group of one member batches at once.
    assert Features.batches?(%Features{}, [node()])
  end

  test "a member hot-loaded back to code without batches stops them at once" do
    b = spawn(fn -> :ok end)
    monitor = make_ref()
    features = said_batch(%Features{}, :b@h, b, monitor)

    assert {features, [{:demonitor, ^monitor}, {:remember_features, []}]} =
             Features.heard(features, b, :b@h, [], @members)

    refute Features.batches?(features, [node(), :b@h])
  end

  test "a member's word ends when its server exits, and stands while it is cut off" do
    b = spawn(fn -> :ok end)
    monitor = make_ref()
    features = said_batch(%Features{}, :b@h, b, monitor)

    # Cut off: still batches; asked again once its node reconnects.
    {cut, []} = Features.down(features, b, monitor, :noconnection)
    assert Features.batches?(cut, [node(), :b@h])

    assert {back, [{:ask_features, [:b@h]}, {:remember_features, []}]} =
             Features.nodeup(cut, :b@h)

    refute Features.batches?(back, [node(), :b@h])

    # Exited: it may come back with other code.
    assert {gone, [{:remember_features, []}]} = Features.down(features, b, monitor, :killed)
    refute Features.batches?(gone, [node(), :b@h])

    # Another process's exit, or a reconnection of a member it did not lose, is not its.
    assert {^features, []} = Features.down(features, b, make_ref(), :killed)
    assert {^features, []} = Features.nodeup(features, :b@h)
  end

  test "a restarted server keeps a predecessor's word only for members it is cut off from" do
    features = Features.new([:b@h, :c@h], [:c@h])
    assert Features.batches?(features, [node(), :b@h])
    refute Features.batches?(features, @members)
    assert {_, [{:ask_features, [:b@h]}, _]} = Features.nodeup(features, :b@h)
  end
end
