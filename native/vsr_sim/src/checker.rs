//! The invariants, checked as the simulation runs.
//!
//! 1. Every replica executes the same hash chain of entries, op after op.
//! 2. Every reply a client receives names the op that executed its request,
//!    and that op stays in the chain (1 is checked on every execution, so a
//!    committed op can never be replaced).
//! 3. No (client, request) is executed twice, and a request refused as
//!    evicted is never executed after the refusal.
//! 4. A replica's view never decreases (across restarts too), nor does its
//!    commit number while it runs.
//! 5. At most one replica leads a given view.
//! 6. Reads are linearizable. A read reports the host state it was served
//!    from (`App`: an op and a running hash of the prefix up to it), which
//!    must be the canonical state at that op (no phantom or diverged
//!    state), no older than any op a client had a reply for, nor than any
//!    state a completed read saw, before the read began (real-time order,
//!    reads against reads included), and committed when it completes (no
//!    reading the future).
//! 7. Every host's application state, after each op it applies and after
//!    each snapshot it installs (by state sync or on restart), is the
//!    canonical state at that op; a replica installs only a state ahead of
//!    what it executed, and goes on from the op after it.
//! 8. A replica asks its host for a snapshot only at a checkpoint boundary
//!    of the committed history: a multiple of `checkpoint_interval`, or an
//!    op at which the command bytes since the previous boundary reach
//!    `checkpoint_bytes` (computed here from the committed entries, apart
//!    from `vsr::checkpoint::boundary`), whatever the replica restarted,
//!    installed or healed from.

use std::collections::{HashMap, HashSet};

use vsr::{ClientId, Epoch, Op, Outcome, Prepare, Slot, View};

/// The simulated host's application state: the op it has applied up to,
/// and a running checksum of every request it applied (`Executed`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct App {
    pub op: Op,
    pub hash: u128,
}

impl App {
    /// The state after applying `entry` with `outcomes` to `self`.
    pub fn applied(self, entry: &Prepare, outcomes: &[Outcome]) -> App {
        let mut hash = self.hash;
        for (request, outcome) in entry.requests.iter().zip(outcomes) {
            if *outcome == Outcome::Executed {
                let mut bytes = hash.to_le_bytes().to_vec();
                bytes.extend_from_slice(&request.client.to_le_bytes());
                bytes.extend_from_slice(&request.request.to_le_bytes());
                bytes.extend_from_slice(&request.payload);
                hash = vsr::checksum(&bytes);
            }
        }
        App { op: entry.op, hash }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.op.to_le_bytes().to_vec();
        bytes.extend_from_slice(&self.hash.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<App> {
        if bytes.len() != 24 {
            return None;
        }
        Some(App {
            op: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            hash: u128::from_le_bytes(bytes[8..].try_into().ok()?),
        })
    }
}

/// What a read must see at least, fixed when it is invoked: the highest op
/// a client had a reply for, and the highest a completed read saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadBounds {
    pub replied: Op,
    pub read: Op,
}

/// The first invariant that broke.
pub type Violation = String;

/// An epoch and a view in it: views restart at 0 in every epoch, and
/// `(epoch, view)` orders them.
pub type Stamp = (Epoch, View);

pub struct Checker {
    root: u128,
    /// Checksums of the committed chain, op 1 first.
    chain: Vec<u128>,
    /// The op that executed each request.
    executed: HashMap<(ClientId, u64), Op>,
    /// Requests refused with `Evicted`.
    refused: HashSet<(ClientId, u64)>,
    /// Replies received by clients: request -> op.
    pub replies: HashMap<(ClientId, u64), Op>,
    /// The highest op any client has had a reply for (a registration's
    /// included: its session is the op it committed at).
    pub replied: Op,
    /// The highest op of a state any completed read saw.
    pub read: Op,
    /// Last op each replica executed, in its current incarnation.
    last_executed: Vec<Op>,
    /// Each replica's `(epoch, view)`: views count within an epoch.
    views: Vec<Stamp>,
    commits: Vec<Op>,
    leaders: HashMap<Stamp, Slot>,
    /// The canonical application state after each committed op, op 1 first.
    apps: Vec<App>,
    /// The command (payload) bytes of each committed op, op 1 first.
    sizes: Vec<u64>,
    /// The checkpoint boundaries of the committed history, per
    /// `(checkpoint_interval, checkpoint_bytes)`, as far as computed.
    boundaries: HashMap<(u64, u64), Boundaries>,
}

/// The boundaries among ops `1..=is.len()`, and the bytes since the last.
#[derive(Default)]
struct Boundaries {
    is: Vec<bool>,
    since: u64,
}

impl Checker {
    /// One more replica (a node a change adds).
    pub fn add_replica(&mut self) {
        self.last_executed.push(0);
        self.views.push((0, 0));
        self.commits.push(0);
    }

    pub fn new(root: u128, replica_count: usize) -> Checker {
        Checker {
            root,
            chain: Vec::new(),
            executed: HashMap::new(),
            refused: HashSet::new(),
            replies: HashMap::new(),
            replied: 0,
            read: 0,
            last_executed: vec![0; replica_count],
            views: vec![(0, 0); replica_count],
            commits: vec![0; replica_count],
            leaders: HashMap::new(),
            apps: Vec::new(),
            sizes: Vec::new(),
            boundaries: HashMap::new(),
        }
    }

    /// A replica running with `interval` and `budget` asked its host for a
    /// snapshot at `op`: `op` must be committed and a checkpoint boundary
    /// of the committed history. The rule, restated: with `interval > 0`,
    /// op `o` is a boundary if `o` is a multiple of `interval`, or if
    /// `budget > 0` and the payload bytes of the ops after the previous
    /// boundary, `o`'s included, reach `budget`.
    pub fn on_take_snapshot(
        &mut self,
        replica: Slot,
        op: Op,
        interval: u64,
        budget: u64,
    ) -> Result<(), Violation> {
        if interval == 0 {
            return Err(format!(
                "replica {replica} asked for a snapshot at op {op} with checkpoints off"
            ));
        }
        if op == 0 || op > self.committed() {
            return Err(format!(
                "replica {replica} asked for a snapshot at op {op}, not a committed op (highest {})",
                self.committed()
            ));
        }
        let found = self.boundaries.entry((interval, budget)).or_default();
        while (found.is.len() as Op) < op {
            let o = found.is.len() as Op + 1;
            found.since = found.since.saturating_add(self.sizes[(o - 1) as usize]);
            let boundary = o.is_multiple_of(interval) || (budget > 0 && found.since >= budget);
            if boundary {
                found.since = 0;
            }
            found.is.push(boundary);
        }
        if !found.is[(op - 1) as usize] {
            return Err(format!(
                "replica {replica} asked for a snapshot at op {op}, which is not a checkpoint \
                 boundary (interval {interval}, budget {budget} bytes): its checkpoints are at \
                 other ops than the others'"
            ));
        }
        Ok(())
    }

    /// Highest op committed anywhere.
    pub fn committed(&self) -> Op {
        self.chain.len() as Op
    }

    /// A replica restarted: it re-executes from op 1.
    /// A replica restarted from its disk in `view`: it re-executes from op 1,
    /// and its view is the durable one (a view it moved to but never made
    /// durable was never announced either; the simulator checks that).
    pub fn restarted(&mut self, replica: Slot, view: Stamp) {
        self.last_executed[replica as usize] = 0;
        self.commits[replica as usize] = 0;
        self.views[replica as usize] = view;
    }

    /// A replica restarted with nothing: even its view starts over (it
    /// persisted nothing, so there is nothing to regress from).
    pub fn forgot(&mut self, replica: Slot) {
        self.restarted(replica, (0, 0));
    }

    /// A replica found its host's state diverged: that state counts for
    /// nothing, and the next snapshot it installs (the quorum's) may be at
    /// or below what it executed.
    pub fn diverged(&mut self, replica: Slot) {
        self.last_executed[replica as usize] = 0;
    }

    pub fn on_execute(
        &mut self,
        replica: Slot,
        entry: &Prepare,
        outcomes: &[Outcome],
    ) -> Result<(), Violation> {
        let r = replica as usize;
        let op = entry.op;
        if op != self.last_executed[r] + 1 {
            return Err(format!(
                "replica {replica} executed op {op} after op {}",
                self.last_executed[r]
            ));
        }
        self.last_executed[r] = op;
        let known = self.chain.len() as Op;
        if op <= known {
            if self.chain[(op - 1) as usize] != entry.checksum {
                return Err(format!(
                    "replica {replica} executed a different entry at committed op {op}"
                ));
            }
            return self.check_outcomes(replica, entry, outcomes, false);
        }
        let parent = self.chain.last().copied().unwrap_or(self.root);
        if entry.parent != parent {
            return Err(format!(
                "replica {replica} committed op {op} off the committed chain"
            ));
        }
        self.chain.push(entry.checksum);
        self.sizes.push(entry.payload_bytes() as u64);
        let previous = self.apps.last().copied().unwrap_or_default();
        self.apps.push(previous.applied(entry, outcomes));
        self.check_outcomes(replica, entry, outcomes, true)
    }

    fn check_outcomes(
        &mut self,
        replica: Slot,
        entry: &Prepare,
        outcomes: &[Outcome],
        first: bool,
    ) -> Result<(), Violation> {
        if outcomes.len() != entry.requests.len() {
            return Err(format!(
                "replica {replica}: {} outcomes for {} requests",
                outcomes.len(),
                entry.requests.len()
            ));
        }
        for (request, outcome) in entry.requests.iter().zip(outcomes) {
            let key = (request.client, request.request);
            match (outcome, self.executed.get(&key)) {
                (Outcome::Executed, Some(&op)) if op != entry.op => {
                    return Err(format!(
                        "request {key:?} executed twice: at op {op} and again at op {} (replica {replica})",
                        entry.op
                    ));
                }
                (Outcome::Executed, Some(_)) => {}
                (Outcome::Executed, None) if first => {
                    if self.refused.contains(&key) {
                        return Err(format!(
                            "request {key:?} executed at op {} after being refused",
                            entry.op
                        ));
                    }
                    self.executed.insert(key, entry.op);
                }
                (Outcome::Executed, None) => {
                    return Err(format!(
                        "replica {replica} executed {key:?} at op {} where others did not",
                        entry.op
                    ));
                }
                (Outcome::Duplicate { op }, executed) if *op != 0 && executed != Some(op) => {
                    return Err(format!(
                        "duplicate {key:?} points at op {op}, executed at {executed:?}"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The canonical application state at `op` (op 0: the empty state).
    pub fn app_at(&self, op: Op) -> Option<App> {
        if op == 0 {
            return Some(App::default());
        }
        self.apps.get((op - 1) as usize).copied()
    }

    /// A host's state after applying an op.
    pub fn on_app(&self, replica: Slot, app: App) -> Result<(), Violation> {
        if self.app_at(app.op) != Some(app) {
            return Err(format!(
                "replica {replica}'s host state at op {} differs from the canonical one",
                app.op
            ));
        }
        Ok(())
    }

    /// A host installed a snapshot (state sync, or a restart from a
    /// checkpoint): it must be the canonical state at its op, ahead of what
    /// the replica executed, and execution goes on from the op after it.
    pub fn on_install(&mut self, replica: Slot, app: App) -> Result<(), Violation> {
        let r = replica as usize;
        if app.op <= self.last_executed[r] {
            return Err(format!(
                "replica {replica} installed the state of op {} after executing op {}",
                app.op, self.last_executed[r]
            ));
        }
        match self.app_at(app.op) {
            Some(canonical) if canonical == app => {}
            Some(_) => {
                return Err(format!(
                    "replica {replica} installed a state at op {} that differs from the canonical one",
                    app.op
                ))
            }
            None => {
                return Err(format!(
                    "replica {replica} installed the state of op {}, which is not committed",
                    app.op
                ))
            }
        }
        self.last_executed[r] = app.op;
        Ok(())
    }

    /// A client received a reply.
    pub fn on_reply(
        &mut self,
        client: ClientId,
        request: u64,
        op: Op,
        outcome: Outcome,
    ) -> Result<(), Violation> {
        let key = (client, request);
        match outcome {
            Outcome::Executed | Outcome::Duplicate { .. } => {
                if self.executed.get(&key) != Some(&op) {
                    return Err(format!(
                        "reply for {key:?} names op {op}, but it executed at {:?}",
                        self.executed.get(&key)
                    ));
                }
                self.replied = self.replied.max(op);
                if let Some(previous) = self.replies.insert(key, op) {
                    if previous != op {
                        return Err(format!("two replies for {key:?}: op {previous} and op {op}"));
                    }
                }
            }
            Outcome::Evicted => {
                // "Evicted" leaves the request's fate unknown to the client (it
                // may have run before the session was lost); what must never
                // happen is that it runs after the client was told.
                self.refused.insert(key);
            }
            Outcome::Registered { session } => self.replied = self.replied.max(session),
            Outcome::Refused => {}
            Outcome::Membership => {
                return Err(format!(
                    "reply for {key:?} at op {op} with a reconfiguration's outcome"
                ))
            }
        }
        Ok(())
    }

    /// What a read invoked now must see at least.
    pub fn read_bounds(&self) -> ReadBounds {
        ReadBounds {
            replied: self.replied,
            read: self.read,
        }
    }

    /// A read invoked with `bounds` came back ready at index `op`, and its
    /// host served it from `seen`, the state it had applied then.
    pub fn on_read(&mut self, replica: Slot, bounds: ReadBounds, op: Op, seen: App) -> Result<(), Violation> {
        if op < bounds.replied || seen.op < op {
            return Err(format!(
                "stale read at replica {replica}: index {op}, executed {}, but op {} was \
                 replied to before the read began",
                seen.op, bounds.replied
            ));
        }
        match self.app_at(seen.op) {
            Some(canonical) if canonical == seen => {}
            Some(_) => {
                return Err(format!(
                    "read at replica {replica} saw a state at op {} that differs from the canonical one",
                    seen.op
                ))
            }
            None => {
                return Err(format!(
                    "read at replica {replica} saw op {}, beyond op {}, the highest committed",
                    seen.op,
                    self.committed()
                ))
            }
        }
        if seen.op < bounds.read {
            return Err(format!(
                "stale read at replica {replica}: it saw op {}, but a read that completed before \
                 it began saw op {}",
                seen.op, bounds.read
            ));
        }
        self.read = self.read.max(seen.op);
        Ok(())
    }

    /// Checks a replica's view, commit and leadership after a step.
    pub fn on_state(&mut self, replica: Slot, view: Stamp, commit: Op, leads: bool) -> Result<(), Violation> {
        let r = replica as usize;
        if view < self.views[r] {
            return Err(format!(
                "replica {replica} went back from (epoch, view) {:?} to {view:?}",
                self.views[r]
            ));
        }
        if commit < self.commits[r] {
            return Err(format!(
                "replica {replica} commit went back from {} to {commit}",
                self.commits[r]
            ));
        }
        self.views[r] = view;
        self.commits[r] = commit;
        if leads {
            if let Some(other) = self.leaders.insert(view, replica) {
                if other != replica {
                    return Err(format!(
                        "replicas {other} and {replica} both led (epoch, view) {view:?}"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsr::Request;

    /// A checker for three replicas that has seen ops 1 to 3 committed,
    /// one request each, all executed.
    fn three_ops() -> Checker {
        let mut checker = Checker::new(1, 3);
        let mut parent = 1;
        for op in 1..=3 {
            let request = Request {
                client: 9,
                session: 1,
                request: op,
                origin: 0,
                payload: vec![op as u8],
            };
            let entry = Prepare::new(parent, 0, op, op, vec![request]);
            parent = entry.checksum;
            checker.on_execute(0, &entry, &[Outcome::Executed]).unwrap();
        }
        checker
    }

    #[test]
    fn snapshots_are_asked_for_at_boundaries_only() {
        // Ops 1 to 3 carry one byte each.
        let mut checker = three_ops();
        checker.on_take_snapshot(0, 2, 2, 0).unwrap();
        checker.on_take_snapshot(0, 3, 100, 3).unwrap();
        checker.on_take_snapshot(0, 1, 100, 1).unwrap();
        let broken = [(1, 2, 0), (3, 2, 0), (2, 100, 3), (4, 2, 0), (1, 0, 1)];
        for (op, interval, budget) in broken {
            assert!(
                checker.on_take_snapshot(0, op, interval, budget).is_err(),
                "{op} {interval} {budget}"
            );
        }
    }

    #[test]
    fn a_read_that_sees_a_canonical_state_within_its_bounds_passes() {
        let mut checker = three_ops();
        let seen = checker.app_at(2).unwrap();
        let bounds = ReadBounds { replied: 1, read: 2 };
        checker.on_read(1, bounds, 2, seen).unwrap();
        assert_eq!(checker.read, 2);
    }

    #[test]
    fn each_read_check_can_fail() {
        let checker = three_ops();
        let at = |op| checker.app_at(op).unwrap();
        let phantom = App {
            hash: at(2).hash ^ 1,
            ..at(2)
        };
        let future = App { op: 4, hash: 0 };
        let cases = [
            (
                ReadBounds { replied: 3, read: 0 },
                2,
                at(2),
                "replied to before the read began",
            ),
            (ReadBounds::default(), 3, at(2), "executed 2"),
            (
                ReadBounds::default(),
                2,
                phantom,
                "differs from the canonical one",
            ),
            (
                ReadBounds::default(),
                2,
                future,
                "beyond op 3, the highest committed",
            ),
            (
                ReadBounds { replied: 1, read: 3 },
                2,
                at(2),
                "a read that completed before it began saw op 3",
            ),
        ];
        for (bounds, op, seen, expected) in cases {
            let broken = three_ops().on_read(1, bounds, op, seen).unwrap_err();
            assert!(broken.contains(expected), "{broken}");
        }
    }
}
