//! Learners: a node a change adds catches up before it counts
//! (docs/design/membership.md, 2.5).
//!
//! The primary that admits a change naming new members keeps them as its
//! *learners*: it tells each `Learn` (its epoch's list, the target and its
//! view) every heartbeat, and sends them what its backups get (prepares,
//! commits, retransmissions). A learner fetches the view's log whole
//! (`RequestStartView`, a checkpoint first if it is behind the primary's
//! log base), then follows the primary as a backup does, acknowledging
//! what it holds. Nothing it says counts: commits, campaigns, votes, reads
//! and the clock quorum run over the list only, and its gate lets nothing
//! but the primary's messages through. The primary proposes the change
//! once every learner has acknowledged its commit number (so a change
//! never leaves the new list waiting for a large state transfer), and
//! records each learner's *life*, drawn afresh at each start, in the
//! entry. A learner enters the epoch as a member only as that life and
//! only in the epoch that admitted it: a later life of it (it restarted
//! without its state) may share incarnation 0 with an earlier one that
//! took part, so it recovers in full first (design section 9, break 1).

use crate::config::{Config, Op, View};
use crate::membership::{Epoch, Member, MemberId, Membership, Slot, MAX_SLOTS};
use crate::message::{Message, Sender};
use crate::replica::{DurableState, Replica, Role, Status};

impl Replica {
    /// A learner in slot `slot` for member `id`, to join the epoch `joined`
    /// that a change adds it in: empty log, incarnation 0, and `life`,
    /// which must differ at every start of this member (random; never 0).
    /// It takes nothing but a `Learn` from the primary that admitted it;
    /// once it has entered `joined` it is a member like any other.
    pub fn learner(
        config: Config,
        slot: Slot,
        id: MemberId,
        joined: Epoch,
        life: u64,
    ) -> Result<Replica, String> {
        if life == 0 {
            return Err("a learner's life is never 0".into());
        }
        if joined == 0 {
            return Err("a learner joins an epoch after the genesis".into());
        }
        if slot as usize >= MAX_SLOTS {
            return Err(format!("slot {slot} is not below {MAX_SLOTS}"));
        }
        let me = Member {
            slot,
            id,
            joined,
            incarnation: 0,
            life: 0,
        };
        let state = DurableState {
            role: Role::Learner,
            ..DurableState::default()
        };
        let (mut replica, _) = Replica::assemble(config, slot, me, state, None, Vec::new())?;
        // Its list is the genesis until a `Learn` gives it the real one:
        // it waits, and leads nothing (`is_primary_of_view`).
        replica.status = Status::ViewChange;
        replica.life = life;
        Ok(replica)
    }

    // ---- The primary's side ------------------------------------------------

    /// Keeps `learners` in step with the change this primary holds, or the
    /// entry it proposed; a learner slot it no longer teaches starts over.
    pub(crate) fn refresh_learners(&mut self) {
        let target = if !self.is_primary() {
            None
        } else if let Some(change) = &self.change {
            Some(change.target)
        } else {
            self.pending_reconfiguration().map(|(_, target)| target)
        };
        let membership = self.membership;
        let learners: Vec<(Slot, MemberId, Epoch)> = target
            .map(|t| {
                t.members()
                    .iter()
                    .filter(|m| !membership.contains(m.slot))
                    .map(|m| (m.slot, m.id, m.joined))
                    .collect()
            })
            .unwrap_or_default();
        if learners == self.learners {
            return;
        }
        let changed: Vec<Slot> = self
            .learners
            .iter()
            .filter(|l| !learners.contains(l))
            .chain(learners.iter().filter(|l| !self.learners.contains(l)))
            .map(|l| l.0)
            .collect();
        for slot in changed {
            self.forget_learner(slot);
        }
        self.learners = learners;
        self.last_learn_tick = 0;
    }

    /// Drops what this primary holds for the learner slot `slot`.
    fn forget_learner(&mut self, slot: Slot) {
        if self.membership.contains(slot) {
            return;
        }
        let s = slot as usize;
        self.acked[s] = 0;
        self.last_heard[s] = 0;
        self.learner_lives[s] = 0;
        self.checkpoints.forget_peer(slot);
    }

    /// Whether `sender`, in slot `from`, is a learner this primary teaches.
    pub(crate) fn admitted_learner(&self, from: Slot, sender: Sender) -> bool {
        sender.epoch == self.membership.epoch()
            && self.is_primary()
            && self.learners.contains(&(from, sender.id, sender.joined))
    }

    /// What a learner may ask of its primary. Nothing of it is merged: its
    /// crash vector and clock count for nothing.
    pub(crate) fn on_learner_message(&mut self, from: Slot, message: Message) {
        match message {
            Message::Learning { view, life } => self.on_learning(from, view, life),
            Message::PrepareOk {
                view, op, checksum, ..
            } => self.on_learner_ack(from, view, op, checksum),
            Message::RequestPrepares {
                view,
                from: first,
                to,
            } => self.on_request_prepares(from, view, first, to),
            Message::RequestStartView { view, from: base } => self.on_request_start_view(from, view, base),
            Message::RequestCheckpoint { op, digest, offset } => {
                self.on_request_checkpoint(from, (op, digest), offset)
            }
            _ => {}
        }
    }

    fn on_learning(&mut self, from: Slot, view: View, life: u64) {
        if view != self.view || life == 0 {
            return;
        }
        let s = from as usize;
        self.last_heard[s] = self.ticks;
        if self.learner_lives[s] != life {
            // Another start of it: what the last one held is gone.
            self.learner_lives[s] = life;
            self.acked[s] = 0;
        }
    }

    fn on_learner_ack(&mut self, from: Slot, view: View, op: Op, checksum: u128) {
        if view != self.view {
            return;
        }
        let s = from as usize;
        self.last_heard[s] = self.ticks;
        if self.log.checksum_at(op) == Some(checksum) && op > self.acked[s] {
            self.acked[s] = op;
            // As a backup's acknowledgement does: a repair answer streaming
            // to it moves on (without it, one run a tick, then a stall).
            self.repair_acknowledged(from, op);
        }
    }

    /// Whether every new member of `target` runs a life this primary
    /// heard, was heard lately, and holds the log up to the commit number.
    pub(crate) fn learners_caught_up(&self, target: &Membership) -> bool {
        target
            .members()
            .iter()
            .filter(|m| !self.membership.contains(m.slot))
            .all(|m| {
                let s = m.slot as usize;
                self.learners.contains(&(m.slot, m.id, m.joined))
                    && self.learner_lives[s] != 0
                    && self.acked[s] >= self.commit_max
                    && self.heard_lately(m.slot)
            })
    }

    /// Whether a learner was never heard from.
    pub(crate) fn learner_unheard(&self) -> bool {
        self.learners
            .iter()
            .any(|&(slot, ..)| self.learner_lives[slot as usize] == 0)
    }

    /// Tells each learner whom it learns from (every heartbeat).
    pub(crate) fn teach_learners(&mut self) {
        if self.learners.is_empty() || !self.is_primary() {
            return;
        }
        let target = match &self.change {
            Some(change) => change.target,
            None => match self.pending_reconfiguration() {
                Some((_, target)) => target,
                None => return,
            },
        };
        self.last_learn_tick = self.ticks;
        let message = Message::Learn {
            membership: self.membership,
            target: Box::new(target),
            view: self.view,
        };
        self.send_to_learners(&message);
    }

    /// Sends `message` to every learner this primary teaches.
    pub(crate) fn send_to_learners(&mut self, message: &Message) {
        for (slot, id, _) in self.learners.clone() {
            self.send_to(slot, id, message);
        }
    }

    // ---- The learner's side ------------------------------------------------

    /// The primary of `view` in `membership`'s epoch admitted this learner
    /// for `target`: it learns from that primary, fetching the view's log
    /// whole before it takes the view's prepares (a log held from an
    /// earlier admission need not attach to this primary's entries).
    pub(crate) fn on_learn(
        &mut self,
        from: Slot,
        sender: Sender,
        membership: Membership,
        target: Membership,
        view: View,
    ) {
        let named = target
            .member(self.index)
            .is_some_and(|m| m.id == self.id && m.joined == self.joined);
        let leads = sender.epoch == membership.epoch()
            && membership.primary(view) == from
            && membership
                .member(from)
                .is_some_and(|m| m.id == sender.id && m.joined == sender.joined);
        if self.role != Role::Learner
            || !named
            || target.epoch() != self.joined
            || membership.epoch() + 1 != target.epoch()
            || !leads
        {
            return;
        }
        let first = self.learn_target.is_none();
        if !first && view < self.view {
            return; // an older view's primary
        }
        if first {
            // The list it held until now (the genesis at first) may give
            // a slot to another node than this one does: a number it holds
            // there is not this node's (`forget_slots_leaving`).
            let old = self.membership;
            self.membership = membership;
            for slot in 0..MAX_SLOTS as Slot {
                if self.node_leaves(&old, &membership, slot) {
                    self.incarnations[slot as usize] = 0;
                }
            }
        }
        self.learn_target = Some(target);
        if first || view > self.view {
            self.view = view;
            self.status = Status::ViewChange;
            self.status_since = self.ticks;
            self.staging = None;
            self.last_start_view_request = None;
            self.request_start_view(view);
        }
        let life = self.life;
        self.send_to(from, sender.id, &Message::Learning { view, life });
    }

    /// A learner takes only its primary's log, once a primary teaches it:
    /// prepares, commits, the view's log and checkpoint chunks (each
    /// handled as a backup handles it, from the view's primary only).
    pub(crate) fn learner_takes(&self, message: &Message) -> bool {
        self.learn_target.is_some()
            && matches!(
                message,
                Message::Prepare { .. }
                    | Message::Commit { .. }
                    | Message::StartView { .. }
                    | Message::CheckpointChunk { .. }
            )
    }

    /// A learner's timers: it asks for what it lacks, and campaigns for
    /// nothing.
    pub(crate) fn tick_learner(&mut self) {
        // A state sync goes on whether or not a primary teaches it (one
        // restarted after its change committed catches up across epochs,
        // a checkpoint first: `vopr --membership` seed 54).
        self.tick_sync();
        if self.learn_target.is_none() {
            return;
        }
        if self.status == Status::Normal {
            self.request_repair();
            self.ask_when_the_primary_is_silent();
        } else {
            self.request_start_view(self.view);
        }
    }

    /// A learner that holds all its primary sent and hears nothing more
    /// would send nothing at all: its epoch may have been left meanwhile
    /// (the change that admits it committed while it was down, and a
    /// later one removed it), and nobody speaks to a replica outside
    /// their list. So once its primary has been silent for a view-change
    /// timeout it asks its list's members in turn, every `resend_ticks`,
    /// for the view's start: the primary answers with it, and a member of
    /// a newer epoch with the `EpochNotice`, from which it catches up
    /// across the epochs or learns it was left out (`vopr --membership`
    /// seed 5471: a learner of epoch 1 restarted in epoch 0, silent for
    /// good after epoch 2 removed it).
    fn ask_when_the_primary_is_silent(&mut self) {
        let silent = self.ticks.saturating_sub(self.last_primary_tick) >= self.config.view_change_ticks;
        if !silent || !self.due(self.last_start_view_request) {
            return;
        }
        self.last_start_view_request = Some(self.ticks);
        self.ask_a_member_in_turn_for_the_view();
    }

    /// Asks one other member of its list for its view's start
    /// (`RequestStartView`), the next each `resend_ticks`: a replica that
    /// waits on one peer (its primary) that may be gone for good reaches
    /// the others in turn; the view's primary answers with the view, and
    /// a member of a newer epoch answers any message of an older one with
    /// the `EpochNotice`.
    pub(crate) fn ask_a_member_in_turn_for_the_view(&mut self) {
        let others: Vec<Slot> = self.membership.slots().filter(|&s| s != self.index).collect();
        if others.is_empty() {
            return;
        }
        let turn = (self.ticks / self.config.resend_ticks.max(1)) as usize % others.len();
        let ask = Message::RequestStartView {
            view: self.view,
            from: self.commit_min,
        };
        self.send(others[turn], &ask);
    }

    /// A replica restarted from its disk whose store was created for a
    /// learner running `life` (disk mode keeps a learner's life for as
    /// long as its store lives). If it entered its epoch as another life
    /// than the entry records and had not finished the recovery that
    /// obliged it to (`fenced_epoch` marks it done), it recovers again,
    /// keeping its log; `nonce` is unique to this restart.
    pub fn resume_learner_life(&mut self, life: u64, nonce: u128) {
        self.life = life;
        if let Some(repair) = self.repair.as_mut() {
            // Its log has a hole: decided once it is whole (repair.rs).
            repair.learner_life = Some((life, nonce));
            return;
        }
        if self.role != Role::Member || self.status == Status::Recovering {
            return;
        }
        let recorded = self.membership.member(self.index).map(|m| m.life);
        if recorded != Some(life) && self.fenced_epoch < self.joined {
            self.status = Status::Recovering;
            self.status_since = self.ticks;
            self.recovery = Some(crate::recovery::Recovery::keeping_log(nonce));
            self.clear_queue();
        }
    }

    /// Entering `target` as a replica that started as a learner: whether it
    /// must recover in full first. It takes part without a recovery only
    /// as the life the entry records, and only in the epoch that admitted
    /// it: an earlier life may have taken part at incarnation 0, and been
    /// fenced since (design 2.10).
    pub(crate) fn learner_must_recover(&self, target: &Membership) -> bool {
        #[cfg(feature = "mutations")]
        if self.mutated(crate::config::Mutation::EnterAsAnotherLife) {
            return false;
        }
        target.epoch() != self.joined || target.member(self.index).is_none_or(|m| m.life != self.life)
    }
}
