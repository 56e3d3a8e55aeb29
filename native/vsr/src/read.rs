//! Linearizable reads without touching the log (a read index).
//!
//! A read submitted through any replica goes to the primary, which sends a
//! heartbeat with a new `round`. Once a quorum (itself included) has
//! answered that round, no newer view can have started before the read
//! arrived: a view starts only with a quorum of replicas that have left this
//! one, and they would not have answered. So every op committed before the
//! read began is in the primary's log. Once the primary has also committed
//! the whole log it started its view with (before that, an op committed in
//! the previous view may lie above its commit number), every such op is at
//! or below its commit number, which becomes the read's index. The index is
//! committed, so no later view change can lose it (an uncommitted log head
//! could be, leaving the read waiting forever: seed 28348 of an earlier
//! build). The origin serves the read as soon as it has executed up to it.
//!
//! A `ReadOk` answers a read only if it comes from the primary of the view
//! the read was last sent in, in that view, and names the read's wire id.
//! Wire ids are this replica's own: a count from 1, offset by a number
//! drawn from the host's `Config::boot_nonce`, which differs at every
//! start. The host's ids (which `Visor.Server` counts from 1 again after a
//! restart) never reach the wire, so a `ReadOk` delayed across a restart
//! cannot answer a new read with an index from before it (issue "Lose
//! nothing" 5).

#[cfg(feature = "mutations")]
use crate::config::Mutation;
use crate::config::{Op, View};
use crate::membership::{Slot, MAX_SLOTS};
use crate::message::Message;
use crate::replica::{Output, Replica, Status};

/// A read the primary is confirming.
#[derive(Clone, Debug)]
pub(crate) struct ConfirmingRead {
    origin: Slot,
    id: u64,
    /// The heartbeat round a quorum must answer.
    round: u64,
}

/// A read submitted here, waiting for its index and then for execution.
#[derive(Clone, Debug)]
pub(crate) struct PendingRead {
    /// The host's id for it, given back in `ReadReady`.
    host_id: u64,
    pub(crate) sent_tick: u64,
    /// The view it was last sent in: only that view's primary may answer.
    sent_view: View,
    pub(crate) op: Option<Op>,
}

/// Read-index state, on primaries and origins alike.
#[derive(Clone, Debug, Default)]
pub(crate) struct Reads {
    /// Primary: the last heartbeat round broadcast in this view.
    round: u64,
    /// Primary: the highest round each replica has answered in this view.
    answered: [u64; MAX_SLOTS],
    /// Primary: reads waiting for a quorum to answer their round.
    confirming: Vec<ConfirmingRead>,
    /// Backup: the last round heard from the primary in this view.
    pub(crate) heard_round: u64,
    /// Origin: reads submitted here, by wire id.
    pub(crate) pending: std::collections::BTreeMap<u64, PendingRead>,
    /// Origin: wire ids are `id_base + n` for the n-th read of this
    /// incarnation; `id_base` is drawn from `Config::boot_nonce`.
    id_base: u64,
    submitted: u64,
}

impl Reads {
    /// Read-index state for a replica started with `boot_nonce`.
    pub(crate) fn new(boot_nonce: u64) -> Reads {
        Reads {
            id_base: spread(boot_nonce),
            ..Reads::default()
        }
    }

    /// Forgets the rounds an older incarnation of `replica` answered.
    pub(crate) fn forget(&mut self, replica: usize) {
        self.answered[replica] = 0;
    }

    /// No read is being confirmed here, and none submitted here waits
    /// (a quiet replica has none: `quiet.rs`).
    pub(crate) fn idle(&self) -> bool {
        self.confirming.is_empty() && self.pending.is_empty()
    }

    /// Primary: starts a new heartbeat round (answered by `me` at once)
    /// and returns it.
    pub(crate) fn new_round(&mut self, me: usize) -> u64 {
        self.round += 1;
        self.answered[me] = self.round;
        self.round
    }

    /// A view change voids every confirmation in progress (origins retry).
    pub(crate) fn new_view(&mut self) {
        self.answered = [0; MAX_SLOTS];
        self.confirming.clear();
        self.heard_round = 0;
    }
}

/// splitmix64's finaliser: nonces that are close together (clock readings)
/// give id bases far apart, so two incarnations' ids do not overlap.
fn spread(nonce: u64) -> u64 {
    let mut z = nonce.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Replica {
    /// A read submitted through this replica; `host_id` is the host's.
    pub(crate) fn on_read_submit(&mut self, host_id: u64) {
        self.reads.submitted += 1;
        #[allow(unused_mut)]
        let mut id = self.reads.id_base.wrapping_add(self.reads.submitted);
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::ReadIdsWithoutNonce) {
            id = self.reads.submitted;
        }
        self.reads.pending.insert(
            id,
            PendingRead {
                host_id,
                sent_tick: self.ticks,
                sent_view: self.view,
                op: None,
            },
        );
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::ReadFromLocalState) {
            if let Some(read) = self.reads.pending.get_mut(&id) {
                read.op = Some(self.commit_min);
            }
            return self.serve_reads();
        }
        self.route_read(id);
    }

    pub(crate) fn route_read(&mut self, id: u64) {
        if self.status != Status::Normal {
            return; // retried once a view is running
        }
        if let Some(read) = self.reads.pending.get_mut(&id) {
            read.sent_view = self.view;
        }
        if self.is_primary_of_view() {
            self.on_read(self.index, id);
        } else {
            let primary = self.primary();
            self.send(primary, &Message::Read { id });
        }
    }

    /// Resends reads still waiting for an index.
    pub(crate) fn retry_reads(&mut self) {
        let retry = self.config.request_retry_ticks;
        let due: Vec<u64> = self
            .reads
            .pending
            .iter_mut()
            .filter(|(_, r)| r.op.is_none() && r.sent_tick.saturating_add(retry) <= self.ticks)
            .map(|(id, r)| {
                r.sent_tick = self.ticks;
                *id
            })
            .collect();
        due.into_iter().for_each(|id| self.route_read(id));
    }

    /// On the primary: a read arrived from `origin`.
    pub(crate) fn on_read(&mut self, origin: Slot, id: u64) {
        if !self.is_primary() || self.abdicating() {
            return;
        }
        let round = self.reads.round + 1;
        self.reads.confirming.push(ConfirmingRead { origin, id, round });
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::ReadWithoutQuorum) {
            self.reads.answered = [u64::MAX; MAX_SLOTS];
        }
        self.broadcast_heartbeat(true);
        self.confirm_reads();
    }

    /// Sends a heartbeat; `probe` starts a new round for waiting reads.
    pub(crate) fn broadcast_heartbeat(&mut self, probe: bool) {
        if probe {
            self.reads.round += 1;
            self.reads.answered[self.index as usize] = self.reads.round;
        }
        let message = self.heartbeat();
        self.broadcast(&message);
        self.send_to_learners(&message);
        self.last_broadcast_tick = self.ticks;
        self.commit_unannounced = false;
    }

    /// A heartbeat: the commit number, in the current round, and the newest
    /// checkpoint a quorum holds.
    pub(crate) fn heartbeat(&self) -> Message {
        Message::Commit {
            view: self.view,
            commit: self.commit_max,
            round: self.reads.round,
            checkpoint: self.checkpoints.canonical(),
        }
    }

    /// On the primary: a backup answered up to `round`.
    pub(crate) fn on_round_answered(&mut self, from: Slot, round: u64) {
        let answered = &mut self.reads.answered[from as usize];
        *answered = (*answered).max(round.min(self.reads.round));
        self.confirm_reads();
    }

    /// Answers every read whose round a quorum has answered, once the
    /// commit number covers the log this view started with.
    pub(crate) fn confirm_reads(&mut self) {
        if self.commit_max < self.view_start_op {
            return;
        }
        let quorum = self.quorum();
        let members = self.membership;
        let answered = self.reads.answered;
        let (ready, waiting): (Vec<ConfirmingRead>, Vec<ConfirmingRead>) =
            std::mem::take(&mut self.reads.confirming)
                .into_iter()
                .partition(|read| {
                    members
                        .slots()
                        .filter(|&s| answered[s as usize] >= read.round)
                        .count()
                        >= quorum
                });
        self.reads.confirming = waiting;
        let op = self.commit_max;
        for read in ready {
            if read.origin == self.index {
                self.on_read_ok(self.index, self.view, read.id, op);
            } else {
                // The origin serves the read once it has executed up to
                // `op`: it must hear the commit number now.
                self.commit_urgent |= 1 << read.origin;
                self.send(
                    read.origin,
                    &Message::ReadOk {
                        view: self.view,
                        id: read.id,
                        op,
                    },
                );
            }
        }
    }

    /// On the origin: `from`, primary of `view`, gives read `id` its index.
    /// Only the primary of the view the read was last sent in may: an answer
    /// from another view, or another sender, is for a read this one is not.
    pub(crate) fn on_read_ok(&mut self, from: Slot, view: View, id: u64, op: Op) {
        let primary = self.membership.primary(view);
        if let Some(read) = self.reads.pending.get_mut(&id) {
            if read.sent_view == view && from == primary {
                read.op.get_or_insert(op);
            }
        }
        self.serve_reads();
    }

    /// Emits `ReadReady` for every read whose index has been executed here.
    pub(crate) fn serve_reads(&mut self) {
        if self.is_diverged() {
            return; // its host's state is wrong
        }
        let executed = self.commit_min;
        let ready: Vec<(u64, Op)> = self
            .reads
            .pending
            .iter()
            .filter_map(|(id, r)| r.op.filter(|&op| op <= executed).map(|op| (*id, op)))
            .collect();
        for (id, op) in ready {
            if let Some(read) = self.reads.pending.remove(&id) {
                self.out.push(Output::ReadReady { id: read.host_id, op });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::message::encode;
    use crate::replica::Input;

    fn read_ok(from: Slot, view: View, id: u64) -> Vec<u8> {
        let cluster = Config::new(1, 3).wire_cluster();
        let sender = crate::message::Sender {
            epoch: 0,
            slot: from,
            id: from as u128,
            joined: 0,
        };
        encode(
            cluster,
            sender,
            &[0; MAX_SLOTS],
            1,
            &Message::ReadOk { view, id, op: 0 },
        )
    }

    fn ready(outputs: &[Output]) -> Vec<u64> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::ReadReady { id, .. } => Some(*id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_read_ok_counts_only_from_the_primary_of_the_view_the_read_was_sent_in() {
        let mut replica = Replica::new(Config::new(1, 3), 1);
        replica.step(Input::Tick {
            now_ns: 1,
            mono_ns: 1,
        });
        replica.step(Input::Read { id: 7 });
        let wire = *replica.reads.pending.keys().next().expect("a pending read");
        assert_ne!(wire, 7, "the host's id stays off the wire");
        // From a backup of the view, from the primary of a view it was not
        // sent in, or for another id: ignored.
        for bytes in [read_ok(2, 0, wire), read_ok(0, 3, wire), read_ok(0, 0, wire + 1)] {
            assert!(ready(&replica.step(Input::Receive(&bytes))).is_empty());
        }
        // From view 0's primary: the host's read 7 is ready.
        assert_eq!(
            ready(&replica.step(Input::Receive(&read_ok(0, 0, wire)))),
            vec![7]
        );
    }

    #[test]
    fn incarnations_number_their_reads_apart() {
        let ids = |nonce: u64| {
            let mut config = Config::new(1, 3);
            config.boot_nonce = nonce;
            let mut replica = Replica::new(config, 1);
            replica.step(Input::Read { id: 1 });
            *replica.reads.pending.keys().next().expect("a pending read")
        };
        // Boot nonces one apart (clock readings) still give far-apart ids.
        let (a, b) = (ids(1_000), ids(1_001));
        assert!(a.abs_diff(b) > 1 << 32, "{a} and {b}");
    }
}
