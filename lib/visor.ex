defmodule Visor do
  @moduledoc """
  Visor replicates the state of a GenServer across BEAM nodes with
  Viewstamped Replication (VSR).

  You write a module with `use Visor`, start it on every node, and get one
  logical GenServer whose state survives the loss of any minority of nodes:

      defmodule Cache do
        use Visor

        @impl Visor
        def initial_state(_opts), do: %{}

        @impl Visor
        def handle_commit({:add, item}, state), do: {:ok, nil, Map.merge(state, item)}
      end

      # in every node's supervision tree
      children = [{Cache, nodes: [:"a@host", :"b@host", :"c@host"]}]
      # or let the nodes find each other: children = [{Cache, cluster_size: 3}]

      Cache.commit({:add, %{user1: %{email: "a@example.com"}}})  #=> nil
      Cache.get()                     #=> %{user1: %{email: "a@example.com"}}
      Cache.get_in([:user1, :email])  #=> "a@example.com"

  ## Callbacks

  `c:initial_state/1` builds the state every replica starts from (it gets the
  `init_arg:` option, `[]` by default); a keyed group's replicas start
  from `c:initial_state/2`, which also gets the group's key, when the
  module defines it (see "Keyed groups"). `c:handle_commit/2` (or
  `c:handle_commit/3`, which also gets the op number, view, the primary's
  timestamp and the state machine version) applies one committed command
  and returns `{:ok, reply, new_state}`. Every replica applies the same
  commands in the same order, so `handle_commit` must be deterministic: no
  clock, no randomness, no reading of other processes. Use `meta.timestamp` instead of the clock and
  `{meta.op, meta.index}` for unique ids (one op of the log may hold
  several commands: concurrent callers' and a pipelining caller's batch;
  `meta.index` numbers them); draw random values in the caller and put them
  in the command, or seed a generator with explicit state from the
  command (`:rand.seed_s(:exsss, {seed, meta.op, meta.index})` with
  `:rand.uniform_s/2`). A replica whose state diverges anyway is found at
  the next checkpoint: it logs an error naming the op and the digests,
  shows `status: :diverged`, and recovers the majority's state
  (docs/operations.md).

  `handle_commit` runs in this node's server, one command at a time: a
  slow one delays this replica's later commands and answers, but not its
  part in the protocol (docs/operations.md, "Slow callbacks").

  A `handle_commit` that raises, throws, exits or returns anything else than
  `{:ok, reply, state}` leaves this replica's state unchanged, and the
  caller gets `{:error, {:handle_commit_failed, reason}}` (see `t:error/0`).
  That error therefore means the command changed no replica's state
  exactly when every replica's `handle_commit` is deterministic and is the
  same function of `(command, meta, state)` on every node: the same code,
  or code that keeps the behaviour of the version in `meta.version` (a new
  behaviour goes with a new `c:version/0`; docs/operations.md, "Deploying
  new code"). A callback that fails on one node only (nondeterministic, or
  code that differs between nodes at the same version) fails there alone,
  and that node's state diverges (found at the next checkpoint).

  ## Versions

  `c:version/0` (optional, default 0) is the state machine version the
  module's code supports. The cluster runs one version at a time: a new
  cluster starts at version 0, and the primary switches it, through an
  entry in the log, to the lowest version every member's code supports,
  once that is above the cluster's (it checks as it becomes the primary,
  and then each second; a new cluster's first commands wait for that
  first check, up to 500 ms). `meta.version`
  is the version a command runs under, the same on every replica, so new
  code can keep the old behaviour for the commands committed before the
  switch. A member whose code does not support the cluster's version stops
  executing there (status `version.blocked`, commits fail with
  `{:unsupported_version, version}`) until its code is upgraded, rather than
  execute with other code than the others. Each command runs the module's
  code loaded at that moment, so a hot code load takes effect at once.

  ## Functions `use Visor` defines

  `child_spec/1`, `start_link/1`, `commit/1,2`, `pipeline/1,2`, `get/0,1`,
  `get_in/1,2`, `status/0` (the default group's), and `start_group/1,2`,
  `stop_group/1,2` and `which_groups/0` (keyed groups: they take the key;
  overridable, so a module's own functions of those names keep working),
  each a one-line call to the function of the same name here
  (`Visor.commit(Cache, command, opts)` and so on), so nothing is
  macro-only. Code inside the module may still call `get_in(data, keys)`:
  the generated `get_in/2` reads the group only when given a path (a list)
  and options (a keyword list or a timeout), and is `Kernel.get_in/2` for
  any other call.

  As with `use GenServer`, `use Visor, opts` takes child spec keys (`:id`,
  `:restart`, `:shutdown`, `:significant`) and default start options
  (below), which the options of `{Cache, opts}` override (a `:nodes` or
  `:cluster_size` given there replaces the default membership):

      use Visor, restart: :transient, cluster_size: 3

  ## Options (`{Cache, opts}`)

    * `:nodes`: the member nodes, explicitly (see docs/operations.md); or
    * `:cluster_size`: discover that many members among connected nodes
      running the same module (exactly one of the two is required);
    * `:storage`: `:memory` (the default: the log lives in memory; the
      group survives any minority of its nodes restarting) or `:disk` (the
      log is written to disk before anything is acknowledged; the group
      also survives every node restarting at once);
    * `:data_dir`: with `storage: :disk` (required then), this node's
      directory for the group's store, `Path.join(data_dir,
      Atom.to_string(module))` (docs/operations.md, "Disk mode");
    * `:pool_size`: client sessions per node, i.e. how many commands this
      node keeps in flight at once (default 128); more callers wait in line;
    * `:busy_poll_us`: how long (µs, default 50, `0` disables) the server
      polls for its engine's answer after a hand-off, while few of this
      node's commands are in flight (docs/operations.md, "Latency");
    * `:checkpoint_every`: ops between checkpoints (default 10000, `0`
      disables; it sets the engine's `checkpoint_interval`, which is not an
      option itself);
    * `:checkpoint_bytes`: a checkpoint is also taken once the commands
      committed since the last one add up to this many bytes (default
      64 MiB, `0` for by ops alone; only with checkpoints on), so a
      node's log holds about twice this much at most, whatever the
      commands' size (docs/operations.md, "Memory"); every member must
      have the same value;
    * `:replace_after`: ms (at least 1000; default `nil`, off; `:infinity`
      is off too) after which the primary replaces a member it has not
      heard from by a spare running the group, through the same change as
      `reconfigure(Cache, {:replace, lost, spare})`; one change at a time,
      never below a majority. A partition or a restart longer than that
      costs a healthy member its place (docs/operations.md, "Automatic
      replacement");
    * `:tick_ms` and the engine's limits and timeouts (`:batch_max_bytes`,
      `:view_change_ticks`, ...; the table in docs/operations.md lists
      them with their ranges);
    * `:init_arg`: the argument of `c:initial_state/1` (default `[]`); no
      other option reaches it.

  An unknown or misspelled option raises `ArgumentError` naming it.

  ## Keyed groups

  Besides its default group, a module can run many groups, one per key
  (`{Cache, key}`, any term as the key), each with its own state, log,
  members and primary, started and stopped at run time from any node:
  run `{Visor.Groups, module: Cache}` on the nodes that may hold them,
  then `start_group/2`, and `commit({Cache, key}, command)` and the other
  functions here, which take a module (its default group) or `{module,
  key}`. No atom is created per key. See `Visor.Groups` and
  docs/operations.md, "Keyed groups".

  A keyed group's replicas start from `c:initial_state/2` when the module
  defines it: it gets the key, so each entity's group builds its own
  start state (the default group still starts from `c:initial_state/1`,
  which stays required):

      @impl Visor
      def initial_state(_init_arg), do: %{}

      @impl Visor
      def initial_state({:cart, id}, _init_arg), do: %{cart: id, items: []}

  ## Errors

  For every condition in `t:error/0`, the functions return `{:error,
  reason}` rather than raising or exiting; docs/operations.md says what each
  means for the command. Misuse raises in the caller, before anything is
  sent: a bad or unknown option, a timeout that is not `:infinity` or an
  integer in 0..2^32-1 ms; and a `get_in/3` path that does not fit the
  state raises as `Kernel.get_in/2` would. Note that `commit/3` returns the
  callback's reply as is: if your replies can themselves look like
  `{:error, _}`, wrap them. `status/1` always returns a map (`status:
  :not_running` when the group is not started on this node).
  """

  @typedoc """
  A group: a module that `use`s Visor (its default group, started as a
  child `{Cache, opts}`), or `{module, key}`, one of its keyed groups (any
  term as `key`; `Visor.Groups`, `start_group/2`). `{module, nil}` is the
  default group.
  """
  @type group :: module() | {module(), term()}
  @typedoc "Any term; it is encoded with `:erlang.term_to_binary/1`."
  @type command :: term()
  @typedoc """
  Where and when a command was committed, and the state machine version
  it runs under (`c:version/0`). One op of the log may hold several
  commands (concurrent callers' commands, a pipelining caller's batch):
  they share `op`, `view` and `timestamp`, and `index` is the command's
  position among them (from 0, in the order they run, the same on every
  replica), so `{op, index}` is unique along the log.
  """
  @type meta :: %{
          op: pos_integer(),
          index: non_neg_integer(),
          view: non_neg_integer(),
          timestamp: non_neg_integer(),
          version: non_neg_integer()
        }

  @typedoc """
  What can go wrong, as `{:error, reason}`:

    * `:timeout`: no answer in time (no quorum reachable, or overloaded). A
      command that was already handed to the replica **may still be applied
      later**, exactly once; one still waiting in this node's line is not.
    * `{:handle_commit_failed, reason}`: the callback raised (`reason` is the
      exception), threw (`{:throw, value}`), exited (`{:exit, reason}`) or
      returned something else than `{:ok, reply, state}` (`{:bad_return,
      value}`). The state is unchanged on this replica, and on every
      replica as long as `handle_commit` is deterministic and the same on
      every node for the command's `meta.version` (see "Callbacks" above).
    * `{:command_too_large, bytes, max}`: the encoded command is over
      `:batch_max_bytes`; it never reached the log.
    * `:unknown_outcome`: the cluster forgot this node's client session
      (client table full) while the command was in flight: it may or may not
      have been applied.
    * `{:duplicate, op}`: applied once, at `op`, but its reply was not kept.
    * `:refused`: the cluster already holds another command under this
      session's request number (not expected from Visor's own sessions; the
      session is replaced): this command was not applied, and the other's
      reply is never given instead.
    * `:no_member_reachable`: this node is a spare (not a member; see
      docs/operations.md, "Spares"), or holds no replica of the keyed
      group (or its replica's processes are being started again), and
      reached no member before the timeout, or no node named the keyed
      group's members (a node that does not answer may run it). Nothing
      was applied.
    * `{:member_down, node}`: this node is a spare, or holds no replica
      of the keyed group, and the member `node`
      it forwarded the command to went down (disconnected, or its server
      exited) during the call. The command **may or may not have been
      applied** (and may still be, once), as after `:timeout`; it is not
      sent again, which could apply it twice.
    * `{:engine_down, reason}`: the local replica failed (a bug, or a store
      it cannot open; `reason` is an engine error, see docs/nif.md, "Errors");
      commands in flight may or may not have been applied.
    * `{:halted, op}`: this node's replica stopped at the poison command at
      `op` (see `skip/3`); nothing was submitted.
    * `{:skipped, op}`: the command was the poison command at `op`, skipped
      by `skip/3` on every replica that stopped there.
    * `{:setting_mismatch, key, ours, theirs}`: this node's value of a
      setting every member must share differs from the cluster's
      (docs/operations.md, "Settings every member shares"); its replica
      does not start.
    * `{:storage_refused, message}`: disk mode: this node could not write
      its formation record (`message` names the file and why); its
      replica does not start (docs/operations.md, "What happens at start").
    * `{:unsupported_version, version}`: the cluster runs state machine
      `version`, which this node's code does not support (`c:version/0`):
      its replica stopped executing until the code is upgraded (reads,
      `consistency: :local` ones included, are refused too). A command
      refused at the call was not applied; one already in flight when the
      replica stopped was committed, and is applied on the replicas that
      run `version` (here, once upgraded).
    * `:diverged`: a `consistency: :local` read on a node whose state was
      found to differ from the quorum's, until it has recovered the
      quorum's state (status `:diverged`; see docs/operations.md).
    * `:not_running`: the module is not started on this node: no server
      took the call. Nothing was applied.
    * `:no_group`: a keyed group that no connected node running the
      module's `Visor.Groups` holds (never started, or stopped): this
      node runs no server of it (or its server was gone before the call
      reached it) and its host records none, and every connected node
      answered that it runs none; a node that did not answer is never
      counted so (the call gets `:no_member_reachable` at its timeout).
      No server took the call: nothing was applied. A server that
      exits during the call, even when the group is being stopped, gives
      `{:server_down, reason}` instead.
    * `{:no_group_host, node}`: `start_group/2` named a member that is
      not connected or does not run `Visor.Groups` for the module.
    * `{:no_answer, node}`: `start_group/2`: the connected node `node`
      did not say within 5 s what it holds of the key (stalled); it may
      hold it, so nothing started.
    * `{:not_enough_nodes, wanted, found}`: `start_group/2` with
      `replicas: wanted`, and only `found` connected nodes run the host.
    * `{:start_failed, node, reason}`: `start_group/2`: `node`'s processes
      of the group did not start (`reason`, e.g. `initial_state/1`
      raised); the members that had started it stopped it again.
    * `{:server_down, reason}`: this node's server exited during the call
      (crashed, or shut down: the group stopped, or its processes
      restarted after one of them crashed); the command may or may not
      have been applied.
  """
  @type error ::
          :timeout
          | {:handle_commit_failed, term()}
          | {:command_too_large, pos_integer(), pos_integer()}
          | :unknown_outcome
          | {:duplicate, pos_integer()}
          | :refused
          | :no_member_reachable
          | {:member_down, node()}
          | {:engine_down, term()}
          | {:halted, pos_integer()}
          | {:skipped, pos_integer()}
          | {:setting_mismatch, atom(), term(), term()}
          | {:storage_refused, String.t()}
          | {:unsupported_version, non_neg_integer()}
          | :diverged
          | :not_running
          | :no_group
          | {:no_group_host, node()}
          | {:no_answer, node()}
          | {:not_enough_nodes, pos_integer(), non_neg_integer()}
          | {:start_failed, node(), term()}
          | {:server_down, term()}

  @typedoc """
  The options of `commit/3`, `get/2`, `get_in/3` and `skip/3` (a keyword
  list), or a timeout alone, as `GenServer.call/3` takes it.
  """
  @type options :: keyword() | timeout()

  @default_timeout 5_000
  # How long which_groups/2 waits for this node's servers, all together.
  @which_groups_timeout_ms 1_000
  # The longest timeout the runtime represents (receive's `after`, timers).
  @max_timeout 0xFFFF_FFFF
  # Extra time the caller waits beyond its deadline: the server answers
  # `:timeout` itself at the deadline; this only covers a stuck server.
  @grace_ms 1_000

  # Bare timeouts given where options go: `commit(cmd, 10_000)`.
  defguardp is_timeout(t) when t == :infinity or is_integer(t)

  @doc "Builds the state every replica starts from; gets the `init_arg:` option (default `[]`)."
  @callback initial_state(init_arg :: term()) :: term()

  @doc """
  Builds the state a keyed group's replicas start from, from its key
  (`{module, key}`) and the `init_arg:` of the module's `Visor.Groups`:
  one replicated GenServer per entity, each starting from its entity's
  state. Optional: when the module does not define it, a keyed group
  starts from `c:initial_state/1`, as the default group always does. It
  runs on every member, so it must build the same state from the same
  key on every node (no clock, no randomness, no reads of data that
  differs between nodes).
  """
  @callback initial_state(key :: term(), init_arg :: term()) :: term()

  @doc "Applies one committed command: `{:ok, reply, new_state}`."
  @callback handle_commit(command(), state :: term()) ::
              {:ok, reply :: term(), new_state :: term()}

  @doc """
  Like `c:handle_commit/2`, with the command's metadata (`t:meta/0`): its
  op number and its index among the op's commands, the view, the
  primary's timestamp (ns since the epoch, strictly increasing from op to
  op, shared by the commands of one op; the primary's clock kept within
  its quorum's clocks, see docs/protocol.md, "Timestamps") and the state
  machine version it runs under (`c:version/0`). When a module defines both, this one is used.
  """
  @callback handle_commit(command(), meta(), state :: term()) ::
              {:ok, reply :: term(), new_state :: term()}

  @doc """
  Encodes the state for a checkpoint (`checkpoint_every`). Every replica
  encodes the same state at the same op, and the replicas compare the
  checkpoints' digests, so the encoding must be deterministic. Default:
  `:erlang.term_to_binary(state, [:deterministic])`.
  """
  @callback encode_snapshot(state :: term()) :: binary()

  @doc """
  Decodes what `c:encode_snapshot/1` produced, when a replica restarts from
  its checkpoint or catches up by state sync. Default: `:erlang.binary_to_term/1`.
  A raise here fails this node's server (logged, with the reason).
  """
  @callback decode_snapshot(binary()) :: term()

  @doc """
  The state machine version this code supports (an integer in 0..2^64 - 1;
  0 when the module does not define it). The cluster runs one version at
  a time, switched through the log once every member's code supports the
  new one; `meta.version` (`c:handle_commit/3`) is the version a command
  runs under, so a new version of the code can keep the old behaviour for
  the commands committed before the switch. docs/operations.md, "Deploying
  new code".
  """
  @callback version() :: non_neg_integer()

  @optional_callbacks initial_state: 2,
                      handle_commit: 2,
                      handle_commit: 3,
                      encode_snapshot: 1,
                      decode_snapshot: 1,
                      version: 0

  defmacro __using__(use_opts) do
    quote location: :keep, bind_quoted: [use_opts: use_opts] do
      @behaviour Visor
      @before_compile Visor

      # The generated get_in/2 hands Kernel.get_in/2's calls on (see
      # Visor.__get_in__/3), so unqualified get_in(data, keys) still works.
      import Kernel, except: [get_in: 2]

      {child_spec, defaults} = Visor.__use_options__(__MODULE__, use_opts)
      @visor_child_spec child_spec
      @visor_defaults defaults

      @doc "A child spec that starts the replicated group; see `Visor` for options."
      @spec child_spec(keyword()) :: Supervisor.child_spec()
      def child_spec(opts) do
        __MODULE__
        |> Visor.child_spec(Visor.__start_options__(@visor_defaults, opts))
        |> Supervisor.child_spec(@visor_child_spec)
      end

      @doc "Starts this node's replica of the group (normally via `child_spec/1`)."
      @spec start_link(keyword()) :: Supervisor.on_start()
      def start_link(opts),
        do: Visor.start_link(__MODULE__, Visor.__start_options__(@visor_defaults, opts))

      @doc "Commits `command` and returns the reply of `handle_commit`; see `Visor.commit/3`."
      @spec commit(Visor.command(), Visor.options()) :: term() | {:error, Visor.error()}
      def commit(command, opts \\ []), do: Visor.commit(__MODULE__, command, opts)

      @doc """
      Commits `command` without waiting: a reference now, `{ref, result}`
      later. See `Visor.pipeline/3` and `Visor.await/2`.
      """
      @spec pipeline(Visor.command(), Visor.options()) :: reference()
      def pipeline(command, opts \\ []), do: Visor.pipeline(__MODULE__, command, opts)

      @doc "The state; linearizable unless `consistency: :local`. See `Visor.get/2`."
      @spec get(Visor.options()) :: term() | {:error, Visor.error()}
      def get(opts \\ []), do: Visor.get(__MODULE__, opts)

      @doc """
      `Kernel.get_in/2` of the state, read as `get/1` does (see
      `Visor.get_in/3`), when called with a path (a list) and options.
      Any other call is `Kernel.get_in(data, keys)` itself.
      """
      @spec get_in(term(), term()) :: term() | {:error, Visor.error()}
      def get_in(path, opts \\ []), do: Visor.__get_in__(__MODULE__, path, opts)

      @doc "This node's view of the cluster; see `Visor.status/1`."
      @spec status() :: map()
      def status, do: Visor.status(__MODULE__)

      @doc "Starts the keyed group `key` of this module; see `Visor.start_group/2`."
      @spec start_group(term(), keyword()) :: {:ok, map()} | {:error, term()}
      def start_group(key, opts), do: Visor.start_group({__MODULE__, key}, opts)

      # Without a default argument: a module may override either arity alone.
      @doc false
      def start_group(key), do: Visor.start_group({__MODULE__, key}, [])

      @doc "Stops the keyed group `key` of this module; see `Visor.stop_group/2`."
      @spec stop_group(term(), keyword()) :: :ok | {:error, :no_group}
      def stop_group(key, opts), do: Visor.stop_group({__MODULE__, key}, opts)

      @doc false
      def stop_group(key), do: Visor.stop_group({__MODULE__, key}, [])

      @doc "This module's keyed groups with a replica on this node; see `Visor.which_groups/1`."
      @spec which_groups() :: [map()]
      def which_groups, do: Visor.which_groups(__MODULE__)

      @doc false
      # `use Visor`'s default start options, which Visor.Groups applies too.
      def __visor_defaults__, do: @visor_defaults

      # A module written before keyed groups may define functions of
      # these names itself: its own take over, as child_spec/1's do.
      defoverridable child_spec: 1,
                     start_group: 1,
                     start_group: 2,
                     stop_group: 1,
                     stop_group: 2,
                     which_groups: 0
    end
  end

  # The child spec keys `use Visor, opts` may set, as `use GenServer` does.
  @child_spec_keys [:id, :restart, :shutdown, :significant]

  @doc false
  # `use Visor, opts`: child spec keys, and default start options (merged
  # under the child spec's own). Unknown keys fail the compilation.
  def __use_options__(module, opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "use Visor expects a keyword list, got: #{inspect(opts)}"
    end

    {child_spec, defaults} = Keyword.split(opts, @child_spec_keys)

    case Keyword.keys(defaults) -- Visor.Options.known_keys() do
      [] ->
        {child_spec, defaults}

      unknown ->
        raise ArgumentError,
              "use Visor in #{inspect(module)}: unknown option " <>
                Enum.map_join(unknown, ", ", &to_string/1) <>
                " (child spec keys: #{Enum.map_join(@child_spec_keys, ", ", &to_string/1)}; " <>
                "start options: see Visor)"
    end
  end

  @doc false
  # The start options: `use Visor`'s defaults under the given ones. A
  # membership given replaces the default one, of either kind.
  def __start_options__(defaults, opts) do
    defaults =
      if Keyword.has_key?(opts, :nodes) or Keyword.has_key?(opts, :cluster_size),
        do: Keyword.drop(defaults, [:nodes, :cluster_size]),
        else: defaults

    Keyword.merge(defaults, opts)
  end

  @doc false
  # A module's generated get_in/2: the group's read for get_in(path, opts)
  # (a list and options), Kernel.get_in/2 for any other call, so that the
  # module's own code can call get_in(data, keys) unqualified. Kernel.get_in
  # raises on a list with keyword keys, so no working call changes meaning.
  def __get_in__(module, path, opts) when is_list(path) and (is_list(opts) or is_timeout(opts)) do
    if is_list(opts) and not Keyword.keyword?(opts),
      do: Kernel.get_in(path, opts),
      else: get_in(module, path, opts)
  end

  def __get_in__(_module, data, keys), do: Kernel.get_in(data, keys)

  @doc false
  defmacro __before_compile__(env) do
    unless Module.defines?(env.module, {:handle_commit, 2}) or
             Module.defines?(env.module, {:handle_commit, 3}) do
      raise CompileError,
        file: env.file,
        line: env.line,
        description:
          "#{inspect(env.module)} uses Visor but defines neither handle_commit/2 nor /3"
    end

    :ok
  end

  @doc """
  The child spec of `module`'s group on this node: a supervisor holding the
  formation process and the server. See the moduledoc for `opts`, which
  `start_link/2` checks.

      iex> Visor.child_spec(Cache, cluster_size: 3)
      %{id: Cache, start: {Visor, :start_link, [Cache, [cluster_size: 3]]}, type: :supervisor}
  """
  @spec child_spec(group(), keyword()) :: Supervisor.child_spec()
  def child_spec(module, opts) do
    %{
      id: module,
      start: {Visor, :start_link, [module, opts]},
      type: :supervisor
    }
  end

  @doc """
  Starts `module`'s group on this node, linked to the caller.

  The options are checked first: a mistake raises `ArgumentError` naming
  it, and nothing is started.

      iex> Visor.start_link(Cache, cluster_size: 3, pool_sise: 8)
      ** (ArgumentError) Cache: unknown option pool_sise; pool_sise (did you mean pool_size?); arguments for initial_state/1 go under init_arg:

      iex> Visor.start_link(Cache, storage: :disk)
      ** (ArgumentError) Cache: give :nodes (the member nodes) or :cluster_size (how many to discover)
  """
  @spec start_link(group(), keyword()) :: Supervisor.on_start()
  def start_link(module, opts) do
    Visor.Supervisor.start_link(Visor.Options.validate!(module, opts))
  end

  @doc """
  Forgets, on this node, that its replica of `module`'s group ran (memory
  mode): the operator's way to let the group form a new, empty cluster
  after a majority of its members lost their memory. Call it only while
  the group is stopped on this node (else `{:error, :running}`), on every
  node, then start the group again everywhere (docs/operations.md).

  Without it, this node remembers for the VM's life that its replica ran,
  whoever restarts the group (its own supervisor giving up, its parent, or
  an operator), and a restarted replica always rejoins and recovers: no
  automatic restart can turn a lost state into a fresh, empty one.
  """
  @spec forget(module()) :: :ok | {:error, :running}
  def forget(module) when is_atom(module), do: Visor.Lifetime.forget(module)

  @doc """
  Starts the keyed group `{module, key}` (a replicated GenServer of its
  own, its state from `c:initial_state/1`) on its members, from any node,
  and returns once a quorum of them has formed it:
  `{:ok, %{members: [node], primary: node}}`.

  The members are `members: [node]` if given, else the `members:` of the
  module's `Visor.Groups` options, else `replicas: n` (default: the host's
  `replicas:`, 3 unless set) chosen by rendezvous hashing of the group
  among the connected nodes (this one included) that run `Visor.Groups`
  for the module. Each member's host starts it (all at once), with the
  host's group options. `timeout:` (ms, default 15000) bounds the wait;
  after it, `{:error, :timeout}`, and the group goes on forming. An
  unknown option, or a bad `members:`, `replicas:` or `timeout:`, raises
  `ArgumentError`.

  Idempotent: a group already running with the same members is one
  group, `{:error, {:already_started, %{members:, primary:}}}`, and two
  nodes starting one new key at once start one group (its generation is
  one more than the highest the hosts stopped, not drawn at random). One
  instance per key: every connected host is asked first which instance
  of the key it holds (running, or restarting), and if one holds other
  members, `{:error, {:already_started, %{members: held}}}` and nothing
  starts. Every connected node must answer within 5 s (one that is
  stalled may hold the key): `{:error, {:no_answer, node}}` otherwise;
  every member must be connected and run the host:
  `{:error, {:no_group_host, member}}` otherwise. A replica of a stopped
  instance still running on a member (cut off at the stop) is stopped
  first; a new instance never shares a cluster id with a stopped one.
  A member that refuses a new group (it holds another instance of the
  key, say) fails the call, and the members that started it stop it
  again. A member whose start fails (`{:start_failed, node, reason}`:
  `initial_state/1` raised, say) fails the call too, but the group is
  left on the others (it may have formed without that member): call
  `start_group/2` again, or `stop_group/2`. A group that ran already is
  left running. Two concurrent calls with different members for
  one new key may both fail (docs/operations.md, "Keyed groups").
  Errors: `{:no_group_host, node}`, `{:no_answer, node}`, `{:not_enough_nodes,
  wanted, found}` (`wanted` is `replicas:`, else the host's, 3 unless
  set), `{:start_failed, node, reason}` (`t:error/0`). A key is never
  turned into an atom; keys equal under `==` for floats (`0.0`, `-0.0`)
  are one group (`Visor.Options.canonical_key/1`).

      iex> Visor.start_group({Cache, "k"}, members: [:"nowhere@host"])   # runs no Visor.Groups
      {:error, {:no_group_host, :"nowhere@host"}}
  """
  @spec start_group({module(), term()}, keyword()) ::
          {:ok, %{members: [node()], primary: node()}} | {:error, term()}
  def start_group(group, opts \\ []) do
    case group!(group) do
      {_module, _key} = group ->
        Visor.Groups.Control.start(group, opts)

      module ->
        raise ArgumentError,
              "#{inspect(module)}: the default group is started as a child {#{inspect(module)}, opts}"
    end
  end

  @doc """
  Stops the keyed group `{module, key}` on every connected node that runs
  it, and forgets it there (a group started again under the same key is a
  new, empty one): `:ok`, or `{:error, :no_group}` when no connected node
  ran it. Every connected node is asked which instance of the group it
  holds, then told to stop those instances: a stop that reaches a node
  late (it stalled) stops nothing started since. A member that is disconnected meanwhile keeps its replica until
  it connects again to a node that stopped the group, which tells it to
  stop (each such node keeps a tombstone of the group for its VM's life,
  and in disk mode on disk),
  or a `start_group/2` of the key finds it: it is never given back to the
  nodes that stopped it, nor joins a new group of the key with its old
  log. Calls to the group then return `{:error, :no_group}`. `opts` is
  reserved.

      iex> Visor.stop_group({Cache, "never started"})
      {:error, :no_group}
  """
  @spec stop_group({module(), term()}, keyword()) :: :ok | {:error, :no_group}
  def stop_group(group, _opts \\ []) do
    case group!(group) do
      {_module, _key} = group -> Visor.Groups.Control.stop(group)
      module -> raise ArgumentError, "#{inspect(module)}: the default group is not a keyed group"
    end
  end

  @doc """
  The keyed groups of `module` with a replica on this node, as
  `[%{key:, members:, status:, role:}]` (`status` and `role` as
  `status/1` shows them; `:unresponsive`, role `:none`, when this node's
  server does not answer within 1 s: the servers are asked at once, so
  this takes at most about 1 s however many are busy). Empty when
  `Visor.Groups` does not run here.

  `which_groups(module, :cluster)` asks this node and every node it is
  connected to (all at once, each answering as above) and merges their
  answers, one entry per group: `[%{key:, members:, replicas: [%{node:,
  status:, role:}]}]`, a replica for each node that answered within 5 s
  (a node that does not, stalled or cut off, is left out).

      iex> Visor.which_groups(Cache)
      []
  """
  @spec which_groups(module(), :local | :cluster) :: [map()]
  def which_groups(module, where \\ :local)

  def which_groups(module, :cluster) when is_atom(module),
    do: Visor.Groups.Control.which_groups(module)

  def which_groups(module, :local) when is_atom(module) do
    groups = Visor.Groups.local(module)
    # Every server is asked at once, and waited for until one deadline:
    # busy servers cost 1 s in all, not 1 s each.
    requests =
      for {_key, _instance, server} <- groups,
          do: server && :gen_server.send_request(server, :status)

    deadline = System.monotonic_time(:millisecond) + @which_groups_timeout_ms

    for {{key, %{members: members}, _server}, request} <- Enum.zip(groups, requests) do
      {status, role} =
        with true <- request != nil,
             left = max(deadline - System.monotonic_time(:millisecond), 0),
             {:reply, %{status: status, role: role}} <-
               :gen_server.receive_response(request, left) do
          {status, role}
        else
          _no_answer -> {:unresponsive, :none}
        end

      %{key: key, members: members, status: status, role: role}
    end
  end

  @doc """
  Where the servers of the keyed group `{module, key}` run, among this
  node and the nodes it is connected to (all asked at once; a node that
  does not answer within 5 s is left out): `[{node, pid}]`, whatever the
  members each of them runs it with.

      iex> Visor.lookup({Cache, "never started"})
      []
  """
  @spec lookup({module(), term()}) :: [{node(), pid()}]
  def lookup(group) do
    case group!(group) do
      {_module, _key} = group -> Visor.Groups.Control.lookup(group)
      module -> raise ArgumentError, "#{inspect(module)}: the default group is not a keyed group"
    end
  end

  # A group as the functions take it: the module for its default group
  # (`{module, nil}` included), `{module, key}` for a keyed one.
  defp group!(module) when is_atom(module) and module != nil, do: module
  defp group!({module, nil}) when is_atom(module) and module != nil, do: module
  defp group!({module, _key} = group) when is_atom(module) and module != nil, do: group

  defp group!(other) do
    raise ArgumentError,
          "expected a group (a module, or {module, key}), got: #{inspect(other)}"
  end

  @doc """
  Commits `command` through the replicated log and returns the reply of
  `handle_commit` as this node's replica computed it. Works from any node
  running the group: the local replica forwards the command to the
  primary. On a spare (a node running the group that is not a member),
  the call goes to a member, the primary first when known, and returns
  what it returns there (`Visor.Forward`; docs/operations.md, "Spares").

  Options: `:timeout` in ms (default #{@default_timeout}; at most
  #{@max_timeout}, about 49 days, or `:infinity`, which waits that long),
  also given alone as `GenServer.call/3` takes it: `commit(module, command,
  10_000)`. After it, the result is `{:error, :timeout}` and the command
  may still be applied later (exactly once). A bad timeout raises
  `ArgumentError` before anything is sent. The other errors are listed in
  `t:error/0`.

      iex> Visor.commit(Cache, {:add, %{}}, timeout: -1)
      ** (ArgumentError) timeout must be :infinity or an integer in 0..4294967295 (ms), got: -1

      iex> Visor.commit(Cache, {:add, %{}})   # Cache is not started on this node
      {:error, :not_running}
  """
  @spec commit(group(), command(), options()) :: term() | {:error, error()}
  def commit(group, command, opts \\ []) do
    group = group!(group)
    timeout = opts |> options!() |> timeout!()
    metadata = %{group: group, node: node()}

    Visor.Telemetry.span([:visor, :commit], metadata, fn ->
      payload = :erlang.term_to_binary(command)

      case call(group, {:commit, payload}, timeout) do
        {:ok, reply} -> {reply, Map.put(metadata, :outcome, :ok)}
        {:error, reason} = error -> {error, outcome(metadata, reason)}
      end
    end)
  end

  @doc """
  Commits `command` as `commit/3` does, without waiting: returns a
  reference at once, and the caller gets exactly one message for it,

    * `{ref, result}`, where `result` is what `commit/3` would have
      returned (the reply of `handle_commit`, or `{:error, reason}`, the
      reasons of `t:error/0`, `:timeout` at the deadline included), or
    * `{:DOWN, ref, :process, server, reason}` if this node's server
      exited first (for a keyed group with no replica here, the member's
      server the command went to): the command may or may not have been
      applied (and if not yet, may still be, once), as after `{:error,
      {:server_down, reason}}`.

  The `:timeout` comes at the deadline, or up to 1 s past it when this
  node's server cannot answer in time (busy in a slow `handle_commit`): a
  backstop sends it then, through the same alias, which the runtime
  closes at the first message (or the `:DOWN`), so it is never a second
  one. `timeout: :infinity` has no backstop.

  `await/2` waits for that message and turns the second form into the
  error `commit/3` returns. Options as for `commit/3` (`:timeout`, from
  now; a bad one raises before anything is sent). Telemetry: the
  `[:visor, :pipeline, :start]` event here, and `[:visor, :pipeline,
  :stop]` from this node's server when it sends the result (none after a
  `:DOWN`).

  **Order.** The commands one process pipelines to a group are applied in
  the order it sent them: of those applied, none is applied after one it
  sent later, even across a primary's failure and a command's timeout (this
  node's server hands a caller's next commands to the log only once its
  replica has settled the previous ones, and sends them together, as one
  entry, which is also where the throughput comes from). A command that
  got `:DOWN`, `{:error, {:member_down, _}}` or `{:error, {:engine_down,
  _}}` (something between the caller and the log died with it in hand)
  may still be applied after the caller's later ones, as after such an
  error from `commit/3`. The results arrive in the same
  order, except those of commands whose deadline passed first.
  docs/operations.md, "Pipelined commits".

      iex> ref = Visor.pipeline(Cache, {:add, %{}})   # Cache is not started on this node
      iex> Visor.await(ref)
      {:error, :not_running}
  """
  @spec pipeline(group(), command(), options()) :: reference()
  def pipeline(group, command, opts \\ []) do
    group = group!(group)
    timeout = opts |> options!() |> timeout!()
    started = System.monotonic_time()
    now = System.convert_time_unit(started, :native, :millisecond)
    deadline = if timeout == :infinity, do: now + @max_timeout, else: now + timeout
    payload = :erlang.term_to_binary(command)
    metadata = %{group: group, node: node()}

    case Visor.Supervisor.whereis(group, :server) do
      nil when is_tuple(group) ->
        pipeline_keyed(group, payload, deadline, timeout)

      nil ->
        ref = make_ref()
        pipeline_started(metadata, ref, started)
        send(self(), {ref, {:error, :not_running}})
        duration = System.monotonic_time() - started
        stop = metadata |> outcome(:not_running) |> Map.put(:telemetry_span_context, ref)
        Visor.Telemetry.execute([:visor, :pipeline, :stop], %{duration: duration}, stop)
        ref

      server ->
        # The answer comes to this alias; the monitor says if the server
        # exits first. The first message through the alias, or the
        # :DOWN, deactivates it and removes the monitor: one message,
        # whichever comes first, the backstop's :timeout included.
        ref = :erlang.monitor(:process, server, alias: :reply_demonitor)
        pipeline_started(metadata, ref, started)
        timer = if timeout != :infinity, do: Visor.Backstop.arm(group, ref, backstop_ms(timeout))
        send(server, {:visor_pipeline, ref, self(), payload, deadline, started, timer})
        ref
    end
  end

  # A keyed group with no replica on this node: the command goes to a
  # member's server (the first connected one that runs it, found before
  # the deadline: pipeline/3 returns within its timeout), which answers
  # through the caller's alias itself (Visor.Server, :visor_pipelined with
  # the alias as the spare). No Visor.Backstop runs here: a process of its
  # own sends the backstop's :timeout through the alias. No telemetry span.
  defp pipeline_keyed(group, payload, deadline, timeout) do
    case Visor.Forward.keyed_server(group, deadline) do
      {:error, _reason} = error ->
        ref = make_ref()
        send(self(), {ref, error})
        ref

      server ->
        ref = :erlang.monitor(:process, server, alias: :reply_demonitor)
        left = max(deadline - System.monotonic_time(:millisecond), 0)
        send(server, {:visor_pipelined, ref, ref, self(), payload, left})

        if timeout != :infinity do
          ms = backstop_ms(timeout)

          spawn(fn ->
            Process.sleep(ms)
            send(ref, {ref, {:error, :timeout}})
          end)
        end

        ref
    end
  end

  # As commit/3's call (backstop/1): the server answers at the deadline;
  # this covers a server that cannot (busy in a slow handle_commit, or a
  # member that dropped a spare's relayed command).
  defp backstop_ms(timeout), do: min(timeout + @grace_ms, @max_timeout)

  defp pipeline_started(metadata, ref, started) do
    measurements = %{monotonic_time: started, system_time: System.system_time()}
    metadata = Map.put(metadata, :telemetry_span_context, ref)
    Visor.Telemetry.execute([:visor, :pipeline, :start], measurements, metadata)
  end

  @doc """
  Waits for the message of `pipeline/3`'s `ref` and returns its result,
  as `commit/3` would have returned it (a `:DOWN` of this node's server
  is `{:error, {:server_down, reason}}`, or `{:error, :not_running}`
  when the server was gone before the command was sent: reason
  `:noproc`).

  After `timeout` (ms, or `:infinity`, the default: the server answers
  by the command's own deadline) it returns `{:error, :timeout}`, and no
  message for `ref` comes later; the command may still be applied.
  """
  @spec await(reference(), timeout()) :: term() | {:error, error()}
  def await(ref, timeout \\ :infinity) when is_reference(ref) and is_timeout(timeout) do
    receive do
      {^ref, result} -> result
      {:DOWN, ^ref, :process, _server, reason} -> exit_error({reason, :pipeline})
    after
      timeout ->
        # No answer may come after this: the alias is gone, and one on its
        # way already is taken out of the mailbox.
        :erlang.unalias(ref)
        Process.demonitor(ref, [:flush])

        receive do
          {^ref, result} -> result
        after
          0 -> {:error, :timeout}
        end
    end
  end

  @doc """
  The group's state. On a spare, a member reads it (as `commit/3` says).

  Options:

    * `consistency: :linearizable` (default): reflects every commit that
      finished, anywhere, before this call started. Costs a round trip from
      the primary to a quorum (a read index: the primary confirms it still
      leads; nothing is written to the log), then the local replica answers
      once it has executed up to that point.
    * `consistency: :local`: this node's replica's state right now, with no
      network round trip. It may lag the cluster (a backup executes a commit
      a moment after the primary does, at most about one tick later when
      idle; a cut-off node may lag a lot), but it
      never goes backwards and only ever shows committed state. On a
      spare, which has no state of its own, it is served as
      `:linearizable` by a member: a member's local state could go
      backwards between two reads that different members serve.
    * `timeout:` in ms (default #{@default_timeout}), or `:infinity`, as
      for `commit/3` (also given alone, as `get(module, 10_000)`).

  Any other `consistency` raises before anything is sent:

      iex> Visor.get(Cache, consistency: :eventual)
      ** (ArgumentError) unknown consistency :eventual
  """
  @spec get(group(), options()) :: term() | {:error, error()}
  def get(group, opts \\ []), do: read(group!(group), [], opts)

  @doc """
  `Kernel.get_in(state, path)`, read as `get/2` reads (same options),
  computed on this node's server (a member's, on a spare) so only the
  result is copied. A path that
  does not fit the state raises here, in the caller, as `Kernel.get_in/2`
  would. User code in the path (an accessor function such as
  `Access.all/0`, a struct's `Access` implementation) runs here, in the
  caller, on the part of the state the path reached before it: it costs a
  copy of that part, and can neither stall nor crash the replica.
  """
  @spec get_in(group(), [term()], options()) :: term() | {:error, error()}
  def get_in(group, path, opts \\ []) when is_list(path), do: read(group!(group), path, opts)

  @doc """
  Skips the poison command at `op`: an operator's way out of a command
  whose `handle_commit` kills the server on every replica (which Visor
  cannot trap: `Process.exit(self(), :kill)`).

  A server that died inside `handle_commit` at the same op twice in a row
  stops executing there, logs an error naming the op, and shows it in
  `status().poison` (`%{op: op, crashes: n}`); its commits and
  linearizable reads return `{:error, {:halted, op}}`. `skip/3` commits a
  command that names `op`, from any node running the group: every replica
  stopped at `op` drops that op's commands (their callers get `{:error,
  {:skipped, op}}`) and executes again from the next op. A replica that
  executed `op` without dying ignores it. Returns `:ok` once committed,
  or an error as `commit/3` does (`:timeout` option likewise). It emits
  the `[:visor, :skip]` span (docs/operations.md, "Telemetry").
  """
  @spec skip(group(), pos_integer(), options()) :: :ok | {:error, error()}
  # An op is a u64: a larger one would wrap onto another op in the payload.
  def skip(group, op, opts \\ []) when is_integer(op) and op in 1..0xFFFF_FFFF_FFFF_FFFF do
    group = group!(group)
    timeout = opts |> options!() |> timeout!()
    metadata = %{group: group, node: node(), op: op}

    Visor.Telemetry.span([:visor, :skip], metadata, fn ->
      case call(group, {:skip, op}, timeout) do
        {:ok, _} -> {:ok, Map.put(metadata, :outcome, :ok)}
        {:error, reason} = error -> {error, outcome(metadata, reason)}
      end
    end)
  end

  @reconfigure_timeout 30_000

  @typedoc "A membership change: a condition on the member list (`reconfigure/3`)."
  @type change_request ::
          {:remove, node()} | {:set, [node()]} | {:add, node()} | {:replace, node(), node()}

  @doc """
  Changes the group's member list while it runs (docs/operations.md,
  "Membership changes"), through the log: the old list's quorum commits
  the change, and the new list takes over at once, nothing acknowledged
  lost, commands committing throughout. Returns `{:ok, %{epoch:,
  members:}}` once the new list is in force on the node that asked (the
  `epoch` counts the changes; `members` in the order that decides the
  primaries), or `{:error, reason}`.

  Each request is a condition on the list, and a call whose condition
  already holds returns `{:ok, ...}` at once, so calling again after
  `{:error, :timeout}` tells whether the change happened:

    * `{:remove, node}`: holds when `node` is not a member;
    * `{:set, nodes}`: holds when the members are exactly `nodes` (in any
      order);
    * `{:add, node}`: holds when `node` is a member;
    * `{:replace, old, new}`: holds when `old` is not a member and `new`
      is.

  A node to add must be connected and run the group as a spare (started
  with the group's options, `nodes:` the list the group was formed with):
  it first catches up as a learner, then enters the new list as a member.

  Errors: `{:change_in_progress, epoch}` (another change is under way, or
  the list moved on: not made, and never will be), `{:not_a_member,
  node}` (`replace` names a node outside the list), `:no_quorum` (the new
  list would lack a live quorum, or the primary was not reached, by the
  deadline: not made, never will be), `{:unreachable, node}` (a node to
  add is not connected, runs no spare of the group, holds a store of the
  group that is not `removed`, or its learner was never heard by the
  deadline: not made, never will be), `{:too_many_members, 6}`,
  `:last_member` (a group keeps at
  least one), `:timeout` (no definite answer in time: the change **may**
  still happen; call again with the same request), `{:unsupported,
  :keyed_groups}` (keyed groups keep
  their members for now), `:forming` (this node's replica does not run
  yet), `:malformed_request`, and those of `commit/3` for a call that
  could not reach a member (`:not_running`, `:no_member_reachable`, ...).
  A node that is not a member (a spare, or one left out) passes the call
  on to a member.

  Options: `:timeout` in ms (default #{@reconfigure_timeout}). A request
  of another shape raises `ArgumentError` before anything is sent.
  """
  @spec reconfigure(group(), change_request(), options()) ::
          {:ok, %{epoch: non_neg_integer(), members: [node()]}} | {:error, term()}
  def reconfigure(group, request, opts \\ []) do
    group = group!(group)

    opts = opts |> options!() |> Keyword.put_new(:timeout, @reconfigure_timeout)

    timeout = timeout!(opts)

    unless Visor.Server.Changes.request?(request) do
      raise ArgumentError,
            "a change is {:remove, node}, {:set, [node, ...]} (distinct nodes), " <>
              "{:add, node} or {:replace, old, new}, got: #{inspect(request)}"
    end

    call(group, {:reconfigure, request}, timeout)
  end

  @doc """
  This node's view of the group: `%{status:, role:, view:, op:, commit:,
  primary:, replicas: [%{index:, node:, role:, health:}], ...}`.

  `status` is `:forming`, `:starting` (disk mode: the store is being
  opened), `:recovering` (this node restarted and its replica is fetching
  the state from the others), `:normal`, `:view_change`, `:diverged` (its
  state differs from the quorum's; it recovers the quorum's by state sync),
  `:spare` (its `cluster`, `view`, `primary` and `replicas` are those of
  the first member that answers within 1 s, `health` as this node sees
  it), `:refused` (this node's shared settings differ from the
  cluster's, `refused` holding `{:setting_mismatch, key, ours, theirs}`;
  or, in disk mode, its formation record could not be written:
  `{:storage_refused, message}`) or
  `:failed`; `poison` is `%{op:, crashes:}` when the replica stopped at a
  poison command (`skip/3`); `version` is `%{running:, supported:,
  blocked:}` (the state machine version this replica runs, the one this
  node's code supports, and `%{op:, version:}` when it stopped because its
  code does not support the cluster's; see "Versions" above); `role` is
  `:primary`, `:backup` or `:none`; a replica's
  `health` is `:self`, `:connected` or `:disconnected` (Erlang distribution's
  view). `commit` is the highest op executed here, `commit_max` the highest
  known committed; `stats` holds the engine's and the server's counters;
  `storage` is `%{mode: :memory}` or, in disk mode, `%{mode: :disk,
  data_dir:, opened: :created | :restarted | :recovering | :repairing | nil,
  error:, syncs:, wal_bytes:, wal_size:, compactions:, checkpoint:}`. When this node's server does not answer, `status`
  is `:not_running` (the group is not started here) or `:unresponsive`,
  with the reason in `error` and the other keys as for a replica that does
  not run (`primary: nil`, `replicas: []`), so the map is always safe to
  read:

      iex> status = Visor.status(Cache)   # Cache is not started on this node
      iex> {status.status, status.primary, status.replicas}
      {:not_running, nil, []}

  A keyed group's map also has `group: {module, key}`. On a node with no
  replica of it, it is a spare's (`:spare`, where the cluster stands as a
  member sees it), `status: :no_group` (`error: :no_group`) when every
  connected node says it runs none of the group, or `status: :unresponsive`
  (`error: :no_member_reachable`) when none answered within 1 s:

      iex> Visor.status({Cache, "never started"}) |> Map.take([:status, :group])
      %{status: :no_group, group: {Cache, "never started"}}
  """
  @spec status(group()) :: map()
  def status(group) do
    case group!(group) do
      {_module, _key} = group -> status_keyed(group)
      module -> status_of(Visor.Supervisor.name(module, :server), module)
    end
  end

  # A keyed group's status names it, and on a node with no replica of it
  # is a spare's (where the cluster stands, from a member), or says
  # `:no_group`.
  defp status_keyed(group) do
    status =
      case Visor.Supervisor.whereis(group, :server) do
        nil -> Visor.Forward.status_keyed(group, Visor.Server.Status.unavailable(node(), nil))
        server -> status_of(server, group)
      end

    Map.put(status, :group, group)
  end

  defp status_of(server, group) do
    case GenServer.call(server, :status, @default_timeout) do
      %{status: :spare} = status -> Visor.Forward.status(group, status)
      status -> status
    end
  catch
    :exit, reason ->
      {:error, error} = exit_error(reason)
      Visor.Server.Status.unavailable(node(), error)
  end

  defp read(group, path, opts) do
    opts = options!(opts)
    timeout = timeout!(opts)

    consistency = Keyword.get(opts, :consistency, :linearizable)

    request =
      case consistency do
        :linearizable -> {:read, path}
        :local -> {:read_local, path}
        other -> raise ArgumentError, "unknown consistency #{inspect(other)}"
      end

    metadata = %{group: group, node: node(), consistency: consistency}

    Visor.Telemetry.span([:visor, :read], metadata, fn ->
      case call(group, request, timeout) do
        {:ok, value} -> {value, Map.put(metadata, :outcome, :ok)}
        {:error, reason} = error -> {error, outcome(metadata, reason)}
        # A path that does not fit the state raises, as Kernel.get_in/2 does.
        {:raise, kind, reason, stacktrace} -> :erlang.raise(kind, reason, stacktrace)
        # Where the path reaches user code (an accessor), it runs here.
        {:get_in, data, rest} -> {Kernel.get_in(data, rest), Map.put(metadata, :outcome, :ok)}
      end
    end)
  end

  defp outcome(metadata, reason), do: Visor.Telemetry.outcome(metadata, reason)

  # Checked before anything is sent: a timeout the runtime cannot
  # represent must not fail the caller after its command went out.
  defp options!(timeout) when is_timeout(timeout), do: [timeout: timeout]
  defp options!(opts) when is_list(opts), do: opts

  defp options!(other) do
    raise ArgumentError,
          "expected options (a keyword list) or a timeout (ms or :infinity), got: #{inspect(other)}"
  end

  defp timeout!(opts) do
    case Keyword.get(opts, :timeout, @default_timeout) do
      :infinity ->
        :infinity

      timeout when is_integer(timeout) and timeout in 0..@max_timeout ->
        timeout

      other ->
        raise ArgumentError,
              "timeout must be :infinity or an integer in 0..#{@max_timeout} (ms), " <>
                "got: #{inspect(other)}"
    end
  end

  # The server answers `{:error, :timeout}` itself at the deadline (for
  # :infinity, after @max_timeout, the longest a timer waits); the call's
  # own timeout is a backstop for a server that cannot answer. On a spare,
  # the call goes on to a member (Visor.Forward) with the time left; so
  # does a call on a keyed group with no replica on this node.
  defp call({_module, _key} = group, request, timeout) do
    deadline = deadline(timeout)

    case Visor.Supervisor.whereis(group, :server) do
      nil ->
        Visor.Forward.call_keyed(group, request, deadline, &backstop/1)

      server ->
        case server_call(server, request, deadline) do
          # The server was gone before the call reached it (stopped, or
          # its processes restarting): nothing was sent, so the other
          # members may take it, or say that no node runs the group.
          {:error, :not_running} ->
            Visor.Forward.call_keyed(group, request, deadline, &backstop/1)

          reply ->
            reply
        end
    end
  end

  defp call(module, request, timeout) do
    deadline = deadline(timeout)

    case server_call(Visor.Supervisor.name(module, :server), request, deadline) do
      {:error, :spare} -> Visor.Forward.call(module, request, deadline, &backstop/1)
      reply -> reply
    end
  end

  defp deadline(timeout) do
    now = System.monotonic_time(:millisecond)
    if timeout == :infinity, do: now + @max_timeout, else: now + timeout
  end

  defp server_call(server, request, deadline) do
    GenServer.call(server, {request, deadline}, backstop(deadline))
  catch
    :exit, reason -> exit_error(reason)
  end

  # The call's own timeout for `deadline`: none for `:infinity`'s.
  defp backstop(deadline) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)
    if left >= @max_timeout, do: :infinity, else: min(left + @grace_ms, @max_timeout)
  end

  defp exit_error({:timeout, _}), do: {:error, :timeout}
  # No server took the call: nothing was sent. A server that exits during
  # the call, even a clean shutdown (stopped, or its group's processes
  # restarting after a sibling's crash), may have handed the command on.
  defp exit_error({:noproc, _}), do: {:error, :not_running}
  defp exit_error({reason, _}), do: {:error, {:server_down, reason}}
  defp exit_error(reason), do: {:error, {:server_down, reason}}
end
