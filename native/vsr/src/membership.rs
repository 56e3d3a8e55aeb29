//! Who the members of a cluster are: slots, member ids and epochs.
//!
//! A cluster's configuration is a [`Membership`]: an epoch and 1 to
//! [`MAX_REPLICAS`] members. Epoch 0 is the *genesis*, the list a cluster is
//! started with ([`Membership::genesis`]); a later epoch is made by a change
//! agreed through the log (docs/design/membership.md). Today every cluster
//! stays in its genesis: the types exist so that the rest of the core counts
//! and loops over a membership, never over `0..n`.
//!
//! A member keeps one *slot* while it is a member; every per-peer array of
//! the replica is indexed by slot, so slots run to [`MAX_SLOTS`], room for
//! an old and a new list side by side. Its *member id* is the host's name
//! for its node, and `joined` the epoch that admitted it: the triple
//! `(slot, id, joined)` names one membership of one node, so a node removed
//! and added again is a new member even at the same slot.

use serde::{Deserialize, Serialize};

use crate::config::{quorum, View, MAX_REPLICAS};

/// A configuration's number: 0 for the genesis, one more for each change.
pub type Epoch = u64;
/// A member's place in every per-peer array, and its name on the wire.
pub type Slot = u8;
/// The host's name for a node (Visor: the md5 of the node's name).
pub type MemberId = u128;

/// How many slots exist: an old and a new list of [`MAX_REPLICAS`] each
/// may hold at most this many distinct members.
pub const MAX_SLOTS: usize = 2 * MAX_REPLICAS;

/// One member of a [`Membership`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Member {
    /// Its index in every per-peer array, below [`MAX_SLOTS`].
    pub slot: Slot,
    /// Its node, as the host names it.
    pub id: MemberId,
    /// The epoch whose change admitted it (0 in the genesis).
    pub joined: Epoch,
    /// The incarnation the change's proposer knew for it (0 in the genesis).
    pub incarnation: u64,
    /// For a member added by a change, the life of the learner whose
    /// progress that change's proposal counted, kept by every later list
    /// while it stays (`Membership::next`); 0 for a genesis member.
    pub life: u64,
}

/// Names the change that made an epoch: the member id of the member that
/// asked for it and that member's number for it. `(0, 0)` for the genesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ChangeId {
    pub origin: MemberId,
    pub id: u64,
}

/// Why a list of members is not a membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipError {
    /// Fewer than 1 or more than [`MAX_REPLICAS`] members.
    Size(usize),
    /// A slot at or above [`MAX_SLOTS`].
    SlotOutOfRange(Slot),
    /// Two members share a slot.
    DuplicateSlot(Slot),
    /// Two members share a member id.
    DuplicateId(MemberId),
}

impl std::fmt::Display for MembershipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MembershipError::Size(n) => write!(f, "must have 1..={MAX_REPLICAS} members, got {n}"),
            MembershipError::SlotOutOfRange(s) => write!(f, "slot {s} is not below {MAX_SLOTS}"),
            MembershipError::DuplicateSlot(s) => write!(f, "slot {s} is taken twice"),
            MembershipError::DuplicateId(id) => write!(f, "member id {id:#x} is listed twice"),
        }
    }
}

/// A cluster's members in one epoch. `Copy`, so that the durable state
/// that holds it stays `Copy`; always well formed (1 to [`MAX_REPLICAS`]
/// members, distinct slots below [`MAX_SLOTS`], distinct ids): every
/// constructor and the decoder check it.
///
/// The order of the members decides the primaries: the primary of view `v`
/// is the member at position `v mod n`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Listed", into = "Listed")]
pub struct Membership {
    epoch: Epoch,
    change: ChangeId,
    len: u8,
    members: [Member; MAX_REPLICAS],
}

/// The encoded form of a [`Membership`]: only the members it has, so that
/// two equal memberships always have the same bytes.
#[derive(Serialize, Deserialize)]
struct Listed {
    epoch: Epoch,
    change: ChangeId,
    members: Vec<Member>,
}

impl From<Membership> for Listed {
    fn from(m: Membership) -> Listed {
        Listed {
            epoch: m.epoch,
            change: m.change,
            members: m.members().to_vec(),
        }
    }
}

impl TryFrom<Listed> for Membership {
    type Error = MembershipError;
    fn try_from(l: Listed) -> Result<Membership, MembershipError> {
        Membership::new(l.epoch, l.change, &l.members)
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("epoch", &self.epoch)
            .field("change", &self.change)
            .field("members", &self.members())
            .finish()
    }
}

impl Membership {
    /// A membership of `members`, in that order, checked.
    pub fn new(epoch: Epoch, change: ChangeId, members: &[Member]) -> Result<Membership, MembershipError> {
        if members.is_empty() || members.len() > MAX_REPLICAS {
            return Err(MembershipError::Size(members.len()));
        }
        for (i, m) in members.iter().enumerate() {
            if m.slot as usize >= MAX_SLOTS {
                return Err(MembershipError::SlotOutOfRange(m.slot));
            }
            if members[..i].iter().any(|o| o.slot == m.slot) {
                return Err(MembershipError::DuplicateSlot(m.slot));
            }
            if members[..i].iter().any(|o| o.id == m.id) {
                return Err(MembershipError::DuplicateId(m.id));
            }
        }
        let mut array = [Member::default(); MAX_REPLICAS];
        array[..members.len()].copy_from_slice(members);
        Ok(Membership {
            epoch,
            change,
            len: members.len() as u8,
            members: array,
        })
    }

    /// Epoch 0: the members `ids`, in slots `0..ids.len()`, in that order.
    pub fn genesis(ids: &[MemberId]) -> Result<Membership, MembershipError> {
        let members: Vec<Member> = ids
            .iter()
            .enumerate()
            .map(|(slot, &id)| Member {
                slot: slot as Slot,
                id,
                ..Member::default()
            })
            .collect();
        Membership::new(0, ChangeId::default(), &members)
    }

    /// A genesis of `n` members whose ids are their slots: for callers (tests,
    /// the simulator) that name nodes by number. `n` must be 1 to
    /// [`MAX_REPLICAS`].
    pub fn numbered(n: usize) -> Result<Membership, MembershipError> {
        let ids: Vec<MemberId> = (0..n as MemberId).collect();
        Membership::genesis(&ids)
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The change that made this epoch (`(0, 0)` for the genesis).
    pub fn change(&self) -> ChangeId {
        self.change
    }

    /// The members, in the order that decides the primaries.
    pub fn members(&self) -> &[Member] {
        &self.members[..self.len as usize]
    }

    /// The number of members.
    pub fn n(&self) -> usize {
        self.len as usize
    }

    /// The size of a quorum of this list: a strict majority.
    pub fn quorum(&self) -> usize {
        quorum(self.n())
    }

    /// The fewest members that meet every quorum of this list, `n - q + 1`:
    /// a quorum when `n` is odd, half the list when it is even. Two such
    /// sets drawn from the `n - 1` members other than one replica meet as
    /// well (`2(n - q + 1) > n - 1`), which is what a recovery counts on.
    pub fn meeting_every_quorum(&self) -> usize {
        self.n() + 1 - self.quorum()
    }

    /// The members' slots, in the members' order.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        self.members().iter().map(|m| m.slot)
    }

    /// The slot of the primary of `view`.
    pub fn primary(&self, view: View) -> Slot {
        self.members[(view % self.len as u64) as usize].slot
    }

    /// Whether `slot` belongs to a member.
    pub fn contains(&self, slot: Slot) -> bool {
        self.member(slot).is_some()
    }

    /// The member in `slot`, if any.
    pub fn member(&self, slot: Slot) -> Option<&Member> {
        self.members().iter().find(|m| m.slot == slot)
    }

    /// The member whose node is `id`, if any.
    pub fn member_by_id(&self, id: MemberId) -> Option<&Member> {
        self.members().iter().find(|m| m.id == id)
    }

    /// Whether `(slot, id)` names a member of this list: a slot alone does
    /// not, since a slot is reused once its member has left.
    pub fn is_member(&self, slot: Slot, id: MemberId) -> bool {
        self.member(slot).is_some_and(|m| m.id == id)
    }

    /// The target of a change to the nodes `ids`, asked for as `change`:
    /// epoch + 1; a member that stays keeps its slot, `joined`, incarnation
    /// and life as listed here (a proposer records incarnations and lives
    /// later); a new one takes the lowest slot free in both lists, with
    /// `joined` the new epoch. Order: `lead` first if it stays (so the
    /// current primary leads view 0 of the new epoch), then the staying
    /// members in this list's order, then the new ones in `ids`' order.
    /// A function of this list, `ids` and `lead` alone, so that two
    /// primaries compute the same target from the same request.
    pub fn next(
        &self,
        ids: &[MemberId],
        change: ChangeId,
        lead: Slot,
    ) -> Result<Membership, MembershipError> {
        let epoch = self.epoch + 1;
        let mut members: Vec<Member> = Vec::with_capacity(ids.len());
        let staying = |m: &&Member| ids.contains(&m.id);
        if let Some(first) = self.member(lead).filter(|m| ids.contains(&m.id)) {
            members.push(*first);
        }
        for m in self.members().iter().filter(staying) {
            if m.slot != lead {
                members.push(*m);
            }
        }
        let mut taken: Vec<Slot> = self.slots().collect();
        for (i, &id) in ids.iter().enumerate() {
            if ids[..i].contains(&id) {
                return Err(MembershipError::DuplicateId(id));
            }
            if self.member_by_id(id).is_some() {
                continue;
            }
            let slot = (0..MAX_SLOTS as Slot)
                .find(|s| !taken.contains(s))
                .ok_or(MembershipError::Size(ids.len()))?;
            taken.push(slot);
            members.push(Member {
                slot,
                id,
                joined: epoch,
                incarnation: 0,
                life: 0,
            });
        }
        Membership::new(epoch, change, &members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_numbers_slots_in_order_and_primaries_rotate() {
        let m = Membership::genesis(&[10, 20, 30]).unwrap();
        assert_eq!(m.epoch(), 0);
        assert_eq!(m.n(), 3);
        assert_eq!(m.quorum(), 2);
        assert_eq!(m.slots().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(
            (0..7).map(|v| m.primary(v)).collect::<Vec<_>>(),
            vec![0, 1, 2, 0, 1, 2, 0]
        );
        assert!(m.is_member(1, 20));
        assert!(!m.is_member(1, 30), "a slot alone does not name a member");
        assert!(!m.contains(3));
    }

    #[test]
    fn malformed_lists_are_refused() {
        assert_eq!(Membership::genesis(&[]), Err(MembershipError::Size(0)));
        assert_eq!(Membership::numbered(7), Err(MembershipError::Size(7)));
        assert_eq!(
            Membership::genesis(&[1, 2, 1]),
            Err(MembershipError::DuplicateId(1))
        );
        let member = |slot| Member {
            slot,
            id: slot as u128,
            ..Member::default()
        };
        let c = ChangeId::default();
        assert_eq!(
            Membership::new(1, c, &[member(0), member(12)]),
            Err(MembershipError::SlotOutOfRange(12))
        );
        let twice = [member(3), Member { id: 9, ..member(3) }];
        assert_eq!(
            Membership::new(1, c, &twice),
            Err(MembershipError::DuplicateSlot(3))
        );
    }

    #[test]
    fn encoding_holds_only_the_listed_members_and_decoding_checks() {
        let m = Membership::genesis(&[7, 8]).unwrap();
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<Membership>(&bytes).unwrap(), m);
        let listed = Listed {
            epoch: 2,
            change: ChangeId::default(),
            members: vec![Member::default(), Member::default()],
        };
        let bad = postcard::to_allocvec(&listed).unwrap();
        assert!(
            postcard::from_bytes::<Membership>(&bad).is_err(),
            "two members in slot 0"
        );
    }

    #[test]
    fn next_keeps_staying_slots_and_fills_the_lowest_free_ones() {
        let change = ChangeId { origin: 20, id: 1 };
        let m = Membership::genesis(&[10, 20, 30]).unwrap();
        // Replace 10 (the lead) by 40: 40 takes slot 3, not 10's slot 0,
        // which the old list still holds.
        let replaced = m.next(&[20, 30, 40], change, 0).unwrap();
        assert_eq!(replaced.epoch(), 1);
        assert_eq!(replaced.change(), change);
        let listed: Vec<(Slot, MemberId, Epoch)> = replaced
            .members()
            .iter()
            .map(|m| (m.slot, m.id, m.joined))
            .collect();
        assert_eq!(listed, vec![(1, 20, 0), (2, 30, 0), (3, 40, 1)]);
        // The lead stays and goes first.
        let grown = m.next(&[40, 10, 20, 30, 50], change, 1).unwrap();
        assert_eq!(grown.slots().collect::<Vec<_>>(), vec![1, 0, 2, 3, 4]);
        assert_eq!(grown.primary(0), 1);
        // In the next epoch, slot 0 (left in epoch 1) is free again.
        let again = replaced.next(&[20, 30, 40, 10], change, 1).unwrap();
        assert_eq!(again.member_by_id(10).map(|m| (m.slot, m.joined)), Some((0, 2)));
        assert_eq!(
            m.next(&[10, 10], change, 0),
            Err(MembershipError::DuplicateId(10))
        );
        assert_eq!(m.next(&[], change, 0), Err(MembershipError::Size(0)));
    }
}
