defmodule Visor.ForwardTest do
  # Where a spare's calls go first (Visor.Forward.targets/3): the primary a
  # member named, asked again once it is old, by one caller at a time.
  use ExUnit.Case, async: true

  alias Visor.Forward

  @members [:a@host, :b@host, :c@host]

  test "with no hint yet, the caller asks a member, and the next callers go to any member meanwhile" do
    {reply, hint} = Forward.targets(@members, nil, 5_000)
    assert reply == %{members: @members, primary: nil, refresh: true}

    assert {%{primary: nil, refresh: false}, ^hint} = Forward.targets(@members, hint, 5_999)
  end

  test "a fresh primary goes first, unasked; an old one still goes first, and is asked again once" do
    hint = {:b@host, 5_000}
    assert {%{primary: :b@host, refresh: false}, ^hint} = Forward.targets(@members, hint, 5_999)

    {reply, hint} = Forward.targets(@members, hint, 6_000)
    assert reply == %{members: @members, primary: :b@host, refresh: true}
    assert hint == {:b@host, 6_000}
    assert {%{refresh: false}, ^hint} = Forward.targets(@members, hint, 6_500)
  end
end
