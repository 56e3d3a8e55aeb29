defmodule Visor.Options do
  @moduledoc false
  # Checks a group's start options once, up front, and turns them into the
  # configuration the supervisor, formation and server share.
  #
  # A mistake raises `ArgumentError` naming the option, at start time, rather
  # than surfacing later as a replica that never forms.
  #
  # ## Storage
  #
  #   * `storage: :memory` (the default): the replica's log lives in memory.
  #     The group survives any minority of its nodes restarting, but not a
  #     majority at once.
  #   * `storage: :disk` with `data_dir: "/path"` (required with `:disk`, a
  #     non-empty string): the replica writes its log and state to
  #     `Path.join(data_dir, Atom.to_string(module))` (for `Cache`,
  #     `<data_dir>/Elixir.Cache`) and fsyncs before it acknowledges, so the
  #     group survives every node restarting. Several groups (modules) can
  #     share one `data_dir`; two nodes cannot. docs/operations.md, "Disk
  #     mode", says what happens on restart. A module's keyed groups each
  #     have a store of their own in `<data_dir>/Elixir.Cache.keyed`
  #     (`keyed/3`).
  #   * `wal_compact_bytes: n` (disk mode; default 64 MiB): once a checkpoint
  #     makes at least `n` bytes of the write-ahead log dead (and at least
  #     as many as it leaves live), the log after the checkpoint is copied to a fresh
  #     file and the old one is freed, so the WAL stays bounded.
  #
  # ## Latency
  #
  #   * `busy_poll_us: n` (default 50; `0` disables; at
  #     most 1000): after handing a command or a peer's message to the engine
  #     while only a few of this node's commands are in flight, the server
  #     watches its mailbox for up to `n` µs for the engine's answer instead
  #     of letting its scheduler sleep at once. Waking a sleeping scheduler
  #     costs tens of µs on virtual machines, several times per commit;
  #     polling trades at most `n` µs of one scheduler's time per hand-off
  #     for that. Under load (many commands in flight) it never polls, so it
  #     costs no throughput. docs/operations.md, "Latency", has the figures.
  #
  # ## Checkpoints
  #
  #   * `checkpoint_every: n` (default 10000, both storage modes; `0`
  #     disables): every `n` ops each replica encodes its state
  #     (`c:Visor.encode_snapshot/1`) into a checkpoint and drops the log
  #     before its previous one. A restart (disk mode) then replays only the
  #     log after the checkpoint, and a replica that lags behind the log's
  #     start (a wiped or rejoining one) catches up by state sync, in chunks
  #     of `checkpoint_chunk_bytes` (default 1 MiB).
  #
  # ## Automatic replacement
  #
  #   * `replace_after: ms` (1000..2^32-1; default `nil`, off; `:infinity`
  #     is off too):
  #     the primary's node replaces a member it has not heard from for `ms`
  #     by a spare running the group, through the same change as
  #     `Visor.reconfigure(module, {:replace, lost, spare})`
  #     (`Visor.Server.AutoReplace`; docs/operations.md, "Automatic
  #     replacement", with its risks). Not used by keyed groups.

  alias Visor.Contract

  @default_pool_size 128
  @default_checkpoint_every 10_000
  @default_busy_poll_us 50

  # Engine settings every replica of a cluster must share: each one decides
  # what the replicated state machine does, not just how fast or how often
  # this replica does something (docs/operations.md, "Settings every member
  # shares"):
  #   * client_table_max: which client session is evicted when the table is
  #     full, at execution; replicas with other limits evict different
  #     sessions, so a command executes on one and is refused on another;
  #   * checkpoint_interval, checkpoint_bytes: the ops at which checkpoints
  #     are taken and compared by digest, and which log prefix may be
  #     dropped (a checkpoint is vouched for, and the log dropped below it,
  #     only once a quorum holds the same one at the same op);
  #   * checkpoint_chunk_bytes: the chunk offsets a state sync's sender and
  #     receiver must agree on.
  # The others (batching, pipeline, queue sizes, timeouts, tick_ms) are
  # one replica's pace: replicas that differ in them still agree.
  @shared_settings [
    :client_table_max,
    :checkpoint_interval,
    :checkpoint_chunk_bytes,
    :checkpoint_bytes
  ]

  # Shared settings that came after the cluster id's term was pinned: they
  # enter the id (`cluster_id/4`) only when they differ from their
  # default, so groups and disk stores formed before with the defaults
  # keep theirs (a store that records none ran with the default:
  # `complete_settings/1`), and members that differ in them have
  # different ids, which formation tells apart and reports as a setting
  # mismatch (a `nodes:` hello compares settings only across ids). The
  # engine also folds them into the id on the wire
  # (`vsr::Config::wire_cluster`).
  @later_settings [:checkpoint_bytes]

  # With the default client_table_max (24 x pool_size) inside its range.
  @max_pool_size 10_000

  # Visor's own options; the engine's are Contract.option_keys/0 but
  # checkpoint_interval, which checkpoint_every sets.
  @visor_keys [
    :nodes,
    :cluster_size,
    :storage,
    :data_dir,
    :pool_size,
    :busy_poll_us,
    :checkpoint_every,
    :replace_after,
    :init_arg
  ]

  # Supervisors' reports show their children's start arguments, these
  # options among them: `init_arg` and `opts` may hold the application's
  # secrets, so inspecting the struct shows only who it is for.
  @derive {Inspect, only: [:group, :membership, :storage]}
  @enforce_keys [:module, :group, :membership, :pool_size, :engine, :opts]
  defstruct @enforce_keys ++
              [
                storage: :memory,
                busy_poll_us: @default_busy_poll_us,
                settings: %{},
                init_arg: [],
                instance: nil,
                replace_after: nil
              ]

  @typedoc """
  `module` is the state machine; `group` names the group: the module for
  its default group, `{module, key}` for a keyed one (`keyed/2`, started
  by `Visor.Groups`). `membership` is `{:nodes, nodes}` (sorted; a keyed
  group's ranked by `keyed/3`) or `{:cluster_size, n}`; `engine` the options for `Visor.Native.start/2` other than the cluster's identity;
  `storage` is `:memory`, or `{:disk, store_dir}` with the group's own
  store directory (inside the user's `data_dir`); `busy_poll_us` how long
  the server watches its mailbox for the engine's answer after a hand-off
  (`Visor.Server`); `opts` what the user passed; `init_arg` the argument
  of `initial_state/1` (the `init_arg:` option, default `[]`); `settings`
  the engine settings every member must share (`shared_settings/1`);
  `instance` a keyed group's instance id (`keyed/3`), nil for a default
  group; `replace_after` the ms after which the primary's node replaces a
  member it has not heard from by a spare, or nil (off).
  """
  @type t :: %__MODULE__{
          module: module(),
          group: module() | {module(), term()},
          membership: {:nodes, [node()]} | {:cluster_size, pos_integer()},
          pool_size: pos_integer(),
          engine: map(),
          storage: :memory | {:disk, Path.t()},
          busy_poll_us: non_neg_integer(),
          settings: %{atom() => non_neg_integer()},
          opts: keyword(),
          init_arg: term(),
          instance: non_neg_integer() | nil,
          replace_after: pos_integer() | nil
        }

  @doc "Validates `opts` for `module`; raises `ArgumentError` naming the problem."
  @spec validate!(module(), keyword()) :: t()
  def validate!(module, opts) when is_atom(module) and is_list(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError,
            "#{inspect(module)}: options must be a keyword list, got: #{inspect(opts)}"
    end

    known!(module, opts)
    membership = membership!(module, opts)
    storage = storage!(module, opts)
    pool_size = in_range!(module, opts, :pool_size, @default_pool_size, 1..@max_pool_size)

    # Engine options are passed through to Visor.Native.start/2 as they
    # are, but for checkpoint_interval, which checkpoint_every sets.
    engine =
      opts
      |> Keyword.take(Contract.option_keys() -- [:checkpoint_interval])
      |> Map.new()
      |> Map.put_new(:tick_ms, Contract.default(:tick_ms))
      # Commands above it are refused before they reach the log.
      |> Map.put_new(:batch_max_bytes, Contract.default(:batch_max_bytes))
      # A shared setting: explicit, as the others.
      |> Map.put_new(:checkpoint_bytes, Contract.default(:checkpoint_bytes))
      # Every node's pool registers its own sessions: keep room for all of
      # them, several times over, so that sessions of live nodes are never
      # evicted (an eviction makes an in-flight command's fate unknown).
      |> Map.put_new(
        :client_table_max,
        max(Contract.default(:client_table_max), 4 * pool_size * max_replicas())
      )

    for {key, value} <- engine, not (is_integer(value) and value in Contract.range(key)) do
      raise ArgumentError,
            "#{inspect(module)}: #{key} must be an integer in #{range_text(Contract.range(key))}, " <>
              "got: #{inspect(value)}"
    end

    # And the rules that tie engine options together, as the engine checks
    # them: a group whose options it would refuse raises here, not in a
    # server that has already started.
    with {:error, reason} <- Visor.Native.check_options(engine) do
      raise ArgumentError, "#{inspect(module)}: " <> Visor.Native.format_error(reason)
    end

    if storage == :memory and Map.has_key?(engine, :wal_compact_bytes) do
      raise ArgumentError,
            "#{inspect(module)}: wal_compact_bytes is only used with storage: :disk"
    end

    busy_poll_us = Keyword.get(opts, :busy_poll_us, @default_busy_poll_us)

    unless is_integer(busy_poll_us) and busy_poll_us in 0..1000 do
      raise ArgumentError,
            "#{inspect(module)}: busy_poll_us must be an integer in 0..1000 " <>
              "(0 disables busy polling), got: #{inspect(busy_poll_us)}"
    end

    checkpoint_every = Keyword.get(opts, :checkpoint_every, @default_checkpoint_every)
    checkpoint_range = Contract.range(:checkpoint_interval)

    unless is_integer(checkpoint_every) and checkpoint_every in checkpoint_range do
      raise ArgumentError,
            "#{inspect(module)}: checkpoint_every must be an integer in " <>
              "#{range_text(checkpoint_range)} (0 disables checkpoints), " <>
              "got: #{inspect(checkpoint_every)}"
    end

    engine = Map.put(engine, :checkpoint_interval, checkpoint_every)
    replace_after = replace_after!(module, opts)

    %__MODULE__{
      module: module,
      group: module,
      membership: membership,
      pool_size: pool_size,
      engine: engine,
      storage: storage,
      busy_poll_us: busy_poll_us,
      settings: shared_settings(engine),
      opts: opts,
      init_arg: Keyword.get(opts, :init_arg, []),
      replace_after: replace_after
    }
  end

  def validate!(module, opts) do
    raise ArgumentError,
          "expected a module and a keyword list, got: #{inspect(module)}, #{inspect(opts)}"
  end

  @doc """
  The configuration of the keyed group `{module, key}` (`Visor.Groups`):
  `config`, validated for `module` with an explicit membership, named by
  the key, of the group's instance `instance` (an id drawn when
  `Visor.start_group/2` created it: a group stopped and started again
  under the same key and members is another instance). Its cluster id
  folds the key and the instance in (`cluster_id/4`).

  Its members are in the order `Visor.Groups.place/3` ranks them for the
  group, not by name: a replica's index is its member's place in that
  order, so the primary of view 0 (index 0), and the next view's, differ
  from key to key, and a module's keyed groups spread their primaries,
  and the successors of a node's primaries, evenly over the nodes. Every
  node ranks alike (the rank hashes the group and the node).

  In disk mode its store is a directory of its own, named by its key,
  among the module's keyed groups' (`keyed_dir/1`, `keyed_store_dir/2`).
  """
  @spec keyed(t(), term(), non_neg_integer()) :: t()
  def keyed(%__MODULE__{module: module, membership: {:nodes, nodes}} = config, key, instance)
      when key != nil and is_integer(instance) and instance >= 0 do
    group = {module, key}
    ranked = Visor.Groups.place(group, nodes, length(nodes))

    storage =
      case keyed_dir(config) do
        nil -> :memory
        dir -> {:disk, keyed_store_dir(dir, key)}
      end

    %{config | group: group, instance: instance, membership: {:nodes, ranked}, storage: storage}
  end

  @doc """
  Disk mode: the directory of `module`'s keyed groups' stores,
  `<data_dir>/<module>.keyed` (for `Cache`, `<data_dir>/Elixir.Cache.keyed`),
  beside the default group's store (`<data_dir>/Elixir.Cache`), which no
  Elixir alias can name (its last segment is lowercase); nil in memory
  mode. `config` is the module's, before `keyed/3`.
  """
  @spec keyed_dir(t()) :: Path.t() | nil
  def keyed_dir(%__MODULE__{storage: :memory}), do: nil

  # The default group's store is <data_dir>/<module>: its parent is the
  # data_dir, expanded once (storage!/2).
  def keyed_dir(%__MODULE__{module: module, storage: {:disk, store}}),
    do: Path.join(Path.dirname(store), keyed_dir_name(module))

  defp keyed_dir_name(module), do: group_name(module) <> ".keyed"

  @doc """
  The store directory of the keyed group of key `key` inside `keyed_dir`
  (`keyed_dir/1`): named by `store_key/1`, so a key of any term, and any
  length, makes no atom and one fixed-length name.
  """
  @spec keyed_store_dir(Path.t(), term()) :: Path.t()
  def keyed_store_dir(keyed_dir, key), do: Path.join(keyed_dir, store_key(key))

  @doc """
  The name of a keyed group's store: the hash of its canonical key
  (`canonical_key/1`), 32 lowercase hex digits. Only a name: the store's
  cluster id (which folds in the key itself) and the group's record
  beside it (`Visor.Groups.Stores`) tell two keys apart for sure.
  """
  @spec store_key(term()) :: String.t()
  def store_key(key), do: Base.encode16(hash(canonical_key(key)), case: :lower)

  @doc """
  The group name a store records (`Visor.Native.start/2`'s `:group`),
  checked when it is opened: `group_name/1` for a default group, and
  `"<module>.keyed/<store_key>"` for a keyed one, so that no store is
  opened as another group's.
  """
  @spec store_group(t()) :: String.t()
  def store_group(%__MODULE__{group: {module, key}}),
    do: keyed_dir_name(module) <> "/" <> store_key(key)

  def store_group(%__MODULE__{module: module}), do: group_name(module)

  @doc """
  The cluster id of an explicit membership: 16 bytes derived from the group
  (the module, and a keyed group's key), the sorted nodes and the shared
  settings, so every node computes the same id, and two groups (or two
  memberships, or members whose shared settings differ) never accept each
  other's messages. `settings` defaults to those of default options.
  `checkpoint_bytes`, which came later, is hashed only when it is not its
  default, so ids (and disk stores) of groups formed before with the
  defaults stay, and members that differ in it have different ids.

  A module's default group hashes version 2 of the term, as before keyed
  groups existed, so its id (and its disk store) is unchanged; a keyed
  group hashes version 3, which adds the key and the group's `instance`
  (`keyed/3`): the replicas of a group stopped and started again under
  the same members never take each other's messages, nor recover from
  each other.
  """
  @spec cluster_id(module() | {module(), term()}, [node()], map(), non_neg_integer() | nil) ::
          <<_::128>>
  def cluster_id(group, nodes, settings \\ default_settings(), instance \\ nil)

  def cluster_id({module, key}, nodes, settings, instance)
      when is_atom(module) and key != nil and is_integer(instance),
      do:
        hash(
          {:visor_cluster, 3, module, canonical_key(key), instance, Enum.sort(nodes),
           hashed_settings(settings)}
        )

  def cluster_id(module, nodes, settings, nil) when is_atom(module),
    do: hash({:visor_cluster, 2, module, Enum.sort(nodes), hashed_settings(settings)})

  defp hashed_settings(settings) do
    settings
    |> Enum.reject(fn {key, value} ->
      key in @later_settings and value == Contract.default(key)
    end)
    |> Enum.sort()
  end

  @doc """
  `key` as a keyed group is known by: every float in it with its zero's
  sign dropped (`-0.0` becomes `0.0`), at any depth.

  Why: on OTP < 27, `0.0 =:= -0.0`, so the module's `Registry`, the
  `Visor.Lifetime` table and maps take the two for one key (one group,
  one lifetime record), but `:erlang.term_to_binary/2` tells them apart,
  so the cluster id would not: a start under `-0.0` of the group running
  under `0.0` would form a second, empty cluster over the first one's
  record (amnesia). Hashing, and storing, only the canonical key keeps
  one key one group. (OTP 27 tells the two zeros apart everywhere; merging
  them there is harmless, and keeps nodes of both releases in agreement.)
  """
  @spec canonical_key(term()) :: term()
  def canonical_key(key) when is_float(key), do: key + 0.0
  def canonical_key(key) when is_tuple(key), do: map_tuple(key, &canonical_key/1)
  def canonical_key([head | tail]), do: [canonical_key(head) | canonical_key(tail)]

  def canonical_key(key) when is_map(key),
    do:
      :maps.from_list(for {k, v} <- :maps.to_list(key), do: {canonical_key(k), canonical_key(v)})

  def canonical_key(key), do: key

  defp map_tuple(tuple, fun), do: tuple |> Tuple.to_list() |> Enum.map(fun) |> List.to_tuple()

  # md5 is in erts (no :crypto application needed); this is an identity,
  # not a security boundary: distribution's cookie is that. The encoding
  # is pinned (minor_version 1, OTP 25's default; OTP 26's is 2), so
  # nodes on two OTP releases, and a disk store, agree on the id.
  defp hash(term), do: :erlang.md5(:erlang.term_to_binary(term, minor_version: 1))

  @doc "The engine settings every member must share, from the engine options."
  @spec shared_settings(map()) :: %{atom() => non_neg_integer()}
  def shared_settings(engine) do
    engine
    |> Map.put_new(:checkpoint_chunk_bytes, Contract.default(:checkpoint_chunk_bytes))
    |> Map.put_new(:checkpoint_bytes, Contract.default(:checkpoint_bytes))
    |> Map.take(@shared_settings)
  end

  @doc """
  Shared settings, `stored`, completed with the default of each setting a
  release before it did not have: a disk store written before
  `checkpoint_bytes` existed holds no value for it, and ran with its
  default (so does a settings map that leaves it out, such as a peer's of
  that release). A node restarted with another value is then refused as
  for any shared setting changed over a restart.
  """
  @spec complete_settings(term()) :: term()
  def complete_settings(stored) when is_map(stored) do
    Enum.reduce(@later_settings, stored, &Map.put_new(&2, &1, Contract.default(&1)))
  end

  def complete_settings(stored), do: stored

  defp default_settings, do: validate!(__MODULE__, cluster_size: 1).settings

  @doc """
  The first shared setting whose value differs: `{:setting_mismatch, key,
  ours, theirs}`, or `nil` when they all agree. `theirs` comes from a peer
  or a store: anything that is not a map of the same keys is a mismatch
  (of `:settings`).
  """
  @spec setting_mismatch(map(), term()) :: {:setting_mismatch, atom(), term(), term()} | nil
  def setting_mismatch(ours, theirs) when is_map(ours) and is_map(theirs) do
    {ours, theirs} = {complete_settings(ours), complete_settings(theirs)}

    Enum.find_value(@shared_settings, fn key ->
      if Map.get(ours, key) != Map.get(theirs, key),
        do: {:setting_mismatch, key, Map.get(ours, key), Map.get(theirs, key)}
    end)
  end

  def setting_mismatch(ours, theirs), do: {:setting_mismatch, :settings, ours, theirs}

  @doc "Which start option sets a shared setting, for error messages."
  @spec setting_source(atom()) :: String.t()
  def setting_source(:client_table_max), do: "client_table_max (default: from pool_size)"
  def setting_source(:checkpoint_interval), do: "checkpoint_every"
  def setting_source(key), do: "#{key}"

  @doc "Most replicas a cluster may have (the engine's limit: `Visor.Contract`)."
  @spec max_replicas() :: pos_integer()
  def max_replicas, do: Contract.max_replicas()

  @doc "Every option `validate!/2` accepts."
  @spec known_keys() :: [atom()]
  def known_keys, do: @visor_keys ++ (Contract.option_keys() -- [:checkpoint_interval])

  # A typo must not be dropped silently (a `tick_msec: 5` that leaves the
  # default tick in place), nor an argument meant for initial_state/1 be
  # taken for Visor's (it travels under init_arg:).
  defp known!(module, opts) do
    if Keyword.has_key?(opts, :checkpoint_interval) do
      raise ArgumentError,
            "#{inspect(module)}: the option that sets the engine's checkpoint_interval " <>
              "is checkpoint_every"
    end

    case Enum.uniq(Keyword.keys(opts) -- known_keys()) do
      [] ->
        :ok

      unknown ->
        hints = for key <- unknown, hint = closest(key), do: "#{key} (did you mean #{hint}?)"

        raise ArgumentError,
              "#{inspect(module)}: unknown option #{Enum.map_join(unknown, ", ", &to_string/1)}" <>
                if(hints == [], do: "", else: "; " <> Enum.join(hints, ", ")) <>
                "; arguments for initial_state/1 go under init_arg:"
    end
  end

  defp closest(key) do
    name = Atom.to_string(key)

    {distance, hint} =
      known_keys()
      |> Enum.map(&{String.jaro_distance(name, Atom.to_string(&1)), &1})
      |> Enum.max()

    if distance >= 0.8, do: hint
  end

  defp membership!(module, opts) do
    case {Keyword.fetch(opts, :nodes), Keyword.fetch(opts, :cluster_size)} do
      {{:ok, _}, {:ok, _}} ->
        raise ArgumentError, "#{inspect(module)}: give either :nodes or :cluster_size, not both"

      {{:ok, nodes}, :error} ->
        {:nodes, nodes!(module, nodes)}

      {:error, {:ok, size}} ->
        unless is_integer(size) and size in 1..max_replicas() do
          raise ArgumentError,
                "#{inspect(module)}: cluster_size must be an integer in 1..#{max_replicas()}, " <>
                  "got: #{inspect(size)}"
        end

        {:cluster_size, size}

      {:error, :error} ->
        raise ArgumentError,
              "#{inspect(module)}: give :nodes (the member nodes) or :cluster_size (how many to discover)"
    end
  end

  @doc """
  The name of `module`'s group in a store (and of its directory inside
  `data_dir`): `Atom.to_string(module)`, e.g. `"Elixir.Cache"`.
  """
  @spec group_name(module()) :: String.t()
  def group_name(module), do: Atom.to_string(module)

  defp storage!(module, opts) do
    case {Keyword.get(opts, :storage, :memory), Keyword.fetch(opts, :data_dir)} do
      {:memory, :error} ->
        :memory

      {:memory, {:ok, _}} ->
        raise ArgumentError,
              "#{inspect(module)}: data_dir is only used with storage: :disk " <>
                "(storage is :memory, the default)"

      {:disk, {:ok, dir}} when is_binary(dir) and dir != "" ->
        unless String.valid?(dir) do
          raise ArgumentError, "#{inspect(module)}: data_dir must be valid UTF-8"
        end

        {:disk, Path.join(Path.expand(dir), group_name(module))}

      {:disk, {:ok, dir}} ->
        raise ArgumentError,
              "#{inspect(module)}: data_dir must be a non-empty string (a directory), " <>
                "got: #{inspect(dir)}"

      {:disk, :error} ->
        raise ArgumentError,
              "#{inspect(module)}: storage: :disk needs data_dir (the directory for the " <>
                "group's log and state)"

      {other, _} ->
        raise ArgumentError,
              "#{inspect(module)}: storage must be :memory or :disk, got: #{inspect(other)}"
    end
  end

  @doc """
  `nodes` sorted, if it is a list of 1 to `max_replicas/0` distinct node
  names; raises `ArgumentError` naming `module` otherwise.
  """
  @spec nodes!(module(), term()) :: [node()]
  def nodes!(module, nodes) do
    valid? = is_list(nodes) and nodes != [] and Enum.all?(nodes, &(is_atom(&1) and &1 != nil))

    unless valid? and length(nodes) <= max_replicas() do
      raise ArgumentError,
            "#{inspect(module)}: nodes must be a list of 1..#{max_replicas()} node names, " <>
              "got: #{inspect(nodes)}"
    end

    sorted = Enum.sort(nodes)

    if Enum.uniq(sorted) != sorted do
      raise ArgumentError, "#{inspect(module)}: nodes has duplicates: #{inspect(nodes)}"
    end

    sorted
  end

  # At least a second: a view change alone takes most of one with the
  # default timing, and a member's answers may be late by as much on a
  # busy node; at most what the runtime's timers take.
  @min_replace_after 1_000
  @max_replace_after 0xFFFF_FFFF

  defp replace_after!(module, opts) do
    case Keyword.get(opts, :replace_after) do
      off when off in [nil, :infinity] ->
        nil

      ms when is_integer(ms) and ms in @min_replace_after..@max_replace_after ->
        ms

      other ->
        raise ArgumentError,
              "#{inspect(module)}: replace_after must be an integer in " <>
                "#{@min_replace_after}..#{@max_replace_after} " <>
                "(ms), or nil or :infinity (off, the default), got: #{inspect(other)}"
    end
  end

  defp in_range!(module, opts, key, default, range) do
    case Keyword.get(opts, key, default) do
      value when is_integer(value) ->
        if value in range, do: value, else: out_of_range!(module, key, range, value)

      value ->
        out_of_range!(module, key, range, value)
    end
  end

  defp out_of_range!(module, key, range, value) do
    raise ArgumentError,
          "#{inspect(module)}: #{key} must be an integer in #{range_text(range)}, " <>
            "got: #{inspect(value)}"
  end

  defp range_text(first..last//1), do: "#{first}..#{last}"
end
