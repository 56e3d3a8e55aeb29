//! Log entries, messages, and their wire format.
//!
//! A message on the wire is a fixed little-endian header followed by a
//! [postcard]-encoded body (postcard's format is specified and stable across
//! its 1.x releases):
//!
//! | offset | size | field                                             |
//! |--------|------|---------------------------------------------------|
//! | 0      | 16   | checksum: XXH3-128 of every byte after this field |
//! | 16     | 2    | magic `0x5356` ("VS")                             |
//! | 18     | 2    | wire version, currently 4                         |
//! | 20     | 16   | cluster id, folded with the shared settings       |
//! | 36     | 8    | sender's epoch                                    |
//! | 44     | 1    | sender's slot                                     |
//! | 45     | 16   | sender's member id                                |
//! | 61     | 8    | the epoch that admitted the sender (`joined`)     |
//! | 69     | ..   | body: postcard encoding of (incarnations, clock, [`Message`]) |
//!
//! The cluster id field is [`Config::wire_cluster`](crate::Config::wire_cluster):
//! replicas whose settings that decide execution differ drop each other's
//! messages as another cluster's (version 3; version 2 carried the bare id).
//! The sender is named by its epoch, slot, member id and `joined` (version
//! 4): a slot alone does not name a node once slots are reused
//! (docs/design/membership.md); who may send what in which epoch is the
//! receiver's epoch gate to judge (`recovery.rs`), not the decoder's.
//!
//! `incarnations` is the sender's crash vector: the incarnation it knows for
//! every slot, its own included (see `recovery.rs`), [`MAX_SLOTS`] of them.
//!
//! `Quiet` and `QuietOk` (quiet groups, `quiet.rs`) and `FenceAlone`
//! (`recovery.rs`) are the enum's last kinds: postcard numbers variants by
//! position, so appending them left every older message's encoding, and
//! the wire version, as they were.
//!
//! Decoding checks all of it, then recomputes the checksum of every log entry
//! the body carries. Anything that fails is an [`DecodeError`], never a panic.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::checksum::checksum;
use crate::config::{ClientId, Op, View};
use crate::membership::{ChangeId, Epoch, MemberId, Membership, Slot, MAX_SLOTS};

/// The client id of a reconfiguration entry's one request: no client may
/// use it (`Replica` refuses it from hosts and peers), so the entry is
/// told from every other by its request alone (docs/design/membership.md,
/// 2.3).
pub const MEMBERSHIP_CLIENT: ClientId = u128::MAX;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 69;
/// The header's magic number.
pub const MAGIC: u16 = 0x5356;
/// The wire version this build speaks.
pub const WIRE_VERSION: u16 = 4;

/// The highest view or incarnation a message may carry. A real cluster
/// never gets near it (a view change a nanosecond for 290 years); a number
/// above it is crafted, and would let `+ 1` overflow or wedge the cluster
/// at the top of `u64` (docs/protocol.md, "Fault model").
pub const NUMBER_MAX: u64 = u64::MAX / 2;

/// One client request, as ordered by the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The client's identity.
    pub client: ClientId,
    /// The session the client registered (the op of its registration); 0 when registering.
    pub session: Op,
    /// The client's request number: 0 registers, then 1, 2, ... one at a time.
    pub request: u64,
    /// The replica the client submitted through; it is the one that replies.
    pub origin: Slot,
    /// The command, opaque to the protocol.
    #[serde(with = "payload_bytes")]
    pub payload: Vec<u8>,
}

/// A payload as postcard's byte string: a varint length and the bytes,
/// the very encoding of a sequence of `u8` (so the wire and the stores
/// are unchanged), written and read at once rather than byte by byte
/// (which took most of a simulated run of large commands).
mod payload_bytes {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

impl Request {
    /// Whether this request registers a new client session.
    pub fn is_register(&self) -> bool {
        self.request == 0
    }

    /// Whether `other` is this request again (from any origin): the same
    /// client, session, number and body.
    pub fn same_as(&self, other: &Request) -> bool {
        self.client == other.client
            && self.session == other.session
            && self.request == other.request
            && self.payload == other.payload
    }

    /// Whether this request has the client id reserved for reconfiguration
    /// entries, which no host or peer may submit.
    pub fn is_reconfiguration(&self) -> bool {
        self.client == MEMBERSHIP_CLIENT
    }

    /// The target membership, if this is a reconfiguration entry's request.
    pub fn reconfiguration(&self) -> Option<Membership> {
        if !self.is_reconfiguration() {
            return None;
        }
        postcard::from_bytes(&self.payload).ok()
    }
}

/// A log entry: a batch of requests the primary of `view` assigned to `op`.
///
/// Entries are hash-chained: `parent` is the checksum of the entry at
/// `op - 1` (or the cluster's root checksum for op 1), and `checksum` covers
/// every other field, so one checksum names an entry and its whole history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    pub checksum: u128,
    pub parent: u128,
    pub view: View,
    pub op: Op,
    /// Nanoseconds chosen by the primary, strictly increasing along the log.
    pub timestamp: u64,
    pub requests: Vec<Request>,
}

#[derive(Serialize)]
struct PrepareFields<'a> {
    parent: u128,
    view: View,
    op: Op,
    timestamp: u64,
    requests: &'a [Request],
}

impl Prepare {
    /// The target membership, if this is a reconfiguration entry (whose
    /// one request carries it: `decode` refuses one beside others).
    pub fn reconfiguration(&self) -> Option<Membership> {
        self.requests.first()?.reconfiguration()
    }

    /// Builds an entry and computes its checksum.
    pub fn new(parent: u128, view: View, op: Op, timestamp: u64, requests: Vec<Request>) -> Prepare {
        let mut prepare = Prepare {
            checksum: 0,
            parent,
            view,
            op,
            timestamp,
            requests,
        };
        prepare.checksum = prepare.compute_checksum();
        prepare
    }

    /// The checksum the entry's fields call for.
    pub fn compute_checksum(&self) -> u128 {
        let fields = PrepareFields {
            parent: self.parent,
            view: self.view,
            op: self.op,
            timestamp: self.timestamp,
            requests: &self.requests,
        };
        let bytes = postcard::to_allocvec(&fields).expect("encoding to a Vec cannot fail");
        checksum(&bytes)
    }

    /// Payload bytes of all requests.
    pub fn payload_bytes(&self) -> usize {
        self.requests.iter().map(|r| r.payload.len()).sum()
    }
}

/// Every message replicas exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A client request forwarded by its origin replica to the primary.
    Request { request: Request },
    /// The primary replicates an entry (also used to answer repair requests).
    /// `checkpoint` is the newest checkpoint `(op, digest)` the sender
    /// knows a quorum holds (`(0, 0)`: none), as in `Commit`.
    Prepare {
        view: View,
        commit: Op,
        entry: Arc<Prepare>,
        checkpoint: (Op, u128),
    },
    /// A backup holds every entry up to `op`, and `op`'s checksum is `checksum`;
    /// `round` echoes the last heartbeat round it heard from the primary.
    /// `checkpoint` is the sender's latest checkpoint `(op, digest)`
    /// (`(0, 0)`: none): the primary counts these to learn which
    /// checkpoints a quorum holds.
    PrepareOk {
        view: View,
        op: Op,
        checksum: u128,
        round: u64,
        checkpoint: (Op, u128),
    },
    /// Heartbeat of the primary: the view is alive and committed up to
    /// `commit`. `round` increases when the primary needs fresh proof that a
    /// quorum still follows it (for linearizable reads).
    /// `checkpoint` is the newest checkpoint `(op, digest)` the primary
    /// knows a quorum holds (`(0, 0)`: none): a replica syncs only to such
    /// a checkpoint, and one whose own digest there differs has diverged.
    Commit {
        view: View,
        commit: Op,
        round: u64,
        checkpoint: (Op, u128),
    },
    /// A replica asks the primary for a linearizable read point.
    Read { id: u64 },
    /// Read `id` may be served once `op` is executed (a quorum confirmed the
    /// primary of `view` still led after the read arrived).
    ReadOk { view: View, id: u64, op: Op },
    /// A backup asks for entries `from..=to` of the current view's log.
    RequestPrepares { view: View, from: Op, to: Op },
    /// The sender wants to move to `view` (a vote, not yet a change); it is
    /// itself in view `current`. A vote from a replica already in a higher view
    /// than the receiver's is heeded even by a healthy receiver: that view is
    /// real, and the cluster must move up to it for the sender to rejoin.
    StartViewChange { view: View, current: View },
    /// The sender has moved to `view` and hands its log to the new primary:
    /// entries after `from`, where its entry `from` has checksum `from_checksum`.
    DoViewChange {
        view: View,
        log_view: View,
        op: Op,
        commit: Op,
        from: Op,
        from_checksum: u128,
        entries: Vec<Arc<Prepare>>,
    },
    /// The new primary asks for a longer suffix of a DoViewChange.
    RequestDoViewChange { view: View, from: Op },
    /// The new view's log: the entries after `from` (at most a chunk), up to `op`.
    StartView {
        view: View,
        op: Op,
        commit: Op,
        from: Op,
        from_checksum: u128,
        entries: Vec<Arc<Prepare>>,
    },
    /// A replica that missed (or could not attach) a StartView asks again, from `from`.
    RequestStartView { view: View, from: Op },
    /// A replica restarted without its state asks what incarnation the
    /// others know for it; `nonce` identifies this attempt.
    Recovery { nonce: u128 },
    /// The answer: the incarnation the responder knows for the recovering replica.
    RecoveryResponse { nonce: u128, incarnation: u64 },
    /// The recovering replica has chosen a new incarnation (carried in its
    /// crash vector, above every answer); receivers refuse anything older.
    RecoveryFence { nonce: u128 },
    /// The receiver has fenced the old incarnation; it is in `view`.
    RecoveryFenced { nonce: u128, view: View },
    /// Part of the sender's checkpoint at `op` (state sync): bytes
    /// `offset..offset + bytes.len()` of its encoding, `total` bytes long,
    /// whose checksum is `digest`.
    CheckpointChunk {
        op: Op,
        digest: u128,
        total: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Asks for the checkpoint at `op` whose digest is `digest` from byte
    /// `offset` (or, if the receiver holds no such one, the start of its
    /// newest vouched one). The asker knows the digest as vouched.
    RequestCheckpoint { op: Op, digest: u128, offset: u64 },
    /// A replica restarted from a log with one damaged entry asks for the
    /// entry `op` whose checksum is `checksum` (named by the entry after it).
    RequestEntry { op: Op, checksum: u128 },
    /// The answer: the sender's entry with that op and checksum.
    Entry { entry: Arc<Prepare> },
    /// The negative answer: the sender holds no entry `op` with that
    /// checksum; `checkpoint` is the op of a checkpoint it can serve (one a
    /// quorum vouches for) at or after `op`, or 0 if it has none.
    NoEntry { op: Op, checksum: u128, checkpoint: Op },
    /// A member asks the primary for a change of the membership to
    /// `target` (its `change` names it), resent until answered; the
    /// primary gives it up after `ticks` without the origin's consent.
    Reconfigure { target: Membership, ticks: u64 },
    /// The primary's answer to `Reconfigure` (and its word to the origin
    /// when it gives the change up).
    ReconfigureAnswer { change: ChangeId, answer: Answer },
    /// The primary asks the change's origin: may I propose your change at
    /// `op`, in `view`?
    Confirm { change: ChangeId, view: View, op: Op },
    /// The origin's consent to `Confirm` (one op at a time).
    Confirmed { change: ChangeId, view: View, op: Op },
    /// The origin's refusal: it knows no such change, or has answered its
    /// caller; the change is never to be proposed.
    Refused { change: ChangeId },
    /// From a member of a newer epoch to the sender of an older-epoch
    /// message: epoch `membership.epoch()` began after op `start`, whose
    /// entry has checksum `start_checksum` (0, 0 if the sender no longer
    /// knows it).
    EpochNotice {
        membership: Membership,
        start: Op,
        start_checksum: u128,
    },
    /// A member of `epoch` has entered it (to a replica that left).
    EpochStarted { epoch: Epoch },
    /// A replica left out of `epoch` asks its members whether they have
    /// entered it.
    Leaving { epoch: Epoch },
    /// A replica behind (it heard of `epoch`, newer than its own) asks a
    /// replica of that epoch for the committed log after `from`, the op it
    /// executed last.
    RequestStartEpoch { epoch: Epoch, from: Op },
    /// The answer: committed entries after `from` (whose entry has checksum
    /// `from_checksum`), which reach the epochs the asker missed; `commit`
    /// is the sender's executed op (every entry sent is at or below it).
    StartEpoch {
        commit: Op,
        from: Op,
        from_checksum: u128,
        entries: Vec<Arc<Prepare>>,
    },
    /// The primary of `view` in `membership`'s epoch to a learner it
    /// admitted (a new member of `target`, the change it holds or
    /// proposed): learn from me. Sent every heartbeat while it holds the
    /// learner.
    Learn {
        membership: Membership,
        target: Box<Membership>,
        view: View,
    },
    /// A learner's answer to every `Learn`: the life it runs (drawn at each
    /// start), which the primary records in the entry for the learner's
    /// slot.
    Learning { view: View, life: u64 },
    /// The primary's quiet round (docs/protocol.md, "Quiet groups"): a
    /// heartbeat (as `Commit`, with a new `round`) that proposes the
    /// group goes quiet. Kinds appended after every older one, so that
    /// the encoding of every older message is unchanged.
    Quiet {
        view: View,
        commit: Op,
        round: u64,
        checkpoint: (Op, u128),
    },
    /// A backup's answer to `Quiet`: a `PrepareOk` (echoing the round),
    /// and whether the backup went quiet.
    QuietOk {
        view: View,
        op: Op,
        checksum: u128,
        round: u64,
        checkpoint: (Op, u128),
        quiet: bool,
    },
    /// Step 2 of a recovery alone (`Replica::fence_alone_in_epoch`): a
    /// member that entered its epoch at a number the list never installed
    /// asks the others to adopt it (its crash vector carries it). Any of
    /// them answers `RecoveryFenced`, whatever its status: there is no
    /// view to join. Appended, as `Quiet`.
    FenceAlone { nonce: u128 },
}

/// What a primary tells the origin of a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Admitted: the primary works towards proposing it.
    Admitted,
    /// Admitted, but a learner it names has not been heard yet: at the
    /// deadline the change is given up as unreachable.
    AdmittedUnheard,
    /// Its entry is in the primary's log at `op`.
    Proposed { op: Op },
    /// Another change is under way.
    Busy,
    /// The target is not the next epoch of the primary's list.
    Stale,
    /// The list already is the target.
    Unchanged,
    /// The target would lack a live quorum.
    NoQuorum,
    /// A new member's learner was never heard by the deadline.
    Unreachable,
    /// The primary gave the change up before the origin's consent (its
    /// deadline passed).
    Withdrawn,
}

impl Message {
    /// Short name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Request { .. } => "request",
            Message::Prepare { .. } => "prepare",
            Message::PrepareOk { .. } => "prepare_ok",
            Message::Commit { .. } => "commit",
            Message::Read { .. } => "read",
            Message::ReadOk { .. } => "read_ok",
            Message::RequestPrepares { .. } => "request_prepares",
            Message::StartViewChange { .. } => "start_view_change",
            Message::DoViewChange { .. } => "do_view_change",
            Message::RequestDoViewChange { .. } => "request_do_view_change",
            Message::StartView { .. } => "start_view",
            Message::RequestStartView { .. } => "request_start_view",
            Message::Recovery { .. } => "recovery",
            Message::RecoveryResponse { .. } => "recovery_response",
            Message::RecoveryFence { .. } => "recovery_fence",
            Message::RecoveryFenced { .. } => "recovery_fenced",
            Message::CheckpointChunk { .. } => "checkpoint_chunk",
            Message::RequestCheckpoint { .. } => "request_checkpoint",
            Message::RequestEntry { .. } => "request_entry",
            Message::Entry { .. } => "entry",
            Message::NoEntry { .. } => "no_entry",
            Message::Reconfigure { .. } => "reconfigure",
            Message::ReconfigureAnswer { .. } => "reconfigure_answer",
            Message::Confirm { .. } => "confirm",
            Message::Confirmed { .. } => "confirmed",
            Message::Refused { .. } => "refused",
            Message::EpochNotice { .. } => "epoch_notice",
            Message::EpochStarted { .. } => "epoch_started",
            Message::Leaving { .. } => "leaving",
            Message::RequestStartEpoch { .. } => "request_start_epoch",
            Message::StartEpoch { .. } => "start_epoch",
            Message::Learn { .. } => "learn",
            Message::Learning { .. } => "learning",
            Message::Quiet { .. } => "quiet",
            Message::QuietOk { .. } => "quiet_ok",
            Message::FenceAlone { .. } => "fence_alone",
        }
    }

    fn entries(&self) -> &[Arc<Prepare>] {
        match self {
            Message::Prepare { entry, .. } | Message::Entry { entry } => std::slice::from_ref(entry),
            Message::DoViewChange { entries, .. }
            | Message::StartView { entries, .. }
            | Message::StartEpoch { entries, .. } => entries,
            _ => &[],
        }
    }
}

/// Why received bytes were not accepted as a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the header.
    Truncated,
    /// The checksum does not match the bytes.
    Corrupt,
    /// Not a Visor message, or a wire version this build does not speak.
    UnknownFormat,
    /// Stamped with another cluster's id.
    ForeignCluster,
    /// The sender's slot is not below [`MAX_SLOTS`].
    UnknownSender,
    /// The body does not decode, or carries inconsistent entries, a view or
    /// incarnation above `NUMBER_MAX`, or claims no replica makes.
    Malformed,
}

/// Who sends a message: its epoch, and in it its slot, member id and the
/// epoch that admitted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    pub epoch: Epoch,
    pub slot: Slot,
    pub id: MemberId,
    pub joined: Epoch,
}

/// A message as received: its sender, the sender's crash vector, and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The sender's slot (`sender.slot`).
    pub from: Slot,
    pub sender: Sender,
    pub incarnations: [u64; MAX_SLOTS],
    /// The sender's wall clock (ns) when it sent this; 0 if it had none yet.
    pub clock: u64,
    pub message: Message,
}

/// Encodes `message` from `sender`, a replica of `cluster`, with the
/// sender's crash vector and wall clock (ns).
pub fn encode(
    cluster: u128,
    sender: Sender,
    incarnations: &[u64; MAX_SLOTS],
    clock: u64,
    message: &Message,
) -> Vec<u8> {
    let mut bytes = vec![0u8; HEADER_LEN];
    bytes[16..18].copy_from_slice(&MAGIC.to_le_bytes());
    bytes[18..20].copy_from_slice(&WIRE_VERSION.to_le_bytes());
    bytes[20..36].copy_from_slice(&cluster.to_le_bytes());
    bytes[36..44].copy_from_slice(&sender.epoch.to_le_bytes());
    bytes[44] = sender.slot;
    bytes[45..61].copy_from_slice(&sender.id.to_le_bytes());
    bytes[61..69].copy_from_slice(&sender.joined.to_le_bytes());
    let bytes =
        postcard::to_extend(&(incarnations, clock, message), bytes).expect("encoding to a Vec cannot fail");
    let mut bytes = bytes;
    let sum = checksum(&bytes[16..]);
    bytes[0..16].copy_from_slice(&sum.to_le_bytes());
    bytes
}

/// Decodes and verifies bytes received by a replica of `cluster`. Returns
/// the sender and the message; whether the sender is one the receiver
/// listens to is the receiver's to judge (its epoch gate).
pub fn decode(cluster: u128, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    let sum = u128::from_le_bytes(bytes[0..16].try_into().unwrap());
    if checksum(&bytes[16..]) != sum {
        return Err(DecodeError::Corrupt);
    }
    let magic = u16::from_le_bytes([bytes[16], bytes[17]]);
    let version = u16::from_le_bytes([bytes[18], bytes[19]]);
    if magic != MAGIC || version != WIRE_VERSION {
        return Err(DecodeError::UnknownFormat);
    }
    if u128::from_le_bytes(bytes[20..36].try_into().unwrap()) != cluster {
        return Err(DecodeError::ForeignCluster);
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let sender = Sender {
        epoch: u64_at(36),
        slot: bytes[44],
        id: u128::from_le_bytes(bytes[45..61].try_into().unwrap()),
        joined: u64_at(61),
    };
    if sender.slot as usize >= MAX_SLOTS {
        return Err(DecodeError::UnknownSender);
    }
    // Epochs count changes, as views count view changes: one above
    // NUMBER_MAX is crafted. A member is admitted by its epoch or an
    // earlier one, but a learner by a later one, which its header may not
    // name yet (one restarted knows no list before it catches up): who
    // may send what is the gate's to judge, by slot, id and `joined`.
    if sender.epoch > NUMBER_MAX || sender.joined > NUMBER_MAX {
        return Err(DecodeError::Malformed);
    }
    let (incarnations, clock, message): ([u64; MAX_SLOTS], u64, Message) =
        postcard::from_bytes(&bytes[HEADER_LEN..]).map_err(|_| DecodeError::Malformed)?;
    if !entries_are_consistent(&message)
        || !reconfigurations_are_well_formed(&message)
        || !numbers_are_plausible(&incarnations, &message)
        || !do_view_change_is_consistent(&message)
    {
        return Err(DecodeError::Malformed);
    }
    Ok(Decoded {
        from: sender.slot,
        sender,
        incarnations,
        clock,
        message,
    })
}

/// Views and incarnations no higher than `NUMBER_MAX`.
fn numbers_are_plausible(incarnations: &[u64], message: &Message) -> bool {
    let views: [View; 2] = match message {
        Message::Prepare { view, .. }
        | Message::PrepareOk { view, .. }
        | Message::Commit { view, .. }
        | Message::Quiet { view, .. }
        | Message::QuietOk { view, .. }
        | Message::ReadOk { view, .. }
        | Message::RequestPrepares { view, .. }
        | Message::RequestDoViewChange { view, .. }
        | Message::StartView { view, .. }
        | Message::RequestStartView { view, .. }
        | Message::RecoveryFenced { view, .. }
        | Message::Confirm { view, .. }
        | Message::Confirmed { view, .. }
        | Message::Learning { view, .. } => [*view, 0],
        Message::Learn { membership, view, .. } => [membership.epoch(), *view],
        Message::Reconfigure {
            target: membership, ..
        }
        | Message::EpochNotice { membership, .. } => [membership.epoch(), 0],
        Message::EpochStarted { epoch }
        | Message::Leaving { epoch }
        | Message::RequestStartEpoch { epoch, .. } => [*epoch, 0],
        Message::StartViewChange { view, current } => [*view, *current],
        Message::DoViewChange { view, log_view, .. } => [*view, *log_view],
        Message::RecoveryResponse { incarnation, .. } => [*incarnation, 0],
        _ => [0, 0],
    };
    incarnations.iter().chain(&views).all(|&n| n <= NUMBER_MAX)
}

/// A reconfiguration entry holds its one request alone, and that request's
/// payload is a well-formed membership (decoding checks it), for the
/// epoch the request names.
fn reconfigurations_are_well_formed(message: &Message) -> bool {
    message.entries().iter().all(|entry| {
        let reconfiguring = entry.requests.iter().any(Request::is_reconfiguration);
        !reconfiguring
            || (entry.requests.len() == 1
                && entry.requests[0]
                    .reconfiguration()
                    .is_some_and(|m| m.epoch() == entry.requests[0].request && m.epoch() <= NUMBER_MAX))
    })
}

/// A DoViewChange as replicas send it: from a replica that has not started
/// `view` (`log_view < view`), with its whole log after `from`, up to `op`.
fn do_view_change_is_consistent(message: &Message) -> bool {
    match message {
        Message::DoViewChange {
            view,
            log_view,
            op,
            from,
            entries,
            ..
        } => log_view < view && from.checked_add(entries.len() as u64) == Some(*op),
        _ => true,
    }
}

/// Entries must carry their true checksums, and a run of entries must be a
/// contiguous hash chain, so that nothing received is trusted unchecked.
fn entries_are_consistent(message: &Message) -> bool {
    let entries = message.entries();
    let checksums_hold = entries.iter().all(|e| e.compute_checksum() == e.checksum);
    let chained = entries
        .windows(2)
        .all(|w| w[0].op.checked_add(1) == Some(w[1].op) && w[1].parent == w[0].checksum);
    let attached = match message {
        Message::DoViewChange {
            from,
            from_checksum,
            entries,
            ..
        }
        | Message::StartView {
            from,
            from_checksum,
            entries,
            ..
        }
        | Message::StartEpoch {
            from,
            from_checksum,
            entries,
            ..
        } => entries
            .first()
            .is_none_or(|e| from.checked_add(1) == Some(e.op) && e.parent == *from_checksum),
        _ => true,
    };
    checksums_hold && chained && attached
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(client: u128, n: u64) -> Request {
        Request {
            client,
            session: 1,
            request: n,
            origin: 0,
            payload: vec![n as u8; 3],
        }
    }

    fn sample() -> Message {
        let a = Arc::new(Prepare::new(7, 1, 1, 10, vec![request(5, 1)]));
        let b = Arc::new(Prepare::new(
            a.checksum,
            1,
            2,
            11,
            vec![request(6, 1), request(5, 2)],
        ));
        Message::StartView {
            view: 2,
            op: 2,
            commit: 1,
            from: 0,
            from_checksum: 7,
            entries: vec![a, b],
        }
    }

    const NONE: [u64; MAX_SLOTS] = [0; MAX_SLOTS];

    /// A member of the genesis, whose member id is its slot.
    fn sender(slot: Slot) -> Sender {
        Sender {
            epoch: 0,
            slot,
            id: slot as MemberId,
            joined: 0,
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(42, sender(1), &NONE, 7, &sample());
        let decoded = Decoded {
            from: 1,
            sender: sender(1),
            incarnations: NONE,
            clock: 7,
            message: sample(),
        };
        assert_eq!(decode(42, &bytes), Ok(decoded));
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let bytes = encode(42, sender(1), &NONE, 7, &sample());
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(decode(42, &bad).is_err(), "flip of bit {i} accepted");
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = encode(42, sender(1), &NONE, 7, &sample());
        for len in 0..bytes.len() {
            assert!(decode(42, &bytes[..len]).is_err(), "truncation to {len} accepted");
        }
    }

    #[test]
    fn foreign_cluster_and_sender_are_rejected() {
        let bytes = encode(42, sender(1), &NONE, 7, &sample());
        assert_eq!(decode(43, &bytes), Err(DecodeError::ForeignCluster));
        let beyond = Sender {
            slot: MAX_SLOTS as Slot,
            ..sender(1)
        };
        let bytes = encode(42, beyond, &NONE, 7, &sample());
        assert_eq!(decode(42, &bytes), Err(DecodeError::UnknownSender));
    }

    #[test]
    fn the_sender_is_decoded_whole_and_checked() {
        let named = Sender {
            epoch: 3,
            slot: 11,
            id: u128::MAX - 5,
            joined: 2,
        };
        let mut incarnations = NONE;
        incarnations[11] = 4;
        let decoded = decode(42, &encode(42, named, &incarnations, 7, &sample())).unwrap();
        assert_eq!(
            (decoded.from, decoded.sender, decoded.incarnations),
            (11, named, incarnations)
        );
        let crafted = [
            Sender {
                epoch: NUMBER_MAX + 1,
                ..named
            },
            Sender {
                joined: NUMBER_MAX + 1,
                ..named
            },
        ];
        // A learner's `joined` may be any later epoch: its header names
        // the list it knows, which may be older still.
        let learner = Sender { joined: 9, ..named };
        let bytes = encode(42, learner, &NONE, 7, &sample());
        assert_eq!(decode(42, &bytes).map(|d| d.sender), Ok(learner));
        for sender in crafted {
            let bytes = encode(42, sender, &NONE, 7, &sample());
            assert_eq!(decode(42, &bytes), Err(DecodeError::Malformed), "{sender:?}");
        }
    }

    #[test]
    fn a_lying_entry_checksum_is_malformed_even_with_a_valid_envelope() {
        let mut entry = Prepare::new(7, 1, 1, 10, vec![request(5, 1)]);
        entry.timestamp += 1; // checksum no longer matches the fields
        let message = Message::Prepare {
            view: 1,
            commit: 0,
            entry: Arc::new(entry),
            checkpoint: (0, 0),
        };
        assert_eq!(
            decode(42, &encode(42, sender(0), &NONE, 7, &message)),
            Err(DecodeError::Malformed)
        );
    }

    #[test]
    fn a_broken_chain_is_malformed() {
        let a = Arc::new(Prepare::new(7, 1, 1, 10, vec![]));
        let b = Arc::new(Prepare::new(999, 1, 2, 11, vec![]));
        let message = Message::StartView {
            view: 2,
            op: 2,
            commit: 0,
            from: 0,
            from_checksum: 7,
            entries: vec![a, b],
        };
        assert_eq!(
            decode(42, &encode(42, sender(0), &NONE, 7, &message)),
            Err(DecodeError::Malformed)
        );
    }

    #[test]
    fn garbage_behind_a_valid_envelope_never_panics() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..400usize {
            let mut bytes = encode(
                42,
                sender(1),
                &NONE,
                7,
                &Message::Commit {
                    view: 0,
                    commit: 0,
                    round: 0,
                    checkpoint: (0, 0),
                },
            )[..HEADER_LEN]
                .to_vec();
            bytes.extend((0..len).map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            }));
            let sum = checksum(&bytes[16..]);
            bytes[0..16].copy_from_slice(&sum.to_le_bytes());
            // Whatever the body says, decoding returns; it never panics or hangs.
            let _ = decode(42, &bytes);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9e3779b97f4a7c15u64;
        for len in [0usize, 1, 36, 37, 38, 64, 300] {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                assert!(decode(42, &bytes).is_err());
            }
        }
    }
}

#[cfg(test)]
mod payload_encoding {
    use super::Request;

    /// The payload's byte-string encoding is postcard's encoding of a
    /// `Vec<u8>`: messages and stores written before read the same.
    #[test]
    fn payload_is_encoded_as_a_sequence_of_bytes() {
        #[derive(serde::Serialize)]
        struct Plain {
            client: u128,
            session: u64,
            request: u64,
            origin: u8,
            payload: Vec<u8>,
        }
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let request = Request {
                client: 7,
                session: 3,
                request: 9,
                origin: 1,
                payload: payload.clone(),
            };
            let plain = Plain {
                client: 7,
                session: 3,
                request: 9,
                origin: 1,
                payload,
            };
            let ours = postcard::to_allocvec(&request).unwrap();
            assert_eq!(ours, postcard::to_allocvec(&plain).unwrap());
            assert_eq!(postcard::from_bytes::<Request>(&ours).unwrap(), request);
        }
    }
}

/// Review of e936105: the byte-string payload encoding against postcard's
/// `Vec<u8>` at every varint length boundary, and decoding of truncated,
/// corrupted and crafted payload bytes (an error, never a panic).
#[cfg(test)]
mod review_payload_encoding {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Plain {
        client: u128,
        session: u64,
        request: u64,
        origin: u8,
        payload: Vec<u8>,
    }

    fn request(len: usize) -> Request {
        Request {
            client: 7,
            session: 3,
            request: 9,
            origin: 1,
            payload: (0..len).map(|i| (i * 31) as u8).collect(),
        }
    }

    /// Every varint width boundary of the length up to 3 bytes (and the
    /// default `batch_max_bytes`): the same bytes, both ways.
    #[test]
    fn same_bytes_at_every_length_boundary() {
        for len in [
            0usize,
            1,
            2,
            127,
            128,
            129,
            16_383,
            16_384,
            16_385,
            1 << 20,
            2_097_151,
            2_097_152,
        ] {
            let r = request(len);
            let plain = Plain {
                client: 7,
                session: 3,
                request: 9,
                origin: 1,
                payload: r.payload.clone(),
            };
            let ours = postcard::to_allocvec(&r).unwrap();
            let theirs = postcard::to_allocvec(&plain).unwrap();
            assert_eq!(ours, theirs, "len {len}");
            assert_eq!(postcard::from_bytes::<Request>(&theirs).unwrap(), r, "len {len}");
            assert_eq!(postcard::from_bytes::<Plain>(&ours).unwrap(), plain, "len {len}");
            // The entry checksum covers the requests' encoding: unchanged.
            let e = Prepare::new(1, 2, 3, 4, vec![r.clone(), request(len / 2)]);
            assert_eq!(
                postcard::from_bytes::<Prepare>(&postcard::to_allocvec(&e).unwrap()).unwrap(),
                e
            );
        }
    }

    fn no_panic<T: for<'de> serde::Deserialize<'de>>(bytes: &[u8]) {
        let r = std::panic::catch_unwind(|| postcard::from_bytes::<T>(bytes).is_ok());
        assert!(r.is_ok(), "panicked decoding {} bytes", bytes.len());
    }

    /// Truncations, every single-byte corruption of the head, and lengths
    /// crafted up to u64::MAX: errors (or other values), never panics, and
    /// no allocation of the claimed length.
    #[test]
    fn malformed_payloads_are_errors() {
        let r = request(300);
        let bytes = postcard::to_allocvec(&r).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                postcard::from_bytes::<Request>(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        for at in 0..40.min(bytes.len()) {
            for v in [0u8, 0x7f, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[at] = v;
                no_panic::<Request>(&b);
                no_panic::<Prepare>(&b);
            }
        }
        // The payload's length field alone, claiming far more than follows.
        let head = postcard::to_allocvec(&(7u128, 3u64, 9u64, 1u8)).unwrap();
        for claim in [u64::MAX, u32::MAX as u64, 1 << 40, 301] {
            let mut b = head.clone();
            b.extend(postcard::to_allocvec(&claim).unwrap()); // a varint
            b.extend([1u8; 300]);
            assert!(postcard::from_bytes::<Request>(&b).is_err(), "claim {claim}");
        }
        // An over-long varint (11 bytes of continuation).
        let mut b = head.clone();
        b.extend([0xff; 11]);
        assert!(postcard::from_bytes::<Request>(&b).is_err());
        // A whole message, its checksum recomputed over corrupted bodies.
        let entry = Arc::new(Prepare::new(1, 2, 3, 4, vec![request(1000), request(0)]));
        let sender = Sender {
            epoch: 0,
            slot: 1,
            id: 1,
            joined: 0,
        };
        let message = Message::Prepare {
            view: 2,
            commit: 1,
            entry,
            checkpoint: (0, 0),
        };
        let wire = encode(5, sender, &[0; MAX_SLOTS], 0, &message);
        for cut in HEADER_LEN..wire.len() {
            let mut w = wire[..cut].to_vec();
            let sum = checksum(&w[16..]);
            w[0..16].copy_from_slice(&sum.to_le_bytes());
            let r = std::panic::catch_unwind(|| decode(5, &w).is_ok());
            assert_eq!(r.ok(), Some(false), "cut {cut}");
        }
        for at in HEADER_LEN..wire.len().min(HEADER_LEN + 200) {
            for v in [0u8, 0x80, 0xff] {
                let mut w = wire.clone();
                w[at] = v;
                let sum = checksum(&w[16..]);
                w[0..16].copy_from_slice(&sum.to_le_bytes());
                assert!(
                    std::panic::catch_unwind(|| decode(5, &w).is_ok()).is_ok(),
                    "at {at}"
                );
            }
        }
    }
}
