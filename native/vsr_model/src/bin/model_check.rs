//! `make model-check`: the bounded model check, deeper than `cargo test`'s.
//!
//! Usage: `model_check [--all | --case NAME] [--requests N] [--timeouts N]
//! [--drops N] [--duplicates N] [--crashes N] [--reads N] [--clients N]
//! [--resubmits N] [--max-view N] [--checkpoint-interval N]
//! [--heal-one-in N] [--replicas N] [--home N] [--slots N]
//! [--change ID,ID,...]... [--change-ticks N] [--origin SLOT] [--restart-in-genesis 0|1]
//! [--states N] [--threads N]`; every bound defaults to
//! `Bounds::quiet()`'s, or to `--all`'s or to the membership case `NAME`'s
//! (`Bounds::membership`: grow-shrink, replace, one-two-one, genesis-host,
//! learner-restart). Each `--change` appends a scripted change (the member
//! ids of its target list). Prints the state counts and any property that
//! broke, with the path that breaks it.

use std::time::Instant;

use stateright::report::WriteReporter;
use stateright::{Checker, Model};
use vsr_model::{Bounds, Cluster};

fn main() {
    let mut bounds = Bounds::quiet();
    let (mut states, mut threads) = (0usize, 2usize);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match args.first().map(String::as_str) {
        Some("--all") => {
            bounds = Bounds::all();
            &args[1..]
        }
        Some("--case") => {
            let name = args.get(1).map(String::as_str).unwrap_or_default();
            bounds = Bounds::membership(name)
                .unwrap_or_else(|| panic!("no case {name:?}: one of {:?}", vsr_model::MEMBERSHIP_CASES));
            &args[2..]
        }
        _ => &args[..],
    };
    for pair in args.chunks(2) {
        let value = || -> u64 {
            pair.get(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", pair[0]))
        };
        match pair[0].as_str() {
            "--requests" => bounds.requests = value(),
            "--timeouts" => bounds.timeouts = value() as u8,
            "--drops" => bounds.drops = value() as u8,
            "--duplicates" => bounds.duplicates = value() as u8,
            "--crashes" => bounds.crashes = value() as u8,
            "--reads" => bounds.reads = value() as u8,
            "--clients" => bounds.clients = value() as usize,
            "--resubmits" => bounds.resubmits = value() as u8,
            "--max-view" => bounds.max_view = value(),
            "--checkpoint-interval" => bounds.checkpoint_interval = value(),
            "--heal-one-in" => bounds.heal_one_in = value(),
            "--replicas" => bounds.replicas = value() as u8,
            "--home" => bounds.home = value() as u8,
            "--slots" => bounds.slots = value() as u8,
            "--origin" => bounds.origin = Some(value() as u8),
            "--change-ticks" => bounds.change_ticks = value(),
            "--restart-in-genesis" => bounds.restart_in_genesis = value() != 0,
            "--change" => bounds.changes.push(
                pair.get(1)
                    .map(|ids| {
                        ids.split(',')
                            .map(|id| id.parse().expect("a member id"))
                            .collect()
                    })
                    .unwrap_or_else(|| panic!("--change needs member ids")),
            ),
            "--states" => states = value() as usize,
            "--threads" => threads = value() as usize,
            other => panic!("unknown option {other}"),
        }
    }
    eprintln!("bounds: {bounds:?}");
    let started = Instant::now();
    let mut builder = Cluster::new(bounds).checker().threads(threads);
    if states > 0 {
        builder = builder.target_state_count(states);
    }
    let checker = builder
        .spawn_bfs()
        .join_and_report(&mut WriteReporter::new(&mut std::io::stderr()));
    let verdict = vsr_model::verdict(&checker);
    println!("in {:.0?}:", started.elapsed());
    match verdict {
        Ok(report) => println!("{report}"),
        // A `sometimes` not reached under a state cap is a figure, not a
        // failure; a broken `always` is.
        Err(report) => {
            println!("{report}");
            if report.contains("BROKEN: Always") {
                std::process::exit(1);
            }
        }
    }
}
