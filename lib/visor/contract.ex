defmodule Visor.Contract do
  @moduledoc false
  # What the engine (`native/visor_nif`) accepts, as the engine itself
  # reports it: the one source of the limits that Elixir checks up front.
  #
  # The NIF builds the contract from the Rust constants it enforces
  # (`contract.rs`: vsr's `MAX_REPLICAS` and `config::RANGES`, the defaults
  # of `vsr::Config::new`, the store's size limits) and `Visor.Native`'s
  # load hook stores it here, in `:persistent_term`, once, after checking
  # that the library speaks `protocol_version/0`. `Visor.Options` and
  # `Visor.Native` validate against it and keep no copy of their own.
  #
  #   * `max_replicas/0`: most replicas (members) a cluster may have;
  #   * `option_keys/0`, `default/1`, `range/1`: the engine options
  #     `Visor.Native.start/2` takes as integers (vsr's limits and timeouts,
  #     `tick_ms`, `wal_compact_bytes`), each with its default and the
  #     values accepted;
  #   * `limit/1`: `:deliver_list_max` (most messages in one `{:send, to,
  #     messages}` event, and so in one `Visor.Native.deliver/2`),
  #     `:group_bytes_max` and `:meta_bytes_max` (a store's group name and
  #     metadata), `:membership_bytes_max` (a membership's encoding, as
  #     `Visor.Native.start/2`'s `:known` takes it), `:peers_ids_max` (most
  #     member ids in one `Visor.Native.peers/2`).

  # The interface this Elixir code speaks: equal to the NIF's
  # PROTOCOL_VERSION (native/visor_nif/src/contract.rs), bumped with it.
  @protocol_version 16
  @key {__MODULE__, :contract}

  @rebuild "rebuild it with `mix compile` (which runs `cargo build --release -p visor_nif` " <>
             "and installs the library in priv/native/), then restart the VM"

  @doc "The Elixir <-> NIF interface version this code speaks."
  @spec protocol_version() :: pos_integer()
  def protocol_version, do: @protocol_version

  @doc """
  `:ok` when a NIF library of version `nif_version` speaks this code's
  interface, else `{:error, message}` saying how to rebuild it.
  """
  @spec check_version(term()) :: :ok | {:error, String.t()}
  def check_version(@protocol_version), do: :ok

  def check_version(nif_version) do
    {:error,
     "the engine library (libvisor_nif.so) speaks interface version #{inspect(nif_version)}, " <>
       "this code speaks #{@protocol_version}: the library is stale; " <> @rebuild}
  end

  @doc "How to rebuild the engine library, for load errors."
  @spec rebuild_hint() :: String.t()
  def rebuild_hint, do: @rebuild

  @doc false
  # Called by Visor.Native's load hook with the NIF's contract term.
  @spec install(map()) :: :ok
  def install(%{protocol_version: version, max_replicas: max, options: options, limits: limits}) do
    options =
      Map.new(options, fn {key, {default, first, last}} ->
        {key, %{default: default, range: first..last//1}}
      end)

    contract = %{protocol_version: version, max_replicas: max, options: options, limits: limits}
    :persistent_term.put(@key, contract)
  end

  @doc "Most replicas a cluster may have."
  @spec max_replicas() :: pos_integer()
  def max_replicas, do: contract().max_replicas

  @doc "The engine options that take an integer, sorted."
  @spec option_keys() :: [atom()]
  def option_keys, do: contract().options |> Map.keys() |> Enum.sort()

  @doc "The engine's default for the option `key` (one of `option_keys/0`)."
  @spec default(atom()) :: non_neg_integer()
  def default(key), do: option!(key).default

  @doc "The values the engine accepts for the option `key` (one of `option_keys/0`)."
  @spec range(atom()) :: Range.t()
  def range(key), do: option!(key).range

  @doc """
  The size limit `key`: `:deliver_list_max`, `:group_bytes_max`,
  `:meta_bytes_max`, `:membership_bytes_max` (most bytes a
  membership's encoding takes: `Visor.Native.start/2`'s `:known`) or
  `:peers_ids_max` (most member ids in one `Visor.Native.peers/2`).
  """
  @spec limit(atom()) :: pos_integer()
  def limit(key), do: Map.fetch!(contract().limits, key)

  defp option!(key) do
    case contract().options do
      %{^key => option} -> option
      _ -> raise ArgumentError, "#{inspect(key)} is not an engine option"
    end
  end

  defp contract do
    case :persistent_term.get(@key, nil) do
      nil ->
        # Loading Visor.Native runs its load hook, which installs the
        # contract. ensure_compiled, not ensure_loaded: while mix compiles
        # Visor.Native anew, a module whose `use Visor` reads the contract
        # at compile time (examples/chat_room.ex) waits for it, where
        # ensure_loaded would find no module (:nofile) and fail the build.
        case Code.ensure_compiled(Visor.Native) do
          {:module, _} ->
            :persistent_term.get(@key)

          {:error, reason} ->
            raise "the engine library did not load (#{inspect(reason)}; the log says why): " <>
                    @rebuild
        end

      contract ->
        contract
    end
  end
end
