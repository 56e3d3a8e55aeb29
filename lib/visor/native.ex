defmodule Visor.Native do
  @moduledoc false
  # The bridge to the Rust engine (`native/visor_nif`), one replica group at
  # a time. The full contract is in `docs/nif.md`.
  #
  # `start/2` starts a replica group on the engine's own threads and returns
  # its handle (a reference). The engine reports to the `owner` process with
  # one message per engine iteration per group (in disk mode, a second one
  # after the iteration's sync):
  #
  #     {:visor_engine, engine, events}
  #
  # where `events` is a list, in order, of
  #
  #   * `{:send, to_slot, member_id, messages}`: send `messages` (a list of
  #     binaries, in the order the replica sent them, at most
  #     `Visor.Contract.limit(:deliver_list_max)`) to the replica in slot
  #     `to_slot` whose member id is `member_id` (16 bytes: route by it,
  #     `Visor.MemberId`), whose router calls `deliver/2` with the list. Every
  #     message of one batch of steps to the same replica is in one list, and
  #     the sends come first in `events`;
  #   * `{:execute, op, view, timestamp_ns, requests}`: op `op` is committed;
  #     `requests` is a list of `{client, request, outcome, payload}` and the
  #     application applies the payloads whose outcome is `:executed`, in
  #     order (every replica sees the same sequence);
  #   * `{:reply, client, request, op, outcome}`: a request submitted through
  #     this replica is settled;
  #   * `{:read_ready, id, op}`: the linearizable read `id` (see `read/2`) may
  #     be served from the local state now: it has executed every op that was
  #     committed before the read began (up to `op`);
  #   * `{:storage, kind, detail}` (disk mode only, see `start/2`): how the
  #     store opened (`:created`, `:restarted`, `:recovering`), then write
  #     failures (`:error`) and their end (`:resumed`);
  #   * `{:reconfigured, id, result}`: the membership change `reconfigure/4`
  #     asked for as `id` ended so (`t:change_result/0`);
  #   * `{:epoch, epoch, members, role, membership}`: the replica entered
  #     `epoch` (or, in disk mode, booted from a store of an epoch above 0
  #     or of a role other than `:member`): its members `[{slot,
  #     member_id, joined}]` in the order that decides the primaries, its
  #     `role` (`:member`, `:learner`, `:leaving` or `:removed`), and
  #     `membership`, the exact list's bytes (opaque: the engine's own
  #     encoding, with what `members` leaves out: the incarnations and
  #     lives the change recorded, and its name), which `start/2`'s
  #     `:known` takes back;
  #   * `{:removed, epoch}`: left out of `epoch`, and a quorum of its
  #     members entered it (or booted from a store that says so): the
  #     replica handles nothing more, and its owner should stop it.
  #
  # An outcome is `:executed`, `{:duplicate, op}`, `{:registered, session}`,
  # `:evicted` or `:refused` (the session's latest request has this number
  # but another body: not applied). If the group fails (its store cannot be
  # opened, or a bug in the engine), the owner gets `{:visor_engine_down,
  # engine, reason}` once and the group is gone.
  #
  # ## Errors
  #
  # The engine's errors are terms to match, never text: the `reason` of
  # `{:visor_engine_down, engine, reason}`, and of the raw `nif_start/2`'s
  # `{:error, reason}` (which `start/2` raises as `ArgumentError`), is one of
  #
  #   * `{:bad_option, key, why}`: the start option `key` (an atom) is
  #     missing or out of its bounds; `why` says how (`"must be positive"`);
  #   * `:engine_unavailable`: no engine thread could be started;
  #   * `{:store_in_use, dir}`: another live group holds the store's lock
  #     (a previous group of this replica releases it a moment after its
  #     owner died);
  #   * `{:foreign_store, dir, detail}`: the store belongs to another
  #     cluster, group or member (left untouched);
  #   * `{:corrupt_store, dir, detail}`: the store cannot be trusted (every
  #     superblock copy damaged, a log without its superblock, or a log the
  #     replica cannot restart from; left untouched);
  #   * `{:store_version, dir, found}`: the store is in another format version;
  #   * `{:io_error, dir, detail}`: the store could not be read or written;
  #   * `{:engine_bug, detail}`: a panic or broken invariant in the engine
  #     (a bug; it fails that group alone).
  #
  # `dir`, `why` and `detail` are binaries for people; `format_error/1`
  # renders any of these as one message.
  #
  # The limits the engine enforces (replicas per cluster, the integer
  # options with their defaults and ranges, list and size limits) come from
  # the loaded library itself: see `Visor.Contract`. Loading this module
  # fails, with a message saying how to rebuild the library, when the
  # library is missing or speaks another interface version (a stale `.so`).
  #
  # Every function returns in microseconds: it validates its arguments
  # (raising `ArgumentError` that names the problem), then enqueues a command
  # for the engine or reads the group's last published status copy.

  @on_load :load_nif

  # Where the .so is when this module was compiled from source: used when
  # :visor is not a known application (e.g. beams loaded by path alone).
  @source_priv Path.expand("../../priv", __DIR__)

  alias Visor.Contract
  # The load hook calls Visor.Contract: compile it first, so that the
  # compiler can load this module (and run the hook) as soon as it is built.
  require Contract

  @u64_max 0xFFFF_FFFF_FFFF_FFFF

  # start/2's options besides the integer ones of Visor.Contract.option_keys/0.
  @identity_keys [
    :cluster,
    :replica_count,
    :replica_index,
    :recover,
    :data_dir,
    :group,
    :meta,
    :member,
    :joined,
    :learner,
    :known
  ]

  # Slots a membership may use (vsr's MAX_SLOTS: an old and a new list).
  @max_slots 12

  @typedoc "A replica group's handle, as returned by `start/2`."
  @type engine :: reference()
  @typedoc "A client id: 16 bytes (a little-endian u128)."
  @type client :: <<_::128>>
  @type outcome ::
          :executed
          | {:duplicate, op :: non_neg_integer()}
          | {:registered, session :: non_neg_integer()}
          | :evicted
          | :refused

  @doc false
  def load_nif do
    priv =
      case :code.priv_dir(:visor) do
        {:error, :bad_name} -> @source_priv
        dir -> dir
      end

    # An error makes the VM refuse to load this module and log the reason,
    # which beats a later :nif_not_loaded or a library that means
    # something else by the same call.
    path = Path.join(priv, "native/libvisor_nif")

    with :ok <- load_library(path),
         :ok <- Contract.check_version(protocol_version()) do
      Contract.install(nif_contract())
    end
  end

  defp load_library(path) do
    case :erlang.load_nif(~c"#{path}", 0) do
      :ok ->
        :ok

      {:error, {_reason, text}} ->
        {:error,
         "cannot load the engine library #{path}.so: #{text}; " <> Contract.rebuild_hint()}
    end
  end

  @doc "Version of the Elixir <-> NIF interface the loaded library speaks."
  @spec protocol_version() :: pos_integer()
  def protocol_version, do: :erlang.nif_error(:nif_not_loaded)

  @doc "128-bit checksum of `bytes` as 16 little-endian bytes."
  @spec checksum(binary()) :: <<_::128>>
  def checksum(_bytes), do: :erlang.nif_error(:nif_not_loaded)

  @doc """
  Starts one replica group and returns its handle.

  `opts` (a map; a keyword list is accepted too):

    * `:cluster` (required): the cluster id, a 16-byte binary shared by all
      replicas of the group;
    * `:replica_count` (required): 1 to `Visor.Contract.max_replicas/0`;
    * `:replica_index` (required): this replica, `0..replica_count - 1`;
    * `:tick_ms`: milliseconds per protocol tick (default 10);
    * `:member`, `:joined`, `:learner`: a node a membership change adds
      (docs/nif.md, "Learners"): `member` is its member id (16 bytes),
      `joined` the epoch that admits it (at least 1), and `replica_index`
      its slot (`0..11`, which may lie outside `replica_count`). With
      `learner: true` it starts as a learner, with a life drawn at
      random at each start (disk mode: in a new store, which the
      directory must not hold yet); without, only in disk mode, it
      restarts from the store it created as one (a member once it
      entered its epoch);
    * `:known`: with `recover: true`, in memory mode: the newest
      membership the host knows, exactly as the engine gave it (the
      `membership` bytes of an `{:epoch, ...}` event or of the status,
      of an epoch from 1), to recover in instead of the list the group
      was formed with. It must list this replica at `replica_index`: as
      `member`/`joined` if given (a node a change added), else as the
      genesis member of that slot (docs/nif.md, "Recovering in a later
      epoch");
    * `:recover`: `true` when this replica rejoins an existing cluster after
      losing its state (a restarted node in memory mode): it recovers its
      incarnation and the log from a quorum before it votes or acknowledges
      anything (status `:recovering` until then). Default `false`: a
      member of a cluster being formed;
    * overrides of the protocol limits and timeouts (non-negative integers,
      timeouts in ticks): the other keys of `Visor.Contract.option_keys/0`,
      each within `Visor.Contract.range/1`;
    * `:data_dir`: disk mode (docs/storage.md). The group's store lives in
      this directory, which it locks; `:group` (required with it, a binary
      of at most `Visor.Contract.limit(:group_bytes_max)` bytes) names the
      group, and a store of another cluster, group or replica is refused;
      `:meta` (at most `Visor.Contract.limit(:meta_bytes_max)` bytes) is
      kept in a new store for `probe/2` to return;
      `:wal_compact_bytes` (a positive integer, default 64 MiB) is how
      many bytes of the WAL a checkpoint must make dead before the WAL is
      compacted (docs/storage.md, "Compaction").
      The store is opened on the engine thread: until then `status/1` says
      `:starting`; a store that cannot be opened fails the group
      (`{:visor_engine_down, engine, reason}`). In disk mode the events
      start with `{:storage, kind, detail}`: `:created`, `:restarted`
      (detail: the offset of a torn tail cut off, or `nil`), or
      `:recovering` (detail: why the log is not trusted); later
      `{:storage, :error, reason}` when writes fail (the replica then
      pauses) and `{:storage, :resumed, nil}` when they succeed again.

  Engine messages go to `owner`, a local process. The group stops when
  `stop/1` is called or when `owner` exits.
  """
  @spec start(map() | keyword(), pid()) :: {:ok, engine()}
  def start(opts, owner) do
    opts = validate_opts!(opts)

    unless is_pid(owner) and node(owner) == node() do
      raise ArgumentError, "owner must be a local pid, got: #{inspect(owner)}"
    end

    case nif_start(opts, owner) do
      {:ok, engine} -> {:ok, engine}
      {:error, {:bad_option, _, _} = reason} -> raise ArgumentError, format_error(reason)
      {:error, reason} -> raise "the engine cannot start a group: " <> format_error(reason)
    end
  end

  @doc """
  Checks the engine options in `opts` as `start/2` would, without starting
  anything: each option's range, and the rules that tie options together
  (`view_change_ticks` above twice `heartbeat_ticks`, `resend_ticks` below
  `view_change_ticks`). `:ok`, or `{:error, {:bad_option, key, why}}` for
  the first option `start/2` would refuse. Options it does not know are
  left to `start/2`.
  """
  @spec check_options(map()) :: :ok | {:error, {:bad_option, atom(), String.t()}}
  def check_options(opts) when is_map(opts), do: nif_check_options(opts)

  @doc """
  Creates the directory `dir` and any missing ancestors, as
  `File.mkdir_p/1` does, and makes the entry of every directory from
  `root` down to `dir` durable, `root`'s own included (an `fsync` of the
  directory holding each; those that existed too: one may have been made
  by a call that failed before its sync). Erlang cannot sync a directory,
  and POSIX makes a directory entry durable only then. `root` is `dir` or
  one of its ancestors. Runs on a dirty I/O scheduler. `:ok` or `{:error,
  posix}` (`:einval` for a `root` that is not an ancestor).
  """
  @spec create_dir(Path.t(), Path.t()) :: :ok | {:error, File.posix() | :unknown}
  def create_dir(dir, root) when is_binary(dir) and is_binary(root),
    do: nif_create_dir(dir, root)

  @doc """
  Makes the entries of the directory `dir` durable (an `fsync` of the
  directory): the files created, renamed or removed in it. Anything but a
  directory is `{:error, :enotdir}`, never opened. Runs on a dirty I/O
  scheduler. `:ok` or `{:error, posix}`.
  """
  @spec sync_dir(Path.t()) :: :ok | {:error, File.posix() | :unknown}
  def sync_dir(dir) when is_binary(dir), do: nif_sync_dir(dir)

  @typedoc "An engine error (see \"Errors\" above)."
  @type error ::
          {:bad_option, atom(), String.t()}
          | :engine_unavailable
          | {:store_in_use, String.t()}
          | {:foreign_store, String.t(), String.t()}
          | {:corrupt_store, String.t(), String.t()}
          | {:store_version, String.t(), non_neg_integer()}
          | {:io_error, String.t(), String.t()}
          | {:engine_bug, String.t()}

  @doc """
  An engine error (see "Errors" above) as a message for people; any other
  term is inspected.
  """
  @spec format_error(error() | term()) :: String.t()
  def format_error({:bad_option, key, why}), do: "invalid engine options: #{key} #{why}"
  def format_error(:engine_unavailable), do: "the engine could not start any thread"
  def format_error({:store_in_use, dir}), do: "#{dir} is in use by another replica"
  def format_error({:foreign_store, dir, detail}), do: "#{dir}: #{detail}"
  def format_error({:corrupt_store, dir, detail}), do: "#{dir}: #{detail}"

  def format_error({:store_version, dir, found}),
    do: "#{dir} holds storage format version #{found}, which this version of Visor does not read"

  def format_error({:io_error, dir, detail}), do: "#{dir}: #{detail}"
  def format_error({:engine_bug, detail}), do: "engine failure (a bug): #{detail}"
  def format_error(other), do: inspect(other)

  @doc """
  Hands the group messages from a peer replica: the list of a peer's
  `{:send, to, messages}` event, or one message. Corrupt or foreign
  messages are dropped and counted in `status/1`'s stats. In a list,
  elements that are not binaries (and an improper tail) are skipped, and a
  list of more than `Visor.Contract.limit(:deliver_list_max)` elements is
  dropped whole: then `{:malformed,
  dropped}` says how many were dropped (the rest are delivered). A no-op
  once the group is stopped.
  """
  @spec deliver(engine(), binary() | [binary()]) :: :ok | {:malformed, pos_integer()}
  def deliver(engine, messages) do
    check_engine!(engine)

    unless is_binary(messages) or is_list(messages) do
      raise ArgumentError,
            "messages must be a binary or a list of binaries, got: #{inspect(messages)}"
    end

    nif_deliver(engine, messages)
  end

  @doc """
  Submits a client request through this replica. Register first with
  `session` 0 and `request` 0; the `{:registered, session}` reply gives the
  session for requests 1, 2, 3, ... (one outstanding at a time). The reply
  arrives as a `{:reply, ...}` event. A no-op once the group is stopped.
  """
  @spec submit(engine(), client(), non_neg_integer(), non_neg_integer(), binary()) :: :ok
  def submit(engine, client, session, request, payload) do
    check_engine!(engine)

    unless is_binary(client) and byte_size(client) == 16 do
      raise ArgumentError, "client must be a 16-byte binary, got: #{describe(client)}"
    end

    check_u64!(session, "session")
    check_u64!(request, "request")

    unless is_binary(payload) do
      raise ArgumentError, "payload must be a binary, got: #{inspect(payload)}"
    end

    nif_submit(engine, client, session, request, payload)
  end

  @doc """
  Answers a `{:snapshot, op}` event with the application state as of `op`
  (encoded; right after `op`'s execute, before any later one). The engine
  forms the checkpoint from it, makes it durable (disk mode) and truncates
  the log. Returns at once: the binary is shared with the engine thread,
  not copied on the scheduler. A no-op once the group is stopped.
  """
  @spec snapshot(engine(), non_neg_integer(), binary()) :: :ok
  def snapshot(engine, op, bytes) do
    check_engine!(engine)
    check_u64!(op, "op")

    unless is_binary(bytes) do
      raise ArgumentError, "snapshot must be a binary, got: #{describe(bytes)}"
    end

    nif_snapshot(engine, op, bytes)
  end

  @doc """
  Starts a linearizable read through this replica (vsr's read index: a
  quorum heartbeat round, nothing appended to the log). `id` is the
  caller's, unique among this replica's reads in flight; the engine answers
  with a `{:read_ready, id, op}` event. A no-op once the group is stopped.
  """
  @spec read(engine(), non_neg_integer()) :: :ok
  def read(engine, id) do
    check_engine!(engine)
    check_u64!(id, "read id")
    nif_read(engine, id)
  end

  @typedoc """
  How a membership change ended (`{:reconfigured, id, result}`): `:done`
  (its entry executed here: the next epoch is entered), `:unchanged` (the
  list already is the target), or a final "no" (the change was not made
  and never will be): `:busy` (another change is under way), `:stale`
  (the list moved on), `:not_member` (this replica is not a member),
  `:no_quorum` (the target lacked a live quorum, or the primary was not
  reached, by the deadline), `:unreachable` (a new member, not supported
  yet), `:abandoned` (proposed, but its op went to another entry, and the
  deadline passed); or `:unknown` (this replica jumped over the epoch and
  cannot tell: a "maybe").
  """
  @type change_result ::
          :done
          | :unchanged
          | :busy
          | :stale
          | :not_member
          | :no_quorum
          | :unreachable
          | :abandoned
          | :unknown

  @doc """
  Asks the replica for a membership change (docs/nif.md, "Membership
  changes"): to the members `member_ids` (16-byte little-endian member
  ids, 1 to `Visor.Contract.max_replicas/0` of them, distinct, in any
  order: the engine builds the target from the replica's membership,
  staying members keeping their slots, the current primary first if it
  stays). `id` names the change among this replica's (a u64); `ticks` is
  how long it may take before it is given up, if not yet consented to.
  The answer comes as one `{:reconfigured, id, result}` event. A no-op
  once the group is stopped.
  """
  @spec reconfigure(engine(), non_neg_integer(), [<<_::128>>], non_neg_integer()) :: :ok
  def reconfigure(engine, id, member_ids, ticks) do
    check_engine!(engine)
    check_u64!(id, "change id")
    check_u64!(ticks, "ticks")
    max = Contract.max_replicas()

    unless is_list(member_ids) and length(member_ids) in 1..max and
             Enum.all?(member_ids, &(is_binary(&1) and byte_size(&1) == 16)) and
             length(Enum.uniq(member_ids)) == length(member_ids) do
      raise ArgumentError,
            "member_ids must be a list of 1..#{max} distinct 16-byte member ids, got: " <>
              inspect(member_ids)
    end

    case nif_reconfigure(engine, id, member_ids, ticks) do
      :ok -> :ok
      {:error, {:bad_argument, name, why}} -> raise ArgumentError, "#{name} #{why}"
    end
  end

  @doc """
  Reads the superblock of the store in `dir` (disk mode) without opening,
  creating or locking it. The read runs on an engine thread, never on a
  scheduler; this waits for it (up to `timeout` ms).

  Returns `:empty` when there is no store there, `{:ok, info}` with `info`
  a map of `:cluster` (16 bytes), `:group`, `:replica` (the store's slot:
  its `replica_index` in a cluster's first membership; `nil` if the
  membership it records does not list it), `:member` (the member id, 16
  bytes little-endian; today the slot number), `:joined` and `:epoch`
  (0 today), `:role` (`:member`, `:learner`, `:leaving` or `:removed`),
  `:life` (a learner's store's life, else `nil`), `:meta` (what `start/2`
  was given), `:view`, `:commit`, `:recovering` and `:sequence`, or
  `{:error, message}` (unreadable, every superblock copy damaged, or a log
  or checkpoint file with data but no superblock).
  """
  @spec probe(String.t(), timeout()) :: :empty | {:ok, map()} | {:error, String.t()}
  def probe(dir, timeout \\ 5_000) do
    unless is_binary(dir) and dir != "" and String.valid?(dir) do
      raise ArgumentError, "dir must be a non-empty string, got: #{inspect(dir)}"
    end

    tag = :erlang.unique_integer([:positive])
    :ok = nif_probe(dir, tag, self())

    receive do
      {:visor_probe, ^tag, result} -> result
    after
      timeout -> {:error, "probing #{dir} timed out"}
    end
  end

  @doc """
  The epoch and members (`[{slot, member_id, joined}]`, as the `{:epoch,
  ...}` event lists them) of a membership's bytes (an event's or the
  status's `membership`, or a peer's copy of one: untrusted), or
  `{:error, why}` if they are not exactly one membership's encoding.
  """
  @spec decode_membership(binary()) ::
          {:ok, {non_neg_integer(), [{non_neg_integer(), <<_::128>>, non_neg_integer()}]}}
          | {:error, String.t()}
  def decode_membership(bytes) when is_binary(bytes), do: nif_decode_membership(bytes)

  @doc """
  The group's state as the engine last published it (after its latest
  iteration); never waits for the engine.

  `%{status: :starting | :normal | :view_change | :recovering | :diverged |
  :stopped | :failed, view:, log_view:, op:, commit:, commit_max:, primary:,
  is_primary:, replica_index:, replica_count:, epoch:, members:,
  membership:, role:, stats: %{...}, storage: %{...}, sync: nil | %{op:,
  received:, bytes:}, quiet:}`; `quiet` says the replica is quiet
  (`quiet_after_ticks:`): its group has nothing to do and its engine
  ticks it no more until an input wakes it; `epoch`, `members` (`[{slot, member_id,
  joined}]`), `membership` (the exact list's bytes) and `role`
  (`:member`, `:learner`, `:leaving` or `:removed`), as the `:epoch`
  event gives them, are the replica's membership (a disk-mode group still
  `:starting` shows its configuration's first one);
  `commit` is the highest op executed here, `commit_max` the highest known
  committed. `storage` is `%{mode: :memory}` or `%{mode: :disk, data_dir:,
  error: nil | message, syncs:, wal_bytes:, wal_size:, compactions:,
  checkpoint:}`: `wal_bytes` counts every byte appended to the WAL,
  `wal_size` is the log's length in its WAL file now (compaction shrinks
  it; the file is up to 1 MiB longer, with zeros written ahead). `sync` is
  a state sync under way: the checkpoint's op, the bytes received and its
  size (one that arrives whole between two publications never shows).
  """
  @spec status(engine()) :: map()
  def status(engine) do
    check_engine!(engine)
    nif_status(engine)
  end

  @doc """
  Quiet groups (`quiet_after_ticks:`): the node's failure detector
  (`Visor.Beacon`) holds up the nodes of the members `member_ids` (16-byte
  ids, at most `Visor.Contract.limit(:peers_ids_max)`; this node's own
  need not be among them). The engine
  feeds the replica the change when it concerns it: an awake replica
  takes every change, a quiet backup wakes when its primary's node is
  down (and campaigns at once), a quiet primary when fewer than a quorum
  of its members' nodes are up. Returns at once.
  """
  @spec peers(engine(), [<<_::128>>]) :: :ok
  def peers(engine, member_ids) do
    check_engine!(engine)

    unless is_list(member_ids) and Enum.all?(member_ids, &(is_binary(&1) and byte_size(&1) == 16)) do
      raise ArgumentError,
            "member_ids must be a list of 16-byte member ids, got: #{inspect(member_ids)}"
    end

    nif_peers(engine, member_ids)
  end

  @doc """
  A node-level failure detector (the engine's pure `Detector`, as the
  simulator runs it) for the node named `me`: it beats each peer every
  `beat_ms` and holds a peer down once it has not heard it, or it has not
  echoed this node's beats, for `timeout_ms`; `now_ms` is monotonic time.
  Driven by `Visor.Beacon`; every `detector_*` call returns in microseconds.
  """
  @spec detector_new(node(), pos_integer(), pos_integer(), integer()) :: reference()
  def detector_new(me, beat_ms, timeout_ms, now_ms),
    do: nif_detector_new(Atom.to_string(me), beat_ms, timeout_ms, now_ms)

  @doc "Watches `peer` (believed up as heard now)."
  @spec detector_add(reference(), node()) :: :ok
  def detector_add(detector, peer), do: nif_detector_add(detector, Atom.to_string(peer))

  @doc "Stops watching `peer` (a node long gone)."
  @spec detector_remove(reference(), node()) :: :ok
  def detector_remove(detector, peer), do: nif_detector_remove(detector, Atom.to_string(peer))

  @doc "Distribution reported `peer` down (`nodedown`) at `now_ms`."
  @spec detector_down(reference(), node(), integer()) :: :ok
  def detector_down(detector, peer, now_ms),
    do: nif_detector_down(detector, Atom.to_string(peer), now_ms)

  @doc "Time passes to `now_ms`: the beats due, as `[{peer, bytes}]` (peer as a name binary)."
  @spec detector_tick(reference(), integer(), non_neg_integer()) :: [{binary(), binary()}]
  def detector_tick(detector, now_ms, wall_ns), do: nif_detector_tick(detector, now_ms, wall_ns)

  @doc "A beat arrived (untrusted bytes): `:ok`, or `:malformed`."
  @spec detector_beat(reference(), binary(), integer()) :: :ok | :malformed
  def detector_beat(detector, bytes, now_ms) when is_binary(bytes),
    do: nif_detector_beat(detector, bytes, now_ms)

  def detector_beat(_detector, _bytes, _now_ms), do: :malformed

  @doc "`{changed, up}`: whether the peers held up changed since last asked, and their names."
  @spec detector_up(reference()) :: {boolean(), [binary()]}
  def detector_up(detector), do: nif_detector_up(detector)

  @doc """
  Stops the group and releases it. Idempotent. Returns at once; the engine
  thread drops the group in its next iteration (see `engine_info/0`).
  """
  @spec stop(engine()) :: :ok
  def stop(engine) do
    check_engine!(engine)
    nif_stop(engine)
  end

  @doc """
  `%{threads: n, groups: n}`: engine threads running and groups they hold
  on this node.
  """
  @spec engine_info() :: %{threads: non_neg_integer(), groups: non_neg_integer()}
  def engine_info, do: nif_engine_info()

  @doc false
  # Test hook: fails the group exactly as a panic inside vsr would.
  @spec crash_for_test(engine()) :: :ok
  def crash_for_test(engine) do
    check_engine!(engine)
    nif_crash(engine)
  end

  @doc false
  # Test hook: keeps the engine thread that runs `engine` busy, as a long
  # step would, until `release_for_test/1` is called with the handle
  # returned (or it is garbage collected; at most 30 s). The caller gets
  # :visor_engine_stalled when the thread stalls, :visor_engine_resumed
  # when it goes on.
  @spec stall_for_test(engine()) :: reference()
  def stall_for_test(engine) do
    check_engine!(engine)
    nif_stall_for_test(engine, self())
  end

  @doc false
  @spec release_for_test(reference()) :: :ok
  def release_for_test(release), do: nif_release_for_test(release)

  # ---- Validation ------------------------------------------------------

  defp validate_opts!(opts) when is_list(opts) do
    if Keyword.keyword?(opts) do
      validate_opts!(Map.new(opts))
    else
      raise ArgumentError, "opts must be a map or a keyword list, got: #{inspect(opts)}"
    end
  end

  defp validate_opts!(opts) when is_map(opts) do
    case Map.keys(opts) -- (@identity_keys ++ Contract.option_keys()) do
      [] -> :ok
      [key | _] -> raise ArgumentError, "unknown engine option #{inspect(key)}"
    end

    cluster = Map.get(opts, :cluster)

    unless is_binary(cluster) and byte_size(cluster) == 16 do
      raise ArgumentError, "cluster must be a 16-byte binary, got: #{describe(cluster)}"
    end

    count = Map.get(opts, :replica_count)
    max_replicas = Contract.max_replicas()

    unless is_integer(count) and count in 1..max_replicas do
      raise ArgumentError,
            "replica_count must be an integer in 1..#{max_replicas}, got: #{inspect(count)}"
    end

    index = Map.get(opts, :replica_index)
    joining? = validate_joining!(opts)
    last = if joining?, do: @max_slots - 1, else: count - 1

    unless is_integer(index) and index in 0..last do
      raise ArgumentError,
            "replica_index must be an integer in 0..#{last}, got: #{inspect(index)}"
    end

    case Map.fetch(opts, :tick_ms) do
      :error ->
        :ok

      {:ok, ms} ->
        unless is_integer(ms) and ms in Contract.range(:tick_ms) do
          raise ArgumentError,
                "tick_ms must be an integer in #{range_text(Contract.range(:tick_ms))}, " <>
                  "got: #{inspect(ms)}"
        end
    end

    unless Map.get(opts, :recover, false) in [true, false] do
      raise ArgumentError, "recover must be a boolean, got: #{inspect(opts.recover)}"
    end

    # The NIF checks the ranges (vsr's Config::check_ranges has the last word).
    for key <- Contract.option_keys() -- [:tick_ms, :wal_compact_bytes],
        Map.has_key?(opts, key) do
      check_u64!(Map.fetch!(opts, key), Atom.to_string(key))
    end

    validate_known!(opts)
    validate_disk_opts!(opts)
  end

  defp validate_opts!(opts) do
    raise ArgumentError, "opts must be a map, got: #{inspect(opts)}"
  end

  # A node a change adds: `member` (its 16-byte member id) and `joined`
  # (the epoch that admits it), as a learner (`learner: true`) or, in disk
  # mode, restarting from its store. Whether it is one.
  defp validate_joining!(opts) do
    learner = Map.get(opts, :learner, false)

    unless learner in [true, false] do
      raise ArgumentError, "learner must be a boolean, got: #{inspect(learner)}"
    end

    case Map.fetch(opts, :member) do
      :error ->
        if learner, do: raise(ArgumentError, "learner needs member and joined")
        if Map.has_key?(opts, :joined), do: raise(ArgumentError, "joined needs member")
        false

      {:ok, member} ->
        unless is_binary(member) and byte_size(member) == 16 do
          raise ArgumentError, "member must be a 16-byte binary, got: #{describe(member)}"
        end

        joined = Map.get(opts, :joined)

        unless is_integer(joined) and joined >= 1 and joined <= div(@u64_max, 2) do
          raise ArgumentError,
                "joined must be an epoch after the genesis (a positive integer), got: " <>
                  inspect(joined)
        end

        known? = Map.has_key?(opts, :known)

        if Map.get(opts, :recover, false) == true and not known?,
          do: raise(ArgumentError, "recover must be false with member, unless known is given")

        if not learner and not Map.has_key?(opts, :data_dir) and not known?,
          do: raise(ArgumentError, "member without learner: true needs data_dir or known")

        true
    end
  end

  # The newest membership the host knows, for a memory-mode replica that
  # recovers: its exact bytes, as the `{:epoch, ...}` event gave them. The
  # wrapper checks that it is a binary of a membership's size and the
  # options it needs; the NIF decodes it and checks the rest (a
  # well-formed list of an epoch from 1, of this cluster's genesis, that
  # lists this replica at `replica_index`).
  defp validate_known!(%{known: known} = opts) do
    max = Contract.limit(:membership_bytes_max)

    unless is_binary(known) and byte_size(known) in 1..max do
      raise ArgumentError,
            "known must be a membership's bytes (1..#{max} bytes, as an {:epoch, ...} " <>
              "event gives them), got: #{inspect(known, limit: 20)}"
    end

    if Map.get(opts, :recover) != true,
      do: raise(ArgumentError, "known needs recover: true")

    if Map.has_key?(opts, :data_dir),
      do: raise(ArgumentError, "known is only accepted without data_dir")

    if Map.get(opts, :learner, false) == true,
      do: raise(ArgumentError, "known must not come with learner: true")

    :ok
  end

  defp validate_known!(_opts), do: :ok

  defp validate_disk_opts!(%{data_dir: dir} = opts) do
    unless is_binary(dir) and dir != "" and String.valid?(dir) do
      raise ArgumentError, "data_dir must be a non-empty string, got: #{inspect(dir)}"
    end

    group = Map.get(opts, :group)
    group_max = Contract.limit(:group_bytes_max)

    unless is_binary(group) and byte_size(group) in 1..group_max do
      raise ArgumentError,
            "group must be a binary of 1..#{group_max} bytes with data_dir, got: #{describe(group)}"
    end

    meta = Map.get(opts, :meta, "")
    meta_max = Contract.limit(:meta_bytes_max)

    unless is_binary(meta) and byte_size(meta) <= meta_max do
      raise ArgumentError,
            "meta must be a binary of at most #{meta_max} bytes, got: #{describe(meta)}"
    end

    case Map.fetch(opts, :wal_compact_bytes) do
      :error ->
        :ok

      {:ok, bytes} ->
        unless is_integer(bytes) and bytes in Contract.range(:wal_compact_bytes) do
          raise ArgumentError,
                "wal_compact_bytes must be a positive integer, got: #{inspect(bytes)}"
        end
    end

    opts
  end

  defp validate_disk_opts!(opts) do
    case Enum.find([:group, :meta, :wal_compact_bytes], &Map.has_key?(opts, &1)) do
      nil -> opts
      key -> raise ArgumentError, "#{inspect(key)} is only accepted with data_dir"
    end
  end

  defp check_engine!(engine) do
    unless is_reference(engine) do
      raise ArgumentError, "engine must be a reference from start/2, got: #{inspect(engine)}"
    end
  end

  defp check_u64!(value, name) do
    unless is_integer(value) and value >= 0 and value <= @u64_max do
      raise ArgumentError,
            "#{name} must be a non-negative integer below 2^64, got: #{inspect(value)}"
    end
  end

  defp describe(value) when is_binary(value), do: "a #{byte_size(value)}-byte binary"
  defp describe(value), do: inspect(value)

  defp range_text(first..last//1), do: "#{first}..#{last}"

  # ---- Raw NIFs (replaced when the library loads) ------------------------
  # They trust nothing either: a bad argument is badarg (ArgumentError), a
  # bad option an {:error, {:bad_option, key, why}} tuple. Call the
  # wrappers above instead.

  @doc false
  def nif_contract, do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_check_options(_opts), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_decode_membership(_bytes), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_create_dir(_dir, _root), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_sync_dir(_dir), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_start(_opts, _owner), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_probe(_dir, _tag, _owner), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_deliver(_engine, _bytes), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_submit(_engine, _client, _session, _request, _payload),
    do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def nif_read(_engine, _id), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_snapshot(_engine, _op, _bytes), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_reconfigure(_engine, _id, _member_ids, _ticks), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_peers(_engine, _ids), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_detector_new(_me, _beat_ms, _timeout_ms, _now_ms),
    do: :erlang.nif_error(:nif_not_loaded)

  @doc false
  def nif_detector_add(_detector, _peer), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_detector_remove(_detector, _peer), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_detector_down(_detector, _peer, _now_ms), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_detector_tick(_detector, _now_ms, _wall_ns), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_detector_beat(_detector, _bytes, _now_ms), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_detector_up(_detector), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_status(_engine), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_stop(_engine), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_crash(_engine), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_stall_for_test(_engine, _notify), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_release_for_test(_release), do: :erlang.nif_error(:nif_not_loaded)
  @doc false
  def nif_engine_info, do: :erlang.nif_error(:nif_not_loaded)
end
