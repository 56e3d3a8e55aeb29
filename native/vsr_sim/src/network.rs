//! A simulated network: loss, duplication, corruption, delay (and so
//! reordering), and partitions, all decided by the seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use vsr::{Slot, MAX_SLOTS};

use crate::rng::Rng;

/// How the network misbehaves.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkOptions {
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Probability that a packet has a bit flipped.
    pub corrupt: f64,
    /// Delay in ticks: `min + extra`, where `extra` is usually small and
    /// sometimes (with probability `tail`) up to `max - min`.
    pub delay_min: u64,
    pub delay_max: u64,
    pub tail: f64,
    /// Extra probability of loss per KiB of packet: large messages (a
    /// view's log, checkpoint chunks) are lost more often than small ones,
    /// as when a host drops what overflows its send buffer.
    pub loss_per_kib: f64,
    /// Probability that a packet straggles: it arrives `stray_min` to
    /// `stray_max` ticks late, beyond every timeout of the protocol.
    pub stray: f64,
    pub stray_min: u64,
    pub stray_max: u64,
}

impl NetworkOptions {
    /// A network that delivers everything, in one tick.
    pub fn perfect() -> NetworkOptions {
        NetworkOptions {
            loss: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            delay_min: 1,
            delay_max: 1,
            tail: 0.0,
            loss_per_kib: 0.0,
            stray: 0.0,
            stray_min: 0,
            stray_max: 0,
        }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Packet {
    deliver_at: u64,
    seq: u64,
    from: Slot,
    to: Slot,
    /// A node's beat (`vsr_host::Beat`), not a replica's message: counted
    /// apart, so that what the checks count is the replicas' traffic.
    beat: bool,
    bytes: Vec<u8>,
    /// A fault made it (a duplicate, a corrupted or straggling packet):
    /// its arrival counts in `Network::faults` too.
    faulty: bool,
}

/// A host's send buffer on every link (`Network::send_buffer`): a packet
/// sent while the link's queue holds `busy_bytes` or more is dropped whole,
/// as Erlang distribution refuses a `:nosuspend` send to a busy port (about
/// 1 MB queued, `dist_buf_busy_limit`); one accepted is queued whatever its
/// size. A queue drains `drain_bytes` a tick. Decided by what was sent
/// when, not by the seed: it draws nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct SendBuffer {
    pub busy_bytes: u64,
    pub drain_bytes: u64,
    /// `queued[from][to]`: bytes queued, as of tick `drained[from][to]`.
    queued: [[u64; MAX_SLOTS]; MAX_SLOTS],
    drained: [[u64; MAX_SLOTS]; MAX_SLOTS],
}

impl SendBuffer {
    pub fn new(busy_bytes: u64, drain_bytes: u64) -> SendBuffer {
        SendBuffer {
            busy_bytes,
            drain_bytes,
            queued: [[0; MAX_SLOTS]; MAX_SLOTS],
            drained: [[0; MAX_SLOTS]; MAX_SLOTS],
        }
    }

    /// Whether the link takes a packet of `len` bytes at `now` (and queues it).
    fn accepts(&mut self, now: u64, from: Slot, to: Slot, len: usize) -> bool {
        let (f, t) = (from as usize, to as usize);
        let elapsed = now.saturating_sub(self.drained[f][t]);
        self.queued[f][t] = self.queued[f][t].saturating_sub(elapsed.saturating_mul(self.drain_bytes));
        self.drained[f][t] = now.max(self.drained[f][t]);
        if self.queued[f][t] >= self.busy_bytes {
            return false;
        }
        self.queued[f][t] = self.queued[f][t].saturating_add(len as u64);
        true
    }
}

/// Picks packets by their bytes (`Network::lose`).
pub type Picks = Box<dyn Fn(&[u8]) -> bool>;

/// Packets in flight, ordered by delivery time (ties by send order).
pub struct Network {
    pub options: NetworkOptions,
    in_flight: BinaryHeap<Reverse<Packet>>,
    seq: u64,
    /// `up[from][to]`: whether packets from `from` reach `to`.
    up: [[bool; MAX_SLOTS]; MAX_SLOTS],
    /// `held[from][to]`: packets on this link wait (scripted scenarios)
    /// until [`Network::release`], to delay one past an event.
    held: [[bool; MAX_SLOTS]; MAX_SLOTS],
    holding: Vec<Packet>,
    /// Packets a scripted scenario loses on arrival, by link and content
    /// (say, only the acknowledgements on one link).
    losing: Vec<(Slot, Slot, Picks)>,
    /// Scripted scenarios only: links that drop what a busy send buffer
    /// would (none by default, and vopr's runs set none).
    pub send_buffer: Option<SendBuffer>,
    pub delivered: u64,
    pub dropped: u64,
    /// Packets sent (lost or not).
    pub sent: u64,
    /// Node beats (quiet groups' failure detector): sent, and in flight.
    /// Not counted in the figures above, nor in `in_flight`.
    pub beats_sent: u64,
    beats_in_flight: usize,
    /// Network faults that reached replicas or could have: a replica
    /// message lost (by chance or on a cut link), duplicated, corrupted or
    /// straggling, counted when sent and again when such a packet
    /// arrives; a corrupted beat (it may no longer read as one, and then
    /// reaches a replica). Beats lost, delayed or duplicated are not
    /// counted: the detector absorbs them unless its view changes, which
    /// the simulator counts apart. For the "no view change in a calm idle
    /// span" check (`quiet.rs`); it draws nothing from the seed.
    pub faults: u64,
}

impl Network {
    pub fn new(options: NetworkOptions) -> Network {
        Network {
            options,
            in_flight: BinaryHeap::new(),
            seq: 0,
            up: [[true; MAX_SLOTS]; MAX_SLOTS],
            held: [[false; MAX_SLOTS]; MAX_SLOTS],
            holding: Vec::new(),
            losing: Vec::new(),
            send_buffer: None,
            delivered: 0,
            dropped: 0,
            sent: 0,
            beats_sent: 0,
            beats_in_flight: 0,
            faults: 0,
        }
    }

    pub fn send(&mut self, rng: &mut Rng, now: u64, from: Slot, to: Slot, bytes: Vec<u8>) {
        self.sent += 1;
        self.send_packet(rng, now, from, to, false, bytes);
    }

    /// Sends a node's beat: the same faults as a replica's message.
    pub fn send_beat(&mut self, rng: &mut Rng, now: u64, from: Slot, to: Slot, bytes: Vec<u8>) {
        self.beats_sent += 1;
        self.send_packet(rng, now, from, to, true, bytes);
    }

    fn send_packet(&mut self, rng: &mut Rng, now: u64, from: Slot, to: Slot, beat: bool, mut bytes: Vec<u8>) {
        let loss = self.options.loss + self.options.loss_per_kib * bytes.len() as f64 / 1024.0;
        let busy = self.link(from, to)
            && (self.send_buffer.as_mut()).is_some_and(|b| !b.accepts(now, from, to, bytes.len()));
        if busy || !self.link(from, to) || rng.chance(loss) {
            if !beat {
                self.dropped += 1;
                self.faults += 1;
            }
            return;
        }
        let mut corrupted = false;
        if rng.chance(self.options.corrupt) && !bytes.is_empty() {
            let bit = rng.range(0, bytes.len() as u64 * 8 - 1);
            bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
            corrupted = true;
        }
        if rng.chance(self.options.duplicate) {
            let (delay, _) = self.delay(rng);
            self.faults += !beat as u64;
            self.push_packet(now + delay, from, to, beat, bytes.clone(), !beat || corrupted);
        }
        let (delay, stray) = self.delay(rng);
        let faulty = corrupted || (stray && !beat);
        self.faults += faulty as u64;
        self.push_packet(now + delay, from, to, beat, bytes, faulty);
    }

    /// A packet's delay, and whether it straggles (`NetworkOptions::stray`).
    fn delay(&self, rng: &mut Rng) -> (u64, bool) {
        let o = &self.options;
        if rng.chance(o.stray) {
            return (rng.range(o.stray_min, o.stray_max), true);
        }
        let spread = o.delay_max.saturating_sub(o.delay_min);
        let extra = if rng.chance(o.tail) {
            rng.range(0, spread)
        } else {
            rng.range(0, spread.min(2))
        };
        (o.delay_min.max(1) + extra, false)
    }

    fn push(&mut self, deliver_at: u64, from: Slot, to: Slot, beat: bool, bytes: Vec<u8>) {
        self.push_packet(deliver_at, from, to, beat, bytes, false);
    }

    fn push_packet(
        &mut self,
        deliver_at: u64,
        from: Slot,
        to: Slot,
        beat: bool,
        bytes: Vec<u8>,
        faulty: bool,
    ) {
        self.seq += 1;
        self.beats_in_flight += beat as usize;
        self.in_flight.push(Reverse(Packet {
            deliver_at,
            seq: self.seq,
            from,
            to,
            beat,
            bytes,
            faulty,
        }));
    }

    /// The next packet due at or before `now` whose link is still up
    /// (a partition that forms while a packet is in flight catches it).
    pub fn next_due(&mut self, now: u64) -> Option<(Slot, Slot, Vec<u8>)> {
        self.next_due_packet(now)
            .map(|(from, to, _, bytes)| (from, to, bytes))
    }

    /// As `next_due`, saying whether the packet is a node's beat.
    pub fn next_due_packet(&mut self, now: u64) -> Option<(Slot, Slot, bool, Vec<u8>)> {
        while let Some(Reverse(packet)) = self.in_flight.peek() {
            if packet.deliver_at > now {
                return None;
            }
            let Reverse(packet) = self.in_flight.pop().expect("peeked");
            self.beats_in_flight -= packet.beat as usize;
            if self.held[packet.from as usize][packet.to as usize] {
                self.beats_in_flight += packet.beat as usize;
                self.holding.push(packet);
                continue;
            }
            let lost = self
                .losing
                .iter()
                .any(|(from, to, lose)| *from == packet.from && *to == packet.to && lose(&packet.bytes));
            if self.link(packet.from, packet.to) && !lost {
                self.delivered += !packet.beat as u64;
                self.faults += packet.faulty as u64;
                return Some((packet.from, packet.to, packet.beat, packet.bytes));
            }
            self.dropped += !packet.beat as u64;
            self.faults += !packet.beat as u64;
        }
        None
    }

    pub fn link(&self, from: Slot, to: Slot) -> bool {
        self.up[from as usize][to as usize]
    }

    pub fn set_link(&mut self, from: Slot, to: Slot, up: bool) {
        self.up[from as usize][to as usize] = up;
    }

    /// Cuts every link between `group` and the rest, in the directions asked.
    pub fn partition(&mut self, n: usize, group: &[Slot], cut_outgoing: bool, cut_incoming: bool) {
        for a in group {
            for b in 0..n as Slot {
                if !group.contains(&b) {
                    if cut_outgoing {
                        self.set_link(*a, b, false);
                    }
                    if cut_incoming {
                        self.set_link(b, *a, false);
                    }
                }
            }
        }
    }

    /// Loses, from now on, every packet from `from` to `to` that `lose`
    /// picks, as it arrives (until [`Network::stop_losing`]).
    pub fn lose(&mut self, from: Slot, to: Slot, lose: Picks) {
        self.losing.push((from, to, lose));
    }

    /// Ends every [`Network::lose`].
    pub fn stop_losing(&mut self) {
        self.losing.clear();
    }

    /// Holds back every packet from `from` to `to` until released.
    pub fn hold(&mut self, from: Slot, to: Slot) {
        self.held[from as usize][to as usize] = true;
    }

    /// Lets the held packets from `from` to `to` go, in the order they were
    /// sent, at `now`.
    pub fn release(&mut self, now: u64, from: Slot, to: Slot) {
        self.held[from as usize][to as usize] = false;
        let (go, keep): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.holding)
            .into_iter()
            .partition(|p| p.from == from && p.to == to);
        self.holding = keep;
        for packet in go {
            self.beats_in_flight -= packet.beat as usize;
            self.push_packet(
                now,
                packet.from,
                packet.to,
                packet.beat,
                packet.bytes,
                packet.faulty,
            );
        }
    }

    /// Stops holding packets from `from` to `to` and hands back, undelivered,
    /// those held so far (a scenario delivers them later with `deliver`).
    pub fn take_held(&mut self, from: Slot, to: Slot) -> Vec<Vec<u8>> {
        self.held[from as usize][to as usize] = false;
        let (taken, keep): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.holding)
            .into_iter()
            .partition(|p| p.from == from && p.to == to);
        self.holding = keep;
        self.beats_in_flight -= taken.iter().filter(|p| p.beat).count();
        taken.into_iter().map(|p| p.bytes).collect()
    }

    /// Sends `bytes` from `from` to `to`, due at `now`, whatever the faults.
    pub fn deliver(&mut self, now: u64, from: Slot, to: Slot, bytes: Vec<u8>) {
        self.push(now, from, to, false, bytes);
    }

    pub fn heal(&mut self) {
        self.up = [[true; MAX_SLOTS]; MAX_SLOTS];
    }

    pub fn is_healed(&self) -> bool {
        self.up.iter().all(|row| row.iter().all(|&u| u))
    }

    /// Replica messages in flight (held ones included; beats not).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len() + self.holding.len() - self.beats_in_flight
    }
}
