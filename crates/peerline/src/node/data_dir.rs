//! The node's data directory: its identity and its host cache.
//!
//! - `identity.key` (TOML, mode 0600 from creation): the device's Ed25519
//!   secret key and, as the current code certifies the device at every
//!   start, the account's. Made on first start, reused after; a damaged file
//!   is an error (a silently new identity would be a different node).
//! - `hostcache.toml`: supernodes the node knew, best first. A hint, not a
//!   truth: unreadable or damaged, it is reported as a warning and the node
//!   starts from its seeds (a disk hiccup must not keep a node off the
//!   network); it is rewritten whole (write to a side file, then rename).

use super::config::{key_hex, parse_key_hex};
use anyhow::{bail, Context, Result};
use peerline_core::hostcache::HostEntry;
use peerline_core::identity::issue_device_cert;
use peerline_core::{CryptoMode, DeviceIdentity, Keypair};
use peerline_proto::{Addr, Contact, PublicKey};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const IDENTITY_FILE: &str = "identity.key";
pub const HOST_CACHE_FILE: &str = "hostcache.toml";
/// Locked while a node runs on the directory (holds its process ID).
const LOCK_FILE: &str = "lock";
/// Host-cache entries read back; a longer file is cut (the core keeps
/// `host_cache_len_max` anyway).
pub const HOST_CACHE_LOAD_LEN_MAX: usize = 1_024;
/// A host cache file longer than this is not read.
const HOST_CACHE_FILE_LEN_MAX: u64 = 1 << 20;
/// An identity file longer than this is not read.
const IDENTITY_FILE_LEN_MAX: u64 = 4_096;

#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Held (an exclusive advisory lock on `LOCK_FILE`) while the node
    /// runs: two nodes on one directory would share an identity and
    /// overwrite each other's host cache.
    _lock: File,
}

/// Where the identity came from, for the start-up line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityOrigin {
    Created,
    Loaded,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    device_secret_key: String,
    account_secret_key: String,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostCacheFile {
    #[serde(default)]
    host: Vec<HostLine>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostLine {
    key: String,
    addr: SocketAddr,
    /// The supernode's ID-puzzle nonce as last seen (0 when unknown).
    #[serde(default)]
    id_nonce: u64,
    /// Failures since its last success, when saved.
    #[serde(default)]
    failures: u8,
    /// Smoothed attach round-trip time, when measured.
    #[serde(default)]
    rtt_ms: Option<u16>,
}

/// A loaded host cache, best first, and what was wrong with the file.
#[derive(Debug, Default)]
pub struct LoadedHostCache {
    pub contacts: Vec<Contact>,
    pub warning: Option<String>,
}

/// Takes the directory's lock (released by the OS when the process ends,
/// however it ends: a `kill -9` leaves no stale lock), and writes this
/// process's ID into the file for the next one's error message.
fn lock(path: &Path) -> Result<File> {
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
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (process {pid})"),
            };
            bail!(
                "the data directory {} is in use by another peerline node{holder}; give each node its own --data-dir",
                path.display()
            );
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

impl DataDir {
    /// Creates the directory (mode 0700) if missing and checks that it is
    /// a directory the node can read and write.
    pub fn open(path: &Path) -> Result<DataDir> {
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
        let lock = lock(path)?;
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn identity_path(&self) -> PathBuf {
        self.path.join(IDENTITY_FILE)
    }

    pub fn host_cache_path(&self) -> PathBuf {
        self.path.join(HOST_CACHE_FILE)
    }

    /// The node's identity: loaded when the file exists, else made from
    /// the operating system's randomness and written (mode 0600) first. The
    /// device certificate is issued afresh, valid `cert_ttl_s` from `now_unix_s`.
    pub fn identity(
        &self,
        now_unix_s: u64,
        cert_ttl_s: u64,
    ) -> Result<(DeviceIdentity, IdentityOrigin)> {
        let path = self.identity_path();
        let (device, account, origin) = if path.exists() {
            let (device, account) = read_identity(&path)?;
            (device, account, IdentityOrigin::Loaded)
        } else {
            let device = random_seed()?;
            let account = random_seed()?;
            write_identity(&path, &device, &account)?;
            (device, account, IdentityOrigin::Created)
        };
        let device = Keypair::from_seed(CryptoMode::Full, device);
        let account = Keypair::from_seed(CryptoMode::Full, account);
        let cert = issue_device_cert(&account, device.public(), now_unix_s + cert_ttl_s);
        Ok((
            DeviceIdentity {
                keypair: device,
                cert,
            },
            origin,
        ))
    }

    /// The saved host cache, best first; a missing file is an empty cache,
    /// a bad one an empty cache and a warning.
    pub fn load_host_cache(&self) -> LoadedHostCache {
        let path = self.host_cache_path();
        match read_host_cache(&path) {
            Ok(contacts) => LoadedHostCache {
                contacts,
                warning: None,
            },
            Err(problem) => LoadedHostCache {
                contacts: Vec::new(),
                warning: Some(format!(
                    "ignoring the host cache {} ({problem:#}); starting from the bootstrap list, and it will be rewritten",
                    path.display()
                )),
            },
        }
    }

    /// Writes the host cache, best first (fewest failures, then fastest).
    pub fn save_host_cache(&self, entries: &[HostEntry]) -> Result<()> {
        let mut sorted: Vec<&HostEntry> = entries.iter().collect();
        sorted.sort_by_key(|entry| (entry.failures, entry.rtt_ms));
        let file = HostCacheFile {
            host: sorted
                .into_iter()
                .take(HOST_CACHE_LOAD_LEN_MAX)
                .map(|entry| HostLine {
                    key: key_hex(&entry.contact.key),
                    addr: entry.contact.addr.to_socket(),
                    id_nonce: entry.contact.id_nonce,
                    failures: entry.failures,
                    rtt_ms: (entry.rtt_ms != u16::MAX).then_some(entry.rtt_ms),
                })
                .collect(),
        };
        let text = toml::to_string(&file).context("cannot encode the host cache")?;
        let text = format!(
            "# Supernodes this peerline node knew, best first; rewritten by the node.\n{}\n",
            text.trim_end()
        );
        let path = self.host_cache_path();
        replace_file(&path, text.as_bytes(), 0o644)
            .with_context(|| format!("cannot save the host cache {}", path.display()))
    }
}

fn random_seed() -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|error| anyhow::anyhow!("the operating system gave no randomness: {error}"))?;
    Ok(seed)
}

fn damaged(path: &Path, problem: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the identity file {} is damaged ({problem}); restore it from a backup, or move it away to start as a new node (with a new node key)",
        path.display()
    )
}

fn read_identity(path: &Path) -> Result<([u8; 32], [u8; 32])> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read the identity file {}", path.display()))?;
    if metadata.len() > IDENTITY_FILE_LEN_MAX {
        return Err(damaged(path, "far too long"));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "the identity file {} is readable by others (mode {mode:o}): whoever reads it can act as this node; chmod 600 it",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the identity file {}", path.display()))?;
    let file: IdentityFile =
        toml::from_str(&text).map_err(|error| damaged(path, error.message().trim_end()))?;
    let device = parse_key_hex(&file.device_secret_key)
        .ok_or_else(|| damaged(path, "device_secret_key is not 64 hex digits"))?;
    let account = parse_key_hex(&file.account_secret_key)
        .ok_or_else(|| damaged(path, "account_secret_key is not 64 hex digits"))?;
    Ok((device, account))
}

fn write_identity(path: &Path, device: &[u8; 32], account: &[u8; 32]) -> Result<()> {
    let file = IdentityFile {
        device_secret_key: key_hex(&PublicKey(*device)),
        account_secret_key: key_hex(&PublicKey(*account)),
    };
    let text = toml::to_string(&file).context("cannot encode the identity")?;
    let text = format!(
        "# peerline node identity: whoever holds this file can act as this node. Keep it secret.\n{text}"
    );
    replace_file(path, text.as_bytes(), 0o600)
        .with_context(|| format!("cannot write the identity file {}", path.display()))
}

/// Writes `bytes` to a side file created with `mode` (never wider, never
/// chmod'ed after), syncs it, and renames it over `path`: a crash leaves
/// the old file or the new one, not half of one.
fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut side = path.as_os_str().to_owned();
    side.push(".new");
    let side = PathBuf::from(side);
    // A side file left by a crash may have another mode: start afresh.
    match std::fs::remove_file(&side) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&side)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&side, path)
}

fn read_host_cache(path: &Path) -> Result<Vec<Contact>> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).context("cannot read it"),
    };
    if metadata.len() > HOST_CACHE_FILE_LEN_MAX {
        bail!("longer than {} bytes", HOST_CACHE_FILE_LEN_MAX);
    }
    let text = std::fs::read_to_string(path).context("cannot read it")?;
    let file: HostCacheFile =
        toml::from_str(&text).map_err(|error| anyhow::anyhow!("{}", error.message().trim_end()))?;
    let mut contacts = Vec::with_capacity(file.host.len().min(HOST_CACHE_LOAD_LEN_MAX));
    for (index, line) in file
        .host
        .into_iter()
        .take(HOST_CACHE_LOAD_LEN_MAX)
        .enumerate()
    {
        let key = parse_key_hex(&line.key)
            .ok_or_else(|| anyhow::anyhow!("entry {}: key is not 64 hex digits", index + 1))?;
        if line.addr.ip().is_unspecified() || line.addr.port() == 0 {
            bail!("entry {}: {} cannot be dialed", index + 1, line.addr);
        }
        let contact = Contact {
            key: PublicKey(key),
            id_nonce: line.id_nonce,
            addr: Addr::from_socket(line.addr),
        };
        if !contacts.iter().any(|c: &Contact| c.key == contact.key) {
            contacts.push(contact);
        }
    }
    Ok(contacts)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn one_node_at_a_time_holds_a_data_directory() {
        let dir = scratch("lock");
        let first = DataDir::open(&dir).unwrap();
        let error = DataDir::open(&dir).unwrap_err().to_string();
        assert!(
            error.contains("is in use by another peerline node")
                && error.contains(&format!("(process {})", std::process::id())),
            "{error}"
        );
        // Released when the holder goes.
        drop(first);
        DataDir::open(&dir).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn identity_is_made_once_with_mode_0600_and_reused() {
        let dir = scratch("identity");
        let data = DataDir::open(&dir).unwrap();
        let (first, origin) = data.identity(1_000, 60).unwrap();
        assert_eq!(origin, IdentityOrigin::Created);
        let mode = std::fs::metadata(data.identity_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, origin) = data.identity(2_000, 60).unwrap();
        assert_eq!(origin, IdentityOrigin::Loaded);
        assert_eq!(again.keypair.public(), first.keypair.public());
        assert_eq!(again.account(), first.account());
        assert_eq!(again.cert.body.expires_unix_s, 2_060, "certified afresh");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_damaged_identity_is_an_error_not_a_new_node() {
        let dir = scratch("damaged");
        let data = DataDir::open(&dir).unwrap();
        for text in [
            "garbage",
            "device_secret_key = \"00\"\naccount_secret_key = \"00\"\n",
            "device_secret_key = 1\n",
        ] {
            std::fs::write(data.identity_path(), text).unwrap();
            let error = format!("{:#}", data.identity(0, 60).unwrap_err());
            assert!(error.contains("is damaged"), "{text}: {error}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn host_cache_round_trips_best_first() {
        let dir = scratch("hostcache");
        let data = DataDir::open(&dir).unwrap();
        assert!(data.load_host_cache().contacts.is_empty());
        data.save_host_cache(&[entry(1, 2, 5), entry(2, 0, u16::MAX), entry(3, 0, 40)])
            .unwrap();
        let loaded = data.load_host_cache();
        assert!(loaded.warning.is_none());
        let keys: Vec<u8> = loaded.contacts.iter().map(|c| c.key.0[0]).collect();
        assert_eq!(keys, vec![3, 2, 1], "fewest failures, then fastest, first");
        assert_eq!(loaded.contacts[0], entry(3, 0, 40).contact);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_damaged_host_cache_is_a_warning_and_an_empty_cache() {
        let dir = scratch("badcache");
        let data = DataDir::open(&dir).unwrap();
        for text in [
            "[[host]]\nkey = \"zz\"\naddr = \"127.0.0.1:1\"\n",
            "[[host]]\nkey = 5\n",
            "\u{0}\u{1}binary",
            "hosts = []\n",
        ] {
            std::fs::write(data.host_cache_path(), text).unwrap();
            let loaded = data.load_host_cache();
            assert!(loaded.contacts.is_empty());
            let warning = loaded.warning.expect("a warning");
            assert!(warning.contains("ignoring the host cache"), "{warning}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_is_not_a_data_dir() {
        let dir = scratch("file");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, "x").unwrap();
        let error = DataDir::open(&file).unwrap_err().to_string();
        assert!(error.contains("is not a directory"), "{error}");
        let error = format!("{:#}", DataDir::open(&file.join("below")).unwrap_err());
        assert!(
            error.contains("cannot create the data directory"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
