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
//! 6. Reads are linearizable: a read is served only from a state that holds
//!    every op some client had a reply for before the read began.

use std::collections::{HashMap, HashSet};

use vsr::{ClientId, Op, Outcome, Prepare, ReplicaIndex, View};

/// The first invariant that broke.
pub type Violation = String;

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
    /// The highest op any client has had a reply for.
    pub replied: Op,
    /// Last op each replica executed, in its current incarnation.
    last_executed: Vec<Op>,
    views: Vec<View>,
    commits: Vec<Op>,
    leaders: HashMap<View, ReplicaIndex>,
}

impl Checker {
    pub fn new(root: u128, replica_count: usize) -> Checker {
        Checker {
            root,
            chain: Vec::new(),
            executed: HashMap::new(),
            refused: HashSet::new(),
            replies: HashMap::new(),
            replied: 0,
            last_executed: vec![0; replica_count],
            views: vec![0; replica_count],
            commits: vec![0; replica_count],
            leaders: HashMap::new(),
        }
    }

    /// Highest op committed anywhere.
    pub fn committed(&self) -> Op {
        self.chain.len() as Op
    }

    /// A replica restarted: it re-executes from op 1.
    /// A replica restarted from its disk in `view`: it re-executes from op 1,
    /// and its view is the durable one (a view it moved to but never made
    /// durable was never announced either; the simulator checks that).
    pub fn restarted(&mut self, replica: ReplicaIndex, view: View) {
        self.last_executed[replica as usize] = 0;
        self.commits[replica as usize] = 0;
        self.views[replica as usize] = view;
    }

    /// A replica restarted with nothing: even its view starts over (it
    /// persisted nothing, so there is nothing to regress from).
    pub fn forgot(&mut self, replica: ReplicaIndex) {
        self.restarted(replica, 0);
    }

    pub fn on_execute(
        &mut self,
        replica: ReplicaIndex,
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
        self.check_outcomes(replica, entry, outcomes, true)
    }

    fn check_outcomes(
        &mut self,
        replica: ReplicaIndex,
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
            Outcome::Registered { .. } => {}
        }
        Ok(())
    }

    /// A read issued when `required` was the highest op replied to came back
    /// ready at `op`, with the replica having executed up to `executed`.
    pub fn on_read(
        &self,
        replica: ReplicaIndex,
        required: Op,
        op: Op,
        executed: Op,
    ) -> Result<(), Violation> {
        if op < required || executed < op {
            return Err(format!(
                "stale read at replica {replica}: index {op}, executed {executed}, but op {required} was \
                 replied to before the read began"
            ));
        }
        Ok(())
    }

    /// Checks a replica's view, commit and leadership after a step.
    pub fn on_state(
        &mut self,
        replica: ReplicaIndex,
        view: View,
        commit: Op,
        leads: bool,
    ) -> Result<(), Violation> {
        let r = replica as usize;
        if view < self.views[r] {
            return Err(format!(
                "replica {replica} went back from view {} to {view}",
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
                    return Err(format!("replicas {other} and {replica} both led view {view}"));
                }
            }
        }
        Ok(())
    }
}
