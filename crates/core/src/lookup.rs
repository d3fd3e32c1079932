//! Iterative directory lookups run by a supernode (Kademlia-style, alpha
//! parallel requests per round). With full membership the first round asks
//! the replicas themselves, so most lookups take one hop; with a capped view
//! later rounds follow the closer contacts each answer carries.

use crate::time::Instant;
use peerline_proto::{Addr, Contact, NodeId, PresenceRecord};

/// Candidates a lookup remembers.
pub const LOOKUP_CANDIDATES_MAX: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CandidateState {
    Fresh,
    Asked,
    Answered,
    Failed,
}

#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: NodeId,
    pub contact: Contact,
    pub state: CandidateState,
}

/// Why the lookup runs.
#[derive(Clone, Debug)]
pub enum Purpose {
    /// A client asked; answer it with the record.
    Client { addr: Addr, query_id: u32 },
    /// Find the replica set and store this record there.
    Replicate { record: Box<PresenceRecord> },
}

#[derive(Clone, Debug)]
pub struct Lookup {
    pub purpose: Purpose,
    pub key: NodeId,
    pub candidates: Vec<Candidate>,
    pub round: u8,
    pub outstanding: u8,
    pub best: Option<Box<PresenceRecord>>,
    pub round_deadline: Instant,
}

impl Lookup {
    pub fn new(purpose: Purpose, key: NodeId) -> Lookup {
        Lookup {
            purpose,
            key,
            candidates: Vec::new(),
            round: 0,
            outstanding: 0,
            best: None,
            round_deadline: Instant::NEVER,
        }
    }

    /// Adds a contact (deduplicated), keeping the closest few, sorted.
    pub fn offer(&mut self, id: NodeId, contact: Contact) {
        if self.candidates.iter().any(|c| c.id == id) {
            return;
        }
        let distance = id.distance(&self.key);
        let at = self
            .candidates
            .partition_point(|c| c.id.distance(&self.key) < distance);
        if at >= LOOKUP_CANDIDATES_MAX {
            return;
        }
        self.candidates.insert(
            at,
            Candidate {
                id,
                contact,
                state: CandidateState::Fresh,
            },
        );
        self.candidates.truncate(LOOKUP_CANDIDATES_MAX);
    }

    /// Takes the record if it is newer than the best seen.
    pub fn consider(&mut self, record: PresenceRecord) {
        let newer = self
            .best
            .as_ref()
            .is_none_or(|b| record.body.sequence > b.body.sequence);
        if newer {
            self.best = Some(Box::new(record));
        }
    }

    /// Marks and returns the (up to `alpha`) closest candidates not yet asked.
    pub fn next_targets(&mut self, alpha: usize) -> Vec<Contact> {
        let mut targets = Vec::with_capacity(alpha);
        for candidate in self.candidates.iter_mut() {
            if targets.len() == alpha {
                break;
            }
            if candidate.state == CandidateState::Fresh {
                candidate.state = CandidateState::Asked;
                targets.push(candidate.contact);
            }
        }
        targets
    }

    pub fn mark(&mut self, id: &NodeId, state: CandidateState) -> bool {
        match self
            .candidates
            .iter_mut()
            .find(|c| c.id == *id && c.state == CandidateState::Asked)
        {
            Some(candidate) => {
                candidate.state = state;
                true
            }
            None => false,
        }
    }

    /// Marks every still-asked candidate as failed (the round timed out).
    pub fn fail_outstanding(&mut self) {
        for candidate in self.candidates.iter_mut() {
            if candidate.state == CandidateState::Asked {
                candidate.state = CandidateState::Failed;
            }
        }
        self.outstanding = 0;
    }

    /// True when the `k` closest live candidates have all answered: nothing
    /// closer is left to ask.
    pub fn converged(&self, k: usize) -> bool {
        self.candidates
            .iter()
            .filter(|c| c.state != CandidateState::Failed)
            .take(k)
            .all(|c| c.state == CandidateState::Answered)
    }

    /// The `k` closest candidates that answered.
    pub fn closest_answered(&self, k: usize) -> Vec<Contact> {
        self.candidates
            .iter()
            .filter(|c| c.state == CandidateState::Answered)
            .take(k)
            .map(|c| c.contact)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerline_proto::PublicKey;

    fn contact(i: u8) -> (NodeId, Contact) {
        (
            NodeId([i; 32]),
            Contact {
                key: PublicKey([i; 32]),
                id_nonce: 0,
                addr: Addr::from_ipv4_u32(i as u32, 1),
            },
        )
    }

    #[test]
    fn candidates_stay_sorted_bounded_and_unique() {
        let mut lookup = Lookup::new(
            Purpose::Client {
                addr: Addr::default(),
                query_id: 1,
            },
            NodeId([0; 32]),
        );
        for i in (0..=60u8).rev() {
            let (id, c) = contact(i);
            lookup.offer(id, c);
            lookup.offer(id, c);
        }
        assert_eq!(lookup.candidates.len(), LOOKUP_CANDIDATES_MAX);
        assert_eq!(lookup.candidates[0].id, NodeId([0; 32]));
        let targets = lookup.next_targets(3);
        assert_eq!(targets.len(), 3);
        assert!(!lookup.converged(3));
        for i in 0..3u8 {
            assert!(lookup.mark(&NodeId([i; 32]), CandidateState::Answered));
        }
        assert!(lookup.converged(3));
        assert!(
            !lookup.mark(&NodeId([0; 32]), CandidateState::Answered),
            "answered twice"
        );
    }
}
