defmodule Visor.NativeTest do
  use ExUnit.Case, async: true

  alias Visor.Native

  test "the NIF is loaded" do
    assert is_integer(Native.protocol_version())
  end

  test "checksum is 16 bytes, deterministic and input-sensitive" do
    a = Native.checksum("hello")
    assert is_binary(a) and byte_size(a) == 16
    assert Native.checksum("hello") == a
    assert Native.checksum("hellp") != a
    assert byte_size(Native.checksum("")) == 16
  end

  test "a non-binary argument raises ArgumentError" do
    assert_raise ArgumentError, fn -> Native.checksum(:not_binary) end
    assert_raise ArgumentError, fn -> Native.checksum(~c"charlist") end
  end
end
