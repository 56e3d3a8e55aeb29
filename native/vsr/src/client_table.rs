//! The client table: at-most-once execution of client requests.
//!
//! The table is a pure function of the committed log: every replica updates
//! it while executing committed entries, in op order, and never at prepare
//! time. Updating at prepare time is the "lockout" that TigerBeetle documents
//! for the paper's table: after a view change drops an uncommitted prepare,
//! a table that already recorded it rejects the client's retry forever.
//!
//! Clients register first (request number 0) and receive a session, the op
//! of their registration. Each later request names its session. This fixes
//! the paper's request-number collision: a client that restarts and counts
//! from 1 again registers a new session instead of having its requests taken
//! for old duplicates, and a client evicted from the full table is told so
//! instead of having a retried request executed a second time.
//!
//! A session also remembers a checksum of its latest request's payload, so
//! that a request with the same (client, session, request) but another
//! body (a client that reused a number, or two clients sharing an id) is
//! refused rather than answered with the other request's reply. The
//! comparison uses only the committed payloads, so every replica decides
//! the same. An *older* request number carries no body to compare with and
//! stays `Duplicate { op: 0 }`, which names no reply.

use std::collections::{BTreeSet, HashMap};

use crate::checksum::checksum;
use crate::config::{ClientId, Op};
use crate::message::Request;
use crate::verified::Verified;

/// What execution did with one committed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The client now has session `session` (the op of its registration).
    Registered { session: Op },
    /// The command was executed by this op; the application must apply it.
    Executed,
    /// The request was executed before, at `op`; it must not be applied again.
    /// (`op` is 0 when the request is older than the client's latest.)
    Duplicate { op: Op },
    /// The session is unknown (evicted, or never registered): not executed.
    Evicted,
    /// The session's latest request has this number but another body: this
    /// one is not executed (and gets none of the other's reply).
    Refused,
    /// A reconfiguration entry's request (no client's): the protocol's own,
    /// nothing for the application (docs/design/membership.md, 2.3).
    Membership,
}

impl Outcome {
    /// The op a settled request's reply names: its session for a
    /// registration, the op that executed it for a duplicate; `None` for
    /// any other outcome, and for a duplicate older than its client's
    /// latest (`Duplicate { op: 0 }`), whose reply would name no op.
    pub fn named_op(&self) -> Option<Op> {
        match *self {
            Outcome::Registered { session } => Some(session),
            Outcome::Duplicate { op } if op > 0 => Some(op),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Session {
    session: Op,
    request: u64,
    /// Op that last executed a request of this client: the eviction order.
    last_op: Op,
    /// Checksum of the payload of request number `request`.
    body: u128,
}

/// Sessions of at most `capacity` clients; the least recently active is
/// evicted first, ties broken by client id, so every replica evicts the same.
#[derive(Clone, Debug)]
pub struct ClientTable {
    capacity: usize,
    sessions: HashMap<ClientId, Session>,
    by_activity: BTreeSet<(Op, ClientId)>,
    /// Since the last check that passed, the table is sound for every
    /// executed op at or after this one (its latest `last_op`). Every
    /// change to `sessions` or `by_activity` goes through `insert` or
    /// `evict_oldest` (the removal in `execute` is followed by an
    /// `insert`), which forget it.
    sound_from: Verified,
}

impl ClientTable {
    pub fn new(capacity: usize) -> ClientTable {
        ClientTable {
            capacity,
            sessions: HashMap::new(),
            by_activity: BTreeSet::new(),
            sound_from: Verified::none(),
        }
    }

    /// Number of registered clients.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Executes `request`, committed at `op`, against the table.
    pub fn execute(&mut self, op: Op, request: &Request) -> Outcome {
        if request.is_register() {
            if let Some(existing) = self.sessions.get(&request.client) {
                return Outcome::Registered {
                    session: existing.session,
                };
            }
            if self.sessions.len() >= self.capacity {
                self.evict_oldest();
            }
            self.insert(
                request.client,
                Session {
                    session: op,
                    request: 0,
                    last_op: op,
                    body: checksum(&request.payload),
                },
            );
            return Outcome::Registered { session: op };
        }
        match self.sessions.get(&request.client).copied() {
            Some(s) if s.session == request.session => {
                if request.request < s.request {
                    Outcome::Duplicate { op: 0 }
                } else if request.request == s.request {
                    same_body_or_refused(&s, request)
                } else {
                    self.by_activity.remove(&(s.last_op, request.client));
                    self.insert(
                        request.client,
                        Session {
                            request: request.request,
                            last_op: op,
                            body: checksum(&request.payload),
                            ..s
                        },
                    );
                    Outcome::Executed
                }
            }
            _ => Outcome::Evicted,
        }
    }

    /// What executing `request` now would say if it is already settled
    /// (a duplicate or an evicted session), without changing anything.
    /// `None` means it is new and must go through the log.
    pub fn settled(&self, request: &Request) -> Option<Outcome> {
        let s = self.sessions.get(&request.client)?;
        if request.is_register() {
            return Some(Outcome::Registered { session: s.session });
        }
        if s.session != request.session {
            return None; // a stale session: the log will say Evicted, deterministically
        }
        match request.request.cmp(&s.request) {
            std::cmp::Ordering::Less => Some(Outcome::Duplicate { op: 0 }),
            std::cmp::Ordering::Equal => Some(same_body_or_refused(s, request)),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// The table as bytes, for a checkpoint: every session, by client id,
    /// so that equal tables encode equally on every replica.
    pub fn encode(&self) -> Vec<u8> {
        let mut sessions: Vec<(ClientId, Op, u64, Op, u128)> = self
            .sessions
            .iter()
            .map(|(&c, s)| (c, s.session, s.request, s.last_op, s.body))
            .collect();
        sessions.sort_unstable();
        postcard::to_allocvec(&sessions).expect("encoding to a Vec cannot fail")
    }

    /// A table from [`ClientTable::encode`]'s bytes; `None` if they do not decode.
    pub fn decode(capacity: usize, bytes: &[u8]) -> Option<ClientTable> {
        let sessions: Vec<(ClientId, Op, u64, Op, u128)> = postcard::from_bytes(bytes).ok()?;
        let mut table = ClientTable::new(capacity);
        for (client, session, request, last_op, body) in sessions {
            table.insert(
                client,
                Session {
                    session,
                    request,
                    last_op,
                    body,
                },
            );
        }
        while table.sessions.len() > capacity {
            table.evict_oldest();
        }
        Some(table)
    }

    /// The op of `client`'s latest request (for a mutation that answers a
    /// refused request with it).
    #[cfg(feature = "mutations")]
    pub(crate) fn last_op(&self, client: ClientId) -> Op {
        self.sessions.get(&client).map_or(0, |s| s.last_op)
    }

    /// Checks the table as of `executed`, the highest op executed: at most
    /// `capacity` sessions, each registered and last active at or before
    /// `executed` (a table is built by executing the log, or installed from
    /// a checkpoint at an op executed), and the eviction order lists every
    /// session exactly once. A table unchanged since it last passed is
    /// not walked again unless `executed` went below its latest activity.
    pub fn check(&self, executed: Op) -> Result<(), String> {
        if self.sound_from.get().is_some_and(|op| op <= executed) {
            return Ok(());
        }
        if self.sessions.len() > self.capacity {
            return Err(format!(
                "client table holds {} sessions, more than its {}",
                self.sessions.len(),
                self.capacity
            ));
        }
        if self.by_activity.len() != self.sessions.len() {
            return Err("client table's eviction order and sessions differ".into());
        }
        for (client, s) in &self.sessions {
            if s.session > s.last_op || s.last_op > executed {
                return Err(format!(
                    "client {client:x}: session {} last active at op {}, with op {executed} executed",
                    s.session, s.last_op
                ));
            }
            if !self.by_activity.contains(&(s.last_op, *client)) {
                return Err(format!("client {client:x} is missing from the eviction order"));
            }
        }
        let latest = self.sessions.values().map(|s| s.last_op).max();
        self.sound_from.set(latest.unwrap_or(0));
        Ok(())
    }

    fn insert(&mut self, client: ClientId, session: Session) {
        self.sound_from.forget();
        self.by_activity.insert((session.last_op, client));
        self.sessions.insert(client, session);
    }

    fn evict_oldest(&mut self) {
        self.sound_from.forget();
        if let Some((_, client)) = self.by_activity.pop_first() {
            self.sessions.remove(&client);
        }
    }
}

/// A repeat of a session's latest request is a duplicate only with the
/// same body; with another it is refused.
fn same_body_or_refused(s: &Session, request: &Request) -> Outcome {
    if checksum(&request.payload) == s.body {
        Outcome::Duplicate { op: s.last_op }
    } else {
        Outcome::Refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(client: u128, session: Op, request: u64) -> Request {
        Request {
            client,
            session,
            request,
            origin: 0,
            payload: vec![],
        }
    }

    #[test]
    fn check_finds_sessions_ahead_of_execution_and_a_broken_eviction_order() {
        let mut table = ClientTable::new(2);
        table.execute(3, &req(1, 0, 0));
        table.execute(5, &req(1, 3, 1));
        assert_eq!(table.check(5), Ok(()));
        assert!(table
            .check(4)
            .unwrap_err()
            .contains("last active at op 5, with op 4 executed"));
        let mut unordered = table.clone();
        unordered.by_activity.clear();
        assert!(unordered.check(5).unwrap_err().contains("eviction order"));
        let mut crowded = table.clone();
        crowded.capacity = 0;
        assert!(crowded.check(5).unwrap_err().contains("more than its 0"));
    }

    /// A table that passed is walked again once it changes or once the
    /// executed op goes below its latest activity.
    #[test]
    fn check_finds_a_break_made_after_a_check_that_passed() {
        let mut table = ClientTable::new(2);
        table.execute(3, &req(1, 0, 0));
        assert_eq!(table.check(3), Ok(()));
        assert_eq!(table.check(4), Ok(()));
        table.execute(5, &req(1, 3, 1));
        assert!(table
            .check(4)
            .unwrap_err()
            .contains("last active at op 5, with op 4 executed"));
        assert_eq!(table.check(5), Ok(()));
        assert!(table.check(3).unwrap_err().contains("with op 3 executed"));
        table.execute(6, &req(2, 0, 0));
        table.execute(7, &req(3, 0, 0));
        assert_eq!(table.check(7), Ok(()));
        table.capacity = 1;
        table.execute(8, &req(4, 0, 0));
        assert!(table.check(8).unwrap_err().contains("more than its 1"));
    }

    #[test]
    fn executes_once_and_reports_duplicates() {
        let mut t = ClientTable::new(8);
        assert_eq!(t.execute(1, &req(9, 0, 0)), Outcome::Registered { session: 1 });
        assert_eq!(t.execute(2, &req(9, 1, 1)), Outcome::Executed);
        assert_eq!(t.execute(3, &req(9, 1, 1)), Outcome::Duplicate { op: 2 });
        assert_eq!(t.settled(&req(9, 1, 1)), Some(Outcome::Duplicate { op: 2 }));
        assert_eq!(t.settled(&req(9, 1, 2)), None);
        assert_eq!(t.execute(4, &req(9, 1, 2)), Outcome::Executed);
        assert_eq!(t.execute(5, &req(9, 1, 1)), Outcome::Duplicate { op: 0 });
    }

    #[test]
    fn the_latest_request_with_another_body_is_refused() {
        let mut t = ClientTable::new(8);
        t.execute(1, &req(9, 0, 0));
        assert_eq!(t.execute(2, &req(9, 1, 1)), Outcome::Executed);
        let mut other = req(9, 1, 1);
        other.payload = vec![7];
        assert_eq!(t.settled(&other), Some(Outcome::Refused));
        assert_eq!(t.execute(3, &other), Outcome::Refused);
        // Refusing changes nothing: the original is still the duplicate.
        assert_eq!(t.execute(4, &req(9, 1, 1)), Outcome::Duplicate { op: 2 });
        let u = ClientTable::decode(8, &t.encode()).unwrap();
        assert_eq!(u.settled(&other), Some(Outcome::Refused));
    }

    #[test]
    fn a_restarted_client_with_a_new_session_is_not_a_duplicate() {
        let mut t = ClientTable::new(8);
        t.execute(1, &req(9, 0, 0));
        t.execute(2, &req(9, 1, 1));
        // The same id with an unknown session is refused, not silently deduplicated.
        assert_eq!(t.execute(3, &req(9, 7, 1)), Outcome::Evicted);
    }

    #[test]
    fn encodes_and_decodes_to_the_same_table() {
        let mut t = ClientTable::new(8);
        t.execute(1, &req(9, 0, 0));
        t.execute(2, &req(3, 0, 0));
        t.execute(3, &req(9, 1, 1));
        let bytes = t.encode();
        let mut u = ClientTable::decode(8, &bytes).unwrap();
        assert_eq!(u.encode(), bytes);
        assert_eq!(u.execute(4, &req(9, 1, 1)), Outcome::Duplicate { op: 3 });
        assert!(ClientTable::decode(8, &[0xff, 0xff]).is_none());
    }

    #[test]
    fn eviction_is_least_recently_active_then_lowest_id() {
        let mut t = ClientTable::new(2);
        t.execute(1, &req(1, 0, 0));
        t.execute(2, &req(2, 0, 0));
        t.execute(3, &req(1, 1, 1)); // client 1 active again; client 2 is now the oldest
        t.execute(4, &req(3, 0, 0)); // evicts client 2
        assert_eq!(t.len(), 2);
        assert_eq!(t.execute(5, &req(2, 2, 1)), Outcome::Evicted);
        assert_eq!(t.execute(6, &req(1, 1, 2)), Outcome::Executed);
    }

    #[test]
    fn evicted_client_retrying_an_executed_request_is_refused_not_rerun() {
        let mut t = ClientTable::new(1);
        t.execute(1, &req(1, 0, 0));
        assert_eq!(t.execute(2, &req(1, 1, 1)), Outcome::Executed);
        t.execute(3, &req(2, 0, 0)); // evicts client 1
        assert_eq!(t.execute(4, &req(1, 1, 1)), Outcome::Evicted);
    }
}
