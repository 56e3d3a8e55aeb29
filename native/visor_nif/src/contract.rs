//! The contract between `Visor.Native` and this library, in one place:
//! the interface's version, and every limit the engine enforces that Elixir
//! must know too (replicas per cluster, the engine options with their
//! defaults and ranges, list and size limits). `nif_contract/0` hands it to
//! Elixir as one term, so `Visor.Contract` keeps no copy of its own.

use rustler::{Atom, Encoder, Env, Term};
use vsr::{Config, MAX_REPLICAS, RANGES};
use vsr_storage::format::{GROUP_MAX, META_MAX};
use vsr_storage::store::DEFAULT_COMPACTION_BYTES;

use crate::atoms;
use crate::convert::MEMBERSHIP_BYTES_MAX;

/// Version of the Elixir <-> NIF interface. Bump it whenever a NIF's
/// signature or meaning changes: `Visor.Native` refuses to load a library
/// of another version (a stale `.so`).
pub const PROTOCOL_VERSION: u32 = 16;

/// Tick interval when `:tick_ms` is not given.
pub const TICK_MS_DEFAULT: u64 = 10;
/// The longest tick interval accepted, so a typo cannot freeze a group.
pub const TICK_MS_MAX: u64 = 60_000;

/// Most messages in one `{:send, to, list}` event, and so in one
/// distribution message; `deliver/2` drops longer lists whole.
pub const DELIVER_LIST_MAX: usize = 256;

/// Most member ids in one `peers/2` call (the nodes a detector holds up).
pub const PEERS_IDS_MAX: usize = 1024;

/// `%{protocol_version:, max_replicas:, options: %{key => {default, min, max}},
/// limits: %{deliver_list_max:, group_bytes_max:, meta_bytes_max:,
/// membership_bytes_max:, peers_ids_max:}}`.
pub fn encode(env: Env<'_>) -> Term<'_> {
    let defaults = Config::new(0, 1).range_values();
    let mut options: Vec<(Term, Term)> = RANGES
        .iter()
        .zip(defaults)
        .map(|((name, min, max), default)| (key(env, name), (default, *min, *max).encode(env)))
        .collect();
    options.push((
        atoms::tick_ms().encode(env),
        (TICK_MS_DEFAULT, 1u64, TICK_MS_MAX).encode(env),
    ));
    options.push((
        atoms::wal_compact_bytes().encode(env),
        (DEFAULT_COMPACTION_BYTES, 1u64, u64::MAX).encode(env),
    ));
    let limits = [
        (atoms::deliver_list_max(), DELIVER_LIST_MAX),
        (atoms::group_bytes_max(), GROUP_MAX),
        (atoms::meta_bytes_max(), META_MAX),
        (atoms::membership_bytes_max(), MEMBERSHIP_BYTES_MAX),
        (atoms::peers_ids_max(), PEERS_IDS_MAX),
    ]
    .map(|(k, v)| (k.encode(env), (v as u64).encode(env)));
    map(
        env,
        &[
            (
                atoms::protocol_version().encode(env),
                PROTOCOL_VERSION.encode(env),
            ),
            (
                atoms::max_replicas().encode(env),
                (MAX_REPLICAS as u64).encode(env),
            ),
            (atoms::options().encode(env), map(env, &options)),
            (atoms::limits().encode(env), map(env, &limits)),
        ],
    )
}

fn key<'a>(env: Env<'a>, name: &str) -> Term<'a> {
    Atom::from_str(env, name).expect("a valid atom").encode(env)
}

fn map<'a>(env: Env<'a>, pairs: &[(Term<'a>, Term<'a>)]) -> Term<'a> {
    let keys: Vec<Term> = pairs.iter().map(|(k, _)| *k).collect();
    let values: Vec<Term> = pairs.iter().map(|(_, v)| *v).collect();
    Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
}
