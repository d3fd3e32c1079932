//! The supernode's part in name registration and lookup (`registry.rs`
//! has the rules): coordinating a client's claim, voting, holding and
//! re-replicating name records, answering lookups.

use super::SupernodeState;
use crate::account::follow_rotations;
use crate::membership::Membership;
use crate::node::{Event, Io};
use crate::params::Params;
use crate::registry::{
    check_claim, claim_hash, current_voters_wanted, quorum, verify_certificate, verify_vote,
    voters_current, voters_plausible, votes_needed, Asker, CertificateInfo, NameQuery,
    Registration, Stored, Tally, PLAUSIBLE_REACH,
};
use crate::time::Instant;
use peerline_proto::{
    Addr, BoundedVec, Contact, Message, NameCertificate, NameClaim, NameOutcome, NameRefusal,
    NameVote, NodeId, NAME_ROTATIONS_MAX,
};

/// Registrations one supernode coordinates at once, and name lookups it runs.
const REGISTRATIONS_IN_FLIGHT_MAX: usize = 256;
const NAME_QUERIES_IN_FLIGHT_MAX: usize = 512;
/// Certificates set aside for voters this node does not know yet: how
/// many names, and for how long.
const CHALLENGERS_MAX: usize = 1_024;
const CHALLENGER_KEEP_MS: u64 = 3_600_000;
/// Retry hint after a registration found no decision, before jitter.
const UNDECIDED_RETRY_MS: u64 = 2_000;

impl SupernodeState {
    /// Checks a certificate and that its voters could be responsible for it.
    fn checked(&self, io: &mut Io, certificate: &NameCertificate) -> Option<CertificateInfo> {
        match verify_certificate(io.mode, io.params, certificate) {
            Ok(info) if voters_plausible(&self.membership, io.params, &info) => Some(info),
            _ => {
                io.stats.signatures_rejected += 1;
                None
            }
        }
    }

    fn name_replicas(&self, io: &Io, name_key: &NodeId) -> Vec<(NodeId, Contact)> {
        replicas_of(&self.membership, io.params, name_key)
    }

    fn next_name_query_id(&mut self) -> u32 {
        self.next_query_id = self.next_query_id.wrapping_add(1);
        self.next_query_id
    }

    pub(super) fn on_name_register(&mut self, io: &mut Io, from: Addr, claim: NameClaim) {
        if !self.clients.contains_key(&from) {
            io.send(from, &Message::NotAttached);
            return;
        }
        self.coordinate(io, from, claim);
    }

    /// A registration for this device itself (a supernode has no
    /// supernode to ask: it coordinates its own claim).
    pub(crate) fn register_local(&mut self, io: &mut Io, claim: NameClaim) {
        let own = self.contact.addr;
        self.coordinate(io, own, claim);
    }

    /// Runs the vote on `claim` for `client` (our own address: this device).
    fn coordinate(&mut self, io: &mut Io, from: Addr, claim: NameClaim) {
        let name_key = match check_claim(io.mode, &claim, io.params.name_pow_bits) {
            Ok(key) => key,
            Err(reason) => {
                let outcome = NameOutcome::Refused { reason };
                return self.answer_registration(
                    io,
                    from,
                    name_key_of(&claim),
                    outcome,
                    io.now.instant,
                );
            }
        };
        let hash = claim_hash(&claim);
        if self.registrations.len() >= REGISTRATIONS_IN_FLIGHT_MAX
            || !self
                .claim_limits
                .allow(claim.body.account, hash, io.now.unix_s)
        {
            let outcome = NameOutcome::Refused {
                reason: NameRefusal::RateLimited,
            };
            return self.answer_registration(io, from, name_key, outcome, io.now.instant);
        }
        let voters = quorum(&self.membership, io.params, &name_key);
        let query_id = self.next_name_query_id();
        let registration = Registration {
            client: from,
            claim: claim.clone(),
            claim_hash: hash,
            name_key,
            voters: voters.iter().map(|(id, c)| (*id, *c, false)).collect(),
            votes_for: Vec::new(),
            votes_against: Vec::new(),
            started: io.now.instant,
            deadline: io.now.instant.add_ms(io.params.name_vote_timeout_ms),
        };
        self.registrations.insert(query_id, registration);
        for (id, contact) in voters {
            if id == self.node_id {
                self.request_vote(io, name_key, claim.clone(), (contact.addr, query_id));
            } else {
                io.send(
                    contact.addr,
                    &Message::NameVoteRequest {
                        query_id,
                        claim: claim.clone(),
                    },
                );
            }
        }
    }

    /// This node's vote on a name (casting one for `claim` if it has none),
    /// and the name's record when it holds one.
    fn own_vote(
        &mut self,
        io: &mut Io,
        name_key: NodeId,
        claim: &NameClaim,
    ) -> (Option<NameVote>, Option<Box<NameCertificate>>) {
        let certificate = io.names.record(&name_key).cloned().map(Box::new);
        let vote = io.names.vote(
            &io.identity.keypair,
            self.contact,
            name_key,
            claim,
            io.now.unix_s,
            io.params.name_vote_hold_s,
        );
        (vote, certificate)
    }

    pub(super) fn on_name_vote_request(
        &mut self,
        io: &mut Io,
        from: Addr,
        query_id: u32,
        claim: NameClaim,
    ) {
        let Ok(name_key) = check_claim(io.mode, &claim, io.params.name_pow_bits) else {
            io.stats.signatures_rejected += 1;
            return;
        };
        // Only a supernode that could be responsible for the name votes on it.
        let reach = PLAUSIBLE_REACH * io.params.name_quorum_len;
        if self
            .membership
            .surely_outside_closest(&name_key, &self.node_id, reach)
        {
            io.send(
                from,
                &Message::NameVoteReply {
                    query_id,
                    vote: None,
                    certificate: None,
                },
            );
            return;
        }
        self.request_vote(io, name_key, claim, (from, query_id));
    }

    /// Answers at once when this node decided the name already; otherwise
    /// the claim joins the name's vote window.
    fn request_vote(&mut self, io: &mut Io, name_key: NodeId, claim: NameClaim, asker: Asker) {
        let (now_unix_s, hold_s) = (io.now.unix_s, io.params.name_vote_hold_s);
        if io.names.decided(&name_key, now_unix_s, hold_s) {
            let (vote, certificate) = self.own_vote(io, name_key, &claim);
            return self.answer_vote(io, asker, vote, certificate);
        }
        let due = io.now.instant.add_ms(io.params.name_vote_window_ms);
        if !self.vote_windows.add(name_key, claim, asker, due) {
            // No room to wait: no vote (the coordinator counts it as silence).
            self.answer_vote(io, asker, None, None);
        }
    }

    /// Votes on every name whose window closed, and answers its askers.
    fn decide_votes(&mut self, io: &mut Io) {
        for (name_key, claim, askers) in self.vote_windows.take_due(io.now.instant) {
            let (vote, certificate) = self.own_vote(io, name_key, &claim);
            for asker in askers {
                self.answer_vote(io, asker, vote.clone(), certificate.clone());
            }
        }
    }

    fn answer_vote(
        &mut self,
        io: &mut Io,
        (to, query_id): Asker,
        vote: Option<NameVote>,
        certificate: Option<Box<NameCertificate>>,
    ) {
        if to == self.contact.addr {
            return self.on_name_vote_reply(io, to, query_id, vote, certificate);
        }
        let reply = Message::NameVoteReply {
            query_id,
            vote,
            certificate,
        };
        io.send(to, &reply);
    }

    pub(super) fn on_name_vote_reply(
        &mut self,
        io: &mut Io,
        from: Addr,
        query_id: u32,
        vote: Option<NameVote>,
        certificate: Option<Box<NameCertificate>>,
    ) {
        let Some(registration) = self.registrations.get(&query_id) else {
            return;
        };
        let Some(slot) = registration
            .voters
            .iter()
            .position(|(_, contact, answered)| contact.addr == from && !answered)
        else {
            return;
        };
        let (voter_id, voter, _) = registration.voters[slot];
        let (name_key, hash) = (registration.name_key, registration.claim_hash);
        // A record for the name decides at once: ours, or someone else's.
        if let Some(certificate) = certificate {
            if let Some(info) = self.checked(io, &certificate) {
                if info.name_key == name_key {
                    self.keep_name(io, certificate.clone(), info.clone());
                    let outcome = if info.claim_hash == hash {
                        NameOutcome::Registered { certificate }
                    } else {
                        NameOutcome::Taken { owner: info.owner }
                    };
                    return self.finish_registration(io, query_id, outcome);
                }
            }
        }
        let counted = vote.filter(|vote| {
            vote.body.name_key == name_key
                && vote.body.voter.key == voter.key
                && verify_vote(io.mode, vote, io.params.id_puzzle_difficulty_bits)
                    .is_ok_and(|id| id == voter_id)
        });
        let Some(registration) = self.registrations.get_mut(&query_id) else {
            return;
        };
        registration.voters[slot].2 = true;
        match counted {
            Some(vote) if vote.body.claim_hash == hash => registration.votes_for.push(vote),
            Some(vote) => registration.votes_against.push(vote.body.account),
            None => {}
        }
        match registration.tally(votes_needed(io.params)) {
            Tally::Pending => {}
            Tally::Certified => self.certify(io, query_id),
            Tally::Taken(owner) => {
                self.finish_registration(io, query_id, NameOutcome::Taken { owner })
            }
            Tally::Split => {
                let retry_after_ms = undecided_retry_ms(io);
                self.finish_registration(io, query_id, NameOutcome::Unavailable { retry_after_ms });
            }
        }
    }

    fn certify(&mut self, io: &mut Io, query_id: u32) {
        let Some(registration) = self.registrations.get(&query_id) else {
            return;
        };
        let certificate = Box::new(registration.certificate());
        match verify_certificate(io.mode, io.params, &certificate) {
            Ok(info) => {
                self.keep_name(io, certificate.clone(), info);
                self.push_name(io, &certificate);
                self.finish_registration(io, query_id, NameOutcome::Registered { certificate });
            }
            Err(error) => {
                // Every vote was checked on arrival; a failure here is a bug.
                debug_assert!(false, "a certificate we assembled does not verify: {error}");
                let retry_after_ms = undecided_retry_ms(io);
                self.finish_registration(io, query_id, NameOutcome::Unavailable { retry_after_ms });
            }
        }
    }

    fn finish_registration(&mut self, io: &mut Io, query_id: u32, outcome: NameOutcome) {
        if let Some(registration) = self.registrations.remove(&query_id) {
            let (client, name_key) = (registration.client, registration.name_key);
            self.answer_registration(io, client, name_key, outcome, registration.started);
        }
    }

    /// Tells the client how its registration ended — or this device, when
    /// it was its own.
    fn answer_registration(
        &mut self,
        io: &mut Io,
        client: Addr,
        name_key: NodeId,
        outcome: NameOutcome,
        started: Instant,
    ) {
        if client != self.contact.addr {
            return io.send(client, &Message::NameResult { name_key, outcome });
        }
        let elapsed_ms = io.now.instant.since_ms(started);
        io.event(crate::client::outcome_event(name_key, outcome, elapsed_ms));
    }

    /// Sends a record to every supernode that should hold it.
    fn push_name(&mut self, io: &mut Io, certificate: &NameCertificate) {
        let Ok(info) = verify_certificate(io.mode, io.params, certificate) else {
            return;
        };
        for (id, contact) in self.name_replicas(io, &info.name_key) {
            if id != self.node_id {
                io.send(
                    contact.addr,
                    &Message::NameStore {
                        certificate: Box::new(certificate.clone()),
                    },
                );
            }
        }
    }

    /// Keeps a checked record; when the one held beats it, tells `from`
    /// (which offered the loser) about the winner.
    fn keep_name(
        &mut self,
        io: &mut Io,
        certificate: Box<NameCertificate>,
        info: CertificateInfo,
    ) -> Stored {
        let held = io.names.record_info(&info.name_key);
        let held_claim = held.map(|h| h.claim_hash);
        let replaces_another = held_claim.is_some_and(|hash| hash != info.claim_hash);
        let wanted = current_voters_wanted(io.params, replaces_another);
        if held_claim != Some(info.claim_hash)
            && voters_current(&self.membership, &self.departed, &info) < wanted
        {
            // Not answered with our record: two holders that each refuse
            // the other's would answer each other for ever. Kept aside
            // instead, when it would win: its voters may only be unknown
            // for now (a partition healing), and it is checked again on
            // every sweep.
            io.stats.signatures_rejected += 1;
            let wins = held.is_none_or(|h| info.beats(h));
            if wins {
                self.set_aside(io, certificate, info);
            }
            return Stored::Refused;
        }
        io.names.store(certificate, info)
    }

    /// Keeps a certificate refused for unknown voters for a later look
    /// (the best one per name, a bounded number of names, for a while).
    fn set_aside(&mut self, io: &mut Io, certificate: Box<NameCertificate>, info: CertificateInfo) {
        let now = io.now.instant;
        self.name_challengers
            .retain(|_, (_, _, at)| now.since_ms(*at) < CHALLENGER_KEEP_MS);
        if let Some((_, held, _)) = self.name_challengers.get(&info.name_key) {
            if !info.beats(held) {
                return;
            }
        } else if self.name_challengers.len() >= CHALLENGERS_MAX {
            return;
        }
        self.name_challengers
            .insert(info.name_key, (certificate, info, now));
    }

    /// Takes the certificates set aside whose voters are now known.
    fn retry_challengers(&mut self, io: &mut Io) {
        let keys: Vec<NodeId> = self.name_challengers.keys().copied().collect();
        for key in keys {
            let Some((certificate, info, at)) = self.name_challengers.remove(&key) else {
                continue;
            };
            let held = io.names.record_info(&key);
            let replaces_another = held.is_some_and(|h| h.claim_hash != info.claim_hash);
            if held.is_some_and(|h| !info.beats(h)) {
                continue;
            }
            let wanted = current_voters_wanted(io.params, replaces_another);
            if voters_current(&self.membership, &self.departed, &info) >= wanted {
                io.names.store(certificate, info);
            } else if io.now.instant.since_ms(at) < CHALLENGER_KEEP_MS {
                self.name_challengers.insert(key, (certificate, info, at));
            }
        }
    }

    pub(super) fn on_name_store(
        &mut self,
        io: &mut Io,
        from: Addr,
        certificate: Box<NameCertificate>,
    ) {
        let Some(info) = self.checked(io, &certificate) else {
            return;
        };
        let reach = PLAUSIBLE_REACH * io.params.name_quorum_len;
        let outside = self
            .membership
            .surely_outside_closest(&info.name_key, &self.node_id, reach);
        if self.clients.contains_key(&from) {
            // An owner keeping its record alive (`client/own.rs`): to the
            // replicas, which keep the winner of a conflict as always.
            if !outside {
                self.keep_name(io, certificate.clone(), info);
            }
            return self.push_name(io, &certificate);
        }
        if outside {
            return;
        }
        if let Stored::Lost(winner) = self.keep_name(io, certificate, info) {
            io.send(
                from,
                &Message::NameStore {
                    certificate: winner,
                },
            );
        }
    }

    pub(super) fn on_name_lookup(
        &mut self,
        io: &mut Io,
        from: Addr,
        query_id: u32,
        name_key: NodeId,
    ) {
        if !self.clients.contains_key(&from) {
            io.send(from, &Message::NotAttached);
            return;
        }
        self.find_name(io, from, query_id, name_key);
    }

    /// A lookup for this device itself.
    pub(crate) fn lookup_name_local(&mut self, io: &mut Io, name_key: NodeId) {
        let own = self.contact.addr;
        self.find_name(io, own, 0, name_key);
    }

    /// Asks the name's replicas and answers `client` (our own address:
    /// this device) with the winning record.
    fn find_name(&mut self, io: &mut Io, from: Addr, query_id: u32, name_key: NodeId) {
        if self.name_queries.len() >= NAME_QUERIES_IN_FLIGHT_MAX {
            let now = io.now.instant;
            return self.answer_lookup(io, from, query_id, name_key, None, now);
        }
        let mut query = NameQuery {
            client: from,
            client_query_id: query_id,
            name_key,
            best: None,
            outstanding: Vec::new(),
            started: io.now.instant,
            deadline: io.now.instant.add_ms(io.params.find_request_timeout_ms),
        };
        if let (Some(certificate), Some(info)) =
            (io.names.record(&name_key), io.names.record_info(&name_key))
        {
            query.consider(Box::new(certificate.clone()), info.clone());
        }
        let own_query_id = self.next_name_query_id();
        for (id, contact) in self.name_replicas(io, &name_key) {
            if id != self.node_id {
                query.outstanding.push(contact.addr);
                io.send(
                    contact.addr,
                    &Message::NameFind {
                        query_id: own_query_id,
                        name_key,
                    },
                );
            }
        }
        self.name_queries.insert(own_query_id, query);
        self.finish_name_query_if_done(io, own_query_id);
    }

    pub(super) fn on_name_find(
        &mut self,
        io: &mut Io,
        from: Addr,
        query_id: u32,
        name_key: NodeId,
    ) {
        let certificate = io.names.record(&name_key).cloned().map(Box::new);
        io.send(
            from,
            &Message::NameFindResponse {
                query_id,
                certificate,
            },
        );
    }

    pub(super) fn on_name_find_response(
        &mut self,
        io: &mut Io,
        from: Addr,
        query_id: u32,
        certificate: Option<Box<NameCertificate>>,
    ) {
        let Some(query) = self.name_queries.get_mut(&query_id) else {
            return;
        };
        let Some(index) = query.outstanding.iter().position(|addr| *addr == from) else {
            return;
        };
        query.outstanding.swap_remove(index);
        if let Some(certificate) = certificate {
            if let Some(info) = self.checked(io, &certificate) {
                // Learning a record (or a better one) on the way is a repair.
                if let Stored::Lost(winner) = self.keep_name(io, certificate.clone(), info.clone())
                {
                    io.send(
                        from,
                        &Message::NameStore {
                            certificate: winner,
                        },
                    );
                }
                if let Some(query) = self.name_queries.get_mut(&query_id) {
                    query.consider(certificate, info);
                }
            }
        }
        self.finish_name_query_if_done(io, query_id);
    }

    fn finish_name_query_if_done(&mut self, io: &mut Io, query_id: u32) {
        let done = self
            .name_queries
            .get(&query_id)
            .is_some_and(|q| q.outstanding.is_empty() || q.deadline <= io.now.instant);
        if !done {
            return;
        }
        if let Some(query) = self.name_queries.remove(&query_id) {
            let certificate = query.best.map(|(certificate, _)| certificate);
            let (client, client_query_id) = (query.client, query.client_query_id);
            self.answer_lookup(
                io,
                client,
                client_query_id,
                query.name_key,
                certificate,
                query.started,
            );
        }
    }

    fn answer_lookup(
        &mut self,
        io: &mut Io,
        client: Addr,
        query_id: u32,
        name_key: NodeId,
        certificate: Option<Box<NameCertificate>>,
        started: Instant,
    ) {
        // The rotations the owner made since: the name follows them.
        let moved = match &certificate {
            Some(certificate) => io
                .accounts
                .rotations_from(&certificate.claim.body.account, NAME_ROTATIONS_MAX),
            None => Vec::new(),
        };
        if client != self.contact.addr {
            let answer = Message::NameLookupAnswer {
                query_id,
                name_key,
                certificate,
                moved: BoundedVec::truncating(moved),
            };
            return io.send(client, &answer);
        }
        let owner = certificate.as_ref().map(|certificate| {
            let tolerance_s = io.params.clock_skew_tolerance_s;
            let account = certificate.claim.body.account;
            follow_rotations(io.mode, account, &moved, io.now.unix_s, tolerance_s)
        });
        io.event(Event::NameLookupDone {
            name_key,
            result: Ok(certificate),
            owner,
            elapsed_ms: io.now.instant.since_ms(started),
        });
    }

    /// Registrations past their vote deadline end undecided; lookups past
    /// theirs answer with what they have.
    pub(super) fn expire_names(&mut self, io: &mut Io) {
        self.decide_votes(io);
        let now = io.now.instant;
        let late: Vec<u32> = self
            .registrations
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for query_id in late {
            let retry_after_ms = undecided_retry_ms(io);
            self.finish_registration(io, query_id, NameOutcome::Unavailable { retry_after_ms });
        }
        let late: Vec<u32> = self
            .name_queries
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for query_id in late {
            self.finish_name_query_if_done(io, query_id);
        }
    }

    pub(super) fn names_deadline(&self) -> Instant {
        let registrations = self.registrations.values().map(|r| r.deadline);
        let queries = self.name_queries.values().map(|q| q.deadline);
        registrations
            .chain(queries)
            .min()
            .unwrap_or(Instant::NEVER)
            .min(self.vote_windows.next_deadline())
    }

    /// Pushes each record this node holds to its replica set when that
    /// set changed (members joined or left), so records outlive their
    /// holders; releases undecided votes past their hold.
    pub(super) fn re_replicate_names(&mut self, io: &mut Io) {
        io.names
            .release_votes(io.now.unix_s, io.params.name_vote_hold_s);
        self.departed.expire(io.now.instant);
        self.retry_challengers(io);
        let due = {
            let this = &*self;
            let params = io.params;
            let now_unix_s = io.now.unix_s;
            io.names
                .due_pushes(now_unix_s, |key| replicas_of(&this.membership, params, key))
        };
        for (certificate, targets) in due {
            for (id, contact) in targets {
                if id != self.node_id {
                    io.send(
                        contact.addr,
                        &Message::NameStore {
                            certificate: certificate.clone(),
                        },
                    );
                }
            }
        }
    }
}

/// The supernodes a name record is kept on: the quorum that votes on it
/// and the record replicas.
fn replicas_of(
    membership: &Membership,
    params: &Params,
    name_key: &NodeId,
) -> Vec<(NodeId, Contact)> {
    let mut targets = quorum(membership, params, name_key);
    for member in membership.closest(name_key, params.replication_k) {
        if !targets.iter().any(|(id, _)| *id == member.id) {
            targets.push((member.id, member.update.contact));
        }
    }
    targets
}

/// The key of a claim's name as written (for answering a refused claim).
fn name_key_of(claim: &NameClaim) -> NodeId {
    std::str::from_utf8(claim.body.name.as_slice())
        .ok()
        .and_then(|text| crate::names::normalize(text).ok())
        .map_or(NodeId::default(), |name| name.key())
}

fn undecided_retry_ms(io: &mut Io) -> u32 {
    (UNDECIDED_RETRY_MS + io.jitter_ms(UNDECIDED_RETRY_MS)) as u32
}
