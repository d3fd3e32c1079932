//! The data directory's files before `state.redb`, read once to migrate
//! them into it and then removed: `identity.key` (TOML: the device's and
//! the account's Ed25519 secret keys) and `hostcache.toml`.

use super::super::config::parse_key_hex;
use anyhow::{anyhow, bail, Context, Result};
use peerline_core::hostcache::HostEntry;
use peerline_proto::{Addr, Contact, PublicKey};
use serde::Deserialize;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub const IDENTITY_FILE: &str = "identity.key";
pub const HOST_CACHE_FILE: &str = "hostcache.toml";
/// An identity file longer than this is not read.
const IDENTITY_FILE_LEN_MAX: u64 = 4_096;
/// A host cache file longer than this is not read.
const HOST_CACHE_FILE_LEN_MAX: u64 = 1 << 20;
/// Host-cache entries read back; a longer file is cut.
const HOST_CACHE_LOAD_LEN_MAX: usize = 1_024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    device_secret_key: String,
    account_secret_key: String,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostCacheFile {
    #[serde(default)]
    host: Vec<HostLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostLine {
    key: String,
    addr: SocketAddr,
    #[serde(default)]
    id_nonce: u64,
    #[serde(default)]
    failures: u8,
    #[serde(default)]
    rtt_ms: Option<u16>,
}

/// The device's and the account's seeds.
pub struct OldIdentity {
    pub device_seed: [u8; 32],
    pub account_seed: [u8; 32],
}

impl Drop for OldIdentity {
    fn drop(&mut self) {
        self.device_seed = [0; 32];
        self.account_seed = [0; 32];
    }
}

fn damaged(path: &Path, problem: &str) -> anyhow::Error {
    anyhow!(
        "the identity file {} is damaged ({problem}); restore it from a backup, or move it away to start as a new node (with a new node key)",
        path.display()
    )
}

pub fn read_identity(path: &Path) -> Result<OldIdentity> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("cannot read the identity file {}", path.display()))?;
    if metadata.len() > IDENTITY_FILE_LEN_MAX {
        return Err(damaged(path, "far too long"));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "the identity file {} is readable by others (mode {mode:o}): whoever read it can act as this account; it is moved into the state database and removed",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the identity file {}", path.display()))?;
    let file: IdentityFile =
        toml::from_str(&text).map_err(|error| damaged(path, error.message().trim_end()))?;
    let device_seed = parse_key_hex(&file.device_secret_key)
        .ok_or_else(|| damaged(path, "device_secret_key is not 64 hex digits"))?;
    let account_seed = parse_key_hex(&file.account_secret_key)
        .ok_or_else(|| damaged(path, "account_secret_key is not 64 hex digits"))?;
    Ok(OldIdentity {
        device_seed,
        account_seed,
    })
}

/// The old host cache as entries (best first, as saved); a missing file is
/// none, a damaged one none and a warning.
pub fn read_host_cache(path: &Path) -> (Vec<HostEntry>, Option<String>) {
    match parse_host_cache(path) {
        Ok(entries) => (entries, None),
        Err(problem) => (
            Vec::new(),
            Some(format!(
                "ignoring the host cache {} ({problem:#}); starting from the bootstrap list",
                path.display()
            )),
        ),
    }
}

fn parse_host_cache(path: &Path) -> Result<Vec<HostEntry>> {
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
        toml::from_str(&text).map_err(|error| anyhow!("{}", error.message().trim_end()))?;
    let mut entries: Vec<HostEntry> = Vec::new();
    for (index, line) in file
        .host
        .into_iter()
        .take(HOST_CACHE_LOAD_LEN_MAX)
        .enumerate()
    {
        let key = parse_key_hex(&line.key)
            .ok_or_else(|| anyhow!("entry {}: key is not 64 hex digits", index + 1))?;
        if line.addr.ip().is_unspecified() || line.addr.port() == 0 {
            bail!("entry {}: {} cannot be dialed", index + 1, line.addr);
        }
        if entries.iter().any(|entry| entry.contact.key.0 == key) {
            continue;
        }
        entries.push(HostEntry {
            contact: Contact {
                key: PublicKey(key),
                id_nonce: line.id_nonce,
                addr: Addr::from_socket(line.addr),
            },
            rtt_ms: line.rtt_ms.unwrap_or(u16::MAX),
            failures: line.failures,
            not_before_s: 0,
            hint_rank: 0,
        });
    }
    Ok(entries)
}

/// Removes the old identity file, its bytes overwritten first (a best
/// effort: a copy-on-write file system or an SSD may keep the old blocks).
pub fn shred(path: &Path) -> Result<()> {
    let overwrite = || -> std::io::Result<()> {
        let length = std::fs::metadata(path)?.len().min(IDENTITY_FILE_LEN_MAX);
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.write_all(&vec![0u8; length as usize])?;
        file.sync_all()
    };
    if let Err(error) = overwrite() {
        tracing::warn!(
            "cannot overwrite {} before removing it: {error}",
            path.display()
        );
    }
    remove(path)
}

/// Removes a file that may be gone already.
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}
