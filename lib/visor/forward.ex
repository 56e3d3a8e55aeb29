defmodule Visor.Forward do
  @moduledoc false
  # A call made on a node that runs the group but is not a member of it (a
  # spare): carried, in the caller's process, to a member's server, so that
  # `Visor.commit/3`, `Visor.get/2`, `Visor.get_in/3` and `Visor.skip/3`
  # work on a spare and return what they return on a member. The member
  # passes a command on to the primary itself, as it does for its own
  # callers; `Visor.get_in/3`'s accessor functions still run in the caller,
  # which gets the member's `{:get_in, data, rest}` back.
  #
  # The candidates are the nodes the spare's server names (`targets/3`):
  # the listed members in `nodes:` mode, every other node running the group
  # in `cluster_size:` mode (a spare among them says so and is passed over),
  # the primary first when a member named it lately. Only those this node is
  # connected to are tried: connecting to an unreachable host can block for
  # seconds, past the caller's deadline. They are tried in turn until one
  # answers or the caller's deadline passes, each by the pid of its server,
  # looked up first, so that the process watched is the one sent to. The
  # pids are looked up on every candidate at once, in order, but a
  # candidate that has not answered within 100 ms is passed over for
  # one that has (`first_server/3`): a stalled node costs a call that long
  # at most, unless it stalls after its server was found (the call then
  # waits for it until its deadline: the command may have reached it).
  # The request names the time left, which the member's server keeps as
  # its deadline.
  #
  #   * a candidate that is not connected, where the group does not run, or
  #     that is not a member (a spare, or a node whose settings were
  #     refused) received nothing that counts: the next one is tried, and
  #     when none is left, all of them again a moment later. At the deadline
  #     the caller gets `{:error, :no_member_reachable}`: nothing was applied;
  #   * a member that refuses the request before admitting it (the server
  #     answers `{:visor_refused, reason}`: its replica is blocked on a
  #     version, halted at a poison command, its engine is down, ...)
  #     received nothing either: the next one is tried. When every member
  #     reached refused, the caller gets the first refusal, `{:error,
  #     reason}`, as a member's own caller would;
  #   * a member that disconnects, or whose server exits, during the call: a
  #     read goes to the next member. A commit (or skip) does not: the member
  #     may already have handed it to its replica, and sending it again could
  #     apply it twice. The caller gets `{:error, {:member_down, node}}`: it
  #     may or may not have been applied (and if not yet, may still be,
  #     once), as after `{:error, :timeout}`;
  #   * any other answer is the member's, returned as is (its
  #     `{:error, :timeout}` at the deadline included).
  #
  # A keyed group (`{module, key}`) has no spares: its processes run on its
  # members alone. A call made on any other node, or on a member whose
  # processes are being started again (`call_keyed/4`), learns the members
  # from the first node that runs the group, this one included
  # (`Visor.Groups.Control.members/2`: every node asked at once, within the
  # caller's deadline; the answer kept in the caller's process), then goes
  # on as a spare's does; when no connected node runs it, the caller gets
  # `{:error, :no_group}` (nothing was applied). Members kept from an
  # earlier call that no longer run it, or do not answer, are forgotten
  # and asked for again, by a call and by `status_keyed/2` alike.
  #
  # A `consistency: :local` read is served as a linearizable one: a spare
  # has no state of its own to read, and a member's local state could go
  # backwards between two reads that different members serve, which
  # `:local` promises never to do.

  alias Visor.Groups.Control

  # A pause before trying every candidate again, when none could be reached.
  @retry_ms 50
  # How long the primary a member named is trusted before a member is asked again.
  @primary_ttl_ms 1_000
  # How long a node earlier in order is waited for, when looking up
  # members' servers, before one that answered is taken instead.
  @lookup_slice_ms 100
  # The longest a member's status is waited for.
  @status_timeout_ms 1_000

  @typedoc """
  A spare's server's knowledge of the primary: the node a member named
  (or nil), and when it was last asked (monotonic ms).
  """
  @type hint :: {node() | nil, integer()} | nil

  @doc """
  Forwards the server request `request` (as `Visor` sends it to the local
  server) to a member, before `deadline` (monotonic ms on this node).
  `backstop` gives the call's own timeout for a deadline (see `Visor`).
  """
  @spec call(module(), tuple(), integer(), (integer() -> timeout())) :: term()
  def call(module, request, deadline, backstop) do
    %{members: members, primary: primary, refresh: refresh} = spare(module)
    if refresh, do: spawn(fn -> refresh_primary(module, members) end)
    members = if primary in members, do: [primary | List.delete(members, primary)], else: members
    forward(module, linearizable(request), deadline, backstop, members)
  catch
    # The spare's own server stopped meanwhile: as on a member.
    :exit, _reason -> {:error, :not_running}
  end

  @doc """
  Forwards the request of a call on a keyed group `group` made on a node
  that holds no replica of it, as `call/4` does a spare's: to a member, or
  `{:error, :no_group}` when no connected node runs the group.
  """
  @spec call_keyed({module(), term()}, tuple(), integer(), (integer() -> timeout())) :: term()
  def call_keyed(group, request, deadline, backstop) do
    case Control.members(group, deadline) do
      {:error, _reason} = error ->
        error

      {:ok, members} ->
        case first_answer(
               reachable(members),
               group,
               linearizable(request),
               deadline,
               backstop,
               nil
             ) do
          {:answer, reply} ->
            reply

          {:refused, reason} ->
            {:error, reason}

          # No member received it: they were kept from an earlier call and
          # no longer run it (stopped, started elsewhere), or do not answer.
          :none ->
            Control.forget(group)
            left = deadline - System.monotonic_time(:millisecond)

            if left > 0 do
              Process.sleep(min(@retry_ms, left))
              call_keyed(group, request, deadline, backstop)
            else
              {:error, :no_member_reachable}
            end
        end
    end
  end

  @doc """
  The server of a member of the keyed group `group` (this node holds no
  replica of it) to send a pipelined command to: the first connected
  member in order whose server is found before `deadline` (all asked at
  once; one that has not answered within #{@lookup_slice_ms} ms is passed
  over for one that has), `{:error,
  :no_group}` when no connected node runs the group, or `{:error,
  :no_member_reachable}`. Nothing is sent.
  """
  @spec keyed_server({module(), term()}, integer()) :: pid() | {:error, Visor.error()}
  def keyed_server(group, deadline), do: keyed_server(group, deadline, true)

  defp keyed_server(group, deadline, ask_again) do
    case Control.members(group, deadline) do
      {:error, _reason} = error ->
        error

      {:ok, members} ->
        found = first_server(reachable(members), group, deadline)

        cond do
          found ->
            elem(found, 1)

          # The members kept from an earlier call may be stale: ask once more.
          ask_again ->
            Control.forget(group)
            keyed_server(group, deadline, false)

          true ->
            {:error, :no_member_reachable}
        end
    end
  end

  @doc """
  The status of a keyed group `group` on a node that holds no replica of
  it: `status` (a map without a replica, see `Visor.Server.Status`) as a
  spare's (`status/2`), with `status: :spare`; `status: :no_group`
  when no connected node runs the group, `:unresponsive` (`error:
  :no_member_reachable`) when none answered within #{@status_timeout_ms} ms.
  """
  @spec status_keyed({module(), term()}, map()) :: map()
  def status_keyed(group, status) do
    deadline = System.monotonic_time(:millisecond) + @status_timeout_ms
    status_keyed(group, status, deadline, true)
  end

  defp status_keyed(group, status, deadline, ask_again) do
    case Control.members(group, deadline) do
      {:error, :no_group} ->
        %{status | status: :no_group, error: :no_group}

      {:error, reason} ->
        %{status | status: :unresponsive, error: reason}

      {:ok, members} ->
        case member_status(group, members, deadline) do
          # The members kept from an earlier call may no longer run it
          # (stopped, started elsewhere): asked for again, once.
          nil when ask_again ->
            Control.forget(group)
            status_keyed(group, status, deadline, false)

          nil ->
            %{status | status: :spare, error: nil}

          member ->
            spare_view(%{status | status: :spare, error: nil}, member)
        end
    end
  end

  @doc """
  A spare's server's answer to where its callers go (`members` and
  `hint`, see `t:hint/0`), and its new hint: the primary first, when a
  member named it lately (a member passes a command on to the primary
  anyway, so this spares a hop, and the primary is the member least likely
  to be cut off from the others). When the hint is older than
  #{@primary_ttl_ms} ms, the caller is told to ask a member again
  (`refresh: true`, in a process of its own, so no call waits for it), and
  the hint's age starts over, so that only one caller at a time asks.
  """
  @spec targets([node()], hint(), integer()) :: {map(), hint()}
  def targets(members, hint, now) do
    {primary, learned_at} = hint || {nil, now - @primary_ttl_ms}
    refresh = now - learned_at >= @primary_ttl_ms
    hint = if refresh, do: {primary, now}, else: hint
    {%{members: members, primary: primary, refresh: refresh}, hint}
  end

  @doc """
  A spare's `status` map with where the cluster stands, as the first
  member that answers sees it: its `cluster`, `view`, `primary` and
  `replicas` (their `health` as this node sees them). Unchanged when no
  member answers within #{@status_timeout_ms} ms.
  """
  @spec status(module(), map()) :: map()
  def status(module, %{status: :spare} = status) do
    %{members: members} = spare(module)
    deadline = System.monotonic_time(:millisecond) + @status_timeout_ms

    case member_status(module, members, deadline) do
      nil ->
        status

      %{primary: primary} = member ->
        remember_primary(module, primary)
        spare_view(status, member)
    end
  catch
    :exit, _reason -> status
  end

  # Where the cluster stands as `member` sees it, health as this node does.
  defp spare_view(status, %{cluster: cluster, view: view, primary: primary, replicas: replicas}) do
    replicas = for r <- replicas, do: %{r | health: health(r.node)}
    %{status | cluster: cluster, view: view, primary: primary, replicas: replicas}
  end

  defp health(node), do: if(node in Node.list(), do: :connected, else: :disconnected)

  defp spare(module), do: GenServer.call(Visor.Supervisor.name(module, :server), :visor_forward)

  defp refresh_primary(module, members) do
    deadline = System.monotonic_time(:millisecond) + @status_timeout_ms

    with %{primary: primary} <- member_status(module, members, deadline),
         do: remember_primary(module, primary)
  end

  defp remember_primary(module, primary) do
    server = Visor.Supervisor.name(module, :server)
    GenServer.call(server, {:visor_primary, primary, System.monotonic_time(:millisecond)})
  end

  # The status of the first connected member that runs a replica and
  # knows its primary, before `deadline`, or nil.
  defp member_status(module, members, deadline) do
    Enum.find_value(members, fn node ->
      left = deadline - System.monotonic_time(:millisecond)
      if left > 0 and node in Node.list(), do: replica_status(module, node, left)
    end)
  end

  defp replica_status(group, node, timeout) do
    server =
      if is_atom(group),
        do: {Visor.Supervisor.name(group, :server), node},
        else: server_pid(node, group, timeout)

    case server && GenServer.call(server, :status, timeout) do
      %{primary: primary, replicas: [_ | _]} = status when primary != nil -> status
      _no_replica -> nil
    end
  catch
    :exit, _reason -> nil
  end

  # The members a keyed group's call may go to: the connected ones, and
  # this node when it is one whose processes are being started again.
  defp reachable(members), do: Enum.filter(members, &(&1 == node() or &1 in Node.list()))

  defp linearizable({:read_local, path}), do: {:read, path}
  defp linearizable(request), do: request

  defp forward(module, request, deadline, backstop, members) do
    connected = Enum.filter(members, &(&1 in Node.list()))

    case first_answer(connected, module, request, deadline, backstop, nil) do
      {:answer, reply} ->
        reply

      {:refused, reason} ->
        {:error, reason}

      :none ->
        left = deadline - System.monotonic_time(:millisecond)

        if left > 0 do
          Process.sleep(min(@retry_ms, left))
          forward(module, request, deadline, backstop, members)
        else
          {:error, :no_member_reachable}
        end
    end
  end

  # The first member's answer; else the first refusal (`refused`), or
  # `:none`. The request goes to one server at a time, found by
  # `first_server/3`, and to the next only when the first provably did not
  # take it (`server_call/4`): each command is sent at most once.
  defp first_answer(nodes, module, request, deadline, backstop, refused) do
    case first_server(nodes, module, deadline) do
      nil ->
        refused || :none

      {node, server} ->
        rest = List.delete(nodes, node)

        case server_call(server, request, deadline, backstop) do
          {:answer, _reply} = answer ->
            answer

          :passed ->
            first_answer(rest, module, request, deadline, backstop, refused)

          {:refused, _reason} = refusal ->
            first_answer(rest, module, request, deadline, backstop, refused || refusal)

          :lost when elem(request, 0) == :read ->
            first_answer(rest, module, request, deadline, backstop, refused)

          :lost ->
            {:answer, {:error, {:member_down, node}}}
        end
    end
  end

  # The member's server, looked up once (nil: the group does not run
  # there, or the node did not answer; nothing was sent). A call to the
  # registered name would look the name up twice on the member, once for
  # the monitor and once for the message: a server registered between the
  # two would take a commit whose caller, told :noproc, tries another
  # member. A pid is one process for both, and never comes back.
  # A keyed group's server has a :via name, which only its node resolves.
  defp server_pid(node, module, timeout) when is_atom(module) do
    case :erpc.call(node, :erlang, :whereis, [Visor.Supervisor.name(module, :server)], timeout) do
      pid when is_pid(pid) -> pid
      :undefined -> nil
    end
  catch
    _kind, _reason -> nil
  end

  defp server_pid(node, group, timeout) do
    :erpc.call(node, Visor.Supervisor, :whereis, [group, :server], timeout)
  catch
    _kind, _reason -> nil
  end

  # The server of the first of `nodes` that runs `group`, as `{node,
  # pid}`, or nil when none does before `deadline`. Every node is asked at
  # once; `nodes`' order is kept (the primary a member named first), but
  # a node that has not answered within #{@lookup_slice_ms} ms is passed
  # over for one that has: a stalled node costs a caller that long at
  # most. Nothing is sent to a server here.
  defp first_server(nodes, group, deadline) do
    reply_to = :erlang.alias()
    timeout = max(deadline - System.monotonic_time(:millisecond), 0)

    for node <- nodes do
      spawn(fn -> send(reply_to, {reply_to, node, server_pid(node, group, timeout)}) end)
    end

    patient_until = System.monotonic_time(:millisecond) + @lookup_slice_ms
    found = await_server(reply_to, nodes, %{}, patient_until, deadline)
    # Answers still on their way are dropped, and none is left behind.
    :erlang.unalias(reply_to)
    flush(reply_to)
    found
  end

  defp await_server(reply_to, nodes, answers, patient_until, deadline) do
    now = System.monotonic_time(:millisecond)

    case pick_server(nodes, answers, now < patient_until) do
      {_node, _pid} = found ->
        found

      _none_yet when map_size(answers) == length(nodes) or now >= deadline ->
        nil

      _none_yet ->
        wait = if now < patient_until, do: min(patient_until, deadline), else: deadline

        receive do
          {^reply_to, node, pid} ->
            answers = Map.put(answers, node, pid)
            await_server(reply_to, nodes, answers, patient_until, deadline)
        after
          max(wait - now, 0) -> await_server(reply_to, nodes, answers, patient_until, deadline)
        end
    end
  end

  # The first node in order that named its server, unless (`patient`) a
  # node before it has not answered yet: `:wait`.
  defp pick_server(nodes, answers, patient) do
    Enum.reduce_while(nodes, nil, fn node, nil ->
      case answers do
        %{^node => nil} -> {:cont, nil}
        %{^node => pid} -> {:halt, {node, pid}}
        _no_answer when patient -> {:halt, :wait}
        _no_answer -> {:cont, nil}
      end
    end)
  end

  defp flush(reply_to) do
    receive do
      {^reply_to, _node, _pid} -> flush(reply_to)
    after
      0 -> :ok
    end
  end

  defp server_call(server, request, deadline, backstop) do
    # Monotonic clocks differ between nodes: the member gets the time left.
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    case GenServer.call(server, {:visor_forwarded, request, left}, backstop.(deadline)) do
      {:visor_refused, :spare} -> :passed
      {:visor_refused, {:setting_mismatch, _, _, _}} -> :passed
      {:visor_refused, reason} -> {:refused, reason}
      reply -> {:answer, reply}
    end
  catch
    :exit, {:timeout, _} -> {:answer, {:error, :timeout}}
    # The server had exited before the call: the message went to no one.
    :exit, {:noproc, _} -> :passed
    :exit, _reason -> :lost
  end
end
