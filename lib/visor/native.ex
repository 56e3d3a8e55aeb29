defmodule Visor.Native do
  @moduledoc false
  # Elixir side of the `visor_nif` crate (native/visor_nif). The Mix
  # compiler in mix.exs builds it into priv/native/libvisor_nif.so.

  @on_load :load_nif

  # Where the .so is when this module was compiled from source: used when
  # :visor is not a known application (e.g. beams loaded by path alone).
  @source_priv Path.expand("../../priv", __DIR__)

  @doc false
  def load_nif do
    priv =
      case :code.priv_dir(:visor) do
        {:error, :bad_name} -> @source_priv
        dir -> dir
      end

    # A failure is returned as is: the VM then refuses to load this module
    # and logs the reason, which beats a later :nif_not_loaded.
    :erlang.load_nif(~c"#{Path.join(priv, "native/libvisor_nif")}", 0)
  end

  @doc "Version of the Elixir <-> NIF interface."
  def protocol_version, do: :erlang.nif_error(:nif_not_loaded)

  @doc "128-bit checksum of `bytes` as 16 little-endian bytes."
  def checksum(_bytes), do: :erlang.nif_error(:nif_not_loaded)
end
