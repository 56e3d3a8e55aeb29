defmodule Visor.Server.Callers do
  @moduledoc false
  # This node's callers (a pure decider; `Visor.Server` carries out its
  # effects): a caller is admitted or refused at once (`admit/6`); commits
  # and linearizable reads wait in one line (FIFO), go to
  # the engine through the pool of client sessions (`Visor.Sessions`) in
  # arrival order, and each caller is answered exactly once: when the engine
  # settles its request, or with `{:error, :timeout}` at its deadline,
  # whichever comes first.
  #
  # Pipelined commands (`Visor.pipeline/3`) wait per caller, in a *stream*:
  # at most one request of a stream is in the engine at a time, and the
  # next carries every command of the stream that arrived meanwhile (up to
  # `batch_max_bytes`), as one batch (`Visor.Executor.batch_payload/1`),
  # or one command alone while batches are not allowed (`dispatch/3`). A
  # stream takes its turn in the line like one caller, through a ticket,
  # and its next request goes only once the engine settled the last one
  # (not at a deadline: a timed-out request may still be executed), so a
  # stream's commands are executed in the order they arrived.
  # docs/architecture.md, "Pipelined commits", argues it.
  #
  # Its functions return the new state with a list of effects, in the order
  # they must be carried out:
  #
  #   * `{:reply, from, term}`: answer a caller (`GenServer.reply/2`);
  #   * `{:deadline, id, ms}`: in `ms`, call `deadline(callers, id)`;
  #   * `{:cancel_deadline, id}`: that timer is no longer needed;
  #   * `{:submit, client, session, request, payload}`: hand a request to the
  #     engine (`Visor.Native.submit/5`; request 0 with session 0 registers
  #     the client);
  #   * `{:read, id}`: ask the engine for a read index (`Visor.Native.read/2`).

  alias Visor.{Executor, Sessions}

  # The longest a caller waits for its deadline (2^32 - 1 ms, a timer
  # every OTP release accepts).
  @max_deadline_ms 0xFFFF_FFFF

  defstruct [
    :sessions,
    # Jobs waiting for a session; `queued` counts them (dead ones included
    # until popped) because :queue.len/1 is O(n).
    queue: :queue.new(),
    queued: 0,
    # {client, request} => job, until the engine settles the request.
    inflight: %{},
    # id => from: callers still waiting for an answer.
    waiting: %{},
    # Linearizable reads handed to the engine: read id => job.
    reads: %{},
    # Pipelining callers: stream key => %{pending: queue of {id, payload,
    # deadline}, busy:
    # a ticket in line or a request in the engine}; gone when both are over.
    streams: %{},
    next_read: 1,
    next_id: 1
  ]

  @typedoc """
  A job: what a caller asked for, and the result its replica computed. A
  stream's turn in line is a ticket (`{:stream, key}`, no id); its request
  in the engine holds its commands' ids (`{:batch, key, ids}`).
  """
  @type job :: %{
          id: pos_integer() | nil,
          kind:
            :commit
            | :skip
            | :switch
            | {:read, [term()]}
            | {:stream, term()}
            | {:batch, term(), [pos_integer()]},
          payload: binary() | nil,
          result: term()
        }
  @type t :: %__MODULE__{}
  @type effect ::
          {:reply, GenServer.from(), term()}
          | {:deadline, pos_integer(), non_neg_integer()}
          | {:cancel_deadline, pos_integer()}
          | {:submit, Sessions.client(), non_neg_integer(), non_neg_integer(), binary()}
          | {:read, pos_integer()}

  @doc "No callers, and an empty pool of at most `pool_size` sessions."
  @spec new(pos_integer()) :: t()
  def new(pool_size), do: %__MODULE__{sessions: Sessions.new(pool_size)}

  @typedoc """
  What a caller may ask: a commit of an encoded command, a pipelined one
  (in the stream of the key given: one per pipelining caller), a skip of the
  poison command at an op (`Visor.skip/3`), a linearizable read of a
  path of the state, or (the server itself, `Visor.Server.Upgrade`) a
  switch of the cluster to a state machine version.
  """
  @type request ::
          {:commit, binary()}
          | {:pipeline, term(), binary()}
          | {:skip, pos_integer()}
          | {:read, [term()]}
          | {:switch_version, non_neg_integer()}

  @typedoc """
  What admission depends on besides the line: the error every caller gets
  now, if any (`Visor.Server.Lifecycle.refusal/1`, else
  `Visor.Server.Machine.refusal/1`); the poison command's op
  if the replica is halted at one (`Visor.Server.Machine.halted/1`); the
  largest command (`batch_max_bytes`).
  """
  @type gate :: %{refusal: term() | nil, halted: pos_integer() | nil, max_bytes: pos_integer()}

  @doc """
  Admits a caller, or refuses it at once with `{:error, reason}`. An
  admitted caller waits in line (a read too, so it also follows this node's
  earlier commits) until its answer or `deadline`; `deadline` and `now`
  are monotonic ms. A skip is a command like any other (so every replica
  executes it at the same op); it is the one command a halted replica
  accepts.
  """
  @spec admit(t(), request(), GenServer.from(), integer(), integer(), gate()) ::
          {:ok, t(), [effect()]} | {:error, term()}
  def admit(%__MODULE__{} = callers, request, from, deadline, now, gate) do
    cond do
      gate.refusal != nil -> {:error, gate.refusal}
      too_large?(request, gate.max_bytes) -> {:error, too_large(request, gate.max_bytes)}
      gate.halted != nil and not match?({:skip, _}, request) -> {:error, {:halted, gate.halted}}
      true -> enqueue(callers, request, from, deadline, now)
    end
  end

  defp too_large?({:commit, payload}, max), do: byte_size(payload) > max
  defp too_large?({:pipeline, _key, payload}, max), do: byte_size(payload) > max
  defp too_large?(_request, _max), do: false

  defp too_large({_kind, payload}, max), do: {:command_too_large, byte_size(payload), max}
  defp too_large({_kind, _key, payload}, max), do: {:command_too_large, byte_size(payload), max}

  # A pipelined command waits in its stream; the stream gets a ticket in
  # line unless it has one, or a request in the engine.
  defp enqueue(callers, {:pipeline, key, payload}, from, deadline, now) do
    id = callers.next_id
    stream = Map.get(callers.streams, key, %{pending: :queue.new(), busy: false})
    stream = %{stream | pending: :queue.in({id, payload, deadline}, stream.pending)}

    callers = %{
      callers
      | next_id: id + 1,
        waiting: Map.put(callers.waiting, id, from),
        streams: Map.put(callers.streams, key, %{stream | busy: true})
    }

    callers = if stream.busy, do: callers, else: ticket(callers, key, &:queue.in/2)
    {:ok, callers, [{:deadline, id, delay(deadline, now)}]}
  end

  defp enqueue(callers, request, from, deadline, now) do
    id = callers.next_id
    delay = delay(deadline, now)

    job =
      case request do
        {:read, path} ->
          %{id: id, kind: {:read, path}, payload: nil, result: nil}

        {:switch_version, _} = switch ->
          %{id: id, kind: :switch, payload: payload(switch), result: nil}

        # An operator's skip is not held for a version round (dispatch/2):
        # the replica that needs one is halted, so never the primary that
        # could end the hold early.
        {:skip, _} = skip ->
          %{id: id, kind: :skip, payload: payload(skip), result: nil}

        command ->
          %{id: id, kind: :commit, payload: payload(command), result: nil}
      end

    # The switch goes ahead of the line: the commands waiting in it run
    # under the new version (they may be held for it: dispatch/2).
    queue =
      if job.kind == :switch,
        do: :queue.in_r(job, callers.queue),
        else: :queue.in(job, callers.queue)

    callers = %{
      callers
      | next_id: id + 1,
        waiting: Map.put(callers.waiting, id, from),
        queue: queue,
        queued: callers.queued + 1
    }

    {:ok, callers, [{:deadline, id, delay}]}
  end

  # A caller (or any node's raw call) may name any deadline: one too far
  # for a timer would raise in send_after and crash the server. Past
  # @max_deadline_ms (~49 days) the caller is answered :timeout then.
  defp delay(deadline, now), do: min(max(deadline - now, 0), @max_deadline_ms)

  defp ticket(callers, key, into) do
    job = %{id: nil, kind: {:stream, key}, payload: nil, result: nil}
    %{callers | queue: into.(job, callers.queue), queued: callers.queued + 1}
  end

  defp payload({:commit, payload}), do: payload
  defp payload({:skip, op}), do: Executor.skip_payload(op)
  defp payload({:switch_version, version}), do: Executor.switch_payload(version)

  @doc """
  Hands waiting jobs to the engine, oldest first: reads at once, commits
  to idle sessions; when there are none, registers new sessions (up to the
  pool size) and leaves the jobs waiting. Only while the engine runs.
  With `held` (`Visor.Server.Upgrade.holding/3`), it stops at the first
  caller's command (a version switch and a skip still go), and what is
  behind it waits with it. A stream's request carries its waiting
  commands as one batch of at most `batch_bytes` bytes, or its first
  command alone when `batch_bytes` is 0 (batches not allowed).
  """
  @spec dispatch(t(), boolean(), non_neg_integer()) :: {t(), [effect()]}
  def dispatch(%__MODULE__{} = callers, held \\ false, batch_bytes \\ 0),
    do: hand_over(callers, {held, batch_bytes}, [])

  # A caller's command waits for a version round; a switch or a skip does not.
  defguardp held_back(kind) when kind == :commit or (is_tuple(kind) and elem(kind, 0) == :stream)

  defp hand_over(callers, {held, batch_bytes} = how, effects) do
    case next_job(callers) do
      nil ->
        {callers, Enum.reverse(effects)}

      {%{kind: kind} = job, callers} when held and held_back(kind) ->
        callers = %{callers | queue: :queue.in_r(job, callers.queue), queued: callers.queued + 1}
        {callers, Enum.reverse(effects)}

      {%{kind: {:read, _}} = job, callers} ->
        id = callers.next_read
        callers = %{callers | reads: Map.put(callers.reads, id, job), next_read: id + 1}
        hand_over(callers, how, [{:read, id} | effects])

      {job, callers} ->
        case Sessions.checkout(callers.sessions) do
          {:ok, client, session, request, sessions} ->
            {job, callers} = request_of(job, callers, batch_bytes)
            inflight = Map.put(callers.inflight, {client, request}, job)
            callers = %{callers | sessions: sessions, inflight: inflight}
            hand_over(callers, how, [{:submit, client, session, request, job.payload} | effects])

          :none ->
            queued = callers.queued + 1
            {clients, sessions} = Sessions.grow(callers.sessions, queued)
            registrations = for client <- clients, do: {:submit, client, 0, 0, <<>>}

            callers = %{
              callers
              | queue: :queue.in_r(job, callers.queue),
                queued: queued,
                sessions: sessions
            }

            {callers, Enum.reverse(effects, registrations)}
        end
    end
  end

  # A stream's turn: its request takes the stream's waiting commands, in
  # order, as many as fit in `batch_bytes` (at least the first, which
  # next_job/1 made sure still waits); the stream stays busy until the
  # engine settles it.
  defp request_of(%{kind: {:stream, key}}, callers, batch_bytes) do
    stream = Map.fetch!(callers.streams, key)
    {commands, pending} = take(stream.pending, callers.waiting, batch_bytes)

    payload =
      case commands do
        [{_id, command, _deadline}] -> command
        _ -> commands |> Enum.map(&elem(&1, 1)) |> Executor.batch_payload()
      end

    job = %{id: nil, kind: {:batch, key, commands}, payload: payload, result: nil}
    {job, %{callers | streams: Map.put(callers.streams, key, %{stream | pending: pending})}}
  end

  defp request_of(job, callers, _batch_bytes), do: {job, callers}

  # Commands off the front of a stream (dropping those whose caller timed
  # out: they never reach the log) while the batch fits in `max` bytes.
  defp take(pending, waiting, max), do: take(pending, waiting, max, [], 0, 0)

  defp take(pending, waiting, max, acc, count, bytes) do
    case :queue.out(pending) do
      {:empty, _} ->
        {Enum.reverse(acc), pending}

      {{:value, {id, command, _deadline} = entry}, rest} ->
        size = bytes + byte_size(command)

        cond do
          not Map.has_key?(waiting, id) ->
            take(rest, waiting, max, acc, count, bytes)

          count == 0 or size + Executor.batch_overhead(count + 1) <= max ->
            take(rest, waiting, max, [entry | acc], count + 1, size)

          true ->
            {Enum.reverse(acc), pending}
        end
    end
  end

  # The next job whose caller still waits; jobs of callers that timed out
  # while waiting in line are dropped here (they never reached the log),
  # and so is the ticket of a stream whose every command timed out.
  defp next_job(callers) do
    case :queue.out(callers.queue) do
      {:empty, _} ->
        nil

      {{:value, %{kind: {:stream, key}} = ticket}, queue} ->
        callers = trim(%{callers | queue: queue, queued: callers.queued - 1}, key)

        if :queue.is_empty(callers.streams[key].pending),
          do: next_job(release(callers, key)),
          else: {ticket, callers}

      {{:value, job}, queue} ->
        callers = %{callers | queue: queue, queued: callers.queued - 1}
        if Map.has_key?(callers.waiting, job.id), do: {job, callers}, else: next_job(callers)
    end
  end

  # Drops the commands at the front of a stream whose caller timed out,
  # so that its first command, if any, still waits. Each command is
  # dropped once, here or in take/3: O(1) per command, however long the
  # stream (never a scan of it per request).
  defp trim(callers, key) do
    stream = Map.fetch!(callers.streams, key)
    pending = drop_answered(stream.pending, callers.waiting)
    %{callers | streams: Map.put(callers.streams, key, %{stream | pending: pending})}
  end

  defp drop_answered(pending, waiting) do
    case :queue.peek(pending) do
      {:value, {id, _command, _deadline}} when not is_map_key(waiting, id) ->
        drop_answered(:queue.drop(pending), waiting)

      _ ->
        pending
    end
  end

  # The stream's request is settled (or its ticket dropped): its next
  # commands get a ticket at the back of the line; with none, it is gone.
  defp release(callers, key) do
    callers = trim(callers, key)
    stream = Map.fetch!(callers.streams, key)

    if :queue.is_empty(stream.pending) do
      %{callers | streams: Map.delete(callers.streams, key)}
    else
      streams = Map.put(callers.streams, key, %{stream | busy: true})
      ticket(%{callers | streams: streams}, key, &:queue.in/2)
    end
  end

  @doc """
  The caller `id`'s deadline passed: it gets `{:error, :timeout}` (if it
  was not answered yet). Its job stays where it is: a queued one is skipped
  when popped; an in-flight one keeps its session until the engine settles
  it; a read's late `read_ready` finds no caller.
  """
  @spec deadline(t(), pos_integer()) :: {t(), [effect()]}
  def deadline(%__MODULE__{} = callers, id), do: answer(callers, id, {:error, :timeout})

  @doc """
  This replica executed `{client, request}` with `result`: kept for the
  caller if the request is one of this node's, until the engine's reply.
  """
  @spec result(t(), Sessions.client(), non_neg_integer(), term()) :: t()
  def result(%__MODULE__{inflight: inflight} = callers, client, request, result) do
    case inflight do
      %{{^client, ^request} => job} ->
        %{callers | inflight: Map.put(inflight, {client, request}, %{job | result: result})}

      _ ->
        callers
    end
  end

  @doc """
  The engine settled `{client, request}` (its `{:reply, ...}` event): a
  registration makes the session usable; a command's caller gets the
  result its replica computed, or the error the outcome means
  (docs/commands.md, "The answer").
  """
  @spec settle(t(), Sessions.client(), non_neg_integer(), term()) :: {t(), [effect()]}
  def settle(%__MODULE__{sessions: sessions} = callers, client, request, outcome) do
    case Sessions.lookup(sessions, client) do
      :registering ->
        sessions =
          case outcome do
            {:registered, session} -> Sessions.registered(sessions, client, session)
            _ -> Sessions.drop(sessions, client)
          end

        {%{callers | sessions: sessions}, []}

      {:busy, _session, ^request} ->
        {job, inflight} = Map.pop(callers.inflight, {client, request})
        {reply, sessions} = outcome_reply(sessions, client, request, job, outcome)
        answer_job(%{callers | inflight: inflight, sessions: sessions}, job, reply)

      # A stale reply (a duplicate, or for a slot since dropped).
      _ ->
        {callers, []}
    end
  end

  defp outcome_reply(sessions, client, request, job, outcome) do
    case outcome do
      :executed ->
        {job.result || {:error, :unknown_outcome}, Sessions.settle(sessions, client, request)}

      {:duplicate, op} ->
        {job.result || {:error, {:duplicate, op}}, Sessions.settle(sessions, client, request)}

      # Another body under this number ran: this command did not, and the
      # session's numbering is no longer this slot's to trust.
      :refused ->
        {{:error, :refused}, Sessions.drop(sessions, client)}

      # The session is gone: its slot is replaced by a fresh one later.
      _evicted ->
        {{:error, :unknown_outcome}, Sessions.drop(sessions, client)}
    end
  end

  @doc """
  The read `id` may be served (`{:read_ready, id, op}`): its caller gets
  `reply.(path)`, computed only if the caller still waits.
  """
  @spec read_ready(t(), pos_integer(), ([term()] -> term())) :: {t(), [effect()]}
  def read_ready(%__MODULE__{} = callers, id, reply) do
    case Map.pop(callers.reads, id) do
      {nil, _} ->
        {callers, []}

      {%{kind: {:read, path}} = job, reads} ->
        callers = %{callers | reads: reads}

        if Map.has_key?(callers.waiting, job.id),
          do: answer(callers, job.id, reply.(path)),
          else: {callers, []}
    end
  end

  @doc "Answers every waiting caller `{:error, error}` and forgets every job."
  @spec fail_all(t(), term()) :: {t(), [effect()]}
  def fail_all(%__MODULE__{} = callers, error) do
    effects =
      Enum.flat_map(callers.waiting, fn {id, from} ->
        [{:cancel_deadline, id}, {:reply, from, {:error, error}}]
      end)

    {%{
       callers
       | waiting: %{},
         queue: :queue.new(),
         queued: 0,
         inflight: %{},
         reads: %{},
         streams: %{}
     }, effects}
  end

  @doc """
  The engine stopped before it ran: what was handed to it waits in line
  again, ahead of the rest, for the next engine, with a new pool of sessions.
  """
  @spec requeue(t()) :: t()
  def requeue(%__MODULE__{} = callers) do
    {batches, jobs} =
      Enum.split_with(Map.values(callers.inflight), &match?(%{kind: {:batch, _, _}}, &1))

    jobs = jobs ++ Map.values(callers.reads)

    callers = %{
      callers
      | queue: Enum.reduce(jobs, callers.queue, &:queue.in_r/2),
        queued: callers.queued + length(jobs),
        inflight: %{},
        reads: %{},
        sessions: Sessions.new(callers.sessions.max)
    }

    # A stream's commands go back ahead of its others, behind its ticket.
    Enum.reduce(batches, callers, fn %{kind: {:batch, key, commands}}, callers ->
      stream = Map.fetch!(callers.streams, key)
      pending = Enum.reduce(Enum.reverse(commands), stream.pending, &:queue.in_r/2)
      streams = Map.put(callers.streams, key, %{stream | pending: pending})
      ticket(%{callers | streams: streams}, key, &:queue.in_r/2)
    end)
  end

  @doc """
  The pipelined commands that still wait in line (not handed to the
  engine), taken out of it: `{from, stream key, payload, deadline}` each,
  in each stream's order, for a node that turned out to be a spare; and
  the effects that cancel their deadlines.
  """
  @spec take_pipelined(t()) :: {t(), [{term(), term(), binary(), integer()}], [effect()]}
  def take_pipelined(%__MODULE__{} = callers) do
    taken =
      for {key, stream} <- callers.streams,
          {id, payload, deadline} <- :queue.to_list(stream.pending),
          Map.has_key?(callers.waiting, id),
          do: {id, {callers.waiting[id], key, payload, deadline}}

    ids = Enum.map(taken, &elem(&1, 0))
    queue = :queue.filter(&(not match?(%{kind: {:stream, _}}, &1)), callers.queue)

    callers = %{
      callers
      | waiting: Map.drop(callers.waiting, ids),
        streams: %{},
        queue: queue,
        queued: :queue.len(queue)
    }

    {callers, Enum.map(taken, &elem(&1, 1)), Enum.map(ids, &{:cancel_deadline, &1})}
  end

  @doc "Commands and reads handed to the engine and not settled yet."
  @spec in_flight(t()) :: non_neg_integer()
  def in_flight(%__MODULE__{} = callers), do: map_size(callers.inflight) + map_size(callers.reads)

  @doc "`status().pool`: the sessions' counts, and the callers still waiting."
  @spec pool(t()) :: map()
  def pool(%__MODULE__{} = callers),
    do: Map.put(Sessions.counts(callers.sessions), :waiting, map_size(callers.waiting))

  # A stream's request answers each of its commands, in order: a batch's
  # result holds one result per command; any other answer (an error of the
  # whole request) goes to each. Then the stream's next commands may go.
  defp answer_job(callers, %{kind: {:batch, key, commands}}, reply) do
    replies =
      case reply do
        {:batch, results} -> results
        reply -> List.duplicate(reply, length(commands))
      end

    {callers, effects} =
      commands
      |> Enum.zip(replies)
      |> Enum.reduce({callers, []}, fn {{id, _command, _deadline}, reply}, {callers, effects} ->
        {callers, more} = answer(callers, id, reply)
        {callers, Enum.reverse(more, effects)}
      end)

    {release(callers, key), Enum.reverse(effects)}
  end

  defp answer_job(callers, job, reply), do: answer(callers, job.id, reply)

  defp answer(callers, id, reply) do
    case Map.pop(callers.waiting, id) do
      {nil, _} ->
        {callers, []}

      {from, waiting} ->
        {%{callers | waiting: waiting}, [{:cancel_deadline, id}, {:reply, from, reply}]}
    end
  end
end
