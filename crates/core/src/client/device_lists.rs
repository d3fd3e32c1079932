//! The device's side of its account's device list (issue #5): which of
//! the account's devices are current and which are revoked.
//!
//! The list is signed by the account's root key, which no device keeps;
//! a device that opened the root (`peerline login`, `devices revoke`)
//! signs a new version and hands it to [`crate::Node::set_device_list`].
//! Two things then happen to it:
//!
//! - **Enforcement**: `DeviceListPush` to the supernodes the device is
//!   attached to, which spread what it revokes network-wide
//!   (`revocation.rs`).
//! - **Storage**: `DeviceListStore` through an attached supernode to the
//!   replicas of `bundle_key(account)` — the account's bundle replicas —
//!   which keep the highest valid version and re-replicate it like the
//!   bundle (`supernode/bundles.rs`). Any device of the account (or anyone:
//!   the list is public, like the presence records it names) fetches it
//!   back with [`crate::Node::fetch_device_list`], so `peerline devices
//!   list` shows every device, and the next list starts from the newest.

use super::ClientState;
use crate::client::BundleFailure;
use crate::node::{Event, Io};
use crate::time::Instant;
use peerline_proto::{DeviceList, Message, PublicKey};

/// Device-list fetches one device keeps open at once.
const LIST_FETCHES_MAX: usize = 4;
/// Tries of a fetch (each through another attached supernode if there is one).
const LIST_FETCH_TRIES_MAX: u32 = 2;

#[derive(Debug)]
pub(crate) struct PendingListFetch {
    query_id: u32,
    account: PublicKey,
    via: PublicKey,
    tries: u32,
    deadline: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct ClientDeviceLists {
    fetches: Vec<PendingListFetch>,
}

impl ClientDeviceLists {
    pub(crate) fn next_deadline(&self) -> Instant {
        let deadlines = self.fetches.iter().map(|fetch| fetch.deadline);
        deadlines.min().unwrap_or(Instant::NEVER)
    }
}

impl ClientState {
    /// Stores the list at its replicas through every attached supernode
    /// (each passes it to all replicas; they keep one copy).
    pub(crate) fn store_device_list(&mut self, io: &mut Io, list: &DeviceList) {
        let store = Message::DeviceListStore {
            list: Box::new(list.clone()),
        };
        for contact in self.attached() {
            io.send(contact.addr, &store);
        }
    }

    pub(crate) fn fetch_device_list(&mut self, io: &mut Io, account: PublicKey) {
        let via = self.bundle_via(None);
        let failure = if self.device_lists.fetches.len() >= LIST_FETCHES_MAX {
            Some(BundleFailure::TooMany)
        } else {
            None
        };
        let (None, Some(via)) = (failure, via) else {
            let reason = failure.unwrap_or(BundleFailure::NotAttached);
            let result = Err(reason);
            return io.event(Event::DeviceListFetched { account, result });
        };
        let query_id = self.next_bundle_query_id();
        io.send(via.addr, &Message::DeviceListFetch { query_id, account });
        self.device_lists.fetches.push(PendingListFetch {
            query_id,
            account,
            via: via.key,
            tries: 1,
            deadline: io.now.instant.add_ms(io.params.lookup_timeout_ms),
        });
    }

    pub(crate) fn on_device_list_fetch_response(
        &mut self,
        io: &mut Io,
        query_id: u32,
        list: Option<Box<DeviceList>>,
    ) {
        let fetches = &mut self.device_lists.fetches;
        let Some(slot) = fetches.iter().position(|f| f.query_id == query_id) else {
            io.stats.messages_unexpected += 1;
            return;
        };
        let account = fetches.swap_remove(slot).account;
        // The supernode checked the signature, but it is not trusted: a
        // list of another account, or one that does not verify, is refused.
        let tolerance_s = io.params.clock_skew_tolerance_s;
        let result = match list {
            None => Ok(None),
            Some(list) if list.body.account_key != account => Err(BundleFailure::Tampered),
            Some(list) => {
                match crate::account::verify_device_list(io.mode, &list, io.now.unix_s, tolerance_s)
                {
                    Ok(()) => Ok(Some(list)),
                    Err(_) => Err(BundleFailure::Tampered),
                }
            }
        };
        io.event(Event::DeviceListFetched { account, result });
    }

    /// Late fetches are asked again through another attached supernode,
    /// once; then they fail as unavailable.
    pub(crate) fn device_lists_timeout(&mut self, io: &mut Io) {
        let now = io.now.instant;
        let mut slot = 0;
        while slot < self.device_lists.fetches.len() {
            let fetch = &self.device_lists.fetches[slot];
            if fetch.deadline > now {
                slot += 1;
                continue;
            }
            let (account, last, tries) = (fetch.account, fetch.via, fetch.tries);
            match self.bundle_via(Some(last)) {
                Some(contact) if tries < LIST_FETCH_TRIES_MAX => {
                    let query_id = self.next_bundle_query_id();
                    io.send(
                        contact.addr,
                        &Message::DeviceListFetch { query_id, account },
                    );
                    let fetch = &mut self.device_lists.fetches[slot];
                    fetch.query_id = query_id;
                    fetch.via = contact.key;
                    fetch.tries += 1;
                    fetch.deadline = now.add_ms(io.params.lookup_timeout_ms);
                    slot += 1;
                }
                _ => {
                    self.device_lists.fetches.swap_remove(slot);
                    let result = Err(BundleFailure::Unavailable);
                    io.event(Event::DeviceListFetched { account, result });
                }
            }
        }
    }
}
