//! `peerline account create`, `peerline whoami` and `peerline lookup`: the
//! first commands a person runs, each one short-lived.
//!
//! A command that needs the network starts a client node of its own (the
//! same `peerline-net` driver as `peerline node`, `RolePolicy::ClientOnly`)
//! with the data directory's identity, attaches through the saved host
//! cache and the `--bootstrap` seeds, asks the core one thing
//! (`Node::register_name` or `Node::lookup_name`), waits for the event that
//! answers it, and stops. Every wait is bounded; every failure is a
//! [`Failure`]: one sentence and an exit code (`EXIT_CODES`).
//!
//! **The root key.** `account create` makes the account's root key in
//! memory, signs the name claim and the device's certificate with it,
//! seals it under the password (`password::seal`: a key bundle, Argon2id
//! at the production cost over a threshold OPRF, and the OPRF key's shares
//! dealt 3 of 5), and drops it when the command ends: no device keeps it.
//! Once the name is registered the bundle and the deals go to the network
//! (`Control::publish_account_secrets`), and the command reports success
//! only when they went out. `peerline login` (`login.rs`) opens the bundle
//! on a new device. With `--no-password` the root key is kept nowhere: the
//! account can then never add devices, renew its certificate or rotate.

use crate::devices::{self, ListChange};
use crate::node::config::{key_hex, Seed};
use crate::node::data_dir::{self, DataDir, InUse};
use crate::node::store::{Store, StoredIdentity, STATE_FILE};
use crate::node::{bootstrap_order, known_supernodes};
use crate::password::{self, AccountSecrets, Prompt};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use peerline_core::client::{BundleFailure, NameFailure};
use peerline_core::names::{normalize, Name};
use peerline_core::registry::{make_claim, verify_certificate};
use peerline_core::{CryptoMode, DeviceIdentity, Event, Keypair, Params, RolePolicy};
use peerline_net::clock::wall_clock_s;
use peerline_net::{DriverConfig, DriverLimits, Events, RunningNode};
use peerline_proto::{Contact, NameCertificate, NodeId};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The answer is no: nobody owns the name, the name is taken, no account.
pub const EXIT_NO: u8 = 1;
/// Bad input: a name the rules refuse, a missing or unusable flag.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Not now: the network did not answer or decide, or a running node holds
/// the data directory. Trying again later may work.
pub const EXIT_NOT_NOW: u8 = 3;

/// The exit codes, for the commands' `--help`.
pub const EXIT_CODES: &str = "Exit codes:
  0  done
  1  the answer is no: nobody has registered the name, the name is taken,
     the data directory holds no account (or already holds one), or the
     network refuses this device (revoked, or its account's key rotated)
  2  bad input: a name the naming rules refuse, a missing or bad flag
  3  not now: no supernode answered within --timeout, the network could not
     decide, or a running `peerline node` holds the data directory

Every error is one sentence on stderr.";

/// How long a registration may take once attached (the core retries
/// through other supernodes within this).
const REGISTER_WAIT: Duration = Duration::from_secs(120);
/// How long a name lookup may take once attached.
const LOOKUP_WAIT: Duration = Duration::from_secs(60);
/// How long publishing the password-sealed root key may take once the
/// name is registered.
const PUBLISH_WAIT: Duration = Duration::from_secs(60);
/// Supernodes that must refuse a login before a command gives up on it.
const LOGIN_REFUSALS_ENOUGH: usize = 2;

/// What a login refusal means for the person at this device.
pub(crate) fn refusal_text(reason: peerline_proto::LoginRefusal) -> &'static str {
    match reason {
        peerline_proto::LoginRefusal::DeviceRevoked => {
            "the account revoked this device; `peerline login <name>` with another --data-dir makes it a new device"
        }
        peerline_proto::LoginRefusal::RootRotated => {
            "the account moved to a new root key; `peerline login <name>` with another --data-dir logs in to it"
        }
    }
}

/// A short-lived client says goodbye to its supernodes for at most this.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(500);
/// ...and this, when it dealt OPRF shares (`account create`, `login`):
/// the deals must be acknowledged by holders it dialled only now.
pub(crate) const SECRETS_FLUSH: Duration = Duration::from_secs(3);
/// How long the deals may take to be sent (dials included).
pub(crate) const SECRETS_SENT_WAIT: Duration = Duration::from_secs(10);
/// How often a client waiting for its frames to go out looks.
const SENT_POLL: Duration = Duration::from_millis(10);

/// What a name lookup answered.
pub(crate) type NameAnswer = std::result::Result<Option<Owned>, NameFailure>;

/// A name's certificate and the account that owns it now.
pub(crate) struct Owned {
    pub(crate) certificate: Box<NameCertificate>,
    /// The certificate's account, or the one its root rotations lead to.
    pub(crate) owner: peerline_proto::PublicKey,
}

/// A command's failure: one sentence and its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

pub(crate) fn fail(code: u8, message: impl Into<String>) -> anyhow::Error {
    Failure {
        code,
        message: message.into(),
    }
    .into()
}

#[derive(clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct NetworkArgs {
    /// This device's data directory (as for `peerline node`): its identity
    /// and host cache are used, and the host cache is saved back.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Supernodes to start from, as NODE_KEY@ADDR (a node prints its own
    /// at start); tried after the data directory's saved host cache.
    #[arg(long, value_name = "NODE_KEY@ADDR", num_args = 1.., value_parser = Seed::from_str)]
    pub bootstrap: Vec<Seed>,
    /// Give up when no supernode answered within this long (e.g. 20s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = crate::parse_duration_s)]
    pub timeout: u64,
    /// Talk to a `peerline node --loopback-test-network` network (tests
    /// on one machine only): its timers and its rule for name votes.
    #[arg(long, hide = true)]
    pub loopback_test_network: bool,
}

#[derive(clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct LookupArgs {
    /// The name to look up; it is normalized first as at registration
    /// (case, width and compatibility forms folded), so `Alice` finds
    /// `alice`.
    pub name: String,
    #[command(flatten)]
    pub network: NetworkArgs,
}

#[derive(clap::Subcommand)]
pub enum AccountCommand {
    /// Create an account and register its name on the network.
    ///
    /// Makes the account's root key, a key for this device and the root
    /// key's certificate for it; solves the name claim's proof of work;
    /// attaches to the network and has the name's supernodes vote (a
    /// quorum of 5; 4 votes make the name this account's). On success the
    /// device key, its certificate and the name's certificate go into
    /// DIR/state.redb.
    ///
    /// The root key is kept on no device: it is sealed under the password
    /// (Argon2id, 64 MiB, over a threshold OPRF whose key shares 5
    /// supernodes hold, 3 needed, each limiting guesses) and stored on the
    /// network, so `peerline login <name>` opens it on a new device. The
    /// command succeeds only once the sealed key is stored. With
    /// --no-password it is dropped instead: such an account cannot log in
    /// elsewhere, renew this device's certificate (it lasts a year) or
    /// rotate its keys.
    #[command(after_help = EXIT_CODES)]
    Create(CreateArgs),
    /// Move the account to a new root key (after a password or a device
    /// was compromised).
    ///
    /// Opens the current root key with the password, makes a new one,
    /// signs the rotation with both, seals the new key under the new
    /// password (`--new-password-file`, or asked twice) and stores it,
    /// certifies this device under the new key, and publishes the
    /// rotation: supernodes refuse every certificate of the old key from
    /// then on, and name lookups follow the rotation to the new account.
    /// Every other device of the account must `peerline login` again.
    Rotate(crate::devices::RotateArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The name to register: 3 to 32 letters or digits of one script, with
    /// `.`, `-` or `_` between them; stored in its normal form (lower
    /// case, compatibility forms folded).
    pub name: String,
    /// A file holding the password that will seal the account's root key
    /// (its first line; for scripts). Without it the password is asked for
    /// on the terminal, twice, without echo.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Keep the root key nowhere: no password, and no `peerline login` on
    /// other devices (nor renewing this device's certificate) ever.
    #[arg(long)]
    pub no_password: bool,
    #[command(flatten)]
    pub network: NetworkArgs,
}

#[derive(clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct WhoamiArgs {
    /// This device's data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// A name the rules refuse: their sentence, exit 2.
pub(crate) fn checked_name(text: &str) -> Result<Name> {
    normalize(text).map_err(|error| fail(EXIT_BAD_INPUT, error.to_string()))
}

pub(crate) fn required_data_dir(data_dir: &Option<PathBuf>) -> Result<&Path> {
    data_dir.as_deref().ok_or_else(|| {
        fail(
            EXIT_BAD_INPUT,
            "no data directory: give --data-dir DIR (this device's keys live there)",
        )
    })
}

/// A lock held by a running node becomes exit 3 with what to do.
pub(crate) fn in_use(error: anyhow::Error) -> anyhow::Error {
    match error.downcast_ref::<InUse>() {
        Some(in_use) => fail(
            EXIT_NOT_NOW,
            format!(
                "the data directory {} is in use by a running peerline node{}; stop it first, or give another --data-dir",
                in_use.path.display(),
                data_dir::holder_text(&in_use.holder)
            ),
        ),
        None => error,
    }
}

pub(crate) fn client_params(loopback_test_network: bool) -> Params {
    match loopback_test_network {
        true => crate::timers::loopback_test_network().0,
        false => Params::default(),
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

/// A spinner on stderr while the command waits (nothing when stderr is
/// not a terminal: logs and tests stay clean).
pub(crate) fn spinner() -> ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// A short-lived client node, attached.
pub(crate) struct Session {
    pub(crate) node: RunningNode,
    events: Events,
}

impl Session {
    /// Starts a client with `identity` and waits until it is attached to a
    /// supernode; exit 3 when none answered within `timeout_s`.
    pub(crate) async fn attach(
        identity: DeviceIdentity,
        bootstrap: Vec<Contact>,
        params: Params,
        timeout_s: u64,
        shutdown_flush: Duration,
    ) -> Result<Session> {
        let Some(first) = bootstrap.first() else {
            return Err(fail(
                EXIT_BAD_INPUT,
                "no supernode to start from: give --bootstrap NODE_KEY@ADDR (a node prints its own at start), or a --data-dir whose node has run",
            ));
        };
        let tried = bootstrap.len();
        let config = DriverConfig {
            listen: listen_addr(first.addr.to_socket())?,
            advertised: None,
            params: Arc::new(params),
            identity,
            policy: RolePolicy::ClientOnly,
            bootstrap,
            rng_seed: None,
            limits: DriverLimits {
                shutdown_flush,
                ..DriverLimits::default()
            },
            // A short-lived client votes and holds nothing.
            persist: None,
        };
        let (node, mut events) = RunningNode::start(config)
            .await
            .map_err(|error| fail(EXIT_NOT_NOW, format!("the client could not start: {error}")))?;
        // Refusals by this many supernodes (or by every one tried) end
        // the wait: one supernode could lie, two agreeing is the network.
        let refusals_enough = tried.clamp(1, LOGIN_REFUSALS_ENOUGH);
        let mut refused_by: Vec<peerline_proto::PublicKey> = Vec::new();
        let mut refusal = None;
        let attached = tokio::time::timeout(Duration::from_secs(timeout_s), async {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Attached { .. } => return true,
                    Event::LoginRefused { supernode, reason } => {
                        if !refused_by.contains(&supernode.key) {
                            refused_by.push(supernode.key);
                        }
                        refusal = Some(reason);
                        if refused_by.len() >= refusals_enough {
                            return false;
                        }
                    }
                    _ => {}
                }
            }
            false
        })
        .await;
        if matches!(attached, Ok(true)) {
            return Ok(Session { node, events });
        }
        node.kill().await;
        if let Some(reason) = refusal {
            return Err(fail(
                EXIT_NO,
                format!(
                    "the network refused this device: {} (said by {} supernodes)",
                    refusal_text(reason),
                    refused_by.len()
                ),
            ));
        }
        Err(fail(
            EXIT_NOT_NOW,
            format!(
                "could not reach the network: no supernode answered within {timeout_s} s (tried {tried})"
            ),
        ))
    }

    /// Waits for the first event `answer` takes, at most `within`.
    pub(crate) async fn wait_for<T>(
        &mut self,
        within: Duration,
        mut answer: impl FnMut(Event) -> Option<T>,
    ) -> Option<T> {
        tokio::time::timeout(within, async {
            while let Some(event) = self.events.recv().await {
                if let Some(value) = answer(event) {
                    return Some(value);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    /// Looks a name up: its certificate and the account that owns it now
    /// (the certificate's, moved along its root rotations) —
    /// `Some(Ok(None))`: nobody has it; `Some(Err(_))`: the network could
    /// not answer; `None`: no answer within `LOOKUP_WAIT`.
    pub(crate) async fn lookup_name(&mut self, name: &Name) -> Result<Option<NameAnswer>> {
        let key = name.key();
        self.node
            .control
            .lookup_name(key)
            .await
            .map_err(|_| fail(EXIT_NOT_NOW, "the client stopped on its own"))?;
        Ok(self
            .wait_for(LOOKUP_WAIT, |event| match event {
                Event::NameLookupDone {
                    name_key,
                    result,
                    owner,
                    ..
                } if name_key == key => Some(result.map(|certificate| {
                    certificate
                        .zip(owner)
                        .map(|(certificate, owner)| Owned { certificate, owner })
                })),
                _ => None,
            })
            .await)
    }

    /// Publishes the account's sealed root key and its OPRF shares; waits
    /// until the deals went out (`Event::AccountSecretsPublished`) or why not.
    pub(crate) async fn publish(
        &mut self,
        secrets: AccountSecrets,
    ) -> std::result::Result<(), String> {
        let account = secrets.bundle.body.account_key;
        let dropped_before = self.frames_dropped_out().await;
        if self
            .node
            .control
            .publish_account_secrets(secrets.bundle, secrets.deals)
            .await
            .is_err()
        {
            return Err("the client stopped on its own".into());
        }
        let outcome = self
            .wait_for(PUBLISH_WAIT, |event| match event {
                Event::AccountSecretsPublished {
                    account: a,
                    indices_unheld,
                    ..
                } if a == account => Some(Ok(indices_unheld)),
                Event::BundleFailed { account: a, reason } if a == account => {
                    Some(Err(match reason {
                        BundleFailure::Unavailable => "no supernode answered, or too few \
                            supernodes hold its key shares: a password login needs at least 7"
                            .to_string(),
                        other => format!("{other:?}"),
                    }))
                }
                _ => None,
            })
            .await;
        let unheld = outcome
            .unwrap_or_else(|| Err(format!("no answer within {} s", PUBLISH_WAIT.as_secs())))?;
        if unheld > 0 {
            eprintln!("warning: {unheld} of the key share indices found no holder (the network has fewer supernodes than the sharing needs); the password still opens the account, and the shares are dealt again at every login");
        }
        if !self.wait_sent(SECRETS_SENT_WAIT).await {
            return Err(format!(
                "the key shares were not all sent within {} s",
                SECRETS_SENT_WAIT.as_secs()
            ));
        }
        // Any 3 of the 5 share indices open the bundle, and each index
        // has up to 3 holders: a few undelivered deals are a warning.
        let dropped = self
            .frames_dropped_out()
            .await
            .saturating_sub(dropped_before);
        if dropped > 0 {
            eprintln!("warning: {dropped} messages (key share deals among them) could not be delivered; the shares are dealt again at every login");
        }
        Ok(())
    }

    async fn frames_dropped_out(&self) -> u64 {
        match self.node.control.status().await {
            Ok(status) => status.links.frames_dropped_out,
            Err(_) => 0,
        }
    }

    /// Waits until the links sent (or dropped) every frame the node handed
    /// them, at most `within`; false when some were still on their way.
    /// The share deals go to holders the client dials only now, and a dial
    /// still running at shutdown is abandoned.
    pub(crate) async fn wait_sent(&self, within: Duration) -> bool {
        let sent = tokio::time::timeout(within, async {
            loop {
                match self.node.control.status().await {
                    Ok(status) if status.links.frames_in_flight() > 0 => {}
                    _ => return,
                }
                tokio::time::sleep(SENT_POLL).await;
            }
        });
        sent.await.is_ok()
    }

    /// Stops the client and saves what it learnt of the network into the
    /// data directory's host cache (a warning when that fails).
    pub(crate) async fn finish(self, data: Option<&DataDir>) {
        let report = self.node.shutdown().await.ok();
        if let Some(data) = data {
            save_learnt(data.store(), report);
        }
    }

    /// Attaches with the identity and host cache of `data` (then
    /// `--bootstrap`), as every command on an existing account does.
    pub(crate) async fn for_account(
        data: &DataDir,
        network: &NetworkArgs,
        shutdown_flush: Duration,
    ) -> Result<Session> {
        let params = client_params(network.loopback_test_network);
        let cached = data.load_host_cache().contacts;
        let bootstrap = bootstrap_order(&cached, &network.bootstrap, params.host_cache_len_max);
        let identity = data.identity(wall_clock_s())?;
        Session::attach(identity, bootstrap, params, network.timeout, shutdown_flush).await
    }
}

/// Saves into `store` what a stopped client learnt of the network (a
/// warning when that fails).
pub(crate) fn save_learnt(store: &Store, report: Option<peerline_net::DriverReport>) {
    if let Some(report) = report {
        let known = known_supernodes(&report.host_cache, &report.members_sample);
        if let Err(error) = store.save_host_cache(&known) {
            eprintln!("warning: {error:#}");
        }
    }
}

/// The lines every command that makes or shows a device prints.
pub(crate) fn print_device(
    body: &peerline_proto::DeviceCertBody,
    replaced: Option<peerline_proto::PublicKey>,
) {
    if let Some(old) = replaced {
        println!(
            "replaced   the nameless account {} this directory held (its device key too)",
            key_hex(&old)
        );
    }
    println!("account  {}", key_hex(&body.account_key));
    println!("device   {}", key_hex(&body.device_key));
    println!(
        "expires  {} (this device's certificate)",
        data_dir::utc_time(body.expires_unix_s)
    );
}

/// Where the client listens: loopback towards a loopback network, else
/// the address of the interface that routes outwards (dialable by the
/// supernodes, unlike 0.0.0.0), on a free port.
fn listen_addr(towards: SocketAddr) -> Result<SocketAddr> {
    let ip = match towards.ip() {
        ip if ip.is_loopback() && ip.is_ipv4() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => crate::node::outgoing_ip(ip.is_ipv6()).ok_or_else(|| {
            fail(
                EXIT_NOT_NOW,
                "could not reach the network: this machine has no route towards the supernodes",
            )
        })?,
    };
    Ok(SocketAddr::new(ip, 0))
}

/// The data directory named by `--data-dir`, when it holds a state
/// database (nothing is created).
fn existing_data_dir(data_dir: &Option<PathBuf>) -> Result<Option<DataDir>> {
    match data_dir {
        Some(path) => DataDir::open_existing(path).map_err(in_use),
        None => Ok(None),
    }
}

/// `peerline lookup <name>`.
pub fn lookup(args: LookupArgs) -> Result<ExitCode> {
    let name = checked_name(&args.name)?;
    let network = &args.network;
    let params = client_params(network.loopback_test_network);
    let data = existing_data_dir(&network.data_dir)?;
    let now = wall_clock_s();
    let (identity, cached) = match &data {
        Some(data) => (data.identity(now)?, data.load_host_cache().contacts),
        None => (data_dir::throwaway_identity(now)?, Vec::new()),
    };
    let bootstrap = bootstrap_order(&cached, &network.bootstrap, params.host_cache_len_max);
    let bar = spinner();
    bar.set_message("reaching the network");
    let outcome = runtime()?.block_on(async {
        let mut session = Session::attach(
            identity,
            bootstrap,
            params.clone(),
            network.timeout,
            SHUTDOWN_FLUSH,
        )
        .await?;
        bar.set_message(format!("looking up {}", name.as_str()));
        let result = session.lookup_name(&name).await?;
        session.finish(data.as_ref()).await;
        Ok::<_, anyhow::Error>(result)
    });
    bar.finish_and_clear();
    match outcome? {
        Some(Ok(Some(owned))) => {
            print_owner(&name, &owned, &params);
            Ok(ExitCode::SUCCESS)
        }
        Some(Ok(None)) => {
            println!("nobody has registered {}", name.as_str());
            Ok(ExitCode::from(EXIT_NO))
        }
        Some(Err(failure)) => Err(fail(
            EXIT_NOT_NOW,
            format!(
                "the network could not answer for {} ({}); try again in a minute",
                name.as_str(),
                failure_text(failure)
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

pub(crate) fn print_owner(name: &Name, owned: &Owned, params: &Params) {
    let certificate = &owned.certificate;
    let registered_by = certificate.claim.body.account;
    println!("name     {}", name.as_str());
    println!("account  {}", key_hex(&owned.owner));
    if owned.owner != registered_by {
        println!(
            "moved    from account {} (its root key was rotated)",
            key_hex(&registered_by)
        );
    }
    // The core checked the certificate before handing it out.
    if let Ok(info) = verify_certificate(CryptoMode::Full, params, certificate) {
        println!(
            "quorum   {} ({} votes)",
            data_dir::utc_time(info.quorum_unix_s),
            info.voters.len()
        );
    }
}

pub(crate) fn failure_text(failure: NameFailure) -> String {
    match failure {
        NameFailure::Refused(reason) => format!("the claim was refused: {reason:?}"),
        NameFailure::Unavailable => {
            "too few of the name's supernodes answered, or their votes split".into()
        }
        NameFailure::NotAttached => "the client lost its supernodes".into(),
        NameFailure::TooMany => "too many requests at once".into(),
    }
}

/// `peerline whoami`: the data directory's account, from the store only.
pub fn whoami(args: WhoamiArgs) -> Result<ExitCode> {
    let path = required_data_dir(&args.data_dir)?;
    let Some(data) = DataDir::open_existing(path).map_err(in_use)? else {
        return Err(fail(
            EXIT_NO,
            format!(
                "no account in {}; create one with `peerline account create <name>`",
                path.display()
            ),
        ));
    };
    let stored = data.store().identity()?;
    print_device(&stored.cert.body, None);
    let names: Vec<String> = data
        .store()
        .owned_names()?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    match names.is_empty() {
        true => println!("names    none (`peerline account create <name>` here makes a new account with a name, and new keys for this device)"),
        false => println!("names    {}", names.join(", ")),
    }
    Ok(ExitCode::SUCCESS)
}

/// `peerline account create <name>`.
pub fn create(args: CreateArgs) -> Result<ExitCode> {
    let name = checked_name(&args.name)?;
    let network = &args.network;
    let path = required_data_dir(&network.data_dir)?;
    let password = match (&args.password_file, args.no_password) {
        (Some(_), true) => {
            return Err(fail(
                EXIT_BAD_INPUT,
                "--password-file and --no-password exclude each other; give one",
            ))
        }
        (_, true) => None,
        (file, false) => Some(password::read(
            file.as_deref(),
            name.as_str(),
            Prompt::NewPassword,
        )?),
    };
    let params = client_params(network.loopback_test_network);
    data_dir::prepare(path)?;
    let _lock = data_dir::lock(path).map_err(in_use)?;
    let existing = existing_store(path)?;
    let cached = existing
        .as_ref()
        .map(|store| store.load_host_cache().contacts)
        .unwrap_or_default();
    let bootstrap = bootstrap_order(&cached, &network.bootstrap, params.host_cache_len_max);

    let bar = spinner();
    bar.set_message(format!("solving the proof of work for {}", name.as_str()));
    let now = wall_clock_s();
    let (stored, claim, secrets, list) = {
        // The root key lives in this block only.
        let account = Keypair::from_seed(CryptoMode::Full, data_dir::random_seed()?);
        let stored = data_dir::certify_device(data_dir::random_seed()?, &account, now);
        let claim = make_claim(&account, &name, now, params.name_pow_bits);
        let secrets = match &password {
            Some(password) => Some(password::seal(&account, password, now)?),
            None => None,
        };
        let device = stored.cert.body.device_key;
        let list = devices::next_list(&account, None, device, ListChange::Add(device), now)?;
        (stored, claim, secrets, list)
    };
    drop(password);
    bar.set_message("reaching the network");
    let key = name.key();
    let outcome = runtime()?.block_on(async {
        let identity = data_dir::device_identity(&stored);
        let mut session =
            Session::attach(identity, bootstrap, params, network.timeout, SECRETS_FLUSH).await?;
        bar.set_message(format!(
            "registering {} (its supernodes vote)",
            name.as_str()
        ));
        session
            .node
            .control
            .register_name(claim)
            .await
            .map_err(|_| fail(EXIT_NOT_NOW, "the client stopped on its own"))?;
        let outcome = session
            .wait_for(REGISTER_WAIT, |event| registration_outcome(event, key))
            .await;
        let published = match (&outcome, secrets) {
            (Some(Registration::Registered(_)), Some(secrets)) => {
                bar.set_message("storing the password-sealed root key");
                Some(session.publish(secrets).await)
            }
            _ => None,
        };
        if matches!(outcome, Some(Registration::Registered(_))) {
            bar.set_message("publishing the device list");
            if let Err(error) = devices::publish_list(&mut session, list.clone()).await {
                eprintln!(
                    "warning: {error:#}; `peerline login` on another device publishes it again"
                );
            }
        }
        let report = session.node.shutdown().await.ok();
        Ok::<_, anyhow::Error>((outcome, published, report))
    });
    bar.finish_and_clear();
    let (outcome, published, report) = outcome?;
    let certificate = registered_certificate(&name, outcome)?;
    let replaced = match &existing {
        Some(store) => Some(store.identity()?.cert.body.account_key),
        None => None,
    };
    let store = save_account(path, existing, &stored, &name, &certificate)?;
    devices::save_list(&store, &list)?;
    save_learnt(&store, report);
    println!("registered {}", name.as_str());
    print_device(&stored.cert.body, replaced);
    match published {
        Some(Ok(())) => {
            println!(
                "password set: `peerline login {}` on another device opens the root key with it",
                name.as_str()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Err(reason)) => Err(fail(
            EXIT_NOT_NOW,
            format!(
                "registered {name}, but the network did not keep its password-sealed root key ({reason}); this device works, but `peerline login {name}` will not",
                name = name.as_str()
            ),
        )),
        None => {
            println!("note: no password, so the account's root key was kept nowhere: this account cannot log in on other devices or renew this device's certificate");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The certificate of a registration that succeeded; the sentence of one
/// that did not.
fn registered_certificate(
    name: &Name,
    outcome: Option<Registration>,
) -> Result<Box<NameCertificate>> {
    match outcome {
        Some(Registration::Registered(certificate)) => Ok(certificate),
        Some(Registration::Taken(owner)) => Err(fail(
            EXIT_NO,
            format!(
                "the name {} is taken (by account {}); choose another",
                name.as_str(),
                key_hex(&owner)
            ),
        )),
        Some(Registration::Failed(failure)) => Err(fail(
            EXIT_NOT_NOW,
            format!(
                "the network could not register {} ({}); try again in a minute",
                name.as_str(),
                failure_text(failure)
            ),
        )),
        None => Err(fail(
            EXIT_NOT_NOW,
            format!(
                "the network did not decide on {} within {} s; try again in a minute",
                name.as_str(),
                REGISTER_WAIT.as_secs()
            ),
        )),
    }
}

/// The data directory's store, if it has one; refused when it already
/// holds an account with a name, or an identity from before the store.
pub(crate) fn existing_store(path: &Path) -> Result<Option<Store>> {
    let state = path.join(STATE_FILE);
    if !state.exists() {
        if path.join(data_dir::IDENTITY_FILE).exists() {
            return Err(fail(
                EXIT_BAD_INPUT,
                format!(
                    "{} holds an identity from an older peerline; give another --data-dir for a new account",
                    path.display()
                ),
            ));
        }
        return Ok(None);
    }
    let store = Store::open(&state)?;
    if let Some((owned, _)) = store.owned_names()?.into_iter().next() {
        return Err(fail(
            EXIT_NO,
            format!(
                "{} already holds the account named {owned}; give another --data-dir for a new account",
                path.display()
            ),
        ));
    }
    Ok(Some(store))
}

/// Writes the new identity and its name: into the existing store (whose
/// nameless account it replaces), or a new one.
pub(crate) fn save_account(
    path: &Path,
    existing: Option<Store>,
    stored: &StoredIdentity,
    name: &Name,
    certificate: &NameCertificate,
) -> Result<Store> {
    let bytes = postcard::to_allocvec(certificate).context("cannot encode the name certificate")?;
    let store = match existing {
        Some(store) => store,
        None => Store::create(&path.join(STATE_FILE), stored, &[])?,
    };
    store.set_account(stored, name.as_str(), &bytes)?;
    Ok(store)
}

enum Registration {
    Registered(Box<NameCertificate>),
    Taken(peerline_proto::PublicKey),
    Failed(NameFailure),
}

fn registration_outcome(event: Event, key: NodeId) -> Option<Registration> {
    match event {
        Event::NameRegistered {
            name_key,
            certificate,
            ..
        } if name_key == key => Some(Registration::Registered(certificate)),
        Event::NameTaken {
            name_key, owner, ..
        } if name_key == key => Some(Registration::Taken(owner)),
        // A claim the core refuses before sending carries no name key.
        Event::NameFailed { name_key, reason }
            if name_key == key || name_key == NodeId::default() =>
        {
            Some(Registration::Failed(reason))
        }
        _ => None,
    }
}
