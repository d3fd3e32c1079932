//! A supernode's table of attached clients: by address (how datagrams
//! arrive), by device key (how mail is routed to a device) and by the
//! supernodes their presence records name (who to warn when one fails),
//! kept in step.

use crate::time::Instant;
use peerline_proto::{Addr, NodeId, PresenceRecord, PublicKey};
use rustc_hash::FxHashMap;

#[derive(Clone, Debug)]
pub(crate) struct ClientSlot {
    /// Fixed for the slot's life: the device index is keyed by it.
    pub(crate) device_key: PublicKey,
    pub(crate) account_key: PublicKey,
    pub(crate) cert_expires_unix_s: u64,
    pub(crate) last_seen: Instant,
    /// When this client last got a resumption ticket from us.
    pub(crate) ticket_issued: Instant,
    /// Set through [`Attached::set_record`] only (the index follows it).
    pub(crate) record: Option<Box<PresenceRecord>>,
    /// The directory key of `record` (hashing it again for every membership
    /// change near our clients was a large share of a crash wave's work).
    pub(crate) record_key: NodeId,
    /// Its mailbox said more envelopes wait: fetch again after the next done.
    pub(crate) mail_more: bool,
}

/// Attached clients. Hash order never reaches the wire: every loop that
/// sends walks the addresses sorted, and [`Attached::addr_of`] answers the
/// lowest address of a device attached more than once.
#[derive(Default)]
pub(crate) struct Attached {
    by_addr: FxHashMap<Addr, ClientSlot>,
    /// Each device's addresses, sorted (nearly always exactly one).
    by_device: FxHashMap<PublicKey, Vec<Addr>>,
    /// For each supernode key, the clients whose current record names it
    /// (sorted). A crash wave makes every survivor handle a thousand
    /// failures; scanning every client's record for each was quadratic.
    by_named: FxHashMap<PublicKey, Vec<Addr>>,
}

impl Attached {
    pub(crate) fn insert(&mut self, addr: Addr, slot: ClientSlot) {
        let device = slot.device_key;
        let named = named_keys(&slot);
        if let Some(old) = self.by_addr.insert(addr, slot) {
            self.unindex_slot(&addr, &old);
        }
        index(&mut self.by_device, device, addr);
        for key in named {
            index(&mut self.by_named, key, addr);
        }
    }

    /// Replaces the client's presence record (and the index of the
    /// supernodes it names); false when `addr` is not attached.
    pub(crate) fn set_record(&mut self, addr: &Addr, key: NodeId, record: PresenceRecord) -> bool {
        let Some(slot) = self.by_addr.get_mut(addr) else {
            return false;
        };
        for named in named_keys(slot) {
            unindex(&mut self.by_named, &named, addr);
        }
        slot.record_key = key;
        slot.record = Some(Box::new(record));
        for named in named_keys(slot) {
            index(&mut self.by_named, named, *addr);
        }
        true
    }

    /// The clients whose current record names the supernode `key`, lowest
    /// address first.
    pub(crate) fn naming(&self, key: &PublicKey) -> &[Addr] {
        self.by_named.get(key).map_or(&[], Vec::as_slice)
    }

    fn unindex_slot(&mut self, addr: &Addr, slot: &ClientSlot) {
        unindex(&mut self.by_device, &slot.device_key, addr);
        for named in named_keys(slot) {
            unindex(&mut self.by_named, &named, addr);
        }
    }

    pub(crate) fn remove(&mut self, addr: &Addr) -> Option<ClientSlot> {
        let slot = self.by_addr.remove(addr)?;
        self.unindex_slot(addr, &slot);
        Some(slot)
    }

    pub(crate) fn clear(&mut self) {
        self.by_addr.clear();
        self.by_device.clear();
        self.by_named.clear();
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Addr, &ClientSlot) -> bool) {
        let (by_device, by_named) = (&mut self.by_device, &mut self.by_named);
        self.by_addr.retain(|addr, slot| {
            let kept = keep(addr, slot);
            if !kept {
                unindex(by_device, &slot.device_key, addr);
                for named in named_keys(slot) {
                    unindex(by_named, &named, addr);
                }
            }
            kept
        });
    }

    /// Where `device` is attached here (the lowest address if several).
    pub(crate) fn addr_of(&self, device: &PublicKey) -> Option<Addr> {
        self.by_device
            .get(device)
            .and_then(|addrs| addrs.first().copied())
    }

    pub(crate) fn get(&self, addr: &Addr) -> Option<&ClientSlot> {
        self.by_addr.get(addr)
    }

    /// The slot's device key and record must not be changed through this.
    pub(crate) fn get_mut(&mut self, addr: &Addr) -> Option<&mut ClientSlot> {
        self.by_addr.get_mut(addr)
    }

    pub(crate) fn contains_key(&self, addr: &Addr) -> bool {
        self.by_addr.contains_key(addr)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &Addr> {
        self.by_addr.keys()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Addr, &ClientSlot)> {
        self.by_addr.iter()
    }
}

/// The supernode keys a slot's record names (none without a record).
fn named_keys(slot: &ClientSlot) -> Vec<PublicKey> {
    slot.record
        .as_ref()
        .map(|r| r.body.supernodes.iter().map(|c| c.key).collect())
        .unwrap_or_default()
}

fn index(map: &mut FxHashMap<PublicKey, Vec<Addr>>, key: PublicKey, addr: Addr) {
    let addrs = map.entry(key).or_default();
    if let Err(at) = addrs.binary_search(&addr) {
        addrs.insert(at, addr);
    }
}

fn unindex(map: &mut FxHashMap<PublicKey, Vec<Addr>>, key: &PublicKey, addr: &Addr) {
    if let Some(addrs) = map.get_mut(key) {
        addrs.retain(|a| a != addr);
        if addrs.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(device: u8) -> ClientSlot {
        ClientSlot {
            device_key: PublicKey([device; 32]),
            account_key: PublicKey([device; 32]),
            cert_expires_unix_s: 0,
            last_seen: Instant::ZERO,
            ticket_issued: Instant::ZERO,
            record: None,
            record_key: NodeId::default(),
            mail_more: false,
        }
    }

    fn addr(port: u16) -> Addr {
        Addr { ip: [0; 16], port }
    }

    fn record_naming(supernodes: &[u8]) -> PresenceRecord {
        use peerline_proto::{
            BoundedVec, Contact, DeviceCert, DeviceCertBody, PresenceBody, Signature,
        };
        let cert = DeviceCert {
            body: DeviceCertBody {
                device_key: PublicKey([1; 32]),
                account_key: PublicKey([1; 32]),
                expires_unix_s: 0,
            },
            signature: Signature([0; 64]),
        };
        PresenceRecord {
            body: PresenceBody {
                cert,
                sequence: 1,
                issued_unix_s: 0,
                expires_unix_s: 0,
                supernodes: BoundedVec::truncating(supernodes.iter().map(|s| Contact {
                    key: PublicKey([*s; 32]),
                    id_nonce: 0,
                    addr: addr(*s as u16),
                })),
            },
            signature: Signature([0; 64]),
        }
    }

    #[test]
    fn named_supernode_index_follows_records_and_departures() {
        let mut table = Attached::default();
        table.insert(addr(9), slot(1));
        table.insert(addr(5), slot(2));
        assert!(table.set_record(&addr(9), NodeId::default(), record_naming(&[40, 41])));
        assert!(table.set_record(&addr(5), NodeId::default(), record_naming(&[41, 42])));
        assert!(!table.set_record(&addr(7), NodeId::default(), record_naming(&[40])));
        assert_eq!(table.naming(&PublicKey([41; 32])), &[addr(5), addr(9)]);
        assert_eq!(table.naming(&PublicKey([40; 32])), &[addr(9)]);
        // A newer record no longer names 40.
        table.set_record(&addr(9), NodeId::default(), record_naming(&[41, 43]));
        assert!(table.naming(&PublicKey([40; 32])).is_empty());
        assert_eq!(table.naming(&PublicKey([43; 32])), &[addr(9)]);
        table.remove(&addr(5));
        assert_eq!(table.naming(&PublicKey([41; 32])), &[addr(9)]);
        assert!(table.naming(&PublicKey([42; 32])).is_empty());
        table.retain(|_, _| false);
        assert!(table.naming(&PublicKey([41; 32])).is_empty());
    }

    #[test]
    fn device_index_follows_every_change() {
        let mut table = Attached::default();
        table.insert(addr(9), slot(1));
        table.insert(addr(5), slot(1));
        table.insert(addr(7), slot(2));
        assert_eq!(table.addr_of(&PublicKey([1; 32])), Some(addr(5)));
        // Another device logs in from an address: the old device loses it.
        table.insert(addr(5), slot(3));
        assert_eq!(table.addr_of(&PublicKey([1; 32])), Some(addr(9)));
        assert_eq!(table.addr_of(&PublicKey([3; 32])), Some(addr(5)));
        table.retain(|a, _| *a != addr(9));
        assert_eq!(table.addr_of(&PublicKey([1; 32])), None);
        table.remove(&addr(7));
        assert_eq!(table.addr_of(&PublicKey([2; 32])), None);
        assert_eq!(table.len(), 1);
        table.clear();
        assert!(table.is_empty() && table.addr_of(&PublicKey([3; 32])).is_none());
    }
}
