//! The node's local state: one `redb` database, `state.redb`, in the data
//! directory (which `data_dir` opens, locks, and fills on first start).
//!
//! What it holds, one table each:
//! - `device`: this device's Ed25519 seed, its certificate from the account
//!   (`DeviceCert`, postcard), the account's public key, and (when one
//!   exists) the account's latest signed device list, opaque bytes. Never
//!   the account's root key: a device holds only what a revocation can take
//!   back.
//! - `contacts`: a name a person gave → the account key and when it was
//!   added.
//! - `host_cache`: supernodes the node knew, by rank (0 = best); each value
//!   is postcard and begins with the supernode's 32-byte key.
//! - `owned_names`: names this account owns → their name certificates
//!   (opaque bytes for now).
//! - `meta`: the schema version (2 since the durable tables; a version-1
//!   file is upgraded at open).
//! - The node's **durable state** (`peerline_core::durable`), one table
//!   per kind, each keyed by 32 bytes with a postcard value the core
//!   encodes and decodes: `name_votes` (name key → the vote this
//!   supernode cast), `name_records` (name key → certificate held),
//!   `key_bundles` (account → bundle replicated), `oprf_shares` (account →
//!   OPRF share held, its signed deal, and its guess budget; the secret
//!   share is as private as the device key), `revocations` (account →
//!   revoked keys and rotation learnt). The driver commits each drain's
//!   changes in one transaction before it sends (`Persist`, the ordering
//!   rule); with `Durability::Immediate` when a vote or a share row is
//!   among them, else `Durability::None` (made durable by the next
//!   immediate commit; a crash loses at most rows the network re-pushes).
//!
//! **Keys at rest.** A headless daemon restarts unattended, so it must read
//! its device key without a password. The choice is the operating system's
//! protection, not encryption: the file is created with mode 0600 (never
//! wider, never chmod'ed after) in a data directory created with mode 0700,
//! as `identity.key` was, and full-disk encryption is the owner's at-rest
//! protection. Whoever takes the disk gets a device key — which the account
//! can revoke — never the root key, which is not on the device.
//!
//! **Crash safety.** Every write is one redb write transaction with
//! immediate durability, committed before the function returns: a write
//! that returned `Ok` survives a crash (redb's commit is a checksummed,
//! copy-on-write switch, fsync'ed). The file is made whole elsewhere and
//! renamed into place, so a `state.redb` always holds an identity, and one
//! that opens without one is damaged. Every open checks every page's
//! checksum (the file is small): a damaged file is one error sentence, never
//! a panic, a half-read state or a silently new identity.

// Contacts and the device list have no command yet (`login`, `devices` and
// `contacts` come with the rest of issue #5); owned names are written by
// `peerline account create` and read by `peerline whoami`.
#![allow(dead_code)]

use anyhow::{anyhow, bail, Context, Result};
use peerline_core::durable::DURABLE_VALUE_BYTES_MAX;
use peerline_core::hostcache::HostEntry;
use peerline_core::{DurableChange, DurableChanges, DurableTable};
use peerline_proto::{Addr, Contact, DeviceCert, PublicKey};
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.redb";
/// What this code writes; a file with a higher version is refused (so a
/// peerline from before the durable tables cannot run on a directory whose
/// votes it would ignore).
const SCHEMA_VERSION: u32 = 2;
/// redb's page cache; the whole database is a few hundred kilobytes.
const CACHE_BYTES: usize = 4 << 20;
/// Host-cache entries saved and read back (the core keeps
/// `host_cache_len_max` anyway).
pub const HOST_CACHE_LEN_MAX: usize = 1_024;
pub const CONTACTS_LEN_MAX: usize = 10_000;
/// A contact's name, in bytes of UTF-8.
pub const CONTACT_NAME_BYTES_MAX: usize = 128;
pub const OWNED_NAMES_LEN_MAX: usize = 64;
/// An owned name (bytes of UTF-8) and its certificate.
pub const OWNED_NAME_BYTES_MAX: usize = 128;
pub const NAME_CERT_BYTES_MAX: usize = 16 << 10;
pub const DEVICE_LIST_BYTES_MAX: usize = 64 << 10;

const META: TableDefinition<&str, u32> = TableDefinition::new("meta");
const DEVICE: TableDefinition<&str, &[u8]> = TableDefinition::new("device");
const CONTACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("contacts");
const HOST_CACHE: TableDefinition<u32, &[u8]> = TableDefinition::new("host_cache");
const OWNED_NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("owned_names");

const META_SCHEMA: &str = "schema";
const DEVICE_SEED: &str = "device_seed";
const DEVICE_CERT: &str = "device_cert";
const ACCOUNT_KEY: &str = "account_key";
const DEVICE_LIST: &str = "device_list";

/// This device's key and the account's certificate for it.
#[derive(Clone)]
pub struct StoredIdentity {
    pub device_seed: [u8; 32],
    pub cert: DeviceCert,
}

impl std::fmt::Debug for StoredIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "StoredIdentity({:?})", self.cert.body)
    }
}

/// A contact: a name this person gave an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactEntry {
    pub name: String,
    pub account_key: PublicKey,
    pub added_unix_s: u64,
}

#[derive(Serialize, Deserialize)]
struct ContactValue {
    account_key: PublicKey,
    added_unix_s: u64,
}

/// A host-cache entry as stored (the key first).
#[derive(Serialize, Deserialize)]
struct HostValue {
    key: PublicKey,
    addr: SocketAddr,
    /// The supernode's ID-puzzle nonce as last seen (0 when unknown).
    id_nonce: u64,
    /// Failures since its last success, when saved.
    failures: u8,
    /// Smoothed attach round-trip time, when measured.
    rtt_ms: Option<u16>,
}

/// A loaded host cache, best first, and what was wrong with it.
#[derive(Debug, Default)]
pub struct LoadedHostCache {
    pub contacts: Vec<Contact>,
    pub warning: Option<String>,
}

#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

pub fn damaged(path: &Path, problem: &str) -> anyhow::Error {
    anyhow!(
        "the state database {} is damaged ({problem}); restore it from a backup, or move it away to start as a new node (with a new device key and account)",
        path.display()
    )
}

/// One sentence for what went wrong opening the file.
fn open_error(path: &Path, error: redb::DatabaseError) -> anyhow::Error {
    use redb::{DatabaseError, StorageError};
    match error {
        DatabaseError::Storage(StorageError::Corrupted(problem)) => damaged(path, &problem),
        DatabaseError::Storage(StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            damaged(path, "not a redb database")
        }
        DatabaseError::UpgradeRequired(version) => anyhow!(
            "the state database {} is in an old file format (redb {version}); open it with the peerline version that wrote it, or move it away to start as a new node",
            path.display()
        ),
        other => anyhow!(
            "cannot open the state database {}: {other}",
            path.display()
        ),
    }
}

fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(true);
    builder
}

impl Store {
    /// Writes a new database at `path` (which must not exist) holding
    /// `identity` and `hosts`: made in full in a side file created with mode
    /// 0600, synced, then renamed into place, so a crash leaves no file or
    /// a whole one.
    pub fn create(path: &Path, identity: &StoredIdentity, hosts: &[HostEntry]) -> Result<Store> {
        if path.exists() {
            bail!(
                "the state database {} exists already; it is not replaced",
                path.display()
            );
        }
        let side = side_path(path);
        // A side file left by a crash is half made: start afresh.
        match std::fs::remove_file(&side) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(error).with_context(|| format!("cannot remove {}", side.display()))
            }
            _ => {}
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&side)
            .with_context(|| format!("cannot create {}", side.display()))?;
        let backend =
            redb::backends::FileBackend::new(file).map_err(|error| open_error(&side, error))?;
        let db = builder()
            .create_with_backend(backend)
            .map_err(|error| open_error(&side, error))?;
        let store = Store { db, path: side };
        store.write("set up", |txn| {
            txn.open_table(META)?.insert(META_SCHEMA, SCHEMA_VERSION)?;
            txn.open_table(CONTACTS)?;
            txn.open_table(OWNED_NAMES)?;
            put_identity(txn, identity)?;
            put_host_cache(txn, hosts)?;
            Ok(())
        })?;
        let Store { db, path: side } = store;
        db.close().map_err(|error| open_error(&side, error))?;
        std::fs::rename(&side, path)
            .with_context(|| format!("cannot rename {} to {}", side.display(), path.display()))?;
        sync_dir(path)?;
        Store::open(path)
    }

    /// Opens an existing database, checking every page and the schema. A
    /// damaged file is an error naming it.
    pub fn open(path: &Path) -> Result<Store> {
        let metadata = std::fs::metadata(path)
            .with_context(|| format!("cannot read the state database {}", path.display()))?;
        if metadata.len() == 0 {
            return Err(damaged(path, "empty"));
        }
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "the state database {} is readable by others (mode {mode:o}): whoever reads it can act as this device; chmod 600 it",
                path.display()
            );
        }
        let db = builder()
            .open(path)
            .map_err(|error| open_error(path, error))?;
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        let schema = store
            .read(|txn| Ok(txn.open_table(META)?.get(META_SCHEMA)?.map(|v| v.value())))
            .map_err(|error| damaged(path, &format!("{error:#}")))?;
        match schema {
            None => return Err(damaged(path, "no schema version")),
            Some(version) if version > SCHEMA_VERSION => bail!(
                "the state database {} was written by a newer peerline (schema {version}, this one knows {SCHEMA_VERSION}); run that version",
                path.display()
            ),
            Some(version) if version < SCHEMA_VERSION => {
                store.write("upgrade the schema", |txn| {
                    txn.open_table(META)?.insert(META_SCHEMA, SCHEMA_VERSION)?;
                    Ok(())
                })?;
            }
            Some(_) => {}
        }
        store.identity()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's seed and certificate, checked against each other.
    pub fn identity(&self) -> Result<StoredIdentity> {
        let path = &self.path;
        let (seed, cert, account) = self
            .read(|txn| {
                let table = txn.open_table(DEVICE)?;
                let get = |slot: &str| -> Result<Option<Vec<u8>>> {
                    Ok(table.get(slot)?.map(|value| value.value().to_vec()))
                };
                Ok((get(DEVICE_SEED)?, get(DEVICE_CERT)?, get(ACCOUNT_KEY)?))
            })
            .map_err(|error| damaged(path, &format!("{error:#}")))?;
        let seed: [u8; 32] = seed
            .ok_or_else(|| damaged(path, "no device key"))?
            .try_into()
            .map_err(|_| damaged(path, "the device key is not 32 bytes"))?;
        let cert: DeviceCert =
            postcard::from_bytes(&cert.ok_or_else(|| damaged(path, "no device certificate"))?)
                .map_err(|_| damaged(path, "the device certificate does not decode"))?;
        let account: [u8; 32] = account
            .ok_or_else(|| damaged(path, "no account key"))?
            .try_into()
            .map_err(|_| damaged(path, "the account key is not 32 bytes"))?;
        if cert.body.account_key != PublicKey(account) {
            return Err(damaged(path, "the certificate is for another account"));
        }
        Ok(StoredIdentity {
            device_seed: seed,
            cert,
        })
    }

    /// The account's latest signed device list (opaque bytes), if any.
    pub fn device_list(&self) -> Result<Option<Vec<u8>>> {
        self.read(|txn| {
            Ok(txn
                .open_table(DEVICE)?
                .get(DEVICE_LIST)?
                .map(|value| value.value().to_vec()))
        })
    }

    pub fn put_device_list(&self, bytes: &[u8]) -> Result<()> {
        if bytes.len() > DEVICE_LIST_BYTES_MAX {
            bail!(
                "a device list of {} bytes is longer than {DEVICE_LIST_BYTES_MAX}",
                bytes.len()
            );
        }
        self.write("save the device list", |txn| {
            txn.open_table(DEVICE)?.insert(DEVICE_LIST, bytes)?;
            Ok(())
        })
    }

    /// Adds a contact, or gives an existing name another account.
    pub fn add_contact(&self, name: &str, account_key: PublicKey, added_unix_s: u64) -> Result<()> {
        if name.is_empty() || name.len() > CONTACT_NAME_BYTES_MAX {
            bail!(
                "a contact's name has 1 to {CONTACT_NAME_BYTES_MAX} bytes; '{name}' has {}",
                name.len()
            );
        }
        let value = postcard::to_allocvec(&ContactValue {
            account_key,
            added_unix_s,
        })
        .context("cannot encode a contact")?;
        self.write("add a contact", |txn| {
            let mut table = txn.open_table(CONTACTS)?;
            if table.get(name)?.is_none() && table.len()? >= CONTACTS_LEN_MAX as u64 {
                bail!("there are already {CONTACTS_LEN_MAX} contacts; remove one first");
            }
            table.insert(name, value.as_slice())?;
            Ok(())
        })
    }

    /// Removes a contact; false when there was none of that name.
    pub fn remove_contact(&self, name: &str) -> Result<bool> {
        self.write("remove a contact", |txn| {
            Ok(txn.open_table(CONTACTS)?.remove(name)?.is_some())
        })
    }

    /// Every contact, by name.
    pub fn contacts(&self) -> Result<Vec<ContactEntry>> {
        let path = &self.path;
        self.read(|txn| {
            let table = txn.open_table(CONTACTS)?;
            let mut contacts =
                Vec::with_capacity(table.len()?.min(CONTACTS_LEN_MAX as u64) as usize);
            for row in table.iter()?.take(CONTACTS_LEN_MAX) {
                let (name, value) = row?;
                let name = name.value().to_string();
                let value: ContactValue = postcard::from_bytes(value.value())
                    .map_err(|_| damaged(path, &format!("the contact '{name}' does not decode")))?;
                contacts.push(ContactEntry {
                    name,
                    account_key: value.account_key,
                    added_unix_s: value.added_unix_s,
                });
            }
            Ok(contacts)
        })
    }

    /// Keeps the certificate of a name this account owns.
    pub fn put_owned_name(&self, name: &str, cert: &[u8]) -> Result<()> {
        if name.is_empty() || name.len() > OWNED_NAME_BYTES_MAX {
            bail!(
                "a name has 1 to {OWNED_NAME_BYTES_MAX} bytes; '{name}' has {}",
                name.len()
            );
        }
        if cert.len() > NAME_CERT_BYTES_MAX {
            bail!(
                "a name certificate of {} bytes is longer than {NAME_CERT_BYTES_MAX}",
                cert.len()
            );
        }
        self.write("save a name", |txn| {
            let mut table = txn.open_table(OWNED_NAMES)?;
            if table.get(name)?.is_none() && table.len()? >= OWNED_NAMES_LEN_MAX as u64 {
                bail!("this account already owns {OWNED_NAMES_LEN_MAX} names");
            }
            table.insert(name, cert)?;
            Ok(())
        })
    }

    /// Makes this device one of a new account that owns `name`, in one
    /// transaction: the identity replaced, the old account's device list
    /// and names dropped (`peerline account create`; the host cache and
    /// contacts stay).
    pub fn set_account(&self, identity: &StoredIdentity, name: &str, cert: &[u8]) -> Result<()> {
        if name.is_empty() || name.len() > OWNED_NAME_BYTES_MAX || cert.len() > NAME_CERT_BYTES_MAX
        {
            bail!("the name '{name}' or its certificate is too long to keep");
        }
        self.write("save the new account", |txn| {
            put_identity(txn, identity)?;
            txn.open_table(DEVICE)?.remove(DEVICE_LIST)?;
            txn.delete_table(OWNED_NAMES)?;
            txn.open_table(OWNED_NAMES)?.insert(name, cert)?;
            Ok(())
        })
    }

    /// Replaces this device's identity (a new certificate after a root
    /// rotation) in one transaction; the old account's device list goes.
    pub fn set_identity(&self, identity: &StoredIdentity) -> Result<()> {
        self.write("save the new identity", |txn| {
            put_identity(txn, identity)?;
            txn.open_table(DEVICE)?.remove(DEVICE_LIST)?;
            Ok(())
        })
    }

    pub fn remove_owned_name(&self, name: &str) -> Result<bool> {
        self.write("remove a name", |txn| {
            Ok(txn.open_table(OWNED_NAMES)?.remove(name)?.is_some())
        })
    }

    /// Names this account owns and their certificates, by name.
    pub fn owned_names(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.read(|txn| {
            let table = txn.open_table(OWNED_NAMES)?;
            let mut names = Vec::new();
            for row in table.iter()?.take(OWNED_NAMES_LEN_MAX) {
                let (name, cert) = row?;
                names.push((name.value().to_string(), cert.value().to_vec()));
            }
            Ok(names)
        })
    }

    /// Replaces the host cache, best first (fewest failures, then fastest).
    pub fn save_host_cache(&self, entries: &[HostEntry]) -> Result<()> {
        self.write("save the host cache", |txn| put_host_cache(txn, entries))
    }

    /// The saved host cache, best first. A damaged entry is skipped and
    /// named in the warning; an unreadable table is an empty cache and a
    /// warning (a hint, not a truth: the node starts from its seeds).
    pub fn load_host_cache(&self) -> LoadedHostCache {
        let mut problems: Vec<String> = Vec::new();
        let rows = self.read(|txn| {
            let table = txn.open_table(HOST_CACHE)?;
            let mut rows = Vec::new();
            for row in table.iter()?.take(HOST_CACHE_LEN_MAX) {
                let (rank, value) = row?;
                rows.push((rank.value(), value.value().to_vec()));
            }
            Ok(rows)
        });
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                return LoadedHostCache {
                    contacts: Vec::new(),
                    warning: Some(format!(
                        "ignoring the host cache in {} ({error:#}); starting from the bootstrap list, and it will be rewritten",
                        self.path.display()
                    )),
                }
            }
        };
        let mut contacts: Vec<Contact> = Vec::with_capacity(rows.len());
        for (rank, bytes) in rows {
            match host_contact(&bytes) {
                Ok(contact) => {
                    if !contacts.iter().any(|c| c.key == contact.key) {
                        contacts.push(contact);
                    }
                }
                Err(problem) => problems.push(format!("entry {}: {problem}", rank + 1)),
            }
        }
        let warning = (!problems.is_empty()).then(|| {
            let entries = if problems.len() == 1 { "entry" } else { "entries" };
            format!(
                "ignoring {} damaged {entries} of the host cache in {} ({}); the others are used, and it will be rewritten",
                problems.len(),
                self.path.display(),
                problems.join("; ")
            )
        });
        LoadedHostCache { contacts, warning }
    }

    /// Every row of the node's durable state, for `Node::restore_durable`.
    /// A key that is not 32 bytes, a value over the core's bound or a
    /// table over its row bound is damage (one sentence naming the file).
    pub fn load_durable(&self) -> Result<Vec<DurableChange>> {
        let path = &self.path;
        let mut rows = Vec::new();
        self.read(|txn| {
            for table in DurableTable::ALL {
                let opened = match txn.open_table(durable_table(table)) {
                    Ok(opened) => opened,
                    Err(redb::TableError::TableDoesNotExist(_)) => continue,
                    Err(error) => return Err(error.into()),
                };
                if opened.len()? > table.rows_max() as u64 {
                    bail!("table {table} holds more than {} rows", table.rows_max());
                }
                for entry in opened.iter()? {
                    let (key, value) = entry?;
                    let key: [u8; 32] = key
                        .value()
                        .try_into()
                        .map_err(|_| anyhow!("a key of table {table} is not 32 bytes"))?;
                    let value = value.value();
                    if value.len() > DURABLE_VALUE_BYTES_MAX {
                        bail!("a row of table {table} is {} bytes", value.len());
                    }
                    rows.push(DurableChange {
                        table,
                        key,
                        value: Some(value.to_vec()),
                    });
                }
            }
            Ok(())
        })
        .map_err(|error| damaged(path, &format!("{error:#}")))?;
        Ok(rows)
    }

    /// One drain's durable changes in one transaction: immediate (an
    /// fsync) when any of them must be on disk before the node sends
    /// (`DurableChanges::must_sync`), else left for the next immediate
    /// commit.
    pub fn commit_durable(&self, changes: &DurableChanges) -> Result<()> {
        let durability = match changes.must_sync() {
            true => Durability::Immediate,
            false => Durability::None,
        };
        self.write_with("save the node's durable state", durability, |txn| {
            for table in DurableTable::ALL {
                let mut opened = txn.open_table(durable_table(table))?;
                for change in changes.changes.iter().filter(|c| c.table == table) {
                    match &change.value {
                        Some(value) => opened.insert(change.key.as_slice(), value.as_slice())?,
                        None => opened.remove(change.key.as_slice())?,
                    };
                }
            }
            Ok(())
        })
    }

    /// One write transaction, committed durably before this returns.
    fn write<T>(&self, what: &str, body: impl FnOnce(&WriteTransaction) -> Result<T>) -> Result<T> {
        self.write_with(what, Durability::Immediate, body)
    }

    fn write_with<T>(
        &self,
        what: &str,
        durability: Durability,
        body: impl FnOnce(&WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        let context = || {
            format!(
                "cannot {what} in the state database {}",
                self.path.display()
            )
        };
        let mut txn = self.db.begin_write().with_context(context)?;
        txn.set_durability(durability).with_context(context)?;
        let value = match body(&txn) {
            Ok(value) => value,
            Err(error) => {
                let _ = txn.abort();
                return Err(error);
            }
        };
        txn.commit().with_context(context)?;
        Ok(value)
    }

    fn read<T>(&self, body: impl FnOnce(&ReadTransaction) -> Result<T>) -> Result<T> {
        let txn = self
            .db
            .begin_read()
            .with_context(|| format!("cannot read the state database {}", self.path.display()))?;
        body(&txn)
    }
}

fn durable_table(table: DurableTable) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// The daemon's node commits its durable state here (`peerline-net`'s
/// ordering rule: before the datagrams that reveal it leave).
impl peerline_net::Persist for Store {
    fn load(&self) -> std::result::Result<Vec<DurableChange>, String> {
        let started = std::time::Instant::now();
        let rows = self.load_durable().map_err(|error| format!("{error:#}"))?;
        // A row the core cannot take back is damage too: the daemon's
        // start error names the file (`StartError::Restore`).
        tracing::info!(
            "durable state: {} rows restored from {} in {} ms",
            rows.len(),
            self.path.display(),
            started.elapsed().as_millis()
        );
        Ok(rows)
    }

    fn commit(&self, changes: &DurableChanges) -> std::result::Result<(), String> {
        self.commit_durable(changes).map_err(|error| {
            let sentence =
                format!("{error:#}; the node stops rather than send what it cannot keep");
            tracing::error!("{sentence}");
            sentence
        })
    }
}

fn put_identity(txn: &WriteTransaction, identity: &StoredIdentity) -> Result<()> {
    let cert = postcard::to_allocvec(&identity.cert).context("cannot encode the certificate")?;
    let mut table = txn.open_table(DEVICE)?;
    table.insert(DEVICE_SEED, identity.device_seed.as_slice())?;
    table.insert(DEVICE_CERT, cert.as_slice())?;
    table.insert(ACCOUNT_KEY, identity.cert.body.account_key.0.as_slice())?;
    Ok(())
}

fn put_host_cache(txn: &WriteTransaction, entries: &[HostEntry]) -> Result<()> {
    let mut sorted: Vec<&HostEntry> = entries.iter().collect();
    sorted.sort_by_key(|entry| (entry.failures, entry.rtt_ms));
    txn.delete_table(HOST_CACHE)?;
    let mut table = txn.open_table(HOST_CACHE)?;
    for (rank, entry) in sorted.into_iter().take(HOST_CACHE_LEN_MAX).enumerate() {
        let value = HostValue {
            key: entry.contact.key,
            addr: entry.contact.addr.to_socket(),
            id_nonce: entry.contact.id_nonce,
            failures: entry.failures,
            rtt_ms: (entry.rtt_ms != u16::MAX).then_some(entry.rtt_ms),
        };
        let bytes = postcard::to_allocvec(&value).context("cannot encode the host cache")?;
        table.insert(rank as u32, bytes.as_slice())?;
    }
    Ok(())
}

fn host_contact(bytes: &[u8]) -> Result<Contact, String> {
    let value: HostValue =
        postcard::from_bytes(bytes).map_err(|_| "does not decode".to_string())?;
    if value.addr.ip().is_unspecified() || value.addr.port() == 0 {
        return Err(format!("{} cannot be dialed", value.addr));
    }
    Ok(Contact {
        key: value.key,
        id_nonce: value.id_nonce,
        addr: Addr::from_socket(value.addr),
    })
}

pub fn side_path(path: &Path) -> PathBuf {
    let mut side = path.as_os_str().to_owned();
    side.push(".new");
    PathBuf::from(side)
}

/// Makes a rename or removal in `path`'s directory durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerline_proto::{DeviceCertBody, Signature};
    use rand_core::{Rng, SeedableRng};
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("peerline-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn identity() -> StoredIdentity {
        StoredIdentity {
            device_seed: [7; 32],
            cert: DeviceCert {
                body: DeviceCertBody {
                    device_key: PublicKey([8; 32]),
                    account_key: PublicKey([9; 32]),
                    expires_unix_s: 1_900_000_000,
                },
                signature: Signature([1; 64]),
            },
        }
    }

    fn new_store(name: &str) -> (PathBuf, Store) {
        let dir = scratch(name);
        let store = Store::create(&dir.join(STATE_FILE), &identity(), &[]).unwrap();
        (dir, store)
    }

    #[test]
    fn contacts_are_added_renamed_removed_and_listed_by_name() {
        let (dir, store) = new_store("contacts");
        assert!(store.contacts().unwrap().is_empty());
        store.add_contact("bob", PublicKey([2; 32]), 100).unwrap();
        store.add_contact("alice", PublicKey([1; 32]), 200).unwrap();
        store.add_contact("bob", PublicKey([3; 32]), 300).unwrap();
        drop(store);
        let store = Store::open(&dir.join(STATE_FILE)).unwrap();
        assert_eq!(
            store.contacts().unwrap(),
            vec![
                ContactEntry {
                    name: "alice".into(),
                    account_key: PublicKey([1; 32]),
                    added_unix_s: 200
                },
                ContactEntry {
                    name: "bob".into(),
                    account_key: PublicKey([3; 32]),
                    added_unix_s: 300
                },
            ]
        );
        assert!(store.remove_contact("alice").unwrap());
        assert!(!store.remove_contact("alice").unwrap());
        assert_eq!(store.contacts().unwrap().len(), 1);
        let error = store.add_contact("", PublicKey([1; 32]), 0).unwrap_err();
        assert!(error.to_string().contains("1 to 128 bytes"), "{error}");
        let long = "x".repeat(CONTACT_NAME_BYTES_MAX + 1);
        assert!(store.add_contact(&long, PublicKey([1; 32]), 0).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn identity_device_list_and_owned_names_round_trip() {
        let (dir, store) = new_store("slots");
        assert_eq!(store.identity().unwrap().cert, identity().cert);
        assert_eq!(store.identity().unwrap().device_seed, [7; 32]);
        assert_eq!(store.device_list().unwrap(), None);
        store.put_device_list(b"list v1").unwrap();
        store.put_device_list(b"list v2").unwrap();
        store.put_owned_name("alice", b"cert-a").unwrap();
        store.put_owned_name("alice.work", b"cert-b").unwrap();
        drop(store);
        let store = Store::open(&dir.join(STATE_FILE)).unwrap();
        assert_eq!(
            store.device_list().unwrap().as_deref(),
            Some(&b"list v2"[..])
        );
        assert_eq!(
            store.owned_names().unwrap(),
            vec![
                ("alice".to_string(), b"cert-a".to_vec()),
                ("alice.work".to_string(), b"cert-b".to_vec())
            ]
        );
        assert!(store.remove_owned_name("alice").unwrap());
        assert_eq!(store.owned_names().unwrap().len(), 1);
        assert!(store
            .put_device_list(&vec![0; DEVICE_LIST_BYTES_MAX + 1])
            .is_err());
        assert!(store
            .put_owned_name("big", &vec![0; NAME_CERT_BYTES_MAX + 1])
            .is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_new_account_replaces_the_identity_its_device_list_and_names_at_once() {
        let (dir, store) = new_store("set-account");
        store.put_device_list(b"old list").unwrap();
        store.put_owned_name("old", b"old cert").unwrap();
        let mut new = identity();
        new.device_seed = [17; 32];
        new.cert.body.device_key = PublicKey([18; 32]);
        new.cert.body.account_key = PublicKey([19; 32]);
        store.set_account(&new, "alice", b"cert-a").unwrap();
        drop(store);
        let store = Store::open(&dir.join(STATE_FILE)).unwrap();
        assert_eq!(store.identity().unwrap().cert, new.cert);
        assert_eq!(store.identity().unwrap().device_seed, [17; 32]);
        assert_eq!(store.device_list().unwrap(), None);
        assert_eq!(
            store.owned_names().unwrap(),
            vec![("alice".to_string(), b"cert-a".to_vec())]
        );
        assert!(store
            .set_account(&new, "big", &vec![0; NAME_CERT_BYTES_MAX + 1])
            .is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_damaged_host_cache_entry_is_skipped_with_a_warning() {
        let (dir, store) = new_store("bad-entry");
        let good = |byte: u8| HostValue {
            key: PublicKey([byte; 32]),
            addr: SocketAddr::from(([127, 0, 0, 1], 4000 + byte as u16)),
            id_nonce: 1,
            failures: 0,
            rtt_ms: None,
        };
        let undialable = HostValue {
            addr: SocketAddr::from(([0, 0, 0, 0], 4000)),
            ..good(3)
        };
        store
            .write("test", |txn| {
                let mut table = txn.open_table(HOST_CACHE)?;
                table.insert(0, postcard::to_allocvec(&good(1))?.as_slice())?;
                table.insert(1, &b"\xff\xff"[..])?;
                table.insert(2, postcard::to_allocvec(&undialable)?.as_slice())?;
                table.insert(3, postcard::to_allocvec(&good(2))?.as_slice())?;
                Ok(())
            })
            .unwrap();
        let loaded = store.load_host_cache();
        let keys: Vec<u8> = loaded.contacts.iter().map(|c| c.key.0[0]).collect();
        assert_eq!(keys, vec![1, 2]);
        let warning = loaded.warning.expect("a warning");
        assert!(
            warning.contains("ignoring 2 damaged entries of the host cache")
                && warning.contains("entry 2: does not decode")
                && warning.contains("entry 3: 0.0.0.0:4000 cannot be dialed"),
            "{warning}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_database_of_a_newer_schema_is_refused() {
        let (dir, store) = new_store("schema");
        store
            .write("test", |txn| {
                txn.open_table(META)?
                    .insert(META_SCHEMA, SCHEMA_VERSION + 1)?;
                Ok(())
            })
            .unwrap();
        drop(store);
        let error = Store::open(&dir.join(STATE_FILE)).unwrap_err().to_string();
        assert!(error.contains("was written by a newer peerline"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn vote_row(index: u64, value: &[u8]) -> DurableChange {
        let mut key = [0x70u8; 32];
        key[..8].copy_from_slice(&index.to_le_bytes());
        DurableChange {
            table: DurableTable::NameVotes,
            key,
            value: Some(value.to_vec()),
        }
    }

    #[test]
    fn durable_rows_are_committed_removed_and_loaded_back() {
        let (dir, store) = new_store("durable");
        assert!(store.load_durable().unwrap().is_empty());
        let share = DurableChange {
            table: DurableTable::OprfShares,
            key: [2; 32],
            value: Some(b"share".to_vec()),
        };
        let changes = DurableChanges {
            changes: vec![vote_row(1, b"one"), vote_row(2, b"two"), share.clone()],
        };
        store.commit_durable(&changes).unwrap();
        let mut removal = vote_row(1, b"");
        removal.value = None;
        let bundle = DurableChange {
            table: DurableTable::KeyBundles,
            key: [3; 32],
            value: Some(b"bundle".to_vec()),
        };
        // No vote or share: committed without an fsync, made durable by
        // the next immediate commit (here the removal's).
        store
            .commit_durable(&DurableChanges {
                changes: vec![bundle.clone()],
            })
            .unwrap();
        store
            .commit_durable(&DurableChanges {
                changes: vec![removal],
            })
            .unwrap();
        drop(store);
        let store = Store::open(&dir.join(STATE_FILE)).unwrap();
        assert_eq!(
            store.load_durable().unwrap(),
            vec![vote_row(2, b"two"), bundle, share]
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_damaged_durable_row_is_one_sentence_naming_the_file() {
        let (dir, store) = new_store("durable-damaged");
        store
            .write("test", |txn| {
                let mut table = txn.open_table(durable_table(DurableTable::NameVotes))?;
                table.insert(&b"short key"[..], &b"vote"[..])?;
                Ok(())
            })
            .unwrap();
        let error = format!("{:#}", store.load_durable().unwrap_err());
        assert!(
            error.contains("is damaged (a key of table name_votes is not 32 bytes)")
                && error.contains(STATE_FILE),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_version_1_database_is_upgraded_and_an_old_peerline_would_refuse_it() {
        let (dir, store) = new_store("schema-1");
        store
            .write("test", |txn| {
                txn.open_table(META)?.insert(META_SCHEMA, 1)?;
                Ok(())
            })
            .unwrap();
        drop(store);
        let store = Store::open(&dir.join(STATE_FILE)).unwrap();
        let schema = store
            .read(|txn| Ok(txn.open_table(META)?.get(META_SCHEMA)?.map(|v| v.value())))
            .unwrap();
        assert_eq!(schema, Some(SCHEMA_VERSION));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Not a test of time (nothing is asserted): how many durable commits
    /// of one vote row a second this disk takes, against non-durable ones
    /// of the same size. `cargo test -p peerline --release -- --ignored
    /// durable_commit_rate --nocapture`.
    #[test]
    #[ignore = "a measurement"]
    fn durable_commit_rate() {
        let (dir, store) = new_store("commit-rate");
        let value = vec![0x5a; 200];
        let rate = |sync: bool| {
            let started = Instant::now();
            let mut commits = 0u64;
            while started.elapsed() < Duration::from_secs(3) {
                let mut row = vote_row(commits, &value);
                if !sync {
                    row.table = DurableTable::KeyBundles;
                }
                store
                    .commit_durable(&DurableChanges { changes: vec![row] })
                    .unwrap();
                commits += 1;
            }
            commits as f64 / started.elapsed().as_secs_f64()
        };
        let immediate = rate(true);
        let none = rate(false);
        eprintln!(
            "durable commits: {immediate:.0}/s immediate (fsync), {none:.0}/s without; ratio {:.1}",
            none / immediate
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    // ---- crash safety: a write that returned is never lost ----

    const CRASH_DIR_ENV: &str = "PEERLINE_STORE_CRASH_DIR";
    const CRASH_ROUND_ENV: &str = "PEERLINE_STORE_CRASH_ROUND";
    const CRASH_SEED_ENV: &str = "PEERLINE_STORE_CRASH_SEED";
    /// `votes`: the child commits vote rows as the driver does (`Persist`).
    const CRASH_KIND_ENV: &str = "PEERLINE_STORE_CRASH_KIND";
    const CRASH_CHILD_TEST: &str = "node::store::tests::crash_writer_child";
    const CRASH_ROUNDS: u64 = 5;
    /// Writes a child makes before it idles (waiting to be killed).
    const CRASH_WRITES_PER_ROUND_MAX: u64 = 1_000;
    /// The parent kills the child after this many acknowledgements or fewer.
    const CRASH_ACKS_BEFORE_KILL_MAX: u64 = 60;
    /// ... plus at most this long.
    const CRASH_KILL_JITTER_US_MAX: u64 = 5_000;
    const CRASH_ACK_TIMEOUT: Duration = Duration::from_secs(20);

    fn crash_contact(round: u64, index: u64) -> (String, PublicKey) {
        let name = format!("r{round}-{index:05}");
        let mut key = [0xc5u8; 32];
        key[..8].copy_from_slice(&round.to_le_bytes());
        key[8..16].copy_from_slice(&index.to_le_bytes());
        (name, PublicKey(key))
    }

    /// The child of `acknowledged_writes_survive_sigkill_mid_write`: opens
    /// the data directory and adds contacts until killed, printing
    /// `acked NAME` after each write returned.
    #[test]
    #[ignore = "the child process of acknowledged_writes_survive_sigkill_mid_write"]
    fn crash_writer_child() {
        let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
            return;
        };
        let round: u64 = std::env::var(CRASH_ROUND_ENV).unwrap().parse().unwrap();
        let data = super::super::data_dir::DataDir::open(Path::new(&dir), 1_800_000_000).unwrap();
        let mut stdout = std::io::stdout().lock();
        let votes = std::env::var(CRASH_KIND_ENV).is_ok_and(|kind| kind == "votes");
        let persist: std::sync::Arc<dyn peerline_net::Persist> = data.shared_store();
        for index in 0..CRASH_WRITES_PER_ROUND_MAX {
            let (name, key) = crash_contact(round, index);
            if votes {
                let row = vote_row(round << 32 | index, name.as_bytes());
                persist
                    .commit(&DurableChanges { changes: vec![row] })
                    .unwrap();
            } else {
                data.store().add_contact(&name, key, index).unwrap();
            }
            std::io::Write::write_all(&mut stdout, format!("acked {name}\n").as_bytes()).unwrap();
            std::io::Write::flush(&mut stdout).unwrap();
        }
        std::thread::sleep(CRASH_ACK_TIMEOUT);
    }

    /// Five rounds: a child process adds contacts in a loop and is
    /// SIGKILLed at a random moment (after 0–60 acknowledgements, plus up
    /// to 5 ms); the store reopens cleanly (lock released, every page's
    /// checksum checked) with every acknowledged contact in it. A killed
    /// process leaves the page cache behind, so this shows that a death
    /// mid-transaction costs nothing committed; surviving power loss rests
    /// on redb's fsync at every commit (`Durability::Immediate`).
    #[test]
    fn acknowledged_writes_survive_sigkill_mid_write() {
        crash_rounds("contacts");
    }

    /// The same with the driver's commits of vote rows: a vote the
    /// `Persist` commit acknowledged (after which the driver sends it)
    /// survives a kill -9.
    #[test]
    fn acknowledged_votes_survive_sigkill_mid_commit() {
        crash_rounds("votes");
    }

    fn crash_rounds(kind: &str) {
        let seed = std::env::var(CRASH_SEED_ENV)
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        let replay = format!("seed {seed} (replay with {CRASH_SEED_ENV}={seed})");
        eprintln!("crash test {replay}");
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
        let dir = scratch(&format!("crash-{kind}"));
        let mut acked: Vec<String> = Vec::new();
        for round in 0..CRASH_ROUNDS {
            let acks_before_kill = rng.next_u64() % (CRASH_ACKS_BEFORE_KILL_MAX + 1);
            let jitter = Duration::from_micros(rng.next_u64() % CRASH_KILL_JITTER_US_MAX);
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([CRASH_CHILD_TEST, "--exact", "--ignored", "--nocapture"])
                .env(CRASH_DIR_ENV, &dir)
                .env(CRASH_ROUND_ENV, round.to_string())
                .env(CRASH_KIND_ENV, kind)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let (sender, receiver) = mpsc::channel::<String>();
            let reader = std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(name) = line.strip_prefix("acked ") {
                        let _ = sender.send(name.to_string());
                    }
                }
            });
            let started = Instant::now();
            let mut round_acked = 0;
            while round_acked < acks_before_kill {
                let left = CRASH_ACK_TIMEOUT.saturating_sub(started.elapsed());
                match receiver.recv_timeout(left) {
                    Ok(name) => {
                        acked.push(name);
                        round_acked += 1;
                    }
                    Err(_) => {
                        let _ = child.kill();
                        let output = child.wait_with_output().unwrap();
                        panic!(
                            "round {round}: the writer acknowledged {round_acked} writes, then nothing; {replay}; its stderr:\n{}",
                            String::from_utf8_lossy(&output.stderr)
                        );
                    }
                }
            }
            std::thread::sleep(jitter);
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            reader.join().unwrap();
            // Every line printed before the kill was printed after its commit.
            acked.extend(receiver.try_iter());
            eprintln!(
                "round {round}: killed {} µs after its last awaited acknowledgement ({} writes acknowledged in all)",
                jitter.as_micros(),
                acked.len()
            );

            let data = super::super::data_dir::DataDir::open(&dir, 1_800_000_000).unwrap_or_else(
                |error| panic!("round {round}: reopening after the kill: {error:#}; {replay}"),
            );
            let contacts = data.store().contacts().unwrap();
            let rows = data.store().load_durable().unwrap();
            for name in &acked {
                let round_index: Vec<u64> = name[1..]
                    .split('-')
                    .map(|part| part.parse().unwrap())
                    .collect();
                let (_, key) = crash_contact(round_index[0], round_index[1]);
                let kept = match kind {
                    "votes" => rows.contains(&vote_row(
                        round_index[0] << 32 | round_index[1],
                        name.as_bytes(),
                    )),
                    _ => contacts
                        .iter()
                        .any(|contact| &contact.name == name && contact.account_key == key),
                };
                assert!(
                    kept,
                    "round {round}: acknowledged {kind} write {name} is lost; {replay}"
                );
            }
        }
        assert!(!acked.is_empty(), "no write was acknowledged; {replay}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
