//! `Host` over `MemDisk`: the host rules the NIF and the simulator rely on
//! (persist then send, group commit, the pause on a failed write, booting
//! from each kind of store), each checked against what the disk holds.

use vsr::{Config, Input, Op, Output, Slot, Status, Submission};
use vsr_host::{BootError, Host, StorageNotice, StoreOptions, Unbooted};
use vsr_storage::{CrashCut, Identity, MemDisk, Opened, Store, StoreError, Zone};

const CLUSTER: u128 = 7;

/// The store identity of replica `index` of a cluster of `n`: the member
/// id of its slot in `Config::new`'s genesis.
fn identity(n: u8, index: Slot) -> Identity {
    Identity {
        cluster: CLUSTER,
        group: b"test".to_vec(),
        member: Config::new(CLUSTER, n).genesis.members()[index as usize].id,
        joined: 0,
    }
}

fn options(n: u8, index: Slot, disk: MemDisk) -> StoreOptions<MemDisk> {
    StoreOptions {
        disk,
        identity: identity(n, index),
        meta: Vec::new(),
        compaction_bytes: None,
    }
}

/// Replica `index` of a cluster of `n`, booted from `disk`.
fn boot(n: u8, index: Slot, disk: MemDisk, recover: bool) -> Host<MemDisk> {
    Host::boot(
        Config::new(CLUSTER, n),
        index,
        Some(options(n, index, disk)),
        recover,
        1,
    )
    .expect("boots")
}

/// A host with a new store, its `Created` notice taken.
fn fresh(n: u8, index: Slot) -> Host<MemDisk> {
    let mut host = boot(n, index, MemDisk::default(), false);
    assert_eq!(host.take_notices(), [StorageNotice::Created]);
    host
}

/// Client `client` registers (its first request).
fn register(client: u128) -> Input<'static> {
    Input::Submit(Submission {
        client,
        session: 0,
        request: 0,
        payload: Vec::new(),
    })
}

fn tick(at: u64) -> Input<'static> {
    Input::Tick {
        now_ns: at,
        mono_ns: at,
    }
}

/// The ops of what the disk would hold after a crash that lost every
/// write not yet synced.
fn durable_ops(disk: &MemDisk) -> Vec<Op> {
    let mut crashed = disk.clone();
    crashed.crash(CrashCut { kept: 0, torn: None });
    // After the reboot the disk works again (an open writes its
    // superblock, to make what it read durable).
    (crashed.failing, crashed.full) = (false, false);
    match Store::open(crashed, identity(1, 0), Vec::new()).map(|(_, opened)| opened) {
        Ok(Opened::Restart { entries, .. }) => entries.iter().map(|e| e.op).collect(),
        other => panic!("expected a restart, got {other:?}"),
    }
}

/// Asserts no output: `Output` has no `PartialEq`.
fn assert_nothing(outputs: Vec<Output>, why: &str) {
    assert!(outputs.is_empty(), "{why}: {outputs:?}");
}

fn disk_of(host: &Host<MemDisk>) -> &MemDisk {
    host.store().expect("disk mode").disk()
}

fn syncs(host: &Host<MemDisk>) -> u64 {
    host.store().expect("disk mode").stats().syncs
}

/// `(op, client)` of each `Execute` and `Reply`, in order.
fn settled(outputs: &[Output]) -> Vec<(&'static str, Op, u128)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Execute { entry, .. } => Some(("execute", entry.op, entry.requests[0].client)),
            Output::Reply { op, client, .. } => Some(("reply", *op, *client)),
            _ => None,
        })
        .collect()
}

/// What `settled` finds when clients `clients` register in a one-replica
/// cluster, each at the op of its number.
fn registrations(clients: std::ops::RangeInclusive<u128>) -> Vec<(&'static str, Op, u128)> {
    clients
        .flat_map(|c| [("execute", c as Op, c), ("reply", c as Op, c)])
        .collect()
}

fn sends(outputs: &[Output]) -> Vec<(Slot, Vec<u8>)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Send { to, bytes, .. } => Some((*to, bytes.clone())),
            _ => None,
        })
        .collect()
}

// A one-replica cluster commits as soon as it has written: its execute and
// reply follow the write, and must not leave before the entry is durable.
#[test]
fn what_follows_a_write_leaves_only_once_the_write_is_durable() {
    let mut host = fresh(1, 0);
    host.step(register(1)).unwrap();
    assert_nothing(
        host.take_ready().unwrap(),
        "the execute and reply follow the write",
    );
    assert!(host.has_staged());
    assert_eq!(durable_ops(disk_of(&host)), Vec::<Op>::new());
    let late = host.sync_staged();
    assert_eq!(settled(&late), registrations(1..=1));
    assert_eq!(durable_ops(disk_of(&host)), [1]);
    assert!(!host.has_staged());
    assert_nothing(host.sync_staged(), "released once");
}

// The simulator follows every write a replica asks for (does its log
// chain? does its view go back?): `pending` shows the steps' outputs, the
// writes among them, until `take_ready` takes them.
#[test]
fn pending_shows_the_writes_of_the_steps_until_they_are_taken() {
    let mut host = fresh(1, 0);
    host.step(register(1)).unwrap();
    host.step(register(2)).unwrap();
    let written: Vec<Op> = host
        .pending()
        .iter()
        .flat_map(|output| match output {
            Output::WriteLog { entries, .. } => entries.iter().map(|e| e.op).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(written, [1, 2]);
    host.take_ready().unwrap();
    assert!(host.pending().is_empty(), "taken: {:?}", host.pending());
}

// A primary's prepares need no durability: they leave before it touches the
// disk, so the backups' syncs overlap its own. A backup's acknowledgement
// follows its write, and waits for its sync.
#[test]
fn a_primarys_prepares_leave_at_once_and_a_backups_ack_waits_for_its_sync() {
    let mut primary = fresh(3, 0);
    let mut backup = fresh(3, 1);
    primary.step(register(1)).unwrap();
    let early = primary.take_ready().unwrap();
    let prepares = sends(&early);
    assert_eq!(prepares.iter().map(|(to, _)| *to).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(early.len(), 2, "only the prepares: {early:?}");
    assert!(primary.has_staged());

    backup.step(Input::Receive(&prepares[0].1)).unwrap();
    assert_nothing(backup.take_ready().unwrap(), "the ack follows the write");
    let acks = sends(&backup.sync_staged());
    assert_eq!(acks.iter().map(|(to, _)| *to).collect::<Vec<_>>(), [0]);

    // With the ack of a durable backup and its own sync, the primary commits.
    assert_nothing(primary.sync_staged(), "it awaits a quorum");
    primary.step(Input::Receive(&acks[0].1)).unwrap();
    let ready = primary.take_ready().unwrap();
    let mut all = ready.clone();
    all.extend(primary.sync_staged());
    assert_eq!(settled(&all), registrations(1..=1));
}

// Group commit: the writes of many steps (the NIF's engine iteration) are
// made durable by one sync: one fdatasync of the log and one of the
// superblock, however many writes were staged.
#[test]
fn one_sync_makes_the_writes_of_many_steps_durable() {
    let mut host = fresh(1, 0);
    let before = syncs(&host);
    for client in 1..=3 {
        host.step(register(client)).unwrap();
        assert_nothing(host.take_ready().unwrap(), "held behind the writes");
    }
    assert_eq!(syncs(&host), before, "nothing synced before sync_staged");
    assert_eq!(durable_ops(disk_of(&host)), Vec::<Op>::new());
    let late = host.sync_staged();
    assert_eq!(
        syncs(&host),
        before + 2,
        "one sync of the log, one of the superblock"
    );
    assert_eq!(durable_ops(disk_of(&host)), [1, 2, 3]);
    assert_eq!(settled(&late), registrations(1..=3));
}

#[test]
fn a_failed_sync_holds_everything_until_one_succeeds_then_resumes_once() {
    let mut host = fresh(1, 0);
    host.store_mut().unwrap().disk_mut().full = true;
    host.step(register(1)).unwrap();
    assert_nothing(host.take_ready().unwrap(), "held behind the write");
    assert_nothing(host.sync_staged(), "the write failed");
    assert!(host.paused());
    let notices = host.take_notices();
    assert!(
        matches!(&notices[..], [StorageNotice::Error(e)] if e.contains("no space")),
        "{notices:?}"
    );
    assert!(host.storage_error().is_some());
    // A submission still goes in while paused; its outputs queue behind.
    host.step(register(2)).unwrap();
    assert_nothing(host.take_ready().unwrap(), "held while paused");
    assert_nothing(host.sync_staged(), "the write fails again");
    assert_eq!(host.take_notices(), [], "the same error is noted once");
    assert_eq!(durable_ops(disk_of(&host)), Vec::<Op>::new());

    host.store_mut().unwrap().disk_mut().full = false;
    let late = host.sync_staged();
    assert_eq!(settled(&late), registrations(1..=2));
    assert_eq!(durable_ops(disk_of(&host)), [1, 2]);
    assert!(!host.paused());
    assert_eq!(host.storage_error(), None);
    assert_eq!(host.take_notices(), [StorageNotice::Resumed]);
    host.step(register(3)).unwrap();
    host.take_ready().unwrap();
    assert_eq!(settled(&host.sync_staged()), registrations(3..=3));
    assert_eq!(host.take_notices(), [], "resumed once");
}

// Peers see a paused replica as a slow one: it takes in no message and no
// tick (so it neither acknowledges nor starts a view change) until a
// sync succeeds.
#[test]
fn a_paused_host_takes_no_ticks_and_no_peer_messages() {
    let mut primary = fresh(3, 0);
    let mut backup = fresh(3, 1);
    let mut prepares = Vec::new();
    for client in 1..=2 {
        primary.step(register(client)).unwrap();
        let mut out = primary.take_ready().unwrap();
        out.extend(primary.sync_staged());
        prepares.extend(sends(&out).into_iter().filter(|(to, _)| *to == 1));
    }
    assert_eq!(prepares.len(), 2);

    backup.store_mut().unwrap().disk_mut().full = true;
    backup.step(Input::Receive(&prepares[0].1)).unwrap();
    assert_nothing(backup.take_ready().unwrap(), "the ack follows the write");
    assert_nothing(backup.sync_staged(), "the write failed");
    assert!(backup.paused());
    assert_eq!(backup.replica().op(), 1);
    backup.step(Input::Receive(&prepares[1].1)).unwrap();
    // Far past the view-change timeout.
    for at in 1..=200 {
        backup.step(tick(at)).unwrap();
    }
    assert_nothing(backup.take_ready().unwrap(), "a paused replica says nothing");
    assert_eq!(backup.replica().op(), 1, "the second prepare was dropped");

    backup.store_mut().unwrap().disk_mut().full = false;
    let released = sends(&backup.sync_staged());
    // Had the ticks gone in, it would have campaigned for a new view.
    assert_eq!(
        released.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        [0],
        "the first prepare's ack only"
    );
    assert!(!backup.paused());
    // Ticks reach it again: with no word from the primary, it campaigns.
    for at in 201..=400 {
        backup.step(tick(at)).unwrap();
    }
    let campaign = sends(&backup.take_ready().unwrap());
    assert!(campaign.iter().any(|(to, _)| *to == 2), "{campaign:?}");
}

#[test]
fn memory_mode_drops_writes_and_holds_nothing() {
    let config = Config::new(CLUSTER, 1);
    let mut host: Host<MemDisk> = Host::boot(config.clone(), 0, None, false, 1).unwrap();
    assert!(host.store().is_none());
    host.step(register(1)).unwrap();
    let ready = host.take_ready().unwrap();
    assert_eq!(settled(&ready), registrations(1..=1));
    assert_eq!(ready.len(), 2, "writes are dropped: {ready:?}");
    assert!(!host.has_staged());
    assert_eq!(host.take_notices(), []);

    let recovering: Host<MemDisk> = Host::boot(config, 0, None, true, 1).unwrap();
    assert_eq!(recovering.replica().status(), Status::Recovering);
}

#[test]
fn a_new_store_boots_a_fresh_replica_or_a_recovering_one_that_is_durably_recovering() {
    let host = fresh(3, 1);
    assert_eq!(host.replica().status(), Status::Normal);
    assert!(!host.store().unwrap().superblock().recovering);

    let mut host = boot(3, 1, MemDisk::default(), true);
    assert_eq!(host.take_notices(), [StorageNotice::Created]);
    assert_eq!(host.replica().status(), Status::Recovering);
    // A crash right after boot must restart into recovery.
    let mut disk = host.into_disk().unwrap();
    disk.crash(CrashCut { kept: 0, torn: None });
    let (_, opened) = Store::open(disk, identity(3, 1), Vec::new()).unwrap();
    assert!(matches!(opened, Opened::Recover { .. }), "{opened:?}");
}

/// A crash at any point of a rejoining replica's boot, once its store
/// exists, restarts it recovering: a review found the window where the
/// new store's first superblock said "not recovering, view 0" until the
/// replica's first sync, and a crash in it restarted a replica that had
/// rejoined (an earlier incarnation may have acknowledged ops) as a normal
/// one with an empty log, which acknowledges and votes again.
#[test]
fn a_crash_anywhere_in_a_rejoining_replicas_boot_restarts_it_recovering() {
    let mut windows = 0;
    for after in 0..64 {
        let mut disk = MemDisk::default();
        disk.crash_after = Some(after);
        let Err(unbooted) = Host::boot(Config::new(CLUSTER, 3), 1, Some(options(3, 1, disk)), true, 1) else {
            break; // booted whole: the test above covers a crash from here on
        };
        let mut disk = unbooted.disk.expect("the disk comes back");
        disk.crash(CrashCut { kept: 0, torn: None });
        let mut probe = disk.clone();
        let Some(superblock) = Store::probe(&mut probe).unwrap() else {
            continue; // no store yet: the node forms again and rejoins
        };
        windows += 1;
        let host =
            Host::boot(Config::new(CLUSTER, 3), 1, Some(options(3, 1, disk)), false, 2).expect("boots");
        assert!(
            superblock.recovering && host.replica().status() == Status::Recovering,
            "crash after {after} disk operations: the store says recovering={}, and the \
             replica restarts {:?} at view {}",
            superblock.recovering,
            host.replica().status(),
            host.replica().durable_state().view,
        );
    }
    assert!(
        windows > 0,
        "no crash left a store behind: the test checks nothing"
    );
}

/// The disk of a one-replica cluster that committed ops 1..=`ops` and
/// recorded its commit number (a replica writes it only when a view
/// starts; here the test writes the replica's durable state itself).
fn committed_disk(ops: u128) -> MemDisk {
    let mut host = fresh(1, 0);
    for client in 1..=ops {
        host.step(register(client)).unwrap();
    }
    host.take_ready().unwrap();
    host.sync_staged();
    let state = host.replica().durable_state();
    assert_eq!(state.commit, ops as Op);
    let store = host.store_mut().unwrap();
    store.stage(&Output::WriteState(Box::new(state))).unwrap();
    store.sync().unwrap();
    host.into_disk().unwrap()
}

#[test]
fn a_boot_that_cannot_read_its_log_hands_the_disk_back_for_a_later_restart() {
    let mut disk = committed_disk(3);
    disk.unreadable = Some(Zone::WalA);
    let Err(unbooted) = Host::boot(Config::new(CLUSTER, 1), 0, Some(options(1, 0, disk)), false, 1) else {
        panic!("booted from a log it could not read")
    };
    assert!(
        matches!(unbooted.error, BootError::Store(StoreError::Io(_))),
        "{unbooted}"
    );
    let mut disk = unbooted.disk.expect("the disk comes back");
    disk.unreadable = None;
    let host = boot(1, 0, disk, false);
    assert_eq!(host.replica().commit(), 3);
}

#[test]
fn a_restart_replays_the_committed_prefix() {
    let mut host = boot(1, 0, committed_disk(3), false);
    assert_eq!(host.take_notices(), [StorageNotice::Restarted { torn: None }]);
    assert_eq!(host.replica().commit(), 3);
    // Every output of the replay is ready at once: nothing was written.
    let replayed = host.take_ready().unwrap();
    assert_eq!(settled(&replayed), registrations(1..=3));
    assert_eq!(replayed.len(), 6, "{replayed:?}");
}

#[test]
fn a_damaged_entry_between_intact_ones_boots_a_repairing_replica() {
    let mut disk = committed_disk(3);
    let records = disk.wal_records();
    let zone = disk.wal_zone();
    disk.corrupt(zone, records[1].0 + 40, 0x20);
    let mut host = boot(1, 0, disk, false);
    let notices = host.take_notices();
    assert!(
        matches!(&notices[..], [StorageNotice::Repairing(why)] if why.contains("op 2")),
        "{notices:?}"
    );
    assert_eq!(host.replica().status(), Status::Repairing);
    assert_eq!(host.replica().repairing().map(|(op, _)| op), Some(2));
    assert_nothing(
        host.take_ready().unwrap(),
        "nothing executes until the log is whole",
    );
}

#[test]
fn an_untrusted_log_boots_a_recovering_replica() {
    let mut disk = committed_disk(3);
    let records = disk.wal_records();
    let zone = disk.wal_zone();
    // Two damaged entries: more than one hole is not repaired.
    disk.corrupt(zone, records[0].0 + 40, 0x20);
    disk.corrupt(zone, records[2].0 + 40, 0x20);
    let mut host = boot(1, 0, disk, false);
    assert!(
        matches!(&host.take_notices()[..], [StorageNotice::Recovering(_)]),
        "a recovery notice"
    );
    assert_eq!(host.replica().status(), Status::Recovering);
    assert!(host.store().unwrap().superblock().recovering);
    assert_nothing(
        host.take_ready().unwrap(),
        "a recovering replica waits for its peers",
    );
}

#[test]
fn another_replicas_store_is_refused() {
    let disk = committed_disk(1);
    let refused = Host::boot(Config::new(CLUSTER, 3), 1, Some(options(3, 1, disk)), false, 1);
    assert!(
        matches!(
            refused,
            Err(Unbooted {
                error: BootError::Store(StoreError::Foreign { .. }),
                disk: Some(_),
            })
        ),
        "{:?}",
        refused.err()
    );
}
