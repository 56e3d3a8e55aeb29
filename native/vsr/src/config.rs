//! Cluster configuration, numbering and quorums.

use crate::checksum::checksum;
use crate::membership::Membership;

/// A view number. The primary of view `v` is the member at position
/// `v mod n` of the membership ([`Membership::primary`]).
pub type View = u64;
/// An op number: the position of an entry in the log. Op 0 is the empty log.
pub type Op = u64;
/// A client's identity: random, chosen by the client, never reused.
pub type ClientId = u128;

/// The most replicas a cluster may have.
pub const MAX_REPLICAS: usize = 6;

/// The size of a quorum in a cluster of `replica_count` replicas: a strict
/// majority, `floor(n / 2) + 1`.
///
/// Any two quorums share at least one replica, which is what carries a
/// committed op across a view change. The same size serves for replication
/// and for view change; with an even `n` this tolerates `n / 2 - 1` failures,
/// the same as `n - 1` replicas would (flexible quorums could trade one for
/// the other; we keep the simple, symmetric rule).
pub fn quorum(replica_count: usize) -> usize {
    replica_count / 2 + 1
}

/// The range a host accepts for each limit a user may set (checked at
/// start by [`Config::check_ranges`]; docs/operations.md lists them). The
/// core itself is correct for any positive value (its arithmetic on these
/// saturates); the ranges keep a typo from making a cluster that never
/// times out, never resends or never checkpoints.
pub const RANGES: [(&str, u64, u64); 15] = [
    ("batch_max_requests", 1, 65_536),
    ("batch_max_bytes", 1, 1 << 30),
    ("pipeline_max", 1, 1_024),
    ("request_queue_max", 1, 1 << 20),
    ("client_table_max", 1, 1 << 20),
    ("message_entries_max", 1, 65_536),
    ("heartbeat_ticks", 1, 1_000_000),
    ("prepare_retry_ticks", 1, 1_000_000),
    ("view_change_ticks", 3, 1_000_000),
    ("resend_ticks", 1, 1_000_000),
    ("request_retry_ticks", 1, 1_000_000),
    ("checkpoint_interval", 0, 1 << 32),
    ("checkpoint_chunk_bytes", 1, 1 << 26),
    ("quiet_after_ticks", 0, 1_000_000),
    ("checkpoint_bytes", 0, 1 << 40),
];

/// A setting a [`Config`] may not have: which one, and why (`"must be
/// positive"`), so that a host can report the setting by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting's name, as in [`RANGES`].
    pub key: &'static str,
    /// What is wrong with its value.
    pub why: String,
}

impl ConfigError {
    fn new(key: &'static str, why: impl Into<String>) -> ConfigError {
        ConfigError { key, why: why.into() }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.key, self.why)
    }
}

impl From<ConfigError> for String {
    fn from(e: ConfigError) -> String {
        e.to_string()
    }
}

/// A deliberate protocol bug (or, for `SendBeforeSync`, a host bug),
/// compiled only with the `mutations` feature, so that the simulator's own
/// tests can prove its checkers catch broken code.
#[cfg(feature = "mutations")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mutation {
    /// The protocol as written.
    #[default]
    None,
    /// A peer that does not hold the entry a repairing replica asks for
    /// names no checkpoint, even one that covers the entry's op.
    NoEntryWithoutCheckpoint,
    /// The primary commits an op as soon as it is prepared, without a quorum.
    CommitWithoutQuorum,
    /// Execution ignores the client table, so a retried request runs twice.
    SkipClientTable,
    /// The new primary takes its own log instead of the best one it was sent.
    IgnoreBestLog,
    /// State transfer joins the new view with only the first chunk of its log
    /// (VR Revisited §5.2's truncate-then-fetch, whose window loses commits).
    InstallPartialLog,
    /// The primary serves reads without a quorum confirming it still leads.
    ReadWithoutQuorum,
    /// A replica serves a read submitted to it from its own state at once,
    /// with no read index from the primary: a lagging backup returns a
    /// state older than one an earlier read saw.
    ReadFromLocalState,
    /// A replica restarted without its state rejoins its view at once, with
    /// an empty log, instead of first fetching the view's log (VR Revisited
    /// §4.3's failure mode: it may vote away commits it had acknowledged).
    RecoverWithoutLog,
    /// A checkpoint records the client table as it is when the host's
    /// snapshot arrives, not as it was at the checkpoint's op: a replica
    /// that installs it (or restarts from it) then treats ops after the
    /// checkpoint as duplicates of themselves.
    CheckpointLateClientTable,
    /// A new primary adopts the highest commit number it was told, clamped
    /// to its chosen log's head, without checking that the chosen log holds
    /// the history that number was learned in (defect 1 of "Lose nothing":
    /// a commit number from a newer view's checkpoint commits an older
    /// view's uncommitted tail).
    AdoptUnverifiedCommit,
    /// An abdicated primary stays silent instead of campaigning (defect 2
    /// of "Lose nothing": two abdicated primaries of different views wait
    /// for each other forever).
    SilentAbdicatedPrimary,
    /// Campaign votes never expire (defect 6 of "Lose nothing": separate
    /// flaps of different replicas add up to a quorum against a primary
    /// that kept its own).
    KeepStaleVotes,
    /// Messages carry the bare cluster id, not the one folded with the
    /// settings that decide execution: replicas that differ in them talk
    /// (and then execute different commands).
    WireClusterIgnoresSettings,
    /// A replica serves its own checkpoint in state sync before a quorum
    /// vouches for it, so one host's divergent state can spread.
    ServeUnvouchedCheckpoint,
    /// A replica checks a vouch against its own digests below its anchor,
    /// and one that heals keeps its digests below the checkpoint it
    /// installs (the old behaviour): a late vouch for an op below a
    /// checkpoint it installed makes it diverge although its state is the
    /// quorum's.
    CheckDigestsBelowAnchor,
    /// A replica keeps a peer's pin while the peer asks for any prepares,
    /// even long after its sync finished (the old behaviour).
    PinOutlivesSync,
    /// A replica does not pin the checkpoint it sends a syncing peer: a
    /// sync that outlasts two checkpoint intervals restarts forever.
    UnpinnedSync,
    /// A request that repeats a session's latest number with another body
    /// is answered as a duplicate of it (with the other request's op).
    AnswerOtherBody,
    /// Read ids on the wire are the replica's own count, from 1 at every
    /// start, without the boot nonce: an answer delayed across a restart
    /// answers a new read.
    ReadIdsWithoutNonce,
    /// The primary stamps prepares with its own clock alone, as before
    /// cluster time: one clock that jumps ahead skews every later timestamp.
    UnboundedClock,
    /// A peer's clock reading is carried forward from the tick before it
    /// arrived, as before: a host held up between ticks stamps ahead.
    ClockFromTickBeforeArrival,
    /// With a bare quorum heard, the window is the peers' clocks alone, as
    /// before: with one of three down, a backup's clock that jumps ahead
    /// skews every later timestamp.
    PeersAloneWithBareQuorum,
    /// A primary keeps leading after installing a checkpoint its log does
    /// not hold, and announces the checkpoint's op as its commit number in
    /// its view: its backups execute that view's uncommitted tail.
    LeadOnAfterForeignCheckpoint,
    /// A replica still changing views answers a recovering replica's fence
    /// with the view it is changing to (the old behaviour): the recovering
    /// replica waits for ever for that view's log if the view never starts.
    FenceAnswerFromViewChange,
    /// The primary goes on preparing client entries after a
    /// reconfiguration entry, in the old epoch: they may commit there with
    /// ops the new epoch gives to other entries.
    PrepareAfterReconfiguration,
    /// The origin of a change consents to any `Confirm`, also for a change
    /// it already answered its host about: a change its caller was told
    /// failed can still be proposed and commit.
    ProposeWithoutConsent,
    /// The primary counts its learners' acknowledgements towards a commit
    /// quorum: a primary cut off from its backups commits with a learner
    /// alone, and the backups' next view loses what it committed.
    CountLearnerAcks,
    /// A learner enters its epoch as a member whatever life the entry
    /// records for it: a later life of it takes part at incarnation 0, as
    /// the one the others may have heard from.
    EnterAsAnotherLife,
    /// A replica answers a `Recovery` while a reconfiguration entry it has
    /// not executed is in its log: a member that lost its state after the
    /// entry committed recovers in the old epoch among replicas that have
    /// not entered the new one, and then takes part in the new epoch at a
    /// number its members never heard of, while they still count what its
    /// earlier life told them there.
    RecoveryAnsweredAboveAnEntry,
    /// A member that recovered among the old list after the entry was
    /// proposed takes part in the new epoch at once, at a number only the
    /// old list installed: a later life of it recovering among the new
    /// list takes the same number again.
    NoFenceInNewEpoch,
    /// A replica keeps its count of command bytes since the last
    /// checkpoint boundary across a checkpoint it installs (or restores),
    /// instead of starting it at 0 there: after a state sync its byte
    /// budget runs out at other ops than everyone else's.
    ByteCountSurvivesInstall,
    /// A checkpoint records the membership in force when the host's
    /// snapshot arrives, not as it was right after its op executed
    /// (membership design, 5.4): a snapshot answered after the replica
    /// executed a reconfiguration entry records the next epoch's list, so
    /// replicas whose hosts answer at different times form different
    /// checkpoints at one op.
    CheckpointLateMembership,
    /// A primary proposes quiet, and goes quiet, with an op it prepared
    /// still uncommitted: the op waits for whatever wakes the group next.
    QuietWithUncommittedOp,
    /// A backup goes quiet at its primary's quiet round with a request it
    /// forwarded still pending: if the forward was lost, nothing resends it.
    QuietWithPendingWork,
    /// A replica takes no notice of its primary's node going down
    /// (`Input::Peers`, `Input::Wake`): a quiet backup waits for its
    /// silence timer instead of campaigning at once.
    IgnorePeerDown,
    /// A backup woken from quiet does not count its primary as heard on
    /// its detector's word (`Replica::wake`): its last word from the
    /// primary is as old as the quiet spell, so it supports any campaign
    /// that wakes it, and campaigns itself at its next tick. This skips the
    /// one guard a woken replica has against deposing a primary a quorum
    /// hears (the pre-vote reads "heard" from the detector for the time it
    /// was quiet): a false suspicion at one backup then deposes it.
    QuietVotesForAnyCampaign,
    /// A wake does not carry the ticks the replica was quiet
    /// (`Input::Wake::elapsed_ticks` ignored): its timers resume as if no
    /// time had passed, and clock readings from before a quiet spell count
    /// as fresh, so a woken primary stamps with clocks as they were.
    WakeWithoutElapsedTicks,
    /// A view change that timed out does not lengthen the next one's
    /// timeout (`view_change.rs`, "Stalled view changes back off"): with
    /// links slower than the timeout every view change is overthrown by
    /// the next campaign, forever.
    NoViewChangeBackoff,
    /// Not the replica's bug but its host's (`vsr_host`): outputs that
    /// follow a write leave without waiting for the write to be durable,
    /// so a crash can take from the disk what a peer was told it holds.
    SendBeforeSync,
}

/// Everything a replica needs to know that does not change while it runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Identity of the cluster; messages stamped with another are dropped.
    pub cluster: u128,
    /// The members the cluster starts with (epoch 0). A replica's current
    /// membership is its own (`Replica::membership`); this one is where
    /// every replica begins.
    pub genesis: Membership,
    /// Most client requests in one prepare.
    pub batch_max_requests: usize,
    /// Most payload bytes in one prepare (a single larger request still goes alone).
    pub batch_max_bytes: usize,
    /// Most prepares in flight (prepared, not yet committed) at once.
    pub pipeline_max: u64,
    /// Most requests waiting at the primary for a place in a prepare.
    pub request_queue_max: usize,
    /// Most clients remembered in the client table.
    pub client_table_max: usize,
    /// Most log entries carried by one repair or view-change message.
    pub message_entries_max: usize,
    /// Ticks between heartbeats from an idle primary.
    pub heartbeat_ticks: u64,
    /// Ticks before a primary resends a prepare that a backup has not acknowledged.
    pub prepare_retry_ticks: u64,
    /// Ticks without hearing the primary before a backup starts a view change;
    /// also how long a view change may take before the next is tried.
    pub view_change_ticks: u64,
    /// Ticks between resends of view-change and repair messages.
    pub resend_ticks: u64,
    /// Ticks before a replica resends a client request it forwarded.
    pub request_retry_ticks: u64,
    /// Take a checkpoint after executing every op that is a multiple of
    /// this (0: never; the log is then kept whole).
    pub checkpoint_interval: u64,
    /// Also take a checkpoint once the commands (payload bytes) executed
    /// since the previous checkpoint boundary reach this many bytes, so the
    /// log's memory is bounded in bytes as well as in ops (default 64 MiB;
    /// 0: by ops alone). Only with `checkpoint_interval > 0`
    /// ([`crate::checkpoint::boundary`]).
    pub checkpoint_bytes: u64,
    /// Most checkpoint bytes in one state-sync message.
    pub checkpoint_chunk_bytes: usize,
    /// Seed of the replica's timer jitter, so that replicas do not time out in lockstep.
    pub jitter_seed: u64,
    /// A number the host chooses afresh, at random, every time it starts a
    /// replica (a restart included). The replica's read ids on the wire are
    /// derived from it, so that an answer to a read of an earlier
    /// incarnation, delayed in the network, is never taken for an answer
    /// to a new read (see `read.rs`).
    pub boot_nonce: u64,
    /// The member this replica is, as its host knows it (member id and the
    /// epoch that admitted it; a disk-mode host reads it from the store's
    /// identity), if the host knows. A restart takes it over whatever
    /// member its durable list holds at its slot: a slot is reused once
    /// its member has left, and a replica that left may restart from a
    /// list where its slot is another's. `None`: the member at its slot in
    /// its durable list (or the genesis).
    pub member: Option<(crate::membership::MemberId, crate::membership::Epoch)>,
    /// Quiet groups (docs/protocol.md, "Quiet groups"): a primary with
    /// nothing to do for this many ticks proposes a quiet round, after
    /// which the group gets no ticks and sends nothing until an input
    /// wakes it. 0 (the default): never quiet, the protocol as before.
    /// Not a setting the replicas must agree on: one that has it 0
    /// answers every quiet round "no", and its group stays awake.
    pub quiet_after_ticks: u64,
    /// A deliberate bug for the simulator's self-test.
    #[cfg(feature = "mutations")]
    pub mutation: Mutation,
}

impl Config {
    /// A configuration with the default limits and timeouts, for a cluster
    /// of `replica_count` members numbered by their slots
    /// ([`Membership::numbered`]).
    ///
    /// Panics unless `replica_count` is 1 to [`MAX_REPLICAS`]: hosts check
    /// a count they are given before (the NIF's option decoding does), or
    /// build their genesis themselves ([`Config::with_genesis`]).
    pub fn new(cluster: u128, replica_count: u8) -> Config {
        let genesis = Membership::numbered(replica_count as usize)
            .unwrap_or_else(|e| panic!("a cluster of {replica_count} replicas: {e}"));
        Config::with_genesis(cluster, genesis)
    }

    /// A configuration with the default limits and timeouts, starting
    /// with the members `genesis`.
    pub fn with_genesis(cluster: u128, genesis: Membership) -> Config {
        Config {
            cluster,
            genesis,
            batch_max_requests: 256,
            batch_max_bytes: 1 << 20,
            pipeline_max: 8,
            request_queue_max: 4096,
            client_table_max: 4096,
            message_entries_max: 64,
            heartbeat_ticks: 5,
            prepare_retry_ticks: 10,
            view_change_ticks: 40,
            resend_ticks: 10,
            request_retry_ticks: 20,
            checkpoint_interval: 0,
            checkpoint_bytes: 64 << 20,
            checkpoint_chunk_bytes: 1 << 20,
            jitter_seed: 0,
            boot_nonce: 0,
            member: None,
            quiet_after_ticks: 0,
            #[cfg(feature = "mutations")]
            mutation: Mutation::None,
        }
    }

    /// Checks the limits make sense; the error names the first that does not.
    /// (The genesis needs no check: a [`Membership`] is well formed by
    /// construction.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("batch_max_requests", self.batch_max_requests as u64),
            ("batch_max_bytes", self.batch_max_bytes as u64),
            ("pipeline_max", self.pipeline_max),
            ("request_queue_max", self.request_queue_max as u64),
            ("client_table_max", self.client_table_max as u64),
            ("message_entries_max", self.message_entries_max as u64),
            ("heartbeat_ticks", self.heartbeat_ticks),
            ("prepare_retry_ticks", self.prepare_retry_ticks),
            ("resend_ticks", self.resend_ticks),
            ("request_retry_ticks", self.request_retry_ticks),
            ("checkpoint_chunk_bytes", self.checkpoint_chunk_bytes as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::new(name, "must be positive"));
        }
        if self.view_change_ticks <= self.heartbeat_ticks.saturating_mul(2) {
            return Err(ConfigError::new(
                "view_change_ticks",
                "must exceed twice heartbeat_ticks",
            ));
        }
        // A campaign vote counts while it is heard again within
        // view_change_ticks (view_change.rs): a campaign must be resent
        // sooner than that, or no vote would outlive the wait for the next.
        if self.resend_ticks >= self.view_change_ticks {
            return Err(ConfigError::new(
                "resend_ticks",
                "must be below view_change_ticks",
            ));
        }
        Ok(())
    }

    /// The cluster id every message carries and must carry to be accepted:
    /// `cluster` folded with the settings that decide what the replicated
    /// state machine does. `client_table_max` decides evictions, hence which
    /// requests execute; `checkpoint_interval` and `checkpoint_bytes` which
    /// ops are checkpoints (compared by digest); `checkpoint_chunk_bytes` how
    /// a state sync cuts a checkpoint. Replicas that differ in any of them
    /// would execute different commands or never agree on a checkpoint, so
    /// they must not form a quorum together: to each other they are
    /// another cluster (`Stats::dropped_foreign_cluster`). The other fields
    /// only set one replica's pace and limits. `checkpoint_bytes` is
    /// folded in only when it decides something (checkpoints on, a budget
    /// set), so a configuration where it does not keeps the wire cluster it
    /// had before the setting existed.
    pub fn wire_cluster(&self) -> u128 {
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::WireClusterIgnoresSettings) {
            return self.cluster;
        }
        let mut seed = Vec::with_capacity(50);
        seed.extend_from_slice(b"visor-wire");
        seed.extend_from_slice(&self.cluster.to_le_bytes());
        for setting in [
            self.client_table_max as u64,
            self.checkpoint_interval,
            self.checkpoint_chunk_bytes as u64,
        ] {
            seed.extend_from_slice(&setting.to_le_bytes());
        }
        if self.checkpoint_interval > 0 && self.checkpoint_bytes > 0 {
            seed.extend_from_slice(b"checkpoint_bytes");
            seed.extend_from_slice(&self.checkpoint_bytes.to_le_bytes());
        }
        checksum(&seed)
    }

    /// The value of each limit a user may set, in the order of [`RANGES`]
    /// (so `Config::new(..).range_values()` are the defaults a host
    /// reports next to the ranges).
    pub fn range_values(&self) -> [u64; RANGES.len()] {
        [
            self.batch_max_requests as u64,
            self.batch_max_bytes as u64,
            self.pipeline_max,
            self.request_queue_max as u64,
            self.client_table_max as u64,
            self.message_entries_max as u64,
            self.heartbeat_ticks,
            self.prepare_retry_ticks,
            self.view_change_ticks,
            self.resend_ticks,
            self.request_retry_ticks,
            self.checkpoint_interval,
            self.checkpoint_chunk_bytes as u64,
            self.quiet_after_ticks,
            self.checkpoint_bytes,
        ]
    }

    /// Checks every limit is within its [`RANGES`] entry; the error names
    /// the first that is not, and its range.
    pub fn check_ranges(&self) -> Result<(), ConfigError> {
        for ((name, min, max), value) in RANGES.iter().zip(self.range_values()) {
            if !(*min..=*max).contains(&value) {
                return Err(ConfigError::new(
                    name,
                    format!("must be an integer in {min}..{max}, got {value}"),
                ));
            }
        }
        Ok(())
    }

    #[cfg(feature = "mutations")]
    pub(crate) fn mutated(&self, mutation: Mutation) -> bool {
        self.mutation == mutation
    }

    /// Whether a deliberate bug is compiled in and chosen (always false
    /// without the `mutations` feature). A mutated replica breaks its own
    /// invariants too (`Replica::invariants`); whoever checks them leaves
    /// it to the checkers that judge the cluster, which must find the bug.
    pub fn is_mutated(&self) -> bool {
        #[cfg(feature = "mutations")]
        return self.mutation != Mutation::None;
        #[cfg(not(feature = "mutations"))]
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorums_intersect_for_every_size() {
        for n in 1..=MAX_REPLICAS {
            let q = quorum(n);
            assert!(q <= n, "a quorum must be reachable with everyone up (n={n})");
            assert!(2 * q > n, "two quorums must intersect (n={n})");
        }
        assert_eq!((1..=6).map(quorum).collect::<Vec<_>>(), vec![1, 2, 2, 3, 3, 4]);
    }

    #[test]
    fn wire_cluster_depends_on_the_settings_that_decide_execution_only() {
        let base = Config::new(7, 3);
        let other_cluster = Config::new(8, 3);
        assert_ne!(base.wire_cluster(), other_cluster.wire_cluster());
        let mut pace = base.clone();
        pace.quiet_after_ticks = 20;
        pace.heartbeat_ticks += 1;
        pace.batch_max_bytes += 1;
        pace.pipeline_max += 1;
        assert_eq!(base.wire_cluster(), pace.wire_cluster());
        let base = Config {
            checkpoint_interval: 10,
            ..base
        };
        let changes: [fn(&mut Config); 4] = [
            |c| c.client_table_max += 1,
            |c| c.checkpoint_interval += 1,
            |c| c.checkpoint_chunk_bytes += 1,
            |c| c.checkpoint_bytes += 1,
        ];
        for change in changes {
            let mut c = base.clone();
            change(&mut c);
            assert_ne!(base.wire_cluster(), c.wire_cluster());
        }
    }

    #[test]
    fn a_configuration_without_a_byte_budget_keeps_its_wire_cluster() {
        // The seed as it was before `checkpoint_bytes` existed: a cluster
        // where it decides nothing keeps its id.
        let old_id = |interval: u64| {
            let mut seed = b"visor-wire".to_vec();
            seed.extend_from_slice(&7u128.to_le_bytes());
            for setting in [4096u64, interval, 1 << 20] {
                seed.extend_from_slice(&setting.to_le_bytes());
            }
            checksum(&seed)
        };
        let c = Config::new(7, 3);
        assert_eq!(c.checkpoint_bytes, 64 << 20);
        assert_eq!(
            c.wire_cluster(),
            old_id(0),
            "no checkpoints: the budget decides nothing"
        );
        let mut by_ops = c.clone();
        by_ops.checkpoint_interval = 100;
        by_ops.checkpoint_bytes = 0;
        assert_eq!(by_ops.wire_cluster(), old_id(100));
        let mut budget = by_ops.clone();
        budget.checkpoint_bytes = 64 << 20;
        assert_ne!(budget.wire_cluster(), by_ops.wire_cluster());
        let mut other = budget.clone();
        other.checkpoint_bytes += 1;
        assert_ne!(budget.wire_cluster(), other.wire_cluster());
    }

    #[test]
    fn defaults_are_in_range_and_huge_values_are_not() {
        let mut c = Config::new(1, 3);
        assert!(c.check_ranges().is_ok());
        c.checkpoint_interval = 10_000;
        assert!(c.check_ranges().is_ok());
        c.pipeline_max = u64::MAX;
        let error = c.check_ranges().unwrap_err();
        assert_eq!(error.key, "pipeline_max");
        assert!(
            error
                .to_string()
                .contains("pipeline_max must be an integer in 1..1024"),
            "{error}"
        );
        let mut c = Config::new(1, 3);
        c.view_change_ticks = u64::MAX;
        assert!(
            c.validate().is_ok(),
            "the core itself copes (saturating arithmetic)"
        );
        assert_eq!(c.check_ranges().unwrap_err().key, "view_change_ticks");
    }

    #[test]
    #[should_panic(expected = "a cluster of 7 replicas")]
    fn a_cluster_of_more_than_max_replicas_is_refused() {
        Config::new(1, 7);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let mut c = Config::new(1, 3);
        assert!(c.validate().is_ok());
        c.pipeline_max = 0;
        assert_eq!(c.validate().unwrap_err().key, "pipeline_max");
    }
}
