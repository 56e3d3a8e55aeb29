//! The node's failure detector as a resource (`detector_*` NIFs): the pure
//! `vsr_host::Detector`, the one the simulator runs, driven by the node's
//! `Visor.Beacon` process, which ticks it, carries its beats over
//! distribution and reports `nodedown`. Nodes are named by their names'
//! bytes; the detector knows them by a 64-bit hash of those.
//!
//! Every call takes the mutex for microseconds (only the beacon calls), and
//! nothing here panics on bad input: a beat that does not decode, or is
//! not addressed to this node, is `:malformed`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use rustler::{Binary, Encoder, Env, Resource, ResourceArc, Term};
use vsr_host::{Beat, Detector, DetectorConfig, NodeId};

use crate::atoms;
use crate::convert::binary;

/// The detector and the names of the nodes it watches.
pub struct DetectorResource(Mutex<Named>);

struct Named {
    detector: Detector,
    names: HashMap<NodeId, Vec<u8>>,
}

#[rustler::resource_impl]
impl Resource for DetectorResource {}

/// A node's id in the detector: the low 64 bits of its name's checksum.
fn node_id(name: &[u8]) -> NodeId {
    vsr::checksum(name) as u64
}

impl DetectorResource {
    fn lock(&self) -> MutexGuard<'_, Named> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A detector for the node named `me`, beating every `beat_ms` and
/// holding a peer down after `timeout_ms` without hearing it (or without
/// its echo of our beats), at monotonic time `now_ms`.
#[rustler::nif]
fn nif_detector_new(me: Binary, beat_ms: u64, timeout_ms: u64, now_ms: u64) -> ResourceArc<DetectorResource> {
    let config = DetectorConfig {
        beat_ticks: beat_ms.max(1),
        timeout_ticks: timeout_ms.max(beat_ms.max(1)),
    };
    let detector = Detector::new(node_id(me.as_slice()), std::iter::empty(), config, now_ms);
    ResourceArc::new(DetectorResource(Mutex::new(Named {
        detector,
        names: HashMap::new(),
    })))
}

/// Watches the node `peer` (connected now), believed up as heard now.
#[rustler::nif]
fn nif_detector_add(detector: ResourceArc<DetectorResource>, peer: Binary) -> rustler::Atom {
    let mut named = detector.lock();
    let id = node_id(peer.as_slice());
    named.names.insert(id, peer.as_slice().to_vec());
    named.detector.add_peer(id);
    atoms::ok()
}

/// Stops watching `peer` (a node long gone).
#[rustler::nif]
fn nif_detector_remove(detector: ResourceArc<DetectorResource>, peer: Binary) -> rustler::Atom {
    let mut named = detector.lock();
    let id = node_id(peer.as_slice());
    named.names.remove(&id);
    named.detector.remove_peer(id);
    atoms::ok()
}

/// Distribution lost the connection to `peer` (`nodedown`) at `now_ms`.
#[rustler::nif]
fn nif_detector_down(detector: ResourceArc<DetectorResource>, peer: Binary, now_ms: u64) -> rustler::Atom {
    detector
        .lock()
        .detector
        .on_disconnected(node_id(peer.as_slice()), now_ms);
    atoms::ok()
}

/// Time passes to `now_ms`: the beats due, as `[{peer_name, bytes}]`.
#[rustler::nif]
fn nif_detector_tick(env: Env, detector: ResourceArc<DetectorResource>, now_ms: u64, wall_ns: u64) -> Term {
    let mut named = detector.lock();
    let beats = named.detector.on_tick(now_ms, wall_ns);
    let out: Vec<Term> = beats
        .iter()
        .filter_map(|beat| {
            let name = named.names.get(&beat.to)?;
            Some((binary(env, name), binary(env, &beat.encode())).encode(env))
        })
        .collect();
    out.encode(env)
}

/// A beat arrived at `now_ms`: `:ok`, or `:malformed` if it is damaged,
/// not a beat or not addressed to this node (peer input is untrusted).
#[rustler::nif]
fn nif_detector_beat(detector: ResourceArc<DetectorResource>, bytes: Binary, now_ms: u64) -> rustler::Atom {
    let mut named = detector.lock();
    match Beat::decode(bytes.as_slice()) {
        Some(beat) if beat.to == named.detector.me() => {
            named.detector.on_beat(&beat, now_ms);
            atoms::ok()
        }
        _ => atoms::malformed(),
    }
}

/// `{changed, up}`: whether the set of peers held up changed since the
/// last call, and the names of those held up now.
#[rustler::nif]
fn nif_detector_up(env: Env, detector: ResourceArc<DetectorResource>) -> Term {
    let mut named = detector.lock();
    let changed = named.detector.take_changed();
    let up: Vec<Term> = named
        .detector
        .up()
        .filter_map(|id| named.names.get(&id))
        .map(|name| binary(env, name))
        .collect();
    (changed, up).encode(env)
}
