//! Quiet groups: a group with nothing to do stops ticking and sending
//! (docs/protocol.md, "Quiet groups"; docs/design/many-groups.md, 2.6).
//!
//! A replica is quiet or awake. An awake replica is the replica of the
//! rest of this crate. A quiet one does nothing on a tick (the host need
//! not tick it at all) and sends nothing; any other input wakes it. It
//! goes quiet only through the primary's quiet round: a primary with
//! nothing to do for `Config::quiet_after_ticks` sends `Quiet` (a
//! heartbeat with a new round); a backup with nothing to do that holds
//! and has executed exactly the primary's log goes quiet and answers
//! `QuietOk { quiet: true }` (otherwise `false`); the primary goes quiet
//! once every backup whose node is up said yes in that round. A backup
//! whose node is down is not waited for: when it returns it is awake, and
//! its first message wakes the group (a restarted backup announces itself
//! with a `PrepareOk`).
//!
//! The host's failure detector tells the replica which of its peers' nodes
//! are up (`Input::Peers`, `Input::Wake`): a backup whose primary's node is
//! down campaigns at once, and a primary counts a peer whose node is down
//! as not heard. A woken backup counts its primary as heard on the
//! detector's word; if its silence timer fires before it has heard the
//! primary itself, it asks it (a `PrepareOk`, which wakes a quiet
//! primary) and campaigns only one silence timeout later
//! (`ask_quiet_primary`). Quiet and the detector change only *when* a replica
//! ticks, heartbeats, campaigns or abdicates, never what it accepts: every
//! acceptance rule is untouched, so safety is as without them.
//!
//! With `quiet_after_ticks` 0 (the default) nothing here runs: no round is
//! proposed, every round is answered "no", and the detector's `up` stays
//! "every peer", which reads as before.

#[cfg(feature = "mutations")]
use crate::config::Mutation;
use crate::config::{Op, View};
use crate::membership::Slot;
use crate::message::Message;
use crate::replica::{Replica, Role, Status};

/// Every slot up: what a replica assumes until its host says otherwise.
pub(crate) const ALL_UP: u16 = u16::MAX;

impl Replica {
    /// Whether this replica is quiet: its host may stop ticking it until
    /// another input arrives (docs/protocol.md, "Quiet groups").
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Whether the detector holds the node of `slot` up (its own always).
    pub(crate) fn is_up(&self, slot: Slot) -> bool {
        slot == self.index || self.up & (1 << slot) != 0
    }

    /// Whether the detector holds the node of this view's primary up.
    pub(crate) fn primary_up(&self) -> bool {
        self.is_up(self.primary())
    }

    /// Nothing of its own is under way: no request or read submitted here
    /// or being confirmed, no campaign, view change staging, recovery,
    /// repair, state sync, pin, awaited snapshot or unvouched checkpoint,
    /// no membership change (held, asked for, proposed, or learners).
    fn has_no_work(&self) -> bool {
        self.work().is_none()
    }

    /// What keeps this replica from going quiet, of its own work (the
    /// first found), or `None`: for [`Replica::has_no_work`] and for
    /// hosts that report why a group stays awake.
    pub fn work(&self) -> Option<&'static str> {
        #[allow(unused_mut)]
        let mut requests = self.pending.is_empty();
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::QuietWithPendingWork) {
            requests = true;
        }
        let checks = [
            (requests, "a request submitted here"),
            (self.reads.idle(), "a read"),
            (self.campaign <= self.view, "a campaign"),
            (self.staging.is_none(), "a view's log being fetched"),
            (self.recovery.is_none(), "a recovery"),
            (self.repair.is_none(), "a repair"),
            (self.change.is_none(), "a membership change held"),
            (self.origin_change.is_none(), "a membership change asked for"),
            (self.learners.is_empty(), "learners"),
            (self.learn_target.is_none(), "learning"),
            (self.epoch_staging.is_none(), "a newer epoch's log being fetched"),
            (
                self.pending_reconfiguration().is_none(),
                "a reconfiguration entry",
            ),
        ];
        let expiry = self.config.view_change_ticks.saturating_mul(4);
        checks
            .iter()
            .find(|(ok, _)| !ok)
            .map(|(_, what)| *what)
            .or_else(|| self.checkpoints.work(self.ticks, expiry))
    }

    /// The primary may go quiet: it leads, hears a quorum, has nothing
    /// queued or uncommitted, every backup whose node is up has
    /// acknowledged its whole log, and nothing else is under way.
    pub(crate) fn primary_may_quiet(&self) -> bool {
        self.primary_blocker().is_none()
    }

    /// What keeps this primary from proposing quiet (the first found).
    fn primary_blocker(&self) -> Option<&'static str> {
        let op = self.log.op();
        #[allow(unused_mut)]
        let mut committed = self.commit_max == op;
        #[allow(unused_mut)]
        let mut acked = self
            .peers()
            .all(|p| !self.is_up(p) || self.acked[p as usize] >= op);
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::QuietWithUncommittedOp) {
            (committed, acked) = (true, true);
        }
        let checks = [
            (self.role == Role::Member && self.is_primary(), "not leading"),
            (!self.abdicating(), "abdicating"),
            (!self.is_diverged(), "diverged"),
            (self.queue.is_empty(), "requests queued"),
            (committed, "an op not committed"),
            (acked, "a backup that has not acknowledged every op"),
            (self.commit_min == self.commit_max, "an op not executed"),
            (!self.commit_unannounced, "a commit not announced"),
            (self.woke_at.is_none(), "just woken"),
        ];
        checks
            .iter()
            .find(|(ok, _)| !ok)
            .map(|(_, what)| *what)
            .or_else(|| self.work())
    }

    /// Why this replica is awake, as far as it knows (the first reason
    /// found): for a primary, what keeps it from proposing quiet; for a
    /// backup, its own work. `None`: nothing (a primary then proposes
    /// quiet in `quiet_after_ticks`; a backup waits for its round).
    pub fn awake_because(&self) -> Option<&'static str> {
        if self.quiet {
            return None;
        }
        if self.is_primary_of_view() {
            self.primary_blocker()
        } else {
            self.work()
        }
    }

    /// A backup may go quiet at its primary's round announcing `commit`:
    /// it holds and has executed exactly that log, and has nothing under way.
    fn backup_may_quiet(&self, commit: Op) -> bool {
        self.backup_blocker(commit).is_none()
    }

    /// What keeps this backup from going quiet at a round announcing
    /// `commit` (the first found).
    pub fn backup_blocker(&self, commit: Op) -> Option<&'static str> {
        let op = self.log.op();
        let checks = [
            (self.config.quiet_after_ticks > 0, "quiet off"),
            (
                self.role == Role::Member && self.status == Status::Normal,
                "not in normal status",
            ),
            (!self.is_primary_of_view(), "the primary"),
            (!self.is_diverged(), "diverged"),
            (self.primary_up(), "its primary down"),
            (op == commit && self.primary_op <= op, "a log not the primary's"),
            (
                self.commit_min == commit && self.commit_max == commit,
                "an op not executed",
            ),
        ];
        checks
            .iter()
            .find(|(ok, _)| !ok)
            .map(|(_, what)| *what)
            .or_else(|| self.work())
    }

    /// At the end of the primary's tick: proposes a quiet round once it
    /// has had nothing to do for `quiet_after_ticks` (and again that long
    /// after a round that did not make the group quiet).
    pub(crate) fn tick_quiet_round(&mut self) {
        if self.woke_at.is_some() && !self.awaiting_fresh_clocks() {
            // The round trip the wake-up heartbeat started is done (or
            // had its time).
            self.woke_at = None;
        }
        let after = self.config.quiet_after_ticks;
        if after == 0 {
            return;
        }
        if !self.primary_may_quiet() {
            self.idle_since = self.ticks;
            self.quiet_round = 0;
            return;
        }
        if self.ticks < self.idle_since.saturating_add(after) {
            return;
        }
        self.idle_since = self.ticks;
        self.stats.quiet_rounds += 1;
        let round = self.reads.new_round(self.index as usize);
        self.quiet_round = round;
        self.quiet_acks = 0;
        let message = Message::Quiet {
            view: self.view,
            commit: self.commit_max,
            round,
            checkpoint: self.checkpoints.canonical(),
        };
        self.broadcast(&message);
        self.last_broadcast_tick = self.ticks;
        self.commit_unannounced = false;
        self.go_quiet_if_answered();
    }

    /// A backup hears its primary's quiet round.
    pub(crate) fn on_quiet(&mut self, from: Slot, view: View, commit: Op, round: u64) {
        if !self.accepts_normal_message(from, view) {
            return;
        }
        self.heard_primary();
        self.reads.heard_round = self.reads.heard_round.max(round);
        self.learn_commit(commit);
        let quiet = self.backup_may_quiet(commit);
        let checkpoint = if self.is_diverged() {
            (0, 0)
        } else {
            self.checkpoints.latest()
        };
        let primary = self.primary();
        self.send(
            primary,
            &Message::QuietOk {
                view: self.view,
                op: self.log.op(),
                checksum: self.log.head_checksum(),
                round: self.reads.heard_round,
                checkpoint,
                quiet,
            },
        );
        if quiet {
            self.quiet = true;
        }
    }

    /// The primary hears a backup's answer to its quiet round.
    pub(crate) fn on_quiet_ok(&mut self, from: Slot, view: View, round: u64, quiet: bool) {
        if !quiet
            || view != self.view
            || !self.is_primary()
            || self.quiet_round == 0
            || round != self.quiet_round
        {
            return;
        }
        self.quiet_acks |= 1 << from;
        self.go_quiet_if_answered();
    }

    /// The primary goes quiet once every backup whose node is up went
    /// quiet in its round, if it still has nothing to do.
    fn go_quiet_if_answered(&mut self) {
        if self.quiet_round == 0 || !self.primary_may_quiet() {
            return;
        }
        let acks = self.quiet_acks;
        if self.peers().all(|p| !self.is_up(p) || acks & (1 << p) != 0) {
            self.quiet = true;
            self.quiet_round = 0;
        }
    }

    /// `Input::Wake`: the host wakes a quiet replica (before the input
    /// that wakes it, or alone for a detector event), after it was quiet
    /// for `elapsed_ticks`; `up` is the detector's view of its peers. An
    /// awake replica takes it as `Input::Peers`.
    pub(crate) fn on_wake(&mut self, now_ns: u64, mono_ns: u64, elapsed_ticks: u64, up: u16) {
        self.now_ns = self.now_ns.max(now_ns.min(crate::clock::MAX_CLOCK_NS));
        self.mono_ns = self.mono_ns.max(mono_ns);
        if !self.quiet {
            return self.on_peers(up);
        }
        self.wake(elapsed_ticks, up);
    }

    /// Wakes: the time it was quiet passes at once (so every "last heard
    /// at tick t", clock readings included, is that old), and what it
    /// heard is read from the detector: a backup counts its primary as
    /// heard now if the primary's node is up and campaigns at once if not;
    /// a primary counts the peers whose nodes are up as heard now, and
    /// heartbeats at once (which also brings their clocks: it prepares
    /// nothing until it has a quorum of fresh readings, or for
    /// `heartbeat_ticks`).
    pub(crate) fn wake(&mut self, elapsed_ticks: u64, up: u16) {
        #[allow(unused_mut)]
        let mut elapsed_ticks = elapsed_ticks;
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::WakeWithoutElapsedTicks) {
            elapsed_ticks = 0;
        }
        self.quiet = false;
        self.stats.wakes += 1;
        self.ticks = self.ticks.saturating_add(elapsed_ticks);
        // A quiet spell in normal status counts toward ending the
        // view-change backoff, as the ticks it slept through would have
        // (`tick_backoff`).
        if self.status == Status::Normal {
            self.normal_ticks = self.normal_ticks.saturating_add(elapsed_ticks);
        }
        self.clocks.ticked(self.mono_ns);
        self.set_up(up);
        self.idle_since = self.ticks;
        self.quiet_round = 0;
        if self.is_primary() {
            for peer in self.peers().collect::<Vec<Slot>>() {
                if self.is_up(peer) {
                    self.last_heard[peer as usize] = self.ticks;
                }
            }
            self.woke_at = Some(self.ticks.saturating_add(self.config.heartbeat_ticks));
            self.broadcast_heartbeat(false);
        } else if self.status == Status::Normal && self.role == Role::Member {
            if !self.primary_up() {
                self.start_campaign();
                return;
            }
            #[cfg(feature = "mutations")]
            if self.mutated(Mutation::QuietVotesForAnyCampaign) {
                return;
            }
            self.heard_primary();
            // Heard on the detector's word: its primary, likely quiet
            // still, sends nothing until asked (`ask_quiet_primary`).
            self.vouched = Some((self.membership.epoch(), self.view));
        }
    }

    /// A backup's silence timer fired. If it was woken and counted its
    /// primary as heard on the detector's word alone, and has heard
    /// nothing from it since, its primary is most likely still quiet (it
    /// woke for something its primary took no part in: a request settled
    /// in its client table, a late message): rather than campaign, it asks
    /// its primary (a `PrepareOk`, which wakes a quiet primary, which
    /// heartbeats at once) and waits another silence timeout. Returns
    /// whether it is asking or still waiting for the answer (no campaign
    /// yet). Its detector's word still counts: a primary whose node goes
    /// down is campaigned against at once (`campaign_if_primary_down`),
    /// and the vote it gives others' campaigns (`healthy`) is unchanged.
    pub(crate) fn ask_quiet_primary(&mut self) -> bool {
        // Only for the primary of the view (and epoch) it was woken in,
        // and never for itself: a flag left from a view or epoch it
        // entered since without hearing its primary (elected, or entered
        // by a view change or a newer epoch's log) vouches for nothing.
        let here = (self.membership.epoch(), self.view);
        let backup = self.status == Status::Normal && !self.is_primary_of_view();
        if self.vouched.take() == Some(here) && backup && self.primary_up() {
            self.asked_primary = Some((here.0, here.1, self.ticks));
            self.acknowledge();
            return true;
        }
        let wait = self.config.view_change_ticks.saturating_add(self.timeout_jitter);
        match self.asked_primary {
            Some((epoch, view, at))
                if (epoch, view) == here && backup && self.ticks < at.saturating_add(wait) =>
            {
                true
            }
            _ => {
                self.asked_primary = None;
                false
            }
        }
    }

    /// `Input::Peers`: the detector's view of the peers changed. A backup
    /// whose primary's node went down campaigns now; a primary counts a
    /// peer whose node is down as not heard (`heard_lately`), so with a
    /// quorum down it abdicates at its next tick. A quiet replica wakes
    /// if it concerns it (its primary down; for a primary, a quorum).
    pub(crate) fn on_peers(&mut self, up: u16) {
        self.set_up(up);
        if self.quiet {
            let concerns = if self.is_primary() {
                self.abdicating()
            } else {
                !self.primary_up()
            };
            if concerns {
                self.wake(0, self.up);
            }
            return;
        }
        self.campaign_if_primary_down();
    }

    fn set_up(&mut self, up: u16) {
        self.up = up;
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::IgnorePeerDown) {
            self.up = ALL_UP;
        }
    }

    /// A backup in normal status whose primary's node is down campaigns
    /// (once: its campaign is resent on its own timer).
    pub(crate) fn campaign_if_primary_down(&mut self) {
        if self.status == Status::Normal
            && self.role == Role::Member
            && !self.is_primary_of_view()
            && !self.primary_up()
            && self.campaign <= self.view
        {
            self.start_campaign();
        }
    }

    /// A woken primary prepares nothing until it has a quorum of fresh
    /// clock readings (its wake-up heartbeat brings them) or
    /// `heartbeat_ticks` have passed: readings from before the quiet
    /// spell are stale, and without fresh ones time would not advance.
    pub(crate) fn awaiting_fresh_clocks(&self) -> bool {
        self.woke_at.is_some_and(|until| {
            self.ticks < until
                && self
                    .clocks
                    .cluster_now(
                        self.index as usize,
                        self.clock_now(),
                        self.config.view_change_ticks,
                        &self.membership,
                    )
                    .is_none()
        })
    }

    /// At its first tick, a replica restarted as a backup in normal status
    /// tells its primary it is back (a `PrepareOk`), which wakes a quiet
    /// group at once instead of after its silence timer.
    pub(crate) fn announce_boot(&mut self) {
        if !std::mem::take(&mut self.announce) {
            return;
        }
        if self.status == Status::Normal && self.role == Role::Member && !self.is_primary_of_view() {
            self.acknowledge();
        }
    }

    /// Quiet holds only with nothing under way (`Replica::invariants`).
    pub(crate) fn check_quiet(&self) -> Result<(), String> {
        if !self.quiet {
            return Ok(());
        }
        let op = self.log.op();
        if self.status != Status::Normal || self.role != Role::Member {
            return Err(format!("quiet in status {:?} as {:?}", self.status, self.role));
        }
        if !(op == self.commit_max && self.commit_min == op) {
            return Err(format!(
                "quiet with op {op}, commit {}, executed {}",
                self.commit_max, self.commit_min
            ));
        }
        if !self.queue.is_empty() || !self.has_no_work() {
            return Err("quiet with work under way".into());
        }
        Ok(())
    }
}
