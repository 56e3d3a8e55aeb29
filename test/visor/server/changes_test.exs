defmodule Visor.Server.ChangesTest do
  # Membership changes asked for through a node (Visor.Server.Changes):
  # each request a condition on the list, answered at once when it holds;
  # the engine's results mapped to the errors docs/operations.md lists.
  use ExUnit.Case, async: true

  alias Visor.Server.Changes

  @nodes [:a@h, :b@h, :c@h, :d@h, :e@h]
  @tag_ref :tag

  defp view(epoch \\ 0, members \\ @nodes) do
    current = for n <- members, do: {Enum.find_index(@nodes, &(&1 == n)), n}

    %{
      epoch: epoch,
      members: members,
      current: current,
      genesis: List.to_tuple(@nodes),
      node: :a@h,
      tag: @tag_ref,
      tick_ms: 10
    }
  end

  test "a request's condition: holds, a target, or an error" do
    assert Changes.target(@nodes, {:remove, :z@h}) == :holds
    assert Changes.target(@nodes, {:remove, :e@h}) == {:change, @nodes -- [:e@h]}
    assert Changes.target([:a@h], {:remove, :a@h}) == {:error, :last_member}
    assert Changes.target(@nodes, {:set, Enum.reverse(@nodes)}) == :holds
    assert Changes.target(@nodes, {:set, [:c@h, :a@h]}) == {:change, [:c@h, :a@h]}

    assert Changes.target(@nodes, {:set, [:a@h, :z@h]}) == {:change, [:a@h, :z@h]}

    assert Changes.target(@nodes, {:add, :a@h}) == :holds
    assert Changes.target(@nodes, {:add, :z@h}) == {:change, @nodes ++ [:z@h]}

    assert Changes.target(@nodes ++ [:z@h], {:add, :y@h}) ==
             {:error, {:too_many_members, 6}}

    assert Changes.target([:a@h, :b@h], {:replace, :c@h, :b@h}) == :holds
    assert Changes.target([:a@h, :b@h], {:replace, :c@h, :d@h}) == {:error, {:not_a_member, :c@h}}

    assert Changes.target([:a@h, :b@h], {:replace, :a@h, :d@h}) == {:change, [:b@h, :d@h]}

    assert Changes.target([:a@h, :b@h, :c@h], {:replace, :a@h, :b@h}) == {:change, [:b@h, :c@h]}

    for bad <- [{:set, []}, {:set, [:a@h, :a@h]}, {:remove, "a"}, {:remove, nil}, {:drop, :a@h}],
        do: refute(Changes.request?(bad))
  end

  test "a satisfied request is answered at once; another goes to the engine with 3/4 of the time left" do
    from = {self(), make_ref()}

    assert {%Changes{pending: pending}, [{:reply, ^from, {:ok, %{epoch: 0, members: @nodes}}}]} =
             Changes.request(%Changes{}, {:remove, :z@h}, from, 10_000, 0, view())

    assert pending == %{}

    {changes, effects} =
      Changes.request(%Changes{}, {:set, [:a@h, :b@h, :c@h]}, from, 10_000, 0, view())

    ids = for i <- 0..2, do: <<i::little-unsigned-128>>

    assert [
             {:reconfigure, 1, ^ids, 750, []},
             {:after, 10_000, {:visor_change_deadline, @tag_ref, 1}}
           ] = effects

    # Done: answered once the new epoch is entered.
    new = view(1, [:a@h, :b@h, :c@h])
    assert {changes, []} = Changes.result(changes, 1, :done, 100, view())

    assert {changes, [{:reply, ^from, {:ok, %{epoch: 1, members: [:a@h, :b@h, :c@h]}}}]} =
             Changes.entered(changes, new)

    assert changes.pending == %{}
    # A late deadline or result finds nothing.
    assert {^changes, []} = Changes.deadline(changes, 1)
    assert {^changes, []} = Changes.result(changes, 1, :no_quorum, 200, new)
  end

  test "a change that adds nodes names their learners: member ids, and the lowest free slots" do
    from = {self(), make_ref()}
    view = view(1, [:a@h, :c@h, :e@h])

    {_changes, [{:reconfigure, 1, ids, _ticks, learners} | _]} =
      Changes.request(%Changes{}, {:set, [:a@h, :z@h, :b@h]}, from, 10_000, 0, view)

    # A node of the genesis list keeps its index as its id; any other
    # node's is the md5 of its name with the top bit set.
    z = Visor.MemberId.hashed(:z@h)
    assert ids == [<<0::little-128>>, z, <<1::little-128>>]
    assert <<_::120, 1::1, _::7>> = z
    assert learners == [{:z@h, 1, z}, {:b@h, 3, <<1::little-128>>}]
    assert Visor.MemberId.node_of(view.genesis, z, [:y@h, :z@h]) == :z@h

    # A final "no" stops them; an unreachable learner is named.
    {changes, _} = Changes.request(%Changes{}, {:add, :z@h}, from, 10_000, 0, view)

    assert {_, [{:reply, ^from, {:error, {:unreachable, :z@h}}}, {:stop_learners, [:z@h]}]} =
             Changes.result(changes, 1, :unreachable, 10, view)

    assert {_, [{:reply, ^from, {:error, :timeout}}]} =
             Changes.result(changes, 1, :unknown, 10, view)
  end

  test "the engine's answers, as the caller's errors" do
    from = {self(), make_ref()}

    for {result, reply} <- [
          busy: {:error, {:change_in_progress, 0}},
          not_member: {:error, {:not_a_member, :a@h}},
          no_quorum: {:error, :no_quorum},
          abandoned: {:error, :no_quorum},
          unknown: {:error, :timeout},
          unchanged: {:ok, %{epoch: 0, members: @nodes}}
        ] do
      {changes, _} = Changes.request(%Changes{}, {:remove, :e@h}, from, 10_000, 0, view())
      assert {_, [{:reply, ^from, ^reply}]} = Changes.result(changes, 1, result, 10, view())
    end

    # Stale: asked again once with a fresh target, then a change in progress.
    {changes, _} = Changes.request(%Changes{}, {:remove, :e@h}, from, 10_000, 0, view())
    moved = view(1, [:a@h, :b@h, :c@h, :e@h])

    {changes, [{:reconfigure, 2, _ids, _ticks, []}]} =
      Changes.result(changes, 1, :stale, 10, moved)

    assert {_, [{:reply, ^from, {:error, {:change_in_progress, 1}}}]} =
             Changes.result(changes, 2, :stale, 20, moved)

    # Its deadline still names the first number.
    assert {_, [{:reply, ^from, {:error, :timeout}}]} = Changes.deadline(changes, 1)

    # Stale, but the list moved on to what was asked: done after all.
    {changes, _} = Changes.request(%Changes{}, {:remove, :e@h}, from, 10_000, 0, view())
    gone = view(1, [:a@h, :b@h])

    assert {_, [{:reply, ^from, {:ok, %{epoch: 1}}}]} =
             Changes.result(changes, 1, :stale, 10, gone)

    # A replica that stops leaves every change a maybe.
    {changes, _} = Changes.request(%Changes{}, {:remove, :e@h}, from, 10_000, 0, view())

    assert {%Changes{pending: p}, [{:reply, ^from, {:error, :timeout}}]} =
             Changes.abandon(changes)

    assert p == %{}
  end
end
