//! Cluster time: the wall clock a primary stamps prepares with, kept within
//! the clocks of a quorum (issue "Lose nothing" 10).
//!
//! Every message carries its sender's wall clock (`now_ns` of its last
//! tick). A replica keeps, for each peer, the last reading together with
//! its own *monotonic* clock (`mono_ns` of its last tick) and tick when
//! the message arrived. A peer's clock now is estimated as its reading plus
//! the monotonic time elapsed since: a reference that does not jump, so a
//! jump of this replica's own wall clock shows at once as an offset
//! (estimate minus its wall clock now) instead of being vouched for by
//! readings taken against the clock before the jump.
//!
//! To stamp a prepare, the primary takes the offsets of the readings heard
//! within the last `view_change_ticks` ticks, its own (0) included, and
//! needs at least a quorum `q` of them. Sorted, `k` offsets give a window
//! `[lo, hi]`: `lo` is the `(k - q + 1)`-th smallest, `hi` the `(w + 1)`-th
//! largest with `w = max(n - q, 1)` (`w = 0` alone). The primary moves its
//! own offset, 0, into the window and uses its clock plus the result. The
//! bounds are not symmetric because the errors are not: a time behind
//! corrects itself (timestamps advance by 1 ns per op until the clocks catch
//! up), a time ahead never does (timestamps only increase). So:
//!
//! * at least `w + 1` sampled clocks read at least the time used: any `w`
//!   wrong clocks, any minority and always any one clock (the primary's or
//!   a backup's), cannot put it ahead of every other sampled clock, whether
//!   or not replicas are down (with one of three down: the earlier of the
//!   two clocks);
//! * at least `k - q + 1` sampled clocks read at most the time used: with
//!   every replica heard from, up to `n - q` wrong clocks cannot hold it
//!   behind every right one; with a bare quorum heard, one clock behind
//!   holds it back (it lags, and catches up when that clock does);
//! * a primary that has not heard a quorum's clocks lately (the first ticks
//!   of its view) does not advance time: it stamps `head + 1`.
//!
//! Clock readings above `MAX_CLOCK_NS` are read as that ceiling, so the
//! next timestamp (`head + 1`) never saturates at `u64::MAX`.
//!
//! Estimates ignore message delay (a reading is older than its arrival by
//! one delay) and count the time since a reading arrived from the first
//! tick after it (`Clocks::ticked`), so they lag a peer's clock rather than
//! lead it; they also ignore the drift of a peer's wall clock against our
//! monotonic one while the reading is fresh (at most `view_change_ticks`
//! ticks).

use crate::membership::{Membership, MAX_SLOTS};

/// The latest wall clock reading taken at its word, in ns since the epoch:
/// `i64::MAX` (in 2262). A later reading is read as this one, which leaves
/// timestamps 2^63 ops of room above it to keep increasing by 1 ns.
pub(crate) const MAX_CLOCK_NS: u64 = i64::MAX as u64;

/// A peer's clock, as last heard.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Its wall clock, in ns, as its message said.
    theirs: u64,
    /// Our monotonic clock, in ns, at our first tick after its message
    /// arrived (`None` until that tick).
    mono: Option<u64>,
    /// Our tick when it arrived.
    tick: u64,
}

/// The last clock reading heard from every peer.
#[derive(Clone, Debug, Default)]
pub(crate) struct Clocks {
    samples: [Option<Sample>; MAX_SLOTS],
}

/// This replica's clocks at its last tick.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    /// Wall clock, ns (may jump either way).
    pub(crate) wall: u64,
    /// Monotonic clock, ns (never jumps; any origin).
    pub(crate) mono: u64,
    /// Ticks so far.
    pub(crate) tick: u64,
}

impl Clocks {
    /// Records that `from`'s clock read `theirs` when this replica's clocks
    /// read `now`. A clock that reads 0 has not ticked yet: it says nothing.
    pub(crate) fn heard(&mut self, from: usize, theirs: u64, now: Now) {
        if theirs == 0 || now.wall == 0 || from >= MAX_SLOTS {
            return;
        }
        self.samples[from] = Some(Sample {
            theirs,
            mono: None,
            tick: now.tick,
        });
    }

    /// Forgets `from`'s reading (its slot left the list).
    pub(crate) fn forget(&mut self, from: usize) {
        if let Some(sample) = self.samples.get_mut(from) {
            *sample = None;
        }
    }

    /// This replica ticked at monotonic time `mono`: the readings that
    /// arrived since its last tick are carried forward from here. When
    /// they arrived is known only to lie between the two ticks; the later
    /// one never makes a peer's clock read ahead of what it says. (The
    /// earlier one did, by as long as the host was held up between the
    /// ticks: a primary whose slow fsync stalled it took in the messages
    /// that queued up before its next tick, and stamped its next prepare
    /// as far ahead of every clock as the stall lasted: scenario
    /// `stalled_primary_stamps_no_time_from_its_stall`.)
    pub(crate) fn ticked(&mut self, mono: u64) {
        for sample in self.samples.iter_mut().flatten() {
            sample.mono.get_or_insert(mono);
        }
    }

    /// Our wall clock, moved into the window a quorum of fresh readings
    /// agrees on; `None` without a quorum of readings heard within `fresh`
    /// ticks of `now.tick` (`me` is this replica, whose offset is 0).
    pub(crate) fn cluster_now(&self, me: usize, now: Now, fresh: u64, members: &Membership) -> Option<u64> {
        let (quorum, n) = (members.quorum(), members.n());
        let peers = self.offsets(me, now, fresh, members);
        if quorum == 0 || peers.len() + 1 < quorum {
            return None;
        }
        let mut all = peers;
        all.push(0);
        all.sort_unstable();
        let (lo, hi) = window(&all, quorum, n);
        Some(moved(now, 0i128.max(lo).min(hi)))
    }

    /// `Mutation::PeersAloneWithBareQuorum`: as before, with a bare quorum
    /// heard the window is the peers' offsets alone, so with one of three
    /// down one backup's clock sets the time, also when it is ahead.
    #[cfg(feature = "mutations")]
    pub(crate) fn peers_alone_now(
        &self,
        me: usize,
        now: Now,
        fresh: u64,
        members: &Membership,
    ) -> Option<u64> {
        let peers = self.offsets(me, now, fresh, members);
        match (peers.iter().min(), peers.iter().max()) {
            (Some(&lo), Some(&hi)) if peers.len() + 1 == members.quorum() => {
                Some(moved(now, 0i128.clamp(lo, hi)))
            }
            _ => self.cluster_now(me, now, fresh, members),
        }
    }

    /// The offsets (estimate minus our wall clock now) of the members heard
    /// within `fresh` ticks of `now.tick`.
    fn offsets(&self, me: usize, now: Now, fresh: u64, members: &Membership) -> Vec<i128> {
        members
            .slots()
            .map(usize::from)
            .filter(|&r| r != me)
            .filter_map(|r| {
                let s = self.samples[r]?;
                (now.tick < s.tick.saturating_add(fresh)).then(|| {
                    let elapsed = s.mono.map_or(0, |mono| now.mono.saturating_sub(mono));
                    s.theirs as i128 + elapsed as i128 - now.wall as i128
                })
            })
            .collect()
    }
}

/// Our wall clock moved by `offset`, below the ceiling.
fn moved(now: Now, offset: i128) -> u64 {
    (now.wall as i128 + offset).clamp(0, MAX_CLOCK_NS as i128) as u64
}

/// The window of offsets the time used is moved into, from the `k >=
/// quorum` sorted offsets `all` (this replica's 0 among them): `lo` is the
/// `(k - q + 1)`-th smallest, `hi` the `(w + 1)`-th largest, `w = max(n - q,
/// 1)` (but less than `k`). `lo <= hi` since `w <= q - 1`.
fn window(all: &[i128], quorum: usize, n: usize) -> (i128, i128) {
    let k = all.len();
    let ahead = n.saturating_sub(quorum).max(1).min(k - 1);
    (all[k - quorum], all[k - 1 - ahead])
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000_000_000;

    fn members(n: usize) -> Membership {
        Membership::numbered(n).unwrap()
    }

    fn at(wall: u64, mono: u64, tick: u64) -> Now {
        Now { wall, mono, tick }
    }

    fn clocks(readings: &[(usize, u64)], ours: u64) -> Clocks {
        let mut c = Clocks::default();
        for &(r, theirs) in readings {
            c.heard(r, theirs, at(ours, 400, 1));
        }
        c.ticked(500);
        c
    }

    #[test]
    fn readings_that_queued_up_in_a_stall_are_carried_forward_from_after_it() {
        // Our last tick was at mono 500; the host stalled; fresh readings
        // (300_000) queued up and are taken in before the next tick, at
        // mono 300_500, when our wall clock reads 300_500 too.
        let mut c = Clocks::default();
        c.heard(1, 300_000, at(1_000, 500, 1));
        c.heard(2, 300_010, at(1_000, 500, 1));
        c.ticked(300_500);
        assert_eq!(
            c.cluster_now(0, at(300_500, 300_500, 2), 40, &members(3)),
            Some(300_010)
        );
    }

    #[test]
    fn a_primary_whose_clock_jumped_takes_the_quorums_time() {
        let c = clocks(&[(1, 1_000), (2, 1_010)], HOUR + 1_000);
        assert_eq!(
            c.cluster_now(0, at(HOUR + 1_000, 500, 2), 40, &members(3)),
            Some(1_010)
        );
    }

    #[test]
    fn readings_taken_before_our_clock_jumped_do_not_vouch_for_it() {
        // Heard at wall 1_000 (mono 500); 100 ns later our wall clock
        // reads an hour ahead: the peers' clocks read 1_100 and 1_110 now.
        let c = clocks(&[(1, 1_000), (2, 1_010)], 1_000);
        assert_eq!(
            c.cluster_now(0, at(HOUR + 1_100, 600, 2), 40, &members(3)),
            Some(1_110)
        );
    }

    #[test]
    fn with_a_bare_quorum_heard_the_earliest_clock_sets_the_time() {
        // Three replicas, one down: k = q = 2. Whichever of the two clocks
        // jumped ahead, the earlier one is used: behind corrects itself.
        let c = clocks(&[(1, 1_000)], HOUR);
        assert_eq!(c.cluster_now(0, at(HOUR, 500, 2), 40, &members(3)), Some(1_000));
        let c = clocks(&[(1, HOUR)], 1_000);
        assert_eq!(c.cluster_now(0, at(1_000, 500, 2), 40, &members(3)), Some(1_000));
        // Five replicas, two down: k = q = 3; any two clocks ahead (a
        // minority of five) are outvoted by the third.
        let c = clocks(&[(1, HOUR), (2, HOUR + 10)], 1_000);
        assert_eq!(c.cluster_now(0, at(1_000, 500, 2), 40, &members(5)), Some(1_000));
        let c = clocks(&[(1, 990), (2, HOUR)], HOUR);
        assert_eq!(c.cluster_now(0, at(HOUR, 500, 2), 40, &members(5)), Some(990));
        // Two replicas: no wrong clock is tolerated, but the later of two
        // is still not trusted.
        let c = clocks(&[(1, HOUR)], 1_000);
        assert_eq!(c.cluster_now(0, at(1_000, 500, 2), 40, &members(2)), Some(1_000));
        let c = clocks(&[(1, 1_000)], HOUR);
        assert_eq!(c.cluster_now(0, at(HOUR, 500, 2), 40, &members(2)), Some(1_000));
    }

    #[test]
    fn with_all_five_heard_two_clocks_cannot_move_the_time_either_way() {
        // Right clocks at 990, 1_000 (ours), 1_010: the time stays among them.
        let c = clocks(&[(1, HOUR), (2, HOUR), (3, 990), (4, 1_010)], 1_000);
        assert_eq!(c.cluster_now(0, at(1_000, 500, 2), 40, &members(5)), Some(1_010));
        let c = clocks(&[(1, 1), (2, 2), (3, 990), (4, 1_010)], 1_000);
        assert_eq!(c.cluster_now(0, at(1_000, 500, 2), 40, &members(5)), Some(990));
    }

    #[test]
    fn readings_past_the_ceiling_are_read_as_the_ceiling() {
        let c = clocks(&[(1, u64::MAX), (2, u64::MAX)], u64::MAX);
        assert_eq!(
            c.cluster_now(0, at(u64::MAX, 500, 2), 40, &members(3)),
            Some(MAX_CLOCK_NS)
        );
    }

    #[test]
    fn one_backup_whose_clock_jumped_changes_nothing() {
        let c = clocks(&[(1, HOUR), (2, 1_000)], 1_000);
        assert_eq!(c.cluster_now(0, at(1_000, 500, 2), 40, &members(3)), Some(1_000));
    }

    #[test]
    fn within_the_window_the_primary_keeps_its_own_clock() {
        // Five replicas: offsets -20, -10, 0, +10, +20; q = 3: window [0, 0].
        let c = clocks(&[(1, 980), (2, 990), (3, 1_010), (4, 1_020)], 1_000);
        assert_eq!(c.cluster_now(0, at(1_000, 500, 2), 40, &members(5)), Some(1_000));
        // Four replicas, q = 3: window [o2, o3] = [-10, 0] holds 0.
        let c = clocks(&[(1, 980), (2, 990), (3, 1_010)], 1_000);
        assert_eq!(c.cluster_now(0, at(1_000, 500, 2), 40, &members(4)), Some(1_000));
    }

    #[test]
    fn without_a_quorum_of_fresh_readings_there_is_no_time() {
        let c = clocks(&[(1, 1_000)], 1_000);
        assert_eq!(c.cluster_now(0, at(1_000, 500, 100), 40, &members(3)), None);
        assert_eq!(
            Clocks::default().cluster_now(0, at(5, 0, 1), 40, &members(1)),
            Some(5)
        );
    }
}
