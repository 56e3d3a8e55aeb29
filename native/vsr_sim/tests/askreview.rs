//! Review of "a woken backup asks its quiet primary" (wip/askreview):
//! reproductions.

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
    sim.run_until(20, "next wakes", |s| !s.replica(next).is_quiet()).unwrap();
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
    if sim.replica(next).stats().campaigns == campaigns {
        panic!("{}", fail(&sim, "the abdicated primary never campaigned"));
    }
}
