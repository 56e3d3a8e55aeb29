//! Term encoding and decoding: start options in, events and status out.
//!
//! Decoding never trusts the caller: the Elixir wrapper validates first, but
//! a raw NIF call with a bad term must still come back as an error, never a
//! panic or a silently truncated integer (rustler's `u8` decoder wraps 256
//! to 0, so every integer is read as `u64` and range-checked here).

use std::time::Duration;

use rustler::{Atom, Binary, Encoder, Env, NewBinary, Term};
use vsr::{ChangeResult, Config, Membership, Outcome, Output, Role, Stats, MAX_REPLICAS, MAX_SLOTS};

use crate::atoms;
use crate::contract::{DELIVER_LIST_MAX, TICK_MS_DEFAULT, TICK_MS_MAX};
use crate::error::EngineError;
use crate::host::{DiskOptions, HostPhase, Joining, StatusCopy};
use vsr_host::StorageNotice;

/// What `start` was asked for, checked.
pub struct StartOptions {
    pub config: Config,
    pub replica_index: u8,
    pub tick: Duration,
    /// Join an existing cluster after losing all state: recover first.
    pub recover: bool,
    /// Disk mode; `None` for memory mode.
    pub disk: Option<DiskOptions>,
    /// A node a change adds: its member id and the epoch that admits it,
    /// as a learner (`learner: true`) or, in disk mode, restarting from
    /// the store it created as one. `None`: a member of the genesis, at
    /// `replica_index`.
    pub joining: Option<Joining>,
    /// Memory mode, recovering: the newest membership the host knows
    /// (`known`, its exact bytes), to recover in instead of the genesis
    /// (`Host::boot_in`). `None`: the genesis.
    pub known: Option<Membership>,
}

type Setter = fn(&mut Config, u64) -> Result<(), EngineError>;

fn usize_of(name: &'static str, value: u64) -> Result<usize, EngineError> {
    usize::try_from(value).map_err(|_| EngineError::bad_option(name, "is too large"))
}

/// The vsr `Config` fields that `start` may override, by option name.
fn overrides() -> [(Atom, &'static str, Setter); 15] {
    [
        (atoms::checkpoint_interval(), "checkpoint_interval", |c, v| {
            c.checkpoint_interval = v;
            Ok(())
        }),
        (atoms::checkpoint_bytes(), "checkpoint_bytes", |c, v| {
            c.checkpoint_bytes = v;
            Ok(())
        }),
        (
            atoms::checkpoint_chunk_bytes(),
            "checkpoint_chunk_bytes",
            |c, v| {
                c.checkpoint_chunk_bytes = usize_of("checkpoint_chunk_bytes", v)?;
                Ok(())
            },
        ),
        (atoms::batch_max_requests(), "batch_max_requests", |c, v| {
            c.batch_max_requests = usize_of("batch_max_requests", v)?;
            Ok(())
        }),
        (atoms::batch_max_bytes(), "batch_max_bytes", |c, v| {
            c.batch_max_bytes = usize_of("batch_max_bytes", v)?;
            Ok(())
        }),
        (atoms::pipeline_max(), "pipeline_max", |c, v| {
            c.pipeline_max = v;
            Ok(())
        }),
        (atoms::request_queue_max(), "request_queue_max", |c, v| {
            c.request_queue_max = usize_of("request_queue_max", v)?;
            Ok(())
        }),
        (atoms::client_table_max(), "client_table_max", |c, v| {
            c.client_table_max = usize_of("client_table_max", v)?;
            Ok(())
        }),
        (atoms::message_entries_max(), "message_entries_max", |c, v| {
            c.message_entries_max = usize_of("message_entries_max", v)?;
            Ok(())
        }),
        (atoms::heartbeat_ticks(), "heartbeat_ticks", |c, v| {
            c.heartbeat_ticks = v;
            Ok(())
        }),
        (atoms::prepare_retry_ticks(), "prepare_retry_ticks", |c, v| {
            c.prepare_retry_ticks = v;
            Ok(())
        }),
        (atoms::view_change_ticks(), "view_change_ticks", |c, v| {
            c.view_change_ticks = v;
            Ok(())
        }),
        (atoms::resend_ticks(), "resend_ticks", |c, v| {
            c.resend_ticks = v;
            Ok(())
        }),
        (atoms::request_retry_ticks(), "request_retry_ticks", |c, v| {
            c.request_retry_ticks = v;
            Ok(())
        }),
        (atoms::quiet_after_ticks(), "quiet_after_ticks", |c, v| {
            c.quiet_after_ticks = v;
            Ok(())
        }),
    ]
}

/// The value of `key` in the map `opts`, if present, as a `u64`.
fn get_u64(opts: Term, key: Atom, name: &'static str) -> Result<Option<u64>, EngineError> {
    match opts.map_get(key) {
        Err(_) => Ok(None),
        Ok(value) => value
            .decode::<u64>()
            .map(Some)
            .map_err(|_| EngineError::bad_option(name, "must be a non-negative integer below 2^64")),
    }
}

fn require_u64(opts: Term, key: Atom, name: &'static str) -> Result<u64, EngineError> {
    get_u64(opts, key, name)?.ok_or_else(|| EngineError::bad_option(name, "is required"))
}

/// Reads and checks the options map of `start`. The error names the first
/// bad field; vsr's own `Config::validate` has the last word on limits.
pub fn decode_options(opts: Term) -> Result<StartOptions, EngineError> {
    if !opts.is_map() {
        return Err(EngineError::bad_option("opts", "must be a map"));
    }
    let cluster = match opts.map_get(atoms::cluster()) {
        Err(_) => return Err(EngineError::bad_option("cluster", "is required")),
        Ok(term) => match term.decode::<Binary>() {
            Ok(bin) if bin.len() == 16 => u128::from_le_bytes(bin.as_slice().try_into().expect("16 bytes")),
            _ => return Err(EngineError::bad_option("cluster", "must be a 16-byte binary")),
        },
    };
    let count = require_u64(opts, atoms::replica_count(), "replica_count")?;
    if count == 0 || count > MAX_REPLICAS as u64 {
        let why = format!("must be 1..={MAX_REPLICAS}, got {count}");
        return Err(EngineError::bad_option("replica_count", why));
    }
    let joining = decode_joining(opts)?;
    let index = require_u64(opts, atoms::replica_index(), "replica_index")?;
    if joining.is_none() && index >= count {
        let why = format!("must be 0..{count} (below replica_count), got {index}");
        return Err(EngineError::bad_option("replica_index", why));
    }
    if joining.is_some() && index >= MAX_SLOTS as u64 {
        let why = format!("must be a slot 0..{MAX_SLOTS}, got {index}");
        return Err(EngineError::bad_option("replica_index", why));
    }
    let tick_ms = get_u64(opts, atoms::tick_ms(), "tick_ms")?.unwrap_or(TICK_MS_DEFAULT);
    if tick_ms == 0 || tick_ms > TICK_MS_MAX {
        let why = format!("must be 1..={TICK_MS_MAX}, got {tick_ms}");
        return Err(EngineError::bad_option("tick_ms", why));
    }
    let config = decode_config(opts, cluster, count as u8)?;
    let recover = match opts.map_get(atoms::recover()) {
        Err(_) => false,
        Ok(value) => value
            .decode::<bool>()
            .map_err(|_| EngineError::bad_option("recover", "must be a boolean"))?,
    };
    let disk = decode_disk(opts)?;
    let known = decode_known(opts, count)?;
    if known.is_some() {
        if !recover {
            return Err(EngineError::bad_option(
                "known",
                "needs recover: true (only a replica that lost its state recovers in it)",
            ));
        }
        if disk.is_some() {
            return Err(EngineError::bad_option(
                "known",
                "is only accepted without data_dir (a store records its own membership)",
            ));
        }
        if joining.is_some_and(|j| j.life.is_some()) {
            return Err(EngineError::bad_option(
                "known",
                "must not come with learner: true (a learner takes its list from the primary)",
            ));
        }
    }
    if let Some(joining) = &joining {
        if recover && known.is_none() {
            return Err(EngineError::bad_option(
                "recover",
                "must be false with member, unless known names the membership it recovers in \
                 (a learner starts empty; a member restarts from its store)",
            ));
        }
        if joining.life.is_none() && disk.is_none() && known.is_none() {
            return Err(EngineError::bad_option(
                "learner",
                "must be true without data_dir or known (only a store, or the membership \
                 known, can say a member joined)",
            ));
        }
    }
    if let Some(known) = &known {
        check_listed(known, index, joining.as_ref(), count)?;
    }
    Ok(StartOptions {
        config,
        replica_index: index as u8,
        tick: Duration::from_millis(tick_ms),
        recover,
        disk,
        joining,
        known,
    })
}

/// `known`: the exact membership the host knows as newest (memory mode,
/// recovering), as a binary: the bytes an `{:epoch, ...}` event (or the
/// status) gave for it, the core's own encoding of `vsr::Membership`
/// (`membership_bytes`). Its epoch must follow the genesis (from 1), and
/// a member it says joined in the genesis must be this cluster's genesis
/// member of that slot (`Config::new`: its id its slot, below
/// `replica_count`). The bytes may come from a peer: `decode_membership`
/// treats them as untrusted.
fn decode_known(opts: Term, count: u64) -> Result<Option<Membership>, EngineError> {
    let Ok(term) = opts.map_get(atoms::known()) else {
        return Ok(None);
    };
    let bad = |why: String| EngineError::bad_option("known", why);
    let Ok(bytes) = term.decode::<Binary>() else {
        return Err(bad(
            "must be a binary: a membership's bytes, as an {:epoch, ...} event gives them".into(),
        ));
    };
    let known = decode_membership(bytes.as_slice()).map_err(|why| bad(why.into()))?;
    if known.epoch() == 0 {
        return Err(bad(
            "must be a membership of an epoch after the genesis (from 1)".into()
        ));
    }
    for m in known.members() {
        if m.joined == 0 && (u64::from(m.slot) >= count || m.id != u128::from(m.slot)) {
            return Err(bad(format!(
                "lists member {:#x} in slot {} as a genesis member, which this cluster's \
                 genesis of {count} does not hold (another cluster's list?)",
                m.id, m.slot
            )));
        }
    }
    Ok(Some(known))
}

/// The bytes of `membership`: the core's encoding of it (postcard, as a
/// reconfiguration entry carries its target), equal for equal
/// memberships. The `{:epoch, ...}` event and the status give them, and
/// `start/2`'s `known` takes them back (`decode_membership`).
pub fn membership_bytes(membership: &Membership) -> Vec<u8> {
    postcard::to_allocvec(membership).expect("encoding to a Vec cannot fail")
}

/// The most bytes a membership takes (`membership_bytes`): its epoch and
/// change name (varints: 10 bytes for a u64, 19 for a u128), the count,
/// and for each of `MAX_REPLICAS` members its slot, id, `joined`,
/// incarnation and life.
pub const MEMBERSHIP_BYTES_MAX: usize = 10 + (19 + 10) + 1 + MAX_REPLICAS * (1 + 19 + 10 + 10 + 10);

/// A membership from `bytes` that may come from anywhere (a peer's
/// answer): at most `MEMBERSHIP_BYTES_MAX`, exactly one membership's
/// encoding and nothing after it, the very bytes `membership_bytes`
/// gives for it (so that equal lists have equal bytes), well formed
/// (`Membership`'s decoder checks sizes, slots and ids), with an epoch,
/// `joined`s and incarnations no higher than the core takes from a peer
/// (`NUMBER_MAX`) and no member admitted after the epoch. An error says
/// why, never a panic.
pub fn decode_membership(bytes: &[u8]) -> Result<Membership, &'static str> {
    if bytes.is_empty() || bytes.len() > MEMBERSHIP_BYTES_MAX {
        return Err("is not a membership's bytes (empty, or longer than any membership)");
    }
    let (membership, rest) = postcard::take_from_bytes::<Membership>(bytes)
        .map_err(|_| "is not a membership's bytes (does not decode, or is not a well-formed list)")?;
    if !rest.is_empty() || membership_bytes(&membership) != bytes {
        return Err("is not a membership's bytes (not exactly the encoding of one)");
    }
    let max = vsr::message::NUMBER_MAX;
    if membership.epoch() > max {
        return Err("is not a membership's bytes (its epoch is above 2^63 - 1)");
    }
    for m in membership.members() {
        if m.joined > membership.epoch() {
            return Err("is not a membership's bytes (a member joined after its epoch)");
        }
        if m.incarnation > max {
            return Err("is not a membership's bytes (an incarnation above 2^63 - 1)");
        }
    }
    Ok(membership)
}

/// `{:ok, {epoch, members}}` (`members` as `members` gives them) for a
/// membership's bytes, or `{:error, why}` (`decode_membership`).
pub fn decoded_membership<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    match decode_membership(bytes) {
        Ok(m) => (atoms::ok(), (m.epoch(), members(env, &m))).encode(env),
        Err(why) => (atoms::error(), why).encode(env),
    }
}

/// The replica `start` asks for must be the member `known` lists at its
/// slot: named by `member` and `joined` if given, else the genesis member
/// of that slot (its id the slot number, joined 0).
fn check_listed(
    known: &Membership,
    index: u64,
    joining: Option<&Joining>,
    count: u64,
) -> Result<(), EngineError> {
    let (id, joined) = match joining {
        Some(joining) => (joining.id, joining.joined),
        None if index < count => (u128::from(index), 0),
        None => {
            return Err(EngineError::bad_option(
                "replica_index",
                format!("must be below replica_count ({count}) without member"),
            ))
        }
    };
    let listed = known
        .member(index as u8)
        .is_some_and(|m| m.id == id && m.joined == joined);
    if listed {
        Ok(())
    } else {
        Err(EngineError::bad_option(
            "known",
            format!("does not list this replica (member id {id:#x}, joined {joined}) at slot {index}"),
        ))
    }
}

/// `member` (a 16-byte member id), `joined` (the epoch that admits it,
/// at least 1) and `learner` (a boolean, default false): a node a change
/// adds. A learner draws a life (never 0) at every start.
fn decode_joining(opts: Term) -> Result<Option<Joining>, EngineError> {
    let learner = match opts.map_get(atoms::learner()) {
        Err(_) => false,
        Ok(value) => value
            .decode::<bool>()
            .map_err(|_| EngineError::bad_option("learner", "must be a boolean"))?,
    };
    let id = match opts.map_get(atoms::member()) {
        Err(_) if learner => return Err(EngineError::bad_option("member", "is required with learner")),
        Err(_) => {
            if opts.map_get(atoms::joined()).is_ok() {
                return Err(EngineError::bad_option("joined", "needs member"));
            }
            return Ok(None);
        }
        Ok(term) => match term.decode::<Binary>() {
            Ok(bin) if bin.len() == 16 => u128::from_le_bytes(bin.as_slice().try_into().expect("16 bytes")),
            _ => return Err(EngineError::bad_option("member", "must be a 16-byte binary")),
        },
    };
    let joined = require_u64(opts, atoms::joined(), "joined")?;
    if joined == 0 || joined > vsr::message::NUMBER_MAX {
        let why = format!(
            "must be an epoch after the genesis (1..={}), got {joined}",
            vsr::message::NUMBER_MAX
        );
        return Err(EngineError::bad_option("joined", why));
    }
    Ok(Some(Joining {
        id,
        joined,
        life: learner.then(random_life),
    }))
}

/// A learner's life: drawn at every start, never 0 (the standard
/// library's per-process hash keys, stirred by the clock and a counter).
fn random_life() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(DRAWN.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish().max(1)
}

/// vsr's `Config` from the engine options in `opts` (those absent keep
/// their defaults), checked by vsr itself: each option's range, and the
/// rules that tie options together (`Config::validate`).
fn decode_config(opts: Term, cluster: u128, count: u8) -> Result<Config, EngineError> {
    let mut config = Config::new(cluster, count);
    for (key, name, set) in overrides() {
        if let Some(value) = get_u64(opts, key, name)? {
            set(&mut config, value)?;
        }
    }
    config.validate()?;
    config.check_ranges()?;
    Ok(config)
}

/// Checks the engine options of a `start` options map as `start` would,
/// without starting anything: `Visor.Options` asks it when a group's
/// options are read, so that options the engine would refuse raise then,
/// not in a server that has already started. Neither the cluster nor the
/// replica count affects these checks.
pub fn check_config(opts: Term) -> Result<(), EngineError> {
    if !opts.is_map() {
        return Err(EngineError::bad_option("opts", "must be a map"));
    }
    decode_config(opts, 0, 1).map(|_| ())
}

/// `data_dir` (with `group` and, optionally, `meta`) selects disk mode.
fn decode_disk(opts: Term) -> Result<Option<DiskOptions>, EngineError> {
    let Ok(dir) = opts.map_get(atoms::data_dir()) else {
        return Ok(None);
    };
    let dir = match dir.decode::<Binary>() {
        Ok(bin) if !bin.is_empty() => String::from_utf8(bin.as_slice().to_vec())
            .map_err(|_| EngineError::bad_option("data_dir", "must be UTF-8"))?,
        _ => return Err(EngineError::bad_option("data_dir", "must be a non-empty string")),
    };
    let bytes = |key: Atom, name: &'static str, max: usize| -> Result<Option<Vec<u8>>, EngineError> {
        match opts.map_get(key) {
            Err(_) => Ok(None),
            Ok(term) => match term.decode::<Binary>() {
                Ok(bin) if bin.len() <= max => Ok(Some(bin.as_slice().to_vec())),
                _ => Err(EngineError::bad_option(
                    name,
                    format!("must be a binary of at most {max} bytes"),
                )),
            },
        }
    };
    let group = bytes(atoms::group(), "group", vsr_storage::format::GROUP_MAX)?
        .filter(|g| !g.is_empty())
        .ok_or_else(|| EngineError::bad_option("group", "is required with data_dir (a non-empty binary)"))?;
    let meta = bytes(atoms::meta(), "meta", vsr_storage::format::META_MAX)?.unwrap_or_default();
    let compaction_bytes = match opts.map_get(atoms::wal_compact_bytes()) {
        Err(_) => None,
        Ok(term) => match term.decode::<u64>() {
            Ok(bytes) if bytes > 0 => Some(bytes),
            _ => {
                return Err(EngineError::bad_option(
                    "wal_compact_bytes",
                    "must be a positive integer",
                ))
            }
        },
    };
    Ok(Some(DiskOptions {
        dir: dir.into(),
        group,
        meta,
        compaction_bytes,
    }))
}

/// The arguments of `nif_reconfigure`, checked: the change's id, the
/// member ids (1 to `MAX_REPLICAS`, distinct, each 16 bytes little-endian)
/// and the ticks; or the bad argument's name and why.
pub fn reconfigure_args(
    id: Term,
    ids: Term,
    ticks: Term,
) -> Result<(u64, Vec<u128>, u64), (&'static str, String)> {
    let u64_of = |term: Term, name: &'static str| {
        term.decode::<u64>()
            .map_err(|_| (name, "must be a non-negative integer below 2^64".to_string()))
    };
    let id = u64_of(id, "id")?;
    let ticks = u64_of(ticks, "ticks")?;
    let bad = |why: &str| ("members", why.to_string());
    if !ids.is_list() {
        return Err(bad("must be a list of 16-byte member ids"));
    }
    let mut members: Vec<u128> = Vec::new();
    let mut rest = ids;
    // Cell by cell: rustler's ListIterator panics on an improper list.
    while !rest.is_empty_list() {
        let Ok((item, tail)) = rest.list_get_cell() else {
            return Err(bad("must be a proper list"));
        };
        if members.len() == MAX_REPLICAS {
            return Err(bad(&format!("must hold 1..={MAX_REPLICAS} member ids")));
        }
        let member = match item.decode::<Binary>() {
            Ok(bin) if bin.len() == 16 => u128::from_le_bytes(bin.as_slice().try_into().expect("16 bytes")),
            _ => return Err(bad("must hold 16-byte binaries")),
        };
        if members.contains(&member) {
            return Err(bad("must not name a member twice"));
        }
        members.push(member);
        rest = tail;
    }
    if members.is_empty() {
        return Err(bad(&format!("must hold 1..={MAX_REPLICAS} member ids")));
    }
    Ok((id, members, ticks))
}

/// `{:storage, kind, detail}`: something about storage worth logging.
pub fn notice<'a>(env: Env<'a>, notice: &StorageNotice) -> Term<'a> {
    let (kind, detail) = match notice {
        StorageNotice::Created => (atoms::created(), None::<String>.encode(env)),
        StorageNotice::Restarted { torn } => (atoms::restarted(), torn.encode(env)),
        StorageNotice::Recovering(reason) => (atoms::recovering(), reason.encode(env)),
        StorageNotice::Repairing(reason) => (atoms::repairing(), reason.encode(env)),
        StorageNotice::Error(reason) => (atoms::error(), reason.encode(env)),
        StorageNotice::Resumed => (atoms::resumed(), None::<String>.encode(env)),
    };
    (atoms::storage(), kind, detail).encode(env)
}

/// A fresh binary holding `bytes`.
pub fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut out = NewBinary::new(env, bytes.len());
    out.as_mut_slice().copy_from_slice(bytes);
    Binary::from(out).encode(env)
}

/// A client id as Elixir sees it: 16 little-endian bytes.
pub fn client<'a>(env: Env<'a>, client: u128) -> Term<'a> {
    binary(env, &client.to_le_bytes())
}

/// `:executed | {:duplicate, op} | {:registered, session} | :evicted |
/// :refused | :membership` (a reconfiguration entry's, which the server
/// skips as it skips every outcome but `:executed`)
pub fn outcome<'a>(env: Env<'a>, outcome: &Outcome) -> Term<'a> {
    match *outcome {
        Outcome::Executed => atoms::executed().encode(env),
        Outcome::Duplicate { op } => (atoms::duplicate(), op).encode(env),
        Outcome::Registered { session } => (atoms::registered(), session).encode(env),
        Outcome::Evicted => atoms::evicted().encode(env),
        Outcome::Refused => atoms::refused().encode(env),
        Outcome::Membership => atoms::membership().encode(env),
    }
}

/// The `{:send, to, id, [bytes, ...]}` events for one flush's outputs
/// (`to` the receiver's slot, `id` its member id as 16 little-endian
/// bytes: hosts route by the id, as a slot alone does not name a node
/// while a learner holds a slot whose old owner is still leaving): every
/// message to the same receiver in one list (in the order sent, at most
/// `DELIVER_LIST_MAX` a list), so that a burst of messages to a peer costs
/// one distribution message and one engine command there, not one each.
pub fn sends<'a>(env: Env<'a>, outputs: &[Output]) -> Vec<Term<'a>> {
    let mut by_peer: Vec<((u8, u128), Vec<Term<'a>>)> = Vec::new();
    for output in outputs {
        if let Output::Send { to, id, bytes } = output {
            let message = binary(env, bytes);
            match by_peer.iter_mut().find(|(peer, _)| *peer == (*to, *id)) {
                Some((_, list)) => list.push(message),
                None => by_peer.push(((*to, *id), vec![message])),
            }
        }
    }
    by_peer
        .iter()
        .flat_map(|((to, id), list)| {
            let id = client(env, *id);
            list.chunks(DELIVER_LIST_MAX)
                .map(move |chunk| (atoms::send(), *to as u32, id, chunk).encode(env))
        })
        .collect()
}

/// One event of a `{:visor_engine, ref, events}` message, or `None` for
/// outputs that do not go to Elixir one by one (storage writes, and sends:
/// see `sends`).
pub fn event<'a>(env: Env<'a>, output: &Output) -> Option<Term<'a>> {
    match output {
        Output::Send { .. } => None,
        // `{:reconfigured, id, result}`: the change `reconfigure/4` asked
        // for as `id` ended so (`change_result`).
        Output::Reconfigured { id, result } => {
            Some((atoms::reconfigured(), *id, change_result(*result)).encode(env))
        }
        // `{:epoch, epoch, members, role, membership}`: the replica entered
        // an epoch (or booted from a store of one: `ReplicaHost::boot`);
        // `membership` is the exact list's bytes (`membership_bytes`).
        Output::Epoch { membership, role: r } => Some(
            (
                atoms::epoch(),
                membership.epoch(),
                members(env, membership),
                role(*r),
                binary(env, &membership_bytes(membership)),
            )
                .encode(env),
        ),
        // `{:removed, epoch}`: left out of `epoch`, and a quorum of its
        // members entered it: the replica handles nothing more.
        Output::Removed { epoch } => Some((atoms::removed(), *epoch).encode(env)),
        Output::Execute { entry, outcomes } => {
            let requests: Vec<Term> = entry
                .requests
                .iter()
                .zip(outcomes)
                .map(|(r, o)| {
                    let fields = [
                        client(env, r.client),
                        r.request.encode(env),
                        outcome(env, o),
                        binary(env, &r.payload),
                    ];
                    rustler::types::tuple::make_tuple(env, &fields)
                })
                .collect();
            let fields = [
                atoms::execute().encode(env),
                entry.op.encode(env),
                entry.view.encode(env),
                entry.timestamp.encode(env),
                requests.encode(env),
            ];
            Some(rustler::types::tuple::make_tuple(env, &fields))
        }
        Output::Reply {
            client: id,
            request,
            op,
            outcome: o,
        } => {
            let fields = [
                atoms::reply().encode(env),
                client(env, *id),
                request.encode(env),
                op.encode(env),
                outcome(env, o),
            ];
            Some(rustler::types::tuple::make_tuple(env, &fields))
        }
        // `{:read_ready, id, op}`: the read may be served from local state now.
        Output::ReadReady { id, op } => Some((atoms::read_ready(), *id, *op).encode(env)),
        // `{:snapshot, op}`: encode the state as of `op` (right after its
        // execute) and answer with `snapshot/3`.
        Output::TakeSnapshot { op } => Some((atoms::snapshot(), *op).encode(env)),
        // `{:install_snapshot, op, bytes}`: replace the state with this one.
        Output::InstallSnapshot { op, app } => {
            Some((atoms::install_snapshot(), *op, binary(env, app)).encode(env))
        }
        // `{:diverged, op, digest, quorum}`: this replica's checkpoint at
        // `op` differs from the quorum's (digests as 32 lowercase hex digits).
        Output::Diverged { op, digest, quorum } => Some(
            (
                atoms::diverged(),
                *op,
                format!("{digest:032x}"),
                format!("{quorum:032x}"),
            )
                .encode(env),
        ),
        Output::WriteLog { .. } | Output::WriteState(_) | Output::WriteCheckpoint(_) => None,
    }
}

/// `:done | :unchanged | :busy | :stale | :not_member | :no_quorum |
/// :unreachable | :abandoned | :unknown` (docs/nif.md, "Membership changes").
pub fn change_result(result: ChangeResult) -> Atom {
    match result {
        ChangeResult::Done => atoms::done(),
        ChangeResult::Unchanged => atoms::unchanged(),
        ChangeResult::Busy => atoms::busy(),
        ChangeResult::Stale => atoms::stale(),
        ChangeResult::NotMember => atoms::not_member(),
        ChangeResult::NoQuorum => atoms::no_quorum(),
        ChangeResult::Unreachable => atoms::unreachable(),
        ChangeResult::Abandoned => atoms::abandoned(),
        ChangeResult::Unknown => atoms::unknown(),
    }
}

/// `:member | :learner | :leaving | :removed`.
pub fn role(role: Role) -> Atom {
    match role {
        Role::Member => atoms::member(),
        Role::Learner => atoms::learner(),
        Role::Leaving => atoms::leaving(),
        Role::Removed => atoms::removed(),
    }
}

/// A membership's members, in the order that decides the primaries, as
/// `[{slot, member_id, joined}]` (the member id as 16 little-endian bytes).
pub fn members<'a>(env: Env<'a>, membership: &Membership) -> Term<'a> {
    let members: Vec<Term> = membership
        .members()
        .iter()
        .map(|m| (m.slot as u32, client(env, m.id), m.joined).encode(env))
        .collect();
    members.encode(env)
}

fn map<'a>(env: Env<'a>, pairs: &[(Atom, Term<'a>)]) -> Term<'a> {
    let keys: Vec<Term> = pairs.iter().map(|(k, _)| k.encode(env)).collect();
    let values: Vec<Term> = pairs.iter().map(|(_, v)| *v).collect();
    Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
}

fn stats<'a>(env: Env<'a>, s: &Stats) -> Term<'a> {
    // By name, not by destructuring: a counter added to vsr's Stats shows up
    // here only when someone adds it, but never breaks the build meanwhile.
    let pairs: [(&str, u64); 15] = [
        ("dropped_truncated", s.dropped_truncated),
        ("dropped_corrupt", s.dropped_corrupt),
        ("dropped_unknown_format", s.dropped_unknown_format),
        ("dropped_foreign_cluster", s.dropped_foreign_cluster),
        ("dropped_unknown_sender", s.dropped_unknown_sender),
        ("dropped_malformed", s.dropped_malformed),
        ("dropped_stale", s.dropped_stale),
        ("dropped_requests", s.dropped_requests),
        ("sent", s.sent),
        ("views_started", s.views_started),
        ("checkpoints_installed", s.checkpoints_installed),
        ("checkpoint_divergence", s.checkpoint_divergence),
        ("campaigns", s.campaigns),
        ("quiet_rounds", s.quiet_rounds),
        ("wakes", s.wakes),
    ];
    let keys: Vec<Term> = pairs
        .iter()
        .map(|(k, _)| Atom::from_str(env, k).expect("a valid atom").encode(env))
        .collect();
    let values: Vec<Term> = pairs.iter().map(|(_, v)| v.encode(env)).collect();
    Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
}

/// The map `Visor.Native.status/1` returns.
pub fn status<'a>(
    env: Env<'a>,
    copy: &StatusCopy,
    stopped: bool,
    replica_index: u8,
    replica_count: u8,
) -> Term<'a> {
    let status = match copy.phase {
        HostPhase::Failed => atoms::failed(),
        _ if stopped => atoms::stopped(),
        HostPhase::Starting => atoms::starting(),
        HostPhase::Normal => atoms::normal(),
        HostPhase::ViewChange => atoms::view_change(),
        HostPhase::Recovering => atoms::recovering(),
        HostPhase::Diverged => atoms::diverged(),
    };
    map(
        env,
        &[
            (atoms::status(), status.encode(env)),
            (atoms::view(), copy.view.encode(env)),
            (atoms::log_view(), copy.log_view.encode(env)),
            (atoms::op(), copy.op.encode(env)),
            (atoms::commit(), copy.commit.encode(env)),
            (atoms::commit_max(), copy.commit_max.encode(env)),
            (atoms::checkpoint(), copy.checkpoint.encode(env)),
            (atoms::log_base(), copy.log_base.encode(env)),
            (atoms::primary(), (copy.primary as u32).encode(env)),
            (atoms::is_primary(), copy.is_primary.encode(env)),
            (atoms::replica_index(), (replica_index as u32).encode(env)),
            (atoms::replica_count(), (replica_count as u32).encode(env)),
            (atoms::epoch(), copy.membership.epoch().encode(env)),
            (atoms::members(), members(env, &copy.membership)),
            (
                atoms::membership(),
                binary(env, &membership_bytes(&copy.membership)),
            ),
            (atoms::role(), role(copy.role).encode(env)),
            (atoms::stats(), stats(env, &copy.stats)),
            (atoms::storage(), storage(env, copy)),
            (atoms::sync(), sync(env, copy)),
            (atoms::quiet(), copy.quiet.encode(env)),
        ],
    )
}

/// `nil`, or `%{op:, received:, bytes:}` while a state sync assembles a checkpoint.
fn sync<'a>(env: Env<'a>, copy: &StatusCopy) -> Term<'a> {
    let sync = copy.sync.map(|(op, received, bytes)| {
        map(
            env,
            &[
                (atoms::op(), op.encode(env)),
                (atoms::received(), received.encode(env)),
                (atoms::bytes(), bytes.encode(env)),
            ],
        )
    });
    sync.encode(env)
}

fn storage<'a>(env: Env<'a>, copy: &StatusCopy) -> Term<'a> {
    let storage = &copy.storage;
    match &storage.dir {
        None => map(env, &[(atoms::mode(), atoms::memory().encode(env))]),
        Some(dir) => map(
            env,
            &[
                (atoms::mode(), atoms::disk().encode(env)),
                (atoms::data_dir(), dir.display().to_string().encode(env)),
                (atoms::error(), storage.error.encode(env)),
                (atoms::syncs(), storage.syncs.encode(env)),
                (atoms::wal_bytes(), storage.wal_bytes.encode(env)),
                (atoms::wal_size(), storage.wal_size.encode(env)),
                (atoms::compactions(), storage.compactions.encode(env)),
                (atoms::checkpoint(), storage.checkpoint.encode(env)),
            ],
        ),
    }
}

/// The map `Visor.Native.engine_info/0` returns.
pub fn engine_info(env: Env, threads: usize, groups: usize) -> Term {
    map(
        env,
        &[
            (atoms::threads(), threads.encode(env)),
            (atoms::groups(), groups.encode(env)),
        ],
    )
}

/// `{:visor_probe, tag, :empty | {:ok, map} | {:error, message}}`.
pub fn probe(
    env: Env<'_>,
    tag: u64,
    result: Result<Option<vsr_storage::Superblock>, vsr_storage::StoreError>,
) -> Term<'_> {
    let answer = match result {
        Ok(None) => atoms::empty().encode(env),
        Ok(Some(superblock)) => {
            let identity = &superblock.identity;
            // The store's slot in the membership it records, or in the
            // genesis if it records none. The engine's genesis
            // (`Config::new`) gives each member its slot number as its id,
            // so the widest such genesis names every member a genesis
            // store can be. `nil` if the list does not hold the member.
            let genesis = Membership::numbered(MAX_REPLICAS).expect("a genesis of MAX_REPLICAS members");
            let slot = superblock.slot_in(&genesis);
            let role = role(superblock.role);
            let found = map(
                env,
                &[
                    (atoms::cluster(), binary(env, &identity.cluster.to_le_bytes())),
                    (atoms::group(), binary(env, &identity.group)),
                    (atoms::replica(), slot.map(u32::from).encode(env)),
                    (atoms::member(), binary(env, &identity.member.to_le_bytes())),
                    (atoms::joined(), identity.joined.encode(env)),
                    (atoms::epoch(), superblock.epoch().encode(env)),
                    (atoms::role(), role.encode(env)),
                    (atoms::life(), superblock.life.encode(env)),
                    (atoms::meta(), binary(env, &superblock.meta)),
                    (atoms::view(), superblock.view.encode(env)),
                    (atoms::commit(), superblock.commit.encode(env)),
                    (atoms::recovering(), superblock.recovering.encode(env)),
                    (atoms::sequence(), superblock.sequence.encode(env)),
                ],
            );
            (atoms::ok(), found).encode(env)
        }
        Err(e) => (atoms::error(), e.to_string()).encode(env),
    };
    (atoms::visor_probe(), tag, answer).encode(env)
}
