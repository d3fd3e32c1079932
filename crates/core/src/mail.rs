//! Store-and-forward messaging.
//!
//! The device's side ([`MailState`]): an **outbox** that keeps every message
//! until the recipient device's signed end-to-end acknowledgement comes back
//! (re-sending with jittered back-off meanwhile, so losing every mailbox
//! replica loses nothing), and the **inbox** state that hands each message to
//! the application exactly once and in order per conversation (sender device
//! → recipient device), acknowledging cumulatively. Both are what a device
//! keeps on disk: the node holds them outside its role state, so they
//! survive restarts and role changes, and every change to them is made in
//! the same step as the event that reports it (a driver persists the two
//! together).
//!
//! The supernode's side ([`Mailbox`]): envelopes for offline or not yet
//! reached devices, kept on the supernodes that hold the recipient account's
//! presence record (so the replica that stores a message also knows where
//! the recipient is attached), bounded in total and per sender, handed out
//! in windows of [`MAIL_BATCH_MAX`] so replay after an outage is paced by
//! the recipient's own acknowledgements.

use crate::identity::{envelope_id, presence_key};
use crate::time::Instant;
use peerline_proto::{Envelope, EnvelopeId, EnvelopeKind, NodeId, PublicKey, MAIL_BATCH_MAX};
use std::collections::BTreeMap;

/// Messages a device keeps unacknowledged at once.
pub const OUTBOX_MAX: usize = 1_024;
/// Out-of-order messages held per conversation while a gap is filled.
pub const REORDER_MAX: u64 = 64;
/// Conversations a device tracks.
pub const CONVERSATIONS_MAX: usize = 65_536;

#[derive(Clone, Debug)]
pub struct OutboxEntry {
    pub envelope: Envelope,
    pub attempts: u32,
    pub next_send: Instant,
}

/// Where one inbound conversation stands.
#[derive(Clone, Debug, Default)]
pub struct Inbound {
    /// The next sequence number the application gets.
    pub next: u64,
    /// Arrived ahead of a gap (at most [`REORDER_MAX`]).
    pub waiting: BTreeMap<u64, Envelope>,
    /// When we last acknowledged, and up to where.
    pub acked: Option<(Instant, u64)>,
}

/// A device's durable messaging state.
#[derive(Clone, Debug, Default)]
pub struct MailState {
    pub outbox: Vec<OutboxEntry>,
    /// Last sequence number used per recipient device.
    pub sent_seq: BTreeMap<PublicKey, u64>,
    pub inbound: BTreeMap<PublicKey, Inbound>,
}

/// Why a message could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the outbox is full ({OUTBOX_MAX} messages await acknowledgement)")]
    OutboxFull,
    #[error("the payload is larger than {max} bytes", max = peerline_proto::PAYLOAD_LEN_MAX)]
    TooLarge,
    #[error("this node is a supernode, not a messaging device")]
    NotAClient,
}

/// What an arriving data envelope means for the application.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Deliver these, in this order (the arrival and any it unblocked).
    Deliver(Vec<Envelope>),
    /// Already delivered (a re-send): acknowledge again, deliver nothing.
    Duplicate,
    /// Held until the gap before it is filled.
    Held,
    /// Too far ahead, or too many conversations: not kept (the sender re-sends).
    Refused,
}

impl MailState {
    /// The next sequence number towards `to_device`.
    pub fn next_seq(&mut self, to_device: PublicKey) -> u64 {
        let seq = self.sent_seq.entry(to_device).or_insert(0);
        *seq += 1;
        *seq
    }

    /// An arriving data message from `from_device` with `seq`.
    pub fn arrive(&mut self, envelope: Envelope) -> Arrival {
        let from = envelope.body.from_device;
        let seq = envelope.body.seq;
        if seq == 0 {
            return Arrival::Refused;
        }
        if !self.inbound.contains_key(&from) && self.inbound.len() >= CONVERSATIONS_MAX {
            return Arrival::Refused;
        }
        let inbound = self.inbound.entry(from).or_insert(Inbound {
            next: 1,
            waiting: BTreeMap::new(),
            acked: None,
        });
        if seq < inbound.next {
            return Arrival::Duplicate;
        }
        if seq > inbound.next {
            if seq - inbound.next > REORDER_MAX {
                return Arrival::Refused;
            }
            inbound.waiting.insert(seq, envelope);
            return Arrival::Held;
        }
        let mut out = vec![envelope];
        inbound.next += 1;
        while let Some(next) = inbound.waiting.remove(&inbound.next) {
            out.push(next);
            inbound.next += 1;
        }
        Arrival::Deliver(out)
    }

    /// Everything up to this sequence number from `from_device` was delivered.
    pub fn delivered_up_to(&self, from_device: &PublicKey) -> u64 {
        self.inbound
            .get(from_device)
            .map_or(0, |i| i.next.saturating_sub(1))
    }

    /// Whether to acknowledge `from_device` now: when there is something
    /// new to acknowledge, or the last acknowledgement is old enough that it
    /// may have been lost (copies arriving together get one ack).
    pub fn should_ack(
        &mut self,
        from_device: &PublicKey,
        now: Instant,
        repeat_ms: u64,
    ) -> Option<u64> {
        let up_to = self.delivered_up_to(from_device);
        let inbound = self.inbound.get_mut(from_device)?;
        if up_to == 0 {
            return None;
        }
        let due = match inbound.acked {
            Some((at, acked)) => acked < up_to || now.since_ms(at) >= repeat_ms,
            None => true,
        };
        if due {
            inbound.acked = Some((now, up_to));
        }
        due.then_some(up_to)
    }

    /// The recipient acknowledged everything up to `up_to`: those leave the
    /// outbox. Returns how many did.
    pub fn acknowledged(&mut self, to_device: &PublicKey, up_to: u64) -> usize {
        let before = self.outbox.len();
        self.outbox.retain(|entry| {
            !(entry.envelope.body.to_device == *to_device && entry.envelope.body.seq <= up_to)
        });
        before - self.outbox.len()
    }

    pub fn next_deadline(&self) -> Instant {
        self.outbox
            .iter()
            .map(|e| e.next_send)
            .min()
            .unwrap_or(Instant::NEVER)
    }
}

/// Where an entry sits: the recipient account's directory key (the mailbox
/// lives with its presence), the device, then sender and sequence number (so
/// a window hands out each conversation in order).
type EntryKey = (NodeId, PublicKey, PublicKey, u64, EnvelopeId);

/// Envelopes a supernode keeps for devices.
#[derive(Clone, Debug, Default)]
pub struct Mailbox {
    entries: BTreeMap<EntryKey, Envelope>,
    ids: BTreeMap<(PublicKey, EnvelopeId), EntryKey>,
    per_sender: BTreeMap<PublicKey, u32>,
}

/// Why a mailbox did not keep an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreRefusal {
    Full,
    SenderQuota,
}

impl Mailbox {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps the envelope (idempotent: a re-sent envelope is the same entry).
    /// Acknowledgements are cumulative, so a newer one replaces the older
    /// ones of its conversation and an older one is not kept.
    pub fn store(
        &mut self,
        envelope: Envelope,
        len_max: usize,
        sender_quota: u32,
    ) -> Result<bool, StoreRefusal> {
        let id = envelope_id(&envelope);
        let body = &envelope.body;
        if self.ids.contains_key(&(body.to_device, id)) {
            return Ok(false);
        }
        let key = (
            presence_key(&body.to_account),
            body.to_device,
            body.from_device,
            body.seq,
            id,
        );
        if let EnvelopeKind::Ack { up_to_seq } = body.kind {
            let low = (key.0, key.1, key.2, 0, EnvelopeId([0; 16]));
            let high = (key.0, key.1, key.2, 0, EnvelopeId([0xff; 16]));
            let older: Vec<(EnvelopeId, u64)> = self
                .entries
                .range(low..=high)
                .map(|(k, e)| match e.body.kind {
                    EnvelopeKind::Ack { up_to_seq } => (k.4, up_to_seq),
                    EnvelopeKind::Data { .. } => (k.4, 0),
                })
                .collect();
            if older.iter().any(|(_, up_to)| *up_to >= up_to_seq) {
                return Ok(false);
            }
            for (old, _) in older {
                self.delete(&key.1, &old);
            }
        }
        if self.entries.len() >= len_max {
            return Err(StoreRefusal::Full);
        }
        let sent = self.per_sender.entry(body.from_device).or_insert(0);
        if *sent >= sender_quota {
            return Err(StoreRefusal::SenderQuota);
        }
        *sent += 1;
        self.ids.insert((body.to_device, id), key);
        self.entries.insert(key, envelope);
        Ok(true)
    }

    /// The first window of envelopes for `device` of `account`, and whether
    /// more wait.
    pub fn window(&self, account: &PublicKey, device: &PublicKey) -> (Vec<Envelope>, bool) {
        let key = presence_key(account);
        let low = (key, *device, PublicKey([0; 32]), 0, EnvelopeId([0; 16]));
        let mut out = Vec::new();
        let mut more = false;
        for ((at, to, ..), envelope) in self.entries.range(low..) {
            if at != &key || to != device {
                break;
            }
            if out.len() == MAIL_BATCH_MAX {
                more = true;
                break;
            }
            out.push(envelope.clone());
        }
        (out, more)
    }

    pub fn delete(&mut self, device: &PublicKey, id: &EnvelopeId) {
        if let Some(key) = self.ids.remove(&(*device, *id)) {
            self.entries.remove(&key);
            let from = key.2;
            if let Some(count) = self.per_sender.get_mut(&from) {
                *count -= 1;
                if *count == 0 {
                    self.per_sender.remove(&from);
                }
            }
        }
    }

    /// (recipient, sender, sequence number) of every envelope held
    /// (diagnostics; acknowledgements have sequence number 0).
    pub fn recipients(&self) -> Vec<(PublicKey, PublicKey, u64)> {
        self.entries
            .keys()
            .map(|(_, device, from, seq, _)| (*device, *from, *seq))
            .collect()
    }

    /// Every envelope held, in key order.
    pub fn envelopes(&self) -> impl Iterator<Item = &Envelope> {
        self.entries.values()
    }

    /// The distinct directory keys with entries in `low..=high`.
    pub fn keys_in(&self, low: NodeId, high: NodeId) -> Vec<NodeId> {
        let start = (
            low,
            PublicKey([0; 32]),
            PublicKey([0; 32]),
            0,
            EnvelopeId([0; 16]),
        );
        let mut keys: Vec<NodeId> = Vec::new();
        for ((key, ..), _) in self.entries.range(start..) {
            if *key > high {
                break;
            }
            if keys.last() != Some(key) {
                keys.push(*key);
            }
        }
        keys
    }

    /// Every envelope filed under directory key `key`.
    pub fn under(&self, key: &NodeId) -> Vec<Envelope> {
        let start = (
            *key,
            PublicKey([0; 32]),
            PublicKey([0; 32]),
            0,
            EnvelopeId([0; 16]),
        );
        self.entries
            .range(start..)
            .take_while(|((at, ..), _)| at == key)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Drops everything filed under `key` (we are no longer its replica).
    pub fn drop_key(&mut self, key: &NodeId) {
        for envelope in self.under(key) {
            self.delete(&envelope.body.to_device, &envelope_id(&envelope));
        }
    }

    /// Drops envelopes sent before `cutoff_unix_s` (a mailbox is not an archive).
    pub fn expire(&mut self, cutoff_unix_s: u64) {
        let old: Vec<(PublicKey, EnvelopeId)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.body.sent_unix_s < cutoff_unix_s)
            .map(|((_, device, _, _, id), _)| (*device, *id))
            .collect();
        for (device, id) in old {
            self.delete(&device, &id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerline_proto::{BoundedVec, EnvelopeBody, EnvelopeKind, Signature};

    fn envelope(from: u8, to: u8, seq: u64) -> Envelope {
        Envelope {
            body: EnvelopeBody {
                from_device: PublicKey([from; 32]),
                from_account: PublicKey([from + 100; 32]),
                to_device: PublicKey([to; 32]),
                to_account: PublicKey([to + 100; 32]),
                seq,
                sent_unix_s: 1_800_000_000,
                kind: EnvelopeKind::Data {
                    payload: BoundedVec::truncating([seq as u8]),
                },
            },
            signature: Signature([0; 64]),
        }
    }

    fn seqs(arrival: Arrival) -> Vec<u64> {
        match arrival {
            Arrival::Deliver(list) => list.iter().map(|e| e.body.seq).collect(),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    #[test]
    fn arrivals_are_delivered_once_and_in_order() {
        let mut state = MailState::default();
        assert_eq!(seqs(state.arrive(envelope(1, 9, 1))), vec![1]);
        assert_eq!(state.arrive(envelope(1, 9, 3)), Arrival::Held);
        assert_eq!(state.arrive(envelope(1, 9, 1)), Arrival::Duplicate);
        assert_eq!(seqs(state.arrive(envelope(1, 9, 2))), vec![2, 3]);
        assert_eq!(state.arrive(envelope(1, 9, 3)), Arrival::Duplicate);
        assert_eq!(state.delivered_up_to(&PublicKey([1; 32])), 3);
        // Conversations are independent.
        assert_eq!(seqs(state.arrive(envelope(2, 9, 1))), vec![1]);
        // Far ahead of the gap: not kept, the sender will re-send.
        assert_eq!(
            state.arrive(envelope(1, 9, 4 + REORDER_MAX + 1)),
            Arrival::Refused
        );
        assert_eq!(state.arrive(envelope(1, 9, 0)), Arrival::Refused);
    }

    #[test]
    fn acknowledgement_clears_the_outbox_up_to_its_sequence_number() {
        let mut state = MailState::default();
        for seq in 1..=3 {
            state.outbox.push(OutboxEntry {
                envelope: envelope(1, 9, seq),
                attempts: 1,
                next_send: Instant::from_ms(seq * 1000),
            });
        }
        state.outbox.push(OutboxEntry {
            envelope: envelope(1, 8, 1),
            attempts: 1,
            next_send: Instant::from_ms(500),
        });
        assert_eq!(state.next_deadline(), Instant::from_ms(500));
        assert_eq!(state.acknowledged(&PublicKey([9; 32]), 2), 2);
        assert_eq!(state.outbox.len(), 2);
        assert_eq!(state.acknowledged(&PublicKey([9; 32]), 2), 0, "idempotent");
    }

    /// A delete names an envelope by its id (a hash of the signed body) and
    /// its recipient device: whoever never saw the envelope cannot name it,
    /// and an id named for another device removes nothing.
    #[test]
    fn a_delete_needs_the_envelopes_id_and_its_recipient() {
        let mut mailbox = Mailbox::default();
        let kept = envelope(1, 9, 1);
        assert_eq!(mailbox.store(kept.clone(), 100, 10), Ok(true));
        let device = PublicKey([9; 32]);
        mailbox.delete(&device, &envelope_id(&envelope(1, 9, 2)));
        mailbox.delete(&device, &EnvelopeId([0xab; 16]));
        mailbox.delete(&PublicKey([8; 32]), &envelope_id(&kept));
        assert_eq!(mailbox.len(), 1);
        mailbox.delete(&device, &envelope_id(&kept));
        assert!(mailbox.is_empty());
    }

    #[test]
    fn mailbox_is_bounded_idempotent_and_hands_out_conversations_in_order() {
        let mut mailbox = Mailbox::default();
        for seq in [3, 1, 2, 5, 4, 6] {
            assert_eq!(mailbox.store(envelope(1, 9, seq), 100, 10), Ok(true));
        }
        assert_eq!(
            mailbox.store(envelope(1, 9, 1), 100, 10),
            Ok(false),
            "same entry"
        );
        assert_eq!(mailbox.len(), 6);
        let (account, device) = (PublicKey([109; 32]), PublicKey([9; 32]));
        let (window, more) = mailbox.window(&account, &device);
        assert_eq!(
            window.iter().map(|e| e.body.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert!(more);
        for envelope in &window {
            mailbox.delete(&device, &envelope_id(envelope));
        }
        let (window, more) = mailbox.window(&account, &device);
        assert_eq!(window.len(), 2);
        assert!(!more);
        assert!(mailbox.window(&account, &PublicKey([8; 32])).0.is_empty());
        let key = presence_key(&account);
        assert_eq!(mailbox.keys_in(key, key), vec![key]);
        assert_eq!(mailbox.under(&key).len(), 2);
        // Bounds: per sender, and in total.
        assert_eq!(
            mailbox.store(envelope(2, 9, 1), 100, 0),
            Err(StoreRefusal::SenderQuota)
        );
        assert_eq!(
            mailbox.store(envelope(3, 9, 1), 2, 10),
            Err(StoreRefusal::Full)
        );
        mailbox.expire(1_800_000_001);
        assert!(mailbox.is_empty(), "expired");
        // A newer acknowledgement replaces older ones; an older one is not kept.
        let ack = |up_to_seq: u64| {
            let mut e = envelope(1, 9, 0);
            e.body.kind = EnvelopeKind::Ack { up_to_seq };
            e
        };
        assert_eq!(mailbox.store(ack(3), 100, 10), Ok(true));
        assert_eq!(mailbox.store(ack(5), 100, 10), Ok(true));
        assert_eq!(mailbox.store(ack(4), 100, 10), Ok(false));
        assert_eq!(mailbox.len(), 1);
        assert_eq!(mailbox.window(&account, &device).0, vec![ack(5)]);
    }
}
