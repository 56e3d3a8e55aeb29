//! `vopr`: runs simulator seeds.
//!
//! ```text
//! vopr --seed N [--trace K] [--events]
//!                          replay one seed, with a report (and the state every
//!                          K ticks; with --events, crashes, boots, changes and
//!                          epochs entered as they happen)
//! vopr --seeds N [--from S] [--jobs J]
//!                          run seeds S..S+N on J threads; print failures with
//!                          the command that replays each, then `N passed, M failed`
//! --dead-minority          (with either) up to n - quorum replicas never come
//!                          back after the faults heal (`Options::dead_minority`)
//! --membership             (with either) random membership changes while the
//!                          faults run (`Options::membership_changes`); not
//!                          with --dead-minority
//! --quiet                  (with either) quiet groups: replicas go quiet when
//!                          idle, each node's failure detector (its beats on
//!                          the simulated network) feeds them, load comes in
//!                          bursts (`Options::with_quiet`); reports messages
//!                          and node beats per idle tick
//! --oracle                 (with --quiet) a perfect failure detector instead
//!                          (`Options::oracle`), for comparison
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use vsr_sim::{Options, QuietStats, Report, Simulator};

fn usage() -> ExitCode {
    eprintln!("usage: vopr --seed N | vopr --seeds N [--from S] [--jobs J]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<u64> {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1)?.parse().ok()
    };
    let dead = args.iter().any(|a| a == "--dead-minority");
    let membership = args.iter().any(|a| a == "--membership");
    let quiet = args.iter().any(|a| a == "--quiet");
    let oracle = args.iter().any(|a| a == "--oracle");
    // The membership generator keeps at most one replica unavailable at a
    // time (its changes need the rest); a minority that never comes back
    // breaks that, and such runs failed their liveness check for it, not
    // for the protocol.
    if dead && membership {
        eprintln!("vopr: --dead-minority and --membership do not combine (Options::membership_changes)");
        return ExitCode::from(2);
    }
    if oracle && !quiet {
        eprintln!("vopr: --oracle goes with --quiet");
        return ExitCode::from(2);
    }
    let mode = Mode {
        dead,
        membership,
        quiet,
        oracle,
    };
    if let Some(seed) = value("--seed") {
        let events = args.iter().any(|a| a == "--events");
        return replay(seed, value("--trace").unwrap_or(0), events, mode);
    }
    let Some(count) = value("--seeds") else {
        return usage();
    };
    let from = value("--from").unwrap_or(0);
    let jobs = value("--jobs")
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64))
        .max(1);
    soak(from, count, jobs, mode)
}

/// What the flags turn on besides the seed's own options.
#[derive(Clone, Copy)]
struct Mode {
    dead: bool,
    membership: bool,
    quiet: bool,
    oracle: bool,
}

impl Mode {
    fn flags(self) -> String {
        let mut flags = String::new();
        if self.dead {
            flags.push_str(" --dead-minority");
        }
        if self.membership {
            flags.push_str(" --membership");
        }
        if self.quiet {
            flags.push_str(" --quiet");
        }
        if self.oracle {
            flags.push_str(" --oracle");
        }
        flags
    }
}

fn options(seed: u64, mode: Mode) -> Options {
    let options = Options {
        dead_minority: mode.dead,
        membership_changes: mode.membership,
        ..Options::from_seed(seed)
    };
    if mode.quiet {
        Options {
            oracle: mode.oracle,
            ..options.with_quiet()
        }
    } else {
        options
    }
}

fn run(
    seed: u64,
    mode: Mode,
    trace_every: u64,
    events: bool,
) -> Result<(Report, QuietStats), vsr_sim::Failure> {
    let mut simulator = Simulator::new(options(seed, mode));
    simulator.trace_every = trace_every;
    simulator.events = events;
    let report = simulator.run()?;
    Ok((report, simulator.quiet.stats))
}

fn replay(seed: u64, trace_every: u64, events: bool, mode: Mode) -> ExitCode {
    println!("seed {seed}: {:?}", options(seed, mode));
    match run(seed, mode, trace_every, events) {
        Ok((report, quiet)) => {
            if mode.quiet {
                println!(
                    "seed {seed} quiet: {:.3} messages per idle tick ({quiet:?})",
                    quiet.per_idle_tick()
                );
            }
            println!("seed {seed} passed: {report:?}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            println!("{failure}");
            ExitCode::FAILURE
        }
    }
}

fn soak(from: u64, count: u64, jobs: u64, mode: Mode) -> ExitCode {
    let start = Instant::now();
    let next = AtomicU64::new(from);
    let done = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let idle = Mutex::new(QuietStats::default());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= from + count {
                    break;
                }
                let outcome = std::panic::catch_unwind(|| run(seed, mode, 0, false));
                let failure = match outcome {
                    Ok(Ok((_, quiet))) => {
                        let mut idle = idle.lock().unwrap();
                        idle.idle_ticks += quiet.idle_ticks;
                        idle.idle_messages += quiet.idle_messages;
                        idle.all_quiet_ticks += quiet.all_quiet_ticks;
                        idle.wakes += quiet.wakes;
                        idle.quiet_spells += quiet.quiet_spells;
                        idle.idle_beats += quiet.idle_beats;
                        idle.detector_changes += quiet.detector_changes;
                        idle.calm_ticks += quiet.calm_ticks;
                        None
                    }
                    Ok(Err(failure)) => Some(failure.to_string()),
                    Err(_) => Some(format!("seed {seed} panicked")),
                };
                if let Some(failure) = failure {
                    eprintln!("FAIL {failure}");
                    let flags = mode.flags();
                    eprintln!(
                        "     replay: cargo run --release -p vsr_sim --bin vopr -- --seed {seed}{flags}"
                    );
                    failures.lock().unwrap().push(seed);
                }
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if finished.is_multiple_of(1000) {
                    eprintln!("... {finished}/{count} seeds, {:.0?}", start.elapsed());
                }
            });
        }
    });
    let failed = failures.into_inner().unwrap();
    println!(
        "{count} seeds from {from} in {:.1?} on {jobs} threads",
        start.elapsed()
    );
    if mode.quiet {
        let idle = idle.into_inner().unwrap();
        println!(
            "quiet: {:.3} messages and {:.3} node beats per idle tick over {} idle ticks ({:.1}% of them with every member quiet), {} quiet spells, {} wakes, {} detector changes, {} calm idle ticks judged",
            idle.per_idle_tick(),
            idle.idle_beats as f64 / idle.idle_ticks.max(1) as f64,
            idle.idle_ticks,
            100.0 * idle.all_quiet_ticks as f64 / idle.idle_ticks.max(1) as f64,
            idle.quiet_spells,
            idle.wakes,
            idle.detector_changes,
            idle.calm_ticks
        );
    }
    println!("{} passed, {} failed", count - failed.len() as u64, failed.len());
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
