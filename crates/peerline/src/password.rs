//! The account's password: read from `--password-file` (for scripts) or
//! asked for on the terminal without echo, and the root key sealed with it
//! (`peerline account create`; `peerline login` opens it).

use crate::account::{fail, EXIT_BAD_INPUT};
use crate::node::data_dir;
use anyhow::{Context, Result};
use peerline_core::bundle::{
    deal, oprf_key, oprf_output_with_key, seal_bundle, SecretRng, BUNDLE_HOLDERS, BUNDLE_THRESHOLD,
    KDF_PARAMS_PRODUCTION,
};
use peerline_core::Keypair;
use peerline_proto::{KeyBundle, ShareDeal, Sharing};
use std::io::{IsTerminal, Read};
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

/// Longest password accepted, in bytes (a password file is read no further).
pub const PASSWORD_BYTES_MAX: usize = 1_024;
/// The first bundle of an account is version 1 (a password change seals 2).
const FIRST_BUNDLE_VERSION: u64 = 1;

/// Whether the password is typed twice (a new password) or once (login).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    NewPassword,
    Password,
}

/// The password from `file` (its first line, without the line end), else
/// from the terminal; bad input (exit 2) when empty,
/// too long, unreadable, or when there is no file and no terminal.
pub fn read(file: Option<&Path>, name: &str, prompt: Prompt) -> Result<Zeroizing<String>> {
    let password = match file {
        Some(path) => from_file(path)?,
        None => from_terminal(name, prompt)?,
    };
    if password.is_empty() {
        return Err(fail(
            EXIT_BAD_INPUT,
            "the password is empty; choose one (it seals the account's root key)",
        ));
    }
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(fail(
            EXIT_BAD_INPUT,
            format!("the password is longer than {PASSWORD_BYTES_MAX} bytes; choose a shorter one"),
        ));
    }
    Ok(password)
}

/// The file's first line, read no further than `PASSWORD_BYTES_MAX` and a
/// line end (a longer line is refused as too long by `read`).
fn from_file(path: &Path) -> Result<Zeroizing<String>> {
    let cannot_read = |error: std::io::Error| {
        fail(
            EXIT_BAD_INPUT,
            format!("cannot read the password file {}: {error}", path.display()),
        )
    };
    let file = std::fs::File::open(path).map_err(cannot_read)?;
    let mut bytes = Zeroizing::new(Vec::new());
    let limit = PASSWORD_BYTES_MAX as u64 + 2;
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(cannot_read)?;
    let line_len = bytes
        .iter()
        .position(|byte| *byte == b'\n')
        .unwrap_or(bytes.len());
    let mut line = &bytes[..line_len];
    if let Some(stripped) = line.strip_suffix(b"\r") {
        line = stripped;
    }
    match std::str::from_utf8(line) {
        Ok(text) => Ok(Zeroizing::new(text.to_owned())),
        Err(_) => Err(fail(
            EXIT_BAD_INPUT,
            format!("the password file {} is not UTF-8 text", path.display()),
        )),
    }
}

fn from_terminal(name: &str, prompt: Prompt) -> Result<Zeroizing<String>> {
    if !std::io::stdin().is_terminal() {
        return Err(fail(
            EXIT_BAD_INPUT,
            "no password: give --password-file FILE (there is no terminal to ask on)",
        ));
    }
    let ask = |text: &str| {
        rpassword::prompt_password(text)
            .map(Zeroizing::new)
            .map_err(|error| fail(EXIT_BAD_INPUT, format!("cannot read the password: {error}")))
    };
    let password = ask(&format!("Password for {name}: "))?;
    if prompt == Prompt::NewPassword && !password.is_empty() {
        let again = ask("The same password again: ")?;
        if *again != *password {
            return Err(fail(
                EXIT_BAD_INPUT,
                "the two passwords differ; run the command again",
            ));
        }
    }
    Ok(password)
}

/// What goes to the network so that the password opens the root key on a
/// new device: the bundle sealing the root seed (Argon2id at
/// `KDF_PARAMS_PRODUCTION` over the threshold OPRF's output: ~150 ms here)
/// and the first deal of the OPRF key's shares (3 of 5).
pub struct AccountSecrets {
    pub bundle: KeyBundle,
    pub deals: Vec<ShareDeal>,
}

pub fn seal(root: &Keypair, password: &str, now_unix_s: u64) -> Result<AccountSecrets> {
    seal_version(root, password, now_unix_s, FIRST_BUNDLE_VERSION)
}

/// [`seal`] as bundle `version` (a password change seals the version after
/// the one it opened; holders replace the shares of an older version).
pub fn seal_version(
    root: &Keypair,
    password: &str,
    now_unix_s: u64,
    version: u64,
) -> Result<AccountSecrets> {
    let entropy = Zeroizing::new(data_dir::random_seed()?);
    let mut rng = SecretRng::new(&entropy);
    let sharing = Sharing {
        threshold: BUNDLE_THRESHOLD,
        holders: BUNDLE_HOLDERS,
    };
    let seed = Zeroizing::new(
        root.secret_seed()
            .context("the account's root key has no secret")?,
    );
    let mut key = oprf_key(&seed, version);
    let output = Zeroizing::new(oprf_output_with_key(&key, password, &root.public()));
    key.zeroize();
    let bundle = seal_bundle(
        root,
        password,
        &output,
        KDF_PARAMS_PRODUCTION,
        sharing,
        version,
        &mut rng,
    )
    .context("cannot seal the root key")?;
    // The epoch only has to grow: the wall clock in ms (a login re-deals
    // above it).
    let epoch = now_unix_s.saturating_mul(1_000);
    let deals = deal(root, version, epoch, sharing, &mut rng)
        .context("cannot deal the password's key shares")?;
    Ok(AccountSecrets { bundle, deals })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("peerline-password-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn read_file(name: &str, bytes: &[u8]) -> std::result::Result<String, String> {
        let path = file_with(name, bytes);
        let outcome = read(Some(&path), "alice", Prompt::Password)
            .map(|password| password.to_string())
            .map_err(|error| error.to_string());
        let _ = std::fs::remove_file(path);
        outcome
    }

    #[test]
    fn a_password_file_gives_its_first_line_without_the_line_end() {
        assert_eq!(read_file("plain", b"hunter2").unwrap(), "hunter2");
        assert_eq!(read_file("lf", b"hunter2\n").unwrap(), "hunter2");
        assert_eq!(read_file("crlf", b"hunter2\r\nrest").unwrap(), "hunter2");
        assert_eq!(read_file("spaces", b" a b \n").unwrap(), " a b ");
    }

    #[test]
    fn bad_password_files_are_one_sentence() {
        assert_eq!(
            read_file("empty", b"\nsecond line").unwrap_err(),
            "the password is empty; choose one (it seals the account's root key)"
        );
        assert_eq!(
            read_file("long", &[b'a'; PASSWORD_BYTES_MAX + 1]).unwrap_err(),
            "the password is longer than 1024 bytes; choose a shorter one"
        );
        assert_eq!(
            read_file("max", &[b'a'; PASSWORD_BYTES_MAX]).unwrap().len(),
            PASSWORD_BYTES_MAX
        );
        assert!(read_file("binary", b"\xff\xfe")
            .unwrap_err()
            .ends_with("is not UTF-8 text"));
        let missing = std::env::temp_dir().join("peerline-password-missing-file");
        let error = read(Some(&missing), "alice", Prompt::Password).unwrap_err();
        assert!(error
            .to_string()
            .starts_with("cannot read the password file"));
    }
}
