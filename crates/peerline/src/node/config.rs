//! `peerline node`'s settings: command-line flags, an optional TOML file,
//! and the one merge rule between them (a flag given on the command line
//! wins over the file; the file wins over the defaults). Every bad value
//! becomes one sentence naming the flag or key, never a panic.

use anyhow::{bail, Context, Result};
use peerline_proto::PublicKey;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where a node listens when neither the flag nor the file says: every
/// IPv4 interface, on the port IANA lists for nothing in particular that
/// QUIC test servers commonly use.
pub const LISTEN_DEFAULT: &str = "0.0.0.0:4433";

/// Seeds accepted at once; more is a mistake, not a bootstrap list.
pub const BOOTSTRAP_LEN_MAX: usize = 256;

#[derive(clap::Args, Debug, Default)]
#[command(after_long_help = AFTER_HELP)]
pub struct NodeArgs {
    /// UDP address to listen on (IPv4 or IPv6; port 0 picks a free one)
    /// [default: 0.0.0.0:4433].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address other nodes reach this one at, when it differs from --listen
    /// (needed when listening on 0.0.0.0 or :: unless the outgoing
    /// interface's address is the right one, which is then used and logged).
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<SocketAddr>,
    /// Directory for the node's state: state.redb (its device key and
    /// certificate, contacts and host cache; made on first start, mode
    /// 0600; an old identity.key is moved into it) and a lock file.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Supernodes to start from, as NODE_KEY@ADDR (the node key in 64 hex
    /// digits, as a node prints it at start). Their keys are pinned; any
    /// of them may be dead. Tried after the saved host cache.
    #[arg(long, value_name = "NODE_KEY@ADDR", num_args = 1.., value_parser = Seed::from_str)]
    pub bootstrap: Vec<Seed>,
    /// auto: a client that promotes itself to supernode when reachable and
    /// needed; supernode: always one; client: never one [default: auto].
    #[arg(long, value_enum)]
    pub role: Option<NodeRole>,
    /// A TOML file with any of these settings, keys named like the flags
    /// with `_` for `-` (listen, advertise, data_dir, bootstrap = [...],
    /// role, log_level, status_file, fast_timers, test_traffic_to,
    /// test_traffic_interval_ms, lan_discovery = "on"|"off",
    /// port_mapping = "on"|"off"). Flags win over it;
    /// relative paths in it are relative to the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or RUST_LOG-style
    /// directives (e.g. peerline=debug). Without it RUST_LOG applies, else
    /// info.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Rewrite this JSON file every second with what the node believes
    /// (role, attached supernodes, clients, membership) — for scripts and
    /// the chaos test.
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,
    /// Shorten keepalives, the outbox re-send and the ID puzzle as
    /// `peerline demo` does, for networks on one machine. Every node of a
    /// network must agree (they check each other's ID puzzles); never for
    /// nodes on the internet.
    #[arg(long)]
    pub fast_timers: bool,
    /// For test networks whose nodes all share one address (loopback):
    /// --fast-timers, and a name certificate may carry several votes from
    /// one network (production counts at most one voter per /24 or /48,
    /// so that one operator cannot vote a name through alone; on 127.0.0.1
    /// that rule leaves one voter, and no name could ever be registered).
    /// Clients give the same flag to `peerline account create` and
    /// `peerline lookup`, as they check certificates by the same rule.
    /// Never for nodes on the internet.
    #[arg(long)]
    pub loopback_test_network: bool,
    /// For tests: send a small message to this device every
    /// --test-traffic-interval-ms, as DEVICE_KEY:ACCOUNT_KEY (a node prints
    /// its own in its `messaging` line); the status file counts what was
    /// sent, acknowledged and received. The daemon has no other way to send
    /// yet.
    #[arg(long, value_name = "DEVICE_KEY:ACCOUNT_KEY", value_parser = Recipient::from_str)]
    pub test_traffic_to: Option<Recipient>,
    /// Period of the test traffic [default: 1000].
    #[arg(long, value_name = "MS")]
    pub test_traffic_interval_ms: Option<u64>,
    /// For tests: open a direct connection to this device
    /// (DEVICE_KEY:ACCOUNT_KEY) by hole punching through both devices'
    /// supernodes, once attached; the status file's `paths` says how it went.
    #[arg(long, value_name = "DEVICE_KEY:ACCOUNT_KEY", value_parser = Recipient::from_str)]
    pub connect_to: Option<Recipient>,
    /// An account (64 hex digits, as a node prints after `messaging …:`)
    /// whose devices may learn this device's IP addresses when they
    /// connect to it, for this run, besides the contacts saved in the data
    /// directory; repeatable. Any other device gets a connection relayed
    /// by this device's supernode and never learns its addresses.
    #[arg(long = "contact", value_name = "ACCOUNT_KEY", value_parser = parse_account_key)]
    pub contacts: Vec<PublicKey>,
    /// on: a supernode announces itself on the local network (mDNS, service
    /// _peerline._udp) and a node with no working bootstrap (none given, or
    /// none answered within 10 s) looks for one there; only on the
    /// interface of --listen (all of them for 0.0.0.0 or ::, none for a
    /// loopback address). A found supernode's key is pinned like a
    /// --bootstrap seed's [default: on].
    #[arg(long, value_name = "on|off")]
    pub lan_discovery: Option<Switch>,
    /// on: when --listen (or, for 0.0.0.0, the outgoing interface) is a
    /// private address (RFC 1918, IPv6 ULA), ask the gateway over UPnP-IGD
    /// for a UDP mapping of the port, renew it, remove it at shutdown, and
    /// offer the mapped address to peers as a connection candidate. Never
    /// on loopback or public addresses [default: on].
    #[arg(long, value_name = "on|off")]
    pub port_mapping: Option<Switch>,
}

/// A feature turned on or off, as a flag value or in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    pub fn is_on(self) -> bool {
        self == Switch::On
    }
}

/// Test traffic's period bounds: a message per 100 ms at most.
pub const TEST_TRAFFIC_INTERVAL_MS_MIN: u64 = 100;
pub const TEST_TRAFFIC_INTERVAL_MS_DEFAULT: u64 = 1_000;

/// A messaging device: its device key and its account's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipient {
    pub device: PublicKey,
    pub account: PublicKey,
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}", key_hex(&self.device), key_hex(&self.account))
    }
}

impl FromStr for Recipient {
    type Err = String;

    fn from_str(text: &str) -> Result<Recipient, String> {
        let text = text.trim();
        let parsed = text
            .split_once(':')
            .and_then(|(device, account)| Some((parse_key_hex(device)?, parse_key_hex(account)?)));
        match parsed {
            Some((device, account)) => Ok(Recipient {
                device: PublicKey(device),
                account: PublicKey(account),
            }),
            None => Err(format!(
                "'{text}' is not DEVICE_KEY:ACCOUNT_KEY (two keys of 64 hex digits, as a node prints in its messaging line)"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Recipient {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Recipient, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

const AFTER_HELP: &str = "\
At start the node prints its node key and a NODE_KEY@ADDR line that other
nodes can pass to --bootstrap. It logs to stderr. SIGINT or SIGTERM stops it
politely: goodbyes to its peers, the host cache saved, exit 0.

Bootstrap order: the saved host cache, then the --bootstrap seeds, then
(with --lan-discovery on) supernodes announced on the local network.

Example: a first supernode, then a client that starts from it:
  peerline node --role supernode --listen 192.0.2.10:4433 --data-dir /var/lib/peerline
  peerline node --data-dir ~/.peerline --listen 0.0.0.0:4434 --bootstrap KEY@192.0.2.10:4433";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Auto,
    Supernode,
    Client,
}

/// A supernode to bootstrap from: its key (pinned) and address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed {
    pub key: PublicKey,
    pub addr: SocketAddr,
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}@{}", key_hex(&self.key), self.addr)
    }
}

/// A node key as it is printed and given to --bootstrap: 64 hex digits.
pub fn key_hex(key: &PublicKey) -> String {
    key.0.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Parses 64 hex digits (either case) into a key.
/// `--contact`'s value: an account key in 64 hex digits.
fn parse_account_key(text: &str) -> Result<PublicKey, String> {
    parse_key_hex(text.trim()).map(PublicKey).ok_or_else(|| {
        format!(
            "'{text}' is not an account key (64 hex digits, as a node prints after 'messaging …:')"
        )
    })
}

pub fn parse_key_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (byte, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
        let digits = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(key)
}

impl FromStr for Seed {
    type Err = String;

    fn from_str(text: &str) -> Result<Seed, String> {
        let text = text.trim();
        let Some((key, addr)) = text.split_once('@') else {
            return Err(format!(
                "'{text}' is not NODE_KEY@ADDR (e.g. 3fa4…(64 hex digits)@192.0.2.10:4433)"
            ));
        };
        let key = parse_key_hex(key).ok_or_else(|| {
            format!("'{key}' is not a node key: a node key is 64 hex digits, as a node prints it")
        })?;
        let addr: SocketAddr = addr.parse().map_err(|_| {
            format!("'{addr}' is not an IP address and port (e.g. 192.0.2.10:4433 or [2001:db8::1]:4433)")
        })?;
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return Err(format!(
                "'{addr}' cannot be dialed: give the supernode's own address and port"
            ));
        }
        Ok(Seed {
            key: PublicKey(key),
            addr,
        })
    }
}

impl<'de> Deserialize<'de> for Seed {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Seed, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The TOML file: the same settings as the flags; unknown keys are errors
/// (a misspelt key silently ignored is a setting silently lost).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    advertise: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    bootstrap: Option<Vec<Seed>>,
    role: Option<NodeRole>,
    log_level: Option<String>,
    status_file: Option<PathBuf>,
    fast_timers: Option<bool>,
    test_traffic_to: Option<Recipient>,
    test_traffic_interval_ms: Option<u64>,
    lan_discovery: Option<Switch>,
    port_mapping: Option<Switch>,
}

/// Everything the node runs with, merged and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSettings {
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub bootstrap: Vec<Seed>,
    pub role: NodeRole,
    pub log_level: Option<String>,
    pub status_file: Option<PathBuf>,
    pub fast_timers: bool,
    /// `--loopback-test-network`: fast timers and several voters per network.
    pub loopback_test_network: bool,
    pub test_traffic_to: Option<Recipient>,
    pub test_traffic_interval_ms: u64,
    pub connect_to: Option<Recipient>,
    /// `--contact`: accounts that may learn the device's addresses.
    pub contacts: Vec<PublicKey>,
    pub lan_discovery: Switch,
    pub port_mapping: Switch,
}

/// Reads the config file (if any) and merges it under the flags.
pub fn settings(args: NodeArgs) -> Result<NodeSettings> {
    let file = match &args.config {
        Some(path) => read_file_config(path)?,
        None => FileConfig::default(),
    };
    // Relative paths in the file are relative to the file, so that a
    // service started from anywhere finds the same directory.
    let base = args
        .config
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let from_file = |path: Option<PathBuf>| path.map(|p| base.join(p));
    let data_dir = match args.data_dir.or_else(|| from_file(file.data_dir)) {
        Some(dir) => dir,
        None => bail!("no data directory: give --data-dir DIR (or data_dir in the config file)"),
    };
    let bootstrap = if args.bootstrap.is_empty() {
        file.bootstrap.unwrap_or_default()
    } else {
        args.bootstrap
    };
    if bootstrap.len() > BOOTSTRAP_LEN_MAX {
        bail!(
            "{} bootstrap supernodes given; at most {BOOTSTRAP_LEN_MAX} are taken",
            bootstrap.len()
        );
    }
    let listen = match args.listen.or(file.listen) {
        Some(listen) => listen,
        None => LISTEN_DEFAULT
            .parse()
            .context("the default listen address")?,
    };
    let test_traffic_interval_ms = args
        .test_traffic_interval_ms
        .or(file.test_traffic_interval_ms)
        .unwrap_or(TEST_TRAFFIC_INTERVAL_MS_DEFAULT);
    if test_traffic_interval_ms < TEST_TRAFFIC_INTERVAL_MS_MIN {
        bail!("--test-traffic-interval-ms must be at least {TEST_TRAFFIC_INTERVAL_MS_MIN}");
    }
    let log_level = args.log_level.or(file.log_level);
    if let Some(level) = &log_level {
        check_log_level(level)?;
    }
    Ok(NodeSettings {
        listen,
        advertise: args.advertise.or(file.advertise),
        data_dir,
        bootstrap,
        role: args.role.or(file.role).unwrap_or(NodeRole::Auto),
        log_level,
        status_file: args.status_file.or_else(|| from_file(file.status_file)),
        fast_timers: args.fast_timers || file.fast_timers.unwrap_or(false),
        loopback_test_network: args.loopback_test_network,
        test_traffic_to: args.test_traffic_to.or(file.test_traffic_to),
        connect_to: args.connect_to,
        contacts: args.contacts,
        test_traffic_interval_ms,
        lan_discovery: args
            .lan_discovery
            .or(file.lan_discovery)
            .unwrap_or(Switch::On),
        port_mapping: args
            .port_mapping
            .or(file.port_mapping)
            .unwrap_or(Switch::On),
    })
}

fn read_file_config(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    parse_file_config(&text)
        .map_err(|problem| anyhow::anyhow!("config file {}: {problem}", path.display()))
}

/// The file's settings, or what is wrong with it, where, in one message.
fn parse_file_config(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|error| {
        let message = error.message().trim_end().to_string();
        match error.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {message}")
            }
            None => message,
        }
    })
}

/// Refuses a log filter tracing would not understand.
pub fn check_log_level(level: &str) -> Result<()> {
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| ())
        .map_err(|error| {
            anyhow::anyhow!(
                "log level '{level}' is not understood ({error}); use error, warn, info, debug or trace"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "3fa4000000000000000000000000000000000000000000000000000000000001";

    fn args() -> NodeArgs {
        NodeArgs {
            data_dir: Some(PathBuf::from("/tmp/x")),
            ..NodeArgs::default()
        }
    }

    #[test]
    fn seeds_round_trip_through_text() {
        let seed: Seed = format!("{KEY}@127.0.0.1:4433").parse().unwrap();
        assert_eq!(seed.addr, "127.0.0.1:4433".parse().unwrap());
        assert_eq!(seed.key.0[0], 0x3f);
        assert_eq!(seed.key.0[31], 0x01);
        assert_eq!(seed.to_string().parse::<Seed>().unwrap(), seed);
        let v6: Seed = format!("{}@[::1]:9", KEY.to_uppercase()).parse().unwrap();
        assert_eq!(v6.key, seed.key);
    }

    #[test]
    fn bad_seeds_say_what_is_wrong() {
        let cases = [
            ("nothing-here", "is not NODE_KEY@ADDR"),
            ("abc@127.0.0.1:1", "is not a node key"),
            (&format!("{}@127.0.0.1:1", &KEY[..63]), "is not a node key"),
            (
                &format!("{}zz@127.0.0.1:1", &KEY[..62]),
                "is not a node key",
            ),
            (&format!("{KEY}@localhost"), "is not an IP address and port"),
            (&format!("{KEY}@0.0.0.0:4433"), "cannot be dialed"),
            (&format!("{KEY}@127.0.0.1:0"), "cannot be dialed"),
        ];
        for (text, needle) in cases {
            let error = text.parse::<Seed>().unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn recipients_round_trip_and_bad_ones_are_named() {
        let text = format!("{KEY}:{}", KEY.replace('3', "4"));
        let recipient: Recipient = text.parse().unwrap();
        assert_eq!(recipient.to_string(), text);
        assert_ne!(recipient.device, recipient.account);
        for bad in [KEY, &format!("{KEY}:"), &format!("{KEY}@{KEY}")] {
            let error = bad.parse::<Recipient>().unwrap_err();
            assert!(error.contains("is not DEVICE_KEY:ACCOUNT_KEY"), "{error}");
        }
    }

    #[test]
    fn a_full_file_parses() {
        let file = parse_file_config(&format!(
            "listen = \"127.0.0.1:5000\"\nadvertise = \"192.0.2.1:5000\"\ndata_dir = \"d\"\n\
             bootstrap = [\"{KEY}@127.0.0.1:4433\"]\nrole = \"supernode\"\nlog_level = \"debug\"\n\
             status_file = \"s.json\"\nfast_timers = true\nlan_discovery = \"off\"\n\
             port_mapping = \"on\"\n"
        ))
        .unwrap();
        assert_eq!(file.role, Some(NodeRole::Supernode));
        assert_eq!(file.lan_discovery, Some(Switch::Off));
        assert_eq!(file.port_mapping, Some(Switch::On));
        assert_eq!(file.bootstrap.unwrap().len(), 1);
        assert_eq!(file.fast_timers, Some(true));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named_with_their_line() {
        let cases = [
            (
                "listen = \"127.0.0.1:1\"\nlisten_port = 4\n",
                "line 2",
                "listen_port",
            ),
            ("role = \"boss\"\n", "line 1", "boss"),
            ("listen = \"nowhere\"\n", "line 1", "socket address"),
            ("bootstrap = [\"x@y\"]\n", "line 1", "is not a node key"),
            ("fast_timers = \"yes\"\n", "line 1", "bool"),
            ("lan_discovery = \"maybe\"\n", "line 1", "maybe"),
            ("port_mapping = true\n", "line 1", ""),
            ("listen = \n", "line 1", ""),
        ];
        for (text, line, needle) in cases {
            let error = parse_file_config(text).unwrap_err();
            assert!(error.starts_with(line), "{text:?}: {error}");
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }

    #[test]
    fn flags_win_over_the_file_and_paths_follow_the_file() {
        let dir = std::env::temp_dir().join(format!("peerline-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            format!(
                "listen = \"127.0.0.1:5000\"\ndata_dir = \"data\"\nrole = \"client\"\n\
                 bootstrap = [\"{KEY}@127.0.0.1:4433\"]\nfast_timers = true\n\
                 lan_discovery = \"off\"\nport_mapping = \"off\"\n"
            ),
        )
        .unwrap();
        let from_file = settings(NodeArgs {
            config: Some(path.clone()),
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(from_file.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(from_file.data_dir, dir.join("data"));
        assert_eq!(from_file.role, NodeRole::Client);
        assert!(from_file.fast_timers);
        assert_eq!(from_file.bootstrap.len(), 1);
        assert_eq!(from_file.lan_discovery, Switch::Off);
        assert_eq!(from_file.port_mapping, Switch::Off);

        let other: Seed = format!("{KEY}@127.0.0.1:4444").parse().unwrap();
        let overridden = settings(NodeArgs {
            config: Some(path),
            listen: Some("127.0.0.1:6000".parse().unwrap()),
            data_dir: Some(PathBuf::from("elsewhere")),
            role: Some(NodeRole::Supernode),
            bootstrap: vec![other],
            lan_discovery: Some(Switch::On),
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(overridden.listen, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(overridden.data_dir, PathBuf::from("elsewhere"));
        assert_eq!(overridden.role, NodeRole::Supernode);
        assert_eq!(overridden.bootstrap, vec![other]);
        assert_eq!(overridden.lan_discovery, Switch::On, "the flag wins");
        assert_eq!(overridden.port_mapping, Switch::Off, "the file stays");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn defaults_and_required_settings() {
        let plain = settings(args()).unwrap();
        assert_eq!(plain.listen, LISTEN_DEFAULT.parse().unwrap());
        assert_eq!(plain.role, NodeRole::Auto);
        assert!(!plain.fast_timers);
        assert_eq!(plain.lan_discovery, Switch::On);
        assert_eq!(plain.port_mapping, Switch::On);
        let error = settings(NodeArgs::default()).unwrap_err().to_string();
        assert!(error.contains("--data-dir"), "{error}");
        let error = settings(NodeArgs {
            log_level: Some("peerline=loudest".into()),
            ..args()
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("log level"), "{error}");
        let error = settings(NodeArgs {
            test_traffic_interval_ms: Some(99),
            ..args()
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("at least 100"), "{error}");
    }
}
