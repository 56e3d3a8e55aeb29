%% A test double of the `telemetry` library (hex package telemetry 1.x),
%% which cannot be fetched where Visor is built: the functions Visor and its
%% tests use, with the library's semantics. It is not compiled by Mix (this
%% is not an erlc path): test/visor/telemetry_test.exs compiles it and
%% loads it on the nodes under test, so Visor.Telemetry finds `telemetry`
%% loaded there as it would in an application that depends on it.
%%
%% As in the library: handlers are called in the emitting process, in the
%% order they were attached; a handler that raises is detached; span/3
%% emits Prefix ++ [start] before calling the function, then Prefix ++
%% [stop] with its result's metadata, or Prefix ++ [exception] (kind,
%% reason, stacktrace added to the start metadata) and re-raises; the three
%% carry one telemetry_span_context.
-module(telemetry).

-export([attach/4, attach_many/4, detach/1, execute/3, span/3]).

-define(KEY, {?MODULE, handlers}).

attach(Id, Event, Fun, Config) -> attach_many(Id, [Event], Fun, Config).

attach_many(Id, Events, Fun, Config) when is_function(Fun, 4) ->
    Handlers = handlers(),
    case lists:keymember(Id, 1, Handlers) of
        true ->
            {error, already_exists};
        false ->
            persistent_term:put(?KEY, Handlers ++ [{Id, Events, Fun, Config}]),
            ok
    end.

detach(Id) ->
    Handlers = handlers(),
    case lists:keymember(Id, 1, Handlers) of
        true ->
            persistent_term:put(?KEY, lists:keydelete(Id, 1, Handlers)),
            ok;
        false ->
            {error, not_found}
    end.

execute(Event, Measurements, Metadata) when is_map(Measurements), is_map(Metadata) ->
    [call(Id, Fun, Event, Measurements, Metadata, Config)
     || {Id, Events, Fun, Config} <- handlers(), lists:member(Event, Events)],
    ok.

span(Prefix, StartMetadata, SpanFunction) ->
    StartTime = erlang:monotonic_time(),
    Context = make_ref(),
    execute(Prefix ++ [start],
            #{monotonic_time => StartTime, system_time => erlang:system_time()},
            context(StartMetadata, Context)),
    try SpanFunction() of
        {Result, StopMetadata} ->
            StopTime = erlang:monotonic_time(),
            execute(Prefix ++ [stop],
                    #{duration => StopTime - StartTime, monotonic_time => StopTime},
                    context(StopMetadata, Context)),
            Result
    catch
        Class:Reason:Stacktrace ->
            StopTime = erlang:monotonic_time(),
            execute(Prefix ++ [exception],
                    #{duration => StopTime - StartTime, monotonic_time => StopTime},
                    context(StartMetadata#{kind => Class, reason => Reason,
                                           stacktrace => Stacktrace},
                            Context)),
            erlang:raise(Class, Reason, Stacktrace)
    end.

handlers() -> persistent_term:get(?KEY, []).

call(Id, Fun, Event, Measurements, Metadata, Config) ->
    try
        Fun(Event, Measurements, Metadata, Config)
    catch
        _:_ -> detach(Id)
    end.

context(#{telemetry_span_context := _} = Metadata, _Context) -> Metadata;
context(Metadata, Context) -> Metadata#{telemetry_span_context => Context}.
