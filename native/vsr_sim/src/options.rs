//! What one simulation run looks like, derived entirely from its seed.

use vsr::Config;

use crate::network::NetworkOptions;
use crate::rng::Rng;

/// Everything a run needs; [`Options::from_seed`] chooses it all from a seed,
/// and scripted scenarios build it by hand.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// The replicas' configuration (replica count, batch and pipeline limits, timeouts).
    pub config: Config,
    pub clients: usize,
    /// Probability that an idle client starts a request on a tick.
    pub request_probability: f64,
    /// Per tick: probability of a linearizable read through a random replica.
    pub read_probability: f64,
    /// Largest request payload, in bytes.
    pub payload_max: usize,
    /// Ticks a client waits for a reply before submitting again.
    pub client_retry_ticks: u64,
    pub network: NetworkOptions,
    /// Per tick: probability that the partition changes.
    pub partition_probability: f64,
    /// Per tick and replica: probability of a crash.
    pub crash_probability: f64,
    /// Memory mode: a crashed replica restarts with nothing and must recover
    /// from the others; at most `n - quorum` replicas are down or recovering
    /// at once. Otherwise disk mode: every replica keeps a `vsr_storage`
    /// store on a simulated disk and restarts from it, any number at once.
    pub amnesia: bool,
    /// Disk mode: the share of crashes that strike inside the write path
    /// (between any two writes or syncs), tearing what was not synced.
    pub torn_crash_probability: f64,
    /// Disk mode, per restart: probability of bit rot in the stored log or
    /// in one superblock copy (within the fault model: docs/storage.md).
    pub corruption_probability: f64,
    /// How long a crashed replica stays down, in ticks.
    pub downtime_max: u64,
    /// Per tick and replica: probability that its timer skips a tick (clock jitter).
    pub tick_skip_probability: f64,
    /// Per tick and replica: probability that its wall clock jumps, by 1 s
    /// to an hour forward or back, or back to the true time (its
    /// monotonic clock runs on). Every clock is set right when the faults
    /// heal.
    pub clock_jump_probability: f64,
    /// Disk mode, per tick and replica: probability of a disk fault while
    /// the replica runs: its syncs fail (an I/O error that loses the
    /// writes it was to make durable) or its disk is full, for up to
    /// `downtime_max` ticks (the host pauses the replica: no ticks, no
    /// deliveries, its outputs held, the sync retried every tick), or its
    /// next sync takes up to 300 ticks (the host is stalled: messages
    /// queue up and arrive together once it returns), or its next write
    /// to the WAL lands up to 8 KiB off (found at its next start). At most
    /// `n - quorum` replicas have a faulty disk or are recovering at once.
    pub disk_fault_probability: f64,
    /// Disk mode, per restart while faults strike: probability that the
    /// disk faults as the replica boots: reads of one of its files fail
    /// (a latent sector error), its syncs fail, or it is full. A boot that
    /// fails leaves the replica down, its disk as the boot left it, and it
    /// is restarted later; within the same budget as `disk_fault_probability`.
    pub boot_fault_probability: f64,
    /// Ticks of faults before the liveness phase.
    pub fault_ticks: u64,
    /// Once every fault is healed, every outstanding request must finish, and
    /// every replica catch up, within this many ticks.
    pub liveness_ticks: u64,
    /// The host answers a `TakeSnapshot` at once half the time, otherwise
    /// after up to this many ticks (a crash in between loses the answer).
    pub snapshot_delay_max: u64,
    /// A deliberately broken host for the divergence check's self-test:
    /// this replica's host serialises a state that differs from the others'.
    pub lying_host: Option<u8>,
    /// The chance that the lying host lies at a given checkpoint: 1.0 lies
    /// at every one; below, its state is wrong at some checkpoints and
    /// right at others (a snapshot encoding that is not deterministic), so
    /// a replica's own checkpoint can match the quorum's after one that
    /// did not.
    pub lying_rate: f64,
    /// Disk mode: the stores compact their WAL once this many bytes are
    /// dead (`Store::set_compaction_bytes`); small, so seeds compact often.
    pub compaction_bytes: u64,
    /// A misconfigured host for scenarios: this replica runs with this
    /// configuration instead of `config` (same cluster and replica count).
    pub config_override: Option<(u8, Config)>,
    /// Liveness with a dead minority: when the faults heal, between 1 and
    /// `n - quorum` replicas, chosen by the seed, never come back (they
    /// stay crashed), and every request submitted through a live replica
    /// must still finish within `liveness_ticks`. Off in `from_seed`
    /// (`vopr --dead-minority` turns it on), so the default seeds stay as
    /// they are. Such runs have no lying host (`Simulator::new` drops it):
    /// with `n - quorum` replicas dead, a liar would be one fault too many.
    pub dead_minority: bool,
    /// Random membership changes while the faults run: grow, shrink and
    /// replace (lists of 3 to 5 members), on nodes of their own, through a
    /// random member, while at most one replica is unavailable at a time.
    /// Off in `from_seed` (`vopr --membership` turns it on), so the default
    /// seeds stay as they are; not with `dead_minority`.
    pub membership_changes: bool,
    /// Check `Replica::invariants` also when the configuration carries a
    /// deliberate bug (`Config::is_mutated`). Off by default: a mutation
    /// is there to show that the cluster's checkers catch it, and it
    /// breaks the replica's own invariants too, often first.
    pub invariants_under_mutation: bool,
    /// Quiet groups (docs/protocol.md, "Quiet groups"): the replicas run
    /// with `Config::quiet_after_ticks` set, the hosts stop ticking a
    /// quiet replica and wake it before any other input, each node's
    /// failure detector (`vsr_host::Detector`, its beats crossing the
    /// simulated network) feeds them `Input::Peers` and `Input::Wake`, and,
    /// in random runs, load comes in bursts separated by idle spans long
    /// enough for the group to go quiet. Off in `from_seed` (`vopr
    /// --quiet` turns it on: `Options::with_quiet`), so the default seeds
    /// stay as they are.
    pub quiet: bool,
    /// With `quiet`: a perfect oracle instead of the detector (a peer's
    /// node is up while its replica runs and the links both ways work; no
    /// beats), for comparison (`vopr --quiet --oracle`).
    pub oracle: bool,
    /// With `quiet`: the chance that a node's crash reaches its peers'
    /// detectors at once (distribution's `nodedown`, as a killed process's
    /// closed connections do); otherwise it goes silently (a machine that
    /// vanished) and the detectors time it out.
    pub nodedown_probability: f64,
}

/// The share of random seeds run with a lying host (`lying_host`).
const LYING_HOST_SEEDS: f64 = 0.1;

impl Options {
    /// A quiet run: perfect network, no faults, no spontaneous client load.
    pub fn quiet(seed: u64, replica_count: u8, clients: usize) -> Options {
        let mut config = Config::new(0x5eed_0000 ^ seed as u128, replica_count);
        config.jitter_seed = seed;
        Options {
            seed,
            config,
            clients,
            request_probability: 0.0,
            read_probability: 0.0,
            payload_max: 16,
            client_retry_ticks: 400,
            network: NetworkOptions::perfect(),
            partition_probability: 0.0,
            crash_probability: 0.0,
            amnesia: false,
            torn_crash_probability: 0.0,
            corruption_probability: 0.0,
            compaction_bytes: vsr_storage::store::DEFAULT_COMPACTION_BYTES,
            downtime_max: 0,
            tick_skip_probability: 0.0,
            clock_jump_probability: 0.0,
            disk_fault_probability: 0.0,
            boot_fault_probability: 0.0,
            fault_ticks: 0,
            liveness_ticks: 4_000,
            snapshot_delay_max: 0,
            lying_host: None,
            lying_rate: 1.0,
            config_override: None,
            dead_minority: false,
            membership_changes: false,
            invariants_under_mutation: false,
            quiet: false,
            oracle: false,
            nodedown_probability: 1.0,
        }
    }

    /// Turns quiet groups on (`Options::quiet`), with a `quiet_after_ticks`
    /// drawn from the seed (apart from `from_seed`'s draws, which stay as
    /// they are).
    pub fn with_quiet(mut self) -> Options {
        let mut rng = Rng::new(self.seed ^ 0x0071_e7ed);
        self.quiet = true;
        self.config.quiet_after_ticks = rng.range(10, 100);
        self.nodedown_probability = 0.5;
        self
    }

    /// A random run: every knob drawn from the seed.
    pub fn from_seed(seed: u64) -> Options {
        let mut rng = Rng::new(seed ^ 0x0b7e_c7ed);
        let replica_count = rng.range(1, 6) as u8;
        let clients = if rng.chance(0.5) {
            rng.range(1, 8)
        } else {
            rng.range(1, 64)
        } as usize;
        let mut options = Options::quiet(seed, replica_count, clients);
        let c = &mut options.config;
        c.batch_max_requests = rng.range(1, 32) as usize;
        c.batch_max_bytes = rng.range(16, 2048) as usize;
        c.pipeline_max = rng.range(1, 8);
        c.message_entries_max = rng.range(1, 64) as usize;
        c.request_queue_max = rng.range(1, 128) as usize;
        // Sometimes fewer table slots than clients, so eviction happens.
        c.client_table_max = if rng.chance(0.2) {
            rng.range(1, clients as u64) as usize
        } else {
            4096
        };
        options.request_probability = rng.float(0.005, 0.2);
        options.read_probability = rng.float(0.0, 0.3);
        options.payload_max = rng.range(0, 256) as usize;
        options.client_retry_ticks = rng.range(100, 600);
        let delay_min = rng.range(1, 3);
        options.network = NetworkOptions {
            loss: rng.float(0.0, 0.3),
            duplicate: rng.float(0.0, 0.1),
            corrupt: if rng.chance(0.5) {
                rng.float(0.0, 0.02)
            } else {
                0.0
            },
            delay_min,
            delay_max: delay_min + rng.range(0, 30),
            tail: rng.float(0.0, 0.3),
            ..NetworkOptions::perfect()
        };
        options.partition_probability = if rng.chance(0.8) {
            rng.float(0.0, 0.01)
        } else {
            0.0
        };
        options.crash_probability = if rng.chance(0.7) {
            rng.float(0.0, 0.002)
        } else {
            0.0
        };
        options.downtime_max = rng.range(10, 600);
        options.amnesia = rng.chance(0.5);
        options.tick_skip_probability = rng.float(0.0, 0.1);
        options.fault_ticks = rng.range(1_000, 4_000);
        options.liveness_ticks = 20_000;
        // Drawn last, so the knobs above stay what they were for every seed.
        options.torn_crash_probability = rng.float(0.0, 0.8);
        options.corruption_probability = if rng.chance(0.5) { rng.float(0.0, 0.5) } else { 0.0 };
        // Checkpoints: never in some seeds, often in others (so that the log
        // is truncated and replicas sync state), in small chunks (so that a
        // sync takes many messages). Drawn after everything above.
        let c = &mut options.config;
        c.checkpoint_interval = if rng.chance(0.25) { 0 } else { rng.range(3, 64) };
        c.checkpoint_chunk_bytes = rng.range(16, 512) as usize;
        options.snapshot_delay_max = rng.range(0, 50);
        // WAL compaction: from every checkpoint on to never. Drawn last.
        options.compaction_bytes = if rng.chance(0.2) {
            u64::MAX
        } else {
            rng.range(1, 16_384)
        };
        // A host that serialises a wrong state (it diverges and heals at
        // every checkpoint), in a few seeds with checkpoints and a replica
        // to spare. Drawn last.
        let lying = rng.chance(LYING_HOST_SEEDS);
        if lying && replica_count >= 3 && options.config.checkpoint_interval > 0 {
            options.lying_host = Some(rng.range(0, replica_count as u64 - 1) as u8);
        }
        // Wall clock jumps, in half the seeds. Drawn last.
        options.clock_jump_probability = if rng.chance(0.5) {
            rng.float(0.0, 0.002)
        } else {
            0.0
        };
        // Disk faults while running. Drawn last.
        options.disk_fault_probability = if rng.chance(0.5) {
            rng.float(0.0, 0.001)
        } else {
            0.0
        };
        // Large packets lost more often, and stragglers that arrive after
        // every timeout (the longest: a pin's or a sync's, four view-change
        // timeouts), in half the seeds each. Drawn last.
        let n = &mut options.network;
        n.loss_per_kib = if rng.chance(0.5) { rng.float(0.0, 0.3) } else { 0.0 };
        n.stray = if rng.chance(0.5) {
            rng.float(0.0, 0.01)
        } else {
            0.0
        };
        let longest = options.config.view_change_ticks * 4;
        (n.stray_min, n.stray_max) = (longest + 1, longest * 3);
        // Disk faults at restart. Drawn last.
        options.boot_fault_probability = if rng.chance(0.5) { rng.float(0.0, 0.5) } else { 0.0 };
        // A host that lies at some checkpoints only, in half the seeds with
        // a lying host. Drawn last, and only for those.
        if options.lying_host.is_some() && rng.chance(0.5) {
            options.lying_rate = rng.float(0.2, 0.8);
        }
        // Checkpoints by bytes as well as by ops (`checkpoint_bytes`): a
        // budget of a command or a few (a byte checkpoint every op or every
        // few ops: payloads are up to 256 bytes), of a few dozen commands,
        // or one no run reaches (by ops alone), or none. Drawn last.
        options.config.checkpoint_bytes = match rng.range(0, 3) {
            0 => 0,
            1 => rng.range(1, 1_024),
            2 => rng.range(1_024, 16_384),
            _ => 64 << 20,
        };
        options
    }

    pub fn replica_count(&self) -> usize {
        self.config.genesis.n()
    }

    /// The configuration replica `r` runs with.
    pub fn config_of(&self, r: u8) -> Config {
        match &self.config_override {
            Some((o, config)) if *o == r => config.clone(),
            _ => self.config.clone(),
        }
    }
}
