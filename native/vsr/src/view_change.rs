//! View change and state transfer.
//!
//! A backup that stops hearing from its primary *campaigns*: it sends
//! StartViewChange for the next view without leaving its own. Campaigning is
//! a pre-vote: a replica that still hears a healthy primary ignores it, so a
//! replica cut off and coming back cannot depose a working primary. Once a
//! quorum campaigns for the same view, each of them moves to it, persists
//! the new view, and sends DoViewChange (its log after its commit) to the new
//! primary. The new primary takes the log with the greatest
//! `(log_view, op)`, and sends StartView.
//!
//! State transfer never truncates a log to an old commit number and then
//! joins a view with the remainder (the §5.2 defect of VR Revisited): a
//! replica takes `log_view = v` only once it holds the *whole* log the
//! primary of `v` started with, gathered in chunks beside its own log
//! (`Staging`) and installed in one step. Until then its log and its
//! `log_view` stay as they were, so a DoViewChange it sends never presents a
//! partial log as the newest.

use std::sync::Arc;

#[cfg(feature = "mutations")]
use crate::config::Mutation;
use crate::config::{Op, View};
use crate::membership::{Slot, MAX_SLOTS};
use crate::message::{Message, Prepare};
use crate::replica::{Output, Replica, Status};

/// View changes that time out in a row double the timeout of the next at
/// most this many times (16 times `view_change_ticks` plus its jitter: 6.4
/// to 12.8 s with the defaults and 10 ms ticks).
pub const VIEW_CHANGE_BACKOFF_MAX: u32 = 4;

/// A DoViewChange as received: the sender's log after `base`.
#[derive(Clone, Debug)]
pub(crate) struct Dvc {
    pub(crate) log_view: View,
    pub(crate) op: Op,
    pub(crate) commit: Op,
    pub(crate) base: Op,
    pub(crate) base_checksum: u128,
    pub(crate) entries: Vec<Arc<Prepare>>,
}

impl Dvc {
    /// The sender's checksum at `op`, where the message says.
    fn checksum_at(&self, op: Op) -> Option<u128> {
        if op == self.base {
            Some(self.base_checksum)
        } else if op > self.base && op <= self.op {
            self.entries
                .get((op - self.base - 1) as usize)
                .map(|e| e.checksum)
        } else {
            None
        }
    }

    /// The sender's commit number as far as this message shows its log,
    /// with the sender's checksum there: the committed history it vouches
    /// for. A commit number names committed entries only in the history it
    /// was learned in (a replica can learn one from a newer view's
    /// checkpoint while its log, and its `log_view`, are an older view's),
    /// so it is worth nothing without the checksum that names that history.
    fn vouched_commit(&self) -> Option<(Op, u128)> {
        let op = self.commit.min(self.op);
        self.checksum_at(op).map(|checksum| (op, checksum))
    }
}

/// A new view's log being gathered in chunks, to be installed whole.
#[derive(Clone, Debug)]
pub(crate) struct Staging {
    view: View,
    /// The op the log must reach before it can be installed.
    target: Op,
    /// Where the chunks attach to this replica's own log.
    base: Op,
    entries: Vec<Arc<Prepare>>,
}

impl Staging {
    fn end(&self) -> Op {
        self.base + self.entries.len() as Op
    }
    pub(crate) fn view(&self) -> View {
        self.view
    }
    pub(crate) fn progress(&self) -> (Op, Op) {
        (self.end(), self.target)
    }
    fn end_checksum(&self, base_checksum: u128) -> u128 {
        self.entries.last().map_or(base_checksum, |e| e.checksum)
    }
}

impl Replica {
    // ---- Campaigning (pre-vote) ----------------------------------------

    /// Whether this replica still has a working primary, and so refuses to
    /// help depose it.
    fn healthy(&self) -> bool {
        self.status == Status::Normal
            && if self.is_primary_of_view() {
                !self.abdicating()
            } else {
                // A primary whose node the detector holds down is no
                // working primary (`quiet.rs`; always up without one).
                self.primary_up()
                    && self.ticks
                        < self
                            .last_primary_tick
                            .saturating_add(self.config.view_change_ticks)
            }
    }

    pub(crate) fn start_campaign(&mut self) {
        // Views from the network are at most `NUMBER_MAX` (decode), so this
        // never saturates; if it did, the campaign would be for no new view.
        self.campaign = self.campaign.max(self.view.saturating_add(1));
        self.stats.campaigns += 1;
        self.votes[self.index as usize] = self.campaign;
        self.broadcast_campaign();
        self.last_primary_tick = self.ticks;
        self.status_since = self.ticks;
        self.timeout_jitter = self.next_jitter();
        self.check_campaign();
    }

    fn broadcast_campaign(&mut self) {
        self.last_campaign_tick = self.ticks;
        self.broadcast(&Message::StartViewChange {
            view: self.campaign,
            current: self.view,
        });
    }

    pub(crate) fn tick_campaign(&mut self) {
        if self.status != Status::Recovering
            && self.campaign > self.view
            && self.ticks >= self.last_campaign_tick.saturating_add(self.config.resend_ticks)
        {
            self.broadcast_campaign();
        }
    }

    pub(crate) fn on_start_view_change(&mut self, from: Slot, target: View, current: View) {
        if self.status == Status::Recovering {
            return;
        }
        if target <= self.view {
            if current < self.view {
                self.answer_stale_campaign(from);
            }
            return;
        }
        if self.healthy() && current <= self.view {
            return;
        }
        self.votes[from as usize] = target;
        self.vote_ticks[from as usize] = self.ticks;
        if target > self.campaign {
            self.campaign = target;
            self.votes[self.index as usize] = target;
            self.broadcast_campaign();
        }
        self.check_campaign();
    }

    /// A campaign from a replica in a view this one has left: the sender
    /// is behind and, while it hears nothing of the newer view, it would
    /// campaign for views this replica ignores forever (two abdicated
    /// primaries of different views, each silent, wedged a cluster of
    /// three). Tell it this view is real, as a replica entering a view tells
    /// everyone: it counts that as a vote for this view, and once a quorum
    /// is in or voting for it, it joins it (and its DoViewChange fetches the
    /// view's log from a running primary).
    fn answer_stale_campaign(&mut self, to: Slot) {
        let view = self.view;
        self.send(to, &Message::StartViewChange { view, current: view });
    }

    fn check_campaign(&mut self) {
        let target = self.campaign;
        if target <= self.view {
            return;
        }
        // A vote counts while its sender is still campaigning: a campaign is
        // resent every `resend_ticks`, so a vote not heard again within
        // `view_change_ticks` belongs to a campaign that ended (its sender
        // heard its primary again). Votes kept forever let two separate
        // flaps of different replicas add up to a quorum against a primary
        // that never lost its own.
        let me = self.index as usize;
        #[allow(unused_mut)]
        let mut expire = true;
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::KeepStaleVotes) {
            expire = false;
        }
        let fresh = |r: usize| {
            r == me
                || !expire
                || self.ticks < self.vote_ticks[r].saturating_add(self.config.view_change_ticks)
        };
        let votes = self
            .membership
            .slots()
            .map(usize::from)
            .filter(|&r| self.votes[r] == target && fresh(r))
            .count();
        if votes >= self.quorum() {
            self.transition_to_view_change(target);
        }
    }

    // ---- Moving to a new view ------------------------------------------

    fn transition_to_view_change(&mut self, view: View) {
        debug_assert!(view > self.view);
        self.view = view;
        self.status = Status::ViewChange;
        self.reads.new_view();
        self.status_since = self.ticks;
        self.campaign = 0;
        self.timeout_jitter = self.next_jitter();
        self.dvcs.iter_mut().for_each(|d| *d = None);
        self.staging = None;
        self.clear_queue();
        self.write_state();
        // Tell everyone the view is real, so that stragglers move up too.
        self.broadcast(&Message::StartViewChange { view, current: view });
        self.last_resend_tick = self.ticks;
        if self.is_primary_of_view() {
            self.record_own_do_view_change();
            self.start_view_if_ready();
        } else {
            self.send_do_view_change(self.commit_min);
        }
    }

    /// The new primary's own DoViewChange: the log it holds now.
    pub(crate) fn record_own_do_view_change(&mut self) {
        self.dvcs[self.index as usize] = Some(Dvc {
            log_view: self.log_view,
            op: self.log.op(),
            commit: self.commit_max,
            base: self.log.op(),
            base_checksum: self.log.head_checksum(),
            entries: Vec::new(),
        });
    }

    /// Where the staged chunks of a new view's log attach, if any are staged.
    pub(crate) fn staging_base(&self) -> Option<Op> {
        self.staging.as_ref().map(|s| s.base)
    }

    fn send_do_view_change(&mut self, base: Op) {
        let base = base.min(self.log.op()).max(self.log.base());
        let message = Message::DoViewChange {
            view: self.view,
            log_view: self.log_view,
            op: self.log.op(),
            commit: self.commit_max,
            from: base,
            from_checksum: self.log.checksum_at(base).expect("base within the log"),
            entries: self.log.suffix(base, usize::MAX),
        };
        let primary = self.primary();
        self.send(primary, &message);
    }

    /// Whether this replica is in the middle of a view change that it has
    /// not yet seen start (its log is still that of an older view).
    fn changing_view(&self) -> bool {
        self.status == Status::ViewChange && self.log_view < self.view
    }

    /// The view-change backoff starts over once normal status has lasted a
    /// whole backed-off timeout: a view that starts and is overthrown at
    /// once by a campaign still in flight (links slower than the timeout)
    /// leaves it as it was.
    pub(crate) fn tick_backoff(&mut self) {
        if self.status != Status::Normal {
            self.normal_ticks = 0;
            return;
        }
        self.normal_ticks = self.normal_ticks.saturating_add(1);
        if self.normal_ticks >= self.view_change_timeout() {
            self.view_change_attempts = 0;
        }
    }

    fn view_change_timeout(&self) -> u64 {
        #[allow(unused_mut)]
        let mut backoff = self.view_change_attempts.min(VIEW_CHANGE_BACKOFF_MAX);
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::NoViewChangeBackoff) {
            backoff = 0;
        }
        self.config
            .view_change_ticks
            .saturating_add(self.timeout_jitter)
            .saturating_mul(1 << backoff)
    }

    pub(crate) fn tick_view_change(&mut self) {
        // A view change needs about three one-way delays (the votes, the
        // DoViewChange, the StartView). Links slower than the timeout (a
        // saturated host, a long link) would have every attempt overtaken
        // by the next campaign, forever; each attempt that times out doubles
        // the next one's timeout, up to a cap, so that it comes to exceed
        // the delays. Normal status held for a whole backed-off timeout
        // starts it over (`tick_backoff`). Timers decide
        // when to campaign, never what a replica accepts: safety does not
        // depend on them.
        if self.ticks >= self.status_since.saturating_add(self.view_change_timeout()) {
            self.view_change_attempts = self.view_change_attempts.saturating_add(1);
            self.start_campaign();
        }
        if self.ticks < self.last_resend_tick.saturating_add(self.config.resend_ticks) {
            return;
        }
        self.last_resend_tick = self.ticks;
        if !self.changing_view() {
            return;
        }
        self.broadcast(&Message::StartViewChange {
            view: self.view,
            current: self.view,
        });
        if self.is_primary_of_view() {
            self.start_view_if_ready();
        } else if let Some(view) = self.staging.as_ref().map(|s| s.view) {
            self.request_start_view(view);
        } else {
            self.send_do_view_change(self.commit_min);
        }
    }

    pub(crate) fn on_do_view_change(&mut self, from: Slot, view: View, dvc: Dvc) {
        if self.status == Status::Recovering
            || view < self.view
            || self.membership.primary(view) != self.index
        {
            return;
        }
        if view > self.view {
            self.transition_to_view_change(view); // a quorum already chose this view
        }
        if self.is_primary() {
            let base = self.start_view_base(&dvc);
            self.send_start_view(from, base); // the sender missed our StartView
        } else if self.changing_view() {
            self.dvcs[from as usize] = Some(dvc);
            self.start_view_if_ready();
        }
    }

    pub(crate) fn on_request_do_view_change(&mut self, from: Slot, view: View, base: Op) {
        if view == self.view && self.changing_view() && from == self.primary() {
            if base < self.log.base() {
                // The new primary is behind this log's base: it needs the
                // checkpoint first, then the suffix after the base.
                self.send_checkpoint(from);
            }
            self.send_do_view_change(base);
        }
    }

    /// The new primary starts the view once a quorum has sent DoViewChange,
    /// with the log of greatest `(log_view, op)`.
    fn start_view_if_ready(&mut self) {
        if !(self.changing_view() && self.is_primary_of_view()) {
            return;
        }
        if self.dvcs.iter().flatten().count() < self.quorum() {
            return;
        }
        let me = self.index as usize;
        #[allow(unused_mut)]
        let mut best = (0..self.dvcs.len())
            .filter_map(|r| self.dvcs[r].as_ref().map(|d| (d.log_view, d.op, r == me, r)))
            .max()
            .map(|(_, _, _, r)| r)
            .expect("a quorum of DoViewChange");
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::IgnoreBestLog) {
            best = me;
        }
        if best != me {
            let dvc = self.dvcs[best].clone().expect("chosen from the received");
            if dvc.op < self.commit_max {
                // No log a correct replica sends can be the best and lack an
                // op this replica knows is committed (protocol.md, "Why a
                // committed op survives"): a crafted one. Refuse it rather
                // than truncate committed ops, and choose among the rest.
                self.stats.dropped_malformed += 1;
                self.dvcs[best] = None;
                return self.start_view_if_ready();
            }
            // Attach the best log where both it and ours have an entry: at
            // its base, or at our log's base if that is higher (the entries
            // below it are committed, and so the same in both).
            let attach = dvc.base.max(self.log.base());
            let attached = attach <= dvc.op
                && dvc.checksum_at(attach).is_some()
                && self.log.checksum_at(attach) == dvc.checksum_at(attach);
            if !attached {
                // The best log attaches below what we were sent: ask for more of it.
                if self.due(self.last_do_view_change_request) {
                    self.last_do_view_change_request = Some(self.ticks);
                    let message = Message::RequestDoViewChange {
                        view: self.view,
                        from: self.commit_min,
                    };
                    self.send(best as Slot, &message);
                }
                return;
            }
            let skip = (attach - dvc.base) as usize;
            self.replace_log_after(attach, dvc.entries[skip..].to_vec());
        }
        #[allow(unused_mut)]
        let mut commit = self.vouched_commit();
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::AdoptUnverifiedCommit) {
            let told = self.dvcs.iter().flatten().map(|d| d.commit).max().unwrap_or(0);
            commit = told.min(self.log.op());
        }
        self.commit_max = self.commit_max.max(commit);
        // This replica's own commit number is from its own history, which
        // the chosen log holds (see protocol.md, "Why a committed op
        // survives"); every other one was checked against the chosen log.
        // (A deliberately broken protocol breaks this too: there the
        // simulator's checkers, not this assertion, must catch the damage.)
        #[cfg(feature = "mutations")]
        if self.config.mutation != Mutation::None {
            self.commit_max = self.commit_max.min(self.log.op());
        }
        debug_assert!(
            self.commit_max <= self.log.op(),
            "view {}: commit {} beyond the chosen log's head {}",
            self.view,
            self.commit_max,
            self.log.op()
        );
        self.log_view = self.view;
        self.view_start_op = self.log.op();
        self.reads.new_view();
        self.status = Status::Normal;
        self.status_since = self.ticks;
        self.stats.views_started += 1;
        self.acked = [0; MAX_SLOTS];
        self.acked[me] = self.log.op();
        self.last_heard = [self.ticks; MAX_SLOTS];
        self.write_state();
        let dvcs = std::mem::replace(&mut self.dvcs, vec![None; MAX_SLOTS]);
        for backup in self.peers() {
            let base = dvcs[backup as usize]
                .as_ref()
                .map_or(self.commit_min, |d| self.start_view_base(d));
            self.send_start_view(backup, base);
        }
        self.last_broadcast_tick = self.ticks;
        self.execute_committed();
        self.prepare_queued();
    }

    /// The highest commit number the DoViewChanges vouch for that the chosen
    /// log (now this replica's) holds: the same checksum at that op, so the
    /// same history up to it.
    fn vouched_commit(&self) -> Op {
        self.dvcs
            .iter()
            .flatten()
            .filter_map(Dvc::vouched_commit)
            .filter(|&(op, checksum)| self.log.checksum_at(op) == Some(checksum))
            .map(|(op, _)| op)
            .max()
            .unwrap_or(0)
    }

    /// The highest op at which a backup's log (as its DoViewChange showed it)
    /// agrees with ours, so StartView need carry only what follows.
    fn start_view_base(&self, dvc: &Dvc) -> Op {
        (dvc.base..=dvc.op.min(self.log.op()))
            .rev()
            .find(|&op| dvc.checksum_at(op).is_some() && dvc.checksum_at(op) == self.log.checksum_at(op))
            .unwrap_or(self.commit_min)
    }

    fn send_start_view(&mut self, to: Slot, base: Op) {
        let base = base.min(self.log.op());
        if base < self.log.base() {
            // The backup is behind this log's base: it needs the checkpoint,
            // then the log after it.
            self.send_checkpoint(to);
        }
        let base = base.max(self.log.base());
        let message = Message::StartView {
            view: self.view,
            op: self.log.op(),
            commit: self.commit_max,
            from: base,
            from_checksum: self.log.checksum_at(base).expect("base within the log"),
            entries: self.log.suffix_run(base, self.config.message_entries_max),
        };
        self.send(to, &message);
    }

    pub(crate) fn on_request_start_view(&mut self, from: Slot, view: View, base: Op) {
        if view == self.view && self.is_primary() {
            self.send_start_view(from, base);
        }
    }

    /// Asks the primary of `view` for its log (rate limited), from where the
    /// staged chunks end or else from this replica's commit.
    pub(crate) fn request_start_view(&mut self, view: View) {
        // Always ask for the newest view heard of: asking for an older one
        // would spend the rate limit on a view nobody runs any more.
        self.view_seen = self.view_seen.max(view);
        let view = self.view_seen;
        if self.staging.as_ref().is_some_and(|s| s.view < view) {
            self.staging = None; // a newer view has started: the old one's log is moot
        }
        if !self.due(self.last_start_view_request) || self.membership.primary(view) == self.index {
            return;
        }
        self.last_start_view_request = Some(self.ticks);
        let from = match &self.staging {
            Some(staging) if staging.view == view => staging.end(),
            _ => self.commit_min,
        };
        self.send(
            self.membership.primary(view),
            &Message::RequestStartView { view, from },
        );
    }

    // ---- Joining a started view ----------------------------------------

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_start_view(
        &mut self,
        from: Slot,
        view: View,
        op: Op,
        commit: Op,
        base: Op,
        base_checksum: u128,
        entries: Vec<Arc<Prepare>>,
    ) {
        if view < self.view || from != self.membership.primary(view) || from == self.index {
            return;
        }
        if view == self.view && self.status == Status::Normal {
            self.catch_up_in_view(op, commit, entries);
            return;
        }
        let current = self.staging.take();
        let extends_current = current.as_ref().is_some_and(|s| {
            s.view == view
                && s.end() == base
                && self.log.checksum_at(s.base).map(|c| s.end_checksum(c)) == Some(base_checksum)
        });
        let candidate = if extends_current {
            let mut staging = current.clone().expect("checked above");
            staging.entries.extend(entries);
            Some(staging)
        } else if self.log.checksum_at(base) == Some(base_checksum) {
            Some(Staging {
                view,
                target: op,
                base,
                entries,
            })
        } else {
            None
        };
        // Only a chunk that gets further than what is staged is progress.
        // Anything else (a duplicate, a stale or unattachable reply) waits
        // for the rate-limited retry, so that duplicated replies cannot
        // multiply into a storm of requests.
        let progress = candidate.filter(|c| {
            current
                .as_ref()
                .is_none_or(|s| c.view > s.view || (c.view == s.view && c.end() > s.end()))
        });
        let Some(staging) = progress else {
            self.staging = current;
            self.request_start_view(view);
            return;
        };
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::InstallPartialLog) {
            self.install_view(staging, commit);
            return;
        }
        if staging.end() < staging.target {
            // Progress: ask for the next chunk at once.
            self.staging = Some(staging);
            self.last_start_view_request = None;
            self.request_start_view(view);
            return;
        }
        self.install_view(staging, commit);
    }

    /// Makes the log `log[..=base] ++ entries`, here and on disk. The
    /// entries were checked to chain onto `base` when they were received.
    fn replace_log_after(&mut self, base: Op, entries: Vec<Arc<Prepare>>) {
        self.log.truncate_after(base);
        for entry in &entries {
            self.log.append(entry.clone());
        }
        self.out.push(Output::WriteLog { after: base, entries });
    }

    /// Replaces the log after the staging's base with the new view's log,
    /// and joins the view as a backup.
    fn install_view(&mut self, staging: Staging, commit: Op) {
        if staging.base < self.log.base() {
            // A checkpoint installed meanwhile rebased the log: ask again.
            self.request_start_view(staging.view);
            return;
        }
        self.replace_log_after(staging.base, staging.entries);
        self.view = staging.view;
        self.log_view = staging.view;
        if self.recovery.take().is_some() {
            // Its incarnation is installed at `n - q + 1` others of this
            // epoch, which meet every quorum of it.
            self.fenced_epoch = self.membership.epoch();
        }
        self.reads.new_view();
        self.status = Status::Normal;
        self.status_since = self.ticks;
        self.stats.views_started += 1;
        self.dvcs.iter_mut().for_each(|d| *d = None);
        self.clear_queue();
        self.primary_op = staging.target;
        self.heard_primary();
        self.write_state();
        self.acknowledge();
        self.learn_commit(commit);
    }

    /// A StartView for the view we are already running: take whatever
    /// extends our log.
    fn catch_up_in_view(&mut self, op: Op, commit: Op, entries: Vec<Arc<Prepare>>) {
        self.heard_primary();
        self.primary_op = self.primary_op.max(op);
        let appended: Vec<Arc<Prepare>> = entries.into_iter().filter(|e| e.op > self.log.op()).collect();
        if appended.first().is_some_and(|e| self.log.can_append(e)) {
            let after = self.log.op();
            for entry in &appended {
                self.log.append(entry.clone());
            }
            self.out.push(Output::WriteLog {
                after,
                entries: appended,
            });
        }
        self.acknowledge();
        self.learn_commit(commit);
    }

    pub(crate) fn clear_queue(&mut self) {
        self.queue.clear();
        self.queued.clear();
    }
}
