//! Quiet groups in the simulator (`Options::quiet`; docs/protocol.md,
//! "Quiet groups"): the hosts' side of them, and what the simulator checks.
//!
//! A host stops ticking a quiet replica, and wakes it (`Input::Wake`, with
//! the ticks it skipped) before any other input. Each node runs the
//! failure detector the engine will run (`vsr_host::Detector`): its beats
//! cross the simulated network between nodes, with its loss, delay,
//! duplication, corruption and partitions, so a partition or a late beat
//! makes a detector suspect a live node (a false suspicion), and a node
//! whose host is held up by a slow sync stops beating (a stuck engine). A
//! node's crash reaches its peers' detectors at once (`nodedown`) with
//! probability `Options::nodedown_probability`, and otherwise only by
//! their timeout. Any replica message from a node counts as hearing it.
//! `Options::oracle` swaps the detector for a perfect oracle (a peer's
//! node is up while its replica runs and the links both ways work). A
//! change reaches an awake replica as `Input::Peers`, and a quiet one as
//! `Input::Wake` if it concerns it (its primary down, for a backup; a
//! quorum down, for a primary), as the engine will feed them.
//!
//! Checks: a quiet replica has no op beyond its commit, and no request or
//! read submitted through it since it booted waits for it (the cluster's
//! view of "quiet only with nothing to do", which catches a replica whose
//! own invariants were compiled wrong); and in random runs, idle spans
//! are measured (messages sent per idle tick), no replica starts a view
//! change in an idle span without a fault once the group went quiet
//! (`check_calm_idle`), and the run ends with every member quiet and
//! nothing in flight.

use vsr::{Input, Role, Slot};
use vsr_host::{peers_feed, up_bits, Beat, Detector, DetectorConfig, PeersFeed};

use crate::simulator::Simulator;

/// What the simulator keeps for quiet groups.
#[derive(Clone, Debug, Default)]
pub struct QuietHost {
    /// Ticks each replica was not ticked because it was quiet.
    pub skipped: Vec<u64>,
    /// The detector's view last fed to each replica (`u16::MAX` at boot).
    pub fed: Vec<u16>,
    /// Tick at which each replica last booted.
    pub booted: Vec<u64>,
    /// Each node's failure detector, while its host runs (not with the
    /// oracle).
    pub detectors: Vec<Option<Detector>>,
    /// The tick each node's detector started at: its clock counts from
    /// there, as a restarted VM's monotonic clock starts again.
    pub detector_since: Vec<u64>,
    /// Nodes whose end no peer heard of yet (a crash without `nodedown`):
    /// their restart tears the old connection down first.
    pub unannounced: Vec<bool>,
    /// Random runs: whether load is in an idle span, and until when.
    pub idle: bool,
    pub phase_until: u64,
    /// When the current idle span began.
    pub idle_since: u64,
    /// Random runs (`bursty_load` ran): the calm idle check applies.
    pub random: bool,
    /// The "no view change in a calm idle span" check (`check_calm_idle`).
    pub calm: Calm,
    pub stats: QuietStats,
}

/// What the "no view change in a calm idle span" check keeps.
#[derive(Clone, Debug, Default)]
pub struct Calm {
    /// The faults counted so far (`Simulator::fault_marks`), as of the last
    /// tick: any change is a fault in that tick.
    marks: Option<FaultMarks>,
    /// While judged (an idle span, no fault since the group went quiet):
    /// since when, when the idle span began, and each replica's campaigns
    /// and `(epoch, view)` then.
    judged: Option<Judged>,
}

/// Counters and states whose change is a fault (`Simulator::fault_marks`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct FaultMarks {
    crashes: u64,
    boots: u64,
    network: u64,
    detector_changes: u64,
    clock_offsets: Vec<i64>,
    changes: u64,
    /// A lying host's divergences (`Options::lying_host`): a faulty
    /// replica, and a diverged primary steps down.
    divergences: usize,
}

#[derive(Clone, Debug)]
struct Judged {
    since: u64,
    idle_since: u64,
    replicas: Vec<Option<(u64, u64, u64)>>,
}

/// Figures of a run with quiet groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuietStats {
    /// Ticks of idle spans, past their first `2 * quiet_after_ticks`
    /// (the time a group has to go quiet), and the messages sent in them.
    pub idle_ticks: u64,
    pub idle_messages: u64,
    /// Idle ticks (as above) with every running member quiet.
    pub all_quiet_ticks: u64,
    /// Wakes fed (`Input::Wake`).
    pub wakes: u64,
    /// Times a replica went quiet.
    pub quiet_spells: u64,
    /// Node beats sent in the idle ticks counted above.
    pub idle_beats: u64,
    /// Times a detector's view of its peers changed.
    pub detector_changes: u64,
    /// Ticks the calm idle check judged (idle, no fault since every
    /// member went quiet: `Simulator::check_calm_idle`).
    pub calm_ticks: u64,
}

impl QuietStats {
    /// Messages per idle tick.
    pub fn per_idle_tick(&self) -> f64 {
        self.idle_messages as f64 / self.idle_ticks.max(1) as f64
    }
}

impl QuietHost {
    pub fn new(n: usize) -> QuietHost {
        QuietHost {
            skipped: vec![0; n],
            fed: vec![u16::MAX; n],
            booted: vec![0; n],
            detectors: vec![None; n],
            detector_since: vec![0; n],
            unannounced: vec![false; n],
            ..QuietHost::default()
        }
    }
}

impl Simulator {
    /// Whether the nodes run the failure detector (quiet, not the oracle).
    pub fn runs_detector(&self) -> bool {
        self.options.quiet && !self.options.oracle
    }

    /// What replica `r`'s node holds of its peers' nodes: the oracle's or
    /// the detector's view, as slots of its list.
    pub fn peers_up(&self, r: Slot) -> u16 {
        if !self.runs_detector() {
            return self.oracle_up(r);
        }
        let (Some(replica), Some(Some(detector))) =
            (self.running(r as usize), self.quiet.detectors.get(r as usize))
        else {
            return u16::MAX;
        };
        up_bits(replica, |member| {
            let node = self.nodes.iter().position(|n| n.id == member.id);
            node.is_some_and(|j| detector.is_up(j as u64))
        })
    }

    /// The detector timing of these options.
    fn detector_config(&self) -> DetectorConfig {
        DetectorConfig::for_replicas(&self.options.config)
    }

    /// At each tick, before the replicas: each running node's detector
    /// learns of crashed and added nodes, passes time (unless its host is
    /// held up: a stuck engine neither beats nor judges), and its beats
    /// leave.
    fn run_detectors(&mut self) {
        let n = self.n();
        self.quiet.detectors.resize(n, None);
        self.quiet.detector_since.resize(n, 0);
        self.quiet.unannounced.resize(n, false);
        let config = self.detector_config();
        for i in 0..n {
            let running = self.hosts[i].is_some();
            match (&self.quiet.detectors[i], running) {
                (None, true) => {
                    // A new life under the same name: its connections are
                    // new, so the old ones' end reaches the peers first.
                    if std::mem::take(&mut self.quiet.unannounced[i]) {
                        self.announce_nodedown(i);
                    }
                    let peers = (0..n).filter(|&j| j != i && !self.dead[j]).map(|j| j as u64);
                    self.quiet.detector_since[i] = self.tick;
                    let now = self.detector_now(i);
                    self.quiet.detectors[i] = Some(Detector::new(i as u64, peers, config, now));
                }
                (Some(_), false) => self.node_gone(i),
                _ => {}
            }
        }
        for i in 0..n {
            if self.stalls[i].is_some() {
                continue;
            }
            let (wall_ns, _) = self.clocks_of(i as Slot);
            let now = self.detector_now(i);
            let Some(detector) = self.quiet.detectors[i].as_mut() else {
                continue;
            };
            for j in 0..n {
                if j == i {
                    continue;
                }
                if self.dead[j] {
                    detector.remove_peer(j as u64);
                } else {
                    detector.add_peer(j as u64);
                }
            }
            let beats = detector.on_tick(now, wall_ns);
            if detector.take_changed() {
                self.quiet.stats.detector_changes += 1;
            }
            for beat in beats {
                let bytes = beat.encode();
                self.network
                    .send_beat(&mut self.rng, self.tick, i as Slot, beat.to as Slot, bytes);
            }
        }
    }

    /// Node `i`'s process ended (a crash, or a restart): its detector goes,
    /// and its peers hear of it at once (`nodedown`), or by their timeout.
    fn node_gone(&mut self, i: usize) {
        if self.quiet.detectors.get_mut(i).and_then(Option::take).is_none() {
            return;
        }
        if self.rng.chance(self.options.nodedown_probability) {
            self.announce_nodedown(i);
        } else {
            self.quiet.unannounced[i] = true;
        }
    }

    /// Every running peer's detector hears that node `i`'s connection ended.
    fn announce_nodedown(&mut self, i: usize) {
        for j in 0..self.quiet.detectors.len() {
            let now = self.detector_now(j);
            let Some(detector) = self.quiet.detectors[j].as_mut() else {
                continue;
            };
            detector.on_disconnected(i as u64, now);
            if detector.take_changed() {
                self.quiet.stats.detector_changes += 1;
            }
        }
    }

    /// Node `i`'s detector clock: ticks since its detector started, plus
    /// one (a `seq` of 0 means "none" in an echo).
    fn detector_now(&self, i: usize) -> u64 {
        let since = self.quiet.detector_since.get(i).copied().unwrap_or(0);
        self.tick - since + 1
    }

    /// Bytes from node `from` reach node `to`'s host: a beat goes to its
    /// detector (`true`); a replica's message counts as hearing `from`.
    pub(crate) fn detector_hears(&mut self, from: Slot, to: Slot, bytes: &[u8]) -> bool {
        if !self.runs_detector() {
            return false;
        }
        let now = self.detector_now(to as usize);
        let Some(detector) = self.quiet.detectors.get_mut(to as usize).and_then(Option::as_mut) else {
            return Beat::is_beat(bytes);
        };
        if !Beat::is_beat(bytes) {
            detector.on_frame(from as u64, now);
            return false;
        }
        if let Some(beat) = Beat::decode(bytes) {
            detector.on_beat(&beat, now);
            if detector.take_changed() {
                self.quiet.stats.detector_changes += 1;
            }
        }
        true
    }

    /// The detector's view of replica `r`'s peers: one bit per slot of its
    /// list, clear for a member whose replica is down or cut off from `r`
    /// either way.
    pub fn oracle_up(&self, r: Slot) -> u16 {
        let Some(replica) = self.running(r as usize) else {
            return u16::MAX;
        };
        up_bits(replica, |member| {
            let node = self.nodes.iter().position(|n| n.id == member.id);
            node.is_some_and(|j| {
                j == r as usize
                    || (self.hosts[j].is_some()
                        && self.network.link(r, j as Slot)
                        && self.network.link(j as Slot, r))
            })
        })
    }

    /// A replica (re)booted: it starts awake, believing every peer up.
    pub(crate) fn quiet_booted(&mut self, r: Slot) {
        let i = r as usize;
        self.quiet.skipped[i] = 0;
        self.quiet.fed[i] = u16::MAX;
        self.quiet.booted[i] = self.tick;
        if self.runs_detector() {
            // A new process: a new detector (at the next tick).
            self.node_gone(i);
        }
    }

    /// Whether the host skips replica `r`'s tick (it is quiet); counted.
    pub(crate) fn skips_quiet_tick(&mut self, r: Slot) -> bool {
        let quiet = self.options.quiet && self.running(r as usize).is_some_and(|x| x.is_quiet());
        if quiet {
            self.quiet.skipped[r as usize] += 1;
        }
        quiet
    }

    /// Before an input other than a tick: wakes replica `r` if it is quiet.
    pub(crate) fn wake_for_input(&mut self, r: Slot) -> Result<(), crate::simulator::Failure> {
        if !self.options.quiet || !self.running(r as usize).is_some_and(|x| x.is_quiet()) {
            return Ok(());
        }
        self.feed_wake(r)
    }

    fn feed_wake(&mut self, r: Slot) -> Result<(), crate::simulator::Failure> {
        let i = r as usize;
        let elapsed_ticks = std::mem::take(&mut self.quiet.skipped[i]);
        let up = self.peers_up(r);
        self.quiet.fed[i] = up;
        self.quiet.stats.wakes += 1;
        let (now_ns, mono_ns) = self.clocks_of(r);
        self.input(
            r,
            Input::Wake {
                now_ns,
                mono_ns,
                elapsed_ticks,
                up,
            },
        )
    }

    /// At each tick: feeds each replica the detector's view when it
    /// changed (`Peers` when awake; `Wake` when quiet and it concerns it).
    pub(crate) fn feed_detector(&mut self) -> Result<(), crate::simulator::Failure> {
        if !self.options.quiet {
            return Ok(());
        }
        if self.runs_detector() {
            self.run_detectors();
        }
        for i in 0..self.n() {
            let r = i as Slot;
            let Some(replica) = self.running(i) else {
                continue;
            };
            let up = self.peers_up(r);
            if up == self.quiet.fed[i] {
                continue;
            }
            match peers_feed(replica, up) {
                PeersFeed::Peers => {
                    self.quiet.fed[i] = up;
                    self.input(r, Input::Peers { up })?;
                }
                PeersFeed::Wake => self.feed_wake(r)?,
                PeersFeed::Nothing => {}
            }
        }
        Ok(())
    }

    /// Random runs: load in bursts, separated by idle spans of 3 to 8
    /// times `quiet_after_ticks`.
    pub(crate) fn bursty_load(&mut self) {
        if !self.options.quiet || self.tick < self.quiet.phase_until {
            return;
        }
        self.quiet.random = true;
        let after = self.options.config.quiet_after_ticks.max(1);
        self.quiet.idle = !self.quiet.idle;
        let span = if self.quiet.idle {
            self.quiet.idle_since = self.tick;
            self.rng.range(3 * after, 8 * after)
        } else {
            self.rng.range(50, 400)
        };
        self.quiet.phase_until = self.tick + span;
        self.load = !self.quiet.idle;
    }

    /// At the end of a tick: counts the idle span's messages, and checks
    /// that every quiet replica has nothing to do.
    pub(crate) fn check_quiet(&mut self, sent_before: (u64, u64)) -> Result<(), crate::simulator::Failure> {
        let (sent_before, beats_before) = sent_before;
        if !self.options.quiet {
            return Ok(());
        }
        let after = self.options.config.quiet_after_ticks;
        if self.quiet.idle && self.tick >= self.quiet.idle_since + 2 * after {
            self.quiet.stats.idle_ticks += 1;
            self.quiet.stats.idle_messages += self.network.sent - sent_before;
            self.quiet.stats.idle_beats += self.network.beats_sent - beats_before;
            if self.all_members_quiet() {
                self.quiet.stats.all_quiet_ticks += 1;
            }
        }
        for i in 0..self.n() {
            let Some(replica) = self.running(i) else {
                continue;
            };
            if !replica.is_quiet() {
                continue;
            }
            let r = i as Slot;
            let booted = self.quiet.booted[i];
            let work = if replica.op() > replica.commit_max() {
                Some(format!(
                    "op {} above its commit {}",
                    replica.op(),
                    replica.commit_max()
                ))
            } else if !self.options.membership_changes
                && self
                    .clients
                    .iter()
                    .any(|c| c.home == r && c.outstanding.as_ref().is_some_and(|o| o.last_submit > booted))
            {
                // Not with membership changes: a request submitted through
                // a replica that then changes epochs can be settled there
                // without an answer (its client resends), quiet or not.
                Some("a request submitted through it unanswered".to_string())
            } else if self.reads.keys().any(|&(at, _)| at == r) {
                Some("a read submitted through it unanswered".to_string())
            } else {
                None
            };
            if let Some(work) = work {
                return Err(self.fail_with(format!("replica {r} is quiet with {work}")));
            }
        }
        Ok(())
    }

    /// Random runs, at the end of each tick: no replica starts a view
    /// change (a campaign, or a view above the group's) while the group is
    /// idle and calm. Design issue 15 asks it of a real cluster: "idle for
    /// 60 s: no view change at all".
    ///
    /// *Idle*: no client load (an idle span of `bursty_load`, or the end
    /// of the run once faults heal). Clients still resend requests they
    /// have no answer for, and that is no fault.
    ///
    /// *Calm*: no fault the simulator injects happened since the judging
    /// began. Faults: a crash or a boot (restart, recovery, a boot a disk
    /// fault failed, a node added); a link cut (a partition, in either
    /// direction, for as long as it lasts); a replica message lost (by
    /// chance or on a cut link), duplicated, corrupted or straggling (when
    /// sent, and again when such a packet arrives), or a beat corrupted
    /// (`Network::faults`); a change of any node's detector view (a
    /// suspicion, false or true, or its end: lost, late or duplicated beats
    /// count only through it, since the detector absorbs the rest by
    /// design); a disk fault, for as long as it lasts (a stall, a slow
    /// sync, a failing or full disk: `disk_faulty`); a wall clock jump
    /// (and the heal that sets clocks right). Not faults: ordinary delay
    /// (`delay_min` to `delay_max`, tail included), and ticks a host skips
    /// (`tick_skip_probability`, always on: a late tick, which only slows
    /// a replica's timers). Not faults either, but exempt: a membership
    /// change under way, or a replica entering another epoch (a new
    /// epoch's view 0 is no view change).
    ///
    /// *Settled*: judging begins at the first idle, calm tick at which
    /// every running member is quiet (what a burst left, and what a fault
    /// left, is done by then: quiet holds only with nothing under way) and
    /// every running node's detector sees the truth (a node that crashed
    /// before is held down by all: until then its crash is not over, and a
    /// woken backup of a dead primary rightly campaigns on its silence:
    /// `vopr --quiet` seed 816), and lasts until load returns or a fault
    /// happens. From then on a
    /// replica that starts a campaign (`Stats::campaigns`) or enters a
    /// higher view of its epoch fails the run.
    pub(crate) fn check_calm_idle(&mut self) -> Result<(), crate::simulator::Failure> {
        if !self.options.quiet || !self.quiet.random {
            return Ok(());
        }
        let marks = self.fault_marks();
        let faulted = self.quiet.calm.marks.as_ref() != Some(&marks)
            || !self.network.is_healed()
            || (0..self.n()).any(|r| self.disk_faulty(r))
            || !self.detectors_see_the_truth()
            || self.change_under_way();
        self.quiet.calm.marks = Some(marks);
        if faulted || self.load {
            self.quiet.calm.judged = None;
            return Ok(());
        }
        let now: Vec<Option<(u64, u64, u64)>> = (0..self.n())
            .map(|i| {
                self.running(i)
                    .map(|r| (r.stats().campaigns, r.membership().epoch(), r.view()))
            })
            .collect();
        let Some(judged) = &self.quiet.calm.judged else {
            if self.all_members_quiet() && now.iter().any(Option::is_some) {
                self.quiet.calm.judged = Some(Judged {
                    since: self.tick,
                    idle_since: self.quiet.idle_since,
                    replicas: now,
                });
            }
            return Ok(());
        };
        self.quiet.stats.calm_ticks += 1;
        let mut epoch_changed = false;
        for (i, (then, now)) in judged.replicas.iter().zip(&now).enumerate() {
            let (Some((campaigns, epoch, view)), Some((campaigns_now, epoch_now, view_now))) = (then, now)
            else {
                continue;
            };
            if epoch_now != epoch {
                epoch_changed = true;
                continue;
            }
            let started = if campaigns_now > campaigns {
                Some(format!("campaigned (in view {view_now})"))
            } else if view_now > view {
                Some(format!("entered view {view_now} (from {view})"))
            } else {
                None
            };
            if let Some(started) = started {
                let idle = if self.quiet.idle {
                    format!("the idle span since tick {}", judged.idle_since)
                } else {
                    "the idle end of the run".to_string()
                };
                return Err(self.fail_with(format!(
                    "replica {i} {started} in {idle}, with no fault since tick {} when every member was quiet: {}",
                    judged.since,
                    self.describe_quiet()
                )));
            }
        }
        if epoch_changed || now.len() != judged.replicas.len() {
            self.quiet.calm.judged = None;
        }
        Ok(())
    }

    /// Every running replica's detector holds up exactly the nodes that
    /// run and that it can reach both ways (the oracle's view): a crash
    /// the detectors have not yet timed out is not over.
    fn detectors_see_the_truth(&self) -> bool {
        (0..self.n()).all(|i| {
            self.running(i).is_none_or(|replica| {
                let own = 1u16 << replica.index();
                self.peers_up(i as Slot) | own == self.oracle_up(i as Slot) | own
            })
        })
    }

    /// Counters and states whose change is a fault, for `check_calm_idle`.
    fn fault_marks(&self) -> FaultMarks {
        FaultMarks {
            crashes: self.crashes,
            boots: self.boots,
            network: self.network.faults,
            detector_changes: self.quiet.stats.detector_changes,
            clock_offsets: self.clock_offset_ns.clone(),
            changes: self.changes,
            divergences: self.divergences.len(),
        }
    }

    /// Every running member (of the newest list) is quiet.
    pub fn all_members_quiet(&self) -> bool {
        self.replicas()
            .filter(|r| r.role() == Role::Member)
            .all(|r| r.is_quiet())
    }

    /// Notes replicas that went quiet in this tick (for the figures).
    pub(crate) fn count_quiet_spells(&mut self, before: &[bool]) {
        for (i, was) in before.iter().enumerate() {
            if !was && self.running(i).is_some_and(|r| r.is_quiet()) {
                self.quiet.stats.quiet_spells += 1;
            }
        }
    }

    /// Which replicas are quiet now.
    pub(crate) fn quiet_now(&self) -> Vec<bool> {
        (0..self.n())
            .map(|i| self.running(i).is_some_and(|r| r.is_quiet()))
            .collect()
    }

    /// Random runs, once the cluster settled: an idle span of
    /// `3 * quiet_after_ticks` ends with every member quiet and no packet
    /// in flight (the cost claim: an idle group sends nothing).
    pub(crate) fn idle_ends_quiet(&mut self) -> Result<(), crate::simulator::Failure> {
        if !self.options.quiet {
            return Ok(());
        }
        // Stragglers of the faults (`NetworkOptions::stray`) arrive first.
        let deadline = self.tick + self.options.network.stray_max.max(1_000);
        while self.network.in_flight() > 0 && self.tick < deadline {
            self.step()?;
        }
        // A pin a synced peer left expires after `4 * view_change_ticks`
        // (checkpoint.rs): the group stays awake that long, then goes
        // quiet within a round.
        let config = &self.options.config;
        let span = 3 * config.quiet_after_ticks + 4 * config.view_change_ticks;
        let first_round = config.quiet_after_ticks;
        // A replica that lacks the checkpoint a quiet round names fetches
        // it then (`vopr --quiet` seed 70639: a sync begun a round into
        // the span), and the pin it leaves keeps its peer awake for as
        // long again: sync work still under way past the span's first
        // round earns one more span.
        let syncing = |s: &Self| {
            s.replicas()
                .any(|r| matches!(r.work(), Some("a state sync" | "a checkpoint pinned for a peer")))
        };
        let mut synced_late = false;
        for tick in 0..span {
            self.step()?;
            synced_late |= tick > first_round && syncing(self);
        }
        if synced_late {
            for _ in 0..span {
                self.step()?;
            }
        }
        if !self.all_members_quiet() || self.network.in_flight() > 0 {
            return Err(self.fail_with(format!(
                "not quiet {span} ticks after settling: {}",
                self.describe_quiet()
            )));
        }
        Ok(())
    }

    fn describe_quiet(&self) -> String {
        let quiet: Vec<String> = (0..self.n())
            .map(|i| match self.running(i) {
                Some(r) if r.is_quiet() => format!("r{i}:quiet"),
                Some(r) => format!("r{i}:awake({})", r.awake_because().unwrap_or("-")),
                None => format!("r{i}:down"),
            })
            .collect();
        format!("{}; {}", quiet.join(" "), self.describe())
    }
}
