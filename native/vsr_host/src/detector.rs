//! A node-level failure detector (docs/design/many-groups.md, 2.6, "The
//! detector"; docs/protocol.md, "Quiet groups"): which peer *nodes* are up,
//! for the replicas of every group a node hosts, so that a quiet group
//! (one that sends nothing) still learns that its primary's node died.
//!
//! Pure and deterministic, like the replica: no I/O and no clock of its
//! own. Its driver (the engine; the simulator) feeds it the node's
//! monotonic time in ticks, the beats and frames it hears, and sends the
//! beats it hands back.
//!
//! - Every `beat_ticks` the node sends each peer node a [`Beat`]: `seq`
//!   (its own monotonic tick when sending), `echo` (the `seq` of the last
//!   beat it heard from that peer) and `wall_ns` (its wall clock, for a
//!   later node-level clock table; not used here).
//! - A peer is **up** while (a) we heard it (a beat, or any frame:
//!   [`Detector::on_frame`]) within `timeout_ticks`, and (b) its last beat
//!   echoes one of our beats sent within `timeout_ticks`. (b) makes the
//!   link bidirectional: a node that can send but not receive stops
//!   echoing, so its peers see it down, and it sees them down.
//! - A peer that went down (a timeout, or [`Detector::on_disconnected`],
//!   distribution's `nodedown`) comes back up only with a beat that
//!   echoes one of our beats sent *after* it went down: a beat from before
//!   (delayed in the network, or sent by a node that then died) does not
//!   revive it. So the `up` set never flaps on stale beats.
//! - A node boots believing every peer up, as heard at boot (as a booting
//!   replica does): a peer that does not answer goes down one timeout
//!   later.
//! - **Its own stalls.** If the driver's ticks jump by more than
//!   `2 * beat_ticks` (the node's engine was stuck, or its thread was not
//!   scheduled), the node could not hear anyone meanwhile: it sent no
//!   beats, so nobody could echo them, and what peers sent may still be
//!   queued. It does not judge its peers on that: every peer up stays up,
//!   as heard at the resume, and goes down one timeout later if it stays
//!   silent. (Its *peers* do see it down, since it stopped beating: a
//!   stuck engine fails its groups over, as the design asks.) Time never
//!   goes back: a tick below the last is read as the last.
//!
//! Simplifications in this first cut: the driver says when the node
//! iterated (the design's "a node beats only if every worker iterated
//! within `node_heartbeat_ms`" is the driver's: it stops calling
//! [`Detector::on_tick`] while stuck); beats are not yet batched with
//! replica frames; the beat interval does not yet grow with the number of
//! peers. A `seq` is the sender's monotonic tick, not a counter: an echo
//! from a previous life of this node that lies ahead of its clock is
//! ignored (it cannot be one of ours), and one that does not is taken as
//! ours (the peer did hear this node, then).
//!
//! Mapping to a group's replica slots is the host's (`vsr_host::up_bits`):
//! a slot is up if its member's node is up, or is this node.

use std::collections::BTreeMap;

/// A node, as the detector names it (the engine: the member id, the XXH3
/// of its node name; the simulator: its node index).
pub type NodeId = u64;

/// The detector's timing, in the driver's ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorConfig {
    /// A beat to each peer this often.
    pub beat_ticks: u64,
    /// A peer not heard (or not echoing us) for this long is down.
    pub timeout_ticks: u64,
}

impl DetectorConfig {
    /// The design's defaults relative to a replica's timing: a beat every
    /// quarter of `view_change_ticks` (100 ms at 10 ms ticks), and a timeout
    /// of twice it (800 ms: today's longest suspicion time, a silence
    /// timer plus its largest jitter).
    pub fn for_replicas(config: &vsr::Config) -> DetectorConfig {
        let beat_ticks = (config.view_change_ticks / 4).max(1);
        DetectorConfig {
            beat_ticks,
            timeout_ticks: config
                .view_change_ticks
                .saturating_mul(2)
                .max(beat_ticks.saturating_mul(3)),
        }
    }
}

/// A node's beat to a peer node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's monotonic tick when it sent this beat.
    pub seq: u64,
    /// The `seq` of the last beat the sender heard from `to` (0: none).
    pub echo: u64,
    /// The sender's wall clock, ns.
    pub wall_ns: u64,
}

const BEAT_MAGIC: [u8; 4] = *b"VBT1";

/// The size of an encoded beat.
pub const BEAT_BYTES: usize = 4 + 5 * 8 + 16;

impl Beat {
    /// Its frame: a magic that no replica message starts with, the fields
    /// (little-endian) and a checksum of them.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(BEAT_BYTES);
        bytes.extend_from_slice(&BEAT_MAGIC);
        for field in [self.from, self.to, self.seq, self.echo, self.wall_ns] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        let sum = vsr::checksum(&bytes);
        bytes.extend_from_slice(&sum.to_le_bytes());
        bytes
    }

    /// Whether `bytes` claim to be a beat (its magic), damaged or not.
    pub fn is_beat(bytes: &[u8]) -> bool {
        bytes.starts_with(&BEAT_MAGIC)
    }

    /// A beat from its frame; `None` if damaged.
    pub fn decode(bytes: &[u8]) -> Option<Beat> {
        if bytes.len() != BEAT_BYTES || !Beat::is_beat(bytes) {
            return None;
        }
        let (body, sum) = bytes.split_at(BEAT_BYTES - 16);
        if vsr::checksum(body).to_le_bytes() != sum {
            return None;
        }
        let field = |i: usize| {
            let at = 4 + 8 * i;
            u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"))
        };
        Some(Beat {
            from: field(0),
            to: field(1),
            seq: field(2),
            echo: field(3),
            wall_ns: field(4),
        })
    }
}

/// What the detector holds about one peer node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Peer {
    up: bool,
    /// When we last heard it (a beat or a frame).
    heard_at: u64,
    /// The latest of our beats it echoed (its send tick).
    echoed: u64,
    /// The `seq` of its last beat (what we echo).
    last_seq: u64,
    /// When it went down: it comes back only echoing a beat sent since.
    down_since: u64,
}

/// One node's failure detector over its peer nodes.
#[derive(Clone, Debug)]
pub struct Detector {
    me: NodeId,
    config: DetectorConfig,
    peers: BTreeMap<NodeId, Peer>,
    /// The last tick fed (`on_tick` or an event).
    now: u64,
    /// When it last beat (`None`: never).
    last_beat: Option<u64>,
    /// The up set changed since the last [`Detector::take_changed`].
    changed: bool,
}

impl Detector {
    /// A detector for node `me`, booting at `now`, with `peers` believed up
    /// (as heard at boot).
    pub fn new(
        me: NodeId,
        peers: impl IntoIterator<Item = NodeId>,
        config: DetectorConfig,
        now: u64,
    ) -> Detector {
        let mut detector = Detector {
            me,
            config,
            peers: BTreeMap::new(),
            now,
            last_beat: None,
            changed: false,
        };
        for peer in peers {
            detector.add_peer(peer);
        }
        detector
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    pub fn config(&self) -> DetectorConfig {
        self.config
    }

    /// Starts watching `peer` (a node added to the cluster), believed up as
    /// heard now. Nothing if it is watched already, or is this node.
    pub fn add_peer(&mut self, peer: NodeId) {
        if peer == self.me || self.peers.contains_key(&peer) {
            return;
        }
        self.peers.insert(
            peer,
            Peer {
                up: true,
                heard_at: self.now,
                echoed: self.now,
                last_seq: 0,
                down_since: 0,
            },
        );
    }

    /// Stops watching `peer` (a node that left for good).
    pub fn remove_peer(&mut self, peer: NodeId) {
        if self.peers.remove(&peer).is_some_and(|p| !p.up) {
            self.changed = true;
        }
    }

    /// Time passes to `now`: returns the beats due (one per peer every
    /// `beat_ticks`), and marks down every peer silent (or not echoing us)
    /// for longer than `timeout_ticks`.
    pub fn on_tick(&mut self, now: u64, wall_ns: u64) -> Vec<Beat> {
        let now = self.advance(now);
        let timeout = self.config.timeout_ticks;
        for peer in self.peers.values_mut() {
            let silent = now.saturating_sub(peer.heard_at) > timeout;
            let deaf = now.saturating_sub(peer.echoed) > timeout;
            if peer.up && (silent || deaf) {
                peer.up = false;
                peer.down_since = now;
                self.changed = true;
            }
        }
        let due = self
            .last_beat
            .is_none_or(|last| now >= last.saturating_add(self.config.beat_ticks));
        if !due {
            return Vec::new();
        }
        self.last_beat = Some(now);
        self.peers
            .iter()
            .map(|(&to, peer)| Beat {
                from: self.me,
                to,
                seq: now,
                echo: peer.last_seq,
                wall_ns,
            })
            .collect()
    }

    /// A beat from a peer arrived at `now`.
    pub fn on_beat(&mut self, beat: &Beat, now: u64) {
        let now = self.advance(now);
        if beat.to != self.me {
            return;
        }
        let Some(peer) = self.peers.get_mut(&beat.from) else {
            return;
        };
        peer.heard_at = now;
        // The last beat heard, not the highest: a new life of the node
        // starts its clock again, and a stale beat of its old one (late in
        // the network) must not pin the echo above it.
        peer.last_seq = beat.seq;
        // An echo ahead of our clock is not one of ours (a previous life's).
        if beat.echo <= now {
            peer.echoed = peer.echoed.max(beat.echo);
        }
        let fresh = now.saturating_sub(peer.echoed) <= self.config.timeout_ticks;
        if !peer.up && fresh && peer.echoed > peer.down_since {
            peer.up = true;
            self.changed = true;
        }
    }

    /// Any other frame from `peer` arrived at `now`: it counts as heard
    /// (it keeps an up peer up; only a beat's echo brings one back up).
    pub fn on_frame(&mut self, peer: NodeId, now: u64) {
        let now = self.advance(now);
        if let Some(peer) = self.peers.get_mut(&peer) {
            peer.heard_at = peer.heard_at.max(now);
        }
    }

    /// Distribution reported the connection to `peer` lost (`nodedown`): it
    /// is down at once, until it echoes a beat sent from now on.
    pub fn on_disconnected(&mut self, peer: NodeId, now: u64) {
        let now = self.advance(now);
        if let Some(peer) = self.peers.get_mut(&peer) {
            if peer.up {
                peer.up = false;
                self.changed = true;
            }
            peer.down_since = now;
            // What connects next may be a new life of the node, whose clock
            // (and so its beats' `seq`) starts again below its previous
            // life's: echo only what it sends from now on. Kept, it would
            // echo the old life's `seq`, which the new life takes for
            // another's (ahead of its clock), and holds us down for good.
            peer.last_seq = 0;
        }
    }

    /// Whether the detector holds `node` up (this node always).
    pub fn is_up(&self, node: NodeId) -> bool {
        node == self.me || self.peers.get(&node).is_some_and(|p| p.up)
    }

    /// The peer nodes held up.
    pub fn up(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.iter().filter(|(_, p)| p.up).map(|(&id, _)| id)
    }

    /// Whether the up set changed since the last call (and clears it).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Moves time to `now` (never back); after a stall of the node itself
    /// (a jump beyond `2 * beat_ticks`), every peer up counts as heard and
    /// echoing now.
    fn advance(&mut self, now: u64) -> u64 {
        let now = now.max(self.now);
        let stall = self.config.beat_ticks.saturating_mul(2);
        if now.saturating_sub(self.now) > stall {
            for peer in self.peers.values_mut().filter(|p| p.up) {
                peer.heard_at = peer.heard_at.max(now);
                peer.echoed = peer.echoed.max(now);
            }
        }
        self.now = now;
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: DetectorConfig = DetectorConfig {
        beat_ticks: 10,
        timeout_ticks: 80,
    };

    /// Two detectors that exchange every beat, delivered at once, for
    /// `ticks` ticks from `from`, while `link(a_to_b)` says a direction works.
    fn run(a: &mut Detector, b: &mut Detector, from: u64, ticks: u64, link: impl Fn(bool) -> bool) {
        for now in from..from + ticks {
            let from_a = a.on_tick(now, 0);
            let from_b = b.on_tick(now, 0);
            if link(true) {
                for beat in &from_a {
                    b.on_beat(beat, now);
                }
            }
            if link(false) {
                for beat in &from_b {
                    a.on_beat(beat, now);
                }
            }
        }
    }

    fn pair() -> (Detector, Detector) {
        (Detector::new(1, [2], CONFIG, 0), Detector::new(2, [1], CONFIG, 0))
    }

    #[test]
    fn a_peer_restarted_with_a_younger_clock_comes_back_after_nodedown() {
        let (mut a, mut b) = pair();
        run(&mut a, &mut b, 0, 1000, |_| true);
        assert!(a.is_up(2) && b.is_up(1));
        // b's node dies, distribution says so, and it restarts under the
        // same name with its monotonic clock at 0 (a real VM's restarts).
        a.on_disconnected(2, 1000);
        let mut b = Detector::new(2, [1], CONFIG, 0);
        for step in 0..300 {
            let (at_a, at_b) = (1000 + step, step);
            for beat in a.on_tick(at_a, 0) {
                b.on_beat(&beat, at_b);
            }
            for beat in b.on_tick(at_b, 0) {
                a.on_beat(&beat, at_a);
            }
        }
        assert!(a.is_up(2), "a holds the restarted b up");
        assert!(b.is_up(1), "the restarted b holds a up");
    }

    #[test]
    fn beats_every_beat_ticks_and_echoes_the_last_heard() {
        let mut a = Detector::new(1, [2, 3], CONFIG, 0);
        let beats = a.on_tick(0, 7);
        assert_eq!(beats.len(), 2);
        assert_eq!(
            (beats[0].to, beats[0].seq, beats[0].echo, beats[0].wall_ns),
            (2, 0, 0, 7)
        );
        for now in 1..10 {
            assert!(a.on_tick(now, 0).is_empty(), "no beat at {now}");
        }
        a.on_beat(
            &Beat {
                from: 2,
                to: 1,
                seq: 5,
                echo: 0,
                wall_ns: 0,
            },
            9,
        );
        let beats = a.on_tick(10, 0);
        assert_eq!(beats.len(), 2);
        assert_eq!(beats.iter().find(|b| b.to == 2).unwrap().echo, 5);
        assert_eq!(beats.iter().find(|b| b.to == 3).unwrap().echo, 0);
    }

    #[test]
    fn a_beat_survives_its_encoding_and_damage_is_refused() {
        let beat = Beat {
            from: 1,
            to: u64::MAX,
            seq: 42,
            echo: 40,
            wall_ns: 123,
        };
        let bytes = beat.encode();
        assert_eq!(bytes.len(), BEAT_BYTES);
        assert!(Beat::is_beat(&bytes));
        assert_eq!(Beat::decode(&bytes), Some(beat));
        for bit in 32..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Beat::decode(&bad), None, "bit {bit}");
        }
    }

    #[test]
    fn peers_that_hear_each_other_stay_up() {
        let (mut a, mut b) = pair();
        run(&mut a, &mut b, 0, 1_000, |_| true);
        assert!(a.is_up(2) && b.is_up(1));
        assert!(!a.take_changed() && !b.take_changed());
    }

    #[test]
    fn a_peer_silent_past_the_timeout_goes_down_and_comes_back_when_heard() {
        let (mut a, mut b) = pair();
        run(&mut a, &mut b, 0, 100, |_| true);
        // b dies: a hears nothing. Its last beat (at 90) echoed a's beat
        // of 80: down a timeout after that (a beat's round trip early at
        // most), and surely a beat past the timeout.
        for now in 100..80 + CONFIG.timeout_ticks {
            a.on_tick(now, 0);
            assert!(a.is_up(2), "down too early, at {now}");
        }
        for now in 80 + CONFIG.timeout_ticks..90 + CONFIG.timeout_ticks + CONFIG.beat_ticks {
            a.on_tick(now, 0);
        }
        assert!(!a.is_up(2));
        assert!(a.take_changed());
        assert_eq!(a.up().count(), 0);
        // b returns (a new life): its first beat echoes nothing of a's
        // since a held it down; a's next beat reaches it, and its answer
        // brings it back.
        let mut b = Detector::new(2, [1], CONFIG, 300);
        run(&mut a, &mut b, 300, 30, |_| true);
        assert!(a.is_up(2) && b.is_up(1));
        assert!(a.take_changed());
    }

    #[test]
    fn a_frame_keeps_a_peer_up_but_does_not_revive_it() {
        let (mut a, mut b) = pair();
        run(&mut a, &mut b, 0, 50, |_| true);
        // Only frames for 40 ticks: a's beats still reach b, so b echoes.
        for now in 50..90 {
            let beats = a.on_tick(now, 0);
            b.on_tick(now, 0);
            for beat in &beats {
                b.on_beat(beat, now);
            }
            a.on_frame(2, now);
        }
        assert!(a.is_up(2));
        // Down, then only frames: it stays down.
        a.on_disconnected(2, 90);
        assert!(!a.is_up(2));
        for now in 90..200 {
            a.on_tick(now, 0);
            a.on_frame(2, now);
        }
        assert!(!a.is_up(2));
    }

    #[test]
    fn a_one_way_link_takes_the_peer_down_on_both_sides() {
        let (mut a, mut b) = pair();
        run(&mut a, &mut b, 0, 100, |_| true);
        // a's beats reach b, b's do not reach a: a hears nothing of b; b
        // hears a, but a's echoes of b's beats grow stale.
        run(&mut a, &mut b, 100, 200, |a_to_b| a_to_b);
        assert!(!a.is_up(2), "a hears nothing from b");
        assert!(!b.is_up(1), "b is never echoed");
        // Healed: both up again within a few beats.
        run(&mut a, &mut b, 300, 30, |_| true);
        assert!(a.is_up(2) && b.is_up(1));
    }

    #[test]
    fn a_flapping_link_never_yields_an_up_from_a_stale_beat() {
        let (mut a, mut b) = pair();
        run(&mut a, &mut b, 0, 100, |_| true);
        // The link flaps: 100 ticks down, 20 up, for a while.
        let mut now = 100;
        for _ in 0..5 {
            run(&mut a, &mut b, now, 100, |_| false);
            assert!(!a.is_up(2) && !b.is_up(1), "down after 100 silent ticks at {now}");
            run(&mut a, &mut b, now + 100, 20, |_| true);
            assert!(a.is_up(2) && b.is_up(1), "up again at {now}");
            now += 120;
        }
        // A beat b sent before a held it down (delayed in the network)
        // arrives after: it does not bring b back.
        let stale = Beat {
            from: 2,
            to: 1,
            seq: now - 10,
            echo: now - 30,
            wall_ns: 0,
        };
        run(&mut a, &mut b, now + 1, 100, |_| false);
        assert!(!a.is_up(2));
        a.on_beat(&stale, now + 101);
        assert!(!a.is_up(2), "a stale beat revived the peer");
    }

    #[test]
    fn disconnection_is_immediate_and_stale_echoes_do_not_undo_it() {
        let (mut a, mut b) = pair();
        run(&mut a, &mut b, 0, 100, |_| true);
        // b's last beat, sent before the connection dropped, arrives after.
        let late = Beat {
            from: 2,
            to: 1,
            seq: 100,
            echo: 90,
            wall_ns: 0,
        };
        a.take_changed();
        a.on_disconnected(2, 101);
        assert!(!a.is_up(2) && a.take_changed());
        a.on_beat(&late, 102);
        assert!(!a.is_up(2));
        // Reconnected: b echoes a beat sent after the disconnection.
        run(&mut a, &mut b, 103, 25, |_| true);
        assert!(a.is_up(2));
    }

    #[test]
    fn its_own_stall_does_not_take_its_peers_down() {
        let (mut a, mut b) = pair();
        run(&mut a, &mut b, 0, 100, |_| true);
        // a is stuck for 500 ticks (no on_tick); b, not hearing a, holds it
        // down.
        run(&mut Detector::new(9, [], CONFIG, 0), &mut b, 100, 500, |_| false);
        assert!(!b.is_up(1));
        // a resumes: b stays up for it for a timeout, and once beats flow
        // again both are up.
        assert!(a.on_tick(600, 0).len() == 1);
        assert!(a.is_up(2));
        run(&mut a, &mut b, 601, 30, |_| true);
        assert!(a.is_up(2) && b.is_up(1));
        // Stuck again, and b died meanwhile: down one timeout after resuming.
        a.on_tick(1_000, 0);
        assert!(a.is_up(2));
        for now in 1_001..=1_001 + CONFIG.timeout_ticks {
            a.on_tick(now, 0);
        }
        assert!(!a.is_up(2));
    }

    #[test]
    fn time_never_goes_back_and_small_skips_are_no_stall() {
        let (mut a, mut b) = pair();
        run(&mut a, &mut b, 0, 100, |_| true);
        // A clock read that goes back is read as the last one.
        assert!(a.on_tick(50, 0).is_empty());
        assert!(a.is_up(2));
        // Skipped ticks (a jump of two beats at most) are ordinary time:
        // b silent from 100 goes down as usual.
        let mut now = 99;
        while now < 100 + CONFIG.timeout_ticks + 20 {
            now += 2 * CONFIG.beat_ticks;
            a.on_tick(now, 0);
        }
        assert!(!a.is_up(2));
        // An echo ahead of a's clock (from a previous life) is ignored.
        a.on_beat(
            &Beat {
                from: 2,
                to: 1,
                seq: 1,
                echo: now + 1_000,
                wall_ns: 0,
            },
            now + 1,
        );
        assert!(!a.is_up(2));
    }

    #[test]
    fn the_timing_follows_the_replicas() {
        let config = vsr::Config::new(1, 3);
        let detector = DetectorConfig::for_replicas(&config);
        assert_eq!(detector.beat_ticks, config.view_change_ticks / 4);
        assert_eq!(detector.timeout_ticks, 2 * config.view_change_ticks);
    }
}
