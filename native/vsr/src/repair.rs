//! Repair of one damaged log entry after a restart from disk (disk mode).
//!
//! When one record of a replica's write-ahead log has rotted but the entry
//! after it is intact, the hash chain names the lost entry: the next
//! entry's `parent` is its checksum. Any peer whose log holds an entry with
//! that op and checksum holds exactly the entry that was lost (XXH3-128
//! over the whole entry), whatever view it came from, so the replica can
//! fetch it from any peer and restart with the very log it had synced,
//! instead of throwing the log away and recovering it from a quorum
//! (Protocol-Aware Recovery, Alagappan et al., FAST 2018).
//!
//! Until the entry arrives, the replica takes part in nothing: it executes
//! nothing, sends nothing but `RequestEntry` (to another repairing replica,
//! an `Entry` or `NoEntry` answering its request, and `RequestCheckpoint`s
//! for a state sync, below), answers nothing else and merges no crash
//! vector, exactly as if it were still down. Once it holds the entry,
//! it becomes what `Replica::restart_from` makes of the whole log (the
//! safety argument of a restart from disk then applies unchanged), after a
//! `WriteLog` of the repaired suffix so that the store records the repair.
//!
//! A peer that does not hold the entry says so (`NoEntry`), naming a
//! checkpoint at or after the entry's op that it can serve, if it has one.
//! The replica then state-syncs that checkpoint and restarts from it and
//! its own entries after it (what `restart_from` does with a checkpoint):
//! the checkpoint holds committed state only, and every committed op up to
//! its op. It falls back to a full recovery (`Replica::recovering_from`,
//! which the store makes durable by emptying the log) only once a quorum of
//! the *other* replicas said they do not hold the entry; nothing was
//! executed yet, so the host's state is still the initial one a recovery
//! starts from. Until then it keeps asking, however long its peers take to
//! boot: after a power loss on every node, a quorum that restarted serves
//! again whichever of its members boots first.

use std::sync::Arc;

use crate::checkpoint::Checkpoint;
use crate::checksum::{checksum, root_checksum};
use crate::config::{quorum, Config, Op};
use crate::membership::Slot;
use crate::message::{Message, Prepare};
use crate::replica::{DurableState, Output, Replica, Status};

/// What the replica restarts from once the entry is back.
#[derive(Clone, Debug)]
pub(crate) struct Repair {
    state: DurableState,
    checkpoint: Option<Arc<Checkpoint>>,
    entries: Vec<Arc<Prepare>>,
    hole: (Op, u128),
    after: Vec<Arc<Prepare>>,
    /// The peers that said they do not hold the entry (a bit per replica).
    refused: u64,
    /// A learner-made member's life and boot nonce, as its host gave them
    /// (`resume_learner_life`): whether it must recover as another life is
    /// decided once its log is whole and it restarts from it.
    pub(crate) learner_life: Option<(u64, u128)>,
}

impl Replica {
    /// A replica restarted from disk whose log is `entries`, then a damaged
    /// entry (`hole`: its op and its checksum, as the entry after it names
    /// it), then `after`; with its durable `state` and `checkpoint` as
    /// [`Replica::restart_from`] takes them. It emits nothing but requests
    /// for the entry until a peer sends it; then it restarts from the whole
    /// log (its outputs begin with the `WriteLog` that records the repair).
    pub fn restart_repairing(
        config: Config,
        index: Slot,
        state: DurableState,
        checkpoint: Option<Arc<Checkpoint>>,
        entries: Vec<Arc<Prepare>>,
        hole: (Op, u128),
        after: Vec<Arc<Prepare>>,
    ) -> Result<Replica, String> {
        if state.recovering {
            return Err("the replica had not finished recovering: use Replica::recovering_from".into());
        }
        // Nothing is executed, installed or sent until the log is whole.
        let idle = DurableState { commit: 0, ..state };
        let (mut replica, _) = Replica::restart(config, index, idle, Vec::new())?;
        // Nor is a fence begun (`fence_if_unrecorded`): the restart from
        // the whole log decides it again (`vopr --membership` seed 22019:
        // a repairing replica holding a fence's recovery state).
        replica.recovery = None;
        replica.status = Status::Repairing;
        replica.repair = Some(Box::new(Repair {
            state,
            checkpoint,
            entries,
            hole,
            after,
            refused: 0,
            learner_life: None,
        }));
        Ok(replica)
    }

    /// The op and checksum of the entry this replica waits for, if it is repairing.
    pub fn repairing(&self) -> Option<(Op, u128)> {
        self.repair.as_ref().map(|r| r.hole)
    }

    pub(crate) fn tick_repairing(&mut self) {
        self.tick_sync();
        if self.ticks < self.last_resend_tick.saturating_add(self.config.resend_ticks) {
            return;
        }
        self.last_resend_tick = self.ticks;
        let Some(repair) = self.repair.as_ref() else {
            return;
        };
        if self.enough_refusals(repair.refused) {
            self.give_up_repair();
            return;
        }
        let (op, checksum) = repair.hole;
        self.broadcast(&Message::RequestEntry { op, checksum });
    }

    /// Whether a quorum of the other replicas said they do not hold the
    /// entry (in a cluster of one: at once, as no one else can hold it).
    fn enough_refusals(&self, refused: u64) -> bool {
        let n = self.membership.n();
        let needed = quorum(n).min(n - 1);
        refused.count_ones() as usize >= needed
    }

    /// A peer asks for an entry by op and checksum: any replica whose log
    /// holds it may answer (the checksum makes it the same entry); any
    /// other says it does not hold it, naming a checkpoint it could serve
    /// instead.
    pub(crate) fn on_request_entry(&mut self, from: Slot, op: Op, checksum: u128) {
        if let Some(entry) = self.log.get(op).filter(|e| e.checksum == checksum) {
            let entry = entry.clone();
            self.send(from, &Message::Entry { entry });
        } else {
            let checkpoint = self.servable_checkpoint_from(op);
            #[cfg(feature = "mutations")]
            let checkpoint = if self.mutated(crate::config::Mutation::NoEntryWithoutCheckpoint) {
                0
            } else {
                checkpoint
            };
            self.send(
                from,
                &Message::NoEntry {
                    op,
                    checksum,
                    checkpoint,
                },
            );
        }
    }

    /// A peer does not hold the entry this replica waits for: if its
    /// checkpoint covers the entry's op, sync that checkpoint from it.
    pub(crate) fn on_no_entry(&mut self, from: Slot, hole: (Op, u128), checkpoint: Op) {
        let Some(repair) = self.repair.as_mut() else {
            return;
        };
        if hole != repair.hole || !self.membership.contains(from) {
            return;
        }
        repair.refused |= 1 << from;
        if checkpoint >= hole.0 && !self.syncing() {
            // NoEntry names the checkpoint's op only: with no digest to
            // match, the peer offers its newest vouched checkpoint (at or
            // past this one, so it covers the hole too), and the chunks
            // name the digest the rest of the sync asks for.
            self.send(
                from,
                &Message::RequestCheckpoint {
                    op: checkpoint,
                    digest: 0,
                    offset: 0,
                },
            );
        }
    }

    /// A repairing replica asked for an entry by op and checksum: this one,
    /// repairing too, answers from the intact entries of its stored log
    /// (the checksum makes it the same entry, and an `Entry` changes nothing
    /// but the state of a replica waiting for exactly that entry).
    pub(crate) fn on_request_entry_repairing(&mut self, from: Slot, op: Op, checksum: u128) {
        let Some(repair) = self.repair.as_ref() else {
            return;
        };
        let entry = (repair.entries.iter().chain(&repair.after))
            .find(|e| e.op == op && e.checksum == checksum)
            .cloned();
        match entry {
            Some(entry) => self.send(from, &Message::Entry { entry }),
            None => self.send(
                from,
                &Message::NoEntry {
                    op,
                    checksum,
                    checkpoint: 0,
                },
            ),
        }
    }

    pub(crate) fn on_repair_entry(&mut self, entry: Arc<Prepare>) {
        let Some(repair) = self.repair.as_ref() else {
            return;
        };
        // (The message's decoding verified the entry's own checksum.)
        if (entry.op, entry.checksum) != repair.hole {
            return;
        }
        let Repair {
            mut state,
            checkpoint,
            mut entries,
            hole,
            after,
            learner_life,
            ..
        } = *self.repair.take().expect("checked above");
        // Whatever the replica learned meanwhile (nothing, as it merges no
        // crash vector) it keeps: its incarnations are the durable ones.
        state.incarnations = self.incarnations;
        // Damage over several adjacent records reads as one damaged record;
        // then the entries before the hole may not be those the fetched one
        // follows. `restart_from` would refuse them, or, with a checkpoint,
        // keep only the checkpoint and drop entries this replica acknowledged.
        let chains = self.parent_of_hole(&entries, checkpoint.as_deref(), hole.0) == Some(entry.parent);
        entries.push(entry);
        entries.extend(after);
        let written: Vec<Arc<Prepare>> = entries.iter().filter(|e| e.op >= hole.0).cloned().collect();
        match Replica::restart_from(self.config.clone(), self.index, state, checkpoint, entries) {
            Ok((replica, outputs)) if chains => {
                self.take_place_of(replica);
                self.out.push(Output::WriteLog {
                    after: hole.0 - 1,
                    entries: written,
                });
                self.out.extend(outputs);
                self.resume_learner_life_after_repair(learner_life);
            }
            // The stored log does not chain after all: only a recovery can
            // tell what it held. (`give_up_repair` recovers from the repair
            // in hand, which was taken above.)
            _ => {
                self.recover_instead(state);
            }
        }
    }

    /// A state sync brought a checkpoint (one a quorum vouches for) from a
    /// peer that does not hold the entry: if it covers the entry, restart
    /// from it and the stored entries after it, as `restart_from` does with
    /// a checkpoint. The checkpoint holds every committed op up to its op,
    /// so the entries at or below it this replica acknowledged are either
    /// in it or were never committed; the store records the checkpoint and
    /// then the kept entries after it (the damaged record is below it).
    pub(crate) fn repair_from_checkpoint(&mut self, checkpoint: Arc<Checkpoint>) {
        let Some(repair) = self.repair.as_ref() else {
            return;
        };
        if checkpoint.op < repair.hole.0 {
            return;
        }
        let Repair {
            mut state,
            after,
            learner_life,
            ..
        } = *self.repair.take().expect("checked above");
        state.incarnations = self.incarnations;
        state.commit = state.commit.max(checkpoint.op);
        let op = checkpoint.op;
        let restarted = Replica::restart_from(
            self.config.clone(),
            self.index,
            state,
            Some(checkpoint.clone()),
            after,
        );
        match restarted {
            Ok((replica, outputs)) => {
                let kept: Vec<Arc<Prepare>> = (op + 1..=replica.log.op())
                    .filter_map(|o| replica.log.get(o).cloned())
                    .collect();
                self.take_place_of(replica);
                self.out.push(Output::WriteCheckpoint(checkpoint));
                if !kept.is_empty() {
                    self.out.push(Output::WriteLog {
                        after: op,
                        entries: kept,
                    });
                }
                self.out.extend(outputs);
                self.resume_learner_life_after_repair(learner_life);
            }
            // Unreachable (the state was valid when the repair began), but
            // a recovery is always safe.
            Err(_) => {
                self.recover_instead(state);
            }
        }
    }

    /// The checksum of the stored entry just before the hole at `op`: the
    /// last entry before it, or the checkpoint (or the root) it follows.
    fn parent_of_hole(
        &self,
        entries: &[Arc<Prepare>],
        checkpoint: Option<&Checkpoint>,
        op: Op,
    ) -> Option<u128> {
        match (entries.last(), checkpoint) {
            (Some(last), _) if last.op + 1 == op => Some(last.checksum),
            (_, Some(c)) if c.op + 1 == op => Some(c.checksum),
            _ if op == 1 => Some(root_checksum(self.config.cluster)),
            _ => None,
        }
    }

    /// A repaired learner-made member checks its life as a restart from a
    /// whole log does (`resume_learner_life`, which the host called while
    /// the log had a hole).
    fn resume_learner_life_after_repair(&mut self, learner_life: Option<(u64, u128)>) {
        if let Some((life, nonce)) = learner_life {
            self.resume_learner_life(life, nonce);
        }
    }

    /// `replica` takes this one's place, keeping what the host handed this one
    /// meanwhile: submissions and reads still waiting for an answer.
    fn take_place_of(&mut self, replica: Replica) {
        let pending = std::mem::take(&mut self.pending);
        let reads = std::mem::take(&mut self.reads);
        *self = replica;
        self.pending = pending;
        self.reads = reads;
    }

    /// No peer sent the entry: recover the whole log from a quorum instead.
    pub(crate) fn give_up_repair(&mut self) {
        let Some(repair) = self.repair.take() else { return };
        if !self.recover_instead(repair.state) {
            self.repair = Some(repair); // unreachable: the state was valid
        }
    }

    /// Becomes a replica recovering from its peers, with the durable state
    /// `state` it restarted with; false (and nothing changed) if that state
    /// is not valid for this configuration.
    fn recover_instead(&mut self, state: DurableState) -> bool {
        let nonce = checksum(
            &[
                self.config.cluster.to_le_bytes().as_slice(),
                &[self.index],
                &self.incarnations[self.index as usize].to_le_bytes(),
                &self.ticks.to_le_bytes(),
                &self.jitter_state.to_le_bytes(),
            ]
            .concat(),
        );
        let state = DurableState {
            incarnations: self.incarnations,
            ..state
        };
        match Replica::recovering_from(self.config.clone(), self.index, state, nonce) {
            Ok(replica) => {
                self.take_place_of(replica);
                // Durable before anything else (the store empties its log).
                self.write_state();
                true
            }
            Err(_) => false,
        }
    }
}
