//! The simulated cluster: real replicas, a simulated network and disks,
//! simulated clients, one thread, one seed.

use std::collections::{HashMap, HashSet};

use vsr::log::Log;
use vsr::{
    root_checksum, ChangeId, ChangeResult, ClientId, DurableState, Epoch, Input, MemberId, Message, Op,
    Outcome, Output, Replica, Role, Slot, Status, Submission,
};
use vsr_host::{Host, StorageNotice, StoreOptions, Unbooted};
use vsr_storage::{CrashCut, Identity, MemDisk, Opened, Store, Zone};

use crate::checker::{self, Checker, ReadBounds, Violation};
use crate::client::Client;
use crate::network::Network;
use crate::options::Options;
use crate::rng::Rng;

/// More packets in flight than this means replicas answer each other in a
/// loop that duplication multiplies: a bug even when nothing else breaks.
const MESSAGE_STORM: usize = 20_000;

pub use crate::checker::App;

/// A membership change the random mode asked for, until its fate is known.
#[derive(Clone, Debug)]
struct InFlight {
    origin: Slot,
    id: u64,
    /// The epoch it would make.
    epoch: Epoch,
    /// The nodes started as its learners.
    learners: Vec<Slot>,
    since: u64,
}

/// A simulated node: the member its host runs. The genesis members' nodes
/// are numbered as their slots; a node a change adds comes after them,
/// and may take a slot another node held (the network routes by member
/// id, as hosts do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    pub slot: Slot,
    pub id: MemberId,
    pub joined: Epoch,
    /// Started as a learner and not yet seen entering its epoch: it
    /// restarts as a new learner, with a new life, in a new store.
    pub learner: bool,
}

/// A host held up inside a slow sync (its thread blocked in `fsync`): the
/// sync succeeded, and returns at `until`. Meanwhile the replica gets no
/// ticks, the messages that arrive queue up, and nothing leaves. (A sync
/// that fails is the host's own pause: `Host::paused`.)
pub(crate) struct Stall {
    until: u64,
    /// What the sync released, leaving once it returns.
    held: Vec<Output>,
    inbox: Vec<(Slot, Vec<u8>)>,
}

/// What the simulator keeps beside a disk-mode replica's store (its
/// checkpoints are the store's own).
#[derive(Clone, Default)]
struct Beside {
    /// The log as the store will hold it once staged writes are synced.
    mirror: Option<Log>,
}

/// A run that broke an invariant, or did not finish.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub tick: u64,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at tick {}: {}",
            self.seed, self.tick, self.reason
        )
    }
}

/// Figures from a finished run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub ticks: u64,
    pub committed: u64,
    pub replies: usize,
    pub views: u64,
    pub crashes: u64,
    pub messages_delivered: u64,
    pub messages_dropped: u64,
    pub rejected_bytes: u64,
    pub checkpoints_installed: u64,
    /// WAL compactions completed by the stores (disk mode).
    pub compactions: u64,
    /// Times a host was held up by a failed or slow sync (disk mode).
    pub disk_pauses: u64,
    /// Boots that a disk fault failed (disk mode).
    pub failed_boots: u64,
}

pub struct Simulator {
    /// Review instrumentation: the most bytes one flush of one host sent
    /// to one peer (what the NIF host sends as one distribution message,
    /// `convert::sends`, up to `DELIVER_LIST_MAX` messages), and the most
    /// messages in such a bundle.
    pub flush_peer_bytes_max: u64,
    pub flush_peer_messages_max: u64,
    pub options: Options,
    /// Each node's member (indexes every per-replica vector below).
    pub nodes: Vec<Node>,
    pub rng: Rng,
    pub tick: u64,
    /// Each replica's host, the one the NIF runs, while it is up.
    pub hosts: Vec<Option<Host<MemDisk>>>,
    /// Disk mode: each crashed replica's disk, while it is down.
    down: Vec<Option<MemDisk>>,
    /// The durable state each replica last wrote (disk mode), to check
    /// that views never go back.
    durable: Vec<DurableState>,
    /// Replicas whose disk will fail mid-write (a crash armed inside the write path).
    armed: Vec<bool>,
    /// The highest view each replica has sent a message in while not
    /// recovering: a restart from disk must not come back below it.
    announced: Vec<checker::Stamp>,
    /// A violation found where no error can be returned (a restart inside
    /// fault injection): the next step reports it.
    deferred: Option<Violation>,
    /// Tick at which each crashed replica comes back (random mode).
    restart_at: Vec<Option<u64>>,
    pub network: Network,
    pub clients: Vec<Client>,
    client_index: HashMap<ClientId, usize>,
    pub checker: Checker,
    /// Whether clients start requests by themselves.
    pub load: bool,
    /// Replicas whose clock is stopped (scripted scenarios): they get no
    /// ticks, so none of their timers fire, but they still handle messages.
    pub frozen: Vec<bool>,
    /// Reads in flight: (replica, id) -> what each must see at least.
    pub reads: HashMap<(Slot, u64), ReadBounds>,
    /// Each replica's host numbers its reads from 1 again after a restart,
    /// as `Visor.Server` does: read ids are unique only among a host's
    /// reads in flight.
    next_read: Vec<u64>,
    /// Replica starts so far: each start's `Config::boot_nonce`.
    pub(crate) boots: u64,
    /// How far each replica's wall clock is ahead of true time, in ns
    /// (negative: behind). Random seeds and scripted scenarios jump it.
    pub clock_offset_ns: Vec<i64>,
    /// The furthest each replica's wall clock has been ahead of true time
    /// in this run, in ns (`check_timestamp`).
    clock_ahead_max_ns: Vec<u64>,
    /// The last reply a host got: (replica, client, request, op, outcome).
    pub last_reply: Option<(Slot, ClientId, u64, Op, Outcome)>,
    pub(crate) crashes: u64,
    /// Compactions of stores that have since crashed.
    compactions: u64,
    /// Print the cluster's state every this many ticks (0: never).
    pub trace_every: u64,
    /// Print crashes, boots, membership changes and epochs entered as
    /// they happen (`vopr --events`).
    pub events: bool,
    /// Each replica's host application state.
    pub apps: Vec<App>,
    /// Snapshot answers the hosts owe: (due tick, op, bytes).
    snapshots: Vec<Vec<(u64, Op, Vec<u8>)>>,
    beside: Vec<Beside>,
    /// How many of each host's pending outputs `follow_writes` has seen.
    followed: Vec<usize>,
    /// Checkpoints installed by state sync, all replicas, all incarnations.
    installed: u64,
    /// Every `Output::Diverged`: (replica, op, its digest, the quorum's).
    pub divergences: Vec<(Slot, Op, u128, u128)>,
    /// Every `Output::Reconfigured`: (replica, change id, result).
    pub reconfigured: Vec<(Slot, u64, ChangeResult)>,
    /// Every `Output::Epoch`: (replica, epoch, role).
    pub epochs: Vec<(Slot, Epoch, Role)>,
    /// Every `Output::Removed`: (replica, epoch).
    pub removed: Vec<(Slot, Epoch)>,
    /// Changes whose origin told its host "no": none may ever commit.
    refused_changes: HashSet<ChangeId>,
    /// Replicas that never come back (`Options::dead_minority`).
    pub dead: Vec<bool>,
    /// Learners that crashed: restarted, each is a new life, and if its
    /// change was proposed with the old one it recovers in full on
    /// entering its epoch (design break 1), as unavailable as a replica
    /// recovering, until it has entered (`recovering_or_will`).
    relearning: Vec<bool>,
    /// Hosts held up by a slow sync (`Options::disk_fault_probability`).
    pub(crate) stalls: Vec<Option<Stall>>,
    /// Replicas whose next sync is slow: by this many ticks.
    slow_sync: Vec<Option<u64>>,
    /// Tick at which a failing or full disk works again.
    disk_heals_at: Vec<Option<u64>>,
    disk_pauses: u64,
    failed_boots: u64,
    /// Replicas whose disk holds damage their store has not found yet (a
    /// misdirected write, or rot before a boot that failed) or that went
    /// down repairing: their next open repairs or recovers, so they count
    /// as recovering until then (`recovering_or_will`).
    damaged: Vec<bool>,
    /// Random mode (`Options::membership_changes`): the change under way.
    in_flight: Option<InFlight>,
    /// Changes asked for in random mode (their ids), and the member ids
    /// given to nodes they added.
    pub(crate) changes: u64,
    /// The list the next boot's host hands its replica instead of the
    /// newest (`restart_amnesiac_knowing`): a host whose peers told it
    /// only an older one.
    known_at_next_boot: Option<Option<vsr::Membership>>,
    /// The timestamp of the last op executed (`check_timestamp`).
    last_stamp: u64,
    /// Quiet groups (`Options::quiet`): the hosts' side, and the figures.
    pub quiet: crate::quiet::QuietHost,
}

impl Simulator {
    pub fn new(mut options: Options) -> Simulator {
        // A lying host is a faulty replica (while it is diverged, no
        // checkpoint it needs can be vouched without a quorum of correct
        // others): with a dead minority it would be one fault too many.
        if options.dead_minority {
            options.lying_host = None;
        }
        let mut rng = Rng::new(options.seed);
        let n = options.replica_count();
        let hosts = (0..n)
            .map(|i| {
                let r = i as Slot;
                let store = (!options.amnesia)
                    .then(|| store_options(&options, genesis_node(&options, r), MemDisk::default()));
                let host = Host::boot(boot_config(&options, r, i as u64), r, store, false, 0)
                    .expect("a new replica boots");
                Some(host)
            })
            .collect();
        let clients: Vec<Client> = (0..options.clients)
            .map(|_| {
                let home = rng.range(0, n as u64 - 1) as Slot;
                Client::new(&mut rng, home)
            })
            .collect();
        let client_index = clients.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
        Simulator {
            nodes: (0..n).map(|r| genesis_node(&options, r as Slot)).collect(),
            checker: Checker::new(root_checksum(options.config.cluster), n),
            network: Network::new(options.network.clone()),
            hosts,
            down: (0..n).map(|_| None).collect(),
            durable: vec![DurableState::default(); n],
            armed: vec![false; n],
            announced: vec![(0, 0); n],
            deferred: None,
            restart_at: vec![None; n],
            clients,
            client_index,
            load: options.request_probability > 0.0 || options.read_probability > 0.0,
            reads: HashMap::new(),
            frozen: vec![false; n],
            next_read: vec![0; n],
            boots: n as u64,
            clock_offset_ns: vec![0; n],
            clock_ahead_max_ns: vec![0; n],
            last_reply: None,
            rng,
            tick: 0,
            crashes: 0,
            compactions: 0,
            last_stamp: 0,
            trace_every: 0,
            events: false,
            apps: vec![App::default(); n],
            snapshots: vec![Vec::new(); n],
            beside: (0..n)
                .map(|_| Beside {
                    mirror: (!options.amnesia).then(|| Log::new(root_checksum(options.config.cluster))),
                })
                .collect(),
            followed: vec![0; n],
            installed: 0,
            divergences: Vec::new(),
            reconfigured: Vec::new(),
            epochs: Vec::new(),
            removed: Vec::new(),
            refused_changes: HashSet::new(),
            dead: vec![false; n],
            relearning: vec![false; n],
            stalls: (0..n).map(|_| None).collect(),
            slow_sync: vec![None; n],
            disk_heals_at: vec![None; n],
            disk_pauses: 0,
            flush_peer_bytes_max: 0,
            flush_peer_messages_max: 0,
            failed_boots: 0,
            damaged: vec![false; n],
            in_flight: None,
            changes: 0,
            known_at_next_boot: None,
            quiet: crate::quiet::QuietHost::new(n),
            options,
        }
    }

    fn event(&self, what: impl FnOnce() -> String) {
        if self.events {
            eprintln!("tick {}: {}", self.tick, what());
        }
    }

    pub(crate) fn fail_with(&self, reason: String) -> Failure {
        self.fail(reason)
    }

    fn fail(&self, reason: String) -> Failure {
        Failure {
            seed: self.options.seed,
            tick: self.tick,
            reason,
        }
    }

    pub fn n(&self) -> usize {
        self.hosts.len()
    }

    /// Replica `r`, if it is up.
    pub fn running(&self, r: usize) -> Option<&Replica> {
        self.hosts[r].as_ref().map(Host::replica)
    }

    /// The replicas that are up.
    pub fn replicas(&self) -> impl Iterator<Item = &Replica> {
        self.hosts.iter().flatten().map(Host::replica)
    }

    // ---- The whole run ---------------------------------------------------

    /// Faults for `fault_ticks`, then heal everything and require liveness.
    pub fn run(&mut self) -> Result<Report, Failure> {
        while self.tick < self.options.fault_ticks {
            self.bursty_load();
            self.inject_faults();
            if self.options.membership_changes {
                self.random_change()?;
            }
            self.step()?;
        }
        if self.options.dead_minority {
            self.kill_minority();
        }
        self.heal();
        self.load = false;
        let deadline = self.tick + self.options.liveness_ticks;
        while !self.settled() {
            if self.tick >= deadline {
                return Err(self.fail(format!(
                    "not live: {} ticks after healing, {}",
                    self.options.liveness_ticks,
                    self.describe()
                )));
            }
            if self.options.membership_changes {
                self.follow_change();
            }
            self.step()?;
        }
        self.idle_ends_quiet()?;
        Ok(self.report())
    }

    pub fn report(&self) -> Report {
        Report {
            ticks: self.tick,
            committed: self.checker.committed(),
            replies: self.checker.replies.len(),
            views: self.replicas().map(|r| r.view()).max().unwrap_or(0),
            crashes: self.crashes,
            messages_delivered: self.network.delivered,
            messages_dropped: self.network.dropped,
            rejected_bytes: self.rejected(),
            checkpoints_installed: self.installed,
            compactions: self.compactions
                + self
                    .hosts
                    .iter()
                    .flatten()
                    .filter_map(|host| host.store())
                    .map(|store| store.stats().compactions)
                    .sum::<u64>(),
            disk_pauses: self.disk_pauses,
            failed_boots: self.failed_boots,
        }
    }

    /// Every client has its reply, and every member of the newest epoch
    /// runs the same view and has executed everything committed, and every
    /// replica left out of it has stopped (dead replicas, and the clients
    /// that submit through them or through a removed one, excepted).
    pub fn settled(&self) -> bool {
        let committed = self.checker.committed();
        let gone = |r: Slot| {
            self.dead[r as usize]
                || self.orphaned(r)
                || self
                    .running(r as usize)
                    .is_some_and(|r| r.role() == Role::Removed)
        };
        let clients_done = self
            .clients
            .iter()
            .all(|c| c.outstanding.is_none() || gone(c.home))
            && self.reads.keys().all(|&(replica, _)| self.orphaned(replica));
        let replicas: Vec<&Replica> = self.replicas().collect();
        let live = self.dead.iter().filter(|&&dead| !dead).count();
        let newest = replicas.iter().map(|r| r.membership().epoch()).max().unwrap_or(0);
        let members: Vec<&Replica> = (0..self.n())
            .filter(|&i| !self.orphaned(i as Slot))
            .filter_map(|i| self.running(i))
            .filter(|r| r.role() == Role::Member)
            .collect();
        clients_done
            && replicas.len() == live
            && (0..self.n())
                .filter_map(|i| self.running(i).map(|r| (i, r)))
                .all(|(i, r)| {
                    r.role() == Role::Removed
                        || self.orphaned(i as Slot)
                        || r.membership().epoch() == newest && r.role() == Role::Member
                })
            && members.iter().all(|r| {
                r.status() == Status::Normal && r.view() == members[0].view() && r.commit() == committed
            })
    }

    /// Whether replica `r` runs with a list none of whose other members
    /// any node still runs (each stopped for good): a member removed while
    /// it was down, back after every node it knows has left. Nobody it can
    /// reach knows it was removed, and nobody of a newer list speaks to a
    /// replica outside that list, so it waits in its old epoch for good
    /// (a documented limit: docs/protocol.md, "Not yet"); liveness asks
    /// nothing of it or of its clients (`vopr --membership` seed 5521).
    fn orphaned(&self, r: Slot) -> bool {
        let Some(replica) = self.running(r as usize) else {
            return false;
        };
        let me = replica.member_id();
        // One the newest list names is not: it must reach that epoch (its
        // members speak to it), whatever its own list (review 15).
        let named = self
            .newest_membership()
            .is_some_and(|m| m.members().iter().any(|m| m.id == me));
        let mut others = replica
            .membership()
            .members()
            .iter()
            .filter(|m| m.id != me)
            .peekable();
        // A list of one (itself) is not orphaned: it runs alone.
        !named
            && others.peek().is_some()
            && others.all(|m| {
                self.nodes
                    .iter()
                    .position(|n| n.id == m.id)
                    .is_none_or(|node| self.dead[node])
            })
    }

    pub fn describe(&self) -> String {
        let replicas: Vec<String> = (0..self.n())
            .map(|i| match self.running(i) {
                Some(r) => format!(
                    "r{i}:{}{:?} v{} lv{} op{}(base {}) commit{}/{} ckpt{}{}",
                    match (r.membership().epoch(), r.role()) {
                        (0, Role::Member) => String::new(),
                        (epoch, role) => format!("e{epoch}/{role:?}/s{} ", r.index()),
                    },
                    r.status(),
                    r.view(),
                    r.log_view(),
                    r.op(),
                    r.log().base(),
                    r.commit(),
                    r.commit_max(),
                    r.checkpoint().map_or(0, |c| c.op),
                    r.sync_progress()
                        .map_or(String::new(), |(op, got, total)| format!(
                            " sync{op}:{got}/{total}"
                        ))
                ),
                None if self.dead[i] => format!("r{i}:gone"),
                None => format!("r{i}:down"),
            })
            .collect();
        let outstanding = self.clients.iter().filter(|c| c.outstanding.is_some()).count() + self.reads.len();
        format!(
            "committed {}, {outstanding} clients waiting, {} packets in flight; {}",
            self.checker.committed(),
            self.network.in_flight(),
            replicas.join(", ")
        )
    }

    // ---- Faults ----------------------------------------------------------

    fn inject_faults(&mut self) {
        let n = self.n();
        if self.rng.chance(self.options.partition_probability) {
            self.random_partition();
        }
        for r in 0..n {
            if self.rng.chance(self.options.clock_jump_probability) {
                self.jump_clock(r);
            }
            if self.disk_heals_at[r].is_some_and(|at| at <= self.tick) {
                self.heal_disk(r);
            }
            if self.rng.chance(self.options.disk_fault_probability) {
                self.disk_fault(r);
            }
            match self.restart_at[r] {
                Some(at) if at <= self.tick => {
                    self.restart_at[r] = None;
                    if self.options.amnesia {
                        self.restart_amnesiac(r as Slot);
                    } else {
                        self.restart_through_faults(r as Slot);
                    }
                }
                None if self.options.amnesia && self.unavailable() >= self.fault_budget() => {}
                None if self.armed[r] || self.hosts[r].is_none() => {}
                None if self.rng.chance(self.options.crash_probability) => {
                    let in_write_path = self.rng.chance(self.options.torn_crash_probability);
                    if in_write_path && self.store_mut(r).is_some() {
                        // Crash at one of the next few disk operations
                        // (the write path is: WAL write, WAL sync, two
                        // superblock copies, superblock sync; a
                        // compaction adds a truncate, a write, a sync
                        // and another superblock update).
                        let ops = if self.rng.chance(0.5) { 5 } else { 12 };
                        let after = self.rng.range(0, ops) as usize;
                        if let Some(store) = self.store_mut(r) {
                            store.disk_mut().crash_after = Some(after);
                        }
                        self.armed[r] = true;
                    } else {
                        self.crash_until_later(r as Slot);
                    }
                }
                _ => {}
            }
        }
    }

    /// Jumps replica `r`'s wall clock (`Options::clock_jump_probability`).
    fn jump_clock(&mut self, r: usize) {
        const SECOND_NS: u64 = 1_000_000_000;
        let by = self.rng.range(SECOND_NS, 3_600 * SECOND_NS) as i64;
        self.clock_offset_ns[r] = match self.rng.range(0, 2) {
            0 => by,
            1 => -by,
            _ => 0,
        };
        self.event(|| {
            format!(
                "r{r}'s wall clock is now {} ms off",
                self.clock_offset_ns[r] / 1_000_000
            )
        });
    }

    /// A fault of running replica `r`'s disk, if the budget allows: no
    /// more than `n - quorum` replicas with a faulty disk or recovering
    /// (or down in memory mode), this one included.
    fn disk_fault(&mut self, r: usize) {
        let n = self.n();
        let faulty = (0..n).filter(|&o| self.disk_faulty(o)).count();
        if self.store_mut(r).is_none()
            || self.disk_faulty(r)
            || self.armed[r]
            || faulty + self.recovering_or_will() >= self.fault_budget()
        {
            return;
        }
        let heals_at = self.tick + self.rng.range(1, self.options.downtime_max.max(1));
        let kind = self.rng.range(0, 3);
        if kind == 2 {
            self.slow_sync[r] = Some(self.rng.range(1, 300));
            return;
        }
        if kind == 3 {
            // Up to two blocks before or after where it belongs.
            let by = self.rng.range(1, 8_192) as i64 * if self.rng.chance(0.5) { 1 } else { -1 };
            if let Some(store) = self.store_mut(r) {
                store.disk_mut().misdirect = Some(by);
            }
            self.damaged[r] = true;
            return;
        }
        let Some(store) = self.store_mut(r) else {
            return;
        };
        match kind {
            0 => store.disk_mut().failing = true,
            _ => store.disk_mut().full = true,
        }
        self.disk_heals_at[r] = Some(heals_at);
    }

    /// Whether replica `r`'s disk is faulty now, or has held it up.
    pub(crate) fn disk_faulty(&self, r: usize) -> bool {
        self.stalls[r].is_some()
            || self.hosts[r].as_ref().is_some_and(Host::paused)
            || self.slow_sync[r].is_some()
            || self.disk_heals_at[r].is_some()
    }

    /// The store of replica `r`, if it is up in disk mode.
    fn store_mut(&mut self, r: usize) -> Option<&mut Store<MemDisk>> {
        self.hosts[r].as_mut().and_then(Host::store_mut)
    }

    /// Replica `r`'s disk works again (a paused host resumes at its next
    /// flush, which retries the sync).
    fn heal_disk(&mut self, r: usize) {
        self.disk_heals_at[r] = None;
        self.slow_sync[r] = None;
        if let Some(store) = self.store_mut(r) {
            store.disk_mut().failing = false;
            store.disk_mut().full = false;
            store.disk_mut().misdirect = None;
        }
    }

    fn random_partition(&mut self) {
        let n = self.n();
        self.network.heal();
        let primary = (0..n)
            .find(|&r| self.running(r).is_some_and(Replica::is_primary))
            .map(|r| r as Slot);
        match self.rng.range(0, 4) {
            0 => {} // healed
            1 => {
                // Symmetric split into two groups.
                let group: Vec<Slot> = (0..n as Slot).filter(|_| self.rng.chance(0.5)).collect();
                self.network.partition(n, &group, true, true);
            }
            2 => {
                // Asymmetric: one group can send to the rest but not hear back (or the reverse).
                let group: Vec<Slot> = (0..n as Slot).filter(|_| self.rng.chance(0.5)).collect();
                let outgoing = self.rng.chance(0.5);
                self.network.partition(n, &group, outgoing, !outgoing);
            }
            3 => {
                // Isolate the primary, in one direction or both.
                if let Some(p) = primary {
                    let (out, inc) = match self.rng.range(0, 2) {
                        0 => (true, true),
                        1 => (true, false),
                        _ => (false, true),
                    };
                    self.network.partition(n, &[p], out, inc);
                }
            }
            _ => {
                // A few random one-way links down.
                for _ in 0..self.rng.range(1, n as u64 * 2) {
                    let a = self.rng.range(0, n as u64 - 1) as Slot;
                    let b = self.rng.range(0, n as u64 - 1) as Slot;
                    self.network.set_link(a, b, false);
                }
            }
        }
    }

    /// Crashes replica `r` and schedules its restart.
    fn crash_until_later(&mut self, r: Slot) {
        self.crash(r);
        self.restart_at[r as usize] = Some(self.tick + self.rng.range(1, self.options.downtime_max.max(1)));
    }

    /// Chooses between 1 and `n - quorum` replicas that never come back,
    /// and crashes them. Replicas already down or recovering are chosen
    /// first, so that no more than `n - quorum` are unavailable for good
    /// (with more, no quorum is left and nothing can be live).
    fn kill_minority(&mut self) {
        let n = self.n();
        let f = n - vsr::quorum(n);
        if f == 0 {
            return;
        }
        let mut unavailable: Vec<usize> = (0..n).filter(|&r| self.will_recover(r)).collect();
        let mut others: Vec<usize> = (0..n).filter(|r| !unavailable.contains(r)).collect();
        let count = (self.rng.range(1, f as u64) as usize)
            .max(unavailable.len())
            .min(f);
        while unavailable.len() < count && !others.is_empty() {
            let i = self.rng.range(0, others.len() as u64 - 1) as usize;
            unavailable.push(others.swap_remove(i));
        }
        unavailable.truncate(count);
        // No bit rot in the restarts to come: it could make one more replica
        // recover, beyond what the dead leave room for.
        self.options.corruption_probability = 0.0;
        for r in unavailable {
            self.dead[r] = true;
            self.crash(r as Slot);
        }
    }

    /// Whether replica `r` is recovering its log, or will be once healed:
    /// down in memory mode, or its disk says it is recovering.
    fn will_recover(&mut self, r: usize) -> bool {
        let recovering = match self.running(r) {
            Some(replica) => replica.is_recovering() || replica.repairing().is_some(),
            None => self.options.amnesia,
        };
        recovering || self.damaged[r] || self.stored_recovering(r).unwrap_or(true)
    }

    /// Whether replica `r`'s store says it is recovering: `Some(false)` in
    /// memory mode, `None` if a crashed replica's superblock is unreadable.
    fn stored_recovering(&mut self, r: usize) -> Option<bool> {
        if let Some(host) = &self.hosts[r] {
            return Some(host.store().is_some_and(|store| store.superblock().recovering));
        }
        match &mut self.down[r] {
            Some(disk) => Store::probe(disk).ok().flatten().map(|s| s.recovering),
            None => Some(false),
        }
    }

    /// Heals the network, disarms crashes waiting in write paths, and
    /// restarts every crashed replica (but the dead).
    pub fn heal(&mut self) {
        self.network.heal();
        self.clock_offset_ns.iter_mut().for_each(|offset| *offset = 0);
        self.network.options = crate::network::NetworkOptions::perfect();
        for r in 0..self.n() {
            self.heal_disk(r);
            if let Some(store) = self.store_mut(r) {
                store.disk_mut().crash_after = None;
            }
            self.armed[r] = false;
            self.restart_at[r] = None;
            if self.hosts[r].is_none() && !self.dead[r] {
                if self.options.amnesia {
                    self.restart_amnesiac(r as Slot);
                } else {
                    self.restart(r as Slot);
                }
            }
        }
    }

    /// The replica stops; its volatile state is gone. In disk mode, writes
    /// it had not synced are kept, torn or lost at random.
    pub fn crash(&mut self, r: Slot) {
        let Some(host) = self.hosts[r as usize].take() else {
            return;
        };
        self.event(|| format!("r{r} crashes"));
        self.crashes += 1;
        self.relearning[r as usize] |= self.nodes[r as usize].learner;
        self.reads.retain(|(replica, _), _| *replica != r); // a read's origin forgets it
        self.next_read[r as usize] = 0; // and its host counts its reads from 1 again
        self.armed[r as usize] = false;
        self.snapshots[r as usize].clear(); // the host's answers die with it
        self.apps[r as usize] = App::default();
        self.beside[r as usize].mirror = None;
        self.stalls[r as usize] = None; // what the host held dies with it
        self.slow_sync[r as usize] = None;
        self.disk_heals_at[r as usize] = None;
        self.compactions += host.store().map_or(0, |store| store.stats().compactions);
        let repairing = host.replica().repairing().is_some();
        if let Some(mut disk) = host.into_disk() {
            // No disk records a repair: until its write lands, the hole it
            // fills is still there, and the next start repairs again.
            self.damaged[r as usize] |= repairing;
            // The faulty disk is replaced, or works again after the reboot.
            disk.failing = false;
            disk.full = false;
            disk.misdirect = None;
            let unsynced = disk.unsynced();
            let cut = CrashCut {
                kept: self.rng.range(0, unsynced as u64) as usize,
                torn: self.rng.chance(0.5).then(|| self.rng.range(0, 5_000) as usize),
            };
            disk.crash(cut);
            self.down[r as usize] = Some(disk);
        }
    }

    /// The configuration of a replica's next start: a boot nonce of its own.
    fn next_boot_config(&mut self, r: Slot) -> vsr::Config {
        self.boots += 1;
        boot_config(&self.options, r, self.boots)
    }

    /// How many replicas may be unavailable at once (down in memory mode,
    /// recovering, repairing, or with a faulty disk): `n - quorum`. With
    /// membership changes, at most one, and none while a list of fewer
    /// than three is running (the smallest list a running replica holds
    /// counts: a change's old and new lists must both keep a quorum).
    fn fault_budget(&self) -> usize {
        let n = self.n();
        if !self.options.membership_changes {
            return n - vsr::quorum(n);
        }
        let smallest = self
            .replicas()
            .filter(|r| r.role() != Role::Learner)
            .map(|r| r.membership().n())
            .min()
            .unwrap_or(n);
        (smallest - vsr::quorum(smallest)).min(1)
    }

    /// Replicas down, still recovering their state, or repairing their log.
    pub fn unavailable(&self) -> usize {
        (0..self.n())
            .filter(|&r| !self.options.membership_changes || !self.dead[r])
            .filter(|&r| {
                self.relearning[r]
                    || self
                        .running(r)
                        .is_none_or(|r| r.is_recovering() || r.repairing().is_some())
            })
            .count()
    }

    /// Replicas that are recovering their log, or would if they crashed
    /// now (their disk still says they are recovering, or holds damage:
    /// `damaged`).
    fn recovering_or_will(&mut self) -> usize {
        let counted: Vec<usize> = (0..self.n())
            .filter(|&r| !self.options.membership_changes || !self.dead[r])
            .collect();
        counted
            .into_iter()
            .filter(|&r| {
                // A replica repairing a rotted entry is as unavailable as
                // one recovering, and may become one: it counts against the
                // same budget of n - quorum faulty replicas.
                let recovering = self
                    .running(r)
                    .is_some_and(|r| r.is_recovering() || r.repairing().is_some());
                // Damage not found yet makes it repair or recover at its
                // next start.
                recovering
                    || self.relearning[r]
                    || self.damaged[r]
                    || self.stored_recovering(r).unwrap_or(false)
            })
            .count()
    }

    /// The replica comes back with nothing (memory mode, or a wiped disk in
    /// disk mode) and recovers from the others.
    pub fn restart_amnesiac(&mut self, r: Slot) {
        if self.hosts[r as usize].is_some() {
            return;
        }
        if self.spare(r) {
            return;
        }
        self.down[r as usize] = None;
        let disk = (!self.options.amnesia).then(MemDisk::default);
        self.boot(r, disk, true);
    }

    /// [`Simulator::restart_amnesiac`], with a host that knows only
    /// `known` (`None`: the genesis), however newer the running replicas'
    /// lists are: the peers it heard from first were behind.
    pub fn restart_amnesiac_knowing(&mut self, r: Slot, known: Option<vsr::Membership>) {
        self.known_at_next_boot = Some(known);
        self.restart_amnesiac(r);
        self.known_at_next_boot = None;
    }

    /// Whether node `r`'s host, about to restart it, finds it in no list
    /// (the newest a running replica holds): it runs no replica then (a
    /// spare), and never comes back as one. A learner is a spare once
    /// that list is of its epoch or later: its change failed, or a later
    /// one removed it (`vopr --membership` seed 1136: a learner restarted
    /// after its change was done and the next had removed it waited, a
    /// new life nobody would teach, for ever).
    fn spare(&mut self, r: Slot) -> bool {
        let node = self.nodes[r as usize];
        let Some(newest) = self.newest_membership() else {
            return false;
        };
        let listed = newest.member(node.slot).is_some_and(|m| m.id == node.id);
        let spare = !listed && (!node.learner || newest.epoch() >= node.joined);
        if spare {
            self.dead[r as usize] = true;
            self.restart_at[r as usize] = None;
        }
        spare
    }

    /// The replica comes back from its disk, after bit rot if the seed
    /// says so: it re-executes its committed prefix, repairs a damaged
    /// entry, or, if the store says its log cannot be trusted, recovers.
    pub fn restart(&mut self, r: Slot) {
        if self.hosts[r as usize].is_some() {
            return;
        }
        // (A member left out restarts from its disk as it left, leaving.)
        if self.nodes[r as usize].learner && self.spare(r) {
            return;
        }
        let Some(mut disk) = self.down[r as usize].take() else {
            panic!("replica {r} restarts from a disk it does not have")
        };
        self.rot(&mut disk);
        self.boot(r, Some(disk), false);
    }

    /// Restarts replica `r` from its disk (`restart`), or, by chance
    /// (`Options::boot_fault_probability`) and within the budget of faulty
    /// disks, after a disk fault strikes as it boots (`restart_with_fault`):
    /// reads of one of its files fail, its syncs fail, or it is full. The
    /// replica counts as one with a faulty disk until the fault heals; one
    /// whose boot failed stays down until then.
    fn restart_through_faults(&mut self, r: Slot) {
        const FILES: [Zone; 5] = [
            Zone::Superblock,
            Zone::WalA,
            Zone::WalB,
            Zone::CheckpointA,
            Zone::CheckpointB,
        ];
        let i = r as usize;
        let n = self.n();
        let faulty = (0..n).filter(|&o| self.disk_faulty(o)).count();
        let room = faulty + self.recovering_or_will() < self.fault_budget();
        if !room || !self.rng.chance(self.options.boot_fault_probability) {
            return self.restart(r);
        }
        let kind = self.rng.range(0, 2);
        let file = FILES[self.rng.range(0, FILES.len() as u64 - 1) as usize];
        let heals_at = self.tick + self.rng.range(1, self.options.downtime_max.max(1));
        self.disk_heals_at[i] = Some(heals_at);
        let booted = self.restart_with_fault(r, |disk| match kind {
            0 => disk.unreadable = Some(file),
            1 => disk.failing = true,
            _ => disk.full = true,
        });
        if !booted {
            self.restart_at[i] = Some(heals_at);
        }
    }

    /// Restarts crashed replica `r` from its disk, after bit rot if the
    /// seed says so, with `fault` striking the disk as it boots. If the
    /// fault fails the boot, the replica stays down with its disk as the
    /// boot left it (the fault gone: a later restart may succeed), and this
    /// returns `false`. If not, a read error is gone once it has booted; a
    /// failing or full disk stays so until `heal_disk`.
    pub fn restart_with_fault(&mut self, r: Slot, fault: impl FnOnce(&mut MemDisk)) -> bool {
        let i = r as usize;
        let Some(mut disk) = self.down[i].take() else {
            panic!("replica {r} restarts from a disk it does not have")
        };
        self.rot(&mut disk);
        fault(&mut disk);
        match self.try_boot(r, Some(disk), false).map_err(|unbooted| *unbooted) {
            Ok(()) => {
                if let Some(store) = self.store_mut(i) {
                    store.disk_mut().unreadable = None;
                }
                true
            }
            Err(Unbooted {
                disk: Some(mut disk), ..
            }) => {
                self.failed_boots += 1;
                (disk.unreadable, disk.failing, disk.full) = (None, false, false);
                self.damaged[i] |= opens_damaged(&self.options, self.nodes[i], disk.clone());
                self.down[i] = Some(disk);
                false
            }
            Err(bug) => panic!("{}", self.fail(format!("replica {r}: {bug}"))),
        }
    }

    /// Boots replica `r`'s host (`try_boot`), which must succeed.
    fn boot(&mut self, r: Slot, disk: Option<MemDisk>, recover: bool) {
        if let Err(error) = self.try_boot(r, disk, recover) {
            panic!("{}", self.fail(format!("replica {r}: {error}")))
        }
    }

    /// Boots replica `r`'s host as the NIF does (from `disk` in disk mode;
    /// recovering if `recover`), and tells the checker what it kept; or
    /// hands back why it could not, with the disk.
    fn try_boot(
        &mut self,
        r: Slot,
        disk: Option<MemDisk>,
        recover: bool,
    ) -> Result<(), Box<Unbooted<MemDisk>>> {
        let config = self.next_boot_config(r);
        let nonce = self.rng.next_u128();
        let root = Log::new(root_checksum(self.options.config.cluster));
        let node = self.nodes[r as usize];
        // A learner starts over in a new store (its host wipes the old).
        let disk = if node.learner {
            disk.map(|_| MemDisk::default())
        } else {
            disk
        };
        let mirror = match &disk {
            Some(disk) if !recover && !node.learner => stored_log(&self.options, node, disk.clone()),
            Some(_) => Some(root),
            None => None,
        };
        let store = disk.map(|disk| store_options(&self.options, node, disk));
        let mut host = if node.learner {
            // A life of its own at every start.
            let life = (nonce as u64) | 1;
            Host::boot_learner(config, node.slot, node.id, node.joined, life, store)
        } else {
            // What a host learns from its peers: the newest list.
            let known = self
                .known_at_next_boot
                .unwrap_or_else(|| self.newest_membership())
                .filter(|m| m.epoch() > 0);
            Host::boot_in(config, node.slot, store, recover, nonce, known)
        }
        .map_err(Box::new)?;
        let i = r as usize;
        self.event(|| {
            let replica = host.replica();
            format!(
                "r{r} boots (node {:?}, recover {recover}): e{} {:?} {:?} slot {} list {:?}",
                node,
                replica.membership().epoch(),
                replica.role(),
                replica.status(),
                replica.index(),
                replica
                    .membership()
                    .members()
                    .iter()
                    .map(|m| (m.slot, m.id))
                    .collect::<Vec<_>>()
            )
        });
        self.quiet_booted(r);
        self.damaged[i] = false; // the open found the damage
        let state = host.replica().durable_state();
        self.durable[i] = state;
        self.beside[i].mirror = mirror;
        self.apps[i] = App::default();
        self.followed[i] = 0;
        let notices = host.take_notices();
        let kept = notices.iter().any(|notice| {
            matches!(
                notice,
                StorageNotice::Restarted { .. } | StorageNotice::Repairing(_)
            )
        });
        if kept {
            let stamp = (epoch_of(&state), state.view);
            if stamp < self.announced[i] {
                self.deferred.get_or_insert(format!(
                    "replica {r} restarted in (epoch, view) {stamp:?} below {:?} it had sent messages in",
                    self.announced[i]
                ));
            }
            self.checker.restarted(r, stamp);
        } else {
            if !recover && !node.learner && notices.contains(&StorageNotice::Created) {
                self.deferred
                    .get_or_insert(format!("replica {r}'s store was empty"));
            }
            self.announced[i] = (0, 0);
            self.checker.forgot(r);
        }
        self.hosts[i] = Some(host);
        // A restarted replica's outputs re-execute its committed prefix.
        if let Err(v) = self.flush(r) {
            self.deferred.get_or_insert(v);
        }
        Ok(())
    }
    /// Cuts the WAL of crashed replica `r` to `keep_percent` of its
    /// records' bytes (0: the file is gone), as an operator or a failing
    /// filesystem might: outside the crash fault model, so only scenarios
    /// do it.
    pub fn cut_wal(&mut self, r: Slot, keep_percent: usize) {
        let Some(disk) = &mut self.down[r as usize] else {
            panic!("replica {r} must be down to lose its WAL")
        };
        let end = disk.wal_records().last().map_or(0, |(offset, len)| offset + len);
        let zone = disk.wal_zone();
        disk.cut(zone, end * keep_percent / 100);
    }

    /// Zeros the records of crashed replica `r`'s WAL from the first to
    /// start at or after `keep_percent` of the bytes its superblock knows
    /// synced (`wal_durable`) to the last, the file's length kept: synced
    /// writes that landed outside the file (misdirected), leaving the zeros
    /// their place had. The random misdirections land within the file, so
    /// only scenarios do this. Returns the bytes of records known synced
    /// that are gone.
    pub fn misdirect_wal_tail(&mut self, r: Slot, keep_percent: usize) -> usize {
        let Some(disk) = &mut self.down[r as usize] else {
            panic!("replica {r} must be down to lose its WAL's tail")
        };
        let durable = vsr_storage::Store::probe(disk)
            .expect("a simulated disk reads")
            .map_or(0, |superblock| superblock.wal_durable as usize);
        let records = disk.wal_records();
        let end = records.last().map_or(0, |(offset, len)| offset + len);
        let from = (records.iter())
            .map(|&(offset, _)| offset)
            .find(|&offset| offset >= durable * keep_percent / 100)
            .unwrap_or(end);
        let zone = disk.wal_zone();
        disk.zero(zone, from, end);
        durable.saturating_sub(from)
    }

    /// Bit rot in the (last) record of entry `op` in the WAL of crashed
    /// replica `r`; `false` if it holds no such record.
    pub fn rot_wal_entry(&mut self, r: Slot, op: Op) -> bool {
        let Some(disk) = &mut self.down[r as usize] else {
            panic!("replica {r} must be down for its disk to rot")
        };
        let zone = disk.wal_zone();
        let wal = vsr_storage::Disk::read(disk, zone).expect("a simulated disk reads");
        let record = disk.wal_records().into_iter().rev().find(|&(offset, _)| {
            matches!(
                vsr_storage::format::Record::decode(&wal[offset..]),
                Some((vsr_storage::format::Record::Entry(entry), _)) if entry.op == op
            )
        });
        let Some((offset, _)) = record else { return false };
        disk.corrupt(zone, offset + 40, 0x20);
        true
    }

    /// Bit rot while the replica is down, within the fault model: one
    /// superblock copy whose loss leaves another copy of the newest, or any
    /// one log record (the last is a seal, whose loss loses nothing), or
    /// the durable checkpoint file, the last two only while few enough
    /// replicas are recovering for one more to finish (the store then
    /// makes this one recover from its peers).
    fn rot(&mut self, disk: &mut MemDisk) {
        if !self.rng.chance(self.options.corruption_probability) {
            return;
        }
        let records = disk.wal_records();
        let room = self.recovering_or_will() < self.fault_budget();
        let checkpoint = disk.checkpoint_file().filter(|&(_, len)| len > 0);
        if self.rng.chance(0.5) && !records.is_empty() && room {
            let (offset, len) = records[self.rng.range(0, records.len() as u64 - 1) as usize];
            let byte = offset + self.rng.range(0, len as u64 - 1) as usize;
            disk.corrupt(disk.wal_zone(), byte, self.rng.range(1, 255) as u8);
        } else if let Some((zone, len)) = checkpoint.filter(|_| room && self.rng.chance(0.3)) {
            // The durable checkpoint rots: its digest in the superblock no
            // longer matches, and the store recovers the replica's state
            // from its peers.
            let byte = self.rng.range(0, len as u64 - 1) as usize;
            disk.corrupt(zone, byte, self.rng.range(1, 255) as u8);
        } else {
            let slot = self.rng.range(0, 3) as usize;
            if disk.superblock_survives_losing(slot) {
                let byte = slot * vsr_storage::format::SLOT_SIZE + self.rng.range(0, 200) as usize;
                disk.corrupt(Zone::Superblock, byte, self.rng.range(1, 255) as u8);
            }
        }
    }

    // ---- One tick --------------------------------------------------------

    pub fn step(&mut self) -> Result<(), Failure> {
        if let Some(violation) = self.deferred.take() {
            return Err(self.fail(violation));
        }
        self.tick += 1;
        if self.trace_every > 0 && self.tick.is_multiple_of(self.trace_every) {
            eprintln!("tick {}: {}", self.tick, self.describe());
        }
        let now_ns = self.tick * 1_000_000;
        let sent_before = (self.network.sent, self.network.beats_sent);
        let quiet_before = self.quiet_now();
        self.feed_detector()?;
        for r in 0..self.n() {
            let due: Vec<(u64, Op, Vec<u8>)> = {
                let queue = &mut self.snapshots[r];
                let (due, later) = std::mem::take(queue)
                    .into_iter()
                    .partition(|(at, _, _)| *at <= self.tick);
                *queue = later;
                due
            };
            for (_, op, app) in due {
                if self.hosts[r].is_some() {
                    self.input(r as Slot, Input::Snapshot { op, app })?;
                }
            }
        }
        for r in 0..self.n() {
            if self.hosts[r].is_some() && !self.go_on(r as Slot)? {
                continue; // held up by a slow sync: the tick is lost
            }
            let skip = self.frozen[r] || self.rng.chance(self.options.tick_skip_probability);
            if self.hosts[r].is_some() && !skip && !self.skips_quiet_tick(r as Slot) {
                // A clock jump moves the wall clock only; the monotonic
                // one is the simulated time.
                let offset = self.clock_offset_ns[r];
                self.clock_ahead_max_ns[r] = self.clock_ahead_max_ns[r].max(offset.max(0) as u64);
                let wall_ns = now_ns.saturating_add_signed(offset);
                let tick = Input::Tick {
                    now_ns: wall_ns,
                    mono_ns: now_ns,
                };
                self.input(r as Slot, tick)?;
            }
        }
        while let Some((from, to, _, bytes)) = self.network.next_due_packet(self.tick) {
            self.receive_from(from, to, bytes)?;
        }
        self.drive_clients()?;
        // The end of an engine iteration: one sync per replica for every
        // write its inputs staged (group commit, as the NIF batches).
        for r in 0..self.n() {
            self.flush(r as Slot).map_err(|v| self.fail(v))?;
        }
        if self.network.in_flight() > MESSAGE_STORM {
            return Err(self.fail(format!(
                "message storm: {} packets in flight",
                self.network.in_flight()
            )));
        }
        self.count_quiet_spells(&quiet_before);
        self.check_quiet(sent_before)?;
        self.check_calm_idle()
    }

    /// Replica `r`'s host's clocks now, as it reads them for an input:
    /// its wall clock (true time plus its jumps) and its monotonic one
    /// (the simulated time), in ns.
    pub(crate) fn clocks_of(&mut self, r: Slot) -> (u64, u64) {
        let now_ns = self.tick * 1_000_000;
        let offset = self.clock_offset_ns[r as usize];
        let ahead = &mut self.clock_ahead_max_ns[r as usize];
        *ahead = (*ahead).max(offset.max(0) as u64);
        (now_ns.saturating_add_signed(offset), now_ns)
    }

    /// A message reaches replica `r`'s host: it waits while a slow sync
    /// holds the host up (a host paused by a failing disk drops it).
    fn receive_from(&mut self, from: Slot, r: Slot, bytes: Vec<u8>) -> Result<(), Failure> {
        if let Some(stall) = &mut self.stalls[r as usize] {
            stall.inbox.push((from, bytes));
            return Ok(());
        }
        // A node's beat goes to its detector (quiet groups).
        if self.hosts[r as usize].is_some() && !self.detector_hears(from, r, &bytes) {
            self.input(r, Input::Receive(&bytes))?;
        }
        Ok(())
    }

    /// Feeds one input to replica `r`'s host; what it outputs leaves at the
    /// next `flush`.
    pub(crate) fn input(&mut self, r: Slot, input: Input<'_>) -> Result<(), Failure> {
        if !matches!(
            input,
            Input::Tick { .. } | Input::Wake { .. } | Input::Peers { .. }
        ) {
            self.wake_for_input(r)?;
        }
        let host = self.hosts[r as usize].as_mut().expect("replica is up");
        if let Err(bug) = host.step(input) {
            return Err(self.fail(format!("replica {r} panicked: {bug}")));
        }
        let replica = self.replica(r);
        let check = !replica.config().is_mutated() || self.options.invariants_under_mutation;
        let broken = replica.invariants().err().filter(|_| check);
        let view = (replica.membership().epoch(), replica.view());
        let (commit, leads) = (replica.commit_max(), replica.is_primary());
        if let Some(broken) = broken {
            return Err(self.fail(format!("replica {r} broke an invariant: {broken}")));
        }
        self.follow_writes(r).map_err(|v| self.fail(v))?;
        self.checker
            .on_state(r, view, commit, leads)
            .map_err(|v| self.fail(v))
    }

    /// Replica `r`'s host at the end of an iteration, as the NIF's engine
    /// runs it: what its inputs released leaves, then one sync makes every
    /// write they staged durable, and what waited for them leaves. A
    /// failed sync pauses the host (the next flush retries it); a disk
    /// that dies mid-write (an armed crash) takes the replica with it; a
    /// slow sync holds the host up (`Stall`).
    fn flush(&mut self, r: Slot) -> Result<(), Violation> {
        let i = r as usize;
        if self.stalls[i].is_some() {
            return Ok(()); // its thread is still inside the sync
        }
        let Some(host) = self.hosts[i].as_mut() else {
            return Ok(());
        };
        let ready = host
            .take_ready()
            .map_err(|bug| format!("replica {r} panicked: {bug}"))?;
        self.followed[i] = 0;
        {
            let mut per: std::collections::HashMap<u8, (u64, u64)> = Default::default();
            for output in &ready {
                if let Output::Send { to, bytes, .. } = output {
                    let e = per.entry(*to).or_default();
                    e.0 += bytes.len() as u64;
                    e.1 += 1;
                }
            }
            for (b, m) in per.values() {
                self.flush_peer_bytes_max = self.flush_peer_bytes_max.max(*b);
                self.flush_peer_messages_max = self.flush_peer_messages_max.max(*m);
            }
        }
        for output in ready {
            self.deliver(r, output)?;
        }
        let host = self.hosts[i].as_mut().expect("delivering crashes no replica");
        if host.has_staged() {
            let was_paused = host.paused();
            let late = host.sync_staged();
            host.take_notices(); // the simulator follows the disk itself
            if host.paused() {
                if host
                    .store()
                    .is_some_and(|store| store.disk().crash_after == Some(0))
                {
                    // The disk died mid-write: so does the replica, and
                    // nothing after the write takes effect.
                    self.crash_until_later(r);
                } else if !was_paused {
                    self.disk_pauses += 1;
                }
                return Ok(());
            }
            if let Some(ticks) = self.slow_sync[i].take() {
                self.disk_pauses += 1;
                self.stalls[i] = Some(Stall {
                    until: self.tick + ticks,
                    held: late,
                    inbox: Vec::new(),
                });
                return Ok(());
            }
            for output in late {
                self.deliver(r, output)?;
            }
        }
        match self.hosts[i]
            .as_ref()
            .and_then(Host::store)
            .map(Store::invariants)
        {
            Some(Err(broken)) => Err(format!("replica {r}'s store broke an invariant: {broken}")),
            _ => Ok(()),
        }
    }

    /// Holds replica `r`'s host up for `ticks` ticks, as a slow sync does:
    /// no ticks, and the messages that arrive meanwhile reach it together
    /// when it goes on (scripted scenarios).
    pub fn stall(&mut self, r: Slot, ticks: u64) {
        self.stalls[r as usize] = Some(Stall {
            until: self.tick + ticks,
            held: Vec::new(),
            inbox: Vec::new(),
        });
    }

    /// Replica `r`'s host at a tick: `false` while a slow sync holds it up;
    /// once the sync returns, what it released leaves, then what its
    /// inputs released meanwhile, then the messages that queued up go in.
    fn go_on(&mut self, r: Slot) -> Result<bool, Failure> {
        let i = r as usize;
        match &self.stalls[i] {
            None => return Ok(true),
            Some(stall) if self.tick < stall.until => return Ok(false),
            Some(_) => {}
        }
        let stall = self.stalls[i].take().expect("stalled");
        for output in stall.held {
            self.deliver(r, output).map_err(|v| self.fail(v))?;
        }
        self.flush(r).map_err(|v| self.fail(v))?;
        for (from, bytes) in stall.inbox {
            self.receive_from(from, r, bytes)?;
        }
        Ok(self.hosts[i].is_some() && self.stalls[i].is_none())
    }

    /// Disk mode: checks the writes replica `r` asked for since the last
    /// look, as its store will hold them once synced: the log chains, a
    /// checkpoint that does not continue it rebases it, and a persisted
    /// view never goes back (but in a recovery).
    fn follow_writes(&mut self, r: Slot) -> Result<(), Violation> {
        let i = r as usize;
        let Some(host) = self.hosts[i].as_ref().filter(|host| host.store().is_some()) else {
            return Ok(());
        };
        let pending = host.pending();
        let new = &pending[self.followed[i].min(pending.len())..];
        self.followed[i] = pending.len();
        for output in new {
            let mirror = self.beside[i]
                .mirror
                .as_mut()
                .expect("a running store has a mirror");
            match output {
                Output::WriteLog { after, entries } => {
                    mirror.truncate_after(*after);
                    for entry in entries {
                        if !mirror.can_append(entry) {
                            return Err(format!("replica {r} wrote op {} that does not chain", entry.op));
                        }
                        mirror.append(entry.clone());
                    }
                }
                // The store rebases its log at a checkpoint that does not
                // continue it, crash-atomically.
                Output::WriteCheckpoint(checkpoint)
                    if mirror.checksum_at(checkpoint.op) != Some(checkpoint.checksum) =>
                {
                    *mirror = Log::at(checkpoint.op, checkpoint.checksum, checkpoint.timestamp);
                }
                Output::WriteState(state) => {
                    let before = self.durable[i];
                    if state.recovering && !before.recovering {
                        // The replica gave up its log while running (a
                        // repair no peer could serve, repair.rs): the store
                        // empties it, and the replica recovers like an
                        // amnesiac one.
                        *mirror = Log::new(root_checksum(self.options.config.cluster));
                        self.announced[i] = (0, 0);
                        self.checker.forgot(r);
                    }
                    // Only a recovery may take a replica's view back
                    // (recovery.rs); views count within an epoch.
                    let (stamp, was) = ((epoch_of(state), state.view), (epoch_of(&before), before.view));
                    if stamp < was && !before.recovering && !state.recovering {
                        return Err(format!(
                            "replica {r} persisted (epoch, view) {stamp:?} over {was:?}"
                        ));
                    }
                    self.durable[i] = **state;
                }
                _ => {}
            }
        }
        Ok(())
    }
    /// Records the view a message claims its sender is in (only messages
    /// that make such a claim, and only from a replica not recovering).
    /// Decoded only when it could raise the record: a replica's view at
    /// most bounds what it claims.
    fn note_announced(&mut self, r: Slot, bytes: &[u8]) {
        let Some(replica) = self.running(r as usize) else {
            return;
        };
        let stamp = (replica.membership().epoch(), replica.view());
        if replica.is_recovering() || stamp <= self.announced[r as usize] {
            return;
        }
        let config = self.options.config_of(r);
        let Ok(decoded) = vsr::message::decode(config.wire_cluster(), bytes) else {
            return;
        };
        let claimed = match decoded.message {
            Message::Prepare { view, .. }
            | Message::PrepareOk { view, .. }
            | Message::Commit { view, .. }
            | Message::ReadOk { view, .. }
            | Message::DoViewChange { view, .. }
            | Message::StartView { view, .. }
            | Message::RecoveryFenced { view, .. }
            | Message::StartViewChange { current: view, .. } => view,
            _ => return,
        };
        self.announced[r as usize] = self.announced[r as usize].max((decoded.sender.epoch, claimed));
    }

    /// Carries out one output that left replica `r`'s host, in order.
    fn deliver(&mut self, r: Slot, output: Output) -> Result<(), Violation> {
        {
            match output {
                Output::Send { to, id, bytes } => {
                    // The network routes by member id, as hosts do: a slot
                    // alone does not name a node once slots are reused. A
                    // member no node runs is unreachable.
                    self.note_announced(r, &bytes);
                    let Some(node) = self.nodes.iter().position(|n| n.id == id) else {
                        return Ok(());
                    };
                    if self.nodes[node].slot != to {
                        return Err(format!(
                            "replica {r} sent to slot {to} as member {id:#x}, whose slot is {}",
                            self.nodes[node].slot
                        ));
                    }
                    self.network
                        .send(&mut self.rng, self.tick, r, node as Slot, bytes)
                }
                Output::WriteLog { .. } | Output::WriteState(_) | Output::WriteCheckpoint(_) => {
                    unreachable!("the host stages its writes")
                }
                Output::Reconfigured { id, result } => {
                    if !matches!(result, ChangeResult::Done | ChangeResult::Unknown) {
                        let origin = self.replica(r).member_id();
                        self.refused_changes.insert(ChangeId { origin, id });
                    }
                    self.reconfigured.push((r, id, result));
                }
                Output::Epoch { membership, role } => {
                    if self.refused_changes.contains(&membership.change()) {
                        return Err(format!(
                            "replica {r} entered epoch {} by change {:?}, whose origin had answered its caller no",
                            membership.epoch(),
                            membership.change()
                        ));
                    }
                    if role == Role::Member {
                        self.nodes[r as usize].learner = false;
                        self.relearning[r as usize] = false; // it recovers now, if it must
                    }
                    self.event(|| {
                        format!(
                            "r{r} enters e{} as {role:?}: {:?}",
                            membership.epoch(),
                            membership
                                .members()
                                .iter()
                                .map(|m| (m.slot, m.id))
                                .collect::<Vec<_>>()
                        )
                    });
                    self.epochs.push((r, membership.epoch(), role));
                }
                Output::Removed { epoch } => {
                    self.event(|| format!("r{r} removed in e{epoch}"));
                    self.removed.push((r, epoch))
                }
                Output::Execute { entry, outcomes } => {
                    let first = entry.op > self.checker.committed();
                    self.checker.on_execute(r, &entry, &outcomes)?;
                    if first {
                        self.check_timestamp(&entry)?;
                        self.last_stamp = entry.timestamp;
                    }
                    let app = &mut self.apps[r as usize];
                    if app.op + 1 != entry.op {
                        return Err(format!(
                            "replica {r}'s host applied op {} after op {}",
                            entry.op, app.op
                        ));
                    }
                    *app = app.applied(&entry, &outcomes);
                    self.checker.on_app(r, *app)?;
                }
                Output::TakeSnapshot { op } => {
                    let config = self.options.config_of(r);
                    self.checker.on_take_snapshot(
                        r,
                        op,
                        config.checkpoint_interval,
                        config.checkpoint_bytes,
                    )?;
                    let app = self.apps[r as usize];
                    if app.op != op {
                        return Err(format!(
                            "replica {r} asked for a snapshot at op {op}; its host is at op {}",
                            app.op
                        ));
                    }
                    let mut state = app;
                    let rate = self.options.lying_rate;
                    if self.options.lying_host == Some(r) && (rate >= 1.0 || self.rng.chance(rate)) {
                        state.hash ^= 1;
                    }
                    let delay = match self.options.snapshot_delay_max {
                        0 => 0,
                        max if self.rng.chance(0.5) => self.rng.range(1, max),
                        _ => 0,
                    };
                    self.snapshots[r as usize].push((self.tick + delay, op, state.encode()));
                }
                Output::InstallSnapshot { op, app } => {
                    let state = App::decode(&app)
                        .ok_or_else(|| format!("replica {r} installed a snapshot that does not decode"))?;
                    if state.op != op {
                        return Err(format!(
                            "replica {r} installed the state of op {} as op {op}",
                            state.op
                        ));
                    }
                    self.checker.on_install(r, state)?;
                    self.apps[r as usize] = state;
                    self.installed += 1;
                }
                Output::Diverged { op, digest, quorum } => {
                    // Only a host that lies may diverge: anything else is a
                    // nondeterminism in the protocol's own state.
                    if self.options.lying_host != Some(r) {
                        return Err(format!(
                            "replica {r}'s checkpoint digest at op {op} differs from the quorum's \
                             ({digest:032x} vs {quorum:032x})"
                        ));
                    }
                    self.divergences.push((r, op, digest, quorum));
                    self.checker.diverged(r);
                }
                Output::Reply {
                    client,
                    request,
                    op,
                    outcome,
                } => self.on_reply(r, client, request, op, outcome)?,
                Output::ReadReady { id, op } => {
                    if let Some(bounds) = self.reads.remove(&(r, id)) {
                        // The host serves the read from the state it has
                        // applied when the read is ready.
                        let seen = self.apps[r as usize];
                        self.checker.on_read(r, bounds, op, seen)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// At least `w + 1` of the clocks a primary sampled read at least the
    /// time it stamps with, `w = max(n - q, 1)` (docs/protocol.md,
    /// "Timestamps"), and each sampled clock reads at most true time plus
    /// the furthest ahead that replica's clock has been. So no timestamp is
    /// further ahead of true time than the `(w + 1)`-th furthest any
    /// replica's clock has been (with a slack of a few ticks): any `w`
    /// clocks ahead, whichever replicas are down, leave timestamps alone. A
    /// timestamp behind true time is allowed: they only increase, so after
    /// clocks ran ahead they advance by 1 ns per op for a while; and so a
    /// timestamp 1 ns above the previous op's is always allowed (that one
    /// was checked). With membership changes a list can stamp above what
    /// its own clocks allow that way: after a list of one, whose primary's
    /// clock alone is the cluster's, however far ahead (`vopr
    /// --membership` seeds 213, 403, 481 and 553: a genesis of one whose
    /// clock jumped ahead, grown to two).
    fn check_timestamp(&self, entry: &vsr::Prepare) -> Result<(), Violation> {
        const SLACK_NS: u64 = 100 * 1_000_000;
        let now = self.tick * 1_000_000;
        let n = self.n();
        let mut outvoted = (n - vsr::quorum(n)).max(1).min(n - 1);
        let mut ahead = self.clock_ahead_max_ns.clone();
        if self.options.membership_changes || n > self.options.replica_count() {
            // Lists of 3 to 5 come and go (or a scenario added nodes): the
            // clocks of nodes that were members, and the fewest any list
            // outvotes (one: the bound is the furthest ahead but one, the
            // most lenient of theirs; none while the only member is one).
            ahead = (0..n)
                .filter(|&r| !self.nodes[r].learner)
                .map(|r| self.clock_ahead_max_ns[r])
                .collect();
            outvoted = 1.min(ahead.len() - 1);
        }
        ahead.sort_unstable_by(|a, b| b.cmp(a));
        let ahead_ns = ahead[outvoted];
        let bound = now + ahead_ns + SLACK_NS;
        if entry.timestamp > bound && entry.timestamp > self.last_stamp.saturating_add(1) {
            return Err(format!(
                "op {} stamped {} ms ahead of every clock but the {outvoted} furthest ahead (true time {now} ns, the next up to {} ms ahead)",
                entry.op,
                (entry.timestamp - now - ahead_ns) / 1_000_000,
                ahead_ns / 1_000_000
            ));
        }
        Ok(())
    }

    fn on_reply(
        &mut self,
        r: Slot,
        client: ClientId,
        request: u64,
        op: u64,
        outcome: Outcome,
    ) -> Result<(), Violation> {
        self.checker.on_reply(client, request, op, outcome)?;
        self.last_reply = Some((r, client, request, op, outcome));
        let Some(&c) = self.client_index.get(&client) else {
            return Ok(());
        };
        let sim_client = &mut self.clients[c];
        if sim_client.home != r || sim_client.outstanding.as_ref().map(|o| o.request) != Some(request) {
            return Ok(()); // late or replayed: already settled
        }
        sim_client.outstanding = None;
        match outcome {
            Outcome::Registered { session } => sim_client.session = Some(session),
            Outcome::Executed | Outcome::Duplicate { .. } => {
                if matches!(outcome, Outcome::Duplicate { op: 0 }) {
                    return Err(format!(
                        "client {client:x} got no op for its latest request {request}"
                    ));
                }
                sim_client.next_request += 1;
                sim_client.completed += 1;
            }
            Outcome::Refused => {
                return Err(format!(
                    "client {client:x}'s request {request} was refused: it sent one body per number"
                ));
            }
            Outcome::Membership => unreachable!("the checker refuses such a reply"),
            Outcome::Evicted => {
                self.client_index.remove(&client);
                let sim_client = &mut self.clients[c];
                sim_client.reincarnate(&mut self.rng);
                self.client_index.insert(sim_client.id, c);
            }
        }
        Ok(())
    }

    fn drive_reads(&mut self) -> Result<(), Failure> {
        if !self.load || !self.rng.chance(self.options.read_probability) {
            return Ok(());
        }
        let r = self.rng.range(0, self.n() as u64 - 1) as Slot;
        // Through a member: a host sends none through a learner or a
        // replica that left.
        if self.running(r as usize).is_none_or(|x| x.role() != Role::Member) {
            return Ok(());
        }
        self.read(r)
    }

    /// Issues a linearizable read through replica `r`, in an engine
    /// iteration of its own (scripted scenarios).
    pub fn issue_read(&mut self, r: Slot) -> Result<(), Failure> {
        self.read(r)?;
        self.flush(r).map_err(|v| self.fail(v))
    }

    fn read(&mut self, r: Slot) -> Result<(), Failure> {
        let next = &mut self.next_read[r as usize];
        *next += 1;
        let id = *next;
        self.reads.insert((r, id), self.checker.read_bounds());
        self.input(r, Input::Read { id })
    }

    /// Submits `submission` through replica `r` as a host would, outside
    /// any simulated client's script, in an engine iteration of its own
    /// (scripted scenarios).
    pub fn submit_through(&mut self, r: Slot, submission: Submission) -> Result<(), Failure> {
        self.input(r, Input::Submit(submission))?;
        self.flush(r).map_err(|v| self.fail(v))
    }

    fn drive_clients(&mut self) -> Result<(), Failure> {
        self.drive_reads()?;
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            let home = client.home;
            let submit = match &client.outstanding {
                None if self.load && self.rng.chance(self.options.request_probability) => {
                    let payload_max = self.options.payload_max;
                    self.clients[c].start(&mut self.rng, payload_max, self.tick);
                    true
                }
                Some(o) => o.last_submit + self.options.client_retry_ticks <= self.tick,
                None => false,
            };
            if submit {
                self.submit(c, home)?;
            }
        }
        Ok(())
    }

    fn submit(&mut self, c: usize, home: Slot) -> Result<(), Failure> {
        if let Some(o) = self.clients[c].outstanding.as_mut() {
            o.last_submit = self.tick;
        }
        if self.hosts[home as usize].is_none() {
            return Ok(()); // the home replica is down: try again later
        }
        let submission = self.clients[c].submission().expect("outstanding request");
        self.input(home, Input::Submit(submission))
    }

    /// Asks replica `through` to change the membership to the nodes `ids`
    /// (member ids; the simulator's are the slots), as change `id`, given
    /// up after `ticks` without consent; its answer lands in
    /// `reconfigured`.
    pub fn reconfigure(
        &mut self,
        through: Slot,
        id: u64,
        ids: &[MemberId],
        ticks: u64,
    ) -> Result<(), Failure> {
        let Some(replica) = self.running(through as usize) else {
            return Err(self.fail(format!("replica {through} is down")));
        };
        let target = replica
            .change_target(ids, id)
            .map_err(|e| self.fail(format!("no target for {ids:?}: {e}")))?;
        self.input(
            through,
            Input::Reconfigure {
                id,
                target: Box::new(target),
                ticks,
            },
        )?;
        self.flush(through).map_err(|v| self.fail(v))
    }

    /// The newest membership a running replica holds (what a host learns
    /// from its peers), if any runs.
    pub fn newest_membership(&self) -> Option<vsr::Membership> {
        self.replicas()
            .filter(|r| r.role() != Role::Learner)
            .map(|r| *r.membership())
            .max_by_key(|m| m.epoch())
    }

    /// Starts a learner for each member new to the target of a change to
    /// the nodes `ids` through replica `through` (as `reconfigure` computes
    /// it), on a node of its own, as the host of a change does before it
    /// asks for it. Returns the new nodes.
    pub fn start_learners(&mut self, through: Slot, ids: &[MemberId]) -> Result<Vec<Slot>, Failure> {
        let Some(replica) = self.running(through as usize) else {
            return Err(self.fail(format!("replica {through} is down")));
        };
        let target = replica
            .membership()
            .next(ids, ChangeId::default(), replica.primary())
            .map_err(|e| self.fail(format!("no target for {ids:?}: {e}")))?;
        let mut started = Vec::new();
        for m in target.members() {
            if self.nodes.iter().any(|n| n.id == m.id) {
                continue;
            }
            let node = Node {
                slot: m.slot,
                id: m.id,
                joined: m.joined,
                learner: true,
            };
            started.push(self.add_node(node)?);
        }
        Ok(started)
    }

    // ---- Random membership changes ----------------------------------------

    /// Random mode: now and then, asks a random member of the newest epoch
    /// to grow, shrink or replace (lists of 3 to 5; a list smaller than 3
    /// only grows), starting the learners first, as a host does.
    fn random_change(&mut self) -> Result<(), Failure> {
        self.follow_change();
        if self.in_flight.is_some() || !self.rng.chance(0.002) {
            return Ok(());
        }
        let Some(newest) = self.newest_membership() else {
            return Ok(());
        };
        let origins: Vec<Slot> = (0..self.n())
            .filter(|&r| {
                self.running(r).is_some_and(|x| {
                    x.role() == Role::Member
                        && x.membership().epoch() == newest.epoch()
                        && x.status() == Status::Normal
                })
            })
            .map(|r| r as Slot)
            .collect();
        if origins.is_empty() {
            return Ok(());
        }
        let origin = origins[self.rng.range(0, origins.len() as u64 - 1) as usize];
        let mut ids: Vec<MemberId> = newest.members().iter().map(|m| m.id).collect();
        let n = ids.len();
        let room = self.nodes.len() < vsr::MAX_SLOTS;
        self.changes += 1;
        let new_id = 1_000 + self.changes as MemberId;
        match self.rng.range(0, 2) {
            0 if n < 5 && room => ids.push(new_id),
            1 if n > 3 => {
                let i = self.rng.range(0, n as u64 - 1) as usize;
                ids.remove(i);
            }
            2 if n >= 3 && room => {
                let i = self.rng.range(0, n as u64 - 1) as usize;
                ids.remove(i);
                ids.push(new_id);
            }
            _ => return Ok(()),
        }
        let learners = self.start_learners(origin, &ids)?;
        let id = self.changes;
        self.event(|| format!("change {id} through r{origin} to ids {ids:?} (learners {learners:?})"));
        self.reconfigure(origin, id, &ids, 2_000)?;
        self.in_flight = Some(InFlight {
            origin,
            id,
            epoch: newest.epoch() + 1,
            learners,
            since: self.tick,
        });
        Ok(())
    }

    /// Follows the change under way, as its host does: once its fate is
    /// known (a definite "no", its epoch entered, or long past its
    /// deadline with its epoch never entered), the learners that are no
    /// members stop for good; and a replica removed from its list stops
    /// (its clients go to a member).
    fn follow_change(&mut self) {
        for r in 0..self.n() {
            if self.running(r).is_some_and(|x| x.role() == Role::Removed) {
                self.stop_node(r as Slot);
            }
        }
        let Some(change) = self.in_flight.clone() else {
            return;
        };
        let newest = self.newest_membership().map_or(0, |m| m.epoch());
        let refused = self
            .reconfigured(change.origin, change.id)
            .is_some_and(|result| !matches!(result, ChangeResult::Done | ChangeResult::Unknown));
        let long_past = self.tick > change.since + 6_000;
        if !refused && newest < change.epoch && !long_past {
            return;
        }
        for r in change.learners {
            let member = self.running(r as usize).is_some_and(|x| x.role() == Role::Member);
            let node = self.nodes[r as usize];
            let listed = self
                .newest_membership()
                .is_some_and(|m| m.member(node.slot).is_some_and(|m| m.id == node.id));
            if !member && !listed {
                self.stop_node(r);
            }
        }
        self.in_flight = None;
    }

    /// Whether a membership change asked for in random mode is under way.
    pub(crate) fn change_under_way(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Node `r`'s host stops it for good; clients that used it go to a
    /// member.
    fn stop_node(&mut self, r: Slot) {
        self.event(|| format!("r{r} stops for good"));
        self.crash(r);
        self.dead[r as usize] = true;
        self.restart_at[r as usize] = None;
        let members: Vec<Slot> = (0..self.n())
            .filter(|&o| !self.dead[o] && !self.nodes[o].learner)
            .filter(|&o| self.running(o).is_none_or(|x| x.role() == Role::Member))
            .map(|o| o as Slot)
            .collect();
        if members.is_empty() {
            return;
        }
        for c in 0..self.clients.len() {
            if self.clients[c].home == r {
                let i = self.rng.range(0, members.len() as u64 - 1) as usize;
                self.clients[c].home = members[i];
            }
        }
    }

    /// Adds a node running `node` (a learner), and boots it.
    pub fn add_node(&mut self, node: Node) -> Result<Slot, Failure> {
        let r = self.nodes.len();
        if r >= vsr::MAX_SLOTS {
            return Err(self.fail(format!("more than {} nodes", vsr::MAX_SLOTS)));
        }
        self.nodes.push(node);
        self.hosts.push(None);
        self.down.push(None);
        self.durable.push(DurableState::default());
        self.armed.push(false);
        self.announced.push((0, 0));
        self.restart_at.push(None);
        self.frozen.push(false);
        self.next_read.push(0);
        self.clock_offset_ns.push(0);
        self.clock_ahead_max_ns.push(0);
        self.apps.push(App::default());
        self.snapshots.push(Vec::new());
        self.beside.push(Beside { mirror: None });
        self.followed.push(0);
        self.dead.push(false);
        self.relearning.push(false);
        self.stalls.push(None);
        self.slow_sync.push(None);
        self.disk_heals_at.push(None);
        self.damaged.push(false);
        self.quiet.skipped.push(0);
        self.quiet.fed.push(u16::MAX);
        self.quiet.booted.push(self.tick);
        self.checker.add_replica();
        let disk = (!self.options.amnesia).then(MemDisk::default);
        self.try_boot(r as Slot, disk, false)
            .map_err(|unbooted| self.fail(format!("node {r} did not boot: {}", unbooted.error)))?;
        Ok(r as Slot)
    }

    /// The answer to change `id` asked through `through`, if it came.
    pub fn reconfigured(&self, through: Slot, id: u64) -> Option<ChangeResult> {
        self.reconfigured
            .iter()
            .find(|&&(r, i, _)| r == through && i == id)
            .map(|&(_, _, result)| result)
    }

    /// Starts the next request of client `c` now, in an engine iteration
    /// of its own (scripted scenarios).
    pub fn start_request(&mut self, c: usize) -> Result<(), Failure> {
        let payload_max = self.options.payload_max;
        self.clients[c].start(&mut self.rng, payload_max, self.tick);
        self.resubmit(c)
    }

    /// Submits client `c`'s outstanding request again, as a client whose
    /// reply is late does, in an engine iteration of its own (scripted
    /// scenarios).
    pub fn resubmit(&mut self, c: usize) -> Result<(), Failure> {
        let home = self.clients[c].home;
        self.submit(c, home)?;
        self.flush(home).map_err(|v| self.fail(v))
    }

    /// Steps until `done` holds, failing after `max_ticks`.
    pub fn run_until(
        &mut self,
        max_ticks: u64,
        what: &str,
        mut done: impl FnMut(&Simulator) -> bool,
    ) -> Result<(), Failure> {
        let deadline = self.tick + max_ticks;
        while !done(self) {
            if self.tick >= deadline {
                return Err(self.fail(format!(
                    "{what}: not within {max_ticks} ticks; {}",
                    self.describe()
                )));
            }
            self.step()?;
        }
        Ok(())
    }

    /// Steps `ticks` times.
    pub fn run_ticks(&mut self, ticks: u64) -> Result<(), Failure> {
        (0..ticks).try_for_each(|_| self.step())
    }

    /// The snapshots replica `r`'s host still owes: (due tick, op).
    pub fn snapshots_owed(&self, r: Slot) -> Vec<(u64, Op)> {
        self.snapshots[r as usize]
            .iter()
            .map(|&(due, op, _)| (due, op))
            .collect()
    }

    pub fn replica(&self, r: Slot) -> &Replica {
        self.running(r as usize).expect("replica is up")
    }

    /// The replica leading a view in normal status, if exactly one does in the highest view.
    pub fn primary(&self) -> Option<Slot> {
        let top = self.replicas().map(|r| r.view()).max()?;
        self.replicas()
            .find(|r| r.is_primary() && r.view() == top)
            .map(|r| r.index())
    }

    /// Bytes rejected by replicas' decoders, all replicas together.
    pub fn rejected(&self) -> u64 {
        self.replicas()
            .map(|r| {
                let s = r.stats();
                s.dropped_corrupt
                    + s.dropped_truncated
                    + s.dropped_malformed
                    + s.dropped_foreign_cluster
                    + s.dropped_unknown_format
                    + s.dropped_unknown_sender
            })
            .sum()
    }
}

/// The replicas' configuration for the start numbered `boot`: every start
/// has its own boot nonce, as a host's random one is.
fn boot_config(options: &Options, r: Slot, boot: u64) -> vsr::Config {
    let mut config = options.config_of(r);
    config.boot_nonce = options.seed.rotate_left(32) ^ boot;
    config
}

/// Runs one seed.
pub fn run_seed(seed: u64) -> Result<Report, Failure> {
    Simulator::new(Options::from_seed(seed)).run()
}

/// Runs one seed, printing the cluster's state every `every` ticks.
pub fn trace_seed(seed: u64, every: u64) -> Result<Report, Failure> {
    let mut simulator = Simulator::new(Options::from_seed(seed));
    simulator.trace_every = every;
    simulator.run()
}

/// The log replica `r`'s store on `disk` holds, read from a copy of the
/// disk before its host opens it (a repairing store's: the entries before
/// the damaged one, which the repair's `WriteLog` completes); an empty log
/// if the store recovers.
fn stored_log(options: &Options, node: Node, mut disk: MemDisk) -> Option<Log> {
    // As the disk holds it once faults at boot are gone (if the boot
    // succeeds despite them, they failed nothing it did).
    (disk.unreadable, disk.failing, disk.full) = (None, false, false);
    let store = store_options(options, node, disk);
    let (_, opened) = Store::open(store.disk, store.identity, store.meta).ok()?;
    let (checkpoint, entries) = match opened {
        Opened::Restart {
            checkpoint, entries, ..
        }
        | Opened::Repair {
            checkpoint, entries, ..
        } => (checkpoint, entries),
        Opened::Recover { .. } | Opened::Created { .. } => {
            return Some(Log::new(root_checksum(options.config.cluster)))
        }
    };
    match checkpoint {
        Some(c) => {
            let base = Log::at(c.op, c.checksum, c.timestamp);
            let after = entries.into_iter().filter(|e| e.op > c.op).collect();
            Some(base.clone().extended(after).unwrap_or(base))
        }
        None => Log::new(root_checksum(options.config.cluster)).extended(entries),
    }
}

/// Whether replica `r`'s store on `disk` (a copy, opened) would repair or
/// recover it.
fn opens_damaged(options: &Options, node: Node, disk: MemDisk) -> bool {
    let store = store_options(options, node, disk);
    matches!(
        Store::open(store.disk, store.identity, store.meta),
        Ok((_, Opened::Repair { .. } | Opened::Recover { .. }))
    )
}

/// Replica `r`'s store on `disk`, compacting as the seed says.
fn store_options(options: &Options, node: Node, disk: MemDisk) -> StoreOptions<MemDisk> {
    StoreOptions {
        disk,
        identity: Identity {
            cluster: options.config.cluster,
            group: b"sim".to_vec(),
            member: node.id,
            joined: node.joined,
        },
        meta: Vec::new(),
        compaction_bytes: Some(options.compaction_bytes),
    }
}

/// Genesis member `r`'s node.
fn genesis_node(options: &Options, r: Slot) -> Node {
    let member = options.config.genesis.members()[r as usize];
    Node {
        slot: member.slot,
        id: member.id,
        joined: 0,
        learner: false,
    }
}

/// The epoch a durable state records (`None`: the genesis, epoch 0).
fn epoch_of(state: &DurableState) -> vsr::Epoch {
    state.membership.map_or(0, |m| m.epoch())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::{commit, options, register_all};

    /// The budget of faults counts a replica that will repair or recover
    /// at its next start (`recovering_or_will`, `will_recover`): a
    /// replica that restarted repairing a damaged entry and went down
    /// again before the repair finished still has the hole on its disk,
    /// and repairs again when it next starts.
    #[test]
    fn a_replica_down_in_the_middle_of_a_repair_counts_against_the_budget() {
        let mut sim = Simulator::new(options(3, 1));
        register_all(&mut sim, 0).unwrap();
        for _ in 0..10 {
            commit(&mut sim, 0, 0).unwrap();
        }
        sim.crash(1);
        assert!(sim.rot_wal_entry(1, 5));
        sim.restart(1);
        assert!(sim.replica(1).repairing().is_some(), "replica 1 repairs op 5");
        assert_eq!(sim.recovering_or_will(), 1, "counted while it repairs");
        sim.crash(1);
        let disk = sim.down[1].clone().expect("a disk");
        assert!(
            opens_damaged(&sim.options, sim.nodes[1], disk),
            "its next start repairs again"
        );
        assert_eq!(sim.recovering_or_will(), 1, "counted while down");
        assert!(sim.will_recover(1), "chosen first to stay dead");
    }
}
