//! Simulated clients: register, then send one request at a time through
//! their home replica, submitting again when a reply is slow.

use vsr::{ClientId, Op, Slot, Submission};

use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct Outstanding {
    pub request: u64,
    pub payload: Vec<u8>,
    pub last_submit: u64,
}

#[derive(Clone, Debug)]
pub struct Client {
    pub id: ClientId,
    pub home: Slot,
    pub session: Option<Op>,
    pub next_request: u64,
    pub outstanding: Option<Outstanding>,
    /// Requests acknowledged as executed.
    pub completed: u64,
}

impl Client {
    pub fn new(rng: &mut Rng, home: Slot) -> Client {
        Client {
            id: rng.next_u128(),
            home,
            session: None,
            next_request: 1,
            outstanding: None,
            completed: 0,
        }
    }

    /// Starts the next request: registration first, then numbered commands.
    pub fn start(&mut self, rng: &mut Rng, payload_max: usize, now: u64) {
        debug_assert!(self.outstanding.is_none());
        let (request, payload) = match self.session {
            None => (0, Vec::new()),
            Some(_) => {
                let len = rng.range(0, payload_max as u64) as usize;
                (
                    self.next_request,
                    (0..len).map(|_| rng.next_u64() as u8).collect(),
                )
            }
        };
        self.outstanding = Some(Outstanding {
            request,
            payload,
            last_submit: now,
        });
    }

    pub fn submission(&self) -> Option<Submission> {
        let o = self.outstanding.as_ref()?;
        Some(Submission {
            client: self.id,
            session: self.session.unwrap_or(0),
            request: o.request,
            payload: o.payload.clone(),
        })
    }

    /// Forgets its identity, as a real client does when told it was evicted.
    pub fn reincarnate(&mut self, rng: &mut Rng) {
        *self = Client {
            completed: self.completed,
            ..Client::new(rng, self.home)
        };
    }
}
