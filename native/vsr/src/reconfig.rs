//! Membership changes through the log (docs/design/membership.md, section 2):
//! the origin of a change, the primary that admits and proposes it, the
//! switch to the next epoch when its entry commits, and the replicas that
//! leave.
//!
//! A change is one log entry, the *reconfiguration entry*: a prepare whose
//! only request has the reserved client id [`MEMBERSHIP_CLIENT`] and the
//! target membership as its payload. The old list's quorum commits it like
//! any entry; executing it enters the target epoch. The old epoch prepares
//! nothing after it, so ops of epoch `e` lie at or below its entry's op and
//! those of `e + 1` above.
//!
//! This step covers changes that add no member (remove and reorder):
//! learners, catching up across epochs by chunks, and the fence per epoch
//! come in later steps of the design.

use std::sync::Arc;

#[cfg(feature = "mutations")]
use crate::config::Mutation;
use crate::config::{Op, View};
use crate::membership::{ChangeId, Epoch, MemberId, Membership, Slot, MAX_SLOTS};
use crate::message::{Answer, Message, Prepare, Request, Sender, MEMBERSHIP_CLIENT};
use crate::replica::{Output, Replica, Role, Status};

/// How a change asked for through this replica ended, as its host hears it
/// (`Output::Reconfigured`). Each but `Done` and `Unknown` is a final "no":
/// the origin gives it only while no consent of its is outstanding, and
/// refuses every later `Confirm` for the change, so the change can no
/// longer be proposed anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeResult {
    /// The change's entry executed here: the target epoch is entered.
    Done,
    /// The list already is the target.
    Unchanged,
    /// Another change is under way (or this replica has one outstanding).
    Busy,
    /// The target is not the next epoch of the list (the list moved on).
    Stale,
    /// This replica is not a member of its epoch.
    NotMember,
    /// The target would lack a live quorum, or the primary could not be
    /// reached, by the deadline.
    NoQuorum,
    /// A new member's learner was never heard by the deadline.
    Unreachable,
    /// The change was proposed but its op went to another entry, and the
    /// deadline passed before it was proposed again.
    Abandoned,
    /// The replica jumped over the epoch by a checkpoint and cannot tell.
    Unknown,
}

/// The primary's admitted change, kept while it leads its view.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub(crate) change: ChangeId,
    /// The view it was admitted in.
    pub(crate) view: View,
    pub(crate) target: Membership,
    /// The origin's slot.
    origin: Slot,
    /// The tick after which, without the origin's consent, it is withdrawn.
    deadline: u64,
    /// The op the origin was last asked to consent to, and when.
    asked: Option<(Op, u64)>,
}

/// Committed entries fetched from a newer epoch, gathered until they reach
/// the entry that begins this replica's next epoch (`on_start_epoch`).
#[derive(Clone, Debug)]
pub(crate) struct EpochStaging {
    from: Op,
    from_checksum: u128,
    entries: Vec<Arc<Prepare>>,
}

impl EpochStaging {
    /// The op and checksum the next chunk must attach to.
    fn end(&self) -> (Op, u128) {
        self.entries
            .last()
            .map_or((self.from, self.from_checksum), |e| (e.op, e.checksum))
    }
}

/// The epoch the reconfiguration entry ending `entries` begins.
fn entries_epoch(entries: &[Arc<Prepare>]) -> Epoch {
    entries
        .last()
        .and_then(|e| e.reconfiguration())
        .map_or(0, |t| t.epoch())
}

/// A change asked for through this replica, until its host is answered.
#[derive(Clone, Debug)]
pub(crate) struct OriginChange {
    /// The host's id for it.
    id: u64,
    pub(crate) target: Membership,
    deadline: u64,
    sent_tick: u64,
    /// The op this origin consented to, if a consent is outstanding.
    pub(crate) consent: Option<Op>,
    /// The last answer from a primary.
    answer: Option<Answer>,
}

impl Replica {
    // ---- Origin ----------------------------------------------------------

    /// The target of change `id` to the members `ids`, asked through this
    /// replica: `Membership::next` from its list, named `ChangeId { origin:
    /// <its member id>, id }`, with the primary it knows kept in the lead.
    /// What its host hands `Input::Reconfigure`.
    pub fn change_target(
        &self,
        ids: &[MemberId],
        id: u64,
    ) -> Result<Membership, crate::membership::MembershipError> {
        let change = ChangeId { origin: self.id, id };
        self.membership.next(ids, change, self.primary())
    }

    /// The host asks for a change of the membership to `target` (from
    /// `Membership::next`, named `ChangeId { origin: <this member's id>,
    /// id }`), to be given up after `ticks` if not yet consented to.
    pub(crate) fn on_reconfigure_input(&mut self, id: u64, target: Membership, ticks: u64) {
        let change = ChangeId { origin: self.id, id };
        let refusal = if self.role != Role::Member || self.status == Status::Recovering {
            Some(ChangeResult::NotMember)
        } else if self
            .origin_change
            .as_ref()
            .is_some_and(|o| o.id != id || o.target != target)
        {
            Some(ChangeResult::Busy)
        } else if target.epoch() != self.membership.epoch() + 1 || target.change() != change {
            Some(ChangeResult::Stale)
        } else {
            None
        };
        if let Some(result) = refusal {
            self.out.push(Output::Reconfigured { id, result });
            return;
        }
        if self.origin_change.is_some() {
            return; // the same change again: it is under way
        }
        self.origin_change = Some(OriginChange {
            id,
            target,
            deadline: self.ticks.saturating_add(ticks),
            sent_tick: self.ticks,
            consent: None,
            answer: None,
        });
        self.submit_change();
    }

    /// Sends the outstanding change to the primary (or hands it over, on
    /// the primary).
    fn submit_change(&mut self) {
        let Some(origin) = self.origin_change.as_mut() else {
            return;
        };
        origin.sent_tick = self.ticks;
        let target = origin.target;
        let ticks = origin.deadline.saturating_sub(self.ticks);
        if self.status != Status::Normal {
            return; // retried once a view is running
        }
        if self.is_primary_of_view() {
            self.on_reconfigure(self.index, target, ticks);
        } else {
            let primary = self.primary();
            self.send(primary, &Message::Reconfigure { target, ticks });
        }
    }

    /// Every tick: resends the change, and answers the host once its
    /// deadline has passed with no consent outstanding.
    pub(crate) fn tick_origin(&mut self) {
        let Some(origin) = self.origin_change.as_ref() else {
            return;
        };
        if self.ticks >= origin.deadline && origin.consent.is_none() {
            let result = match origin.answer {
                Some(Answer::Proposed { .. }) => ChangeResult::Abandoned,
                Some(Answer::Unreachable | Answer::AdmittedUnheard) => ChangeResult::Unreachable,
                _ => ChangeResult::NoQuorum,
            };
            return self.finish_origin(result);
        }
        if self.ticks >= origin.sent_tick.saturating_add(self.config.request_retry_ticks) {
            self.submit_change();
        }
    }

    /// Answers the host and forgets the change: any later `Confirm` for it
    /// is refused.
    fn finish_origin(&mut self, result: ChangeResult) {
        if let Some(origin) = self.origin_change.take() {
            self.out.push(Output::Reconfigured {
                id: origin.id,
                result,
            });
        }
    }

    fn origin_matches(&self, change: ChangeId) -> bool {
        self.origin_change
            .as_ref()
            .is_some_and(|o| o.target.change() == change)
    }

    pub(crate) fn on_reconfigure_answer(&mut self, change: ChangeId, answer: Answer) {
        if !self.origin_matches(change) {
            return;
        }
        let origin = self.origin_change.as_mut().expect("matched");
        origin.answer = Some(answer);
        if origin.consent.is_some() {
            // A consent is outstanding: only the execution of its op says
            // how the change ended.
            return;
        }
        let result = match answer {
            Answer::Admitted | Answer::AdmittedUnheard | Answer::Proposed { .. } => return,
            Answer::Busy => ChangeResult::Busy,
            Answer::Stale => ChangeResult::Stale,
            Answer::Unchanged => ChangeResult::Unchanged,
            Answer::NoQuorum | Answer::Withdrawn => ChangeResult::NoQuorum,
            Answer::Unreachable => ChangeResult::Unreachable,
        };
        self.finish_origin(result);
    }

    /// The primary asks whether it may propose the change at `op`. The
    /// origin consents to one op at a time; a change it does not hold (it
    /// answered its host, or restarted without it) is refused for good.
    pub(crate) fn on_confirm(&mut self, from: Slot, change: ChangeId, view: View, op: Op) {
        if !self.origin_matches(change) {
            #[cfg(feature = "mutations")]
            if self.mutated(Mutation::ProposeWithoutConsent) {
                return self.answer_confirm(from, Message::Confirmed { change, view, op });
            }
            return self.answer_confirm(from, Message::Refused { change });
        }
        let origin = self.origin_change.as_mut().expect("matched");
        if origin.consent.is_some_and(|n| n != op) {
            return; // a consent at another op is outstanding: not yet
        }
        origin.consent = Some(op);
        self.answer_confirm(from, Message::Confirmed { change, view, op });
    }

    fn answer_confirm(&mut self, to: Slot, message: Message) {
        if to == self.index {
            match message {
                Message::Confirmed { change, view, op } => self.on_confirmed(change, view, op),
                Message::Refused { change } => self.on_refused(change),
                _ => {}
            }
        } else {
            self.send(to, &message);
        }
    }

    /// The origin executed op `op`: its own entry (the change is done), or
    /// another at the op it consented to (that consent is spent, and the
    /// change may be proposed again, at a later op).
    fn origin_executed(&mut self, op: Op, target: Option<Membership>) {
        let Some(origin) = self.origin_change.as_mut() else {
            return;
        };
        if target.is_some_and(|t| t.change() == origin.target.change()) {
            return self.finish_origin(ChangeResult::Done);
        }
        if origin.consent == Some(op) {
            origin.consent = None;
        }
    }

    /// A checkpoint of this replica's own epoch at `op` was installed. For
    /// an origin: had its change committed at the op it consented to, at
    /// or below `op`, the checkpoint would be of the next epoch (a replica
    /// installs only its own epoch's), so that op went to another entry
    /// and the consent is spent, as if the origin had executed it.
    pub(crate) fn after_checkpoint_install(&mut self, op: Op) {
        // Chunks gathered from below the checkpoint attach to nothing now.
        if self.epoch_staging.as_ref().is_some_and(|s| s.end().0 <= op) {
            self.epoch_staging = None;
        }
        if let Some(origin) = self.origin_change.as_mut() {
            if origin.consent.is_some_and(|n| n <= op) {
                origin.consent = None;
            }
        }
    }

    // ---- Primary ---------------------------------------------------------

    /// A member asks for a change (or the primary's own host does, through
    /// `from == self.index`).
    pub(crate) fn on_reconfigure(&mut self, from: Slot, target: Membership, ticks: u64) {
        if !self.is_primary() {
            return; // the origin retries towards the right primary
        }
        let change = target.change();
        let answer = self.admit(from, target, ticks);
        self.answer_origin(from, change, answer);
        if matches!(answer, Answer::Admitted | Answer::AdmittedUnheard) {
            self.refresh_learners();
            self.teach_learners();
            self.try_propose();
        }
    }

    fn admit(&mut self, from: Slot, target: Membership, ticks: u64) -> Answer {
        let change = target.change();
        if let Some((op, pending)) = self.pending_reconfiguration() {
            return if pending.change() == change {
                Answer::Proposed { op }
            } else {
                Answer::Busy
            };
        }
        if target.epoch() != self.membership.epoch() + 1
            || self.membership.member_by_id(change.origin).is_none()
        {
            return Answer::Stale;
        }
        for m in target.members() {
            match self.membership.member(m.slot) {
                Some(old) if old.id == m.id && old.joined == m.joined => {}
                // A member new to the list: a learner first, at a slot free
                // in the list.
                None if self.membership.member_by_id(m.id).is_none() && m.joined == target.epoch() => {}
                _ => return Answer::Stale,
            }
        }
        if let Some(admitted) = &self.change {
            return if admitted.change != change {
                Answer::Busy
            } else if self.learner_unheard() {
                // Asked again (the origin resends until answered for good):
                // say whether every learner has been heard.
                Answer::AdmittedUnheard
            } else {
                Answer::Admitted
            };
        }
        let same = |a: &[crate::membership::Member], b: &[crate::membership::Member]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x.slot, x.id) == (y.slot, y.id))
        };
        if same(target.members(), self.membership.members()) {
            return Answer::Unchanged;
        }
        // Never below a quorum: the staying members heard lately, and the
        // learners (which must catch up before the proposal), make one.
        let learners = target.slots().filter(|&s| !self.membership.contains(s)).count();
        if self.live_in(&target) + learners < target.quorum() {
            return Answer::NoQuorum;
        }
        self.change = Some(Change {
            change,
            view: self.view,
            target,
            origin: from,
            // The origin's own deadline, as it said (it answers its host
            // then, unless it consented meanwhile).
            deadline: self.ticks.saturating_add(ticks),
            asked: None,
        });
        Answer::Admitted
    }

    /// How many of `target`'s members this primary heard lately (itself
    /// included).
    fn live_in(&self, target: &Membership) -> usize {
        target
            .slots()
            .filter(|&s| self.membership.contains(s) && self.heard_lately(s))
            .count()
    }

    fn answer_origin(&mut self, to: Slot, change: ChangeId, answer: Answer) {
        if to == self.index {
            self.on_reconfigure_answer(change, answer);
        } else {
            self.send(to, &Message::ReconfigureAnswer { change, answer });
        }
    }

    /// The reconfiguration entry in this replica's log above what it
    /// executed, if any (its op and target): the old epoch prepares
    /// nothing after it.
    pub(crate) fn pending_reconfiguration(&self) -> Option<(Op, Membership)> {
        let head = self.log.op();
        if head <= self.commit_min {
            return None;
        }
        let entry = self.log.get(head)?;
        let target = entry.reconfiguration()?;
        Some((head, target))
    }

    /// Whether the primary holds client entries back: it asked the origin
    /// to consent to the next op, and waits for the answer (at most
    /// `resend_ticks`), so that the op stays free for the entry.
    pub(crate) fn holding_for_consent(&self) -> bool {
        self.change
            .as_ref()
            .and_then(|c| c.asked)
            .is_some_and(|(op, tick)| {
                op == self.log.op() + 1 && self.ticks < tick.saturating_add(self.config.resend_ticks)
            })
    }

    /// Asks the origin for its consent to the next op, once a quorum of the
    /// target is live and caught up; withdraws the change at its deadline.
    pub(crate) fn try_propose(&mut self) {
        if !self.is_primary() {
            return;
        }
        let Some(change) = self.change.as_ref() else {
            return;
        };
        let (id, origin, target) = (change.change, change.origin, change.target);
        if self.ticks >= change.deadline {
            let answer = if self.learner_unheard() {
                Answer::Unreachable
            } else {
                Answer::Withdrawn
            };
            self.change = None;
            self.refresh_learners();
            return self.answer_origin(origin, id, answer);
        }
        let caught_up = target
            .slots()
            .filter(|&s| {
                s == self.index || (self.acked[s as usize] >= self.commit_max && self.heard_lately(s))
            })
            .count();
        if caught_up < target.quorum() || !self.learners_caught_up(&target) {
            return;
        }
        let op = self.log.op() + 1;
        // Ask again only once the last question had its chance, and as
        // long again after that: an origin that does not answer costs
        // commands at most one hold in two.
        if change.asked.is_some_and(|(asked, tick)| {
            let wait = if asked == op { 1 } else { 2 };
            self.ticks < tick.saturating_add(self.config.resend_ticks.saturating_mul(wait))
        }) {
            return;
        }
        self.change.as_mut().expect("held").asked = Some((op, self.ticks));
        let view = self.view;
        if origin == self.index {
            self.on_confirm(self.index, id, view, op);
        } else {
            self.send(origin, &Message::Confirm { change: id, view, op });
        }
    }

    /// The origin consents: prepare the entry, if `op` is still the next
    /// op of this view.
    pub(crate) fn on_confirmed(&mut self, change: ChangeId, view: View, op: Op) {
        let matches = self.change.as_ref().is_some_and(|c| c.change == change);
        if !matches || !self.is_primary() || view != self.view || op != self.log.op() + 1 {
            return; // asked again later, for the op then next
        }
        if self.log.op() >= self.commit_max.saturating_add(self.config.pipeline_max) {
            return;
        }
        let change = self.change.take().expect("matched");
        self.prepare_reconfiguration(op, change);
    }

    pub(crate) fn on_refused(&mut self, change: ChangeId) {
        if self.change.as_ref().is_some_and(|c| c.change == change) {
            self.change = None;
        }
    }

    /// Prepares the reconfiguration entry at `op`, recording each target
    /// member's incarnation as this primary knows it.
    fn prepare_reconfiguration(&mut self, op: Op, change: Change) {
        let mut members = change.target.members().to_vec();
        for m in &mut members {
            m.incarnation = self.incarnations[m.slot as usize];
            if !self.membership.contains(m.slot) {
                // The learner's life whose acknowledgements the proposal
                // counted: only that life enters without a recovery.
                m.life = self.learner_lives[m.slot as usize];
            }
        }
        let target =
            Membership::new(change.target.epoch(), change.change, &members).expect("same slots and ids");
        let request = Request {
            client: MEMBERSHIP_CLIENT,
            session: 0,
            request: target.epoch(),
            origin: change.origin,
            payload: postcard::to_allocvec(&target).expect("encoding to a Vec cannot fail"),
        };
        debug_assert_eq!(op, self.log.op() + 1);
        self.prepare_next(vec![request]);
        self.answer_origin(change.origin, change.change, Answer::Proposed { op });
    }

    // ---- The switch ------------------------------------------------------

    /// Executing op `op`, whose entry reconfigures to `target` (or not:
    /// `None`): tells the origin, and enters the target epoch.
    pub(crate) fn executed_op(&mut self, op: Op, checksum: u128, target: Option<Membership>) {
        if let Some(target) = target.filter(|t| t.epoch() > self.executed_membership.epoch()) {
            self.executed_membership = target;
        }
        self.origin_executed(op, target);
        let Some(target) = target else {
            return;
        };
        if target.epoch() <= self.membership.epoch() {
            return; // a restart's replay of an epoch already entered
        }
        if self.is_primary() {
            // The last word of the old epoch: the others learn the commit
            // from it and enter by their own, instead of fetching the new
            // epoch's start.
            let commit = Message::Commit {
                view: self.view,
                commit: op,
                round: self.reads.heard_round,
                checkpoint: self.checkpoints.canonical(),
            };
            self.broadcast(&commit);
            self.send_to_learners(&commit);
        }
        // By its own commit, in a running replica whose log ends at the
        // entry; else it caught up (a restart's replay, or committed
        // entries fetched past the entry) and joins the epoch's running
        // view.
        let live = !self.replaying && self.log.op() == op;
        self.enter_epoch(target, (op, checksum), live);
    }

    /// Enters epoch `target.epoch()`, which began after op `start` (its
    /// entry's op and checksum). `live`: by the entry's commit in a running
    /// replica; else during a restart's replay, which waits for the
    /// epoch's running view as a replica that caught up does.
    pub(crate) fn enter_epoch(&mut self, target: Membership, start: (Op, u128), live: bool) {
        debug_assert!(
            !live || self.log.op() == start.0,
            "the old epoch prepares nothing after its entry"
        );
        let old = self.membership;
        if self
            .origin_change
            .as_ref()
            .is_some_and(|o| o.target.epoch() <= target.epoch())
        {
            // Another change made this epoch (its own answered `Done`
            // before this): the list it asked to change is gone.
            self.finish_origin(ChangeResult::Stale);
        }
        self.membership = target;
        self.epoch_start = start;
        // A fence of the epoch it leaves is moot; entering decides anew.
        self.recovery = None;
        // Chunks gathered to reach this epoch are moot however it was
        // entered (left over, a later catch-up would ask from their end,
        // which the senders may no longer hold: review of step 7).
        self.epoch_staging = None;
        let was_learner = self.role == Role::Learner;
        let listed = target
            .member(self.index)
            .is_some_and(|m| m.id == self.id && m.joined == self.joined);
        self.role = match (listed, was_learner) {
            (true, _) => Role::Member,
            // A learner catching up through epochs before the one that
            // admits it; one left out of that one was never admitted.
            (false, true) if target.epoch() < self.joined => Role::Learner,
            (false, true) => Role::Removed,
            (false, false) => Role::Leaving,
        };
        let recovers = listed
            && if was_learner {
                self.learner_must_recover(&target)
            } else {
                self.another_life_unfenced(&target)
            };
        let own = self.incarnations[self.index as usize];
        let fences = listed && !was_learner && self.member_must_fence(&target, own);
        self.view = 0;
        self.log_view = 0;
        self.view_seen = 0;
        self.campaign = 0;
        self.votes = [0; MAX_SLOTS];
        self.vote_ticks = [0; MAX_SLOTS];
        self.dvcs = vec![None; MAX_SLOTS];
        self.staging = None;
        self.reads.new_view();
        self.acked = [0; MAX_SLOTS];
        // Repair answers of the old epoch's view 0 would otherwise carry on
        // into the new one's (harmless entries, wasted bandwidth).
        self.repair_streams = std::array::from_fn(|_| None);
        self.last_heard = [self.ticks; MAX_SLOTS];
        self.change = None;
        self.learners.clear();
        self.learner_lives = [0; MAX_SLOTS];
        self.learn_target = None;
        self.status_since = self.ticks;
        self.last_primary_tick = self.ticks;
        self.last_start_view_request = None;
        self.last_do_view_change_request = None;
        self.epoch_started = 0;
        self.forget_slots_leaving(&old, &target);
        for m in target.members() {
            let known = &mut self.incarnations[m.slot as usize];
            *known = (*known).max(m.incarnation);
        }
        let leads = target.primary(0) == self.index;
        match self.role {
            Role::Member if recovers => {
                // Another life of it, or an epoch after the one that
                // admitted it: an earlier life may have taken part at
                // incarnation 0, so it takes a new incarnation at a quorum
                // of the list, and the view's log, before it takes part.
                self.fence_in_epoch();
            }
            Role::Member if fences => self.fence_alone_in_epoch(),
            Role::Member if live => {
                self.status = Status::Normal;
                if leads {
                    self.view_start_op = self.log.op();
                    self.acked[self.index as usize] = self.log.op();
                    self.last_broadcast_tick = self.ticks;
                } else {
                    self.clear_queue();
                }
            }
            Role::Member => {
                // Replayed: it may have led view 0 before it crashed and
                // sent prepares it never wrote; it waits for the view.
                self.status = Status::ViewChange;
                self.clear_queue();
            }
            Role::Learner => {
                self.status = Status::ViewChange;
                self.clear_queue();
            }
            _ => {
                self.status = Status::Normal;
                self.clear_queue();
            }
        }
        self.write_state();
        self.out.push(Output::Epoch {
            membership: Box::new(target),
            role: self.role,
        });
        if self.role == Role::Removed {
            self.out.push(Output::Removed {
                epoch: target.epoch(),
            });
            return;
        }
        if !live || recovers || fences || self.role == Role::Learner {
            return;
        }
        if self.role == Role::Member {
            // Tell the ones that left, so that they may stop.
            let epoch = target.epoch();
            for m in old.members().iter().filter(|m| !target.is_member(m.slot, m.id)) {
                self.send_to(m.slot, m.id, &Message::EpochStarted { epoch });
            }
            if leads {
                self.broadcast_heartbeat(false);
                self.prepare_queued();
            }
        } else {
            self.tick_leaving_now();
        }
    }

    /// Entering `target` as a member that started as a learner, in a life
    /// other than the one the lists record, whose recovery on entering its
    /// first epoch had not finished (it fetched its way into this one
    /// meanwhile): an earlier life may have taken part here at the same
    /// incarnation, so it recovers in full again, keeping its log.
    fn another_life_unfenced(&self, target: &Membership) -> bool {
        self.fenced_epoch < self.joined && target.member(self.index).is_some_and(|m| m.life != self.life)
    }

    /// Entering `target` as a member that was one before, at incarnation
    /// `own`: whether its number must be installed at the new list first
    /// (a fence alone, docs/protocol.md, "Recovering across epochs"). It
    /// must if it recovered after the entry was proposed, among the old
    /// list, which alone installed its number: the entry records an older
    /// one, and a later life recovering among the new list would take the
    /// same number again. A fence done in `target` stands (`fenced_epoch`:
    /// a restart's replay enters again).
    pub(crate) fn member_must_fence(&self, target: &Membership, own: u64) -> bool {
        #[cfg(feature = "mutations")]
        if self.mutated(crate::config::Mutation::NoFenceInNewEpoch) {
            return false;
        }
        self.fenced_epoch != target.epoch() && target.member(self.index).is_some_and(|m| own > m.incarnation)
    }

    /// Step 2 of a recovery alone ([`Recovery::fence_only`]): the list's
    /// others adopt this replica's number (any of them answers, in any
    /// status), `n - q + 1` of them (one of a list of two), before it takes part. Its
    /// log is sound and whole for the epoch (no earlier life of it took
    /// part there: a replica holding the entry unexecuted answered no
    /// recovery), so it then joins the epoch's view as a replica that
    /// caught up does.
    pub(crate) fn fence_alone_in_epoch(&mut self) {
        self.status = Status::Recovering;
        self.status_since = self.ticks;
        let nonce = (u128::from(self.config.boot_nonce) << 64) | u128::from(self.membership.epoch());
        self.recovery = Some(crate::recovery::Recovery::fence_only(nonce));
        self.clear_queue();
        if self.membership.n() == 1 {
            return self.fenced_in_epoch();
        }
        self.last_resend_tick = self.ticks;
        self.broadcast(&Message::FenceAlone { nonce });
    }

    /// A fence alone is done: the replica takes part in its epoch, in a
    /// view change (it may have been its view's primary, whose view it
    /// never ran), asking the view's primary for its log.
    pub(crate) fn fenced_in_epoch(&mut self) {
        self.recovery = None;
        self.fenced_epoch = self.membership.epoch();
        self.status = Status::ViewChange;
        self.status_since = self.ticks;
        self.write_state();
        self.last_start_view_request = None;
        self.request_start_view(self.view);
    }

    /// After a restart from disk: a member whose number is above the one
    /// its epoch's entry records and that never fenced in that epoch
    /// crashed before its fence alone finished: it fences again.
    pub(crate) fn fence_if_unrecorded(&mut self) {
        if self.role != Role::Member || self.status == Status::Recovering {
            return;
        }
        let own = self.incarnations[self.index as usize];
        let membership = self.membership;
        if self.member_must_fence(&membership, own) {
            self.fence_alone_in_epoch();
        }
    }

    /// Recovers in the current epoch keeping the log (a fence, design
    /// 2.10): steps 1 and 2 of a recovery among the list's others, then
    /// the view's log; `fenced_epoch` marks it done. Its durable state
    /// does not say `recovering` (that would empty its store's log): a
    /// restart checks again (`resume_learner_life`).
    pub(crate) fn fence_in_epoch(&mut self) {
        self.status = Status::Recovering;
        self.status_since = self.ticks;
        // Unique to this start and epoch: answers to an earlier life's
        // fence never count for this one.
        let nonce =
            (u128::from(self.config.boot_nonce ^ self.life) << 64) | u128::from(self.membership.epoch());
        self.recovery = Some(crate::recovery::Recovery::keeping_log(nonce));
        self.last_resend_tick = 0;
        self.clear_queue();
    }

    /// Installing a checkpoint whose membership is of a newer epoch
    /// (design 2.9): the replica enters that epoch, the newest if it
    /// passed several (it knows no list in between), merging the
    /// incarnations it records, and joins its running view by catching up
    /// (2.5). `start` is the epoch's entry if the checkpoint is at it,
    /// else unknown (0, 0): its notices then name no start, and a replica
    /// told one fetches the epoch's start instead. An origin learns how
    /// its change ended from the list (2.4, step 8): `Done` if this very
    /// epoch is its change's, `Stale` (superseded) if another change made
    /// it, `Unknown` if it jumped over its change's epoch.
    pub(crate) fn enter_epoch_by_checkpoint(&mut self, target: Membership, start: (Op, u128)) {
        if let Some(origin) = &self.origin_change {
            let result = if origin.target.epoch() < target.epoch() {
                ChangeResult::Unknown
            } else if origin.target.change() == target.change() {
                ChangeResult::Done
            } else {
                ChangeResult::Stale
            };
            self.finish_origin(result);
        }
        self.enter_epoch(target, start, false);
    }

    /// Going from list `old` to `new`: forgets the number and all else it
    /// holds for each slot whose node leaves, that is every slot `new`
    /// leaves out, and every slot both lists hold with another node in
    /// each (member id or `joined`) but its own. Slots are reused: a
    /// replica that passes through every epoch sees such a slot empty in
    /// between, but one that jumps epochs (by a checkpoint of a newer
    /// epoch, or recovering, told of one) would otherwise keep the old
    /// node's number for the new one, and a number above the new node's
    /// drops all it sends as stale (`vopr --membership` seed 13605: a
    /// recovery whose answers from the new node never counted). The new
    /// node's number is the one its list records (the caller raises it).
    ///
    /// Everything else kept per slot is the old node's too: its
    /// acknowledgements, votes, DoViewChange and read answers
    /// (`forget_incarnation`), its clock reading, its checkpoint reports
    /// and pin (`forget_slot`). A slot only `new` holds is left alone: it
    /// holds nothing of a member since it left an earlier list (the crash
    /// vector is checked so, `invariants`), and a checkpoint pin there is
    /// a learner's, whose sync goes on. Its own slot is kept when another
    /// node takes it (this replica is then leaving): the number there is
    /// its own, which it still sends, not a peer's (its gate takes nothing
    /// from its own slot).
    fn forget_slots_leaving(&mut self, old: &Membership, new: &Membership) {
        for slot in 0..MAX_SLOTS as Slot {
            if self.node_leaves(old, new, slot) {
                self.incarnations[slot as usize] = 0;
                self.forget_slot(slot);
            }
        }
    }

    /// Whether the node at `slot` in `old` is gone from it in `new`, as
    /// `forget_slots_leaving` counts it.
    pub(crate) fn node_leaves(&self, old: &Membership, new: &Membership, slot: Slot) -> bool {
        let changed_hands = slot != self.index
            && matches!(
                (old.member(slot), new.member(slot)),
                (Some(o), Some(n)) if (o.id, o.joined) != (n.id, n.joined)
            );
        !new.contains(slot) || changed_hands
    }

    /// Drops what this replica holds for `slot`, which left the list:
    /// what an older incarnation's messages left (`forget_incarnation`),
    /// and the vote's time, the clock reading, checkpoint reports and pin.
    fn forget_slot(&mut self, slot: Slot) {
        let s = slot as usize;
        self.forget_incarnation(s);
        self.vote_ticks[s] = 0;
        self.clocks.forget(s);
        self.checkpoints.forget_peer(slot);
    }

    // ---- Leaving ---------------------------------------------------------

    pub(crate) fn tick_leaving(&mut self) {
        // A leaving replica catching up by a checkpoint keeps asking for
        // its chunks (review 9).
        self.tick_sync();
        if self.ticks >= self.last_resend_tick.saturating_add(self.config.resend_ticks) {
            self.tick_leaving_now();
        }
    }

    /// Asks the new members whether they have entered the epoch.
    fn tick_leaving_now(&mut self) {
        self.last_resend_tick = self.ticks;
        let epoch = self.membership.epoch();
        self.broadcast(&Message::Leaving { epoch });
    }

    /// A member of the epoch this replica left says it entered it: with a
    /// quorum of them, the new list holds the log up to the epoch's start
    /// and serves the rest, and this replica stops.
    pub(crate) fn on_epoch_started(&mut self, from: Slot, epoch: Epoch) {
        if self.role != Role::Leaving || epoch != self.membership.epoch() || !self.membership.contains(from) {
            return;
        }
        self.epoch_started |= 1 << from;
        if self.epoch_started.count_ones() as usize >= self.membership.quorum() {
            self.removed();
        }
    }

    /// This replica stops for good (`Output::Removed`).
    fn removed(&mut self) {
        self.role = Role::Removed;
        self.write_state();
        self.out.push(Output::Removed {
            epoch: self.membership.epoch(),
        });
    }

    /// A replica recovering without its state (it holds no log) hears of
    /// a newer epoch: it recovers there instead, among that list, if it is
    /// a member (its host's list was old: design 2.10, "Finding the newest
    /// epoch"); one left out of it was removed, and stops (so does one
    /// recovering with its log kept). Its steps 1 and 2 start over,
    /// counted over the new list, whose members know at least the
    /// incarnation the list records for it.
    fn recover_in(&mut self, membership: Membership) {
        let listed = membership
            .member(self.index)
            .is_some_and(|m| m.id == self.id && m.joined == self.joined);
        let old = self.membership;
        self.membership = membership;
        self.forget_slots_leaving(&old, &membership);
        if !listed {
            return self.removed();
        }
        let nonce = self.recovery.as_ref().map_or(0, |r| r.nonce()).wrapping_add(1);
        self.epoch_start = (0, 0);
        for m in membership.members() {
            let known = &mut self.incarnations[m.slot as usize];
            *known = (*known).max(m.incarnation);
        }
        self.view = 0;
        self.log_view = 0;
        self.view_seen = 0;
        // Views are numbered per epoch: what it gathered or counted for a
        // view of the old epoch is moot, and a view's log staged there
        // (view 7 of epoch 2, say) would outrank every chunk of view 0 of
        // the new one in `on_start_view`, which then never installs
        // (`vopr --membership` seed 358): it forgets them, as `enter_epoch`
        // does.
        self.staging = None;
        self.epoch_staging = None;
        self.last_start_view_request = None;
        self.campaign = 0;
        self.votes = [0; MAX_SLOTS];
        self.vote_ticks = [0; MAX_SLOTS];
        self.dvcs = vec![None; MAX_SLOTS];
        self.recovery = Some(crate::recovery::Recovery::new(nonce));
        self.last_resend_tick = 0;
        self.write_state();
        self.out.push(Output::Epoch {
            membership: Box::new(membership),
            role: self.role,
        });
    }

    // ---- The gate's answers ----------------------------------------------

    /// A message from a sender that is not a member of this replica's
    /// epoch (docs/design/membership.md, 2.6). Nothing of it is merged.
    pub(crate) fn outside_the_gate(&mut self, sender: Sender, message: Message) {
        let epoch = self.membership.epoch();
        if sender.epoch < epoch {
            match message {
                // An entry is named by its checksum, true in any epoch: a
                // replica repairing from an older epoch's superblock gets
                // it here (design break 8). Its refusals count only within
                // one epoch, so there is no `NoEntry` across.
                Message::RequestEntry { op, checksum } => {
                    if let Some(entry) = self.log.get(op).filter(|e| e.checksum == checksum).cloned() {
                        self.send_to(sender.slot, sender.id, &Message::Entry { entry });
                    }
                }
                Message::RequestStartEpoch { from, .. } => {
                    return self.serve_start_epoch(sender.slot, sender.id, from);
                }
                // The chunks of a checkpoint this replica offered it
                // (`serve_start_epoch`): committed state, true in any epoch.
                Message::RequestCheckpoint { op, digest, offset } => {
                    return self.serve_checkpoint_request((sender.slot, sender.id), (op, digest), offset);
                }
                _ => {}
            }
            // Its sender is behind, or was left out: tell it the epoch.
            return self.notify_epoch(sender.slot, sender.id);
        }
        if sender.epoch > epoch {
            if self.status == Status::Repairing {
                if let Message::EpochNotice { membership, .. } = &message {
                    // Its list moved on while it waited for its damaged
                    // entry: the members that could send it may have
                    // compacted it away, and across epochs nobody answers
                    // `NoEntry` (refusals count within one epoch), so it
                    // would wait for good (`vopr --membership` seeds 7002,
                    // 9590). It gives the repair up, which is always safe,
                    // and recovers in the newer list.
                    self.give_up_repair();
                    if self.status == Status::Recovering {
                        return self.recover_in(*membership);
                    }
                }
                return;
            }
            if self.role == Role::Leaving {
                // Its epoch's successor began: a quorum of this epoch's
                // list entered it (they committed its entry in it), and
                // the newer list holds the log. Nothing is left to serve.
                return self.removed();
            }
            if let Message::EpochNotice { membership, .. } = &message {
                let listed = membership
                    .member(self.index)
                    .is_some_and(|m| m.id == self.id && m.joined == self.joined);
                if self.status == Status::Recovering && !listed {
                    // Left out of a newer epoch while recovering, its log
                    // kept or not: it takes part in nothing until it has
                    // recovered, and that epoch began, so nothing needs it
                    // (`vopr --membership` seeds 290 and 819: a learner
                    // restarted after the proposal, recovering in full on
                    // entering, removed by the next change).
                    return self.recover_in(*membership);
                }
            }
            if self.status == Status::Recovering && self.recovery.as_ref().is_some_and(|r| !r.kept_log) {
                if let Message::EpochNotice { membership, .. } = &message {
                    return self.recover_in(*membership);
                }
                // Any other message of a newer epoch (its primary's
                // prepares and commits go to every member): the members
                // this replica asks may all have left, or be unable to
                // answer, so it asks the sender, whose gate answers an
                // older epoch's message with the notice (design 2.10).
                return self.ask_epoch(sender);
            }
            self.newer_sender = Some(sender);
            if let Message::EpochNotice { membership, .. } = &message {
                if self.newer_list.is_none_or(|l| l.epoch() < membership.epoch()) {
                    self.newer_list = Some(*membership);
                }
            }
            // This replica is behind: it goes on in its own epoch (which
            // may still have to commit the entry) until it enters, and
            // fetches the committed log that gets it there.
            match message {
                Message::EpochNotice {
                    membership,
                    start,
                    start_checksum,
                } => {
                    if !self.on_epoch_notice(membership, start, start_checksum) {
                        self.request_start_epoch(sender, false);
                    }
                }
                Message::StartEpoch {
                    commit,
                    from,
                    from_checksum,
                    entries,
                } => {
                    if self.on_start_epoch(commit, from, from_checksum, entries) {
                        self.request_start_epoch(sender, true);
                    }
                }
                Message::CheckpointChunk {
                    op,
                    digest,
                    total,
                    offset,
                    bytes,
                } if self.asked_across(sender) => {
                    let before = self.commit_min;
                    self.on_checkpoint_chunk_from(
                        (sender.slot, sender.id),
                        (op, digest),
                        total,
                        offset,
                        bytes,
                    );
                    if self.commit_min > before && self.membership.epoch() < sender.epoch {
                        // Installed, still behind the sender's epoch: the
                        // rest from the checkpoint's op.
                        self.request_start_epoch(sender, true);
                    }
                }
                _ => self.request_start_epoch(sender, false),
            }
            return;
        }
        if let Message::Leaving { epoch: left } = message {
            if left == epoch
                && self.role == Role::Member
                && !self.membership.is_member(sender.slot, sender.id)
            {
                self.send_to(sender.slot, sender.id, &Message::EpochStarted { epoch });
            }
        }
    }

    /// A replica recovering without its state heard `sender`, of a newer
    /// epoch: it sends it its `Recovery`, which that epoch's gate answers
    /// with an `EpochNotice` (at most once per sender slot per
    /// `resend_ticks`, the notices' own limit).
    fn ask_epoch(&mut self, sender: Sender) {
        let Some(nonce) = self.recovery.as_ref().map(|r| r.nonce()) else {
            return;
        };
        let last = &mut self.notice_ticks[sender.slot as usize];
        if *last != 0 && self.ticks < last.saturating_add(self.config.resend_ticks) {
            return;
        }
        *last = self.ticks.max(1);
        self.send_to(sender.slot, sender.id, &Message::Recovery { nonce });
    }

    /// A message of an older epoch: its sender is behind, or was left out
    /// (at most one notice per sender slot per `resend_ticks`).
    pub(crate) fn notify_epoch(&mut self, to: Slot, id: MemberId) {
        let last = &mut self.notice_ticks[to as usize];
        if *last != 0 && self.ticks < last.saturating_add(self.config.resend_ticks) {
            return;
        }
        *last = self.ticks.max(1);
        let (start, start_checksum) = self.epoch_start;
        let membership = self.membership;
        self.send_to(
            to,
            id,
            &Message::EpochNotice {
                membership,
                start,
                start_checksum,
            },
        );
    }

    /// A member of a newer epoch says when it began: if this replica's log
    /// holds that entry (same checksum), the entry is committed (the notice
    /// is proof, and the log agrees up to there), so it executes up to it
    /// and enters by its commit.
    pub(crate) fn on_epoch_notice(
        &mut self,
        membership: Membership,
        start: Op,
        start_checksum: u128,
    ) -> bool {
        if membership.epoch() != self.membership.epoch() + 1 || start == 0 {
            return false;
        }
        let holds = self.log.checksum_at(start) == Some(start_checksum)
            && self
                .log
                .get(start)
                .and_then(|e| e.reconfiguration())
                .is_some_and(|t| t.epoch() == membership.epoch());
        let stuck = (self.status == Status::Recovering && !self.fences_with_its_log())
            || self.status == Status::Repairing;
        if !holds || stuck {
            return false; // it fetches the committed log instead
        }
        if start > self.commit_max {
            self.commit_max = start;
        }
        self.execute_committed();
        true
    }

    /// Asks `sender`, of a newer epoch, for the committed log after what
    /// this replica executed (at most once per `resend_ticks`, unless the
    /// last answer left more to fetch: `more`).
    fn request_start_epoch(&mut self, sender: Sender, more: bool) {
        if !self.fetches_across_epochs() {
            return;
        }
        if !more && !self.due(self.last_start_epoch_request) {
            return;
        }
        if self.syncing() {
            // A checkpoint is on its way (below the asked replica's log
            // base): asked again, a replica would offer its newest one,
            // and a sync under load would start over for ever.
            return;
        }
        self.last_start_epoch_request = Some(self.ticks);
        // A fresh question goes to the newer list's members in turn, once
        // one of them told it the list: the sender that woke it may be
        // one that cannot serve (a member recovering in the newer epoch
        // broadcasts every few ticks, and would win every time: review 9,
        // `replica_behind_asks_past_a_recovering_sender`). The rest of an
        // answer comes from the one that is serving it.
        let (slot, id, epoch) = match self
            .newer_list
            .filter(|l| !more && l.epoch() > self.membership.epoch())
        {
            Some(list) => {
                let mut asked: Vec<(Slot, MemberId, Epoch)> = list
                    .members()
                    .iter()
                    .filter(|m| m.slot != self.index || m.id != self.id)
                    .map(|m| (m.slot, m.id, list.epoch()))
                    .collect();
                // And the sender, if the list leaves it out: a replica
                // leaving that epoch serves its start until a quorum of the
                // list entered, and may be the only one that holds it (the
                // member that had entered lost its memory: `vopr
                // --membership` seed 2192).
                if !list.is_member(sender.slot, sender.id) {
                    asked.push((sender.slot, sender.id, sender.epoch));
                }
                if asked.is_empty() {
                    asked.push((sender.slot, sender.id, sender.epoch));
                }
                self.start_epoch_turn = self.start_epoch_turn.wrapping_add(1);
                asked[(self.start_epoch_turn % asked.len() as u64) as usize]
            }
            None => (sender.slot, sender.id, sender.epoch),
        };
        self.asked_across = Some((slot, id));
        let from = self.epoch_staging.as_ref().map_or(self.commit_min, |s| s.end().0);
        self.send_to(slot, id, &Message::RequestStartEpoch { epoch, from });
    }

    /// A replica behind a newer epoch it heard of asks again, every
    /// `view_change_ticks`, until it gets there: the newer epoch's members
    /// send it nothing unasked (one `EpochStarted` when they enter, which
    /// a partition may drop), and the members of its own list may all
    /// have left and stopped since (`vopr --membership` seed 787: a
    /// primary cut off through six changes, alone in epoch 1 after the
    /// heal, never heard another word).
    pub(crate) fn tick_behind(&mut self) {
        let Some(sender) = self.newer_sender else {
            return;
        };
        if sender.epoch <= self.membership.epoch() {
            self.newer_sender = None;
            return;
        }
        let last = self.last_start_epoch_request.unwrap_or(0);
        if self.ticks >= last.saturating_add(self.config.view_change_ticks) {
            self.request_start_epoch(sender, false);
        }
    }

    /// Whether `sender`, of a newer epoch, sends what this replica asked
    /// for: the checkpoint chunks of the replica it last asked for the
    /// epoch's start (or, diverged, for the quorum's checkpoint), or of
    /// the one its state sync comes from. Nothing else of a newer epoch is
    /// taken but `EpochNotice` and `StartEpoch` (design 2.6, rule 3): no
    /// crash vector, clock, vouch, prepare or request, and no chunk it did
    /// not ask for. A diverged replica takes chunks too: a checkpoint heals
    /// it, whatever the epoch it was taken in.
    fn asked_across(&self, sender: Sender) -> bool {
        (self.fetches_across_epochs() || self.heals_across_epochs())
            && (self.asked_across == Some((sender.slot, sender.id))
                || self.syncing_from(sender.slot, sender.id))
    }

    /// Whether this replica is diverged and may heal by a checkpoint from
    /// a newer epoch's replica (its peers may all have entered one).
    fn heals_across_epochs(&self) -> bool {
        self.is_diverged()
            && !matches!(self.status, Status::Recovering | Status::Repairing)
            && self.role != Role::Removed
    }

    /// Whether this replica catches up across epochs by fetching committed
    /// entries: not one recovering or repairing (they fetch their logs
    /// their own way), removed, or diverged (it heals by a checkpoint
    /// first: executing nothing, it would pile up entries past the
    /// reconfiguration entry).
    fn fetches_across_epochs(&self) -> bool {
        (!matches!(self.status, Status::Recovering | Status::Repairing) || self.fences_with_its_log())
            && self.role != Role::Removed
            && !self.is_diverged()
    }

    /// Recovering with its log kept (a learner's fence, or a fence alone):
    /// its log is the committed log up to its epoch's entry, so it may
    /// fetch a newer epoch's start like a replica behind, and enters that
    /// epoch (deciding there afresh whether it must fence) rather than
    /// wait for ever in an epoch its list left (`vopr --membership` seeds
    /// 1465, 2329 and 2589).
    fn fences_with_its_log(&self) -> bool {
        self.status == Status::Recovering && self.recovery.as_ref().is_some_and(|r| r.kept_log)
    }

    /// A replica of an older epoch asks for the committed log after `from`:
    /// one message of what this replica executed (every replica holds the
    /// same committed entries, so the asker may take them from anyone).
    /// Below this log's base it is sent the newest checkpoint a quorum
    /// vouches for instead, pinned as for a lagging peer of this epoch
    /// (`send_checkpoint`), never entries this replica no longer holds
    /// (design 2.7, pitfall 2); it installs it (entering the checkpoint's
    /// epoch, if newer) and asks again from the checkpoint's op.
    fn serve_start_epoch(&mut self, to: Slot, id: MemberId, from: Op) {
        let committed = self.commit_min;
        if from >= committed {
            return;
        }
        // A peer syncing from here needs the log after what it asks from.
        self.pinned_peer_asks_from(to, from.saturating_add(1));
        let Some(from_checksum) = self.log.checksum_at(from) else {
            if from < self.log.base() {
                self.send_checkpoint_to(to, id);
            }
            return;
        };
        let entries = self.log.suffix(from, self.config.message_entries_max);
        let entries: Vec<Arc<Prepare>> = entries.into_iter().take_while(|e| e.op <= committed).collect();
        // One run (`log::run`): the asker fetches the rest from where it ends.
        let entries = crate::log::run(entries);
        self.send_to(
            to,
            id,
            &Message::StartEpoch {
                commit: committed,
                from,
                from_checksum,
                entries,
            },
        );
    }

    /// Committed entries after `from`, from a replica of a newer epoch.
    /// They are gathered beside the log (`epoch_staging`, in memory) and
    /// installed whole, in one step, only once they reach the entry that
    /// begins this replica's next epoch: it then takes them over what its
    /// log holds up to that entry (an entry it holds that differs was
    /// never committed, nor anything after it on its chain), executes up
    /// to the entry and enters the epoch, before it handles anything else.
    /// Taken chunk by chunk instead, entries committed in later views
    /// would sit in its log, and its commit number with them, while it is
    /// still in the old epoch, whose stale view change could then put
    /// another log over ops it executed (review of step 7). Returns
    /// whether the sender has more.
    fn on_start_epoch(
        &mut self,
        commit: Op,
        from: Op,
        from_checksum: u128,
        entries: Vec<Arc<Prepare>>,
    ) -> bool {
        if !self.fetches_across_epochs() {
            return false;
        }
        let Some(last) = entries.last().map(|e| e.op) else {
            return false;
        };
        let continues = self
            .epoch_staging
            .as_ref()
            .is_some_and(|s| s.end() == (from, from_checksum));
        if !continues {
            if self.log.checksum_at(from) != Some(from_checksum)
                || from > self.commit_max.max(self.commit_min)
            {
                return false; // does not attach to what this replica knows committed
            }
            self.epoch_staging = Some(EpochStaging {
                from,
                from_checksum,
                entries: Vec::new(),
            });
        }
        let staging = self.epoch_staging.as_mut().expect("set");
        staging.entries.extend(entries);
        let next = self.membership.epoch() + 1;
        let start = staging
            .entries
            .iter()
            .position(|e| e.reconfiguration().is_some_and(|t| t.epoch() == next));
        let Some(start) = start else {
            return commit > last; // not there yet: more to fetch
        };
        let mut staged = self.epoch_staging.take().expect("set");
        staged.entries.truncate(start + 1);
        self.install_to_epoch_start(staged.entries);
        false
    }

    /// Installs committed entries that end with the entry beginning the
    /// next epoch, and enters it (see `on_start_epoch`).
    fn install_to_epoch_start(&mut self, entries: Vec<Arc<Prepare>>) {
        let start = entries.last().expect("ends with the entry").op;
        // The log's base may have moved past the first staged entries
        // while they were gathered (a checkpoint taken or installed): the
        // base's checkpoint covers those committed ops, so they are
        // skipped, not compared (the log no longer holds them to compare)
        // nor written below the base (`vopr --membership` seeds 7840,
        // 11034, 14116, 14260, 17664). If nothing is left, the checkpoint
        // covers the entry itself, which was executed and entered.
        let base = self.log.base();
        let entries: Vec<Arc<Prepare>> = entries.into_iter().filter(|e| e.op > base).collect();
        let Some(first) = entries.first() else {
            return;
        };
        if self.log.checksum_at(first.op - 1) != Some(first.parent) {
            return; // no longer attaches to this log: fetched again later
        }
        let differs = entries
            .iter()
            .position(|e| self.log.checksum_at(e.op) != Some(e.checksum));
        if let Some(first) = differs {
            let op = entries[first].op;
            if op <= self.commit_max && self.log.checksum_at(op).is_some() {
                // A committed entry of ours differs: not the same
                // cluster's history. (One it lacks, though it knows the op
                // committed, it takes: `vopr --membership` seed 3.)
                return;
            }
            if self.is_primary() {
                // It led a view of the old epoch with another log; it is
                // about to leave the epoch anyway.
                self.status = Status::ViewChange;
                self.status_since = self.ticks;
            }
            self.staging = None;
            let tail: Vec<Arc<Prepare>> = entries[first..].to_vec();
            self.log.truncate_after(op - 1);
            for entry in &tail {
                self.log.append(entry.clone());
            }
            self.out.push(Output::WriteLog {
                after: op - 1,
                entries: tail,
            });
        } else if self.log.op() > start {
            // Its log holds the entry, with entries of the old epoch after
            // it that were never committed: they go.
            self.log.truncate_after(start);
            self.out.push(Output::WriteLog {
                after: start,
                entries: Vec::new(),
            });
        }
        self.commit_max = self.commit_max.max(start);
        self.execute_committed();
        debug_assert!(
            self.membership.epoch() >= entries_epoch(&entries),
            "entered the epoch"
        );
    }

    /// What always holds of membership changes at one replica (checked
    /// with the other invariants, `invariants.rs`).
    pub(crate) fn check_reconfiguration(&self) -> Result<(), String> {
        // At most one reconfiguration entry of an epoch not yet entered
        // above what was executed, and it is the log's head. (One of an
        // epoch entered may lie below: a replica that recovered into a
        // newer epoch and restarted from disk holds the newer epoch's log,
        // entry included, before it has re-executed it: review 9.)
        let head = self.log.op();
        let epoch = self.membership.epoch();
        for op in (self.commit_min + 1)..head {
            if self.log.get(op).is_some_and(|e| {
                e.requests
                    .iter()
                    .any(|r| r.reconfiguration().is_some_and(|t| t.epoch() > epoch))
            }) {
                return Err(format!(
                    "a reconfiguration entry at op {op} below the log's head {head}, unexecuted"
                ));
            }
        }
        if let Some(change) = &self.change {
            if !self.is_primary() || change.target.epoch() != self.membership.epoch() + 1 {
                return Err(format!(
                    "a change for epoch {} held in epoch {} by a replica in status {:?} (primary: {})",
                    change.target.epoch(),
                    self.membership.epoch(),
                    self.status,
                    self.is_primary()
                ));
            }
        }
        if self.role != Role::Member
            && (self.campaign != 0 || !self.queue.is_empty() || self.is_primary_of_view())
        {
            return Err(format!("a {:?} replica campaigns, queues or leads", self.role));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::membership::Member;

    fn member(slot: Slot, id: MemberId, joined: Epoch, incarnation: u64) -> Member {
        Member {
            slot,
            id,
            joined,
            incarnation,
            life: 0,
        }
    }

    /// A replica of epoch 0 = {0, 1, 2} jumps to epoch 2 (as by a
    /// checkpoint), where slot 2 holds a node added by epoch 2 and slot 0
    /// the same node as before: it forgets what it held for slot 2's old
    /// node (its number 3 above all) and takes the new node's recorded
    /// number, and keeps slot 0's.
    #[test]
    fn entering_across_epochs_forgets_a_reused_slots_old_node() {
        let mut replica = Replica::new(Config::new(7, 3), 1);
        replica.incarnations[0] = 2;
        replica.incarnations[2] = 3;
        let change = ChangeId { origin: 0, id: 2 };
        let target = Membership::new(
            2,
            change,
            &[member(0, 0, 0, 1), member(1, 1, 0, 0), member(2, 100, 2, 1)],
        )
        .unwrap();
        replica.enter_epoch(target, (0, 0), false);
        assert_eq!(replica.role, Role::Member);
        assert_eq!(replica.incarnations[0], 2, "slot 0 holds the same node");
        assert_eq!(
            replica.incarnations[2], 1,
            "slot 2's new node, as its list records it"
        );
        replica.invariants().unwrap();
    }

    /// Its own slot given to another node, a replica leaves, and keeps its
    /// own number.
    #[test]
    fn leaving_replica_whose_slot_is_reused_keeps_its_number() {
        let mut replica = Replica::new(Config::new(7, 3), 1);
        replica.incarnations[1] = 2;
        let change = ChangeId { origin: 0, id: 2 };
        let target = Membership::new(
            2,
            change,
            &[member(0, 0, 0, 0), member(1, 100, 2, 0), member(2, 2, 0, 0)],
        )
        .unwrap();
        replica.enter_epoch(target, (0, 0), false);
        assert_eq!(replica.role, Role::Leaving);
        assert_eq!(replica.incarnations[1], 2);
    }
}
