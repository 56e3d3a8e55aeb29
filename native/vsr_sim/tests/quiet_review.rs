//! Review of "a woken backup asks its quiet primary": reproductions,
//! kept as regression tests.

use vsr::{Slot, Status};
use vsr_sim::quiet_scenarios::{quiet_options, until_quiet};
use vsr_sim::scenarios::register_all;
use vsr_sim::Simulator;

fn fail(sim: &Simulator, what: &str) -> String {
    format!("tick {}: {what}: {}", sim.tick, sim.describe())
}

/// A backup woken from quiet (its primary's node up: `vouched`) joins a
/// view change it then leads, without ever hearing its old primary: the
/// flag survives into its view as primary. Cut off from a quorum at once,
/// the new primary abdicates from its first tick (so `tick_primary` never
/// calls `heard_primary`), and when its silence timer fires it "asks its
/// quiet primary" — itself: a PrepareOk to its own slot (debug_assert "a
/// replica sends to itself"), and its campaign waits another timeout.
#[test]
fn vouched_flag_leaks_into_a_view_the_woken_backup_leads() {
    let mut options = quiet_options(3, 1);
    options.oracle = true;
    let vc = options.config.view_change_ticks;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0).unwrap();
    until_quiet(&mut sim).unwrap();
    let old = sim.primary().unwrap();
    let view = sim.replica(old).view();
    // The primary of the next view, and the third replica.
    let next = (0..3 as Slot)
        .find(|&r| r != old && sim.replica(r).membership().primary(view + 1) == r)
        .unwrap();
    let third = (0..3 as Slot).find(|&r| r != old && r != next).unwrap();
    // `third` loses the old primary: it wakes and campaigns; its campaign
    // wakes `next`, whose detector holds the old primary up: vouched.
    sim.network.set_link(old, third, false);
    sim.network.set_link(third, old, false);
    sim.run_until(20, "next wakes", |s| !s.replica(next).is_quiet())
        .unwrap();
    // Now `next` loses the old primary too: it campaigns at once
    // (`campaign_if_primary_down`), with `vouched` still set, and leads.
    sim.network.set_link(old, next, false);
    sim.network.set_link(next, old, false);
    sim.run_until(vc, "next leads the next view", |s| {
        let r = s.replica(next);
        r.view() > view && r.is_primary() && r.status() == Status::Normal
    })
    .unwrap();
    // Cut off from `third` at once: it abdicates from its first tick.
    sim.network.set_link(next, third, false);
    sim.network.set_link(third, next, false);
    let campaigns = sim.replica(next).stats().campaigns;
    let sent = sim.replica(next).stats().sent;
    let cut = sim.tick;
    let deadline = cut + 3 * vc;
    while sim.tick < deadline && sim.replica(next).stats().campaigns == campaigns {
        if let Err(e) = sim.step() {
            panic!("{e}");
        }
    }
    eprintln!(
        "cut at {cut}, campaign at {} ({} ticks; view_change_ticks {vc}), sent {}",
        sim.tick,
        sim.tick - cut,
        sim.replica(next).stats().sent - sent
    );
    // Its silence counts from its own campaign, before the cut: it
    // campaigns again within one silence timeout (plus jitter) of it.
    if sim.replica(next).stats().campaigns == campaigns || sim.tick - cut >= 2 * vc {
        panic!(
            "{}",
            fail(
                &sim,
                "the abdicated primary waited another silence timeout to campaign"
            )
        );
    }
}

/// The quiet primary's replica is unreachable while its node's beats flow
/// (its group stopped on a live VM: the detector holds it up for good). A
/// request through a backup wakes that backup alone; it asks, then
/// campaigns; the others, woken by its campaign, count the primary as
/// heard for `view_change_ticks`, then vote. Measures the ticks from the
/// request to a new view against the documented bound for the asker
/// (`2 * (view_change_ticks + jitter)`, jitter < `view_change_ticks`) plus
/// the woken voters' `view_change_ticks`.
#[test]
fn dead_group_on_a_live_node_is_replaced() {
    for n in [3u8, 5] {
        let options = quiet_options(n, 1);
        let vc = options.config.view_change_ticks;
        let mut sim = Simulator::new(options);
        register_all(&mut sim, 0).unwrap();
        until_quiet(&mut sim).unwrap();
        let primary = sim.primary().unwrap();
        let view = sim.replica(primary).view();
        let backup = (0..n as Slot).find(|&r| r != primary).unwrap();
        for other in (0..n as Slot).filter(|&r| r != primary) {
            for (from, to) in [(primary, other), (other, primary)] {
                sim.network
                    .lose(from, to, Box::new(|b: &[u8]| !vsr_host::Beat::is_beat(b)));
            }
        }
        sim.clients[0].home = backup;
        sim.start_request(0).unwrap();
        let start = sim.tick;
        let bound = 4 * vc + vc + 20;
        let r = sim.run_until(bound, "a new view", |s| {
            s.replicas()
                .any(|r| r.view() > view && r.is_primary() && r.status() == Status::Normal)
        });
        let campaigns: Vec<u64> = sim.replicas().map(|r| r.stats().campaigns).collect();
        eprintln!(
            "n={n}: new view after {} ticks (vc {vc}); campaigns {campaigns:?}",
            sim.tick - start
        );
        if let Err(e) = r {
            panic!("{e}");
        }
    }
}
