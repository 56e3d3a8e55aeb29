//! An exhaustive, bounded model check of the real `vsr::Replica` with
//! stateright: every interleaving of message delivery, loss, duplication,
//! timeouts, one crash, client submissions and reads, and scripted
//! membership changes (each asked for at any point, through any member,
//! its new members started as learners on nodes of their own), up to the
//! bounds in [`Bounds`], with the protocol's safety properties checked in
//! every reachable state, and liveness checked from (a sample of) them by
//! healing the cluster and requiring every request and change to finish.
//!
//! The replica is sans-IO, so the model is the whole cluster as one value:
//! replicas, the multiset of packets in flight, the clients, and what the
//! replicas have executed and replied so far. See `docs/testing.md`.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};

use stateright::{Model, Property};
use vsr::{
    ChangeResult, ClientId, Config, Epoch, Input, MemberId, Membership, Op, Outcome, Output, Replica, Role,
    Slot, Status, Submission, View,
};
use vsr_sim::checker::App;

/// How far the model checker explores. Every fault is a budget, so that
/// the state space is finite.
#[derive(Clone, Debug)]
pub struct Bounds {
    pub replicas: u8,
    /// Clients, each with its home replica `(home + c) % replicas`.
    pub clients: usize,
    /// 1 in `quiet()`: the first client submits through a backup, whose
    /// request is forwarded.
    pub home: Slot,
    /// Requests per client, its registration included.
    pub requests: u64,
    /// Submissions again of an outstanding request, per client.
    pub resubmits: u8,
    /// Timeouts, all replicas together: a timeout action runs one
    /// replica's clock until it does something (a heartbeat, a retry, a
    /// view change), so the exact tick counts are never branched on.
    pub timeouts: u8,
    /// Packets lost. Loss adds no reachable protocol state (a lost packet
    /// is one never delivered, and any packet may stay in flight forever),
    /// so it only matters to liveness, which the healing check covers by
    /// healing twice: delivering, and losing, everything in flight. 0 in
    /// `small()`.
    pub drops: u8,
    pub duplicates: u8,
    /// Crashes (memory mode: the replica restarts with nothing and recovers).
    pub crashes: u8,
    /// Linearizable reads, through any replica.
    pub reads: u8,
    /// States whose highest view is above this are not explored further.
    pub max_view: u64,
    /// `Config::checkpoint_interval` (tiny, so that checkpoints happen).
    pub checkpoint_interval: u64,
    /// The liveness check heals the cluster from one state in this many
    /// (chosen by the state's fingerprint; 1 means from every state).
    pub heal_one_in: u64,
    /// Nodes that exist, members or not: slots `replicas..slots` are spare
    /// nodes that run nothing until a change names them (their member id
    /// is their slot, as in the genesis).
    pub slots: u8,
    /// Scripted membership changes, in order: each the member ids of the
    /// target list, asked for (`Action::Reconfigure`) at any point through
    /// any member in normal status of the newest epoch, once the one
    /// before was answered. Its new members' learners start first, as a
    /// host starts them (`Simulator::start_learners`).
    pub changes: Vec<Vec<MemberId>>,
    /// The member changes are asked through (`None`: any member in normal
    /// status of the newest epoch).
    pub origin: Option<Slot>,
    /// How long a change may take before its origin gives it up
    /// (`Input::Reconfigure`'s `ticks`).
    pub change_ticks: u64,
    /// A genesis member restarted without its state knows only the
    /// genesis (its host never heard of a later epoch:
    /// `Replica::recovering`), instead of the newest list a running
    /// replica holds (`recovering_in`).
    pub restart_in_genesis: bool,
}

impl Bounds {
    /// One client that only registers, no faults, no timeouts: the
    /// baseline the scenarios in `tests/model.rs` add one kind of fault to.
    pub fn quiet() -> Bounds {
        Bounds {
            replicas: 3,
            clients: 1,
            home: 1,
            requests: 1,
            resubmits: 0,
            timeouts: 0,
            drops: 0,
            duplicates: 0,
            crashes: 0,
            reads: 0,
            max_view: 2,
            checkpoint_interval: 1,
            heal_one_in: 16,
            slots: 3,
            changes: Vec::new(),
            origin: None,
            change_ticks: 10_000,
            restart_in_genesis: false,
        }
    }

    /// Every kind of fault at once (`make model-check`'s widest run,
    /// which it bounds by a state count).
    pub fn all() -> Bounds {
        Bounds {
            requests: 2,
            resubmits: 1,
            timeouts: 2,
            duplicates: 1,
            crashes: 1,
            reads: 1,
            ..Bounds::quiet()
        }
    }

    /// The membership cases (docs/testing.md), by name: one client with
    /// one request (its registration) each.
    ///
    /// - `grow-shrink`: 3 → 4 → 3 (add slot 3, then remove slot 0), one
    ///   crash, 2 timeouts;
    /// - `replace`: 3 → 3, slot 0 replaced by slot 3, one duplicate, one
    ///   timeout (a drop adds no reachable state: see `drops`);
    /// - `one-two-one`: 1 → 2 → 1, no faults but the one timeout a
    ///   primary needs to propose a change once its learner caught up;
    /// - `genesis-host`: 2 → 3, one crash, restarted replicas knowing only
    ///   epoch 0;
    /// - `learner-restart`: 2 → 3, one crash (a learner restarted as a
    ///   new life, or once it entered, as a member without its state).
    pub fn membership(name: &str) -> Option<Bounds> {
        let quiet = Bounds {
            heal_one_in: 16,
            ..Bounds::quiet()
        };
        Some(match name {
            "grow-shrink" => Bounds {
                slots: 4,
                changes: vec![vec![0, 1, 2, 3], vec![1, 2, 3]],
                crashes: 1,
                timeouts: 2,
                ..quiet
            },
            "replace" => Bounds {
                slots: 4,
                changes: vec![vec![1, 2, 3]],
                duplicates: 1,
                timeouts: 1,
                ..quiet
            },
            "one-two-one" => Bounds {
                replicas: 1,
                home: 0,
                slots: 2,
                changes: vec![vec![0, 1], vec![0]],
                timeouts: 1,
                ..quiet
            },
            "genesis-host" => Bounds {
                replicas: 2,
                home: 0,
                slots: 3,
                changes: vec![vec![0, 1, 2]],
                crashes: 1,
                timeouts: 1,
                restart_in_genesis: true,
                ..quiet
            },
            "learner-restart" => Bounds {
                replicas: 2,
                home: 0,
                slots: 3,
                changes: vec![vec![0, 1, 2]],
                crashes: 1,
                timeouts: 1,
                ..quiet
            },
            _ => return None,
        })
    }
}

/// The names `Bounds::membership` knows.
pub const MEMBERSHIP_CASES: [&str; 5] = [
    "grow-shrink",
    "replace",
    "one-two-one",
    "genesis-host",
    "learner-restart",
];

/// One packet in flight between replicas.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Packet {
    pub to: Slot,
    pub from: Slot,
    pub bytes: Vec<u8>,
}

/// A replica and its host.
#[derive(Clone, Debug)]
pub struct Node {
    /// `None` while crashed, stopped, or not started.
    pub replica: Option<Replica>,
    /// The host's application state.
    pub app: App,
    /// The host's clock, in ticks.
    pub clock: u64,
    /// Whether its host ever started a replica (a spare node starts one
    /// when a change names it).
    pub started: bool,
    /// Stopped for good: removed from its list.
    pub gone: bool,
    /// What its host started it as while it is a learner: it restarts as
    /// a new learner (a new life) until it is heard to enter as a member.
    pub learner: Option<LearnerStart>,
    /// The epoch of the replica's list before its current step: the epoch
    /// an entry it executes was executed in.
    pub epoch: Epoch,
}

/// A learner as its host started it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct LearnerStart {
    pub id: MemberId,
    pub joined: Epoch,
    pub life: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Client {
    pub id: ClientId,
    pub home: Slot,
    pub session: Option<Op>,
    /// Requests started, its registration included.
    pub started: u64,
    /// The request in flight: its number and payload.
    pub outstanding: Option<(u64, Vec<u8>)>,
    pub resubmits_left: u8,
}

/// What happened so far, as the properties need it.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct History {
    /// The entry executed at each op, by any replica.
    pub executed: BTreeMap<Op, u128>,
    /// The lowest (epoch, view) in which a replica executed each op: the
    /// op was committed there or earlier, so every later view has it.
    pub executed_in: BTreeMap<Op, (Epoch, View)>,
    /// The application state after each op, by any replica.
    pub apps: BTreeMap<Op, u128>,
    /// The op at which each (client, request) was executed.
    pub once: BTreeMap<(ClientId, u64), Op>,
    /// The highest op any reply named.
    pub replied: Op,
    /// Reads in flight: (replica, id) -> the highest op replied when issued.
    pub reads: BTreeMap<(Slot, u64), Op>,
    pub next_read: u64,
    /// The list of each epoch entered (or executed) anywhere: one per epoch.
    pub lists: BTreeMap<Epoch, Membership>,
    /// The op of the entry that began each epoch after the genesis.
    pub starts: BTreeMap<Epoch, Op>,
    /// How each change asked for ended, as its origin answered its host
    /// (`ChangeResult`'s name), or `Lost`: its origin crashed first.
    pub answers: BTreeMap<(MemberId, u64), String>,
    /// The member each change was asked through, in order.
    pub asked: Vec<Slot>,
}

impl History {
    /// The epoch whose range holds `op`: the newest whose entry lies
    /// below it (the entries below an op executed anywhere are known).
    pub fn epoch_of(&self, op: Op) -> Epoch {
        self.starts
            .iter()
            .filter(|(_, &start)| start < op)
            .map(|(&epoch, _)| epoch)
            .max()
            .unwrap_or(0)
    }

    /// The newest epoch entered anywhere, and its list.
    pub fn newest(&self) -> (Epoch, Membership) {
        let (&epoch, &list) = self.lists.iter().next_back().expect("the genesis is listed");
        (epoch, list)
    }
}

#[derive(Clone, Debug)]
pub struct State {
    pub nodes: Vec<Node>,
    /// Packets in flight, sorted (a multiset).
    pub network: Vec<Packet>,
    pub clients: Vec<Client>,
    pub timeouts_left: u8,
    pub drops_left: u8,
    pub duplicates_left: u8,
    pub crashes_left: u8,
    pub reads_left: u8,
    pub restarts: u64,
    /// Scripted changes asked for so far (`Bounds::changes`).
    pub changes_asked: usize,
    pub history: History,
    /// The first property that broke (the state then has no successors).
    pub violation: Option<String>,
}

/// A replica's state for the fingerprint: everything but its counters
/// (`Stats`), which only count and would keep equal states apart.
fn replica_digest(replica: &Replica) -> String {
    let debug = format!("{replica:?}");
    match debug.find("stats: Stats {") {
        Some(start) => {
            let end = debug[start..].find('}').map_or(debug.len(), |e| start + e + 1);
            format!("{}{}", &debug[..start], &debug[end..])
        }
        None => debug,
    }
}

impl Hash for State {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for node in &self.nodes {
            node.replica.as_ref().map(replica_digest).hash(state);
            (node.app.op, node.app.hash, node.clock).hash(state);
            (node.started, node.gone, node.learner, node.epoch).hash(state);
        }
        self.network.hash(state);
        self.clients.hash(state);
        (
            self.timeouts_left,
            self.drops_left,
            self.duplicates_left,
            self.crashes_left,
            self.reads_left,
            self.restarts,
            self.changes_asked,
        )
            .hash(state);
        self.history.hash(state);
        self.violation.hash(state);
    }
}

impl PartialEq for State {
    fn eq(&self, other: &State) -> bool {
        let digest = |s: &State| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            s.hash(&mut h);
            h.finish()
        };
        digest(self) == digest(other)
    }
}
impl Eq for State {}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Client `c` starts its next request (registration first).
    Start(usize),
    /// Client `c` submits its outstanding request again.
    Resubmit(usize),
    /// The packet at this index of the sorted network arrives.
    Deliver(usize),
    /// It arrives and stays in flight (a duplicate).
    Duplicate(usize),
    /// It is lost.
    Drop(usize),
    /// The replica's clock runs until it does something.
    Timeout(Slot),
    /// The replica's clock runs for as long as it does nothing (so that it
    /// stands just before its next timeout: a backup that has stopped
    /// trusting its primary but has not campaigned yet).
    Silence(Slot),
    Crash(Slot),
    /// A crashed replica restarts with nothing and recovers from the others.
    Restart(Slot),
    /// A linearizable read through this replica.
    Read(Slot),
    /// The next scripted change is asked for through this member.
    Reconfigure(Slot),
}

/// The cluster model: the real replica code, the bounds, and the config.
pub struct Cluster {
    pub config: Config,
    pub bounds: Bounds,
}

/// Ticks a timeout action may run before giving up (no timer fires).
const TIMEOUT_TICKS_MAX: u64 = 1_000;

impl Cluster {
    pub fn new(bounds: Bounds) -> Cluster {
        let mut config = Config::new(0x6d0de1, bounds.replicas);
        config.checkpoint_interval = bounds.checkpoint_interval;
        config.checkpoint_chunk_bytes = 64;
        config.message_entries_max = 2;
        Cluster { config, bounds }
    }

    fn initial(&self) -> State {
        let n = self.bounds.replicas;
        let mut history = History::default();
        history.lists.insert(0, self.config.genesis);
        State {
            nodes: (0..self.bounds.slots.max(n))
                .map(|r| Node {
                    replica: (r < n).then(|| Replica::new(self.config.clone(), r)),
                    app: App::default(),
                    clock: 0,
                    started: r < n,
                    gone: false,
                    learner: None,
                    epoch: 0,
                })
                .collect(),
            network: Vec::new(),
            clients: (0..self.bounds.clients)
                .map(|c| Client {
                    id: 0xc1_0000 + c as u128,
                    home: ((self.bounds.home as usize + c) % n as usize) as Slot,
                    session: None,
                    started: 0,
                    outstanding: None,
                    resubmits_left: self.bounds.resubmits,
                })
                .collect(),
            timeouts_left: self.bounds.timeouts,
            drops_left: self.bounds.drops,
            duplicates_left: self.bounds.duplicates,
            crashes_left: self.bounds.crashes,
            reads_left: self.bounds.reads,
            restarts: 0,
            changes_asked: 0,
            history,
            violation: None,
        }
    }

    /// Feeds `input` to replica `r` and carries out its outputs; how many
    /// there were. A panic of the replica (debug builds check its own
    /// invariants after every step) is a violation.
    fn step(&self, state: &mut State, r: Slot, input: Input<'_>) -> usize {
        let node = &mut state.nodes[r as usize];
        let Some(replica) = node.replica.as_mut() else {
            return 0;
        };
        node.epoch = replica.membership().epoch();
        let outputs = match catch_unwind(AssertUnwindSafe(|| replica.step(input))) {
            Ok(outputs) => outputs,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                state.violate(format!("replica {r} panicked: {message}"));
                return 1;
            }
        };
        if replica.stats().checkpoint_divergence > 0 {
            state.violate(format!("replica {r} saw a checkpoint digest differ from its own"));
        }
        let count = outputs.len();
        for output in outputs {
            self.output(state, r, output);
        }
        state.check_logs();
        count
    }

    /// Feeds `input` to replica `r` and carries out its outputs.
    fn input(&self, state: &mut State, r: Slot, input: Input<'_>) {
        self.step(state, r, input);
    }

    fn output(&self, state: &mut State, r: Slot, output: Output) {
        match output {
            Output::Send { to, id, bytes } => {
                // A node that never started, or stopped for good, hears
                // nothing (nor does a slot's other owner: the model's
                // member ids are their slots).
                let listening = state
                    .nodes
                    .get(to as usize)
                    .is_some_and(|node| node.started && !node.gone && id == to as MemberId);
                if listening {
                    let packet = Packet { to, from: r, bytes };
                    let at = state.network.partition_point(|p| *p < packet);
                    state.network.insert(at, packet);
                }
            }
            // Memory mode: the replica's log is its storage.
            Output::WriteLog { .. } | Output::WriteState(_) | Output::WriteCheckpoint(_) => {}
            Output::Reconfigured { id, result } => self.reconfigured(state, r, id, result),
            Output::Epoch { membership, role } => self.entered(state, r, *membership, role),
            Output::Removed { .. } => self.stop(state, r),
            Output::Execute { entry, outcomes } => {
                let app = state.nodes[r as usize].app;
                if app.op + 1 != entry.op {
                    return state.violate(format!(
                        "replica {r} executed op {} after op {}",
                        entry.op, app.op
                    ));
                }
                state.check_epoch_of(r, &entry);
                state.record(r, "executed", entry.op, entry.checksum, true);
                let at = state.nodes[r as usize]
                    .replica
                    .as_ref()
                    .map_or((0, 0), |replica| (replica.membership().epoch(), replica.view()));
                let first = state.history.executed_in.entry(entry.op).or_insert(at);
                *first = (*first).min(at);
                for (request, outcome) in entry.requests.iter().zip(&outcomes) {
                    if *outcome != Outcome::Executed {
                        continue;
                    }
                    let key = (request.client, request.request);
                    match state.history.once.get(&key) {
                        Some(&op) if op != entry.op => {
                            return state.violate(format!(
                                "request {key:?} executed at op {op} and again at op {}",
                                entry.op
                            ))
                        }
                        _ => state.history.once.insert(key, entry.op),
                    };
                }
                let app = app.applied(&entry, &outcomes);
                state.nodes[r as usize].app = app;
                state.record(r, "applied", app.op, app.hash, false);
            }
            // The model's hosts are deterministic: a divergence is a bug.
            Output::Diverged { op, .. } => {
                state.violate(format!("replica {r} found its state diverged at op {op}"))
            }
            Output::TakeSnapshot { op } => {
                // The host answers at once.
                let app = state.nodes[r as usize].app;
                if app.op != op {
                    return state.violate(format!(
                        "replica {r} asked for a snapshot at op {op}, host at {}",
                        app.op
                    ));
                }
                self.input(
                    state,
                    r,
                    Input::Snapshot {
                        op,
                        app: app.encode(),
                    },
                );
            }
            Output::InstallSnapshot { op, app } => match App::decode(&app) {
                Some(app) if app.op == op => {
                    state.nodes[r as usize].app = app;
                    state.record(r, "installed", op, app.hash, false);
                }
                _ => state.violate(format!("replica {r} installed a bad snapshot as op {op}")),
            },
            Output::Reply {
                client,
                request,
                op,
                outcome,
            } => self.reply(state, r, client, request, op, outcome),
            Output::ReadReady { id, op } => {
                if let Some(required) = state.history.reads.remove(&(r, id)) {
                    let executed = state.nodes[r as usize].app.op;
                    if op < required || executed < op {
                        state.violate(format!(
                            "stale read at replica {r}: index {op}, executed {executed}, op {required} replied before"
                        ));
                    }
                }
            }
        }
    }

    fn reply(&self, state: &mut State, r: Slot, client: ClientId, request: u64, op: Op, outcome: Outcome) {
        if matches!(outcome, Outcome::Executed | Outcome::Registered { .. }) {
            let key = (client, request);
            if let Some(&executed) = state.history.once.get(&key) {
                if executed != op {
                    return state.violate(format!(
                        "request {key:?} replied as op {op}, executed as op {executed}"
                    ));
                }
            }
            state.history.replied = state.history.replied.max(op);
        }
        let Some(c) = state.clients.iter_mut().find(|c| c.id == client) else {
            return;
        };
        if c.home != r || c.outstanding.as_ref().map(|o| o.0) != Some(request) {
            return; // late or replayed
        }
        c.outstanding = None;
        match outcome {
            Outcome::Registered { session } => c.session = Some(session),
            Outcome::Duplicate { op: 0 } => {
                state.violate(format!("client {client:x} got no op for request {request}"))
            }
            Outcome::Executed | Outcome::Duplicate { .. } => {}
            // Eviction needs more clients than table slots: not in the model.
            Outcome::Evicted => state.violate(format!("client {client:x} evicted")),
            // The model's clients resubmit a request with its own body only.
            Outcome::Refused => state.violate(format!("client {client:x} refused request {request}")),
            Outcome::Membership => state.violate(format!("client {client:x} answered as a reconfiguration")),
        }
    }

    fn submit(&self, state: &mut State, c: usize) {
        let client = &state.clients[c];
        let Some((request, payload)) = client.outstanding.clone() else {
            return;
        };
        let submission = Submission {
            client: client.id,
            session: client.session.unwrap_or(0),
            request,
            payload,
        };
        let home = client.home;
        self.input(state, home, Input::Submit(submission));
    }

    fn start(&self, state: &mut State, c: usize) {
        let client = &mut state.clients[c];
        let request = if client.session.is_none() {
            0
        } else {
            client.started
        };
        client.started += 1;
        client.outstanding = Some((request, vec![c as u8, request as u8]));
        self.submit(state, c);
    }

    /// Runs replica `r`'s clock until it outputs something. `false` if no
    /// timer fired.
    fn timeout(&self, state: &mut State, r: Slot) -> bool {
        for _ in 0..TIMEOUT_TICKS_MAX {
            if self.tick(state, r) > 0 {
                return true;
            }
        }
        false
    }

    /// One tick of replica `r`'s clock; how many outputs it made.
    fn tick(&self, state: &mut State, r: Slot) -> usize {
        let node = &mut state.nodes[r as usize];
        if node.replica.is_none() {
            return 0;
        }
        node.clock += 1;
        let now_ns = node.clock * 1_000_000;
        self.step(
            state,
            r,
            Input::Tick {
                now_ns,
                mono_ns: now_ns,
            },
        )
    }

    /// Runs replica `r`'s clock for as long as a tick makes it do nothing.
    /// `false` if the very next tick would.
    fn silence(&self, state: &mut State, r: Slot) -> bool {
        let node = &mut state.nodes[r as usize];
        let Some(replica) = node.replica.as_mut() else {
            return false;
        };
        let start = node.clock;
        while node.clock < start + TIMEOUT_TICKS_MAX {
            let mut probe = replica.clone();
            let tick = Input::Tick {
                now_ns: (node.clock + 1) * 1_000_000,
                mono_ns: (node.clock + 1) * 1_000_000,
            };
            // A probe that panics does something: the next timeout finds it.
            if !catch_unwind(AssertUnwindSafe(|| probe.step(tick))).is_ok_and(|o| o.is_empty()) {
                break;
            }
            *replica = probe;
            node.clock += 1;
        }
        node.clock > start
    }

    /// Restarts node `r` without its state, as its host does: a learner as
    /// a new learner (a new life); a member to recover among the newest
    /// list a running replica holds (or, `restart_in_genesis`, the genesis).
    fn restart(&self, state: &mut State, r: Slot) {
        state.restarts += 1;
        let nonce = state.restarts;
        if let Some(learner) = state.nodes[r as usize].learner {
            return self.start_learner(state, r, learner.id, learner.joined);
        }
        let known = state
            .nodes
            .iter()
            .flatten_replicas()
            .filter(|x| x.role() != Role::Learner)
            .map(|x| *x.membership())
            .max_by_key(|m| m.epoch())
            .filter(|m| m.epoch() > 0)
            // A genesis member's host that never heard of a later epoch (a
            // new member's host learned its epoch from the change).
            .filter(|_| !(self.bounds.restart_in_genesis && self.config.genesis.contains(r)));
        let replica = match known {
            Some(known) => Replica::recovering_in(self.config.clone(), r, known, nonce as u128),
            None => Replica::recovering(self.config.clone(), r, nonce as u128),
        }
        .expect("a valid configuration");
        let node = &mut state.nodes[r as usize];
        node.epoch = replica.membership().epoch();
        node.replica = Some(replica);
        node.app = App::default();
    }

    /// Starts a learner on node `slot` for member `id`, joining epoch
    /// `joined`, with a life of its own.
    fn start_learner(&self, state: &mut State, slot: Slot, id: MemberId, joined: Epoch) {
        state.restarts += 1;
        let life = 0x11fe_0000 + state.restarts;
        let replica = Replica::learner(self.config.clone(), slot, id, joined, life).expect("a valid learner");
        let node = &mut state.nodes[slot as usize];
        node.epoch = replica.membership().epoch();
        node.replica = Some(replica);
        node.app = App::default();
        node.started = true;
        node.learner = Some(LearnerStart { id, joined, life });
    }

    /// Asks for the next scripted change through member `through`, its
    /// new members' learners started first.
    fn reconfigure(&self, state: &mut State, through: Slot) {
        let k = state.changes_asked;
        state.changes_asked += 1;
        state.history.asked.push(through);
        let ids = &self.bounds.changes[k];
        let replica = state.nodes[through as usize]
            .replica
            .as_ref()
            .expect("a running member");
        let id = k as u64 + 1;
        let target = replica
            .change_target(ids, id)
            .unwrap_or_else(|e| panic!("bounds: change {ids:?}: {e}"));
        for m in target.members() {
            let node = state.nodes.get(m.slot as usize);
            if node.is_some_and(|node| node.started) {
                continue;
            }
            assert!(
                node.is_some() && m.id == m.slot as MemberId,
                "bounds: change {ids:?} needs node {} (member ids are slots)",
                m.slot
            );
            self.start_learner(state, m.slot, m.id, m.joined);
        }
        self.input(
            state,
            through,
            Input::Reconfigure {
                id,
                target: Box::new(target),
                ticks: self.bounds.change_ticks,
            },
        );
    }

    /// Replica `r`'s answer to the change it was asked for as `id`.
    fn reconfigured(&self, state: &mut State, r: Slot, id: u64, result: ChangeResult) {
        let Some(origin) = state.nodes[r as usize].replica.as_ref().map(|x| x.member_id()) else {
            return;
        };
        let key = (origin, id);
        if let Some(before) = state.history.answers.get(&key) {
            return state.violate(format!("change {key:?} answered {result:?} after {before}"));
        }
        let refused = !matches!(result, ChangeResult::Done | ChangeResult::Unknown);
        let made = state.history.lists.values().any(|m| {
            let change = m.change();
            m.epoch() > 0 && (change.origin, change.id) == key
        });
        if refused && made {
            return state.violate(format!(
                "change {key:?} answered {result:?}, but it made an epoch"
            ));
        }
        state.history.answers.insert(key, format!("{result:?}"));
    }

    /// Replica `r` entered the epoch `membership` as `role`: one list per
    /// epoch; a change answered "no" makes none; a learner enters as a
    /// member without recovering only as the life the entry records, in
    /// the epoch that admitted it (the fence rule for learners, design
    /// 2.10).
    fn entered(&self, state: &mut State, r: Slot, membership: Membership, role: Role) {
        let epoch = membership.epoch();
        state.nodes[r as usize].epoch = epoch;
        match state.history.lists.get(&epoch) {
            Some(known) if *known != membership => {
                return state.violate(format!(
                    "replica {r} entered epoch {epoch} as {membership:?}, another replica as {known:?}"
                ));
            }
            Some(_) => {}
            None => {
                state.history.lists.insert(epoch, membership);
            }
        }
        let change = membership.change();
        if let Some(answer) = state.history.answers.get(&(change.origin, change.id)) {
            if !matches!(answer.as_str(), "Done" | "Unknown" | "Lost") {
                return state.violate(format!(
                    "replica {r} entered epoch {epoch} by change {change:?}, answered {answer}"
                ));
            }
        }
        if role != Role::Member {
            return;
        }
        let node = &mut state.nodes[r as usize];
        let Some(learner) = node.learner.take() else {
            return;
        };
        let recorded = membership.member(r).map(|m| m.life);
        let recovering = node.replica.as_ref().is_some_and(|x| x.is_recovering());
        if (recorded != Some(learner.life) || epoch != learner.joined) && !recovering {
            state.violate(format!(
                "replica {r} entered epoch {epoch} as learner life {:#x}, the entry records {recorded:x?}, without recovering",
                learner.life
            ));
        }
    }

    /// Replica `r` was removed: its host stops it for good, and its
    /// clients go to the lowest slot of the newest list.
    fn stop(&self, state: &mut State, r: Slot) {
        let node = &mut state.nodes[r as usize];
        node.replica = None;
        node.app = App::default();
        node.gone = true;
        state.history.reads.retain(|(replica, _), _| *replica != r);
        let (_, newest) = state.history.newest();
        let home = newest.slots().filter(|&s| s != r).min();
        for client in &mut state.clients {
            if client.home == r {
                if let Some(home) = home {
                    client.home = home;
                }
            }
        }
    }

    /// Heals the cluster from `state`: every replica up, no loss, every
    /// client's remaining requests started. Every request and change must
    /// then finish, and every member of the newest list reach the same
    /// view and commit within a bound.
    pub fn heals(&self, state: &State) -> Result<(), String> {
        self.heal(state.clone())
            .map_err(|e| format!("delivering what was in flight: {e}"))?;
        let mut lost = state.clone();
        lost.network.clear();
        self.heal(lost)
            .map_err(|e| format!("losing what was in flight: {e}"))
    }

    fn heal(&self, mut state: State) -> Result<(), String> {
        let nodes = state.nodes.len() as Slot;
        for r in 0..nodes {
            let node = &state.nodes[r as usize];
            if node.replica.is_none() && node.started && !node.gone {
                self.restart(&mut state, r);
            }
        }
        for round in 0..HEAL_ROUNDS {
            for c in 0..state.clients.len() {
                let client = &state.clients[c];
                if client.outstanding.is_none() && client.started < self.bounds.requests {
                    self.start(&mut state, c);
                } else if round % 100 == 99 {
                    self.submit(&mut state, c);
                }
            }
            for packet in std::mem::take(&mut state.network) {
                self.input(&mut state, packet.to, Input::Receive(&packet.bytes));
            }
            for r in 0..nodes {
                self.tick(&mut state, r);
            }
            if let Some(violation) = &state.violation {
                return Err(format!("while healing: {violation}"));
            }
            if state.settled(self.bounds.requests) {
                return Ok(());
            }
        }
        Err(format!(
            "not live: {HEAL_ROUNDS} ticks after healing, {}",
            state.describe()
        ))
    }
}

/// Ticks the liveness check waits after healing.
const HEAL_ROUNDS: u64 = 3_000;

impl State {
    fn violate(&mut self, violation: String) {
        self.violation.get_or_insert(violation);
    }

    /// Records that replica `r` reached `value` at `op`; another value at
    /// the same op, anywhere, is a violation. Execution also extends the
    /// committed prefix.
    fn record(&mut self, r: Slot, what: &str, op: Op, value: u128, executed: bool) {
        let map = if executed {
            &mut self.history.executed
        } else {
            &mut self.history.apps
        };
        match map.get(&op) {
            Some(&known) if known != value => self.violate(format!(
                "replica {r} {what} op {op} as {value:x}, but another replica as {known:x}"
            )),
            _ => {
                map.insert(op, value);
            }
        }
    }

    /// Replica `r` executes `entry` (before it is recorded): the entry is
    /// in the range of the epoch it is executed in or an older one (a
    /// replica catching up into a newer list executes older epochs' ops),
    /// never a newer one; the first execution of an op (its commit) finds
    /// a quorum of its epoch's list holding it (a member down or
    /// recovering counts: it may have held it); each epoch begins at one
    /// op.
    fn check_epoch_of(&mut self, r: Slot, entry: &vsr::Prepare) {
        let op = entry.op;
        let epoch = self.history.epoch_of(op);
        let at = self.nodes[r as usize].epoch;
        if at < epoch {
            return self.violate(format!(
                "replica {r} executed op {op} in epoch {at}, but op {op} lies in epoch {epoch}'s range"
            ));
        }
        if !self.history.executed.contains_key(&op) {
            let list = self.history.lists.get(&epoch).copied();
            let Some(list) = list else {
                return self.violate(format!(
                    "op {op} committed in epoch {epoch}, whose list is unknown"
                ));
            };
            let holders = self.holders(&list, op, entry.checksum, epoch);
            if holders < list.quorum() {
                return self.violate(format!(
                    "op {op} committed in epoch {epoch} with {holders} of its {} members holding it",
                    list.n()
                ));
            }
        }
        if let Some(target) = entry.reconfiguration() {
            let next = target.epoch();
            if next != epoch + 1 {
                return self.violate(format!("op {op} of epoch {epoch} reconfigures to epoch {next}"));
            }
            if let Some(&start) = self.history.starts.get(&next) {
                if start != op {
                    return self.violate(format!("epoch {next} begins after op {start} and after op {op}"));
                }
            }
            self.history.starts.insert(next, op);
            match self.history.lists.get(&next) {
                Some(known) if *known != target => self.violate(format!(
                    "op {op} makes epoch {next} {target:?}, a replica entered it as {known:?}"
                )),
                _ => {
                    self.history.lists.insert(next, target);
                }
            }
        }
    }

    /// How many members of `list` (epoch `epoch`'s) hold op `op`'s entry,
    /// or may have: its log has it (or a checkpoint covers it), or it is
    /// down, recovering, or in a later epoch.
    fn holders(&self, list: &Membership, op: Op, checksum: u128, epoch: Epoch) -> usize {
        list.slots()
            .filter(|&slot| {
                let Some(node) = self.nodes.get(slot as usize) else {
                    return false;
                };
                let Some(replica) = &node.replica else {
                    return true;
                };
                let log = replica.log();
                replica.is_recovering()
                    || replica.membership().epoch() > epoch
                    || log.base() >= op
                    || log.checksum_at(op) == Some(checksum)
            })
            .count()
    }

    /// No committed op lost or reordered: every replica in normal status
    /// in an (epoch, view) at or after the one an op was executed in holds
    /// that op's entry wherever its log covers it, and such a primary
    /// holds them all. (A replica still in an older view may hold
    /// anything.) And each epoch prepares nothing after the entry that
    /// ends it: no replica holds an entry above an unexecuted entry
    /// reconfiguring its epoch.
    fn check_logs(&mut self) {
        let mut broken = None;
        for node in &self.nodes {
            let Some(replica) = &node.replica else { continue };
            let log = replica.log();
            let epoch = replica.membership().epoch();
            if !replica.is_recovering() {
                for op in (replica.commit() + 1)..log.op() {
                    let ends = log
                        .get(op)
                        .and_then(|e| e.reconfiguration())
                        .is_some_and(|t| t.epoch() > epoch);
                    if ends {
                        broken = Some(format!(
                            "replica {} (epoch {epoch}) holds entries after op {op}, the unexecuted entry that ends its epoch",
                            replica.index()
                        ));
                    }
                }
            }
            if replica.status() != Status::Normal {
                continue;
            }
            let at = (epoch, replica.view());
            let last = self
                .history
                .executed_in
                .iter()
                .filter(|(_, &e)| e <= at)
                .map(|(&op, _)| op)
                .next_back();
            let Some(last) = last else { continue };
            if replica.is_primary() && log.op() < last {
                broken = Some(format!(
                    "replica {} leads view {} of epoch {epoch} with log up to op {}, but op {last} was executed",
                    replica.index(),
                    replica.view(),
                    log.op()
                ));
                break;
            }
            if log.op() <= log.base() {
                continue; // holds no entries
            }
            for (&op, &checksum) in self.history.executed.range(log.base() + 1..=log.op()) {
                if self.history.executed_in[&op] <= at && log.checksum_at(op) != Some(checksum) {
                    broken = Some(format!(
                        "replica {} (epoch {epoch}, view {}, normal) holds another entry at executed op {op}",
                        replica.index(),
                        replica.view()
                    ));
                    break;
                }
            }
        }
        if let Some(b) = broken {
            self.violate(b);
        }
    }

    /// Every request and read finished, every change asked answered; every
    /// member of the newest list running in it, in normal status, all in
    /// one view at one commit; no replica still leaving.
    fn settled(&self, requests: u64) -> bool {
        let (epoch, list) = self.history.newest();
        let mut members = Vec::new();
        for slot in list.slots() {
            match self.nodes.get(slot as usize).and_then(|n| n.replica.as_ref()) {
                Some(replica) => members.push(replica),
                None => return false,
            }
        }
        let commit = members.iter().map(|r| r.commit_max()).max().unwrap_or(0);
        self.clients
            .iter()
            .all(|c| c.outstanding.is_none() && c.started >= requests)
            && self.history.reads.is_empty()
            && self.history.answers.len() == self.changes_asked
            && members.iter().all(|r| {
                r.role() == Role::Member
                    && r.membership().epoch() == epoch
                    && r.status() == Status::Normal
                    && r.view() == members[0].view()
                    && r.commit() == commit
            })
            && self
                .nodes
                .iter()
                .flatten_replicas()
                .all(|r| r.role() != Role::Leaving)
    }

    /// Whether a member may crash within the fault model (memory mode: a
    /// crash loses its state): every list a running replica holds, and the
    /// newest, has three members or more and room for one more unavailable
    /// member beside those down or recovering, and, in the newest list,
    /// those that have not entered it yet (a learner, or a member behind).
    /// `vopr --membership` does not count the latter; docs/testing.md says
    /// what the model finds when they are not counted.
    pub fn may_lose_a_member(&self) -> bool {
        let (epoch, newest) = self.history.newest();
        let replica = |s: Slot| self.nodes.get(s as usize).and_then(|n| n.replica.as_ref());
        let unavailable = |list: &Membership, entered: bool| {
            list.slots()
                .filter(|&s| {
                    replica(s).is_none_or(|r| {
                        r.is_recovering()
                            || (entered && (r.role() != Role::Member || r.membership().epoch() != epoch))
                    })
                })
                .count()
        };
        let room = |list: &Membership, entered: bool| {
            list.n() >= 3 && unavailable(list, entered) < list.n() - list.quorum()
        };
        room(&newest, true)
            && self
                .nodes
                .iter()
                .flatten_replicas()
                .filter(|r| r.role() != Role::Learner)
                .all(|r| room(r.membership(), false))
    }

    pub fn max_view(&self) -> u64 {
        self.nodes
            .iter()
            .flatten_replicas()
            .map(|r| r.view())
            .max()
            .unwrap_or(0)
    }

    pub fn describe(&self) -> String {
        let replicas: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| match &n.replica {
                Some(r) => format!(
                    "r{i}:{:?}{} e{} v{} lv{} op{}(base {}) commit{}/{}",
                    r.status(),
                    match r.role() {
                        Role::Member => String::new(),
                        role => format!("({role:?})"),
                    },
                    r.membership().epoch(),
                    r.view(),
                    r.log_view(),
                    r.op(),
                    r.log().base(),
                    r.commit(),
                    r.commit_max()
                ),
                None if n.gone => format!("r{i}:stopped"),
                None if !n.started => format!("r{i}:spare"),
                None => format!("r{i}:down"),
            })
            .collect();
        format!(
            "{} packets in flight, clients {:?}; {}",
            self.network.len(),
            self.clients
                .iter()
                .map(|c| (c.started, c.outstanding.as_ref().map(|o| o.0)))
                .collect::<Vec<_>>(),
            replicas.join(", ")
        )
    }
}

trait FlattenReplicas<'a> {
    fn flatten_replicas(self) -> impl Iterator<Item = &'a Replica>;
}
impl<'a, I: Iterator<Item = &'a Node>> FlattenReplicas<'a> for I {
    fn flatten_replicas(self) -> impl Iterator<Item = &'a Replica> {
        self.filter_map(|n| n.replica.as_ref())
    }
}

impl Model for Cluster {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial()]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        if state.violation.is_some() {
            return;
        }
        for (c, client) in state.clients.iter().enumerate() {
            match client.outstanding {
                None if client.started < self.bounds.requests => actions.push(Action::Start(c)),
                Some(_) if client.resubmits_left > 0 => actions.push(Action::Resubmit(c)),
                _ => {}
            }
        }
        for i in 0..state.network.len() {
            if i > 0 && state.network[i] == state.network[i - 1] {
                continue; // the same packet twice: one choice
            }
            actions.push(Action::Deliver(i));
            if state.duplicates_left > 0 {
                actions.push(Action::Duplicate(i));
            }
            if state.drops_left > 0 {
                actions.push(Action::Drop(i));
            }
        }
        let (newest, _) = state.history.newest();
        let asking = state.changes_asked < self.bounds.changes.len()
            && state.history.answers.len() == state.changes_asked;
        for (r, node) in state.nodes.iter().enumerate() {
            let r = r as Slot;
            match &node.replica {
                Some(replica) => {
                    if state.timeouts_left > 0 {
                        actions.push(Action::Timeout(r));
                        actions.push(Action::Silence(r));
                    }
                    if state.crashes_left > 0 && (node.learner.is_some() || state.may_lose_a_member()) {
                        actions.push(Action::Crash(r));
                    }
                    let member = replica.role() == Role::Member;
                    if state.reads_left > 0 && member {
                        actions.push(Action::Read(r));
                    }
                    if asking
                        && self.bounds.origin.is_none_or(|o| o == r)
                        && member
                        && replica.status() == Status::Normal
                        && replica.membership().epoch() == newest
                    {
                        actions.push(Action::Reconfigure(r));
                    }
                }
                None if node.started && !node.gone => actions.push(Action::Restart(r)),
                None => {}
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        match action {
            Action::Start(c) => self.start(&mut state, c),
            Action::Resubmit(c) => {
                state.clients[c].resubmits_left -= 1;
                self.submit(&mut state, c);
            }
            Action::Deliver(i) | Action::Duplicate(i) | Action::Drop(i) => {
                let packet = if action == Action::Duplicate(i) {
                    state.duplicates_left -= 1;
                    state.network[i].clone()
                } else {
                    state.network.remove(i)
                };
                if action == Action::Drop(i) {
                    state.drops_left -= 1;
                } else {
                    self.input(&mut state, packet.to, Input::Receive(&packet.bytes));
                }
            }
            Action::Timeout(r) => {
                state.timeouts_left -= 1;
                if !self.timeout(&mut state, r) {
                    return None;
                }
            }
            Action::Silence(r) => {
                state.timeouts_left -= 1;
                if !self.silence(&mut state, r) {
                    return None;
                }
            }
            Action::Crash(r) => {
                state.crashes_left -= 1;
                // Its host's caller never hears how a change asked through
                // it ended (the change may still be made).
                for (k, &through) in state.history.asked.iter().enumerate() {
                    let key = (through as MemberId, k as u64 + 1);
                    if through == r && !state.history.answers.contains_key(&key) {
                        state.history.answers.insert(key, "Lost".into());
                    }
                }
                let node = &mut state.nodes[r as usize];
                node.replica = None;
                node.app = App::default();
                state.history.reads.retain(|(replica, _), _| *replica != r);
            }
            Action::Restart(r) => self.restart(&mut state, r),
            Action::Read(r) => {
                state.reads_left -= 1;
                state.history.next_read += 1;
                let id = state.history.next_read;
                state.history.reads.insert((r, id), state.history.replied);
                self.input(&mut state, r, Input::Read { id });
            }
            Action::Reconfigure(r) => self.reconfigure(&mut state, r),
        }
        Some(state)
    }

    fn within_boundary(&self, state: &State) -> bool {
        state.max_view() <= self.bounds.max_view
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("safe", |_, state: &State| state.violation.is_none()),
            Property::always("heals", |model: &Cluster, state: &State| {
                if state.violation.is_some() || !sampled(state, model.bounds.heal_one_in) {
                    return true;
                }
                model.heals(state).is_ok()
            }),
            // (Shows that the bounds reach what they are meant to.)
            Property::sometimes("a request executes", |model: &Cluster, state: &State| {
                model.bounds.requests < 2 || state.history.once.keys().any(|&(_, request)| request > 0)
            }),
            Property::sometimes("a view change", |model: &Cluster, state: &State| {
                model.bounds.timeouts < 2 || !model.bounds.changes.is_empty() || state.max_view() > 0
            }),
            Property::sometimes("every change takes effect", |model: &Cluster, state: &State| {
                state.history.lists.len() > model.bounds.changes.len()
            }),
        ]
    }
}

/// What a finished check found: one line per property, with the path to
/// the state that breaks an `always` property (or, for `sometimes`, the
/// example found). Empty `Err` never: `Err` lists the broken properties.
pub fn verdict<C: stateright::Checker<Cluster>>(checker: &C) -> Result<String, String> {
    let mut lines = vec![format!(
        "{} states ({} unique), depth {}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth()
    )];
    let mut broken = false;
    let discoveries = checker.discoveries();
    for property in checker.model().properties() {
        let found = discoveries.get(property.name);
        let fails = match property.expectation {
            stateright::Expectation::Sometimes => found.is_none(),
            _ => found.is_some(),
        };
        broken |= fails;
        let status = if fails { "BROKEN" } else { "ok" };
        lines.push(format!("{status}: {:?} {}", property.expectation, property.name));
        if let (true, Some(path)) = (fails, found) {
            let state = path.last_state();
            lines.push(format!("  after {:?}", path.clone().into_actions()));
            lines.push(format!("  violation: {:?}", state.violation));
            if property.name == "heals" {
                lines.push(format!("  {:?}", checker.model().heals(state)));
            }
            lines.push(format!("  state: {}", state.describe()));
        }
    }
    let report = lines.join("\n");
    if broken {
        Err(report)
    } else {
        Ok(report)
    }
}

/// Whether the liveness check heals from this state: one in `one_in`, by fingerprint.
fn sampled(state: &State, one_in: u64) -> bool {
    if one_in <= 1 {
        return true;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    state.hash(&mut h);
    h.finish().is_multiple_of(one_in)
}
