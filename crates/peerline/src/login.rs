//! `peerline login <name>`: password login on a new device.
//!
//! A short-lived client (a throwaway identity: the new device's key is
//! made only once the account certifies it) attaches, looks the name up
//! (→ the owning account's key and the name's certificate), and asks the
//! core to open the account's key bundle with the password
//! (`Node::open_bundle`: the bundle from its replicas, a threshold OPRF
//! over the share holders, Argon2id, the seal). With the root seed it gets
//! back, the root key certifies a new device key, and goes out of scope:
//! it is never written. The data directory then holds the new device's key
//! and certificate and the name's certificate, as after `account create`.

use crate::account::{
    checked_name, client_params, existing_store, fail, in_use, required_data_dir, runtime,
    save_account, spinner, NetworkArgs, Owned, Session, EXIT_CODES, EXIT_NO, EXIT_NOT_NOW,
    SECRETS_FLUSH, SECRETS_SENT_WAIT,
};
use crate::account::{print_device, save_learnt};
use crate::devices::{self, ListChange};
use crate::node::bootstrap_order;
use crate::node::config::key_hex;
use crate::node::data_dir;
use crate::node::store::{Store, StoredIdentity};
use crate::password::{self, Prompt};
use anyhow::Result;
use peerline_core::client::{BundleFailure, NameFailure};
use peerline_core::names::Name;
use peerline_core::{CryptoMode, Event, Keypair};
use peerline_net::clock::wall_clock_s;
use peerline_proto::{DeviceList, NameCertificate, PublicKey};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long the name lookup may take once attached.
const LOOKUP_WAIT: Duration = Duration::from_secs(60);
/// How long opening the bundle may take (the core bounds each step: two
/// fetch tries, `OPRF_ANSWER_MS` per holder asked).
const OPEN_WAIT: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct LoginArgs {
    /// The account's name (normalized as at registration).
    pub name: String,
    /// A file holding the password (its first line; for scripts). Without
    /// it the password is asked for on the terminal, without echo.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    #[command(flatten)]
    pub network: NetworkArgs,
}

/// What the network part of a login answered.
struct Opened {
    certificate: Box<NameCertificate>,
    /// The account that owns the name now: the certificate's, or the one
    /// its root rotations lead to.
    account: PublicKey,
    root_seed: peerline_core::bundle::RootSeed,
    timings: Timings,
    /// The account's newest device list (or why it could not be fetched).
    device_list: std::result::Result<Option<DeviceList>, String>,
}

/// How long each step of the network part took.
struct Timings {
    attach_ms: u64,
    lookup_ms: u64,
    /// From asking the node to open the bundle until it did (fetch, OPRF
    /// round, Argon2id).
    open_ms: u64,
    /// The core's own count: the network part, without Argon2id.
    network_ms: u64,
    round_trips: u32,
}

/// `peerline login <name>`.
pub fn login(args: LoginArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let name = checked_name(&args.name)?;
    let network = &args.network;
    let path = required_data_dir(&network.data_dir)?;
    let password = password::read(
        args.password_file.as_deref(),
        name.as_str(),
        Prompt::Password,
    )?;
    let params = client_params(network.loopback_test_network);
    data_dir::prepare(path)?;
    let _lock = data_dir::lock(path).map_err(in_use)?;
    let existing = existing_store(path)?;
    let cached = existing
        .as_ref()
        .map(|store| store.load_host_cache().contacts)
        .unwrap_or_default();
    let bootstrap = bootstrap_order(&cached, &network.bootstrap, params.host_cache_len_max);
    let identity = data_dir::throwaway_identity(wall_clock_s())?;
    let bar = spinner();
    bar.set_message("reaching the network");
    let outcome = runtime()?.block_on(async {
        let attaching = Instant::now();
        let mut session =
            Session::attach(identity, bootstrap, params, network.timeout, SECRETS_FLUSH).await?;
        let attach_ms = elapsed_ms(attaching);
        bar.set_message(format!("looking up {}", name.as_str()));
        // Saved as soon as the key opened: logged in from then on.
        let logged_in = match open(&mut session, &name, &password, attach_ms).await {
            Ok(opened) => keep(path, existing, &name, opened),
            Err(error) => Err(error),
        };
        let logged_in_ms = elapsed_ms(started);
        if let Ok(login) = &logged_in {
            bar.set_message("publishing the device list");
            let published = match &login.list {
                Ok(list) => devices::publish_list(&mut session, list.clone())
                    .await
                    .and_then(|()| devices::save_list(&login.store, list)),
                Err(error) => Err(fail(EXIT_NOT_NOW, error.clone())),
            };
            if let Err(error) = published {
                eprintln!("warning: the device list was not updated: {error:#}; the device works, but other devices' `peerline devices list` will not show it");
            }
        }
        let stopping = Instant::now();
        if logged_in.is_ok() {
            // The node re-dealt the shares to the current holders: let the
            // deals go out before it stops (a missed one only costs that
            // share its refresh).
            session.wait_sent(SECRETS_SENT_WAIT).await;
        }
        let report = session.node.shutdown().await.ok();
        let stop_ms = elapsed_ms(stopping);
        Ok::<_, anyhow::Error>((logged_in, report, logged_in_ms, stop_ms))
    });
    bar.finish_and_clear();
    drop(password);
    let (logged_in, report, logged_in_ms, stop_ms) = outcome?;
    let login = logged_in?;
    save_learnt(&login.store, report);
    let body = &login.stored.cert.body;
    println!(
        "logged in as {} on a new device ({})",
        name.as_str(),
        key_hex(&body.device_key)
    );
    print_device(body, login.replaced);
    let opened = &login.opened;
    println!(
        "took     {logged_in_ms} ms: attach {} ms, name lookup {} ms, opening the key {} ms (network {} ms over {} round trips, then Argon2id), saving {} ms; then stopping the client {stop_ms} ms",
        opened.attach_ms, opened.lookup_ms, opened.open_ms, opened.network_ms, opened.round_trips, login.save_ms
    );
    Ok(ExitCode::SUCCESS)
}

/// A login written to the data directory.
struct LoggedIn {
    opened: Timings,
    stored: StoredIdentity,
    store: Store,
    /// The nameless account the directory held before, if any.
    replaced: Option<PublicKey>,
    save_ms: u64,
    /// The account's next device list, with this device among the
    /// current ones (or why there is none).
    list: std::result::Result<DeviceList, String>,
}

/// The root key certifies a new device key (and is dropped); the device
/// and the name's certificate go into the store.
fn keep(path: &Path, existing: Option<Store>, name: &Name, opened: Opened) -> Result<LoggedIn> {
    let saving = Instant::now();
    let account = opened.account;
    let (stored, list) = {
        // The root key lives in this block only.
        let root = Keypair::from_seed(CryptoMode::Full, *opened.root_seed.expose());
        if root.public() != account {
            return Err(fail(
                EXIT_NOT_NOW,
                format!(
                    "the key opened for {} is not the account's; try again later",
                    name.as_str()
                ),
            ));
        }
        let stored = data_dir::certify_device(data_dir::random_seed()?, &root, wall_clock_s());
        let device = stored.cert.body.device_key;
        let list = match &opened.device_list {
            Ok(held) => devices::next_list(
                &root,
                held.as_ref(),
                device,
                ListChange::Add(device),
                wall_clock_s(),
            )
            .map_err(|error| error.to_string()),
            Err(error) => Err(error.clone()),
        };
        (stored, list)
    };
    let replaced = match &existing {
        Some(store) => Some(store.identity()?.cert.body.account_key),
        None => None,
    };
    let store = save_account(path, existing, &stored, name, &opened.certificate)?;
    Ok(LoggedIn {
        opened: opened.timings,
        stored,
        store,
        replaced,
        save_ms: elapsed_ms(saving),
        list,
    })
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Looks the name up, then opens its account's bundle with the password.
async fn open(
    session: &mut Session,
    name: &Name,
    password: &str,
    attach_ms: u64,
) -> Result<Opened> {
    let looking = Instant::now();
    let owned = lookup(session, name).await?;
    let lookup_ms = elapsed_ms(looking);
    // The account that owns the name now (after any root rotation).
    let account = owned.owner;
    let certificate = owned.certificate;
    let opening = Instant::now();
    let root = open_root(session, name.as_str(), account, password).await?;
    let open_ms = elapsed_ms(opening);
    let device_list = devices::fetch_list(session, account)
        .await
        .map_err(|error| error.to_string());
    Ok(Opened {
        certificate,
        account,
        device_list,
        root_seed: root.seed,
        timings: Timings {
            attach_ms,
            lookup_ms,
            open_ms,
            network_ms: root.network_ms,
            round_trips: root.round_trips,
        },
    })
}

/// The account's root key, opened with the password.
pub(crate) struct OpenedRoot {
    pub(crate) seed: peerline_core::bundle::RootSeed,
    /// The version of the bundle it came from.
    pub(crate) bundle_version: u64,
    /// The core's own count: the network part, without Argon2id.
    network_ms: u64,
    round_trips: u32,
}

/// Opens `account`'s password-sealed root key through an attached session
/// (`who`: the account's name, or its key, for the messages).
pub(crate) async fn open_root(
    session: &mut Session,
    who: &str,
    account: PublicKey,
    password: &str,
) -> Result<OpenedRoot> {
    session
        .node
        .control
        .open_bundle(account, password)
        .await
        .map_err(|error| {
            fail(
                EXIT_NOT_NOW,
                format!("opening the key could not start: {error}"),
            )
        })?;
    let answer = session
        .wait_for(OPEN_WAIT, |event| match event {
            Event::BundleOpened {
                account: a,
                bundle_version,
                root_seed,
                elapsed_ms,
                round_trips,
            } if a == account => Some(Ok(OpenedRoot {
                seed: root_seed,
                bundle_version,
                network_ms: elapsed_ms,
                round_trips,
            })),
            Event::BundleFailed { account: a, reason } if a == account => Some(Err(reason)),
            _ => None,
        })
        .await;
    match answer {
        Some(Ok(opened)) => Ok(opened),
        Some(Err(reason)) => Err(bundle_failure(who, &account, reason)),
        None => Err(fail(
            EXIT_NOT_NOW,
            format!(
                "the network did not open the key of {who} within {} s; try again in a minute",
                OPEN_WAIT.as_secs()
            ),
        )),
    }
}

/// The name's certificate and owner; "nobody has registered" is exit 1.
async fn lookup(session: &mut Session, name: &Name) -> Result<Owned> {
    let result = session.lookup_name(name).await?;
    match result {
        Some(Ok(Some(owned))) => Ok(owned),
        Some(Ok(None)) => Err(fail(
            EXIT_NO,
            format!("nobody has registered {}", name.as_str()),
        )),
        Some(Err(failure)) => Err(fail(
            EXIT_NOT_NOW,
            format!(
                "the network could not answer for {} ({}); try again in a minute",
                name.as_str(),
                lookup_failure_text(failure)
            ),
        )),
        None => Err(fail(
            EXIT_NOT_NOW,
            format!(
                "the network did not answer for {} within {} s; try again in a minute",
                name.as_str(),
                LOOKUP_WAIT.as_secs()
            ),
        )),
    }
}

fn lookup_failure_text(failure: NameFailure) -> String {
    crate::account::failure_text(failure)
}

/// One sentence per way opening the root key fails.
pub(crate) fn bundle_failure(
    name: &str,
    account: &PublicKey,
    reason: BundleFailure,
) -> anyhow::Error {
    match reason {
        BundleFailure::WrongPassword => fail(EXIT_NO, format!("wrong password for {name}")),
        BundleFailure::Refused { retry_after_ms } => {
            let minutes = retry_after_ms.div_ceil(60_000).max(1);
            let unit = if minutes == 1 { "minute" } else { "minutes" };
            fail(
                EXIT_NOT_NOW,
                format!("too many password attempts for {name}; try again in {minutes} {unit}"),
            )
        }
        BundleFailure::Unavailable => fail(
            EXIT_NOT_NOW,
            format!(
                "the network holds no password-sealed key for {name} (account {}), or too few of its holders answered; an account made with --no-password cannot log in elsewhere, otherwise try again in a minute",
                key_hex(account)
            ),
        ),
        BundleFailure::Tampered => fail(
            EXIT_NOT_NOW,
            format!(
                "the password-sealed key the network returned for {name} does not verify (a supernode changed it); try again later"
            ),
        ),
        BundleFailure::NotAttached | BundleFailure::NotAClient | BundleFailure::TooMany => fail(
            EXIT_NOT_NOW,
            format!("opening the key of {name} could not run ({reason:?}); try again in a minute"),
        ),
    }
}
