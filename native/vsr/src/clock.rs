//! Cluster time: the wall clock a primary stamps prepares with, kept within
//! the clocks of a quorum (issue "Lose nothing" 10).
//!
//! Every message carries its sender's wall clock (`now_ns` of its last
//! tick). A replica keeps, for each peer, the last reading's *offset* from
//! its own clock when the message arrived, and the tick it arrived at. To
//! stamp a prepare, the primary takes the offsets heard within the last
//! `view_change_ticks` ticks, its own (0) included, and needs at least a
//! quorum `q` of them. Sorted, `k` offsets give a window `[lo, hi]`:
//! `lo` is the `q`-th largest, `hi` the `q`-th smallest (`lo <= hi` because
//! `k <= n < 2q`). The primary moves its own offset, 0, into that window,
//! and uses its clock plus the result. So:
//!
//! * any `q` of the sampled replicas include one whose clock reads at least
//!   the time used, and one whose clock reads at most it (fewer than `q`
//!   offsets lie below `hi`, and fewer than `q` above `lo`);
//! * a primary whose clock alone jumps (either way) stamps with the others'
//!   time; when every replica has been heard from, up to `n - q` wrong
//!   clocks cannot move the time used outside the range of the right ones;
//! * a primary that has not heard a quorum's clocks lately (the first ticks
//!   of its view) does not advance time: it stamps `head + 1`.
//!
//! Offsets ignore message delay, so they are off by up to one delay; the
//! ticks of two replicas run at the same rate, so an offset stays valid
//! while it is fresh.

use crate::config::MAX_REPLICAS;

/// A peer's clock, as last heard.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Its clock minus ours, in ns, when its message arrived.
    offset: i128,
    /// Our tick when it arrived.
    tick: u64,
}

/// The last clock reading heard from every peer.
#[derive(Clone, Debug, Default)]
pub(crate) struct Clocks {
    samples: [Option<Sample>; MAX_REPLICAS],
}

impl Clocks {
    /// Records that `from`'s clock read `theirs` when ours read `ours`, at `tick`.
    /// A clock that reads 0 has not ticked yet: it says nothing.
    pub(crate) fn heard(&mut self, from: usize, theirs: u64, ours: u64, tick: u64) {
        if theirs == 0 || ours == 0 || from >= MAX_REPLICAS {
            return;
        }
        self.samples[from] = Some(Sample {
            offset: theirs as i128 - ours as i128,
            tick,
        });
    }

    /// Our clock `ours`, moved into the window a quorum of fresh readings
    /// agrees on; `None` without a quorum of readings heard within `fresh`
    /// ticks of `tick` (`me` is this replica, whose offset is 0).
    pub(crate) fn cluster_now(
        &self,
        me: usize,
        ours: u64,
        tick: u64,
        fresh: u64,
        quorum: usize,
        n: usize,
    ) -> Option<u64> {
        let mut offsets: Vec<i128> = (0..n)
            .filter_map(|r| {
                if r == me {
                    return Some(0);
                }
                let s = self.samples[r]?;
                (tick < s.tick.saturating_add(fresh)).then_some(s.offset)
            })
            .collect();
        let k = offsets.len();
        if k < quorum || quorum == 0 {
            return None;
        }
        offsets.sort_unstable();
        let (lo, hi) = (offsets[k - quorum], offsets[quorum - 1]);
        let offset = 0i128.clamp(lo.min(hi), hi.max(lo));
        Some((ours as i128 + offset).clamp(0, u64::MAX as i128) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000_000_000;

    fn clocks(readings: &[(usize, u64)], ours: u64) -> Clocks {
        let mut c = Clocks::default();
        for &(r, theirs) in readings {
            c.heard(r, theirs, ours, 1);
        }
        c
    }

    #[test]
    fn a_primary_whose_clock_jumped_takes_the_quorums_time() {
        let c = clocks(&[(1, 1_000), (2, 1_010)], HOUR + 1_000);
        assert_eq!(c.cluster_now(0, HOUR + 1_000, 2, 40, 2, 3), Some(1_010));
    }

    #[test]
    fn one_backup_whose_clock_jumped_changes_nothing() {
        let c = clocks(&[(1, HOUR), (2, 1_000)], 1_000);
        assert_eq!(c.cluster_now(0, 1_000, 2, 40, 2, 3), Some(1_000));
    }

    #[test]
    fn within_the_window_the_primary_keeps_its_own_clock() {
        // Five replicas: offsets -20, -10, 0, +10, +20; q = 3: window [0, 0].
        let c = clocks(&[(1, 980), (2, 990), (3, 1_010), (4, 1_020)], 1_000);
        assert_eq!(c.cluster_now(0, 1_000, 2, 40, 3, 5), Some(1_000));
        // Four replicas, q = 3: window [o2, o3] = [-10, 10] holds 0.
        let c = clocks(&[(1, 980), (2, 990), (3, 1_010)], 1_000);
        assert_eq!(c.cluster_now(0, 1_000, 2, 40, 3, 4), Some(1_000));
    }

    #[test]
    fn without_a_quorum_of_fresh_readings_there_is_no_time() {
        let c = clocks(&[(1, 1_000)], 1_000);
        assert_eq!(c.cluster_now(0, 1_000, 100, 40, 2, 3), None);
        assert_eq!(Clocks::default().cluster_now(0, 5, 1, 40, 1, 1), Some(5));
    }
}
