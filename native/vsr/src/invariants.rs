//! What always holds of one replica, whatever it was fed: the coupled
//! fields of its state, stated once and checked after every step (in debug
//! builds by `Replica::step` itself, and by the simulator after every step
//! of every replica, in every build).
//!
//! These are properties of one replica alone. What must hold *between*
//! replicas (no committed op lost, at most once, linearizable reads) is
//! the simulator's and the model check's to judge, and a deliberately
//! broken protocol (`Mutation`) breaks its own invariants too: there the
//! checkers, not these, must find the damage.

use crate::membership::{Slot, MAX_SLOTS};
use crate::replica::{Replica, Role, Status};

impl Replica {
    /// Checks every invariant of this replica's state; the first one
    /// broken, described, if any.
    pub fn invariants(&self) -> Result<(), String> {
        self.log.check()?;
        self.check_numbers()?;
        self.check_membership()?;
        self.check_reconfiguration()?;
        self.check_status()?;
        self.check_primary()?;
        self.check_timers()?;
        self.check_quiet()?;
        self.client_table.check(self.commit_min)?;
        self.checkpoints.check(self.index, &self.log, self.commit_min)
    }

    /// Views and ops: `log_view <= view`, and `base <= commit_min <=
    /// commit_max`, `commit_min <= op` (what was executed is committed
    /// and held: a committed op is never truncated).
    fn check_numbers(&self) -> Result<(), String> {
        if self.log_view > self.view {
            return Err(format!("log_view {} ahead of view {}", self.log_view, self.view));
        }
        let (base, op) = (self.log.base(), self.log.op());
        if !(base <= self.commit_min && self.commit_min <= op) {
            return Err(format!(
                "executed op {} outside the log (ops {base}..={op})",
                self.commit_min
            ));
        }
        if self.commit_min > self.commit_max {
            return Err(format!(
                "executed op {} beyond the commit number {}",
                self.commit_min, self.commit_max
            ));
        }
        Ok(())
    }

    /// The replica is a `Member` exactly when its slot is in its list, and
    /// it holds nothing for a slot outside the list: no acknowledgement,
    /// vote, incarnation or DoViewChange (a slot is reused once its member
    /// has left, and its next owner must start from nothing). Its epoch is
    /// at least that of every checkpoint it holds (installing one enters
    /// its epoch).
    fn check_membership(&self) -> Result<(), String> {
        let held = [
            &self.checkpoints.held,
            &self.checkpoints.previous,
            &self.checkpoints.anchor,
        ];
        if let Some(newer) = held
            .into_iter()
            .flatten()
            .find(|h| h.checkpoint.epoch() > self.membership.epoch())
        {
            return Err(format!(
                "a checkpoint of epoch {} held in epoch {}",
                newer.checkpoint.epoch(),
                self.membership.epoch()
            ));
        }
        let listed = self
            .membership
            .member(self.index)
            .is_some_and(|m| m.id == self.id && m.joined == self.joined);
        if (self.role == Role::Member) != listed {
            return Err(format!(
                "role {:?} for slot {} {} its list {:?}",
                self.role,
                self.index,
                if listed { "in" } else { "outside" },
                self.membership
            ));
        }
        let outside = (0..MAX_SLOTS as Slot).filter(|&s| !self.membership.contains(s));
        for slot in outside {
            let s = slot as usize;
            let learner = self.learners.iter().any(|l| l.0 == slot);
            let held = [
                ("an acknowledgement", self.acked[s] != 0 && !learner),
                ("a vote", self.votes[s] != 0 || self.vote_ticks[s] != 0),
                ("an incarnation", self.incarnations[s] != 0),
                ("a DoViewChange", self.dvcs[s].is_some()),
            ];
            if let Some((what, _)) = held.iter().find(|(_, held)| *held) {
                return Err(format!("{what} held for slot {slot}, outside the list"));
            }
        }
        Ok(())
    }

    /// Each status has the state it needs and no more.
    fn check_status(&self) -> Result<(), String> {
        let recovering = self.status == Status::Recovering;
        if recovering != self.recovery.is_some() {
            return Err(format!(
                "status {:?} with recovery state {}",
                self.status,
                self.recovery.is_some()
            ));
        }
        if (self.status == Status::Repairing) != self.repair.is_some() {
            return Err(format!(
                "status {:?} with repair state {}",
                self.status,
                self.repair.is_some()
            ));
        }
        if self.status == Status::Normal && self.log_view != self.view {
            return Err(format!(
                "normal status in view {} with a log of view {}",
                self.view, self.log_view
            ));
        }
        // A recovering replica takes part in no view change until it holds
        // its log again.
        if recovering && (self.campaign != 0 || self.dvcs.iter().any(Option::is_some)) {
            return Err("a recovering replica campaigns or collects DoViewChanges".into());
        }
        if self.campaign != 0 && self.campaign <= self.view {
            return Err(format!(
                "campaign for view {} from view {}",
                self.campaign, self.view
            ));
        }
        if self.dvcs.iter().any(Option::is_some)
            && !(self.status == Status::ViewChange && self.is_primary_of_view())
        {
            return Err(format!(
                "DoViewChanges held in status {:?} by a replica that does not start view {}",
                self.status, self.view
            ));
        }
        if let Some(staging) = &self.staging {
            if staging.view() < self.view || self.staging_base() < Some(self.log.base()) {
                return Err(format!(
                    "staging view {} in view {} with a log after op {}",
                    staging.view(),
                    self.view,
                    self.log.base()
                ));
            }
        }
        Ok(())
    }

    /// A primary in normal status holds every op it knows committed, and
    /// the log its view started with; only the primary of the view queues
    /// requests, each once.
    fn check_primary(&self) -> Result<(), String> {
        let op = self.log.op();
        if self.is_primary() {
            if self.commit_max > op {
                return Err(format!(
                    "primary's commit number {} beyond its log's op {op}",
                    self.commit_max
                ));
            }
            if self.view_start_op > op {
                return Err(format!(
                    "primary's view started at op {} beyond its log's op {op}",
                    self.view_start_op
                ));
            }
            let me = self.index as usize;
            if self.acked[me] != op || self.membership.slots().any(|s| self.acked[s as usize] > op) {
                return Err(format!(
                    "primary with log op {op} counts acknowledgements {:?}",
                    self.acked
                ));
            }
        }
        if !self.queue.is_empty() && !self.is_primary_of_view() {
            return Err(format!(
                "{} requests queued by a backup of view {}",
                self.queue.len(),
                self.view
            ));
        }
        if self.queue.len() > self.config.request_queue_max || self.queued.len() != self.queue.len() {
            return Err(format!(
                "request queue of {} (at most {}) indexed by {}",
                self.queue.len(),
                self.config.request_queue_max,
                self.queued.len()
            ));
        }
        Ok(())
    }

    /// No timer was last reset in the future.
    fn check_timers(&self) -> Result<(), String> {
        let ticks = self.ticks;
        let timers = [
            ("last_primary_tick", self.last_primary_tick),
            ("status_since", self.status_since),
            ("last_broadcast_tick", self.last_broadcast_tick),
            ("last_retry_tick", self.last_retry_tick),
            ("last_resend_tick", self.last_resend_tick),
            ("last_campaign_tick", self.last_campaign_tick),
        ];
        let options = [
            ("last_repair_tick", self.last_repair_tick),
            ("last_start_view_request", self.last_start_view_request),
            ("last_do_view_change_request", self.last_do_view_change_request),
        ];
        let late = timers
            .into_iter()
            .chain(options.into_iter().filter_map(|(name, t)| Some((name, t?))))
            .chain(
                self.membership
                    .slots()
                    .map(|s| ("last_heard", self.last_heard[s as usize])),
            )
            .chain(
                self.membership
                    .slots()
                    .map(|s| ("vote_ticks", self.vote_ticks[s as usize])),
            )
            .find(|&(_, t)| t > ticks);
        match late {
            Some((name, t)) => Err(format!("{name} is tick {t}, after tick {ticks}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::message::Request;
    use crate::replica::{Input, Output, Submission};

    /// A cluster of one that registered a client and executed 9 requests,
    /// with a checkpoint every 2 ops: its log starts after a checkpoint.
    fn busy_replica() -> Replica {
        let mut config = Config::new(7, 1);
        config.checkpoint_interval = 2;
        let mut replica = Replica::new(config, 0);
        let mut session = 0;
        for request in 0..10 {
            let submission = Submission {
                client: 5,
                session,
                request,
                payload: vec![request as u8],
            };
            let mut outputs = replica.step(Input::Submit(submission));
            outputs.extend(replica.step(Input::Tick {
                now_ns: request + 1,
                mono_ns: request + 1,
            }));
            for output in outputs {
                match output {
                    Output::TakeSnapshot { op } => {
                        replica.step(Input::Snapshot { op, app: vec![] });
                    }
                    Output::Reply { op, .. } if request == 0 => session = op,
                    _ => {}
                }
            }
        }
        assert_eq!(replica.commit(), 10);
        assert!(replica.log().base() > 0, "the log was truncated at a checkpoint");
        replica
    }

    /// A backup of three, in view 0.
    fn backup() -> Replica {
        Replica::new(Config::new(7, 3), 1)
    }

    fn breaks(replica: &Replica, corrupt: impl FnOnce(&mut Replica), expected: &str) {
        replica.invariants().expect("the replica starts sound");
        let mut broken = replica.clone();
        corrupt(&mut broken);
        match broken.invariants() {
            Err(message) => assert!(
                message.contains(expected),
                "{message:?} does not say {expected:?}"
            ),
            Ok(()) => panic!("no invariant broken; expected one about {expected:?}"),
        }
    }

    #[test]
    fn each_invariant_can_fail() {
        let primary = busy_replica();
        let op = primary.log.op();
        breaks(
            &primary,
            |r| r.log_view = r.view + 1,
            "log_view 1 ahead of view 0",
        );
        breaks(&primary, |r| r.commit_min = op + 1, "outside the log");
        breaks(&primary, |r| r.commit_min = r.log.base() - 1, "outside the log");
        breaks(
            &primary,
            |r| r.commit_max = r.commit_min - 1,
            "beyond the commit number",
        );
        breaks(&primary, |r| r.commit_max = op + 1, "primary's commit number");
        breaks(&primary, |r| r.view_start_op = op + 1, "view started at op");
        breaks(&primary, |r| r.acked[0] = op - 1, "counts acknowledgements");
        breaks(
            &primary,
            |r| r.role = Role::Leaving,
            "role Leaving for slot 0 in its list",
        );
        breaks(
            &primary,
            |r| r.acked[3] = 1,
            "an acknowledgement held for slot 3, outside",
        );
        breaks(&primary, |r| r.votes[11] = 1, "a vote held for slot 11");
        breaks(
            &primary,
            |r| r.incarnations[6] = 2,
            "an incarnation held for slot 6",
        );
        let newer_checkpoint = |r: &mut Replica| {
            let held = r.checkpoints.held.as_mut().expect("a checkpoint every 2 ops");
            let next = r.membership.next(&[0], Default::default(), 0).unwrap();
            std::sync::Arc::make_mut(&mut held.checkpoint).membership = Some(next);
        };
        breaks(
            &primary,
            newer_checkpoint,
            "a checkpoint of epoch 1 held in epoch 0",
        );
        breaks(
            &primary,
            |r| r.status = Status::Recovering,
            "with recovery state false",
        );
        breaks(
            &primary,
            |r| r.status = Status::Repairing,
            "with repair state false",
        );
        breaks(
            &primary,
            |r| r.view = 2,
            "normal status in view 2 with a log of view 0",
        );
        let in_view_1 = |r: &mut Replica| {
            (r.view, r.log_view, r.campaign) = (1, 1, 1);
        };
        breaks(&primary, in_view_1, "campaign for view 1 from view 1");
        breaks(
            &primary,
            |r| r.last_primary_tick = r.ticks + 1,
            "last_primary_tick is tick",
        );
        breaks(&primary, |r| r.vote_ticks[0] = r.ticks + 1, "vote_ticks is tick");
        breaks(
            &primary,
            |r| r.last_repair_tick = Some(r.ticks + 1),
            "last_repair_tick",
        );
        breaks(
            &primary,
            |r| {
                r.dvcs[0] = Some(crate::view_change::Dvc {
                    log_view: 0,
                    op: 0,
                    commit: 0,
                    base: 0,
                    base_checksum: 0,
                    entries: Vec::new(),
                })
            },
            "DoViewChanges held in status Normal",
        );
        breaks(&primary, execute_ahead, "last active at op 11");
        breaks(
            &primary,
            |r| r.checkpoints.previous = r.checkpoints.held.clone(),
            "previous checkpoint not below",
        );
        breaks(
            &primary,
            |r| r.checkpoints.anchor = None,
            "without a durable checkpoint",
        );
        breaks(
            &primary,
            |r| r.checkpoints.anchor = anchor_below_base(r),
            "does not hold the durable checkpoint",
        );
        let request = Request {
            client: 9,
            session: 1,
            request: 1,
            origin: 1,
            payload: Vec::new(),
        };
        breaks(
            &backup(),
            |r| r.queue.push_back(request.clone()),
            "queued by a backup",
        );
        breaks(&primary, |r| r.queue.push_back(request), "indexed by 0");
    }

    /// The model check fingerprints a replica by its `Debug` text
    /// (`vsr_model::replica_digest`): a check must not change it, or one
    /// state reached along two paths (its replicas checked or just
    /// cloned) counts as two, and a state's hash changes once checked.
    #[test]
    fn a_check_leaves_the_fingerprint_unchanged() {
        let replica = busy_replica();
        let copy = replica.clone();
        replica.invariants().expect("the replica is sound");
        assert_eq!(format!("{replica:?}"), format!("{copy:?}"));
    }

    /// The checks remember what they verified (`Verified`); a replica that
    /// passed and then changes in place is still judged by all of it.
    #[test]
    fn a_break_after_a_check_that_passed_is_found() {
        let mut replica = busy_replica();
        replica.invariants().expect("the replica starts sound");
        execute_ahead(&mut replica);
        let broken = replica.invariants().unwrap_err();
        assert!(broken.contains("last active at op 11"), "{broken}");
    }

    /// The replica's client table executes a request at the op after the
    /// replica's executed op (op 11 for `busy_replica`).
    fn execute_ahead(replica: &mut Replica) {
        let request = Request {
            client: 6,
            session: 0,
            request: 0,
            origin: 0,
            payload: Vec::new(),
        };
        replica.client_table.execute(replica.commit_min + 1, &request);
    }

    /// A durable checkpoint at op 1, below the log's base.
    fn anchor_below_base(replica: &Replica) -> Option<crate::checkpoint::Held> {
        let mut held = replica.checkpoints.held.clone()?;
        let mut checkpoint = (*held.checkpoint).clone();
        checkpoint.op = 1;
        held.checkpoint = std::sync::Arc::new(checkpoint);
        Some(held)
    }

    #[test]
    fn timestamps_strictly_increase_whatever_the_wall_clock_says() {
        // `Input::Tick` promises timestamps stay strictly increasing
        // whatever `now_ns` says. The next timestamp is at least `head +
        // 1`, which saturated once a clock read near `u64::MAX`: every
        // later prepare was stamped `u64::MAX` too, and `Log::check` fired
        // ("stamped 18446744073709551615 after 18446744073709551615").
        // Readings past `MAX_CLOCK_NS` are now read as that ceiling.
        let mut replica = Replica::new(Config::new(7, 1), 0);
        replica.step(Input::Tick {
            now_ns: u64::MAX,
            mono_ns: 1,
        });
        for client in [5, 6] {
            replica.step(Input::Submit(Submission {
                client,
                session: 0,
                request: 0,
                payload: vec![],
            }));
            replica.step(Input::Tick {
                now_ns: u64::MAX,
                mono_ns: 2,
            });
        }
        assert_eq!(replica.log().op(), 2);
        replica.log().check().expect("timestamps strictly increase");
    }
}
