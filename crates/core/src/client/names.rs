//! The client's part in names: registering a claim through an attached
//! supernode (retrying while the network has no decision) and looking
//! names up. The rules are in `registry.rs`.

use super::ClientState;
use crate::account::follow_rotations;
use crate::node::{Event, Io};
use crate::registry::{claim_hash, verify_certificate};
use crate::time::Instant;
use peerline_proto::{
    Message, NameCertificate, NameClaim, NameOutcome, NameRefusal, NodeId, RootRotation,
};

/// Registrations and name lookups one client keeps open at once.
const REGISTRATIONS_MAX: usize = 4;
const NAME_LOOKUPS_MAX: usize = 16;
/// How long a registration keeps trying before giving up as unavailable:
/// longer than a voter holds an undecided vote (`name_vote_hold_s`), so a
/// split vote is released and decided again while the claimants still try.
const REGISTER_PATIENCE_MS: u64 = 900_000;
/// Wait for a coordinator's answer (it waits `name_vote_timeout_ms` for votes).
const REGISTER_ANSWER_MS: u64 = 8_000;
/// Longest wait between tries, whatever the hint says.
const REGISTER_RETRY_MAX_MS: u64 = 30_000;

/// Why a name operation ended without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameFailure {
    /// The network turned the claim away (see the reason).
    Refused(NameRefusal),
    /// No decision after every try: voters unreachable, or votes split.
    Unavailable,
    /// The device is not attached to any supernode.
    NotAttached,
    /// Too many operations open at once.
    TooMany,
}

#[derive(Clone, Debug)]
struct PendingRegistration {
    name_key: NodeId,
    claim: NameClaim,
    tries: u32,
    started: Instant,
    /// When the answer is overdue, or when to try again.
    deadline: Instant,
    via: Option<peerline_proto::PublicKey>,
}

#[derive(Clone, Debug)]
struct PendingNameLookup {
    query_id: u32,
    name_key: NodeId,
    started: Instant,
    deadline: Instant,
    via: peerline_proto::PublicKey,
    retried: bool,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct ClientNames {
    registrations: Vec<PendingRegistration>,
    lookups: Vec<PendingNameLookup>,
}

impl ClientNames {
    pub(crate) fn next_deadline(&self) -> Instant {
        let registrations = self.registrations.iter().map(|r| r.deadline);
        let lookups = self.lookups.iter().map(|l| l.deadline);
        registrations.chain(lookups).min().unwrap_or(Instant::NEVER)
    }
}

/// The event that tells the application how a registration ended.
pub(crate) fn outcome_event(name_key: NodeId, outcome: NameOutcome, elapsed_ms: u64) -> Event {
    match outcome {
        NameOutcome::Registered { certificate } => Event::NameRegistered {
            name_key,
            certificate,
            elapsed_ms,
        },
        NameOutcome::Taken { owner } => Event::NameTaken {
            name_key,
            owner,
            elapsed_ms,
        },
        NameOutcome::Unavailable { .. } => Event::NameFailed {
            name_key,
            reason: NameFailure::Unavailable,
        },
        NameOutcome::Refused { reason } => Event::NameFailed {
            name_key,
            reason: NameFailure::Refused(reason),
        },
    }
}

impl ClientState {
    /// Registers `claim` (made with the account's root key by
    /// `registry::make_claim`); ends in `NameRegistered`, `NameTaken` or
    /// `NameFailed`.
    pub(crate) fn register_name(&mut self, io: &mut Io, claim: NameClaim, name_key: NodeId) {
        let failure = if self.names.registrations.len() >= REGISTRATIONS_MAX {
            Some(NameFailure::TooMany)
        } else if !self.is_attached() {
            Some(NameFailure::NotAttached)
        } else {
            None
        };
        if let Some(reason) = failure {
            return io.event(Event::NameFailed { name_key, reason });
        }
        self.names.registrations.push(PendingRegistration {
            name_key,
            claim,
            tries: 0,
            started: io.now.instant,
            deadline: io.now.instant,
            via: None,
        });
        self.try_registrations(io);
    }

    /// Sends every registration whose deadline came (first try, retry, or
    /// an answer overdue), through an attached supernode other than the
    /// last one when there is one.
    fn try_registrations(&mut self, io: &mut Io) {
        let now = io.now.instant;
        if self.names.registrations.iter().all(|r| r.deadline > now) {
            return;
        }
        let attached = self.attached();
        let mut index = 0;
        while index < self.names.registrations.len() {
            let registration = &mut self.names.registrations[index];
            if registration.deadline > now {
                index += 1;
                continue;
            }
            if now.since_ms(registration.started) >= REGISTER_PATIENCE_MS {
                let name_key = registration.name_key;
                self.names.registrations.swap_remove(index);
                let reason = NameFailure::Unavailable;
                io.event(Event::NameFailed { name_key, reason });
                continue;
            }
            if attached.is_empty() {
                // Between attachments (a supernode of ours died): wait.
                registration.deadline = now.add_ms(REGISTER_ANSWER_MS / 4);
                index += 1;
                continue;
            }
            let via = attached
                .iter()
                .find(|c| Some(c.key) != registration.via)
                .unwrap_or(&attached[0]);
            registration.tries += 1;
            registration.via = Some(via.key);
            registration.deadline = now.add_ms(REGISTER_ANSWER_MS);
            io.send(
                via.addr,
                &Message::NameRegister {
                    claim: registration.claim.clone(),
                },
            );
            index += 1;
        }
    }

    pub(crate) fn on_name_result(&mut self, io: &mut Io, name_key: NodeId, outcome: NameOutcome) {
        let Some(index) = self
            .names
            .registrations
            .iter()
            .position(|r| r.name_key == name_key)
        else {
            return;
        };
        let registration = &mut self.names.registrations[index];
        let elapsed_ms = io.now.instant.since_ms(registration.started);
        match &outcome {
            NameOutcome::Registered { certificate } => {
                let ours = verify_certificate(io.mode, io.params, certificate)
                    .is_ok_and(|info| info.claim_hash == claim_hash(&registration.claim));
                if !ours {
                    io.stats.signatures_rejected += 1;
                    return;
                }
                io.own.keep_name(io.now.instant, (**certificate).clone());
            }
            NameOutcome::Unavailable { retry_after_ms } => {
                let wait_ms = (*retry_after_ms as u64).min(REGISTER_RETRY_MAX_MS);
                let wait_ms = wait_ms + io.jitter_ms(wait_ms / 2 + 1);
                registration.deadline = io.now.instant.add_ms(wait_ms);
                return;
            }
            NameOutcome::Taken { .. } | NameOutcome::Refused { .. } => {}
        }
        let event = outcome_event(name_key, outcome, elapsed_ms);
        self.names.registrations.swap_remove(index);
        io.event(event);
    }

    /// Looks up who owns the name with this key; ends in `NameLookupDone`.
    pub(crate) fn lookup_name(&mut self, io: &mut Io, name_key: NodeId) {
        let attached = self.attached();
        let failure = if attached.is_empty() {
            Some(NameFailure::NotAttached)
        } else if self.names.lookups.len() >= NAME_LOOKUPS_MAX {
            Some(NameFailure::TooMany)
        } else {
            None
        };
        if let Some(failure) = failure {
            return io.event(Event::NameLookupDone {
                name_key,
                result: Err(failure),
                owner: None,
                elapsed_ms: 0,
            });
        }
        let via = attached[io.rng_index(attached.len())];
        self.next_query_id = self.next_query_id.wrapping_add(1);
        let query_id = self.next_query_id;
        self.names.lookups.push(PendingNameLookup {
            query_id,
            name_key,
            started: io.now.instant,
            deadline: io.now.instant.add_ms(io.params.lookup_timeout_ms),
            via: via.key,
            retried: false,
        });
        io.send(via.addr, &Message::NameLookup { query_id, name_key });
    }

    pub(crate) fn on_name_lookup_response(
        &mut self,
        io: &mut Io,
        query_id: u32,
        name_key: NodeId,
        certificate: Option<Box<NameCertificate>>,
        moved: &[RootRotation],
    ) {
        let Some(index) = self
            .names
            .lookups
            .iter()
            .position(|l| l.query_id == query_id && l.name_key == name_key)
        else {
            return;
        };
        let lookup = self.names.lookups.swap_remove(index);
        // Check what the supernode handed us: a valid certificate for this name.
        let certificate = certificate.filter(|certificate| {
            verify_certificate(io.mode, io.params, certificate)
                .is_ok_and(|info| info.name_key == name_key)
        });
        // The name follows its account's rotations, each one checked.
        let owner = certificate.as_ref().map(|certificate| {
            let tolerance_s = io.params.clock_skew_tolerance_s;
            let account = certificate.claim.body.account;
            follow_rotations(io.mode, account, moved, io.now.unix_s, tolerance_s)
        });
        io.event(Event::NameLookupDone {
            name_key,
            result: Ok(certificate),
            owner,
            elapsed_ms: io.now.instant.since_ms(lookup.started),
        });
    }

    pub(crate) fn names_timeout(&mut self, io: &mut Io) {
        self.try_registrations(io);
        let now = io.now.instant;
        if self.names.lookups.iter().all(|l| l.deadline > now) {
            // The common case: every wake-up of every client comes here.
            return;
        }
        let attached = self.attached();
        let mut index = 0;
        while index < self.names.lookups.len() {
            let lookup = &mut self.names.lookups[index];
            if lookup.deadline > now {
                index += 1;
                continue;
            }
            match attached.iter().find(|c| c.key != lookup.via) {
                Some(contact) if !lookup.retried => {
                    lookup.retried = true;
                    lookup.via = contact.key;
                    lookup.deadline = now.add_ms(io.params.lookup_timeout_ms);
                    let (query_id, name_key) = (lookup.query_id, lookup.name_key);
                    io.send(contact.addr, &Message::NameLookup { query_id, name_key });
                    index += 1;
                }
                _ => {
                    let lookup = self.names.lookups.swap_remove(index);
                    io.event(Event::NameLookupDone {
                        name_key: lookup.name_key,
                        result: Err(NameFailure::Unavailable),
                        owner: None,
                        elapsed_ms: now.since_ms(lookup.started),
                    });
                }
            }
        }
    }
}
