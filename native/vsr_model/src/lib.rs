//! An exhaustive, bounded model check of the real `vsr::Replica` with
//! stateright: every interleaving of message delivery, loss, duplication,
//! timeouts, one crash, client submissions and reads, up to the bounds in
//! [`Bounds`], with the protocol's safety properties checked in every
//! reachable state, and liveness checked from (a sample of) them by healing
//! the cluster and requiring every request to finish.
//!
//! The replica is sans-IO, so the model is the whole cluster as one value:
//! replicas, the multiset of packets in flight, the clients, and what the
//! replicas have executed and replied so far. See `docs/testing.md`.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use stateright::{Model, Property};
use vsr::{ClientId, Config, Input, Op, Outcome, Output, Replica, Slot, Status, Submission};
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
}

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
    /// `None` while crashed.
    pub replica: Option<Replica>,
    /// The host's application state.
    pub app: App,
    /// The host's clock, in ticks.
    pub clock: u64,
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
    /// The lowest view in which a replica executed each op: the op was
    /// committed in that view or an earlier one, so every later view has it.
    pub executed_in: BTreeMap<Op, u64>,
    /// The application state after each op, by any replica.
    pub apps: BTreeMap<Op, u128>,
    /// The op at which each (client, request) was executed.
    pub once: BTreeMap<(ClientId, u64), Op>,
    /// The highest op any reply named.
    pub replied: Op,
    /// Reads in flight: (replica, id) -> the highest op replied when issued.
    pub reads: BTreeMap<(Slot, u64), Op>,
    pub next_read: u64,
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
        State {
            nodes: (0..n)
                .map(|r| Node {
                    replica: Some(Replica::new(self.config.clone(), r)),
                    app: App::default(),
                    clock: 0,
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
            history: History::default(),
            violation: None,
        }
    }

    /// Feeds `input` to replica `r` and carries out its outputs.
    fn input(&self, state: &mut State, r: Slot, input: Input<'_>) {
        let Some(replica) = state.nodes[r as usize].replica.as_mut() else {
            return;
        };
        let outputs = replica.step(input);
        if replica.stats().checkpoint_divergence > 0 {
            state.violate(format!("replica {r} saw a checkpoint digest differ from its own"));
        }
        for output in outputs {
            self.output(state, r, output);
        }
        state.check_logs();
    }

    fn output(&self, state: &mut State, r: Slot, output: Output) {
        match output {
            Output::Send { to, bytes, .. } => {
                let packet = Packet { to, from: r, bytes };
                let at = state.network.partition_point(|p| *p < packet);
                state.network.insert(at, packet);
            }
            // Memory mode: the replica's log is its storage.
            Output::WriteLog { .. } | Output::WriteState(_) | Output::WriteCheckpoint(_) => {}
            // The model asks for no membership change (yet).
            Output::Reconfigured { .. } | Output::Epoch { .. } | Output::Removed { .. } => {
                state.violate(format!("replica {r} changed its membership unasked"))
            }
            Output::Execute { entry, outcomes } => {
                let app = state.nodes[r as usize].app;
                if app.op + 1 != entry.op {
                    return state.violate(format!(
                        "replica {r} executed op {} after op {}",
                        entry.op, app.op
                    ));
                }
                state.record(r, "executed", entry.op, entry.checksum, true);
                let view = state.nodes[r as usize]
                    .replica
                    .as_ref()
                    .map_or(0, |replica| replica.view());
                let first = state.history.executed_in.entry(entry.op).or_insert(view);
                *first = (*first).min(view);
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
            let node = &mut state.nodes[r as usize];
            node.clock += 1;
            let now_ns = node.clock * 1_000_000;
            let Some(replica) = node.replica.as_mut() else {
                return false;
            };
            let outputs = replica.step(Input::Tick {
                now_ns,
                mono_ns: now_ns,
            });
            if !outputs.is_empty() {
                for output in outputs {
                    self.output(state, r, output);
                }
                state.check_logs();
                return true;
            }
        }
        false
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
            if !probe
                .step(Input::Tick {
                    now_ns: (node.clock + 1) * 1_000_000,
                    mono_ns: (node.clock + 1) * 1_000_000,
                })
                .is_empty()
            {
                break;
            }
            *replica = probe;
            node.clock += 1;
        }
        node.clock > start
    }

    fn restart(&self, state: &mut State, r: Slot) {
        state.restarts += 1;
        let replica = Replica::recovering(self.config.clone(), r, state.restarts as u128)
            .expect("a valid configuration");
        let node = &mut state.nodes[r as usize];
        node.replica = Some(replica);
        node.app = App::default();
    }

    /// Heals the cluster from `state`: every replica up, no loss, every
    /// client's remaining requests started. Every request must then finish
    /// and every replica reach the same view and commit within a bound.
    pub fn heals(&self, state: &State) -> Result<(), String> {
        self.heal(state.clone())
            .map_err(|e| format!("delivering what was in flight: {e}"))?;
        let mut lost = state.clone();
        lost.network.clear();
        self.heal(lost)
            .map_err(|e| format!("losing what was in flight: {e}"))
    }

    fn heal(&self, mut state: State) -> Result<(), String> {
        for r in 0..self.bounds.replicas {
            if state.nodes[r as usize].replica.is_none() {
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
            for r in 0..self.bounds.replicas {
                let node = &mut state.nodes[r as usize];
                node.clock += 1;
                let now_ns = node.clock * 1_000_000;
                if let Some(replica) = node.replica.as_mut() {
                    let outputs = replica.step(Input::Tick {
                        now_ns,
                        mono_ns: now_ns,
                    });
                    for output in outputs {
                        self.output(&mut state, r, output);
                    }
                }
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

    /// No committed op lost or reordered: every replica in normal status
    /// in a view at or after the one an op was executed in holds that op's
    /// entry wherever its log covers it, and such a primary holds them all.
    /// (A replica still in an older view may hold anything.)
    fn check_logs(&mut self) {
        let mut broken = None;
        for node in &self.nodes {
            let Some(replica) = &node.replica else { continue };
            if replica.status() != Status::Normal {
                continue;
            }
            let view = replica.view();
            let log = replica.log();
            let last = self
                .history
                .executed_in
                .iter()
                .filter(|(_, &v)| v <= view)
                .map(|(&op, _)| op)
                .next_back();
            let Some(last) = last else { continue };
            if replica.is_primary() && log.op() < last {
                broken = Some(format!(
                    "replica {} leads view {} with log up to op {}, but op {last} was executed",
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
                if self.history.executed_in[&op] <= view && log.checksum_at(op) != Some(checksum) {
                    broken = Some(format!(
                        "replica {} (view {}, normal) holds another entry at executed op {op}",
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

    fn settled(&self, requests: u64) -> bool {
        let replicas: Vec<&Replica> = self.nodes.iter().flatten_replicas().collect();
        let commit = replicas.iter().map(|r| r.commit_max()).max().unwrap_or(0);
        self.clients
            .iter()
            .all(|c| c.outstanding.is_none() && c.started >= requests)
            && self.history.reads.is_empty()
            && replicas.iter().all(|r| {
                r.status() == Status::Normal && r.view() == replicas[0].view() && r.commit() == commit
            })
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
                    "r{i}:{:?} v{} lv{} op{}(base {}) commit{}/{}",
                    r.status(),
                    r.view(),
                    r.log_view(),
                    r.op(),
                    r.log().base(),
                    r.commit(),
                    r.commit_max()
                ),
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
        for (r, node) in state.nodes.iter().enumerate() {
            let r = r as Slot;
            match node.replica {
                Some(_) => {
                    if state.timeouts_left > 0 {
                        actions.push(Action::Timeout(r));
                        actions.push(Action::Silence(r));
                    }
                    if state.crashes_left > 0 {
                        actions.push(Action::Crash(r));
                    }
                    if state.reads_left > 0 {
                        actions.push(Action::Read(r));
                    }
                }
                None => actions.push(Action::Restart(r)),
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
                model.bounds.timeouts < 2 || state.max_view() > 0
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
