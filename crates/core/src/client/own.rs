//! What a device keeps alive of its own: the certificates of the names it
//! registered and the key bundles it published or opened. Every
//! `OWN_REFRESH_S` it stores them again through an attached supernode,
//! which sends each to the record's current replicas.
//!
//! Replicas alone keep a record only as long as one of its few holders
//! lives: a name record sits on about five supernodes (the quorum and the
//! `replication_k` closest), a bundle on `replication_k`, and nearby keys
//! share the same ones. A crash wave that takes 40% of the supernodes at
//! once kills every holder of some key range with a chance of about
//! 0.4^5 per range; the accounts simulation lost nine names of one range
//! that way (seed 6, 40 supernodes). Re-replication cannot help — no
//! survivor holds a copy — but the owner's device still does, as a
//! Kademlia publisher does.
//!
//! Kept by `Node` (the device's data directory in the real driver):
//! survives restarts and role changes.

use super::ClientState;
use crate::node::Io;
use crate::registry::claim_hash;
use crate::time::Instant;
use peerline_proto::{KeyBundle, Message, NameCertificate};

/// How often a device stores its records again (the supernodes' own
/// unconditional re-push period of name records).
pub const OWN_REFRESH_S: u64 = crate::registry::NAME_REPUSH_S;
/// Retry after a refresh found no attached supernode.
const OWN_RETRY_S: u64 = 30;
/// Names and bundles one device keeps alive (the oldest is dropped).
pub const OWN_NAMES_MAX: usize = 8;
pub const OWN_BUNDLES_MAX: usize = 8;

#[derive(Debug, Default)]
pub struct OwnRecords {
    names: Vec<NameCertificate>,
    bundles: Vec<KeyBundle>,
    refresh_at: Option<Instant>,
}

impl OwnRecords {
    /// Keeps a certificate of a name this device registered.
    pub fn keep_name(&mut self, now: Instant, certificate: NameCertificate) {
        let hash = claim_hash(&certificate.claim);
        self.names.retain(|held| claim_hash(&held.claim) != hash);
        if self.names.len() >= OWN_NAMES_MAX {
            self.names.remove(0);
        }
        self.names.push(certificate);
        self.schedule(now);
    }

    /// Keeps an account's bundle (the newest version of each account).
    pub fn keep_bundle(&mut self, now: Instant, bundle: KeyBundle) {
        let account = bundle.body.account_key;
        if let Some(held) = self.bundles.iter().find(|b| b.body.account_key == account) {
            if held.body.version > bundle.body.version {
                return;
            }
        }
        self.bundles.retain(|held| held.body.account_key != account);
        if self.bundles.len() >= OWN_BUNDLES_MAX {
            self.bundles.remove(0);
        }
        self.bundles.push(bundle);
        self.schedule(now);
    }

    fn schedule(&mut self, now: Instant) {
        if self.refresh_at.is_none() {
            self.refresh_at = Some(now.add_ms(OWN_REFRESH_S * 1_000));
        }
    }

    pub fn next_deadline(&self) -> Instant {
        self.refresh_at.unwrap_or(Instant::NEVER)
    }
}

impl ClientState {
    /// Stores the device's own records again when their time has come.
    pub(crate) fn refresh_own_records(&mut self, io: &mut Io) {
        let Some(at) = io.own.refresh_at else {
            return;
        };
        if at > io.now.instant {
            return;
        }
        let Some(via) = self.attached().first().copied() else {
            io.own.refresh_at = Some(io.now.instant.add_ms(OWN_RETRY_S * 1_000));
            return;
        };
        let names: Vec<Message> = io
            .own
            .names
            .iter()
            .map(|certificate| Message::NameStore {
                certificate: Box::new(certificate.clone()),
            })
            .collect();
        let bundles: Vec<Message> = io
            .own
            .bundles
            .iter()
            .map(|bundle| Message::BundleStore {
                bundle: Box::new(*bundle),
            })
            .collect();
        for message in names.iter().chain(&bundles) {
            io.send(via.addr, message);
        }
        let jitter_ms = io.jitter_ms(OWN_REFRESH_S * 100);
        io.own.refresh_at = Some(io.now.instant.add_ms(OWN_REFRESH_S * 1_000 + jitter_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::CryptoMode;
    use crate::Keypair;
    use peerline_proto::{KdfParams, KeyBundleBody, Sharing, Signature};

    fn bundle(account: &Keypair, version: u64) -> KeyBundle {
        KeyBundle {
            body: KeyBundleBody {
                account_key: account.public(),
                version,
                sharing: Sharing {
                    threshold: 3,
                    holders: 5,
                },
                kdf: KdfParams {
                    memory_kib: 8,
                    iterations: 1,
                    parallelism: 1,
                },
                salt: [0; 16],
                nonce: [0; 24],
                sealed_seed: [0; 32],
                tag: [0; 16],
            },
            signature: Signature([0; 64]),
        }
    }

    #[test]
    fn keeps_the_newest_bundle_of_each_account_within_its_bound() {
        let mut own = OwnRecords::default();
        let now = Instant(0);
        let mut rng = rand_pcg::Pcg32::new(1, 1);
        let first = Keypair::generate(CryptoMode::Modelled, &mut rng);
        own.keep_bundle(now, bundle(&first, 2));
        own.keep_bundle(now, bundle(&first, 1));
        assert_eq!(own.bundles.len(), 1);
        assert_eq!(own.bundles[0].body.version, 2);
        for _ in 0..OWN_BUNDLES_MAX + 3 {
            let other = Keypair::generate(CryptoMode::Modelled, &mut rng);
            own.keep_bundle(now, bundle(&other, 1));
        }
        assert_eq!(own.bundles.len(), OWN_BUNDLES_MAX);
        assert_eq!(own.next_deadline(), now.add_ms(OWN_REFRESH_S * 1_000));
    }
}
