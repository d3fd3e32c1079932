//! The node's data directory: opened (mode 0700 when created), locked while
//! a node runs, and holding `state.redb` (`store`: the device key and
//! certificate, contacts, host cache, owned names).
//!
//! - First start: a new account and device. The account's root key is made,
//!   certifies the device once (valid `DEVICE_CERT_TTL_S`), and is dropped:
//!   it is never written. (Keeping the root key elsewhere — sealed in the
//!   directory, opened with a password — comes with `peerline account
//!   create` and `peerline login`.)
//! - A directory from before the store (`identity.key` holds the device's
//!   and the account's secret keys, `hostcache.toml` the host cache) is
//!   migrated once: the account key certifies the device one last time, the
//!   store is written, and both old files are removed (`identity.key`
//!   overwritten first). The root key does not survive the migration.
//! - After: the stored certificate is used as it is, so a device whose
//!   certificate expired stops with an error telling to log in again; a
//!   damaged `state.redb` is an error (a silently new identity would be a
//!   different node and account).

mod legacy;

use super::store::{self, LoadedHostCache, Store, StoredIdentity};
use anyhow::{bail, Context, Result};
use peerline_core::hostcache::HostEntry;
use peerline_core::identity::issue_device_cert;
use peerline_core::{CryptoMode, DeviceIdentity, Keypair};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use legacy::{HOST_CACHE_FILE, IDENTITY_FILE};
pub use store::STATE_FILE;

/// Locked while a node runs on the directory (holds its process ID).
const LOCK_FILE: &str = "lock";
/// Lifetime of the certificate a device gets from its account. The device
/// cannot renew it (it holds no root key), so it is long; a running node
/// warns in its last `DEVICE_CERT_WARNING_S`. (The network's nodes in the
/// simulator and the loopback demo re-certify at every start with
/// `Params::device_cert_ttl_s`, 30 days.)
pub const DEVICE_CERT_TTL_S: u64 = 365 * 24 * 3_600;
pub const DEVICE_CERT_WARNING_S: u64 = 30 * 24 * 3_600;

#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Shared with the driver, which commits the node's durable state to it.
    store: Arc<Store>,
    origin: IdentityOrigin,
    /// Held (an exclusive advisory lock on `LOCK_FILE`) while the node
    /// runs: two nodes on one directory would share an identity and
    /// overwrite each other's state.
    _lock: File,
}

/// Where the identity came from, for the start-up line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityOrigin {
    /// A new account and device, just made.
    Created,
    /// Moved from an `identity.key` into the store.
    Migrated,
    Loaded,
}

/// Another process (a running node, or another command) holds the
/// directory's lock.
#[derive(Debug, thiserror::Error)]
#[error("the data directory {} is in use by another peerline node{}; give each node its own --data-dir", .path.display(), holder_text(.holder))]
pub struct InUse {
    pub path: PathBuf,
    /// The holder's process ID as it wrote it (empty when unknown).
    pub holder: String,
}

/// ` (process 123)`, or nothing when the holder is unknown.
pub fn holder_text(holder: &str) -> String {
    match holder {
        "" => String::new(),
        pid => format!(" (process {pid})"),
    }
}

/// Takes the directory's lock (released by the OS when the process ends,
/// however it ends: a `kill -9` leaves no stale lock), and writes this
/// process's ID into the file for the next one's error message.
pub fn lock(path: &Path) -> Result<File> {
    let lock_path = path.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
            return Err(InUse {
                path: path.to_path_buf(),
                holder: holder.trim().to_string(),
            }
            .into());
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(error).with_context(|| format!("cannot lock {}", lock_path.display()))
        }
    }
    file.set_len(0)
        .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()))
        .with_context(|| format!("cannot write {}", lock_path.display()))?;
    Ok(file)
}

/// Creates the directory (mode 0700) if missing and checks that it is a
/// directory the node can read and write.
pub fn prepare(path: &Path) -> Result<()> {
    if !path.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .with_context(|| format!("cannot create the data directory {}", path.display()))?;
    }
    if !path.is_dir() {
        bail!(
            "the data directory {} is not a directory; give --data-dir a directory",
            path.display()
        );
    }
    std::fs::read_dir(path)
        .with_context(|| format!("cannot read the data directory {}", path.display()))?;
    let probe = path.join(".peerline-write-test");
    let _ = std::fs::remove_file(&probe);
    File::create(&probe)
        .with_context(|| format!("the data directory {} is not writable", path.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

impl DataDir {
    /// Opens (creating it if missing) and locks the directory, then opens
    /// its store — made on first start (a new account certifying a new
    /// device, valid from `now_unix_s`), migrated from `identity.key` once.
    pub fn open(path: &Path, now_unix_s: u64) -> Result<DataDir> {
        prepare(path)?;
        let lock = lock(path)?;
        let state = path.join(STATE_FILE);
        let old_identity = path.join(IDENTITY_FILE);
        let old_host_cache = path.join(HOST_CACHE_FILE);
        let (store, origin) = if state.exists() {
            let store = Store::open(&state)?;
            if old_identity.exists() {
                finish_migration(&store, &old_identity, &old_host_cache)?;
            }
            (store, IdentityOrigin::Loaded)
        } else if old_identity.exists() {
            let old = legacy::read_identity(&old_identity)?;
            let (hosts, warning) = legacy::read_host_cache(&old_host_cache);
            if let Some(warning) = warning {
                tracing::warn!("{warning}");
            }
            let identity = certify(old.device_seed, old.account_seed, now_unix_s);
            drop(old);
            let store = Store::create(&state, &identity, &hosts)?;
            remove_old_files(&old_identity, &old_host_cache)?;
            tracing::info!(
                "moved {} into {} (the account's root key is no longer kept on this device)",
                old_identity.display(),
                state.display()
            );
            (store, IdentityOrigin::Migrated)
        } else {
            let identity = certify(random_seed()?, random_seed()?, now_unix_s);
            (
                Store::create(&state, &identity, &[])?,
                IdentityOrigin::Created,
            )
        };
        Ok(DataDir {
            path: path.to_path_buf(),
            store: Arc::new(store),
            origin,
            _lock: lock,
        })
    }

    /// Opens and locks a directory that holds a state database; `None`
    /// (and nothing made) when it holds none.
    pub fn open_existing(path: &Path) -> Result<Option<DataDir>> {
        let state = path.join(STATE_FILE);
        if !state.exists() {
            return Ok(None);
        }
        let lock = lock(path)?;
        Ok(Some(DataDir {
            path: path.to_path_buf(),
            store: Arc::new(Store::open(&state)?),
            origin: IdentityOrigin::Loaded,
            _lock: lock,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    #[allow(dead_code)]
    pub fn state_path(&self) -> &Path {
        self.store.path()
    }

    #[allow(dead_code)]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, for the driver to commit the node's durable state to
    /// (`Persist`) while the directory stays locked by this `DataDir`.
    pub fn shared_store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }

    pub fn origin(&self) -> IdentityOrigin {
        self.origin
    }

    /// The device's key and certificate; an error once the certificate
    /// has expired at `now_unix_s`, a warning in its last days.
    pub fn identity(&self, now_unix_s: u64) -> Result<DeviceIdentity> {
        let stored = self.store.identity()?;
        let expires_unix_s = stored.cert.body.expires_unix_s;
        if now_unix_s >= expires_unix_s {
            bail!(
                "this device's certificate expired on {}; log in again with `peerline login <name>`",
                utc_time(expires_unix_s)
            );
        }
        if expires_unix_s - now_unix_s < DEVICE_CERT_WARNING_S {
            tracing::warn!(
                "this device's certificate expires on {}; log in again with `peerline login <name>` before then",
                utc_time(expires_unix_s)
            );
        }
        let keypair = Keypair::from_seed(CryptoMode::Full, stored.device_seed);
        if keypair.public() != stored.cert.body.device_key {
            bail!(
                "the state database {} is damaged (its certificate is for another device key); restore it from a backup, or move it away to start as a new node (with a new device key and account)",
                self.store.path().display()
            );
        }
        Ok(DeviceIdentity {
            keypair,
            cert: stored.cert,
        })
    }

    /// The saved host cache, best first; damaged entries are skipped and
    /// named in the warning.
    pub fn load_host_cache(&self) -> LoadedHostCache {
        self.store.load_host_cache()
    }

    /// Replaces the host cache, best first (fewest failures, then fastest).
    pub fn save_host_cache(&self, entries: &[HostEntry]) -> Result<()> {
        self.store.save_host_cache(entries)
    }
}

/// The account certifies the device, once; the account's key goes out of
/// scope here.
fn certify(device_seed: [u8; 32], account_seed: [u8; 32], now_unix_s: u64) -> StoredIdentity {
    let account = Keypair::from_seed(CryptoMode::Full, account_seed);
    certify_device(device_seed, &account, now_unix_s)
}

/// The account's root key certifies the device (valid `DEVICE_CERT_TTL_S`
/// from `now_unix_s`).
pub fn certify_device(device_seed: [u8; 32], account: &Keypair, now_unix_s: u64) -> StoredIdentity {
    let device = Keypair::from_seed(CryptoMode::Full, device_seed);
    let cert = issue_device_cert(
        account,
        device.public(),
        now_unix_s.saturating_add(DEVICE_CERT_TTL_S),
    );
    StoredIdentity { device_seed, cert }
}

/// A device of a new account, for one command (`peerline lookup` without
/// a data directory): nothing is written, and the account's key is dropped.
pub fn throwaway_identity(now_unix_s: u64) -> Result<DeviceIdentity> {
    let stored = certify(random_seed()?, random_seed()?, now_unix_s);
    Ok(device_identity(&stored))
}

/// The running form of a stored identity.
pub fn device_identity(stored: &StoredIdentity) -> DeviceIdentity {
    DeviceIdentity {
        keypair: Keypair::from_seed(CryptoMode::Full, stored.device_seed),
        cert: stored.cert,
    }
}

/// A crash between writing the store and removing `identity.key` left
/// both: the store wins when it holds the same device; another device's
/// file is the operator's to sort out.
fn finish_migration(store: &Store, old_identity: &Path, old_host_cache: &Path) -> Result<()> {
    let same_device = legacy::read_identity(old_identity).is_ok_and(|old| {
        old.device_seed == store.identity().map(|s| s.device_seed).unwrap_or_default()
    });
    if !same_device {
        bail!(
            "the data directory holds both {} and {}, for different devices; move {} away (it holds an account's root key: keep it safe or delete it)",
            store.path().display(),
            old_identity.display(),
            old_identity.display()
        );
    }
    remove_old_files(old_identity, old_host_cache)?;
    tracing::info!(
        "finished moving {} into {}",
        old_identity.display(),
        store.path().display()
    );
    Ok(())
}

fn remove_old_files(old_identity: &Path, old_host_cache: &Path) -> Result<()> {
    legacy::shred(old_identity)?;
    legacy::remove(old_host_cache)?;
    store::sync_dir(old_identity)
}

pub fn random_seed() -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|error| anyhow::anyhow!("the operating system gave no randomness: {error}"))?;
    Ok(seed)
}

/// `2027-11-28 01:10 UTC`; a time past the calendar's range (it came
/// from a file or the network) is shown as seconds.
pub fn utc_time(unix_s: u64) -> String {
    match i64::try_from(unix_s).map(time::OffsetDateTime::from_unix_timestamp) {
        Ok(Ok(t)) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        _ => format!("{unix_s} s after 1970 (beyond the calendar)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerline_core::identity::verify_device_cert;
    use peerline_proto::{Addr, Contact, PublicKey};
    use std::net::SocketAddr;
    use std::os::unix::fs::PermissionsExt;

    const NOW: u64 = 1_800_000_000;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("peerline-datadir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn entry(byte: u8, failures: u8, rtt_ms: u16) -> HostEntry {
        HostEntry {
            contact: Contact {
                key: PublicKey([byte; 32]),
                id_nonce: byte as u64 * 3,
                addr: Addr::from_socket(SocketAddr::from(([127, 0, 0, 1], 4000 + byte as u16))),
            },
            rtt_ms,
            failures,
            not_before_s: 0,
            hint_rank: 0,
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Whether `needle` appears anywhere in the file's bytes.
    fn file_contains(path: &Path, needle: &[u8]) -> bool {
        let bytes = std::fs::read(path).unwrap();
        bytes.windows(needle.len()).any(|window| window == needle)
    }

    #[test]
    fn one_node_at_a_time_holds_a_data_directory() {
        let dir = scratch("lock");
        let first = DataDir::open(&dir, NOW).unwrap();
        let error = DataDir::open(&dir, NOW).unwrap_err().to_string();
        assert!(
            error.contains("is in use by another peerline node")
                && error.contains(&format!("(process {})", std::process::id())),
            "{error}"
        );
        // Released when the holder goes.
        drop(first);
        DataDir::open(&dir, NOW).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn identity_is_made_once_in_a_0600_file_in_a_0700_directory_and_reused() {
        let dir = scratch("identity");
        let data = DataDir::open(&dir, NOW).unwrap();
        assert_eq!(data.origin(), IdentityOrigin::Created);
        let first = data.identity(NOW).unwrap();
        assert_eq!(mode(&dir), 0o700, "data directory");
        assert_eq!(mode(&dir.join(STATE_FILE)), 0o600, "state database");
        assert!(!dir.join(IDENTITY_FILE).exists());
        assert!(!dir.join(format!("{STATE_FILE}.new")).exists());
        verify_device_cert(CryptoMode::Full, &first.cert, NOW, 0).unwrap();
        assert_eq!(first.cert.body.expires_unix_s, NOW + DEVICE_CERT_TTL_S);
        drop(data);

        let data = DataDir::open(&dir, NOW + 5_000).unwrap();
        assert_eq!(data.origin(), IdentityOrigin::Loaded);
        let again = data.identity(NOW + 5_000).unwrap();
        assert_eq!(again.keypair.public(), first.keypair.public());
        assert_eq!(again.account(), first.account());
        assert_eq!(
            again.cert, first.cert,
            "the stored certificate, not a new one"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_expired_certificate_is_an_error_that_says_to_log_in_again() {
        let dir = scratch("expired");
        let data = DataDir::open(&dir, NOW).unwrap();
        let expires = NOW + DEVICE_CERT_TTL_S;
        data.identity(expires - 1).unwrap();
        let error = data.identity(expires).unwrap_err().to_string();
        assert_eq!(
            error,
            "this device's certificate expired on 2028-01-15 08:00 UTC; log in again with `peerline login <name>`"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_identity_file_is_migrated_once_and_its_root_key_dropped() {
        let dir = scratch("migrate");
        std::fs::create_dir_all(&dir).unwrap();
        let device_seed = [0x11u8; 32];
        let account_seed = [0x22u8; 32];
        std::fs::write(
            dir.join(IDENTITY_FILE),
            format!(
                "device_secret_key = \"{}\"\naccount_secret_key = \"{}\"\n",
                "11".repeat(32),
                "22".repeat(32)
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join(HOST_CACHE_FILE),
            "[[host]]\nkey = \"0505050505050505050505050505050505050505050505050505050505050505\"\naddr = \"127.0.0.1:4005\"\nid_nonce = 15\nfailures = 1\n\
             [[host]]\nkey = \"0606060606060606060606060606060606060606060606060606060606060606\"\naddr = \"127.0.0.1:4006\"\nrtt_ms = 30\n",
        )
        .unwrap();
        let data = DataDir::open(&dir, NOW).unwrap();
        assert_eq!(data.origin(), IdentityOrigin::Migrated);
        let identity = data.identity(NOW).unwrap();
        let device = Keypair::from_seed(CryptoMode::Full, device_seed);
        let account = Keypair::from_seed(CryptoMode::Full, account_seed);
        assert_eq!(identity.keypair.public(), device.public());
        assert_eq!(identity.account(), account.public());
        verify_device_cert(CryptoMode::Full, &identity.cert, NOW, 0).unwrap();
        assert_eq!(identity.cert.body.expires_unix_s, NOW + DEVICE_CERT_TTL_S);
        assert!(!dir.join(IDENTITY_FILE).exists(), "identity.key removed");
        assert!(
            !dir.join(HOST_CACHE_FILE).exists(),
            "hostcache.toml removed"
        );
        let cached = data.load_host_cache();
        assert!(cached.warning.is_none());
        let keys: Vec<u8> = cached.contacts.iter().map(|c| c.key.0[0]).collect();
        assert_eq!(keys, vec![6, 5], "best first");
        assert_eq!(cached.contacts[1].id_nonce, 15);
        drop(data);
        assert!(
            !file_contains(&dir.join(STATE_FILE), &account_seed),
            "the root seed is not in the database"
        );
        assert!(file_contains(&dir.join(STATE_FILE), &device_seed));

        let data = DataDir::open(&dir, NOW + 10).unwrap();
        assert_eq!(data.origin(), IdentityOrigin::Loaded);
        assert_eq!(data.identity(NOW + 10).unwrap().cert, identity.cert);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_migration_cut_short_is_finished_and_a_foreign_identity_file_refused() {
        let dir = scratch("half-migrated");
        let old = format!(
            "device_secret_key = \"{}\"\naccount_secret_key = \"{}\"\n",
            "33".repeat(32),
            "44".repeat(32)
        );
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(IDENTITY_FILE), &old).unwrap();
        drop(DataDir::open(&dir, NOW).unwrap());
        // The crash came after the store was written, before the removal.
        std::fs::write(dir.join(IDENTITY_FILE), &old).unwrap();
        let data = DataDir::open(&dir, NOW).unwrap();
        assert_eq!(data.origin(), IdentityOrigin::Loaded);
        assert!(!dir.join(IDENTITY_FILE).exists());
        drop(data);

        let other = old.replace(&"33".repeat(32), &"55".repeat(32));
        std::fs::write(dir.join(IDENTITY_FILE), other).unwrap();
        let error = DataDir::open(&dir, NOW).unwrap_err().to_string();
        assert!(error.contains("for different devices"), "{error}");
        assert!(dir.join(IDENTITY_FILE).exists(), "left for the operator");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_damaged_identity_file_is_an_error_not_a_new_node() {
        let dir = scratch("damaged");
        std::fs::create_dir_all(&dir).unwrap();
        for text in [
            "garbage",
            "device_secret_key = \"00\"\naccount_secret_key = \"00\"\n",
            "device_secret_key = 1\n",
        ] {
            std::fs::write(dir.join(IDENTITY_FILE), text).unwrap();
            let error = format!("{:#}", DataDir::open(&dir, NOW).unwrap_err());
            assert!(error.contains("is damaged"), "{text}: {error}");
            assert!(!dir.join(STATE_FILE).exists(), "{text}: no new identity");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_damaged_state_database_is_an_error_not_a_new_node() {
        let dir = scratch("damaged-state");
        drop(DataDir::open(&dir, NOW).unwrap());
        let state = dir.join(STATE_FILE);
        let good = std::fs::read(&state).unwrap();
        let mut flipped = good.clone();
        for byte in flipped.iter_mut().skip(4_096) {
            *byte ^= 0x5a;
        }
        let cases: [(&str, Vec<u8>); 5] = [
            ("empty", Vec::new()),
            ("garbage", b"not a database at all".repeat(100)),
            ("truncated to a page", good[..4_096].to_vec()),
            ("truncated to half", good[..good.len() / 2].to_vec()),
            ("every page after the first flipped", flipped),
        ];
        for (what, bytes) in cases {
            std::fs::write(&state, &bytes).unwrap();
            let error = format!("{:#}", DataDir::open(&dir, NOW).unwrap_err());
            assert!(
                error.starts_with(&format!(
                    "the state database {} is damaged",
                    state.display()
                )) && error.contains("restore it from a backup, or move it away"),
                "{what}: {error}"
            );
            assert_eq!(
                std::fs::read(&state).unwrap().len(),
                bytes.len(),
                "{what}: left as it was"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_certificate_for_another_device_key_is_damage() {
        let dir = scratch("other-device");
        std::fs::create_dir_all(&dir).unwrap();
        let mut stored = certify([1; 32], [2; 32], NOW);
        stored.device_seed = [3; 32];
        drop(Store::create(&dir.join(STATE_FILE), &stored, &[]).unwrap());
        let data = DataDir::open(&dir, NOW).unwrap();
        let error = data.identity(NOW).unwrap_err().to_string();
        assert!(
            error.contains("is damaged (its certificate is for another device key)"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn host_cache_round_trips_best_first() {
        let dir = scratch("hostcache");
        let data = DataDir::open(&dir, NOW).unwrap();
        assert!(data.load_host_cache().contacts.is_empty());
        data.save_host_cache(&[entry(1, 2, 5), entry(2, 0, u16::MAX), entry(3, 0, 40)])
            .unwrap();
        drop(data);
        let data = DataDir::open(&dir, NOW).unwrap();
        let loaded = data.load_host_cache();
        assert!(loaded.warning.is_none());
        let keys: Vec<u8> = loaded.contacts.iter().map(|c| c.key.0[0]).collect();
        assert_eq!(keys, vec![3, 2, 1], "fewest failures, then fastest, first");
        assert_eq!(loaded.contacts[0], entry(3, 0, 40).contact);
        data.save_host_cache(&[entry(9, 0, 1)]).unwrap();
        let keys: Vec<u8> = data
            .load_host_cache()
            .contacts
            .iter()
            .map(|c| c.key.0[0])
            .collect();
        assert_eq!(keys, vec![9], "replaced whole");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_is_not_a_data_dir() {
        let dir = scratch("file");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, "x").unwrap();
        let error = DataDir::open(&file, NOW).unwrap_err().to_string();
        assert!(error.contains("is not a directory"), "{error}");
        let error = format!("{:#}", DataDir::open(&file.join("below"), NOW).unwrap_err());
        assert!(
            error.contains("cannot create the data directory"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn utc_times_read_as_calendar_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_time(1_800_000_000), "2027-01-15 08:00 UTC");
        assert_eq!(utc_time(951_868_799), "2000-02-29 23:59 UTC");
        assert_eq!(
            utc_time(u64::MAX),
            "18446744073709551615 s after 1970 (beyond the calendar)"
        );
    }
}
