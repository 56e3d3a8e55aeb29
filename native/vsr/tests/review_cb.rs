//! Review of `checkpoint_bytes` (branch logbytes): with a byte budget
//! that one op's commands reach, every op is a checkpoint boundary, and
//! a host whose snapshot answers came more than `PENDING_MAX` (4)
//! boundaries after the ask never formed a checkpoint: each ask pushed the
//! oldest unanswered one out (`checkpoint_due` then dropped the oldest),
//! and the answer for it was then ignored. The log was never truncated, in
//! ops or in bytes: the very growth the budget is meant to bound. Now the
//! oldest asks and the newest are kept, and the second test passes.
//!
//! In Visor the engine runs on its own thread and executes committed ops
//! while the server encodes a snapshot (`encode_snapshot/1`, the whole
//! state); with a few callers in flight the engine is several ops ahead
//! of the server's answer. With only `checkpoint_interval` an operator had
//! to choose an interval of 4 ops or less for this; with the budget,
//! commands of `checkpoint_bytes` or more do it (docs/operations.md,
//! "Memory", recommends a smaller budget to bound memory more tightly).

use std::collections::VecDeque;

use vsr::config::Config;
use vsr::replica::{Input, Output, Replica, Submission};

/// A cluster of one, executing `ops` requests of `payload` bytes each;
/// its host answers each `TakeSnapshot` once the replica has executed
/// `lag` more ops. Returns the replica.
fn run(interval: u64, budget: u64, payload: usize, lag: u64, ops: u64) -> Replica {
    let mut config = Config::new(7, 1);
    config.checkpoint_interval = interval;
    config.checkpoint_bytes = budget;
    let mut replica = Replica::new(config, 0);
    let mut session = 0;
    let mut asked: VecDeque<u64> = VecDeque::new();
    for request in 0..=ops {
        let submission = Submission {
            client: 5,
            session,
            request,
            payload: if request == 0 {
                Vec::new()
            } else {
                vec![1; payload]
            },
        };
        let mut outputs = replica.step(Input::Submit(submission));
        outputs.extend(replica.step(Input::Tick {
            now_ns: request + 1,
            mono_ns: request + 1,
        }));
        for output in outputs {
            match output {
                Output::TakeSnapshot { op } => asked.push_back(op),
                Output::Reply { op, .. } if request == 0 => session = op,
                _ => {}
            }
        }
        // The host answers, in order, what it was asked `lag` ops ago.
        while asked.front().is_some_and(|&op| op + lag <= replica.commit()) {
            let op = asked.pop_front().expect("checked");
            replica.step(Input::Snapshot { op, app: vec![] });
        }
    }
    assert_eq!(replica.commit(), ops + 1);
    replica
}

#[test]
fn by_ops_alone_a_lagging_host_still_checkpoints() {
    // A checkpoint every 10 ops; the host answers 5 ops late.
    let replica = run(10, 0, 100, 5, 1_000);
    assert!(replica.checkpoint().is_some());
    assert!(replica.log().base() > 900, "log base {}", replica.log().base());
}

#[test]
fn a_budget_every_op_reaches_and_a_host_5_ops_late_still_checkpoints() {
    // The same host, commands of 100 bytes, a budget of 100: every op is
    // a boundary, and no checkpoint ever forms in 1,000 ops.
    let replica = run(10_000, 100, 100, 5, 1_000);
    assert!(
        replica.checkpoint().is_some() && replica.log().base() > 900,
        "no checkpoint formed (latest {:?}); the log holds ops {}..={} ({} bytes of commands)",
        replica.checkpoint().map(|c| c.op),
        replica.log().base() + 1,
        replica.log().op(),
        (replica.log().base() + 1..=replica.log().op())
            .filter_map(|op| replica.log().get(op))
            .map(|e| e.payload_bytes())
            .sum::<usize>()
    );
}
