//! What a node promised and must not forget across restarts: the export
//! and import of its durable state, as rows a driver keeps on disk.
//!
//! A supernode's `NameBook` (the one vote it cast per name, the name
//! records it replicates), `BundleBook` (key bundles, OPRF shares with
//! their epochs and **guess budgets**) and `AccountTable` (revocations and
//! rotations learnt) outlive restarts. The core stays sans-IO: it hands
//! out *changes* — one row per key whose value changed since the last
//! call, with its new value or `None` for a removal — and takes the rows
//! back at start. The driver stores them; the core never sees a file.
//!
//! **The ordering rule** (an invariant a driver that persists must keep):
//! the changes a step made are committed durably *before* any datagram
//! that step queued leaves the process. A vote, or an evaluation that
//! spent a guess, is revealed only by its datagram; if the process dies
//! after sending but before committing, a restarted voter would vote again
//! (perhaps for another claim) and a restarted holder would have its
//! budget back. The tokio driver enforces this in its `flush`: it calls
//! [`crate::Node::take_durable_changes`] and commits them (one transaction
//! per drain) before it hands any transmit to the links.
//!
//! Rows are postcard; decoding is total: a damaged row is a
//! [`DurableError`] naming its table and key, never a panic. Values are
//! at most [`DURABLE_VALUE_BYTES_MAX`] bytes and each table at most its
//! in-memory bound of rows. Rows are trusted as written by this node (the
//! store checksums every page): votes, certificates and bundles are not
//! re-verified at start (a signature check per row would cost seconds for
//! a full holder), but every share is checked against its commitment.
//!
//! Guess budgets are kept as "tokens, and the wait to the next one": the
//! monotonic clock restarts with the process, so time spent down does not
//! refill a budget (an attacker who can make a holder restart gains
//! nothing; an honest user waits at most one refill interval more).

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Largest encoded row value (a name certificate is the largest, ~1.5 KiB).
pub const DURABLE_VALUE_BYTES_MAX: usize = 16 << 10;

/// The tables of durable state, one per kind of row. Each row's key is
/// 32 bytes: a name key, or an account key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DurableTable {
    /// Name key → the vote this node cast (`NameVote`).
    NameVotes,
    /// Name key → the name certificate held, with what its check said.
    NameRecords,
    /// Account key → the key bundle replicated (`KeyBundle`).
    KeyBundles,
    /// Account key → the OPRF share held (its signed deal) and its guess budget.
    OprfShares,
    /// Account key → the revocations and rotation learnt for it.
    Revocations,
    /// Account key → the device list replicated beside its bundle (`DeviceList`).
    DeviceLists,
}

impl DurableTable {
    pub const ALL: [DurableTable; 6] = [
        DurableTable::NameVotes,
        DurableTable::NameRecords,
        DurableTable::KeyBundles,
        DurableTable::OprfShares,
        DurableTable::Revocations,
        DurableTable::DeviceLists,
    ];

    /// The table's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            DurableTable::NameVotes => "name_votes",
            DurableTable::NameRecords => "name_records",
            DurableTable::KeyBundles => "key_bundles",
            DurableTable::OprfShares => "oprf_shares",
            DurableTable::Revocations => "revocations",
            DurableTable::DeviceLists => "device_lists",
        }
    }

    /// Most rows the table holds (the in-memory bound of what it mirrors).
    pub fn rows_max(self) -> usize {
        match self {
            DurableTable::NameVotes => crate::registry::NAME_VOTES_KEPT_MAX,
            DurableTable::NameRecords => crate::registry::NAME_RECORDS_MAX,
            DurableTable::KeyBundles => crate::supernode::bundles::BUNDLES_HELD_MAX,
            DurableTable::OprfShares => crate::bundle::HELD_SHARES_MAX,
            DurableTable::Revocations => crate::revocation::REVOCATION_ACCOUNTS_MAX,
            DurableTable::DeviceLists => crate::supernode::bundles::BUNDLES_HELD_MAX,
        }
    }

    /// Whether a change to this table must be on disk before the step's
    /// datagrams leave (it is revealed by them): votes and guess spends.
    /// Other rows are re-pushed by the network and may lag a crash.
    pub fn reveals_on_send(self) -> bool {
        matches!(self, DurableTable::NameVotes | DurableTable::OprfShares)
    }
}

impl std::fmt::Display for DurableTable {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One row: its new value (postcard), or `None` when it was removed.
#[derive(Clone, PartialEq, Eq)]
pub struct DurableChange {
    pub table: DurableTable,
    pub key: [u8; 32],
    pub value: Option<Vec<u8>>,
}

impl std::fmt::Debug for DurableChange {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        // Share rows hold a secret: never print values.
        write!(
            f,
            "DurableChange({}, {:02x}{:02x}…, {})",
            self.table,
            self.key[0],
            self.key[1],
            self.value
                .as_ref()
                .map_or("removed".to_string(), |v| format!("{} bytes", v.len()))
        )
    }
}

/// What changed since the last [`crate::Node::take_durable_changes`]: at
/// most one change per (table, key), in table then key order.
#[derive(Clone, Debug, Default)]
pub struct DurableChanges {
    pub changes: Vec<DurableChange>,
}

impl DurableChanges {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether any change must be durable before the step's datagrams
    /// leave ([`DurableTable::reveals_on_send`]).
    pub fn must_sync(&self) -> bool {
        self.changes.iter().any(|c| c.table.reveals_on_send())
    }

    pub(crate) fn push(&mut self, table: DurableTable, key: [u8; 32], value: Option<Vec<u8>>) {
        self.changes.push(DurableChange { table, key, value });
    }
}

/// A stored row that cannot be taken back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("row {key} of table {table} {problem}")]
pub struct DurableError {
    pub table: DurableTable,
    /// The row's key, hex.
    pub key: String,
    pub problem: String,
}

impl DurableError {
    pub(crate) fn new(table: DurableTable, key: &[u8; 32], problem: impl Into<String>) -> Self {
        DurableError {
            table,
            key: key.iter().map(|b| format!("{b:02x}")).collect(),
            problem: problem.into(),
        }
    }
}

/// Encodes a row value (every value the core builds fits).
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    match postcard::to_allocvec(value) {
        Ok(bytes) => {
            debug_assert!(bytes.len() <= DURABLE_VALUE_BYTES_MAX);
            bytes
        }
        Err(error) => {
            debug_assert!(false, "a durable row always encodes: {error}");
            Vec::new()
        }
    }
}

/// Decodes a row value: bounded, total, trailing bytes refused.
pub(crate) fn decode<'a, T: Deserialize<'a>>(
    table: DurableTable,
    key: &[u8; 32],
    bytes: &'a [u8],
) -> Result<T, DurableError> {
    if bytes.len() > DURABLE_VALUE_BYTES_MAX {
        return Err(DurableError::new(
            table,
            key,
            format!(
                "is {} bytes, more than {DURABLE_VALUE_BYTES_MAX}",
                bytes.len()
            ),
        ));
    }
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok(_) => Err(DurableError::new(table, key, "has trailing bytes")),
        Err(_) => Err(DurableError::new(table, key, "does not decode")),
    }
}

/// Keys whose rows changed since they were last taken. Records nothing
/// until switched on (a node whose driver does not persist — the
/// simulator — keeps no log). At most one entry per key the table holds
/// or removed since the last take.
#[derive(Clone, Debug, Default)]
pub(crate) struct DirtyKeys {
    on: bool,
    keys: BTreeSet<[u8; 32]>,
}

impl DirtyKeys {
    pub fn switch_on(&mut self) {
        self.on = true;
    }

    pub fn mark(&mut self, key: [u8; 32]) {
        if self.on {
            self.keys.insert(key);
        }
    }

    pub fn take(&mut self) -> BTreeSet<[u8; 32]> {
        std::mem::take(&mut self.keys)
    }
}
