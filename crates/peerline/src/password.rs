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
use std::io::IsTerminal;
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

/// The password from `file` (its first line: one trailing newline is not
/// part of it), else from the terminal; bad input (exit 2) when empty,
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

fn from_file(path: &Path) -> Result<Zeroizing<String>> {
    let bytes = std::fs::read(path).map_err(|error| {
        fail(
            EXIT_BAD_INPUT,
            format!("cannot read the password file {}: {error}", path.display()),
        )
    })?;
    let bytes = Zeroizing::new(bytes);
    let mut text = Zeroizing::new(String::from_utf8(bytes.to_vec()).map_err(|error| {
        let mut bytes = error.into_bytes();
        bytes.zeroize();
        fail(
            EXIT_BAD_INPUT,
            format!("the password file {} is not UTF-8 text", path.display()),
        )
    })?);
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
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
    let mut key = oprf_key(&seed, FIRST_BUNDLE_VERSION);
    let output = Zeroizing::new(oprf_output_with_key(&key, password, &root.public()));
    key.zeroize();
    let bundle = seal_bundle(
        root,
        password,
        &output,
        KDF_PARAMS_PRODUCTION,
        sharing,
        FIRST_BUNDLE_VERSION,
        &mut rng,
    )
    .context("cannot seal the root key")?;
    // The epoch only has to grow: the wall clock in ms (a login re-deals
    // above it).
    let epoch = now_unix_s.saturating_mul(1_000);
    let deals = deal(root, FIRST_BUNDLE_VERSION, epoch, sharing, &mut rng)
        .context("cannot deal the password's key shares")?;
    Ok(AccountSecrets { bundle, deals })
}
