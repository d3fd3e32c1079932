//! `peerline devices list|revoke` and `peerline passwd`: what a person
//! does with an account's devices and password once it exists.
//!
//! **The device list.** An account's signed, versioned list of its current
//! and revoked devices lives beside its password-sealed bundle, at the
//! bundle's replicas (`Message::DeviceListStore`; the core's
//! `client/device_lists.rs`): any device reads it there, and every change
//! starts from the newest version found. `account create` publishes the
//! first version, each `login` adds its device, and `devices revoke`
//! moves a device to the revoked part.
//!
//! **The root key.** Signing a list, or re-sealing the bundle, needs the
//! account's root key, which no device keeps: these commands open it with
//! the password exactly as `peerline login` does (`login::open_root`: the
//! holders' threshold OPRF, each holder counting the guess, then
//! Argon2id), use it, and drop it at the end of the block that needs it.

use crate::account::{
    fail, in_use, required_data_dir, runtime, spinner, NetworkArgs, Session, EXIT_BAD_INPUT,
    EXIT_CODES, EXIT_NO, EXIT_NOT_NOW, SECRETS_FLUSH, SECRETS_SENT_WAIT,
};
use crate::login::open_root;
use crate::node::config::key_hex;
use crate::node::data_dir::{self, DataDir};
use crate::node::store::Store;
use crate::password::{self, Prompt};
use anyhow::Result;
use peerline_core::account::{sign_device_list, sign_root_rotation};
use peerline_core::{CryptoMode, Event, Keypair};
use peerline_net::clock::wall_clock_s;
use peerline_proto::{
    BoundedVec, DeviceList, DeviceListBody, PublicKey, DEVICE_LIST_DEVICES_MAX,
    DEVICE_LIST_REVOKED_MAX,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How long fetching the device list may take once attached.
const FETCH_WAIT: Duration = Duration::from_secs(30);
/// How long the replicas may take to show a stored list.
const STORED_WAIT: Duration = Duration::from_secs(20);
/// Shortest device prefix `devices revoke` accepts, in hex digits.
const DEVICE_PREFIX_LEN_MIN: usize = 8;

#[derive(clap::Subcommand)]
pub enum DevicesCommand {
    /// List the account's devices: the current ones and the revoked ones.
    ///
    /// Reads the account's signed device list from the network (its
    /// replicas keep the newest version), checks the root key's signature,
    /// and marks this device. Needs no password.
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
    /// Revoke one of the account's devices (lost, stolen or retired).
    ///
    /// Opens the account's root key with the password (as `peerline login`
    /// does), signs the next device list with DEVICE among the revoked,
    /// and publishes it: supernodes spread the revocation, detach the
    /// device and refuse its logins and presence from then on. Revocation
    /// is permanent. DEVICE is a device key as `devices list` prints it, or
    /// a unique prefix of at least 8 hex digits. This device cannot revoke
    /// itself (do it from another device).
    #[command(after_help = EXIT_CODES)]
    Revoke(RevokeArgs),
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub network: NetworkArgs,
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The device to revoke: its key in hex, or a unique prefix of it.
    pub device: String,
    /// A file holding the account's password (its first line; for
    /// scripts). Without it the password is asked for on the terminal.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    #[command(flatten)]
    pub network: NetworkArgs,
}

#[derive(clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct PasswdArgs {
    /// A file holding the current password (its first line). Without it
    /// the password is asked for on the terminal.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// A file holding the new password (its first line; for `account
    /// rotate` it may be the current one). Without it the new password is
    /// asked for on the terminal, twice.
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub network: NetworkArgs,
}

/// The account's data directory and an attached client with its device.
struct AccountSession {
    data: DataDir,
    account: PublicKey,
    device: PublicKey,
    /// The account's name, or its key, for the messages.
    who: String,
    session: Session,
}

/// Opens the data directory's account (exit 1 without one) and attaches
/// with its device.
fn start(network: &NetworkArgs) -> Result<(DataDir, PublicKey, PublicKey, String)> {
    let path = required_data_dir(&network.data_dir)?;
    let Some(data) = DataDir::open_existing(path).map_err(in_use)? else {
        return Err(fail(
            EXIT_NO,
            format!(
                "no account in {}; create one with `peerline account create <name>` or log in with `peerline login <name>`",
                path.display()
            ),
        ));
    };
    let stored = data.store().identity()?;
    let account = stored.cert.body.account_key;
    let device = stored.cert.body.device_key;
    let who = match data.store().owned_names()?.into_iter().next() {
        Some((name, _)) => name,
        None => format!("account {}", key_hex(&account)),
    };
    Ok((data, account, device, who))
}

impl AccountSession {
    async fn attach(network: &NetworkArgs, flush: Duration) -> Result<AccountSession> {
        let (data, account, device, who) = start(network)?;
        let session = Session::for_account(&data, network, flush).await?;
        Ok(AccountSession {
            data,
            account,
            device,
            who,
            session,
        })
    }

    /// Stops the client and saves its host cache.
    async fn finish(self) -> DataDir {
        self.session.finish(Some(&self.data)).await;
        self.data
    }
}

/// Fetches `account`'s newest device list through an attached session.
pub(crate) async fn fetch_list(
    session: &mut Session,
    account: PublicKey,
) -> Result<Option<DeviceList>> {
    session
        .node
        .control
        .fetch_device_list(account)
        .await
        .map_err(|_| fail(EXIT_NOT_NOW, "the client stopped on its own"))?;
    let answer = session
        .wait_for(FETCH_WAIT, |event| match event {
            Event::DeviceListFetched { account: a, result } if a == account => Some(result),
            _ => None,
        })
        .await;
    match answer {
        Some(Ok(list)) => Ok(list.map(|list| *list)),
        Some(Err(reason)) => Err(fail(
            EXIT_NOT_NOW,
            format!("the network could not give the account's device list ({reason:?}); try again in a minute"),
        )),
        None => Err(fail(
            EXIT_NOT_NOW,
            format!(
                "the network did not give the account's device list within {} s; try again in a minute",
                FETCH_WAIT.as_secs()
            ),
        )),
    }
}

/// What changes from one device list to the next.
pub(crate) enum ListChange {
    /// A device joins the current ones (a login, the account's creation).
    Add(PublicKey),
    /// A device moves to the revoked ones.
    Revoke(PublicKey),
}

/// The list after `held` (the newest found; `None`: the account has none
/// yet, and `me` is its only known device), signed by the root. Its
/// version is one above the held one.
pub(crate) fn next_list(
    root: &Keypair,
    held: Option<&DeviceList>,
    me: PublicKey,
    change: ListChange,
    now_unix_s: u64,
) -> Result<DeviceList> {
    let (version, mut devices, mut revoked) = match held {
        Some(list) => (
            list.body.version,
            list.body.devices.as_slice().to_vec(),
            list.body.revoked.as_slice().to_vec(),
        ),
        None => (0, vec![me], Vec::new()),
    };
    match change {
        ListChange::Add(device) => {
            if revoked.contains(&device) {
                return Err(fail(
                    EXIT_NO,
                    format!("the device {} is revoked for good", key_hex(&device)),
                ));
            }
            if !devices.contains(&device) {
                devices.push(device);
            }
        }
        ListChange::Revoke(device) => {
            devices.retain(|d| *d != device);
            if !revoked.contains(&device) {
                revoked.push(device);
            }
        }
    }
    if devices.len() > DEVICE_LIST_DEVICES_MAX {
        return Err(fail(
            EXIT_NO,
            format!("the account has {DEVICE_LIST_DEVICES_MAX} devices already; revoke one first (`peerline devices revoke`)"),
        ));
    }
    if revoked.len() > DEVICE_LIST_REVOKED_MAX {
        return Err(fail(
            EXIT_NO,
            format!("the account's device list holds {DEVICE_LIST_REVOKED_MAX} revoked devices, its most; rotate the account's root key instead"),
        ));
    }
    let body = DeviceListBody {
        account_key: root.public(),
        version: version.saturating_add(1),
        devices: BoundedVec::truncating(devices),
        revoked: BoundedVec::truncating(revoked),
        issued_unix_s: now_unix_s,
    };
    Ok(sign_device_list(root, body))
}

/// Keeps `list` in the data directory's store (what `devices list` shows
/// when the network has none).
pub(crate) fn save_list(store: &Store, list: &DeviceList) -> Result<()> {
    store.put_device_list(&postcard::to_allocvec(list)?)
}

/// Publishes `list` (enforcement and storage) and waits until the
/// replicas show it.
pub(crate) async fn publish_list(session: &mut Session, list: DeviceList) -> Result<()> {
    let account = list.body.account_key;
    let version = list.body.version;
    session
        .node
        .control
        .set_device_list(list)
        .await
        .map_err(|_| fail(EXIT_NOT_NOW, "the client stopped on its own"))?;
    // Read back: the command says "done" only once the replicas hold it.
    let stored = tokio::time::timeout(STORED_WAIT, async {
        loop {
            if let Ok(Some(held)) = fetch_list(session, account).await {
                if held.body.version >= version {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    if stored.is_err() {
        return Err(fail(
            EXIT_NOT_NOW,
            format!(
                "the network did not show device list version {version} within {} s; run the command again",
                STORED_WAIT.as_secs()
            ),
        ));
    }
    Ok(())
}

/// `peerline devices list`.
pub fn list(args: ListArgs) -> Result<ExitCode> {
    let bar = spinner();
    bar.set_message("reaching the network");
    let outcome = runtime()?.block_on(async {
        let mut account = AccountSession::attach(&args.network, Duration::from_millis(500)).await?;
        bar.set_message("fetching the device list");
        let list = fetch_list(&mut account.session, account.account).await;
        let (who, me, key) = (account.who.clone(), account.device, account.account);
        let data = account.finish().await;
        Ok::<_, anyhow::Error>((list?, who, me, key, data))
    });
    bar.finish_and_clear();
    let (list, who, me, account, data) = outcome?;
    println!("account  {} ({who})", key_hex(&account));
    let Some(list) = list.or_else(|| stored_list(data.store(), &account)) else {
        println!("devices  {}  this device", key_hex(&me));
        println!("note: the account has published no device list (it was made before device lists, or with --no-password)");
        return Ok(ExitCode::SUCCESS);
    };
    println!(
        "version  {} (signed {})",
        list.body.version,
        data_dir::utc_time(list.body.issued_unix_s)
    );
    for device in list.body.devices.iter() {
        let mark = if *device == me { "  this device" } else { "" };
        println!("current  {}{mark}", key_hex(device));
    }
    for device in list.body.revoked.iter() {
        let mark = if *device == me { "  this device" } else { "" };
        println!("revoked  {}{mark}", key_hex(device));
    }
    if !list.body.devices.contains(&me) && !list.body.revoked.contains(&me) {
        println!("note: this device ({}) is not on the list", key_hex(&me));
    }
    Ok(ExitCode::SUCCESS)
}

/// The list this device saved last, if it is the account's and decodes.
pub(crate) fn stored_list(store: &Store, account: &PublicKey) -> Option<DeviceList> {
    let bytes = store.device_list().ok()??;
    let list: DeviceList = postcard::from_bytes(&bytes).ok()?;
    (list.body.account_key == *account).then_some(list)
}

/// The one device of `list` that `text` names (a whole key or a prefix).
fn pick_device(list: Option<&DeviceList>, me: PublicKey, text: &str) -> Result<PublicKey> {
    let text = text.trim().to_ascii_lowercase();
    if text.len() < DEVICE_PREFIX_LEN_MIN || !text.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(fail(
            EXIT_BAD_INPUT,
            format!("{text:?} is not a device key: give the key as `peerline devices list` prints it, or at least {DEVICE_PREFIX_LEN_MIN} of its first hex digits"),
        ));
    }
    let known: Vec<PublicKey> = match list {
        Some(list) => list.body.devices.iter().copied().collect(),
        None => vec![me],
    };
    let matching: Vec<PublicKey> = known
        .into_iter()
        .filter(|key| key_hex(key).starts_with(&text))
        .collect();
    match matching.as_slice() {
        [device] => Ok(*device),
        // A whole key the list does not name (a device certified before
        // the account had a list) may be revoked too.
        [] if text.len() == 64 => match crate::node::config::parse_key_hex(&text) {
            Some(key) => Ok(PublicKey(key)),
            None => Err(fail(
                EXIT_BAD_INPUT,
                format!("{text:?} is not a device key"),
            )),
        },
        [] => Err(fail(
            EXIT_NO,
            format!(
                "no current device of the account starts with {text}; see `peerline devices list`"
            ),
        )),
        _ => Err(fail(
            EXIT_BAD_INPUT,
            format!("more than one device starts with {text}; give more of its key"),
        )),
    }
}

/// `peerline devices revoke <device>`.
pub fn revoke(args: RevokeArgs) -> Result<ExitCode> {
    let (_, _, _, who) = start(&args.network)?;
    let password = password::read(args.password_file.as_deref(), &who, Prompt::Password)?;
    let bar = spinner();
    bar.set_message("reaching the network");
    let outcome = runtime()?.block_on(async {
        let mut account = AccountSession::attach(&args.network, SECRETS_FLUSH).await?;
        let result = revoke_in(&mut account, &args.device, &password, &bar).await;
        // The login re-dealt the password's shares: let the deals go out.
        account.session.wait_sent(SECRETS_SENT_WAIT).await;
        account.finish().await;
        result
    });
    bar.finish_and_clear();
    let (revoked, list) = outcome?;
    println!("revoked  {}", key_hex(&revoked));
    println!(
        "version  {} of the device list: {} current, {} revoked",
        list.body.version,
        list.body.devices.len(),
        list.body.revoked.len()
    );
    println!("supernodes spread the revocation; the device is detached and refused everywhere within seconds");
    Ok(ExitCode::SUCCESS)
}

async fn revoke_in(
    account: &mut AccountSession,
    device: &str,
    password: &str,
    bar: &indicatif::ProgressBar,
) -> Result<(PublicKey, DeviceList)> {
    bar.set_message("fetching the device list");
    let held = fetch_list(&mut account.session, account.account).await?;
    let target = pick_device(held.as_ref(), account.device, device)?;
    if target == account.device {
        return Err(fail(
            EXIT_BAD_INPUT,
            "that is this device: revoke it from another of the account's devices (or log in on one first)",
        ));
    }
    bar.set_message("opening the account's root key");
    let root = open_root(
        &mut account.session,
        &account.who,
        account.account,
        password,
    )
    .await?;
    let list = {
        // The root key lives in this block only.
        let root = Keypair::from_seed(CryptoMode::Full, *root.seed.expose());
        next_list(
            &root,
            held.as_ref(),
            account.device,
            ListChange::Revoke(target),
            wall_clock_s(),
        )?
    };
    bar.set_message("publishing the device list");
    publish_list(&mut account.session, list.clone()).await?;
    save_list(account.data.store(), &list)?;
    Ok((target, list))
}

/// `peerline passwd`: the root key re-sealed under a new password.
pub fn passwd(args: PasswdArgs) -> Result<ExitCode> {
    let (_, _, _, who) = start(&args.network)?;
    let old = password::read(args.password_file.as_deref(), &who, Prompt::Password)?;
    let new = password::read(
        args.new_password_file.as_deref(),
        &format!("{who} (new)"),
        Prompt::NewPassword,
    )?;
    if *old == *new {
        return Err(fail(
            EXIT_BAD_INPUT,
            "the new password is the old one; choose another",
        ));
    }
    let bar = spinner();
    bar.set_message("reaching the network");
    let outcome = runtime()?.block_on(async {
        let mut account = AccountSession::attach(&args.network, SECRETS_FLUSH).await?;
        let result = passwd_in(&mut account, &old, &new, &bar).await;
        account.session.wait_sent(SECRETS_SENT_WAIT).await;
        account.finish().await;
        result
    });
    bar.finish_and_clear();
    let version = outcome?;
    println!("password changed for {who}: the root key is sealed under the new one (bundle version {version}); the replicas dropped the old seal");
    println!("a copy of the old seal saved earlier still opens with the old password and the old key shares; if you think someone has both, rotate the account's root key");
    Ok(ExitCode::SUCCESS)
}

async fn passwd_in(
    account: &mut AccountSession,
    old: &str,
    new: &str,
    bar: &indicatif::ProgressBar,
) -> Result<u64> {
    bar.set_message("opening the account's root key");
    let opened = open_root(&mut account.session, &account.who, account.account, old).await?;
    let version = opened.bundle_version.saturating_add(1);
    let secrets = {
        // The root key lives in this block only.
        let root = Keypair::from_seed(CryptoMode::Full, *opened.seed.expose());
        password::seal_version(&root, new, wall_clock_s(), version)?
    };
    bar.set_message("storing the root key sealed under the new password");
    account
        .session
        .publish(secrets)
        .await
        .map_err(|reason| {
            fail(
                EXIT_NOT_NOW,
                format!("the network did not keep the newly sealed root key ({reason}); the old password still works, try again in a minute"),
            )
        })?;
    Ok(version)
}

/// `account rotate` takes the same flags as `passwd`: the current
/// password and the new root key's (which may be the current one).
pub type RotateArgs = PasswdArgs;

/// How long the network may take to enforce a rotation: the supernodes
/// this device is attached to detach it (its certificate is the old
/// root's) once they took the rotation.
const ROTATION_ENFORCED_WAIT: Duration = Duration::from_secs(30);

/// What a rotation made, before it is published.
struct Rotated {
    rotation: peerline_proto::RootRotation,
    secrets: password::AccountSecrets,
    list: DeviceList,
    identity: crate::node::store::StoredIdentity,
}

/// `peerline account rotate`: the account moves to a new root key.
pub fn rotate(args: RotateArgs) -> Result<ExitCode> {
    let (_, _, _, who) = start(&args.network)?;
    let old = password::read(args.password_file.as_deref(), &who, Prompt::Password)?;
    let new = password::read(
        args.new_password_file.as_deref(),
        &format!("{who} (new root key)"),
        Prompt::NewPassword,
    )?;
    let bar = spinner();
    bar.set_message("reaching the network");
    let outcome = runtime()?.block_on(async {
        let mut account = AccountSession::attach(&args.network, SECRETS_FLUSH).await?;
        let result = rotate_in(&mut account, &old, &new, &bar).await;
        account.session.wait_sent(SECRETS_SENT_WAIT).await;
        let data = account.finish().await;
        // Saved only once the network enforces the rotation: before, this
        // device's old certificate still works; after, only the new one.
        let rotated = result?;
        let store = data.store();
        let names = store.owned_names()?;
        match names.first() {
            Some((name, certificate)) => store.set_account(&rotated.identity, name, certificate)?,
            None => store.set_identity(&rotated.identity)?,
        }
        save_list(store, &rotated.list)?;
        Ok::<_, anyhow::Error>(rotated)
    });
    bar.finish_and_clear();
    let rotated = outcome?;
    let body = &rotated.rotation.body;
    println!("rotated  {who} to a new root key");
    println!("account  {}", key_hex(&body.new_account));
    println!(
        "old      {} (refused everywhere from now on)",
        key_hex(&body.old_account)
    );
    println!("the name follows the new key; every other device of the account must `peerline login` again (its certificate was the old key's)");
    Ok(ExitCode::SUCCESS)
}

async fn rotate_in(
    account: &mut AccountSession,
    old: &str,
    new: &str,
    bar: &indicatif::ProgressBar,
) -> Result<Rotated> {
    bar.set_message("opening the account's root key");
    let opened = open_root(&mut account.session, &account.who, account.account, old).await?;
    let now = wall_clock_s();
    let device_seed = account.data.store().identity()?.device_seed;
    let rotated = {
        // Both root keys live in this block only.
        let old_root = Keypair::from_seed(CryptoMode::Full, *opened.seed.expose());
        let new_root = Keypair::from_seed(CryptoMode::Full, data_dir::random_seed()?);
        let identity = data_dir::certify_device(device_seed, &new_root, now);
        let device = identity.cert.body.device_key;
        Rotated {
            rotation: sign_root_rotation(&old_root, &new_root, now),
            secrets: password::seal(&new_root, new, now)?,
            list: next_list(&new_root, None, device, ListChange::Add(device), now)?,
            identity,
        }
    };
    // The new root's sealed key and device list first: once the rotation
    // is out, the old root's bundle opens a refused key.
    bar.set_message("storing the new root key, sealed");
    let secrets = password::AccountSecrets {
        bundle: rotated.secrets.bundle,
        deals: rotated.secrets.deals.clone(),
    };
    account.session.publish(secrets).await.map_err(|reason| {
        fail(
            EXIT_NOT_NOW,
            format!("the network did not keep the new root key ({reason}); nothing changed, try again in a minute"),
        )
    })?;
    publish_list(&mut account.session, rotated.list.clone()).await?;
    bar.set_message("publishing the rotation");
    account
        .session
        .node
        .control
        .set_root_rotation(rotated.rotation)
        .await
        .map_err(|_| fail(EXIT_NOT_NOW, "the client stopped on its own"))?;
    let enforced = account
        .session
        .wait_for(ROTATION_ENFORCED_WAIT, |event| {
            let by_supernode = peerline_core::DetachReason::DetachedBySupernode;
            matches!(event, Event::Detached { reason, .. } if reason == by_supernode).then_some(())
        })
        .await;
    if enforced.is_none() {
        return Err(fail(
            EXIT_NOT_NOW,
            format!(
                "the network did not take the rotation within {} s; run the command again (the new root key is stored, so `peerline login` with the new password also works)",
                ROTATION_ENFORCED_WAIT.as_secs()
            ),
        ));
    }
    Ok(rotated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Keypair {
        Keypair::from_seed(CryptoMode::Full, [7; 32])
    }

    fn list_of(devices: &[PublicKey], revoked: &[PublicKey]) -> DeviceList {
        let body = DeviceListBody {
            account_key: root().public(),
            version: 4,
            devices: BoundedVec::truncating(devices.iter().copied()),
            revoked: BoundedVec::truncating(revoked.iter().copied()),
            issued_unix_s: 1_800_000_000,
        };
        sign_device_list(&root(), body)
    }

    #[test]
    fn a_device_is_picked_by_a_unique_prefix_or_its_whole_key() {
        let (laptop, phone, twin) = (
            PublicKey([0xab; 32]),
            PublicKey([0xcd; 32]),
            PublicKey([0xcc; 32]),
        );
        let list = list_of(&[laptop, phone, twin], &[]);
        let pick = |text: &str| pick_device(Some(&list), laptop, text).map_err(|e| e.to_string());
        assert_eq!(pick("CDCDCDCD"), Ok(phone));
        assert_eq!(
            pick("cc"),
            Err("\"cc\" is not a device key: give the key as `peerline devices list` prints it, or at least 8 of its first hex digits".into())
        );
        assert!(pick("cdcdcdzz")
            .unwrap_err()
            .contains("is not a device key"));
        assert!(pick("eeeeeeee")
            .unwrap_err()
            .starts_with("no current device of the account starts with eeeeeeee"));
        // A whole key the list does not name is taken as it is.
        assert_eq!(pick(&"ef".repeat(32)), Ok(PublicKey([0xef; 32])));
        let close = list_of(
            &[PublicKey([0xcd; 32]), {
                let mut key = [0xcd; 32];
                key[31] = 0;
                PublicKey(key)
            }],
            &[],
        );
        let ambiguous = pick_device(Some(&close), laptop, "cdcdcdcd").unwrap_err();
        assert!(ambiguous
            .to_string()
            .starts_with("more than one device starts with"));
    }

    #[test]
    fn the_next_list_moves_a_revoked_device_and_never_brings_it_back() {
        let (laptop, phone) = (PublicKey([1; 32]), PublicKey([2; 32]));
        let first = next_list(&root(), None, laptop, ListChange::Add(laptop), 1).unwrap();
        assert_eq!(first.body.version, 1);
        assert_eq!(first.body.devices.as_slice(), &[laptop]);
        let second = next_list(&root(), Some(&first), laptop, ListChange::Add(phone), 2).unwrap();
        assert_eq!(second.body.version, 2);
        assert_eq!(second.body.devices.as_slice(), &[laptop, phone]);
        let third =
            next_list(&root(), Some(&second), laptop, ListChange::Revoke(phone), 3).unwrap();
        assert_eq!(third.body.version, 3);
        assert_eq!(third.body.devices.as_slice(), &[laptop]);
        assert_eq!(third.body.revoked.as_slice(), &[phone]);
        assert!(peerline_core::account::verify_device_list(CryptoMode::Full, &third, 3, 0).is_ok());
        let back = next_list(&root(), Some(&third), laptop, ListChange::Add(phone), 4);
        assert!(back
            .unwrap_err()
            .to_string()
            .contains("is revoked for good"));
        // The list's bounds are a sentence, not a truncated list.
        let full: Vec<PublicKey> = (0..DEVICE_LIST_DEVICES_MAX as u8)
            .map(|i| PublicKey([100 + i; 32]))
            .collect();
        let crowded = list_of(&full, &[]);
        let over = next_list(&root(), Some(&crowded), laptop, ListChange::Add(laptop), 5);
        assert!(over.unwrap_err().to_string().contains("devices already"));
    }
}
