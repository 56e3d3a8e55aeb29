defmodule Visor.Groups.Control do
  @moduledoc false
  # The cluster-wide operations on keyed groups, run in the caller's
  # process on any node (`Visor.start_group/2`, `Visor.stop_group/2`,
  # `Visor.lookup/1`, and the members a call on a node without a replica
  # goes to): each asks the nodes concerned through `:erpc`, all at once,
  # and their group hosts (`Visor.Groups.Host`) do the work there.
  #
  # Only connected nodes are asked: connecting to an unreachable host can
  # block for seconds. A node that answers that it cannot (disconnected
  # meanwhile, or without Visor's code) counts as one that does not run
  # the host. One that does not answer in time (stalled) may run the
  # group: a start refuses to go on without its answer (`start/2`), and
  # for a keyed group's members (`members/2`) it does not count as one
  # that runs none.

  alias Visor.{Groups, Lifetime}

  # How long a node is waited for when asked what it runs.
  @ask_timeout_ms 5_000
  # How long start_group/2 waits for a quorum to form, by default.
  @start_timeout_ms 15_000
  @poll_ms 20
  # The calling process's kept members of keyed groups (`members/2`), and
  # how many groups it keeps at most (all are dropped when it is full).
  @cache {__MODULE__, :members}
  @cache_size 256

  @start_options [:members, :replicas, :timeout]

  @doc "See `Visor.start_group/2`."
  @spec start({module(), term()}, keyword()) :: {:ok, map()} | {:error, term()}
  def start({module, key}, opts) do
    group = {module, Visor.Options.canonical_key(key)}
    deadline = System.monotonic_time(:millisecond) + options!(module, opts)

    with {:ok, hosts} <- hosts(group),
         {:ok, members} <- members_for(group, opts, hosts),
         {:ok, instance, existed?} <- instance(group, members, hosts) do
      case started(group, instance, existed?, deadline) do
        {:error, _} = error ->
          error

        started ->
          case await_quorum(group, members, deadline) do
            {:ok, info} when started == :already_started -> {:error, {:already_started, info}}
            result -> result
          end
      end
    end
  end

  # Checks start_group's options, as `Visor.Options` does a group's: a
  # misspelled one raises rather than being ignored. Returns the timeout.
  defp options!(module, opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "start_group's options must be a keyword list, got: #{inspect(opts)}"
    end

    for {key, _} <- opts, key not in @start_options do
      raise ArgumentError,
            "unknown option #{key}: for start_group (it takes #{Enum.join(@start_options, ": ")}:)"
    end

    with {:ok, members} <- Keyword.fetch(opts, :members),
         do: Visor.Options.nodes!(module, members)

    with {:ok, n} <- Keyword.fetch(opts, :replicas), do: Groups.replicas!(module, n)

    case Keyword.get(opts, :timeout, @start_timeout_ms) do
      timeout when is_integer(timeout) and timeout >= 0 ->
        timeout

      other ->
        raise ArgumentError, "timeout must be a non-negative integer (ms), got: #{inspect(other)}"
    end
  end

  # The members: given, the host's `members:`, or `replicas:` chosen by
  # rendezvous hashing among the connected nodes that run the host; each
  # one a connected node that runs the host.
  defp members_for({module, _key} = group, opts, hosts) do
    members =
      case {Keyword.fetch(opts, :members), hosts} do
        {{:ok, members}, _} ->
          {:ok, Visor.Options.nodes!(module, members)}

        {:error, hosts} when map_size(hosts) == 0 ->
          {:error,
           {:not_enough_nodes, Keyword.get(opts, :replicas, Groups.default_replicas()), 0}}

        {:error, hosts} ->
          # This node's host options, else any host's: they are the same
          # on every node of a well-configured cluster.
          %{options: host} = Map.get(hosts, node()) || hosts |> Map.values() |> hd()
          place(group, Keyword.get(opts, :replicas), host, Map.keys(hosts))
      end

    with {:ok, members} <- members do
      case Enum.find(members, &(not Map.has_key?(hosts, &1))) do
        nil -> {:ok, members}
        missing -> {:error, {:no_group_host, missing}}
      end
    end
  end

  defp place(_group, nil, %{members: [_ | _] = members}, _hosts), do: {:ok, members}

  defp place(group, replicas, host, hosts) do
    n = replicas || host.replicas

    if length(hosts) < n,
      do: {:error, {:not_enough_nodes, n, length(hosts)}},
      else: {:ok, Enum.sort(Groups.place(group, hosts, n))}
  end

  # The connected nodes (this one included) that run the module's host:
  # its options, and what it holds of the group (`Groups.membership/2`).
  # Every connected node must answer: one that is stalled may hold the
  # key (with these members or others), which a start that went on
  # without it would not see; two instances of one key would then serve.
  defp hosts(group) do
    answers = memberships(group)

    case for {node, {:error, {:erpc, :timeout}}} <- answers, do: node do
      [] -> {:ok, for({node, {:ok, %{} = host}} <- answers, into: %{}, do: {node, host})}
      [silent | _] -> {:error, {:no_answer, silent}}
    end
  end

  # Every connected node's answer (this one's included) to what it holds
  # of the group: `[{node, :erpc answer}]`.
  defp memberships({module, key}) do
    nodes = [node() | Node.list()]
    Enum.zip(nodes, :erpc.multicall(nodes, Groups, :membership, [module, key], @ask_timeout_ms))
  end

  # The instance to start (`t:Visor.Lifetime.instance/0`), and whether it
  # existed. One instance per key, cluster-wide: refused if any connected
  # host holds the key with other members. Asked before any member starts,
  # so a refused start leaves nothing behind.
  #
  # A host that holds an instance one of the hosts stopped runs a replica
  # cut off from that stop: stopped first, by instance, so that a stop
  # that arrives late can stop nothing else. If the hosts hold an
  # instance nobody stopped, this start ensures it runs; else the group
  # is new, of the generation after every one the hosts stopped: never a
  # stopped one's, and the same for two calls that start one new key at
  # once (seeing the same hosts), which then start one instance, not two
  # that refuse each other.
  defp instance({module, key}, members, hosts) do
    stops =
      hosts
      |> Map.values()
      |> Enum.map(& &1.stopped)
      |> Enum.reduce(%{}, &Map.merge(&1, &2, fn _members, a, b -> max(a, b) end))

    {stale, held} =
      hosts
      |> Enum.filter(&match?({_node, %{hosted: %{}}}, &1))
      |> Enum.split_with(fn {_node, %{hosted: hosted}} -> Lifetime.stopped_in?(stops, hosted) end)

    for {hosted, nodes} <- Enum.group_by(stale, &elem(&1, 1).hosted, &elem(&1, 0)),
        do: :erpc.multicall(nodes, Groups, :stop_here, [module, key, [hosted]], @ask_timeout_ms)

    case held |> Enum.map(&elem(&1, 1).hosted) |> Enum.uniq() do
      [] ->
        {:ok, %{members: members, id: Enum.max([0 | Map.values(stops)]) + 1}, false}

      [%{members: ^members} = instance] ->
        {:ok, instance, true}

      [%{members: others} | _] ->
        {:error, {:already_started, %{members: others}}}
    end
  end

  # Asks every member's host to start the instance, all at once, and
  # waits for their answers until the deadline: :started if any started
  # it now, :already_started if every one ran it already; else an error.
  # A member that had not answered at the deadline goes on starting:
  # {:error, :timeout}, the group forming.
  defp started({module, key} = group, instance, existed?, deadline) do
    requests =
      for node <- instance.members,
          do:
            {node,
             :gen_server.send_request({Groups.host(module), node}, {:visor_start, key, instance})}

    answers =
      for {node, request} <- requests do
        case :gen_server.receive_response(request, left(deadline)) do
          {:reply, answer} -> {node, answer}
          :timeout -> {node, {:error, :timeout}}
          {:error, _down} -> {node, {:error, {:no_group_host, node}}}
        end
      end

    outcome(group, instance, answers, existed?)
  end

  # A new group that a member refused is undone: the members that started
  # it (or are starting it) stop it again, so a refused start leaves
  # nothing behind. Refused: the member's host started nothing of it (it
  # holds another instance, or had stopped this one, or is no member),
  # so the instance can never form (a new group forms once every member
  # answered). A member whose start began and failed (its initial_state
  # raised, or its host went down) may have answered the others'
  # formation meanwhile: the group may have formed and served without
  # it, so nothing is undone; the error says which member failed, and a
  # start_group again (which starts it there) or a stop_group settles it.
  # One that existed is left as it is: a member restarting its replica,
  # slowly or failing, is still one of its members.
  defp outcome({module, key}, instance, answers, existed?) do
    results = Enum.map(answers, &elem(&1, 1))
    failure = Enum.find(results, &match?({:error, reason} when reason != :timeout, &1))

    cond do
      failure != nil and existed? ->
        failure

      failure != nil ->
        failures = for {:error, reason} <- results, reason != :timeout, do: reason

        if Enum.all?(failures, &refusal?/1) do
          undo =
            for {node, result} <- answers,
                result in [{:ok, :started}, {:error, :timeout}],
                do: node

          _ = :erpc.multicall(undo, Groups, :undo_here, [module, key, instance], @ask_timeout_ms)
        end

        failure

      {:error, :timeout} in results ->
        {:error, :timeout}

      {:ok, :started} in results ->
        :started

      true ->
        :already_started
    end
  end

  # A member's answer that it started nothing (Visor.Groups.Host.start/5).
  defp refusal?({:already_started, _}), do: true
  defp refusal?({:not_a_member, _}), do: true
  defp refusal?({:bad_members, _}), do: true
  defp refusal?({:start_failed, _node, :stopped}), do: true
  defp refusal?({:start_failed, _node, {:store_taken, _dir, _why}}), do: true
  defp refusal?({:start_failed, _node, {:record_failed, _path, _why}}), do: true
  defp refusal?(_began), do: false

  # Until a quorum of the members runs a normal replica: their primary.
  defp await_quorum(group, members, deadline) do
    statuses =
      for {{:ok, status}, _node} <-
            Enum.zip(:erpc.multicall(members, Visor, :status, [group], left(deadline)), members),
          status.status == :normal,
          do: status

    cond do
      length(statuses) > div(length(members), 2) ->
        {:ok, %{members: members, primary: hd(statuses).primary}}

      left(deadline) == 0 ->
        {:error, :timeout}

      true ->
        Process.sleep(@poll_ms)
        await_quorum(group, members, deadline)
    end
  end

  defp left(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)

  @doc """
  See `Visor.stop_group/2`. Two rounds: every connected node is asked
  which instance of the group it holds, then every connected node is told
  to stop those instances. A stop that reaches a node late (it stalled)
  stops what it ran then, never an instance started since.
  """
  @spec stop({module(), term()}) :: :ok | {:error, :no_group}
  def stop({module, key} = group) do
    answers = memberships(group)
    instances = for {_node, {:ok, %{hosted: %{} = hosted}}} <- answers, uniq: true, do: hosted
    nodes = Enum.map(answers, &elem(&1, 0))

    answers =
      if instances == [],
        do: [],
        else:
          :erpc.multicall(nodes, Groups, :stop_here, [module, key, instances], @ask_timeout_ms)

    if {:ok, :ok} in answers, do: :ok, else: {:error, :no_group}
  end

  @doc "See `Visor.lookup/1`."
  @spec lookup({module(), term()}) :: [{node(), pid()}]
  def lookup(group) do
    nodes = [node() | Node.list()]

    answers =
      :erpc.multicall(nodes, Visor.Supervisor, :whereis, [group, :server], @ask_timeout_ms)

    for {node, {:ok, pid}} <- Enum.zip(nodes, answers), is_pid(pid), do: {node, pid}
  end

  @doc "See `Visor.which_groups/2`."
  @spec which_groups(module()) :: [map()]
  def which_groups(module) do
    nodes = [node() | Node.list()]
    answers = :erpc.multicall(nodes, Visor, :which_groups, [module], @ask_timeout_ms)

    replicas =
      for {node, {:ok, groups}} <- Enum.zip(nodes, answers),
          %{key: key, members: members, status: status, role: role} <- groups,
          do: {{key, members}, %{node: node, status: status, role: role}}

    replicas
    |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
    |> Enum.map(fn {{key, members}, replicas} ->
      %{key: key, members: members, replicas: Enum.sort_by(replicas, & &1.node)}
    end)
  end

  @doc """
  The members of the keyed group `group` (this node runs none of it), as
  the first connected node that runs it answers before `deadline`
  (monotonic ms): `{:ok, members}`; `{:error, :no_group}` when every
  connected node answered that it does not run it; `{:error,
  :no_member_reachable}` when the deadline passed first. Every connected
  node, this one included, is asked at once: the first that names the
  members ends the wait, and a stalled node (asked again every
  #{@ask_timeout_ms} ms) delays the answer only when no other names them,
  since then it may be the one that runs the group.

  The members found are kept in the calling process until `forget/1`: a
  caller's next calls to the group go straight to them. Kept there rather
  than in a table: a node that only calls keyed groups runs no Visor
  process that could own one, and a process never serves another's stale
  answer. A process keeps at most #{@cache_size} groups' (all dropped when
  it is full).
  """
  @spec members({module(), term()}, integer()) ::
          {:ok, [node()]} | {:error, :no_group | :no_member_reachable}
  def members(group, deadline) do
    cache = Process.get(@cache, %{})

    case cache do
      %{^group => members} ->
        {:ok, members}

      _ ->
        with {:ok, members} <- ask_members(group, deadline) do
          cache = if map_size(cache) >= @cache_size, do: %{}, else: cache
          Process.put(@cache, Map.put(cache, group, members))
          {:ok, members}
        end
    end
  end

  @doc """
  Drops the calling process's kept members of `group` (`members/2`): its
  caller found that they do not run it (stopped, or started elsewhere) or
  do not answer, so the next call asks again.
  """
  @spec forget({module(), term()}) :: :ok
  def forget(group) do
    with %{} = cache <- Process.get(@cache), do: Process.put(@cache, Map.delete(cache, group))
    :ok
  end

  # Every connected node, this one included (a member whose processes
  # restart, cut off from the others, is the only one that knows), is
  # asked at once. A node that did not answer in time is asked again
  # until the deadline: it may run the group, so only the answers of
  # every node make `:no_group`.
  defp ask_members({module, key}, deadline),
    do: ask_members(module, key, [node() | Node.list()], deadline)

  defp ask_members(module, key, nodes, deadline) do
    reply_to = :erlang.alias()
    # A node that never answers holds a process at most this long.
    timeout = min(left(deadline), @ask_timeout_ms)

    for node <- nodes do
      spawn(fn ->
        answer =
          try do
            :erpc.call(node, Groups, :members_here, [module, key], timeout) || :not_running
          catch
            # Stalled, or too slow: it may run the group.
            :error, {:erpc, :timeout} -> {:silent, node}
            # Gone, or without Visor's code: it runs none.
            _kind, _reason -> :not_running
          end

        send(reply_to, {reply_to, answer})
      end)
    end

    members = first_members(reply_to, length(nodes), [], deadline)
    # Answers still on their way are dropped, and none is left behind.
    :erlang.unalias(reply_to)
    flush(reply_to)

    case members do
      {:silent, []} ->
        {:error, :no_group}

      {:silent, silent} ->
        if left(deadline) > 0,
          do: ask_members(module, key, silent, deadline),
          else: {:error, :no_member_reachable}

      found ->
        found
    end
  end

  defp first_members(_reply_to, 0, silent, _deadline), do: {:silent, silent}

  defp first_members(reply_to, waiting, silent, deadline) do
    receive do
      {^reply_to, [_ | _] = members} ->
        {:ok, members}

      {^reply_to, :not_running} ->
        first_members(reply_to, waiting - 1, silent, deadline)

      {^reply_to, {:silent, node}} ->
        first_members(reply_to, waiting - 1, [node | silent], deadline)
    after
      left(deadline) -> {:error, :no_member_reachable}
    end
  end

  defp flush(reply_to) do
    receive do
      {^reply_to, _answer} -> flush(reply_to)
    after
      0 -> :ok
    end
  end
end
