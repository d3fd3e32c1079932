//! LAN discovery: the bootstrap source after the host cache and the seeds.
//!
//! A supernode announces its contact on the local network with mDNS-SD
//! (RFC 6762/6763, service `_peerline._udp.local.`, the `mdns-sd` crate: a
//! maintained pure-Rust responder and browser on its own thread). A node
//! with no working bootstrap — none given, or no attachment (a client) or
//! no other member (a supernode) for [`FALLBACK_AFTER`] — browses for
//! [`BROWSE_ROUND`], takes at most [`CONTACTS_PER_ROUND_MAX`] contacts,
//! hands each to the core (`Control::add_bootstrap`), and tries again
//! every [`BROWSE_INTERVAL`] while it still has none.
//!
//! What is announced is the supernode's contact exactly as it gives it to
//! anyone (TXT `key`, `nonce`, `addr`: its advertised address). The key is
//! pinned like a `--bootstrap` seed's — the TLS handshake fails unless the
//! peer proves it — so a LAN attacker can only point a node at real nodes,
//! and the worst an announcement can do is cost a failed handshake.
//!
//! Interfaces: only the listen address's (all for 0.0.0.0 or ::, of that
//! family), never loopback. A node listening on a loopback address does
//! not start mDNS at all: `mdns-sd` joins the mDNS group on every
//! interface when it starts (IGMP/MLD reports, before our selection
//! narrows it), which a node meant to stay on one machine must not do.
//!
//! This lives in the daemon, not in `peerline-net`: which bootstrap
//! sources a node uses is the daemon's choice (the driver runs one node on
//! one socket, given its contacts), and it needs neither the node's socket
//! nor its connections — only `Control`.
//!
//! *Must not depend on:* the core's internals (it speaks only through
//! `Control` and reads only `NodeStatus`), and it never decides anything
//! about the protocol: the core chooses whether and when to use a contact.

use super::config::{key_hex, parse_key_hex};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use peerline_net::{Control, NodeStatus};
use peerline_proto::{Addr, Contact, PublicKey};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The DNS-SD service type of peerline supernodes.
pub const SERVICE_TYPE: &str = "_peerline._udp.local.";
/// The announcement's format, TXT `v`.
const ANNOUNCEMENT_VERSION: &str = "1";
/// How long one browse round listens for answers.
pub const BROWSE_ROUND: Duration = Duration::from_secs(3);
/// Time between the starts of two browse rounds while still needed.
pub const BROWSE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a node that was given a bootstrap waits for it to work (an
/// attachment, or another member) before it looks on the local network.
pub const FALLBACK_AFTER: Duration = Duration::from_secs(10);
/// Contacts taken from one round; more answers are ignored.
pub const CONTACTS_PER_ROUND_MAX: usize = 8;
/// mDNS events read in one round (found, resolved, removed…), whatever
/// they hold: a noisy segment cannot keep a round busy.
pub const EVENTS_PER_ROUND_MAX: usize = 256;
/// How long the goodbye (unregister) and the mDNS thread's stop may take.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// The interfaces discovery may use, chosen from the listen address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interfaces {
    /// Addresses of the interfaces to use (one per interface and family).
    Use(Vec<IpAddr>),
    /// Discovery does not run, and why (for the log).
    Off(String),
}

/// Which interfaces to announce and browse on: the one holding the listen
/// address; for 0.0.0.0 (or ::) every non-loopback interface of that
/// family; none for a loopback listen address or when no interface holds
/// the address. `interfaces` are (address, is loopback).
pub fn choose_interfaces(listen: IpAddr, interfaces: &[(IpAddr, bool)]) -> Interfaces {
    if listen.is_loopback() {
        return Interfaces::Off(format!(
            "listening on {listen}, a loopback address: no local network to look at"
        ));
    }
    let chosen: Vec<IpAddr> = if listen.is_unspecified() {
        let mut all: Vec<IpAddr> = interfaces
            .iter()
            .filter(|(ip, loopback)| !loopback && ip.is_ipv4() == listen.is_ipv4())
            .map(|(ip, _)| *ip)
            .collect();
        all.sort();
        all.dedup();
        all
    } else if interfaces.iter().any(|(ip, _)| *ip == listen) {
        vec![listen]
    } else {
        return Interfaces::Off(format!("no network interface has the address {listen}"));
    };
    if chosen.is_empty() {
        return Interfaces::Off(format!(
            "listening on {listen}, but no non-loopback interface of that family is up"
        ));
    }
    Interfaces::Use(chosen)
}

/// The machine's interface addresses, as `choose_interfaces` takes them.
fn machine_interfaces() -> Vec<(IpAddr, bool)> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces
            .iter()
            .map(|interface| (interface.ip(), interface.is_loopback()))
            .collect(),
        Err(error) => {
            tracing::warn!("LAN discovery: cannot list the network interfaces: {error}");
            Vec::new()
        }
    }
}

/// The interfaces for this listen address, logged when discovery is off.
pub fn plan(listen: SocketAddr) -> Option<Vec<IpAddr>> {
    match choose_interfaces(listen.ip(), &machine_interfaces()) {
        Interfaces::Use(addresses) => Some(addresses),
        Interfaces::Off(reason) => {
            tracing::info!("LAN discovery off: {reason}");
            None
        }
    }
}

/// The TXT properties announcing a supernode contact.
pub fn announcement(contact: &Contact) -> Vec<(&'static str, String)> {
    vec![
        ("v", ANNOUNCEMENT_VERSION.to_string()),
        ("key", key_hex(&contact.key)),
        ("nonce", contact.id_nonce.to_string()),
        ("addr", contact.addr.to_socket().to_string()),
    ]
}

/// The contact an announcement names, from its TXT properties (`get`
/// looks one up by key), or what is wrong with it.
pub fn parse_announcement<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Contact, String> {
    match get("v") {
        Some(ANNOUNCEMENT_VERSION) => {}
        Some(other) => return Err(format!("announcement version {other:?} is not 1")),
        None => return Err("no announcement version".into()),
    }
    let key = get("key")
        .and_then(parse_key_hex)
        .ok_or("no node key of 64 hex digits")?;
    let id_nonce = get("nonce")
        .and_then(|nonce| nonce.parse::<u64>().ok())
        .ok_or("no ID nonce")?;
    let addr: SocketAddr = get("addr")
        .and_then(|addr| addr.parse().ok())
        .ok_or("no address and port")?;
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(format!("{addr} cannot be dialed"));
    }
    Ok(Contact {
        key: PublicKey(key),
        id_nonce,
        addr: Addr::from_socket(addr),
    })
}

/// The DNS-SD instance name of a supernode: its key's first 16 hex digits
/// (a DNS label holds 63 bytes, a key is 64 digits; the full key is in TXT).
fn instance_name(key: &PublicKey) -> String {
    format!("peerline-{}", &key_hex(key)[..16])
}

/// When to browse: as soon as a node without bootstrap starts, after
/// [`FALLBACK_AFTER`] without a working bootstrap otherwise, then every
/// [`BROWSE_INTERVAL`] while still without one.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The bootstrap list was empty at start: nothing to wait for.
    no_bootstrap: bool,
    /// Since when the node has had no working bootstrap.
    needed_since: Option<Instant>,
    next_round_at: Option<Instant>,
}

impl Schedule {
    pub fn new(no_bootstrap: bool) -> Schedule {
        Schedule {
            no_bootstrap,
            needed_since: None,
            next_round_at: None,
        }
    }

    /// Whether a round should start now. `needed`: the node has no working
    /// bootstrap (a client without an attachment, a supernode alone).
    pub fn round_due(&mut self, now: Instant, needed: bool) -> bool {
        if !needed {
            self.needed_since = None;
            return false;
        }
        let since = *self.needed_since.get_or_insert(now);
        let waited = self.no_bootstrap || now.duration_since(since) >= FALLBACK_AFTER;
        if !waited || self.next_round_at.is_some_and(|at| now < at) {
            return false;
        }
        self.next_round_at = Some(now + BROWSE_INTERVAL);
        true
    }
}

/// Whether the node lacks a working bootstrap, from what it believes.
pub fn bootstrap_needed(status: &NodeStatus) -> bool {
    if status.is_supernode {
        status.membership_len <= 1
    } else {
        status.attached.is_empty()
    }
}

/// The running discovery: the mDNS thread, this node's announcement while
/// it is a supernode, and at most one browse round.
pub struct LanDiscovery {
    mdns: ServiceDaemon,
    own_key: PublicKey,
    /// The announced contact and its DNS-SD full name.
    announced: Option<(Contact, String)>,
    schedule: Schedule,
    round: Option<JoinHandle<usize>>,
}

impl LanDiscovery {
    /// Starts mDNS on the chosen interfaces only. A failure is a warning
    /// and no discovery, never a reason not to run the node.
    pub fn start(
        interfaces: &[IpAddr],
        own_key: PublicKey,
        no_bootstrap: bool,
    ) -> Option<LanDiscovery> {
        let started = ServiceDaemon::new().and_then(|mdns| {
            mdns.disable_interface(IfKind::All)?;
            let chosen: Vec<IfKind> = interfaces.iter().copied().map(IfKind::Addr).collect();
            mdns.enable_interface(chosen)?;
            Ok(mdns)
        });
        match started {
            Ok(mdns) => {
                tracing::info!(
                    "LAN discovery on the interfaces of {}",
                    interfaces
                        .iter()
                        .map(IpAddr::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                Some(LanDiscovery {
                    mdns,
                    own_key,
                    announced: None,
                    schedule: Schedule::new(no_bootstrap),
                    round: None,
                })
            }
            Err(error) => {
                tracing::warn!("LAN discovery off: mDNS could not start: {error}");
                None
            }
        }
    }

    /// Called with every status: announces this node while it is a
    /// supernode (withdraws it when demoted), reports a finished round,
    /// and starts one when due.
    pub fn tick(&mut self, status: &NodeStatus, control: &Control) {
        self.announce(status.contact);
        if self.round.as_ref().is_some_and(JoinHandle::is_finished) {
            self.round = None;
        }
        let needed = bootstrap_needed(status);
        if self.round.is_none() && self.schedule.round_due(Instant::now(), needed) {
            tracing::info!("looking for supernodes on the local network (LAN discovery)");
            self.round = Some(tokio::spawn(browse_round(
                self.mdns.clone(),
                self.own_key,
                control.clone(),
            )));
        }
    }

    fn announce(&mut self, contact: Option<Contact>) {
        if self.announced.as_ref().map(|(announced, _)| *announced) == contact {
            return;
        }
        if let Some((_, fullname)) = self.announced.take() {
            let _ = self.mdns.unregister(&fullname);
            tracing::info!("LAN discovery: no longer announced (not a supernode)");
        }
        let Some(contact) = contact else { return };
        let name = instance_name(&contact.key);
        let properties = announcement(&contact);
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &name,
            &format!("{name}.local."),
            (),
            contact.addr.to_socket().port(),
            &properties[..],
        )
        .map(ServiceInfo::enable_addr_auto);
        match info {
            Ok(info) => {
                let fullname = info.get_fullname().to_string();
                match self.mdns.register(info) {
                    Ok(()) => {
                        tracing::info!(
                            "LAN discovery: announcing this supernode ({})",
                            contact.addr.to_socket()
                        );
                        self.announced = Some((contact, fullname));
                    }
                    Err(error) => tracing::warn!("LAN discovery: cannot announce: {error}"),
                }
            }
            Err(error) => tracing::warn!("LAN discovery: cannot announce: {error}"),
        }
    }

    /// Withdraws the announcement (an mDNS goodbye) and stops the mDNS
    /// thread, within [`STOP_WAIT`] each.
    pub async fn stop(self) {
        if let Some(round) = &self.round {
            round.abort();
        }
        if let Some((_, fullname)) = &self.announced {
            if let Ok(done) = self.mdns.unregister(fullname) {
                let _ = tokio::time::timeout(STOP_WAIT, done.recv_async()).await;
            }
        }
        if let Ok(done) = self.mdns.shutdown() {
            let _ = tokio::time::timeout(STOP_WAIT, done.recv_async()).await;
        }
    }
}

/// One browse round: up to [`BROWSE_ROUND`], [`EVENTS_PER_ROUND_MAX`]
/// events and [`CONTACTS_PER_ROUND_MAX`] contacts, each handed to the
/// node. Returns how many were.
async fn browse_round(mdns: ServiceDaemon, own_key: PublicKey, control: Control) -> usize {
    let events = match mdns.browse(SERVICE_TYPE) {
        Ok(events) => events,
        Err(error) => {
            tracing::warn!("LAN discovery: cannot browse: {error}");
            return 0;
        }
    };
    let deadline = tokio::time::Instant::now() + BROWSE_ROUND;
    let mut found: Vec<PublicKey> = Vec::new();
    for _ in 0..EVENTS_PER_ROUND_MAX {
        if found.len() >= CONTACTS_PER_ROUND_MAX {
            break;
        }
        let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv_async()).await else {
            break;
        };
        let ServiceEvent::ServiceResolved(service) = event else {
            continue;
        };
        let contact = match parse_announcement(|key| service.get_property_val_str(key)) {
            Ok(contact) => contact,
            Err(problem) => {
                tracing::debug!("LAN discovery: ignored {}: {problem}", service.fullname);
                continue;
            }
        };
        if contact.key == own_key || found.contains(&contact.key) {
            continue;
        }
        found.push(contact.key);
        tracing::info!(
            "LAN discovery: found supernode {}@{}",
            key_hex(&contact.key),
            contact.addr.to_socket()
        );
        if control.add_bootstrap(contact).await.is_err() {
            break;
        }
    }
    let _ = mdns.stop_browse(SERVICE_TYPE);
    if found.is_empty() {
        tracing::info!(
            "LAN discovery: no supernode answered within {} s",
            BROWSE_ROUND.as_secs()
        );
    }
    found.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn machine() -> Vec<(IpAddr, bool)> {
        vec![
            (ip("127.0.0.1"), true),
            (ip("::1"), true),
            (ip("192.168.1.20"), false),
            (ip("10.8.0.3"), false),
            (ip("fd00::20"), false),
        ]
    }

    #[test]
    fn interfaces_follow_the_listen_address() {
        assert_eq!(
            choose_interfaces(ip("192.168.1.20"), &machine()),
            Interfaces::Use(vec![ip("192.168.1.20")])
        );
        assert_eq!(
            choose_interfaces(ip("0.0.0.0"), &machine()),
            Interfaces::Use(vec![ip("10.8.0.3"), ip("192.168.1.20")]),
            "every IPv4 interface but loopback"
        );
        assert_eq!(
            choose_interfaces(ip("::"), &machine()),
            Interfaces::Use(vec![ip("fd00::20")])
        );
    }

    #[test]
    fn loopback_and_foreign_addresses_turn_discovery_off() {
        for listen in ["127.0.0.1", "127.0.0.2", "::1"] {
            let choice = choose_interfaces(ip(listen), &machine());
            assert!(
                matches!(&choice, Interfaces::Off(reason) if reason.contains("loopback")),
                "{listen}: {choice:?}"
            );
        }
        let choice = choose_interfaces(ip("192.0.2.7"), &machine());
        assert!(
            matches!(&choice, Interfaces::Off(reason) if reason.contains("no network interface")),
            "{choice:?}"
        );
        let only_loopback = [(ip("127.0.0.1"), true)];
        assert!(matches!(
            choose_interfaces(ip("0.0.0.0"), &only_loopback),
            Interfaces::Off(_)
        ));
    }

    fn lookup<'a>(
        properties: &'a [(&'static str, String)],
    ) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |key| {
            properties
                .iter()
                .find(|(name, _)| *name == key)
                .map(|(_, value)| value.as_str())
        }
    }

    #[test]
    fn announcements_round_trip() {
        let contact = Contact {
            key: PublicKey([0xab; 32]),
            id_nonce: 123_456_789,
            addr: Addr::from_socket("10.1.2.3:4433".parse().unwrap()),
        };
        let properties = announcement(&contact);
        assert_eq!(parse_announcement(lookup(&properties)), Ok(contact));
        let v6 = Contact {
            addr: Addr::from_socket("[fd00::1]:9".parse().unwrap()),
            ..contact
        };
        assert_eq!(parse_announcement(lookup(&announcement(&v6))), Ok(v6));
        assert!(instance_name(&contact.key).len() <= 63);
    }

    #[test]
    fn bad_announcements_say_what_is_wrong() {
        let good = announcement(&Contact {
            key: PublicKey([1; 32]),
            id_nonce: 1,
            addr: Addr::from_socket("10.1.2.3:4433".parse().unwrap()),
        });
        let with = |name: &'static str, value: Option<&str>| -> Vec<(&'static str, String)> {
            let mut changed: Vec<_> = good.iter().filter(|(n, _)| *n != name).cloned().collect();
            if let Some(value) = value {
                changed.push((name, value.to_string()));
            }
            changed
        };
        let cases = [
            (with("v", Some("2")), "version"),
            (with("v", None), "version"),
            (with("key", Some("abc")), "node key"),
            (with("key", None), "node key"),
            (with("nonce", Some("-1")), "nonce"),
            (with("addr", Some("host:1")), "address"),
            (with("addr", Some("0.0.0.0:4433")), "cannot be dialed"),
            (with("addr", Some("10.0.0.1:0")), "cannot be dialed"),
        ];
        for (properties, needle) in cases {
            let error = parse_announcement(lookup(&properties)).unwrap_err();
            assert!(error.contains(needle), "{properties:?}: {error}");
        }
    }

    #[test]
    fn a_node_without_bootstrap_looks_at_once_then_every_interval() {
        let start = Instant::now();
        let mut schedule = Schedule::new(true);
        assert!(schedule.round_due(start, true));
        assert!(!schedule.round_due(start + Duration::from_secs(1), true));
        assert!(!schedule.round_due(start + BROWSE_INTERVAL - Duration::from_millis(1), true));
        assert!(schedule.round_due(start + BROWSE_INTERVAL, true));
        assert!(
            !schedule.round_due(start + BROWSE_INTERVAL * 3, false),
            "attached: no round"
        );
    }

    #[test]
    fn a_node_with_bootstrap_looks_only_after_it_failed_for_a_while() {
        let start = Instant::now();
        let mut schedule = Schedule::new(false);
        assert!(!schedule.round_due(start, true));
        assert!(!schedule.round_due(start + FALLBACK_AFTER / 2, true));
        assert!(
            !schedule.round_due(start + FALLBACK_AFTER / 2 + Duration::from_secs(1), false),
            "attached in time"
        );
        let lost = start + FALLBACK_AFTER;
        assert!(!schedule.round_due(lost, true), "the wait starts again");
        assert!(schedule.round_due(lost + FALLBACK_AFTER, true));
    }
}
