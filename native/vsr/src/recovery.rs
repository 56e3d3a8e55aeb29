//! Recovery of a replica that restarted without its state (memory mode),
//! with crash vectors.
//!
//! VR Revisited's recovery (§4.3) is unsafe as written (Michael, Ports,
//! Sharma and Szekeres, "Recovering Shared Objects Without Stable Storage",
//! DISC 2017): messages the replica sent *before* it crashed can still be
//! in flight, and a view change that counts its old DoViewChange while its
//! new self helps commit in an older view loses those commits. Following
//! that paper, every message carries the sender's *crash vector*: the
//! incarnation it knows for every replica. Receivers keep the highest they
//! hear of, drop messages whose sender is an older incarnation than they
//! know, and forget what an older incarnation told them (its votes,
//! acknowledgements and DoViewChange).
//!
//! A restarted replica recovers in two round trips, each answered by
//! `n - q + 1` of the others (`Membership::meeting_every_quorum`: a quorum
//! when `n` is odd), a set that meets every quorum without counting the
//! recovering replica, since `(n - q + 1) + (q - 1) > n - 1`:
//!
//! 1. `Recovery(nonce)`: each other replica answers with the incarnation it
//!    knows for the recovering one. The last incarnation was installed at
//!    such a set (step 2), and two of them drawn from the `n - 1` others
//!    meet (`2(n - q + 1) > n - 1`), so the highest answer is at least
//!    that one; the replica takes the next number.
//! 2. `RecoveryFence(nonce)`, carrying the new incarnation in its crash
//!    vector: each receiver adopts it (fencing every older incarnation) and,
//!    once in normal status, answers `RecoveryFenced` with its view. With
//!    enough fenced, the
//!    replica fetches the log of the newest view among the answers from that
//!    view's primary (the chunked StartView transfer of lagging replicas),
//!    and only when it holds it does it vote or acknowledge anything.
//!
//! Any later view change needs a quorum, which includes a fenced replica:
//! either its DoViewChange carries the new incarnation (and the new primary
//! forgets the old incarnation's DoViewChange), or it had moved to that view
//! before it was fenced, in which case it reported that view or a later one
//! and the recovering replica joins it rather than an older one.
//!
//! `n - q + 1` others must stay up (and remember) for a replica to
//! recover: memory mode survives any minority losing its memory, not a
//! majority (a majority leaves at most `n - q`).

use crate::config::View;
use crate::membership::{Slot, MAX_SLOTS};
use crate::message::{Decoded, Message};
use crate::replica::{DurableState, Replica, Role, Status};

/// A recovery in progress.
#[derive(Clone, Debug)]
pub(crate) struct Recovery {
    nonce: u128,
    /// Step 1: the incarnation each replica knows for us.
    known: [Option<u64>; MAX_SLOTS],
    /// Step 2 (once our new incarnation is chosen): each fenced replica's view.
    fenced: [Option<View>; MAX_SLOTS],
    fencing: bool,
    /// Enough have fenced (`answers_needed`): now fetching the log.
    pub(crate) answered: bool,
    /// The replica kept its log (a learner of another life entering its
    /// epoch): its durable state does not say it is recovering, which
    /// would empty its store's log, and it is fenced in its epoch once
    /// done (`fenced_epoch`).
    pub(crate) kept_log: bool,
    /// Step 2 alone ([`Recovery::fence_only`]).
    fence_only: bool,
}

impl Recovery {
    /// A recovery starting at step 1; `nonce` is unique to it.
    pub(crate) fn new(nonce: u128) -> Recovery {
        Recovery {
            nonce,
            known: [None; MAX_SLOTS],
            fenced: [None; MAX_SLOTS],
            fencing: false,
            answered: false,
            kept_log: false,
            fence_only: false,
        }
    }

    pub(crate) fn nonce(&self) -> u128 {
        self.nonce
    }

    /// A recovery of a replica that keeps its log.
    pub(crate) fn keeping_log(nonce: u128) -> Recovery {
        Recovery {
            kept_log: true,
            ..Recovery::new(nonce)
        }
    }

    /// Step 2 alone, for a member that entered an epoch at a number its
    /// list never installed (docs/protocol.md, "Recovering across
    /// epochs"), sent as `FenceAlone`, which any replica of the epoch
    /// answers, whatever its status (a member fencing at once included:
    /// two such never wait for each other).
    pub(crate) fn fence_only(nonce: u128) -> Recovery {
        Recovery {
            fencing: true,
            fence_only: true,
            ..Recovery::keeping_log(nonce)
        }
    }

    /// Whether this is [`Recovery::fence_only`].
    pub(crate) fn is_fence_only(&self) -> bool {
        self.fence_only
    }
}

impl Replica {
    /// A replica that restarted without its state: it takes part in nothing
    /// until it has recovered its incarnation and the current log from the
    /// others. `nonce` must be unique to this restart (random).
    pub fn recovering(config: crate::config::Config, index: Slot, nonce: u128) -> Result<Replica, String> {
        Replica::recovering_from(config, index, DurableState::default(), nonce)
    }

    /// [`Replica::recovering`] in `known`, the newest membership its host
    /// knows (from its peers): a member restarted without its state after
    /// a change recovers among that list, at its slot there.
    pub fn recovering_in(
        config: crate::config::Config,
        index: Slot,
        known: crate::membership::Membership,
        nonce: u128,
    ) -> Result<Replica, String> {
        let state = DurableState {
            membership: Some(known),
            ..DurableState::default()
        };
        Replica::recovering_from(config, index, state, nonce)
    }

    /// A replica that lost its log but kept its durable state (disk mode,
    /// when the log on disk is damaged where it may hold acknowledged
    /// entries, or when a recovery was cut short by a crash). It keeps its
    /// crash vector, so a fence it took part in still holds, and recovers
    /// like an amnesiac replica. Its log is empty until recovery installs
    /// one, and its view starts over: it takes the view its fence reports,
    /// which the fence's intersection with every view-change quorum
    /// makes safe (DISC 2017), even below a view it had stored. (Keeping
    /// the stored view until then would only make its view go back later;
    /// soak seeds 17142 and 75538 caught exactly that.)
    pub fn recovering_from(
        config: crate::config::Config,
        index: Slot,
        state: DurableState,
        nonce: u128,
    ) -> Result<Replica, String> {
        let kept = DurableState {
            view: 0,
            log_view: 0,
            commit: 0,
            recovering: false,
            ..state
        };
        let (mut replica, _) = Replica::restart(config, index, kept, Vec::new())?;
        replica.status = Status::Recovering;
        replica.recovery = Some(Recovery::new(nonce));
        Ok(replica)
    }

    /// Whether this replica has not yet recovered from a restart without state.
    pub fn is_recovering(&self) -> bool {
        self.status == Status::Recovering
    }

    /// Whether this replica, recovering, was fenced (`answers_needed`) and now
    /// fetches the log of the view they reported.
    pub fn is_fetching_recovered_log(&self) -> bool {
        self.status == Status::Recovering && self.recovery.as_ref().is_some_and(|r| r.answered)
    }

    /// The epoch gate, then: merges the sender's crash vector, drops the
    /// message if the sender is an older incarnation than we know, and
    /// passes it on.
    ///
    /// The gate (docs/design/membership.md, 2.6) lets through only a member
    /// of this replica's epoch, named by slot, member id and `joined` (a
    /// slot alone does not name a node once slots are reused), before
    /// anything of the message is merged or recorded: a non-member's crash
    /// vector and clock count for nothing. Every replica is in epoch 0
    /// today, so another epoch's message, or a same-epoch one from a
    /// non-member, is dropped (`dropped_unknown_sender`), but for what the
    /// gate answers (`outside_the_gate`, reconfig.rs): an older epoch's
    /// sender is told the epoch (`EpochNotice`), a newer epoch's notice is
    /// taken, and a replica that left is told its epoch started.
    pub(crate) fn on_envelope(&mut self, decoded: Decoded) {
        let Decoded {
            from,
            sender,
            incarnations,
            clock,
            message,
        } = decoded;
        let message = match message {
            // A learner's list is not known before this names it.
            Message::Learn {
                membership,
                target,
                view,
            } => return self.on_learn(from, sender, membership, *target, view),
            message => message,
        };
        // Its own slot is itself: another node there (an earlier owner, or
        // a later one as this replica's list sees it) is a stranger.
        let listed = from != self.index
            && sender.epoch == self.membership.epoch()
            && self
                .membership
                .member(from)
                .is_some_and(|m| m.id == sender.id && m.joined == sender.joined);
        if !listed {
            if self.admitted_learner(from, sender) {
                return self.on_learner_message(from, message);
            }
            if self.status == Status::Repairing {
                if let Message::Entry { entry } = message {
                    // The entry it waits for is named by its checksum, true
                    // in any epoch: a replica restarted from an older
                    // epoch's superblock repairs from the newer epoch's
                    // members (design break 8).
                    return self.on_repair_entry(entry);
                }
            }
            self.stats.dropped_unknown_sender += 1;
            return self.outside_the_gate(sender, message);
        }
        self.clocks.heard(from as usize, clock, self.clock_now());
        #[cfg(feature = "mutations")]
        if self.mutated(crate::config::Mutation::ClockFromTickBeforeArrival) {
            self.clocks.ticked(self.mono_ns);
        }
        if self.status == Status::Repairing {
            // Nothing but the entry it waits for, before it merges anything:
            // it learns nothing it must make durable. It answers only another
            // repairing replica's request for an entry it holds intact (two
            // replicas repairing at once would otherwise both give up).
            match message {
                Message::Entry { entry } => self.on_repair_entry(entry),
                Message::RequestEntry { op, checksum } => self.on_request_entry_repairing(from, op, checksum),
                Message::NoEntry {
                    op,
                    checksum,
                    checkpoint,
                } => self.on_no_entry(from, (op, checksum), checkpoint),
                Message::CheckpointChunk {
                    op,
                    digest,
                    total,
                    offset,
                    bytes,
                } => self.on_checkpoint_chunk(from, op, digest, total, offset, bytes),
                // A leaving replica stops once a quorum of its new list has
                // entered, repaired or not: it serves nothing while it
                // repairs, and nothing needs it after (`vopr --membership`
                // seed 18734: it waited for good, the answers dropped).
                Message::EpochStarted { epoch } => self.on_epoch_started(from, epoch),
                _ => {}
            }
            return;
        }
        if let Message::Recovery { nonce } = message {
            // The sender has forgotten its incarnation: the nonce stands for it.
            self.on_recovery(from, nonce);
            return;
        }
        // Merge first: a crash vector only ever holds incarnations that were
        // really chosen, so even a stale sender's is worth learning from;
        // checking first could let two replicas that each know the other's
        // newer incarnation drop each other's messages forever.
        let stale = incarnations[from as usize] < self.incarnations[from as usize];
        let me = self.index as usize;
        let chosen = self.recovery.as_ref().is_none_or(|r| r.fencing);
        let mut learned = false;
        // Only the list's slots: a slot outside it holds nothing here.
        let membership = self.membership;
        for replica in membership.slots().map(usize::from) {
            let incarnation = incarnations[replica];
            if incarnation <= self.incarnations[replica] {
                continue;
            }
            if replica != me {
                self.incarnations[replica] = incarnation;
                self.forget_incarnation(replica);
                learned = true;
            } else if chosen {
                // Someone holds a higher number for us (fenced by an attempt
                // that crashed before it finished): take it, or it would drop
                // all we send. Our life before the crash is below it anyway.
                self.incarnations[me] = incarnation;
                learned = true;
            }
        }
        if learned {
            // Before anything we send in answer (a RecoveryFenced above all):
            // a fence we forget in a restart from disk is no fence.
            self.write_state();
        }
        if stale {
            self.stats.dropped_stale += 1;
            return;
        }
        match message {
            Message::RecoveryResponse { nonce, incarnation } => {
                self.on_recovery_response(from, nonce, incarnation)
            }
            Message::RecoveryFence { nonce } => self.on_recovery_fence(from, nonce),
            // Its crash vector is merged: the number is adopted. No view
            // to report, so any status answers.
            Message::FenceAlone { nonce } => self.send(
                from,
                &Message::RecoveryFenced {
                    nonce,
                    view: self.view,
                },
            ),
            Message::RecoveryFenced { nonce, view } => self.on_recovery_fenced(from, nonce, view),
            // A leaving replica that lost its log (recovering) serves
            // nothing, and stops like any leaving one once a quorum of its
            // new list has entered (`vopr --membership` seed 8965: it
            // dropped the answers and waited for good).
            Message::EpochStarted { epoch } if self.role == Role::Leaving => {
                self.on_epoch_started(from, epoch)
            }
            _ if self.status == Status::Recovering && !self.recovery.as_ref().is_some_and(|r| r.answered) => {
            }
            message => self.on_message(from, message),
        }
    }

    /// Drops everything an older incarnation of `replica` told us.
    pub(crate) fn forget_incarnation(&mut self, replica: usize) {
        self.acked[replica] = 0;
        self.votes[replica] = 0;
        self.dvcs[replica] = None;
        self.reads.forget(replica);
    }

    fn on_recovery(&mut self, from: Slot, nonce: u128) {
        if self.status != Status::Recovering && !self.holds_an_unexecuted_entry() {
            let incarnation = self.incarnations[from as usize];
            self.send(from, &Message::RecoveryResponse { nonce, incarnation });
        }
    }

    /// Whether a reconfiguration entry lies in the log above what this
    /// replica executed. It then answers no `Recovery` (docs/protocol.md,
    /// "Recovering across epochs"): the entry may have committed, and an
    /// earlier life of the asker may have entered the next epoch and taken
    /// part there at a number this epoch's quorum never heard of; the
    /// asker must recover in that epoch, where it hears of it (an
    /// `EpochNotice` once this replica executes the entry), not here.
    fn holds_an_unexecuted_entry(&self) -> bool {
        #[cfg(feature = "mutations")]
        if self.mutated(crate::config::Mutation::RecoveryAnsweredAboveAnEntry) {
            return false;
        }
        ((self.commit_min + 1)..=self.log.op()).any(|op| {
            self.log
                .get(op)
                .and_then(|e| e.requests.first())
                .is_some_and(|r| r.is_reconfiguration())
        })
    }

    fn on_recovery_fence(&mut self, from: Slot, nonce: u128) {
        // The crash vector of the message has already fenced the old
        // incarnation. Only a replica running a view answers: a view it is
        // still changing to may never start (its replica can lose its memory
        // while the others keep an older view), and the recovering replica,
        // which joins the highest view it is told, would wait for that
        // view's log for ever (soak seeds 588342 and 758283). Safety holds
        // without those answers: a view change that counted the old
        // incarnation's DoViewChange had a quorum move to its view before
        // the fence, so a normal replica among those fenced is in that view
        // or a later one, and any that moves later sends the new incarnation.
        #[allow(unused_mut)]
        let mut answers = self.status == Status::Normal;
        #[cfg(feature = "mutations")]
        if self.mutated(crate::config::Mutation::FenceAnswerFromViewChange) {
            answers = self.status != Status::Recovering;
        }
        if answers {
            self.send(
                from,
                &Message::RecoveryFenced {
                    nonce,
                    view: self.view,
                },
            );
        }
    }

    /// How many others must answer each step of the recovery in
    /// progress: `n - q + 1` of them (`Membership::meeting_every_quorum`),
    /// which meet every quorum the replica's earlier lives took part in
    /// without counting it (`(n - q + 1) + (q - 1) > n - 1`) and every
    /// earlier fence of it (`2(n - q + 1) > n - 1`). A quorum of others,
    /// which this counted before, is the same number when `n` is odd, but
    /// one more when it is even, where it left a list of four with one
    /// member recovering and another down waiting for both (`vopr
    /// --membership` seeds 5428, 17380; review 13's scenario
    /// `learner_fence_and_full_recovery_wait_for_each_other`), and an
    /// amnesiac member of a list of two for ever. A replica that kept its
    /// log (a fence, design 2.10) with no one else in its list has no one
    /// to ask: a learner that must recover there stays recovering, since
    /// its earlier life may have committed alone what its log lacks.
    fn answers_needed(&self) -> usize {
        let needed = self.membership.meeting_every_quorum();
        match &self.recovery {
            Some(r) if r.kept_log => needed.min(self.membership.n() - 1),
            _ => needed,
        }
    }

    fn on_recovery_response(&mut self, from: Slot, nonce: u128, incarnation: u64) {
        let quorum = self.answers_needed();
        let Some(recovery) = self.recovery.as_mut().filter(|r| r.nonce == nonce && !r.fencing) else {
            return;
        };
        recovery.known[from as usize] = Some(incarnation);
        // Answers of the *others*: we ourselves remember nothing.
        if recovery.known.iter().flatten().count() < quorum {
            return;
        }
        recovery.fencing = true;
        let highest = recovery.known.iter().flatten().max().copied().unwrap_or(0);
        let me = self.index as usize;
        // Incarnations from the network are at most `NUMBER_MAX` (decode).
        self.incarnations[me] = self.incarnations[me].max(highest.saturating_add(1));
        self.write_state();
        self.last_resend_tick = self.ticks;
        self.broadcast(&Message::RecoveryFence { nonce });
    }

    fn on_recovery_fenced(&mut self, from: Slot, nonce: u128, view: View) {
        let quorum = self.answers_needed();
        let Some(recovery) = self
            .recovery
            .as_mut()
            .filter(|r| r.nonce == nonce && r.fencing && !r.answered)
        else {
            return;
        };
        recovery.fenced[from as usize] = Some(view);
        if recovery.fenced.iter().flatten().count() < quorum {
            return;
        }
        recovery.answered = true;
        if recovery.is_fence_only() {
            return self.fenced_in_epoch();
        }
        self.view = recovery.fenced.iter().flatten().max().copied().unwrap_or(0);
        #[cfg(feature = "mutations")]
        if self.mutated(crate::config::Mutation::RecoverWithoutLog) {
            self.status = Status::Normal;
            self.log_view = self.view;
            self.recovery = None;
            return;
        }
        self.last_start_view_request = None;
        self.request_start_view(self.view);
    }

    pub(crate) fn tick_recovering(&mut self) {
        if self.ticks < self.last_resend_tick.saturating_add(self.config.resend_ticks) {
            return;
        }
        self.last_resend_tick = self.ticks;
        let Some(recovery) = &self.recovery else { return };
        let nonce = recovery.nonce;
        if recovery.is_fence_only() && recovery.answered {
            return;
        }
        if recovery.is_fence_only() {
            self.broadcast(&Message::FenceAlone { nonce });
        } else if !recovery.fencing {
            self.broadcast(&Message::Recovery { nonce });
        } else if !recovery.answered {
            self.broadcast(&Message::RecoveryFence { nonce });
        } else {
            self.request_start_view(self.view);
            // The view's primary may be gone for good, its list left
            // (removed by a later change, and this replica with it):
            // another member, or a newer epoch's notice, answers
            // (`vopr --membership` seed 16150: it asked a stopped primary
            // for ever).
            self.ask_a_member_in_turn_for_the_view();
        }
    }
}
