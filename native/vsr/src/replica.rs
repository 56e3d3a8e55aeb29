//! The replica: one member of a cluster, as a pure state machine.
//!
//! A replica is driven by [`Input`]s and answers with [`Output`]s; it never
//! touches a clock, a socket or a file itself. The host executes the outputs
//! **in order**, and an output that follows a write may only take effect once
//! that write is durable: a `Send` or `Reply` after a `WriteLog` leaves only
//! when the entry is on disk. This is raft-rs's "persist, then send" rule; it
//! lets a host group-commit (one fsync for the writes of many steps) without
//! any completion callback. The replica puts sends that need no durability
//! (a primary's prepares to its backups) *before* its own write, so the
//! network and the disk work in parallel.
//!
//! Normal operation (primary = view mod n) lives in this file; view change
//! and state transfer in `view_change.rs`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::checkpoint::Checkpoint;
use crate::checksum::{checksum, root_checksum};
use crate::client_table::{ClientTable, Outcome};
#[cfg(feature = "mutations")]
use crate::config::Mutation;
use crate::config::{ClientId, Config, Op, View};
use crate::log::{run_bytes, Log, RUN_BYTES};
use crate::membership::{Epoch, MemberId, Membership, Slot, MAX_SLOTS};
use crate::message::{decode, encode, DecodeError, Message, Prepare, Request, Sender};
use crate::reconfig::{Change, ChangeResult, OriginChange};

/// Where a replica is in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Processing requests in `view`.
    Normal,
    /// Moving to `view`: not accepting prepares until the view starts.
    ViewChange,
    /// Restarted without its state: takes part in nothing until it has
    /// recovered (see `recovery.rs`).
    Recovering,
    /// Restarted from disk with one damaged entry in its log: takes part in
    /// nothing until a peer has sent that entry (see `repair.rs`).
    Repairing,
    /// Its checkpoint digest differs from the one a quorum holds at the
    /// same op: its host's state diverged. It executes, answers and serves
    /// nothing until it has installed a checkpoint a quorum vouches for
    /// (see `checkpoint.rs`), but keeps its part in the log protocol: only
    /// reported by `Replica::status`, underneath it is in one of the others.
    Diverged,
}

/// What the replica must keep across a restart besides its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DurableState {
    /// The highest view the replica has taken part in. Never decreases,
    /// except when a replica that lost its log recovers it from the others
    /// (it then takes the view a quorum reports: see `recovery.rs`).
    pub view: View,
    /// The last view in which the replica's log was a normal view's log.
    pub log_view: View,
    /// A commit number known when this was written (a lower bound).
    pub commit: Op,
    /// The crash vector: the incarnation known for every replica, this one
    /// included. Kept so that a replica restarted from disk neither forgets
    /// a fence it took part in nor speaks as an incarnation others dropped.
    pub incarnations: [u64; MAX_SLOTS],
    /// The replica lost its log and has not finished recovering it: on
    /// restart it must recover again ([`Replica::recovering_from`]), never
    /// resume from the (empty or partial) log it holds.
    pub recovering: bool,
    /// The membership the replica is in: `None` for its configuration's
    /// genesis (what a store written before memberships existed holds).
    pub membership: Option<Membership>,
    /// What the replica is in that membership.
    pub role: Role,
    /// The epoch in which the replica last fenced its incarnation
    /// (docs/design/membership.md, 2.10): 0 until epochs change.
    pub fenced_epoch: Epoch,
    /// The op and checksum of the reconfiguration entry that began its
    /// epoch ((0, 0) in the genesis): what its `EpochNotice`s name, so that
    /// a replica behind that holds the entry takes it as committed. Kept
    /// because the log may lose the entry (a restart replays only what is
    /// past the durable epoch; a checkpoint truncates the log).
    pub epoch_start: (Op, u128),
}

/// What a replica is in its membership. Today every replica is a
/// `Member`; the other roles belong to membership changes
/// (docs/design/membership.md), and a store may record them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Role {
    /// In the list: it acknowledges, votes and may lead.
    #[default]
    Member,
    /// Catching up to join the next epoch's list; counts in nothing.
    Learner,
    /// Left out of the epoch it entered; serves state to the new members
    /// until a quorum of them has entered.
    Leaving,
    /// Gone for good: it handles nothing more.
    Removed,
}

/// A client's submission, handed to the replica the client talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    pub client: ClientId,
    /// 0 to register; afterwards the session returned by registration.
    pub session: Op,
    /// 0 to register; afterwards 1, 2, 3, ... one outstanding at a time.
    pub request: u64,
    pub payload: Vec<u8>,
}

/// Something that happened to the replica.
#[derive(Clone, Debug)]
pub enum Input<'a> {
    /// Time passed: one tick. `now_ns` is the host's wall clock, used only
    /// for timestamps: every message carries it, and a primary stamps
    /// prepares with it kept within its quorum's clocks (`clock.rs`;
    /// timestamps stay strictly increasing whatever it says: a reading past
    /// `i64::MAX` ns, in 2262, is read as that). `mono_ns` is
    /// the host's monotonic clock (any origin, never jumps), against which
    /// the peers' clocks are carried forward between their messages.
    Tick { now_ns: u64, mono_ns: u64 },
    /// Bytes arrived from a peer replica.
    Receive(&'a [u8]),
    /// A client submits a request through this replica.
    Submit(Submission),
    /// A linearizable read through this replica; `id` is the host's, unique
    /// among this replica's reads in flight (it never goes on the wire: it
    /// comes back in `Output::ReadReady`).
    Read { id: u64 },
    /// The host's answer to `Output::TakeSnapshot { op }`: its application
    /// state as of op `op`, serialised.
    Snapshot { op: Op, app: Vec<u8> },
    /// The host asks for a change of the membership to `target`
    /// ([`Replica::change_target`]: `Membership::next` from this replica's
    /// membership, named `ChangeId { origin: <this member's id>, id }`);
    /// answered once by
    /// `Output::Reconfigured { id, .. }`. `ticks`: how long the change may
    /// take before it is given up, if it was not yet consented to.
    Reconfigure {
        id: u64,
        target: Box<Membership>,
        ticks: u64,
    },
    /// Wakes a quiet replica ([`Replica::is_quiet`]; docs/protocol.md,
    /// "Quiet groups"): fed before the input that wakes it, or alone for a
    /// failure detector's event that concerns it. `elapsed_ticks`: how
    /// long it was quiet, in its ticks (ticks it was fed meanwhile count
    /// already). `up`: one bit per slot whose node the detector holds up.
    /// To an awake replica it is `Peers { up }`. (An input other than a
    /// tick that reaches a quiet replica without it wakes it too, with no
    /// time elapsed.)
    Wake {
        now_ns: u64,
        mono_ns: u64,
        elapsed_ticks: u64,
        up: u16,
    },
    /// The failure detector's view of the peers changed: one bit per slot
    /// whose node it holds up. Until the first, every peer is up.
    Peers { up: u16 },
}

/// Something the host must do, in order.
#[derive(Clone, Debug)]
pub enum Output {
    /// The change `Input::Reconfigure { id, .. }` asked for ended so.
    Reconfigured { id: u64, result: ChangeResult },
    /// The replica entered an epoch (after the entry's `Execute`, and
    /// after the `WriteState` that records it): its list and its role in
    /// it. A host that routes by slot takes the list from here.
    Epoch { membership: Box<Membership>, role: Role },
    /// The replica was left out of `epoch`, and a quorum of its members has
    /// entered it: the replica handles nothing more; its host stops it
    /// (and keeps its store, marked removed).
    Removed { epoch: Epoch },
    /// Send bytes to a peer replica (best effort: the protocol tolerates
    /// loss): the one in slot `to` whose member id is `id`. A host that
    /// names nodes by member id routes by `id`; one that routes by slot
    /// alone must know the slot's owner (a slot is reused once its member
    /// has left: docs/design/membership.md).
    Send { to: Slot, id: MemberId, bytes: Vec<u8> },
    /// Make the log `log[..=after] ++ entries`, durably.
    WriteLog { after: Op, entries: Vec<Arc<Prepare>> },
    /// Make the durable state this, durably.
    WriteState(Box<DurableState>),
    /// The entry is committed: apply the requests whose outcome is `Executed`,
    /// in order. Every replica emits the same sequence of `Execute`s.
    Execute {
        entry: Arc<Prepare>,
        outcomes: Vec<Outcome>,
    },
    /// A request submitted through this replica is settled.
    Reply {
        client: ClientId,
        request: u64,
        op: Op,
        outcome: Outcome,
    },
    /// Read `id` may now be served from this replica's state: it has executed
    /// every op committed before the read was submitted (up to `op`).
    ReadReady { id: u64, op: Op },
    /// Serialise the application state now (it is the state after `op`:
    /// this follows `op`'s `Execute`) and answer with `Input::Snapshot`,
    /// now or later. A snapshot that never comes only delays the next
    /// checkpoint.
    TakeSnapshot { op: Op },
    /// Make this checkpoint durable. The durable log then becomes the
    /// checkpoint followed by the stored entries after its op, if they chain
    /// from its checksum (otherwise none). Like `WriteLog`, what follows
    /// takes effect only once it is durable.
    WriteCheckpoint(Arc<Checkpoint>),
    /// Replace the application state with this snapshot, the state after
    /// `op`; the `Execute`s that follow continue from `op + 1`.
    InstallSnapshot { op: Op, app: Arc<Vec<u8>> },
    /// This replica's checkpoint at `op` has digest `digest`, but a quorum
    /// holds `quorum` there: the host's state diverged (a nondeterministic
    /// application, or memory corruption). The replica is now
    /// `Status::Diverged`; the host should log it as an error. A later
    /// `InstallSnapshot` replaces the state with the quorum's.
    Diverged { op: Op, digest: u128, quorum: u128 },
}

/// Counters of things worth knowing but not worth failing over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Received bytes rejected, by reason.
    pub dropped_truncated: u64,
    pub dropped_corrupt: u64,
    pub dropped_unknown_format: u64,
    pub dropped_foreign_cluster: u64,
    pub dropped_unknown_sender: u64,
    /// Bodies that do not decode or make claims no correct replica makes,
    /// and DoViewChanges refused by a new primary (protocol.md, "Fault
    /// model").
    pub dropped_malformed: u64,
    /// Messages from an incarnation of their sender that has since restarted.
    pub dropped_stale: u64,
    /// Requests the primary refused because its queue was full.
    pub dropped_requests: u64,
    /// Requests refused because their session's latest request has the same
    /// number but another body (`Outcome::Refused`): counted where a
    /// submission is refused at once, and by every replica that executes one.
    pub refused_requests: u64,
    /// Messages sent.
    pub sent: u64,
    /// View changes this replica completed (as primary or backup).
    pub views_started: u64,
    /// Campaigns this replica started (its silence timer, its primary's
    /// node down, a view change that timed out), not counting campaigns
    /// of others it joined: the simulator's "no view change in an idle
    /// span without a fault" check reads it (`vopr --quiet`).
    pub campaigns: u64,
    /// Times this replica found its checkpoint digest differs from the one
    /// a quorum holds at the same op (it then went `Status::Diverged`): its
    /// host's state diverged. Must stay 0 with a deterministic application.
    pub checkpoint_divergence: u64,
    /// Checkpoints installed by state sync.
    pub checkpoints_installed: u64,
    /// Quiet rounds this replica proposed as primary (`quiet_after_ticks`):
    /// with the wakes below, what quiet costs a group that is not idle.
    pub quiet_rounds: u64,
    /// Times this replica woke from quiet.
    pub wakes: u64,
}

/// A forwarded request waiting to be settled, for retry.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) request: Request,
    pub(crate) sent_tick: u64,
}

/// A repair answer the primary is sending to one peer (`pump_repair`):
/// the chunk `next..=last` still to send, by runs of at most about
/// `RUN_BYTES` of commands, and the last op of each run sent and not yet
/// acknowledged, oldest first.
#[derive(Clone, Debug)]
pub(crate) struct RepairStream {
    pub(crate) view: View,
    pub(crate) next: Op,
    pub(crate) last: Op,
    pub(crate) ends: VecDeque<Op>,
}

/// The replica state machine. `Clone` and `Debug` let a model checker
/// (`native/vsr_model`) branch a cluster's state and fingerprint it.
#[derive(Clone, Debug)]
pub struct Replica {
    pub(crate) config: Config,
    /// This replica's slot in `membership`.
    pub(crate) index: Slot,
    /// Its member id, and the epoch that admitted it: with the slot, what
    /// its messages name it by.
    pub(crate) id: MemberId,
    pub(crate) joined: Epoch,
    /// The members it counts quorums over and sends to.
    pub(crate) membership: Membership,
    pub(crate) role: Role,
    pub(crate) fenced_epoch: Epoch,
    pub(crate) status: Status,
    pub(crate) view: View,
    pub(crate) log_view: View,
    pub(crate) log: Log,
    /// Highest op executed here.
    pub(crate) commit_min: Op,
    /// Highest op known to be committed.
    pub(crate) commit_max: Op,
    pub(crate) client_table: ClientTable,

    pub(crate) ticks: u64,
    pub(crate) now_ns: u64,
    /// The host's monotonic clock at the last tick (`Input::Tick`).
    pub(crate) mono_ns: u64,
    /// The peers' clocks, as last heard (for timestamps: `clock.rs`).
    pub(crate) clocks: crate::clock::Clocks,
    pub(crate) jitter_state: u64,
    pub(crate) timeout_jitter: u64,
    /// View changes this replica saw time out since it was last in normal
    /// status for long: each doubles the next one's timeout, up to
    /// `2^VIEW_CHANGE_BACKOFF_MAX` (`view_change.rs`, `tick_view_change`).
    pub(crate) view_change_attempts: u32,
    /// Ticks in normal status since it last left it.
    pub(crate) normal_ticks: u64,

    // Primary, normal status.
    /// Highest op each replica acknowledged holding in this view.
    pub(crate) acked: [Op; MAX_SLOTS],
    pub(crate) last_heard: [u64; MAX_SLOTS],
    pub(crate) queue: VecDeque<Request>,
    /// (client, request, payload checksum) of every queued request.
    pub(crate) queued: HashSet<(ClientId, u64, u128)>,
    pub(crate) last_broadcast_tick: u64,
    pub(crate) last_retry_tick: u64,
    /// The repair answer being sent to each peer, run by run
    /// (`RepairStream`): at most one per peer, replaced by its next
    /// `RequestPrepares`.
    pub(crate) repair_streams: [Option<RepairStream>; MAX_SLOTS],

    // Backup, normal status.
    pub(crate) last_primary_tick: u64,
    /// Highest op the primary is known to have, for repair.
    pub(crate) primary_op: Op,
    pub(crate) last_repair_tick: Option<u64>,
    /// The last op of the repair chunk asked for.
    pub(crate) repair_until: Op,
    pub(crate) last_start_view_request: Option<u64>,
    /// The newest view this replica has heard is running (or been told of).
    pub(crate) view_seen: View,
    pub(crate) last_do_view_change_request: Option<u64>,

    // View change.
    pub(crate) status_since: u64,
    /// The view this replica campaigns for (0: not campaigning).
    pub(crate) campaign: View,
    /// The view each replica last campaigned for, as heard.
    pub(crate) votes: [View; MAX_SLOTS],
    /// When each replica's vote was last heard: a vote expires with its
    /// sender's campaign (`check_campaign`).
    pub(crate) vote_ticks: [u64; MAX_SLOTS],
    pub(crate) last_resend_tick: u64,
    pub(crate) last_campaign_tick: u64,
    pub(crate) dvcs: Vec<Option<crate::view_change::Dvc>>,
    pub(crate) staging: Option<crate::view_change::Staging>,

    // Origin: requests submitted here, until settled.
    pub(crate) pending: BTreeMap<ClientId, Pending>,
    pub(crate) reads: crate::read::Reads,
    /// The primary's commit number advanced since it last told the backups.
    pub(crate) commit_unannounced: bool,
    /// Backups (one bit per slot) that must hear the commit number at the
    /// end of this step: origins of requests just executed here, and of
    /// reads just confirmed. The others hear it with the next prepare or,
    /// at the latest, the next tick (`announce_commit`).
    pub(crate) commit_urgent: u16,
    /// The op this replica's view started with, as its primary.
    pub(crate) view_start_op: Op,
    /// Crash vector: the incarnation this replica knows for every replica.
    pub(crate) incarnations: [u64; MAX_SLOTS],
    pub(crate) recovery: Option<crate::recovery::Recovery>,
    /// The primary's admitted membership change, while it leads its view.
    pub(crate) change: Option<Change>,
    /// The change asked for through this replica, until its host is told.
    pub(crate) origin_change: Option<OriginChange>,
    /// The op and checksum of the entry that began this epoch ((0, 0) for
    /// the genesis, or when not known).
    pub(crate) epoch_start: (Op, u128),
    /// A leaving replica: the new members (one bit per slot) that said they
    /// entered its epoch.
    pub(crate) epoch_started: u16,
    /// When each sender slot was last sent an `EpochNotice`.
    pub(crate) notice_ticks: [u64; MAX_SLOTS],
    /// Set while a restart re-executes the committed log.
    pub(crate) replaying: bool,
    /// The membership in force after the op last executed: the installed
    /// checkpoint's (the genesis below any), then each executed entry's
    /// target. A checkpoint records it. The live `membership` may be ahead
    /// of it: a learner's list is its primary's, a recovering replica's
    /// the newest it heard of, a restarted one's the durable one, while
    /// each executes older epochs' ops first (`vopr --membership`).
    pub(crate) executed_membership: Membership,
    /// When this replica, behind, last asked for a newer epoch's log.
    pub(crate) last_start_epoch_request: Option<u64>,
    /// The replica (slot, member id) of a newer epoch it last asked: the
    /// checkpoint chunks it answers with are taken (`asked_across`).
    pub(crate) asked_across: Option<(Slot, MemberId)>,
    /// Committed entries fetched from a newer epoch, not yet installed.
    pub(crate) epoch_staging: Option<crate::reconfig::EpochStaging>,
    /// The newest list a member of a newer epoch told this replica of
    /// (`EpochNotice`), whose members it asks in turn for what it missed.
    pub(crate) newer_list: Option<Membership>,
    /// Which of them it asks next.
    pub(crate) start_epoch_turn: u64,
    /// The last sender of a newer epoch this replica heard, while it is
    /// behind it: asked again every `view_change_ticks` (`tick_behind`).
    pub(crate) newer_sender: Option<Sender>,
    /// A replica started as a learner: the life of this start (never 0),
    /// recorded by the primary in the entry that admits it. 0 for one
    /// started as a member.
    pub(crate) life: u64,
    /// A learner: the target its primary's `Learn` named (`None` until one
    /// came).
    pub(crate) learn_target: Option<Membership>,
    /// The primary: the learners it admitted (new members of the change it
    /// holds or the entry it proposed), as `(slot, id, joined)`.
    pub(crate) learners: Vec<(Slot, MemberId, Epoch)>,
    /// The primary: each learner slot's life, as its `Learning` said (0:
    /// not heard).
    pub(crate) learner_lives: [u64; MAX_SLOTS],
    /// The primary: when it last sent its learners `Learn`.
    pub(crate) last_learn_tick: u64,
    pub(crate) repair: Option<Box<crate::repair::Repair>>,
    pub(crate) checkpoints: crate::checkpoint::Checkpoints,

    // Quiet groups (`quiet.rs`).
    /// Quiet: ticks do nothing, and any other input wakes it.
    pub(crate) quiet: bool,
    /// The slots whose nodes the host's detector holds up (one bit each).
    pub(crate) up: u16,
    /// Primary: the last tick it had something to do (an op not yet
    /// committed, acknowledged or announced, a request queued, ...).
    pub(crate) idle_since: u64,
    /// Primary: the round of its quiet proposal in flight (0: none), and
    /// the backups (one bit per slot) that went quiet in it.
    pub(crate) quiet_round: u64,
    pub(crate) quiet_acks: u16,
    /// Primary, just woken: until this tick it waits for fresh clock
    /// readings before preparing (`awaiting_fresh_clocks`).
    pub(crate) woke_at: Option<u64>,
    /// Restarted with quiet groups on: tell the primary at the first tick.
    pub(crate) announce: bool,
    /// Backup, woken: it counts its primary as heard on its detector's
    /// word alone, and has heard nothing from it since (a quiet primary
    /// sends nothing). At its silence timer it asks before it campaigns
    /// (`ask_quiet_primary`). Kept with the epoch and view it was woken
    /// in: it vouches for that view's primary only, not for a view or
    /// epoch it entered since without hearing its primary (nor for
    /// itself, elected since).
    pub(crate) vouched: Option<(crate::membership::Epoch, View)>,
    /// Backup: the epoch, view and tick at which it asked its silent
    /// primary (a `PrepareOk`, which wakes a quiet one); it campaigns only
    /// if nothing comes for another silence timeout.
    pub(crate) asked_primary: Option<(crate::membership::Epoch, View, u64)>,

    pub(crate) stats: Stats,
    pub(crate) out: Vec<Output>,
}

impl Replica {
    /// A fresh replica with an empty log, in view 0.
    ///
    /// Panics if the configuration is invalid or `index` is outside it: that
    /// is a bug of the caller, checked before any replica runs.
    pub fn new(config: Config, index: Slot) -> Replica {
        let (mut replica, _) = Replica::restart(config, index, DurableState::default(), Vec::new())
            .expect("a valid configuration and an empty log");
        // A fresh replica has sent nothing, so the primary of view 0 may lead at once.
        replica.status = Status::Normal;
        replica
    }

    /// A replica restarted from what it had made durable, plus the outputs of
    /// re-executing its committed prefix (the host's application state is gone
    /// with the crash and is rebuilt from these).
    ///
    /// A replica that was the primary of its view does not resume as primary:
    /// it may have sent prepares it never wrote, so it waits for a view change.
    pub fn restart(
        config: Config,
        index: Slot,
        state: DurableState,
        entries: Vec<Arc<Prepare>>,
    ) -> Result<(Replica, Vec<Output>), String> {
        Replica::restart_from(config, index, state, None, entries)
    }

    /// [`Replica::restart`] from a checkpoint and the stored entries: those
    /// after the checkpoint's op that chain from it are kept (entries at or
    /// below it may be passed too, and are ignored). The outputs begin with
    /// the checkpoint's `InstallSnapshot` and go on with the `Execute`s of
    /// the committed entries after it.
    pub fn restart_from(
        config: Config,
        index: Slot,
        state: DurableState,
        checkpoint: Option<Arc<Checkpoint>>,
        entries: Vec<Arc<Prepare>>,
    ) -> Result<(Replica, Vec<Output>), String> {
        config.validate()?;
        if state.role == Role::Learner {
            return Err("a learner restarts as a new learner (Replica::learner), with a new life".into());
        }
        let membership = state.membership.unwrap_or(config.genesis);
        let listed = membership.member(index).copied();
        let me = match (config.member, listed) {
            // The host names it: the member at its slot must be it, or, if
            // it was left out (leaving, removed), its slot may be another's.
            (Some((id, joined)), Some(m)) if m.id == id && m.joined == joined => m,
            (Some((id, joined)), _) if state.role != Role::Member => crate::membership::Member {
                slot: index,
                id,
                joined,
                incarnation: 0,
                life: 0,
            },
            (Some((id, _)), _) => {
                return Err(format!(
                    "member {id:#x} is not in its durable list at slot {index}: another store's state"
                ))
            }
            (None, Some(m)) => m,
            // Left out of its epoch, it restarts leaving (or removed), as
            // the genesis member at its slot (a host that added it names
            // it: `Config::member`).
            (None, None) if state.role != Role::Member && config.genesis.contains(index) => {
                *config.genesis.member(index).expect("contained")
            }
            (None, None) => {
                return Err(format!(
                    "replica index {index} outside a cluster of {}",
                    membership.n()
                ))
            }
        };
        Replica::assemble(config, index, me, state, checkpoint, entries)
    }

    /// Builds the replica `me` (its slot, member id and `joined`) from
    /// its durable state, checkpoint and stored entries, re-executing the
    /// committed prefix.
    pub(crate) fn assemble(
        config: Config,
        index: Slot,
        me: crate::membership::Member,
        state: DurableState,
        checkpoint: Option<Arc<Checkpoint>>,
        entries: Vec<Arc<Prepare>>,
    ) -> Result<(Replica, Vec<Output>), String> {
        let membership = state.membership.unwrap_or(config.genesis);
        if state.log_view > state.view {
            return Err("log_view is ahead of view".into());
        }
        if state.recovering {
            return Err("the replica had not finished recovering: use Replica::recovering_from".into());
        }
        let log = match &checkpoint {
            None => Log::from_entries(root_checksum(config.cluster), entries)
                .ok_or("the stored log is not a hash chain from this cluster's root")?,
            Some(c) => {
                let base = Log::at(c.op, c.checksum, c.timestamp);
                let after: Vec<Arc<Prepare>> = entries.into_iter().filter(|e| e.op > c.op).collect();
                // Entries that do not chain from the checkpoint were never
                // committed (the checkpoint is): the log starts at it.
                base.clone().extended(after).unwrap_or(base)
            }
        };
        let jitter_state = config.jitter_seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let resumes_normal = state.log_view == state.view && membership.primary(state.view) != index;
        let mut replica = Replica {
            status: if resumes_normal {
                Status::Normal
            } else {
                Status::ViewChange
            },
            view: state.view,
            log_view: state.log_view,
            commit_min: 0,
            commit_max: state.commit.min(log.op()),
            log,
            client_table: ClientTable::new(config.client_table_max),
            ticks: 0,
            now_ns: 0,
            mono_ns: 0,
            clocks: Default::default(),
            jitter_state,
            timeout_jitter: 0,
            view_change_attempts: 0,
            normal_ticks: 0,
            acked: [0; MAX_SLOTS],
            last_heard: [0; MAX_SLOTS],
            queue: VecDeque::new(),
            queued: HashSet::new(),
            last_broadcast_tick: 0,
            last_retry_tick: 0,
            repair_streams: std::array::from_fn(|_| None),
            last_primary_tick: 0,
            primary_op: 0,
            last_repair_tick: None,
            repair_until: 0,
            last_start_view_request: None,
            view_seen: 0,
            last_do_view_change_request: None,
            status_since: 0,
            campaign: 0,
            votes: [0; MAX_SLOTS],
            vote_ticks: [0; MAX_SLOTS],
            last_resend_tick: 0,
            last_campaign_tick: 0,
            dvcs: vec![None; MAX_SLOTS],
            staging: None,
            pending: BTreeMap::new(),
            reads: crate::read::Reads::new(config.boot_nonce),
            commit_unannounced: false,
            commit_urgent: 0,
            view_start_op: 0,
            incarnations: state.incarnations,
            recovery: None,
            change: None,
            origin_change: None,
            epoch_start: state.epoch_start,
            epoch_started: 0,
            notice_ticks: [0; MAX_SLOTS],
            replaying: false,
            executed_membership: config.genesis,
            last_start_epoch_request: None,
            asked_across: None,
            epoch_staging: None,
            newer_list: None,
            newer_sender: None,
            start_epoch_turn: 0,
            life: 0,
            learn_target: None,
            learners: Vec::new(),
            learner_lives: [0; MAX_SLOTS],
            last_learn_tick: 0,
            repair: None,
            checkpoints: Default::default(),
            quiet: false,
            up: crate::quiet::ALL_UP,
            idle_since: 0,
            quiet_round: 0,
            quiet_acks: 0,
            woke_at: None,
            announce: config.quiet_after_ticks > 0,
            vouched: None,
            asked_primary: None,
            stats: Stats::default(),
            out: Vec::new(),
            config,
            index,
            id: me.id,
            joined: me.joined,
            membership,
            role: state.role,
            fenced_epoch: state.fenced_epoch,
        };
        replica.timeout_jitter = replica.next_jitter();
        // The replay executes ops from the log's base on, under the list in
        // force there, not the durable one, which may be of an epoch whose
        // entry lies ahead in the log: a checkpoint it captures before
        // that entry must record the older list, as everyone else's did.
        replica.executed_membership = checkpoint
            .as_ref()
            .and_then(|c| c.membership)
            .unwrap_or(replica.config.genesis);
        if let Some(checkpoint) = checkpoint {
            replica.restore_checkpoint(checkpoint)?;
        }
        replica.replaying = true;
        replica.execute_committed();
        replica.replaying = false;
        replica.drop_entries_of_an_unentered_epoch();
        replica.fence_if_unrecorded();
        let outputs = std::mem::take(&mut replica.out);
        Ok((replica, outputs))
    }

    /// After a restart's replay: entries after a reconfiguration entry of
    /// an epoch this replica has not entered (it is above what it
    /// executed) belong to that epoch, and came from its members while
    /// the entering's durable write was not yet durable (the crash kept
    /// the log's records but not the superblock's). Nothing of that epoch
    /// was sent (persist, then send), so nobody counted them; kept, the
    /// old epoch's view change could adopt them, and prepare after its own
    /// entry (`vopr --membership` seeds 822 and 899). They go.
    fn drop_entries_of_an_unentered_epoch(&mut self) {
        let epoch = self.membership.epoch();
        let entry = ((self.commit_min + 1)..self.log.op()).find(|&op| {
            self.log
                .get(op)
                .and_then(|e| e.reconfiguration())
                .is_some_and(|t| t.epoch() > epoch)
        });
        if let Some(op) = entry {
            self.log.truncate_after(op);
            self.commit_max = self.commit_max.min(op);
            self.out.push(Output::WriteLog {
                after: op,
                entries: Vec::new(),
            });
        }
    }

    /// Feeds one input; returns what the host must do, in order.
    pub fn step(&mut self, input: Input<'_>) -> Vec<Output> {
        if self.role == Role::Removed {
            return Vec::new(); // it handles nothing more
        }
        let tick = matches!(input, Input::Tick { .. });
        if self.quiet
            && !matches!(
                input,
                Input::Tick { .. } | Input::Wake { .. } | Input::Peers { .. }
            )
        {
            self.wake(0, self.up); // the host did not say for how long
        }
        match input {
            Input::Tick { now_ns, mono_ns } => self.on_tick(now_ns, mono_ns),
            Input::Receive(bytes) => self.on_bytes(bytes),
            Input::Submit(submission) => self.on_submit(submission),
            Input::Read { id } => self.on_read_submit(id),
            Input::Snapshot { op, app } => self.on_snapshot(op, app),
            Input::Reconfigure { id, target, ticks } => self.on_reconfigure_input(id, *target, ticks),
            Input::Wake {
                now_ns,
                mono_ns,
                elapsed_ticks,
                up,
            } => self.on_wake(now_ns, mono_ns, elapsed_ticks, up),
            Input::Peers { up } => self.on_peers(up),
        }
        // A change is admitted by the primary of one view, for that view.
        if self.change.as_ref().is_some_and(|c| c.view != self.view) || !self.is_primary() {
            self.change = None;
        }
        self.refresh_learners();
        self.announce_commit(tick);
        #[cfg(debug_assertions)]
        self.assert_invariants();
        std::mem::take(&mut self.out)
    }

    /// Debug builds: the replica checks its own invariants after every
    /// step (`invariants.rs`), except with a deliberate bug compiled in,
    /// which the simulator's checkers must find instead.
    #[cfg(debug_assertions)]
    fn assert_invariants(&self) {
        if self.config.is_mutated() {
            return;
        }
        if let Err(broken) = self.invariants() {
            panic!("replica {} broke an invariant: {broken}", self.index);
        }
    }

    pub fn index(&self) -> Slot {
        self.index
    }
    /// The host's name for this replica's node.
    pub fn member_id(&self) -> MemberId {
        self.id
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The members this replica counts quorums over, in its epoch.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn status(&self) -> Status {
        if self.is_diverged() {
            return Status::Diverged;
        }
        self.status
    }
    pub fn view(&self) -> View {
        self.view
    }
    pub fn log_view(&self) -> View {
        self.log_view
    }
    /// Op of the last log entry.
    pub fn op(&self) -> Op {
        self.log.op()
    }
    /// Highest op executed here.
    pub fn commit(&self) -> Op {
        self.commit_min
    }
    /// Highest op known to be committed (may be ahead of what is executed here).
    pub fn commit_max(&self) -> Op {
        self.commit_max
    }
    pub fn log(&self) -> &Log {
        &self.log
    }
    /// View changes this replica saw time out in a row (review probe).
    #[doc(hidden)]
    pub fn view_change_attempts(&self) -> u32 {
        self.view_change_attempts
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Whether this replica is the primary of a view in normal status.
    pub fn is_primary(&self) -> bool {
        self.status == Status::Normal && self.is_primary_of_view()
    }
    /// The primary of the current view (which may not have started yet).
    pub fn primary(&self) -> Slot {
        self.membership.primary(self.view)
    }
    /// A learner: the target its primary's `Learn` named, once one came.
    pub fn learn_target(&self) -> Option<&Membership> {
        self.learn_target.as_ref()
    }
    /// The op this replica, as the origin of a membership change, consented
    /// to have it proposed at, while that consent is outstanding.
    pub fn consent(&self) -> Option<Op> {
        self.origin_change.as_ref().and_then(|o| o.consent)
    }
    /// How far a chunked state transfer has got: `(ops staged, ops needed)`.
    pub fn staging_progress(&self) -> Option<(Op, Op)> {
        self.staging.as_ref().map(|s| s.progress())
    }
    /// Number of clients in the client table.
    pub fn clients(&self) -> usize {
        self.client_table.len()
    }
    /// The durable state as it stands.
    pub fn durable_state(&self) -> DurableState {
        DurableState {
            view: self.view,
            log_view: self.log_view,
            commit: self.commit_max,
            incarnations: self.incarnations,
            // One that kept its log is fenced, not amnesiac: its log is
            // sound, and a restart checks again whether it must recover.
            recovering: self.status == Status::Recovering
                && !self.recovery.as_ref().is_some_and(|r| r.kept_log),
            membership: Some(self.membership),
            role: self.role,
            fenced_epoch: self.fenced_epoch,
            epoch_start: self.epoch_start,
        }
    }

    pub(crate) fn is_primary_of_view(&self) -> bool {
        // A learner's list may hold its slot under another member (a
        // genesis placeholder, or a slot reused): it leads nothing.
        self.role == Role::Member && self.membership.primary(self.view) == self.index
    }

    pub(crate) fn quorum(&self) -> usize {
        self.membership.quorum()
    }

    /// The `turn`-th other member after this one, in the membership's
    /// order (round-robin over the others for `turn = 0, 1, 2, ...`), or
    /// `None` in a cluster of one.
    pub(crate) fn peer_in_turn(&self, turn: u64) -> Option<Slot> {
        let members = self.membership.members();
        let n = members.len() as u64;
        let me = members.iter().position(|m| m.slot == self.index)? as u64;
        let peer = members[((me + 1 + turn % (n - 1).max(1)) % n) as usize].slot;
        (peer != self.index).then_some(peer)
    }

    /// The other members' slots, in the membership's order (a `Copy` of
    /// the list, so that callers may send while they iterate).
    pub(crate) fn peers(&self) -> impl Iterator<Item = Slot> {
        let (membership, me) = (self.membership, self.index);
        (0..membership.n())
            .map(move |i| membership.members()[i].slot)
            .filter(move |&s| s != me)
    }

    #[cfg(feature = "mutations")]
    pub(crate) fn mutated(&self, mutation: Mutation) -> bool {
        self.config.mutated(mutation)
    }

    /// xorshift64*: timer jitter only, so replicas do not time out in lockstep.
    pub(crate) fn next_jitter(&mut self) -> u64 {
        let mut x = self.jitter_state | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.jitter_state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % self.config.view_change_ticks.max(1)
    }

    // ---- Sending -------------------------------------------------------

    pub(crate) fn send(&mut self, to: Slot, message: &Message) {
        let id = self.id_of(to);
        self.send_to(to, id, message);
    }

    /// Sends to the node `id` in slot `to`, member or not (a replica that
    /// left, or the sender of another epoch's message).
    pub(crate) fn send_to(&mut self, to: Slot, id: MemberId, message: &Message) {
        // Its own slot may name another node: an earlier owner that left.
        debug_assert!(to != self.index || id != self.id, "a replica sends to itself");
        let bytes = self.encode(message);
        self.stats.sent += 1;
        self.out.push(Output::Send { to, id, bytes });
    }

    pub(crate) fn broadcast(&mut self, message: &Message) {
        let bytes = self.encode(message);
        for to in self.peers() {
            self.stats.sent += 1;
            self.out.push(Output::Send {
                to,
                id: self.id_of(to),
                bytes: bytes.clone(),
            });
        }
    }

    fn encode(&self, message: &Message) -> Vec<u8> {
        let sender = Sender {
            epoch: self.membership.epoch(),
            slot: self.index,
            id: self.id,
            joined: self.joined,
        };
        encode(
            self.config.wire_cluster(),
            sender,
            &self.incarnations,
            self.now_ns,
            message,
        )
    }

    /// The member id of the member in `slot` (0 for a slot outside the
    /// list: the replica sends only to members, and answers only senders
    /// its gate let through).
    pub(crate) fn id_of(&self, slot: Slot) -> MemberId {
        match self.membership.member(slot) {
            Some(m) => m.id,
            None => self.learners.iter().find(|l| l.0 == slot).map_or(0, |l| l.1),
        }
    }

    pub(crate) fn write_state(&mut self) {
        let state = self.durable_state();
        self.out.push(Output::WriteState(Box::new(state)));
    }

    // ---- Inputs --------------------------------------------------------

    fn on_bytes(&mut self, bytes: &[u8]) {
        match decode(self.config.wire_cluster(), bytes) {
            // From its own slot, but another node: the slot's earlier owner,
            // leaving (the gate answers it as any stranger).
            Ok(decoded) if decoded.from != self.index || decoded.sender.id != self.id => {
                self.on_envelope(decoded)
            }
            Ok(_) => self.stats.dropped_unknown_sender += 1,
            Err(error) => {
                let counter = match error {
                    DecodeError::Truncated => &mut self.stats.dropped_truncated,
                    DecodeError::Corrupt => &mut self.stats.dropped_corrupt,
                    DecodeError::UnknownFormat => &mut self.stats.dropped_unknown_format,
                    DecodeError::ForeignCluster => &mut self.stats.dropped_foreign_cluster,
                    DecodeError::UnknownSender => &mut self.stats.dropped_unknown_sender,
                    DecodeError::Malformed => &mut self.stats.dropped_malformed,
                };
                *counter += 1;
            }
        }
    }

    pub(crate) fn on_message(&mut self, from: Slot, message: Message) {
        if self.is_diverged() && matches!(message, Message::Request { .. }) {
            return; // it leads nothing: the origin retries towards another
        }
        if self.role == Role::Learner && !self.learner_takes(&message) {
            return;
        }
        if self.role != Role::Member && self.role != Role::Learner {
            // A leaving replica takes part in nothing: it waits for the
            // new members to say they entered.
            if let Message::EpochStarted { epoch } = message {
                self.on_epoch_started(from, epoch);
            }
            return;
        }
        match message {
            Message::Request { request } => self.on_request(request),
            Message::RequestEntry { op, checksum } => self.on_request_entry(from, op, checksum),
            Message::Entry { .. } | Message::NoEntry { .. } => {} // only a repairing replica wants one
            Message::Prepare {
                view,
                commit,
                entry,
                checkpoint,
            } => {
                self.vouch(checkpoint);
                self.on_prepare(from, view, commit, entry)
            }
            Message::PrepareOk {
                view,
                op,
                checksum,
                round,
                checkpoint,
            } => {
                self.on_checkpoint_report(from, checkpoint);
                self.on_prepare_ok(from, view, op, checksum, round)
            }
            Message::Commit {
                view,
                commit,
                round,
                checkpoint,
            } => {
                self.vouch(checkpoint);
                self.on_commit(from, view, commit, round)
            }
            Message::Read { id } => self.on_read(from, id),
            Message::ReadOk { view, id, op } => self.on_read_ok(from, view, id, op),
            Message::RequestPrepares {
                view,
                from: first,
                to,
            } => self.on_request_prepares(from, view, first, to),
            Message::StartViewChange { view, current } => self.on_start_view_change(from, view, current),
            Message::DoViewChange {
                view,
                log_view,
                op,
                commit,
                from: base,
                from_checksum,
                entries,
            } => {
                let dvc = crate::view_change::Dvc {
                    log_view,
                    op,
                    commit,
                    base,
                    base_checksum: from_checksum,
                    entries,
                };
                self.on_do_view_change(from, view, dvc)
            }
            Message::RequestDoViewChange { view, from: base } => {
                self.on_request_do_view_change(from, view, base)
            }
            Message::StartView {
                view,
                op,
                commit,
                from: base,
                from_checksum,
                entries,
            } => self.on_start_view(from, view, op, commit, base, from_checksum, entries),
            Message::RequestStartView { view, from: base } => self.on_request_start_view(from, view, base),
            // Recovery is handled before the crash-vector check, in `on_envelope`;
            // a late answer after recovery completed needs nothing.
            Message::Recovery { .. }
            | Message::RecoveryResponse { .. }
            | Message::RecoveryFence { .. }
            | Message::FenceAlone { .. }
            | Message::RecoveryFenced { .. } => {}
            Message::CheckpointChunk {
                op,
                digest,
                total,
                offset,
                bytes,
            } => self.on_checkpoint_chunk(from, op, digest, total, offset, bytes),
            Message::RequestCheckpoint { op, digest, offset } => {
                self.on_request_checkpoint(from, (op, digest), offset)
            }
            Message::Reconfigure { target, ticks } => self.on_reconfigure(from, target, ticks),
            Message::ReconfigureAnswer { change, answer } => self.on_reconfigure_answer(change, answer),
            Message::Confirm { change, view, op } => self.on_confirm(from, change, view, op),
            Message::Confirmed { change, view, op } => self.on_confirmed(change, view, op),
            Message::Refused { change } => self.on_refused(change),
            Message::EpochStarted { epoch } => self.on_epoch_started(from, epoch),
            // Only across epochs (the gate, `on_envelope`): within one,
            // there is nothing to say.
            Message::EpochNotice { .. }
            | Message::Leaving { .. }
            | Message::RequestStartEpoch { .. }
            | Message::StartEpoch { .. } => {}
            // Between a primary and its learners only (`learner.rs`).
            Message::Learn { .. } | Message::Learning { .. } => {}
            Message::Quiet {
                view,
                commit,
                round,
                checkpoint,
            } => {
                self.vouch(checkpoint);
                self.on_quiet(from, view, commit, round)
            }
            Message::QuietOk {
                view,
                op,
                checksum,
                round,
                checkpoint,
                quiet,
            } => {
                self.on_checkpoint_report(from, checkpoint);
                self.on_prepare_ok(from, view, op, checksum, round);
                self.on_quiet_ok(from, view, round, quiet)
            }
        }
    }

    fn on_tick(&mut self, now_ns: u64, mono_ns: u64) {
        self.ticks += 1;
        self.now_ns = self.now_ns.max(now_ns.min(crate::clock::MAX_CLOCK_NS));
        self.mono_ns = self.mono_ns.max(mono_ns);
        self.clocks.ticked(self.mono_ns);
        if self.quiet {
            return; // time passes, nothing else (`quiet.rs`)
        }
        if self.role == Role::Leaving {
            return self.tick_leaving();
        }
        if self.role == Role::Learner {
            return self.tick_learner();
        }
        self.tick_origin();
        self.tick_behind();
        self.tick_diverged();
        self.announce_boot();
        self.tick_backoff();
        match self.status {
            Status::Normal if self.is_primary_of_view() => self.tick_primary(),
            Status::Normal => self.tick_backup(),
            Status::ViewChange => self.tick_view_change(),
            Status::Recovering => self.tick_recovering(),
            Status::Repairing => return self.tick_repairing(),
            Status::Diverged => {} // reported only (`is_diverged`), never held
        }
        self.tick_campaign();
        self.tick_sync();
        self.retry_pending();
        self.retry_reads();
    }

    // ---- Clients -------------------------------------------------------

    fn on_submit(&mut self, submission: Submission) {
        let request = Request {
            client: submission.client,
            session: submission.session,
            request: submission.request,
            origin: self.index,
            payload: submission.payload,
        };
        let settled = if request.is_reconfiguration() {
            Some(Outcome::Refused) // the reconfiguration entries' client id
        } else {
            self.client_table.settled(&request)
        };
        if let Some(outcome) = settled {
            #[cfg(feature = "mutations")]
            let outcome = self.mutated_refusal(&request, outcome);
            if outcome == Outcome::Refused {
                self.stats.refused_requests += 1;
            }
            self.out.push(Output::Reply {
                client: request.client,
                request: request.request,
                op: outcome.named_op().unwrap_or(0),
                outcome,
            });
            return;
        }
        self.pending.insert(
            request.client,
            Pending {
                request: request.clone(),
                sent_tick: self.ticks,
            },
        );
        self.route(request);
    }

    /// Sends a request towards the primary (or queues it, on the primary).
    fn route(&mut self, request: Request) {
        if self.status != Status::Normal {
            return; // retried once a view is running
        }
        if self.is_primary_of_view() {
            self.on_request(request);
        } else {
            let primary = self.primary();
            self.send(primary, &Message::Request { request });
        }
    }

    fn retry_pending(&mut self) {
        let due: Vec<Request> = self
            .pending
            .values_mut()
            .filter(|p| p.sent_tick.saturating_add(self.config.request_retry_ticks) <= self.ticks)
            .map(|p| {
                p.sent_tick = self.ticks;
                p.request.clone()
            })
            .collect();
        for request in due {
            // Executed here meanwhile under another origin (its caller
            // submitted it first elsewhere, then here): that origin
            // answered, not this replica, and the primary prepares a
            // settled request no more, so it would be retried for ever,
            // its caller unanswered (`vopr --quiet --membership` seeds 109
            // and 290: a group never quiet). It is answered here from the
            // client table, as a submission of a settled request is.
            // Only an outcome that names the op it executed at is an
            // answer (as `settle_pending_after_install` does): an older
            // request than its client's latest (`Duplicate { op: 0 }`)
            // means its caller moved on and is dropped unanswered, and a
            // refusal (another body under its number) goes on through the
            // log, where its execution answers it (review 15).
            if let Some(outcome) = self.client_table.settled(&request) {
                if let Some(op) = outcome.named_op() {
                    self.pending.remove(&request.client);
                    self.out.push(Output::Reply {
                        client: request.client,
                        request: request.request,
                        op,
                        outcome,
                    });
                    continue;
                }
                if outcome == (Outcome::Duplicate { op: 0 }) {
                    self.pending.remove(&request.client);
                    continue;
                }
            }
            self.route(request);
        }
    }

    /// A request reached the primary: queue it unless it is already in hand.
    fn on_request(&mut self, request: Request) {
        if !self.is_primary() || request.is_reconfiguration() {
            return; // the origin retries towards the right primary
        }
        let key = (request.client, request.request, checksum(&request.payload));
        // The same request with the same body in hand. One with another
        // body is not the same request: it goes through the log, where
        // execution refuses whichever of the two comes second, the same on
        // every replica, and its origin answers it `Refused`.
        let in_flight = self.queued.contains(&key)
            || ((self.commit_min + 1)..=self.log.op()).any(|op| {
                self.log
                    .get(op)
                    .is_some_and(|e| e.requests.iter().any(|r| r.same_as(&request)))
            });
        // A settled request is answered by its origin when it executes the
        // original op; preparing it again would only waste an op.
        let settled = self.client_table.settled(&request);
        if in_flight || settled.is_some_and(|o| o != Outcome::Refused) {
            return;
        }
        if self.queue.len() >= self.config.request_queue_max {
            self.stats.dropped_requests += 1;
            return;
        }
        self.queued.insert(key);
        self.queue.push_back(request);
        self.prepare_queued();
    }

    // ---- Primary -------------------------------------------------------

    /// Turns queued requests into prepares while the pipeline has room.
    pub(crate) fn prepare_queued(&mut self) {
        while self.is_primary()
            && !self.abdicating()
            && self.log.op() < self.commit_max.saturating_add(self.config.pipeline_max)
            && !self.queue.is_empty()
            && self.may_prepare_more()
            && !self.awaiting_fresh_clocks()
        {
            let batch = self.take_batch();
            self.prepare_next(batch);
        }
        self.advance_commit();
    }

    /// Whether the primary may prepare client entries now: never after a
    /// reconfiguration entry (the old epoch prepares nothing after it; the
    /// requests wait for the new epoch), and not while it holds the next
    /// op for one (`holding_for_consent`).
    fn may_prepare_more(&self) -> bool {
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::PrepareAfterReconfiguration) {
            return true;
        }
        self.pending_reconfiguration().is_none() && !self.holding_for_consent()
    }

    /// Prepares `requests` as the next op, as this view's primary: to the
    /// log, to the backups, to its own disk.
    pub(crate) fn prepare_next(&mut self, requests: Vec<Request>) {
        let op = self.log.op() + 1;
        let timestamp = self.next_timestamp();
        let entry = Arc::new(Prepare::new(
            self.log.head_checksum(),
            self.view,
            op,
            timestamp,
            requests,
        ));
        self.log.append(entry.clone());
        self.commit_unannounced = false;
        let prepare = Message::Prepare {
            view: self.view,
            commit: self.commit_max,
            entry: entry.clone(),
            checkpoint: self.checkpoints.canonical(),
        };
        self.broadcast(&prepare);
        self.send_to_learners(&prepare);
        self.last_broadcast_tick = self.ticks;
        self.out.push(Output::WriteLog {
            after: op - 1,
            entries: vec![entry],
        });
        self.acked[self.index as usize] = op;
    }

    /// The next prepare's timestamp: the cluster's time (this replica's
    /// clock moved into the window a quorum's clocks agree on: `clock.rs`),
    /// and always after the head's. Without a quorum's recent clocks, time
    /// does not advance rather than trust this one clock.
    pub(crate) fn next_timestamp(&self) -> u64 {
        let after_head = self.log.head_timestamp().saturating_add(1);
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::UnboundedClock) {
            return self.now_ns.max(after_head);
        }
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::PeersAloneWithBareQuorum) {
            let now = self.clocks.peers_alone_now(
                self.index as usize,
                self.clock_now(),
                self.config.view_change_ticks,
                &self.membership,
            );
            return now.map_or(after_head, |now| now.max(after_head));
        }
        let now = self.clocks.cluster_now(
            self.index as usize,
            self.clock_now(),
            self.config.view_change_ticks,
            &self.membership,
        );
        now.map_or(after_head, |now| now.max(after_head))
    }

    pub(crate) fn clock_now(&self) -> crate::clock::Now {
        crate::clock::Now {
            wall: self.now_ns,
            mono: self.mono_ns,
            tick: self.ticks,
        }
    }

    fn take_batch(&mut self) -> Vec<Request> {
        let mut batch = Vec::new();
        let mut bytes: usize = 0;
        while let Some(next) = self.queue.front() {
            let fits = batch.len() < self.config.batch_max_requests
                && (batch.is_empty()
                    || bytes.saturating_add(next.payload.len()) <= self.config.batch_max_bytes);
            if !fits {
                break;
            }
            let request = self.queue.pop_front().expect("front exists");
            self.queued
                .remove(&(request.client, request.request, checksum(&request.payload)));
            bytes += request.payload.len();
            batch.push(request);
        }
        batch
    }

    fn on_prepare_ok(&mut self, from: Slot, view: View, op: Op, checksum: u128, round: u64) {
        if view != self.view || !self.is_primary() {
            return;
        }
        self.last_heard[from as usize] = self.ticks;
        self.on_round_answered(from, round);
        if self.log.checksum_at(op) == Some(checksum) && op > self.acked[from as usize] {
            self.acked[from as usize] = op;
            self.advance_commit();
            self.prepare_queued();
            self.repair_acknowledged(from, op);
        }
    }

    /// Commits the highest op that a quorum holds, then executes.
    fn advance_commit(&mut self) {
        if !self.is_primary() {
            return;
        }
        #[allow(unused_mut)]
        let mut acked: Vec<Op> = self.membership.slots().map(|s| self.acked[s as usize]).collect();
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::CountLearnerAcks) {
            acked.extend(self.learners.iter().map(|l| self.acked[l.0 as usize]));
        }
        acked.sort_unstable_by(|a, b| b.cmp(a));
        #[allow(unused_mut)]
        let mut quorum_op = acked[self.quorum() - 1];
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::CommitWithoutQuorum) {
            quorum_op = self.log.op();
        }
        if quorum_op > self.commit_max {
            self.commit_max = quorum_op;
            self.commit_unannounced = true;
            self.execute_committed();
            self.confirm_reads();
        }
    }

    /// Tells the backups the commit number when it advanced and no prepare
    /// carried it. A backup that is the origin of a request just executed
    /// (or of a read just confirmed) hears it at once: it answers its client
    /// only when it executes the op, and waiting for the next heartbeat would
    /// add up to `heartbeat_ticks` to every such commit. The other backups
    /// hear it with the next prepare or at the next tick: announcing every
    /// commit to every backup at once costs each of them a wake-up, an
    /// execution and a `PrepareOk` back, all of which compete with the next
    /// request for the CPU (issue 3: on a host with few cores, one caller's commits
    /// on the primary's node waited on it).
    fn announce_commit(&mut self, tick: bool) {
        let urgent = std::mem::take(&mut self.commit_urgent);
        if !self.commit_unannounced || !self.is_primary() || self.abdicating() {
            self.commit_unannounced = false;
            return;
        }
        if tick {
            self.broadcast_heartbeat(false);
            return;
        }
        let to: Vec<Slot> = self.peers().filter(|&to| urgent & (1 << to) != 0).collect();
        if to.is_empty() {
            return;
        }
        let bytes = self.encode(&self.heartbeat());
        for to in to {
            self.stats.sent += 1;
            self.out.push(Output::Send {
                to,
                id: self.id_of(to),
                bytes: bytes.clone(),
            });
        }
    }

    /// A primary that has not heard from a quorum lately stops leading, so
    /// that its silence lets the backups elect a primary that can commit.
    pub(crate) fn abdicating(&self) -> bool {
        let recent = self.membership.slots().filter(|&r| self.heard_lately(r)).count();
        recent < self.quorum()
    }

    /// Whether the primary heard `slot` within a view-change timeout (it
    /// hears itself always).
    pub(crate) fn heard_lately(&self, slot: Slot) -> bool {
        slot == self.index
            || (self.is_up(slot)
                && self.ticks < self.last_heard[slot as usize].saturating_add(self.config.view_change_ticks))
    }

    fn tick_primary(&mut self) {
        if self.is_diverged() {
            // Elected while diverged: it leads nothing (`diverge`).
            return self.step_down_while_diverged();
        }
        if self.abdicating() {
            // Abdicated, it has no working primary either: it campaigns like
            // a backup whose primary went silent, or two abdicated primaries
            // of different views would wait for each other forever.
            #[cfg(feature = "mutations")]
            if self.mutated(Mutation::SilentAbdicatedPrimary) {
                return;
            }
            self.campaign_if_silent();
            return;
        }
        // It leads: like a backup hearing its primary, it has no campaign.
        self.heard_primary();
        if self.ticks >= self.last_learn_tick.saturating_add(self.config.heartbeat_ticks) {
            self.teach_learners();
        }
        self.try_propose();
        self.prepare_queued();
        if self.ticks
            >= self
                .last_broadcast_tick
                .saturating_add(self.config.heartbeat_ticks)
        {
            self.broadcast_heartbeat(false);
        }
        if self.ticks
            >= self
                .last_retry_tick
                .saturating_add(self.config.prepare_retry_ticks)
        {
            self.last_retry_tick = self.ticks;
            self.retransmit_prepares();
        }
        // A run more of each repair answer, if its window allows: it opens
        // the window before the first acknowledgements come back, and
        // keeps an answer moving whose acknowledgements were lost.
        for peer in 0..MAX_SLOTS as Slot {
            self.pump_repair(peer, 1);
        }
        self.tick_quiet_round();
    }

    /// Resends the uncommitted tail to each backup that has not acknowledged it.
    fn retransmit_prepares(&mut self) {
        let op = self.log.op();
        let learners = self.learners.iter().map(|l| l.0).collect::<Vec<Slot>>();
        for backup in self.peers().chain(learners) {
            let acked = self.acked[backup as usize];
            if acked >= op {
                continue;
            }
            let first = (acked + 1).max(op.saturating_sub(self.config.pipeline_max) + 1);
            // One run at most (`log::run`): the rest goes at the next retry.
            let mut bytes = 0u64;
            for op in first..=op {
                if bytes >= RUN_BYTES {
                    break;
                }
                // Below the log's base: the backup repairs, by state sync.
                let Some(entry) = self.log.get(op).cloned() else {
                    continue;
                };
                bytes = bytes.saturating_add(run_bytes(&entry));
                self.send(
                    backup,
                    &Message::Prepare {
                        view: self.view,
                        commit: self.commit_max,
                        entry,
                        checkpoint: self.checkpoints.canonical(),
                    },
                );
            }
        }
    }

    pub(crate) fn on_request_prepares(&mut self, from: Slot, view: View, first: Op, last: Op) {
        if view != self.view || !self.is_primary() {
            return;
        }
        if first <= self.log.base() {
            // The backup is behind this replica's log: it needs the checkpoint.
            self.repair_streams[from as usize] = None;
            self.send_checkpoint(from);
            return;
        }
        self.pinned_peer_asks_from(from, first);
        let last = last
            .min(self.log.op())
            .min(first.saturating_add(self.config.message_entries_max as Op - 1));
        // The whole chunk asked for, in runs (`log::run`: each a message
        // of at most about `RUN_BYTES`), one now and the next ones as the
        // asker acknowledges them or as ticks pass (`pump_repair`). It
        // replaces any answer still going to the asker: the asker asks
        // again only when it has the last one whole or it stalled.
        self.repair_streams[from as usize] = Some(RepairStream {
            view: self.view,
            next: first.max(1),
            last,
            ends: VecDeque::new(),
        });
        self.pump_repair(from, 1);
    }

    /// Sends up to `runs` more runs of the repair answer going to `peer`,
    /// while fewer than `repair_window` runs are unacknowledged. A run
    /// ends at the entry whose commands bring it to `RUN_BYTES` (or at
    /// the chunk's end), and goes as one step's messages to one peer,
    /// which a host sends as one distribution message.
    fn pump_repair(&mut self, peer: Slot, runs: usize) {
        let window = self.repair_window();
        let (view, leads) = (self.view, self.is_primary() && self.status == Status::Normal);
        let Some(stream) = self.repair_streams[peer as usize].as_mut() else {
            return;
        };
        if stream.view != view || !leads {
            self.repair_streams[peer as usize] = None;
            return;
        }
        let mut entries = Vec::new();
        for _ in 0..runs {
            if stream.next > stream.last || stream.ends.len() >= window {
                break;
            }
            let (mut bytes, from) = (0u64, stream.next);
            while stream.next <= stream.last && bytes < RUN_BYTES {
                // Below the log's base (a checkpoint since): the peer's
                // next request gets the checkpoint.
                let Some(entry) = self.log.get(stream.next).cloned() else {
                    stream.last = stream.next.saturating_sub(1);
                    break;
                };
                bytes = bytes.saturating_add(run_bytes(&entry));
                entries.push(entry);
                stream.next += 1;
            }
            if stream.next > from {
                stream.ends.push_back(stream.next - 1);
            }
        }
        if stream.next > stream.last && stream.ends.is_empty() {
            self.repair_streams[peer as usize] = None;
        }
        for entry in entries {
            self.send(
                peer,
                &Message::Prepare {
                    view: self.view,
                    commit: self.commit_max,
                    entry,
                    checkpoint: self.checkpoints.canonical(),
                },
            );
        }
    }

    /// Runs of a repair answer sent and not yet acknowledged, at most: one
    /// more than the pipeline, so that a round trip brings a lagging
    /// backup more entries than the primary commits in one (at most
    /// `pipeline_max`), however large they are, while no message holds
    /// more than a run.
    fn repair_window(&self) -> usize {
        (self.config.pipeline_max as usize).saturating_add(1)
    }

    /// `peer` holds the primary's log up to `op`: the runs of its repair
    /// answer that ended by `op` are through, and each lets two more go
    /// (the window opens by doubling, as acknowledgements come back).
    pub(crate) fn repair_acknowledged(&mut self, peer: Slot, op: Op) {
        let Some(stream) = self.repair_streams[peer as usize].as_mut() else {
            return;
        };
        let mut through = 0;
        while stream.ends.front().is_some_and(|&end| end <= op) {
            stream.ends.pop_front();
            through += 1;
        }
        if op >= stream.last {
            self.repair_streams[peer as usize] = None;
            return;
        }
        if through > 0 {
            self.pump_repair(peer, through * 2);
        }
    }

    // ---- Backup --------------------------------------------------------

    /// A message from the current view's primary: it is alive. Any
    /// campaign of this replica is over, and the votes it tallied expire
    /// with it.
    pub(crate) fn heard_primary(&mut self) {
        self.last_primary_tick = self.ticks;
        self.vouched = None;
        self.asked_primary = None;
        self.campaign = 0;
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::KeepStaleVotes) {
            return;
        }
        self.votes = [0; MAX_SLOTS];
    }

    pub(crate) fn on_prepare(&mut self, from: Slot, view: View, commit: Op, entry: Arc<Prepare>) {
        if !self.accepts_normal_message(from, view) {
            return;
        }
        self.heard_primary();
        self.primary_op = self.primary_op.max(entry.op);
        if self.log.can_append(&entry) {
            let op = entry.op;
            self.log.append(entry.clone());
            self.out.push(Output::WriteLog {
                after: op - 1,
                entries: vec![entry],
            });
            if op == self.repair_until {
                // The repair chunk arrived whole: ask for the next one at
                // once, or a backup behind a busy primary (one chunk per
                // resend interval) would never catch up (seed 1007965).
                self.last_repair_tick = None;
                self.request_repair();
            } else if op < self.repair_until && self.last_repair_tick.is_some() {
                // The primary's answer is coming, run by run
                // (`pump_repair`): asking again now would restart it, so
                // the resend interval counts from the latest entry.
                self.last_repair_tick = Some(self.ticks);
            }
        } else if entry.op > self.log.op() + 1 {
            self.request_repair();
        }
        self.acknowledge();
        self.learn_commit(commit);
    }

    pub(crate) fn on_commit(&mut self, from: Slot, view: View, commit: Op, round: u64) {
        if !self.accepts_normal_message(from, view) {
            return;
        }
        self.heard_primary();
        self.reads.heard_round = self.reads.heard_round.max(round);
        self.acknowledge();
        self.learn_commit(commit);
    }

    /// Whether a Prepare or Commit from `from` in `view` is for this replica,
    /// as a backup in normal status; asks for the view's log if it is behind.
    pub(crate) fn accepts_normal_message(&mut self, from: Slot, view: View) -> bool {
        let primary = self.membership.primary(view);
        if view < self.view || from != primary || primary == self.index {
            return false;
        }
        if view > self.view || self.status != Status::Normal {
            self.request_start_view(view);
            return false;
        }
        true
    }

    /// Tells the primary how much of its log this replica holds; doubles as
    /// the backup's heartbeat, which keeps the primary from abdicating.
    pub(crate) fn acknowledge(&mut self) {
        let op = self.log.op();
        let checksum = self.log.head_checksum();
        let primary = self.primary();
        let round = self.reads.heard_round;
        // A diverged replica's checkpoints come from a wrong state: it
        // reports none, so it is never counted in a vouch.
        let checkpoint = if self.is_diverged() {
            (0, 0)
        } else {
            self.checkpoints.latest()
        };
        self.send(
            primary,
            &Message::PrepareOk {
                view: self.view,
                op,
                checksum,
                round,
                checkpoint,
            },
        );
    }

    pub(crate) fn learn_commit(&mut self, commit: Op) {
        if commit > self.commit_max {
            self.commit_max = commit;
        }
        self.execute_committed();
        if self.commit_max > self.log.op() {
            self.primary_op = self.primary_op.max(self.commit_max);
            self.request_repair();
        }
    }

    /// Asks the primary for the entries this backup is missing (at most once
    /// per resend interval).
    pub(crate) fn request_repair(&mut self) {
        if self.primary_op <= self.log.op() || !self.due(self.last_repair_tick) || self.syncing() {
            return;
        }
        self.last_repair_tick = Some(self.ticks);
        let from = self.log.op() + 1;
        let to = self
            .primary_op
            .min(from.saturating_add(self.config.message_entries_max as Op - 1));
        self.repair_until = to;
        let primary = self.primary();
        self.send(
            primary,
            &Message::RequestPrepares {
                view: self.view,
                from,
                to,
            },
        );
    }

    fn tick_backup(&mut self) {
        self.campaign_if_primary_down();
        self.campaign_if_silent();
        self.request_repair();
    }

    /// Campaigns once the primary has been silent for a view-change timeout
    /// (for an abdicated primary: since it abdicated).
    fn campaign_if_silent(&mut self) {
        let silence = self.ticks.saturating_sub(self.last_primary_tick);
        if silence >= self.config.view_change_ticks.saturating_add(self.timeout_jitter)
            && !self.ask_quiet_primary()
        {
            self.start_campaign();
        }
    }

    /// Whether a rate-limited message last sent at `last` may go again.
    pub(crate) fn due(&self, last: Option<u64>) -> bool {
        last.is_none_or(|t| self.ticks >= t.saturating_add(self.config.resend_ticks))
    }

    // ---- Execution -----------------------------------------------------

    /// Executes every committed entry this replica holds, in op order.
    pub(crate) fn execute_committed(&mut self) {
        if self.is_diverged() {
            return; // its host's state is wrong: nothing more runs on it
        }
        let last = self.commit_max.min(self.log.op());
        while self.commit_min < last {
            self.commit_min += 1;
            let op = self.commit_min;
            let entry = self.log.get(op).expect("op within the log").clone();
            // A reconfiguration entry holds its one request alone (decode
            // and `prepare_reconfiguration` see to it).
            let target = entry.reconfiguration();
            let outcomes: Vec<Outcome> = entry
                .requests
                .iter()
                .map(|r| {
                    if r.is_reconfiguration() {
                        Outcome::Membership // no client's: nothing for the application
                    } else {
                        self.execute_request(op, r)
                    }
                })
                .collect();
            self.out.push(Output::Execute {
                entry: entry.clone(),
                outcomes: outcomes.clone(),
            });
            for (request, outcome) in entry.requests.iter().zip(&outcomes) {
                if *outcome == Outcome::Refused {
                    self.stats.refused_requests += 1;
                }
                if *outcome == Outcome::Membership {
                    continue; // no client's: no reply
                }
                if request.origin != self.index {
                    self.commit_urgent |= 1 << request.origin;
                    continue;
                }
                let pending = self.pending.get(&request.client).map(|p| &p.request);
                if pending.is_some_and(|p| p.request == request.request && !p.same_as(request)) {
                    // Another body under the same number was submitted here
                    // since: this reply is not its caller's. The pending one
                    // goes through the log and is refused there.
                    continue;
                }
                if pending.is_some_and(|p| p.request <= request.request) {
                    self.pending.remove(&request.client);
                }
                if *outcome == (Outcome::Duplicate { op: 0 }) {
                    // A request older than its client's latest, prepared a
                    // second time from a queue kept across a change of
                    // epoch: its caller had its answer long ago, and this
                    // one would name no op (`vopr --membership` seed 836).
                    continue;
                }
                let reply_op = match outcome {
                    Outcome::Duplicate { op } => *op,
                    _ => op,
                };
                self.out.push(Output::Reply {
                    client: request.client,
                    request: request.request,
                    op: reply_op,
                    outcome: *outcome,
                });
            }
            // A checkpoint at this op records the membership in force
            // after it (the new one, for an entry), and is asked for
            // before entering the epoch: a lone member that enters as its
            // primary prepares, commits and executes what it queued in
            // that very step, and the host must be asked for this op's
            // snapshot before it executes the next (found by the model
            // check, 1 -> 2 -> 1).
            if let Some(target) = target.filter(|t| t.epoch() > self.executed_membership.epoch()) {
                self.executed_membership = target;
            }
            self.checkpoint_due(op, entry.checksum, entry.timestamp, entry.payload_bytes() as u64);
            self.executed_op(op, entry.checksum, target);
        }
        self.serve_reads();
    }

    fn execute_request(&mut self, op: Op, request: &Request) -> Outcome {
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::SkipClientTable) && !request.is_register() {
            return Outcome::Executed;
        }
        let outcome = self.client_table.execute(op, request);
        #[cfg(feature = "mutations")]
        let outcome = self.mutated_refusal(request, outcome);
        outcome
    }

    #[cfg(feature = "mutations")]
    fn mutated_refusal(&self, request: &Request, outcome: Outcome) -> Outcome {
        if self.mutated(Mutation::AnswerOtherBody) && outcome == Outcome::Refused {
            return Outcome::Duplicate {
                op: self.client_table.last_op(request.client),
            };
        }
        outcome
    }
}
