//! Atoms the bridge sends to Elixir or reads from it.

rustler::atoms! {
    ok,
    error,
    malformed,

    // The contract (contract.rs).
    protocol_version,
    max_replicas,
    options,
    limits,
    deliver_list_max,
    group_bytes_max,
    meta_bytes_max,

    // Engine errors (error.rs).
    bad_option,
    engine_unavailable,
    store_in_use,
    foreign_store,
    corrupt_store,
    store_version,
    io_error,
    engine_bug,

    // Messages to the owner process.
    visor_engine,
    visor_engine_down,
    visor_engine_stalled,
    visor_engine_resumed,
    send,
    execute,
    reply,
    read_ready,
    snapshot,
    install_snapshot,
    checkpoint,
    checkpoint_interval,
    checkpoint_chunk_bytes,
    log_base,

    // Outcomes of a request.
    executed,
    duplicate,
    registered,
    evicted,
    refused,
    membership,
    known,

    // Storage notices and the storage part of the status map.
    storage,
    created,
    restarted,
    resumed,
    mode,
    memory,
    disk,
    syncs,
    wal_bytes,
    wal_size,
    wal_compact_bytes,
    compactions,

    // A state sync in progress, in the status map.
    sync,
    received,
    bytes,

    // Replies to probe.
    visor_probe,
    empty,
    group,
    meta,
    replica,
    sequence,
    member,
    joined,
    epoch,
    role,
    life,
    learner,
    leaving,
    removed,

    // Membership changes: events and their results.
    reconfigured,
    members,
    done,
    unchanged,
    busy,
    stale,
    not_member,
    no_quorum,
    unreachable,
    abandoned,
    unknown,
    bad_argument,

    // A replica host's phase (the status map's `:status`).
    starting,
    normal,
    view_change,
    recovering,
    repairing,
    diverged,
    recover,
    stopped,
    failed,

    // Keys of the status map.
    status,
    view,
    log_view,
    op,
    commit,
    commit_max,
    primary,
    is_primary,
    replica_index,
    replica_count,
    stats,

    // Keys of the engine_info map.
    threads,
    groups,

    // Keys of the start options.
    cluster,
    tick_ms,
    batch_max_requests,
    batch_max_bytes,
    pipeline_max,
    request_queue_max,
    client_table_max,
    message_entries_max,
    heartbeat_ticks,
    prepare_retry_ticks,
    view_change_ticks,
    resend_ticks,
    request_retry_ticks,
    data_dir,
}
