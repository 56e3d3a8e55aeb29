//! `visor_nif`: the rustler bridge between Elixir (`Visor.Native`) and the
//! `vsr` protocol core. See docs/nif.md for the contract.
//!
//! Every NIF here only validates, enqueues or reads a status copy, and returns
//! in microseconds; replicas run on the engine's own threads (`engine.rs`).
//! Nothing panics on bad input: a wrong argument type is rejected by
//! rustler's decoder as `badarg`, which Elixir raises as `ArgumentError`.

mod atoms;
mod contract;
mod convert;
mod detector;
mod dirs;
mod engine;
mod error;
mod host;
mod resource;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustler::{Binary, Encoder, Env, Error, LocalPid, NewBinary, NifResult, ResourceArc, Term};
use vsr::Submission;
use vsr_host::Host;

use error::EngineError;
use host::{ReplicaHost, Shared, StatusCopy};
use resource::{EngineResource, StallRelease};

/// Ids of groups, unique for the life of the VM.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The interface's version alone: every library since the first has this
/// NIF, so `Visor.Native`'s load hook can always ask it before anything else.
#[rustler::nif]
fn protocol_version() -> u32 {
    contract::PROTOCOL_VERSION
}

/// The contract (`contract.rs`): limits, options, defaults and ranges.
#[rustler::nif]
fn nif_contract(env: Env) -> Term {
    contract::encode(env)
}

/// The 128-bit checksum `vsr` uses for messages and the hash chain, as 16
/// little-endian bytes (the byte order `vsr` puts on the wire).
#[rustler::nif]
fn checksum<'a>(env: Env<'a>, bytes: Binary<'a>) -> Binary<'a> {
    let sum = vsr::checksum(bytes.as_slice()).to_le_bytes();
    let mut out = NewBinary::new(env, sum.len());
    out.as_mut_slice().copy_from_slice(&sum);
    out.into()
}

/// A random number from the standard library's per-process hash keys,
/// stirred by a counter (no randomness crate needed for a nonce).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(NEXT_ID.load(Ordering::Relaxed));
    hasher.finish()
}

/// `{:ok, {epoch, members}}` for a membership's bytes (the `{:epoch, ...}`
/// event's, a peer's answer: untrusted), members as the event lists
/// them; `{:error, why}` for bytes that are not exactly one membership's
/// encoding (`convert::decode_membership`).
#[rustler::nif]
fn nif_decode_membership<'a>(env: Env<'a>, bytes: Binary<'a>) -> Term<'a> {
    convert::decoded_membership(env, bytes.as_slice())
}

/// `:ok`, or `{:error, {:bad_option, key, why}}` for the first engine
/// option in `opts` that `nif_start` would refuse (`convert::check_config`).
#[rustler::nif]
fn nif_check_options<'a>(env: Env<'a>, opts: Term<'a>) -> Term<'a> {
    match convert::check_config(opts) {
        Ok(()) => atoms::ok().encode(env),
        Err(reason) => (atoms::error(), reason).encode(env),
    }
}

/// `{:ok, engine}` or `{:error, reason}` (`error.rs`: `{:bad_option, key,
/// why}` names the bad option).
#[rustler::nif]
fn nif_start<'a>(env: Env<'a>, opts: Term<'a>, owner: LocalPid) -> Term<'a> {
    match start(env, opts, owner) {
        Ok(engine) => (atoms::ok(), engine).encode(env),
        Err(reason) => (atoms::error(), reason).encode(env),
    }
}

fn start(env: Env, opts: Term, owner: LocalPid) -> Result<ResourceArc<EngineResource>, EngineError> {
    let options = convert::decode_options(opts)?;
    let worker = engine::pool()
        .least_loaded()
        .ok_or(EngineError::EngineUnavailable)?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut config = options.config;
    // Only spreads the replicas' timeouts; any value is safe.
    config.jitter_seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ id;
    // Read ids on the wire derive from it: it must differ at every start
    // (a restart's reads must not match answers to the last one's).
    config.boot_nonce = config.jitter_seed ^ random_u64();
    let count = config.genesis.n() as u8;
    let index = options.replica_index;
    // Memory mode: a restart that lost its state (`recover`) must recover
    // before taking part. Disk mode: the store is opened, and the replica
    // built from it, on the engine thread (ReplicaHost::boot); a fresh
    // replica's memory-mode host stands in until then.
    let recover_now = options.recover && options.disk.is_none();
    let nonce = host::recovery_nonce(config.jitter_seed);
    // Without a store only a bug can fail a boot: decode_options validated
    // the config and the index.
    // A node a change adds stands in as a learner (a memory-mode one is
    // that learner; a disk-mode one is replaced once its store is open),
    // as its slot may lie outside the genesis.
    //
    // A memory-mode member that lost its state after a change recovers in
    // `known`, the newest membership its host knows, at its slot there
    // (`Host::boot_in`), named by `member`/`joined` if a change added it.
    let host = match (&options.joining, options.known) {
        (Some(joining), Some(known)) => {
            config.member = Some((joining.id, joining.joined));
            Host::boot_in(config, index, None, true, nonce, Some(known))
        }
        (None, Some(known)) => Host::boot_in(config, index, None, true, nonce, Some(known)),
        (Some(joining), None) => Host::boot_learner(
            config,
            index,
            joining.id,
            joining.joined,
            joining.life.unwrap_or(1),
            None,
        ),
        (None, None) => Host::boot(config, index, None, recover_now, nonce),
    }
    .map_err(|e| EngineError::Bug(e.to_string()))?;
    let copy = match &options.disk {
        Some(disk) => StatusCopy::starting(host.replica(), Some(disk.dir.clone())),
        None => StatusCopy::of(host.replica()),
    };
    let disk = options.disk.map(|disk| (disk, options.recover, options.joining));
    let shared = Arc::new(Shared::new(copy));
    let engine = ResourceArc::new(EngineResource::new(id, index, count, shared, worker.tx.clone()));
    // The owner's death stops the group (EngineResource::down). An owner
    // that is already dead gets an engine that is stopped from the start.
    if env.monitor(&engine, &owner).is_none() {
        engine.stop();
        return Ok(engine);
    }
    worker.start(ReplicaHost::new(
        id,
        host,
        owner,
        engine.clone(),
        options.tick,
        disk,
    ));
    Ok(engine)
}

/// Reads the superblock of the store in `dir` on an engine thread; the
/// answer comes to `owner` as `{:visor_probe, tag, result}`.
#[rustler::nif]
fn nif_probe(dir: Binary, tag: u64, owner: LocalPid) -> NifResult<rustler::Atom> {
    let dir = std::str::from_utf8(dir.as_slice()).map_err(|_| Error::BadArg)?;
    let worker = engine::pool().least_loaded().ok_or(Error::BadArg)?;
    let _ = worker.tx.send(engine::Command::Probe {
        dir: dir.into(),
        tag,
        owner,
    });
    Ok(atoms::ok())
}

/// `bytes` is one peer message or a list of them (a `{:send, to, list}`
/// event's list). Peer input is untrusted: elements that are not binaries
/// are skipped, and a list longer than `contract::DELIVER_LIST_MAX` is dropped
/// whole (without walking it further); either way `{:malformed, n}` says
/// how many were dropped. Anything but a binary or a list is `badarg`.
#[rustler::nif]
fn nif_deliver<'a>(
    env: Env<'a>,
    engine: ResourceArc<EngineResource>,
    bytes: Term<'a>,
) -> NifResult<Term<'a>> {
    if let Ok(one) = bytes.decode::<Binary>() {
        engine.deliver(vec![one.as_slice().to_vec()]);
        return Ok(atoms::ok().encode(env));
    }
    if !bytes.is_list() {
        return Err(Error::BadArg);
    }
    // Walked cell by cell, not with rustler's ListIterator: that one panics
    // on an improper list, which a peer can send.
    let mut messages = Vec::new();
    let mut dropped = 0usize;
    let mut rest = bytes;
    while !rest.is_empty_list() {
        let Ok((item, tail)) = rest.list_get_cell() else {
            dropped += 1; // an improper tail
            break;
        };
        if messages.len() + dropped == contract::DELIVER_LIST_MAX {
            // Too long to come from an engine: not one message of it is trusted.
            messages.clear();
            dropped = 1;
            break;
        }
        match item.decode::<Binary>() {
            Ok(message) => messages.push(message.as_slice().to_vec()),
            Err(_) => dropped += 1,
        }
        rest = tail;
    }
    if !messages.is_empty() {
        engine.deliver(messages);
    }
    Ok(if dropped == 0 {
        atoms::ok().encode(env)
    } else {
        (atoms::malformed(), dropped).encode(env)
    })
}

#[rustler::nif]
fn nif_submit(
    engine: ResourceArc<EngineResource>,
    client: Binary,
    session: u64,
    request: u64,
    payload: Binary,
) -> NifResult<rustler::Atom> {
    let client: [u8; 16] = client.as_slice().try_into().map_err(|_| Error::BadArg)?;
    engine.submit(Submission {
        client: u128::from_le_bytes(client),
        session,
        request,
        payload: payload.as_slice().to_vec(),
    });
    Ok(atoms::ok())
}

/// The host's answer to `{:snapshot, op}`. The binary is not copied here
/// (a refc binary is shared into an `OwnedEnv`); the engine thread copies it.
#[rustler::nif]
fn nif_snapshot<'a>(
    engine: ResourceArc<EngineResource>,
    op: u64,
    bytes: Term<'a>,
) -> NifResult<rustler::Atom> {
    if !bytes.is_binary() {
        return Err(Error::BadArg);
    }
    let owned = rustler::OwnedEnv::new();
    let saved = owned.save(bytes);
    engine.snapshot(op, owned, saved);
    Ok(atoms::ok())
}

#[rustler::nif]
fn nif_read(engine: ResourceArc<EngineResource>, id: u64) -> rustler::Atom {
    engine.read(id);
    atoms::ok()
}

/// Asks the replica for a membership change to the members `ids` (a
/// list of 16-byte little-endian member ids, 1 to `MAX_REPLICAS` of them,
/// distinct, in any order), named `id` (a u64, unique among this
/// replica's changes), given up after `ticks` (a u64) if not yet consented
/// to. Answered by a `{:reconfigured, id, result}` event. Every argument
/// but the engine is checked here, and a bad one is `{:error,
/// {:bad_argument, name, why}}`, never a panic; the list is walked cell by
/// cell (an improper list is refused, not a crash).
#[rustler::nif]
fn nif_reconfigure<'a>(
    env: Env<'a>,
    engine: ResourceArc<EngineResource>,
    id: Term<'a>,
    ids: Term<'a>,
    ticks: Term<'a>,
) -> Term<'a> {
    match convert::reconfigure_args(id, ids, ticks) {
        Ok((id, ids, ticks)) => {
            engine.reconfigure(id, ids, ticks);
            atoms::ok().encode(env)
        }
        Err((name, why)) => (
            atoms::error(),
            (
                atoms::bad_argument(),
                rustler::Atom::from_str(env, name).expect("a valid atom"),
                why,
            ),
        )
            .encode(env),
    }
}

/// Quiet groups: the node's detector holds up the nodes of the members
/// `ids` (a list of 16-byte little-endian member ids, at most
/// `PEERS_IDS_MAX`; this node's own need not be in it). The engine feeds
/// the replica the change if it concerns it (docs/nif.md, "Quiet groups").
/// Anything but such a list is `badarg`; the list is walked cell by cell.
#[rustler::nif]
fn nif_peers(engine: ResourceArc<EngineResource>, ids: Term) -> NifResult<rustler::Atom> {
    let mut up = Vec::new();
    let mut rest = ids;
    while !rest.is_empty_list() {
        let (item, tail) = rest.list_get_cell().map_err(|_| Error::BadArg)?;
        if up.len() == contract::PEERS_IDS_MAX {
            return Err(Error::BadArg);
        }
        let id: [u8; 16] = item
            .decode::<Binary>()
            .ok()
            .and_then(|b| b.as_slice().try_into().ok())
            .ok_or(Error::BadArg)?;
        up.push(u128::from_le_bytes(id));
        rest = tail;
    }
    engine.peers(up);
    Ok(atoms::ok())
}

#[rustler::nif]
fn nif_status(env: Env, engine: ResourceArc<EngineResource>) -> Term {
    let copy = engine.shared.status_copy();
    let stopped = engine.shared.is_stopped();
    convert::status(env, &copy, stopped, engine.replica_index, engine.replica_count)
}

#[rustler::nif]
fn nif_stop(engine: ResourceArc<EngineResource>) -> rustler::Atom {
    engine.stop();
    atoms::ok()
}

#[rustler::nif]
fn nif_crash(engine: ResourceArc<EngineResource>) -> rustler::Atom {
    engine.crash();
    atoms::ok()
}

/// Test hook: stalls the engine thread of `engine` until the returned
/// handle is released (`nif_release_for_test/1`) or garbage collected.
#[rustler::nif]
fn nif_stall_for_test(engine: ResourceArc<EngineResource>, notify: LocalPid) -> ResourceArc<StallRelease> {
    let (release, released) = crossbeam_channel::bounded(0);
    engine.stall(released, notify);
    ResourceArc::new(StallRelease::new(release))
}

#[rustler::nif]
fn nif_release_for_test(release: ResourceArc<StallRelease>) -> rustler::Atom {
    release.release();
    atoms::ok()
}

#[rustler::nif]
fn nif_engine_info(env: Env) -> Term {
    let (threads, groups) = engine::info();
    convert::engine_info(env, threads, groups)
}

rustler::init!("Elixir.Visor.Native");
