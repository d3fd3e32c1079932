//! A supernode's table of attached clients: by address (how datagrams
//! arrive) and by device key (how mail is routed to a device), kept in step.

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
}

impl Attached {
    pub(crate) fn insert(&mut self, addr: Addr, slot: ClientSlot) {
        let device = slot.device_key;
        if let Some(old) = self.by_addr.insert(addr, slot) {
            unindex(&mut self.by_device, &old.device_key, &addr);
        }
        let addrs = self.by_device.entry(device).or_default();
        let at = addrs.partition_point(|a| *a < addr);
        addrs.insert(at, addr);
    }

    pub(crate) fn remove(&mut self, addr: &Addr) -> Option<ClientSlot> {
        let slot = self.by_addr.remove(addr)?;
        unindex(&mut self.by_device, &slot.device_key, addr);
        Some(slot)
    }

    pub(crate) fn clear(&mut self) {
        self.by_addr.clear();
        self.by_device.clear();
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Addr, &ClientSlot) -> bool) {
        let by_device = &mut self.by_device;
        self.by_addr.retain(|addr, slot| {
            let kept = keep(addr, slot);
            if !kept {
                unindex(by_device, &slot.device_key, addr);
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

    /// The slot's device key must not be changed through this.
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

fn unindex(by_device: &mut FxHashMap<PublicKey, Vec<Addr>>, device: &PublicKey, addr: &Addr) {
    if let Some(addrs) = by_device.get_mut(device) {
        addrs.retain(|a| a != addr);
        if addrs.is_empty() {
            by_device.remove(device);
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
