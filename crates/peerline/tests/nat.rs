//! NAT traversal in network namespaces: `peerline node` processes behind
//! emulated NATs, with loss, delay and jitter on the links.
//!
//! ```text
//!                       public segment 10.77.0.0/24 (bridge in `pub`)
//!     supernodes 10.77.0.1:4433, :4434 ── br0 ──┬── wan 10.77.0.2 [nat a: cone]      ── lan ── client a 192.168.1.2
//!                                               ├── wan 10.77.0.3 [nat b: cone]      ── lan ── client b 192.168.2.2
//!                                               ├── wan 10.77.0.4 [nat c: symmetric] ── lan ── client c 192.168.3.2
//!                                               └── wan 10.77.0.5 [nat d: symmetric] ── lan ── client d 192.168.4.2
//! ```
//!
//! A cone router is `iptables MASQUERADE` (endpoint-independent mapping:
//! Linux keeps the source port when it is free; address-and-port-dependent
//! filtering: conntrack lets in only replies) — a *port-restricted cone*.
//! A symmetric router adds `--random-fully`: every new destination gets a
//! new random port (endpoint-dependent mapping). Each router drops a share
//! of what it forwards, both ways (`-m statistic --mode random`).
//!
//! Each router's two links (lan, wan) delay every packet arriving on them
//! by 20 ms ± 5 ms ([`LINK_DELAY`]): about a broadband access link, so a
//! client's round trip to a supernode is ~40 ms and between two clients
//! ~80 ms, while the test stays short. The kernel has no netem, so the
//! delay is NFQUEUE: `raw PREROUTING` (before conntrack and NAT) queues
//! each packet and a thread of this process, in the router's namespace,
//! accepts it when due ([`delay`]). Packets keep their addresses and ports,
//! so the NATs behave as without delay; a link never reorders (FIFO), and
//! the delayer's hold times are printed when the lab is dropped.
//!
//! Needs root, `ip`, `iptables` and NFQUEUE (`nfnetlink_queue`). Outside
//! CI a missing capability skips the test with its reason; with `CI=true`
//! it fails. Every namespace is deleted on every exit path ([`Lab`]'s
//! `Drop`, after stopping its delayers), names are unique per run, and
//! namespaces left by a killed run (whose process is gone) are swept at the
//! start.

mod common;
#[path = "nat/delay.rs"]
mod delay;
#[path = "nat/round_trip.rs"]
mod round_trip;

use common::netns::{run, start_in, Namespaces};
use common::{attached, Fleet};
use delay::{DelayStats, Delayer, LinkDelay};
use serde_json::Value;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Share of forwarded packets each NAT router drops, in each direction.
const LOSS_PROBABILITY: &str = "0.05";
/// What each link of a router adds to every packet crossing it.
const LINK_DELAY: LinkDelay = LinkDelay {
    delay: Duration::from_millis(20),
    jitter: Duration::from_millis(5),
};
/// The NFQUEUE number in each router's namespace (numbers are per namespace).
const DELAY_QUEUE_NUM: u16 = 0;
const NAMESPACE_PREFIX: &str = "plnat";

/// Why this machine cannot run the lab, if it cannot.
fn missing_capability() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    if uid != "0" {
        return Some(format!(
            "network namespaces need root (effective uid {uid})"
        ));
    }
    for (program, arg) in [("ip", "-V"), ("iptables", "-V")] {
        let found = Command::new(program)
            .arg(arg)
            .output()
            .is_ok_and(|output| output.status.success());
        if !found {
            return Some(format!(
                "`{program}` is missing (apt-get install -y iproute2 iptables)"
            ));
        }
    }
    static NFQUEUE: OnceLock<Option<String>> = OnceLock::new();
    NFQUEUE.get_or_init(missing_nfqueue).clone()
}

/// Why this kernel cannot hold packets in user space (NFQUEUE), if it
/// cannot: tried in a scratch namespace.
fn missing_nfqueue() -> Option<String> {
    let mut lab = Lab::new("q");
    let namespace = lab.namespace("probe");
    let delayer = match Delayer::start(&namespace, DELAY_QUEUE_NUM, LINK_DELAY, 0) {
        Ok(delayer) => delayer,
        Err(reason) => return Some(format!("no NFQUEUE for the delay: {reason}")),
    };
    let rule = Command::new("ip")
        .args(["netns", "exec", &namespace, "iptables", "-t", "raw"])
        .args(["-A", "PREROUTING", "-j", "NFQUEUE", "--queue-num"])
        .arg(DELAY_QUEUE_NUM.to_string())
        .output();
    let _ = delayer.stop();
    match rule {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(format!(
            "iptables has no NFQUEUE target for the delay: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(error) => Some(format!("iptables: {error}")),
    }
}

/// Whether to go on: true when the lab can run; false (skip) outside CI
/// when it cannot; a panic in CI when it cannot.
fn lab_can_run(test: &str) -> bool {
    let Some(reason) = missing_capability() else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("{test}: cannot run in CI: {reason}");
    }
    eprintln!("{test}: skipped: {reason}");
    false
}

/// Network namespaces made by one test run and the delayers in them;
/// on drop the delayers stop (their statistics printed) and the namespaces
/// are deleted.
struct Lab {
    namespaces: Namespaces,
    /// Each router's delayer, with its seed.
    delayers: Vec<(String, u64, Delayer)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NatKind {
    /// MASQUERADE: port-restricted cone.
    Cone,
    /// MASQUERADE --random-fully: symmetric.
    Symmetric,
}

/// A client's corner of the lab: its router and its own namespace.
struct Site {
    client_ns: String,
    client_ip: String,
    router_wan_ip: String,
}

impl Lab {
    fn new(test: &str) -> Lab {
        Lab {
            namespaces: Namespaces::new(NAMESPACE_PREFIX, test),
            delayers: Vec::new(),
        }
    }

    fn namespace(&mut self, role: &str) -> String {
        self.namespaces.add(role)
    }

    /// The public segment: a bridge with the supernodes' address.
    fn public(&mut self) -> String {
        let ns = self.namespace("pub");
        run(&["ip", "-n", &ns, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &ns, "addr", "add", "10.77.0.1/24", "dev", "br0"]);
        run(&["ip", "-n", &ns, "link", "set", "br0", "up"]);
        ns
    }

    /// A NAT router on the public segment and a client behind it.
    fn site(&mut self, public_ns: &str, index: u8, kind: NatKind) -> Site {
        let router = self.namespace(&format!("r{index}"));
        let client = self.namespace(&format!("c{index}"));
        let wan_ip = format!("10.77.0.{}", index + 2);
        let lan_net = format!("192.168.{}", index + 1);
        let port = format!("wan{index}");
        run(&[
            "ip", "-n", public_ns, "link", "add", &port, "type", "veth", "peer", "name", "wan",
            "netns", &router,
        ]);
        run(&["ip", "-n", public_ns, "link", "set", &port, "master", "br0"]);
        run(&["ip", "-n", public_ns, "link", "set", &port, "up"]);
        run(&[
            "ip",
            "-n",
            &router,
            "addr",
            "add",
            &format!("{wan_ip}/24"),
            "dev",
            "wan",
        ]);
        run(&["ip", "-n", &router, "link", "set", "wan", "up"]);
        run(&[
            "ip", "-n", &router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
            "netns", &client,
        ]);
        run(&[
            "ip",
            "-n",
            &router,
            "addr",
            "add",
            &format!("{lan_net}.1/24"),
            "dev",
            "lan",
        ]);
        run(&["ip", "-n", &router, "link", "set", "lan", "up"]);
        let client_ip = format!("{lan_net}.2");
        run(&[
            "ip",
            "-n",
            &client,
            "addr",
            "add",
            &format!("{client_ip}/24"),
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", &client, "link", "set", "eth0", "up"]);
        run(&[
            "ip",
            "-n",
            &client,
            "route",
            "add",
            "default",
            "via",
            &format!("{lan_net}.1"),
        ]);
        let exec = ["ip", "netns", "exec", router.as_str()];
        run(&[&exec[..], &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]].concat());
        let mut masquerade = vec!["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan"];
        masquerade.extend(["-j", "MASQUERADE"]);
        if kind == NatKind::Symmetric {
            masquerade.push("--random-fully");
        }
        run(&[&exec[..], &masquerade[..]].concat());
        // A home router's firewall: unsolicited packets to the router
        // itself are dropped before conntrack confirms them. Without it
        // the first punch packet from the peer leaves a conntrack entry
        // (port unreachable) that makes MASQUERADE pick another port for
        // this side's own punch packets to that peer.
        run(&[
            &exec[..],
            &[
                "iptables",
                "-A",
                "INPUT",
                "-i",
                "wan",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-j",
                "DROP",
            ][..],
        ]
        .concat());
        run(&[
            &exec[..],
            &[
                "iptables",
                "-A",
                "FORWARD",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                LOSS_PROBABILITY,
                "-j",
                "DROP",
            ][..],
        ]
        .concat());
        self.delay_links(&router, &["lan", "wan"], u64::from(index));
        Site {
            client_ns: client,
            client_ip,
            router_wan_ip: wan_ip,
        }
    }
}

impl Lab {
    /// Delays every packet arriving on `links` in `router` by
    /// [`LINK_DELAY`]; the reader is bound before the rules send it any.
    fn delay_links(&mut self, router: &str, links: &[&str], seed: u64) {
        let seed = (common::unix_ms() as u64) << 8 | seed;
        let delayer = Delayer::start(router, DELAY_QUEUE_NUM, LINK_DELAY, seed)
            .unwrap_or_else(|reason| panic!("delay in {router}: {reason}"));
        self.delayers.push((router.to_string(), seed, delayer));
        let queue_num = DELAY_QUEUE_NUM.to_string();
        let raw = ["ip", "netns", "exec", router, "iptables", "-t", "raw"];
        for link in links {
            let rule = [
                "-A",
                "PREROUTING",
                "-i",
                link,
                "-j",
                "NFQUEUE",
                "--queue-num",
            ];
            run(&[&raw[..], &rule[..], &[queue_num.as_str()]].concat());
        }
    }

    /// Takes the delay off every router (the rules first, so no packet
    /// meets a queue without its reader); what each delayer did, `None`
    /// for one that had stopped early.
    fn remove_delays(&mut self) -> Vec<Option<DelayStats>> {
        let delayers: Vec<_> = self.delayers.drain(..).collect();
        delayers
            .into_iter()
            .map(|(router, seed, delayer)| {
                let flush = ["iptables", "-t", "raw", "-F", "PREROUTING"];
                run(&[&["ip", "netns", "exec", router.as_str()][..], &flush[..]].concat());
                stop_delayer(&router, seed, delayer)
            })
            .collect()
    }
}

/// Stops `delayer` and prints what it did or why it had stopped.
fn stop_delayer(router: &str, seed: u64, delayer: Delayer) -> Option<DelayStats> {
    match delayer.stop() {
        Ok(stats) => {
            eprintln!("nat: delay in {router} (seed {seed}): {stats}");
            Some(stats)
        }
        Err(reason) => {
            eprintln!("nat: delay in {router} (seed {seed}) stopped early: {reason}");
            None
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The delayers stop first; the namespaces go with `namespaces`.
        for (router, seed, delayer) in self.delayers.drain(..) {
            stop_delayer(&router, seed, delayer);
        }
    }
}

/// Two supernodes on the public segment, the second joining through the
/// first; their bootstrap strings.
fn start_supernodes(fleet: &mut Fleet, public: &str) -> [String; 2] {
    let first = start_in(
        fleet,
        public,
        "s0",
        &[
            "--role",
            "supernode",
            "--listen",
            "10.77.0.1:4433",
            "--fast-timers",
        ],
    );
    let seed0 = fleet.bootstrap_of(first, Duration::from_secs(60));
    let second = start_in(
        fleet,
        public,
        "s1",
        &[
            "--role",
            "supernode",
            "--listen",
            "10.77.0.1:4434",
            "--fast-timers",
            "--bootstrap",
            &seed0,
        ],
    );
    let seed1 = fleet.bootstrap_of(second, Duration::from_secs(60));
    [seed0, seed1]
}

fn status_of(fleet: &Fleet, index: usize) -> Value {
    fleet.nodes[index].status().unwrap_or(Value::Null)
}

fn paths(status: &Value) -> Vec<Value> {
    status["paths"].as_array().cloned().unwrap_or_default()
}

/// The path `status` reports to `peer` ("direct", "failed", …), if any.
fn path_to(status: &Value, peer: &str) -> Option<String> {
    paths(status)
        .iter()
        .rev()
        .find(|path| path["peer"].as_str() == Some(peer))
        .and_then(|path| path["path"].as_str().map(str::to_string))
}

/// Four clients behind lossy NATs (a, b: cone; c, d: symmetric) attach to
/// two public supernodes; a punches to b (cone↔cone), b to c
/// (cone↔symmetric), c to d (symmetric↔symmetric). Per RFC 4787, a pair
/// gets a direct path when at least one side's mapping is
/// endpoint-independent *and* the other side's packets can pass its
/// filter: with address-and-port-dependent filtering on the cone side
/// (Linux conntrack), only cone↔cone does; cone↔symmetric and
/// symmetric↔symmetric fall back to the initiator's supernode as a relay,
/// and both peers must see the same kind of path.
#[test]
fn cone_pairs_get_a_direct_path_and_the_others_a_relayed_one() {
    if !lab_can_run("nat") {
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::new("p");
    let public = lab.public();
    let kinds = [
        NatKind::Cone,
        NatKind::Cone,
        NatKind::Symmetric,
        NatKind::Symmetric,
    ];
    let sites: Vec<Site> = kinds
        .iter()
        .enumerate()
        .map(|(index, kind)| lab.site(&public, index as u8, *kind))
        .collect();
    let mut fleet = Fleet::new("nat");
    let [seed0, seed1] = start_supernodes(&mut fleet, &public);
    // A device tells its addresses only to its contacts, so each pair must
    // know each other's account before the punch: every client starts
    // once to make its identity (kept in its data directory) and stops.
    let mut messaging: Vec<String> = vec![String::new(); sites.len()];
    for (index, site) in sites.iter().enumerate() {
        let listen = format!("{}:4433", site.client_ip);
        let args = [
            "--role",
            "client",
            "--listen",
            &listen,
            "--bootstrap",
            &seed0,
        ];
        let node = start_in(&mut fleet, &site.client_ns, &format!("c{index}"), &args);
        fleet.bootstrap_of(node, Duration::from_secs(30));
        messaging[index] = fleet.nodes[node].messaging.clone().expect("messaging line");
        fleet.nodes[node].terminate(Duration::from_secs(10));
    }
    let account = |index: usize| -> String {
        messaging[index]
            .split(':')
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    // d first: each client connects to the one started before it, and
    // the neighbours on both sides are its contacts.
    let mut clients = vec![0; sites.len()];
    for index in (0..sites.len()).rev() {
        let site = &sites[index];
        let listen = format!("{}:4433", site.client_ip);
        let name = format!("c{index}");
        let mut args = vec![
            "--role",
            "client",
            "--listen",
            &listen,
            "--fast-timers",
            "--bootstrap",
            &seed0,
            &seed1,
        ];
        let neighbours: Vec<String> = [index.checked_sub(1), Some(index + 1)]
            .into_iter()
            .flatten()
            .filter(|&other| other < sites.len())
            .map(account)
            .collect();
        for neighbour in &neighbours {
            args.extend(["--contact", neighbour]);
        }
        let target = messaging.get(index + 1).cloned().unwrap_or_default();
        if !target.is_empty() {
            args.extend(["--connect-to", &target]);
        }
        let node = start_in(&mut fleet, &site.client_ns, &name, &args);
        fleet.bootstrap_of(node, Duration::from_secs(30));
        assert_eq!(
            fleet.nodes[node].messaging.as_ref(),
            Some(&messaging[index])
        );
        clients[index] = node;
    }
    let device = |index: usize| {
        messaging[index]
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let pairs = [
        (0, 1, "cone-cone"),
        (1, 2, "cone-symmetric"),
        (2, 3, "symmetric-symmetric"),
    ];
    // Settled: both ends of every pair report a path, or the initiator
    // gave up (failed, with no attempt running).
    let settled = fleet.wait_until(Duration::from_secs(90), |nodes| {
        pairs.iter().all(|&(from, to, _)| {
            let status = nodes[clients[from]].status().unwrap_or(Value::Null);
            let peer_status = nodes[clients[to]].status().unwrap_or(Value::Null);
            let up = |path: Option<String>| matches!(path.as_deref(), Some("direct" | "relayed"));
            (up(path_to(&status, &device(to))) && up(path_to(&peer_status, &device(from))))
                || path_to(&status, &device(to)).as_deref() == Some("failed")
        })
    });
    let mut outcomes = Vec::new();
    for &(from, to, name) in &pairs {
        let status = status_of(&fleet, clients[from]);
        let seen_by_peer = path_to(&status_of(&fleet, clients[to]), &device(from));
        let path = path_to(&status, &device(to));
        let detail = paths(&status)
            .iter()
            .rev()
            .find(|p| p["peer"].as_str() == Some(device(to).as_str()))
            .map(|p| {
                format!(
                    "{} (relay {}) after {} ms",
                    p["addr"], p["relay"], p["elapsed_ms"]
                )
            })
            .unwrap_or_default();
        outcomes.push((name, path, seen_by_peer, detail));
    }
    eprintln!(
        "nat: {LOSS_PROBABILITY} loss per router each way, {LINK_DELAY}; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (name, path, seen_by_peer, detail) in &outcomes {
        eprintln!("nat: {name}: {path:?} (the peer says {seen_by_peer:?}) {detail}");
    }
    assert!(
        settled,
        "not every pair finished punching in 90 s: {outcomes:?}"
    );
    let expected = ["direct", "relayed", "relayed"];
    for ((name, path, seen_by_peer, _), expected) in outcomes.iter().zip(expected) {
        assert_eq!(path.as_deref(), Some(expected), "{name}: {outcomes:?}");
        assert_eq!(
            seen_by_peer.as_deref(),
            Some(expected),
            "{name}: {outcomes:?}"
        );
    }
}

#[test]
fn clients_behind_cone_and_symmetric_nats_attach_through_lossy_links() {
    if !lab_can_run("nat") {
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::new("a");
    let public = lab.public();
    let sites = [
        lab.site(&public, 0, NatKind::Cone),
        lab.site(&public, 1, NatKind::Symmetric),
    ];
    let mut fleet = Fleet::new("nat");
    let [seed0, seed1] = start_supernodes(&mut fleet, &public);
    let mut clients = Vec::new();
    for (index, site) in sites.iter().enumerate() {
        let listen = format!("{}:4433", site.client_ip);
        let name = format!("c{index}");
        clients.push(start_in(
            &mut fleet,
            &site.client_ns,
            &name,
            &[
                "--role",
                "client",
                "--listen",
                &listen,
                "--fast-timers",
                "--bootstrap",
                &seed0,
                &seed1,
            ],
        ));
    }
    for &client in &clients {
        fleet.bootstrap_of(client, Duration::from_secs(30));
    }
    let all_attached = fleet.wait_until(Duration::from_secs(60), |nodes| {
        clients
            .iter()
            .all(|&client| attached(&nodes[client].status().unwrap_or(Value::Null)).len() == 2)
    });
    let report: Vec<String> = clients
        .iter()
        .zip(&sites)
        .map(|(&client, site)| {
            format!(
                "{} behind {}: attached to {}",
                fleet.nodes[client].name,
                site.router_wan_ip,
                attached(&status_of(&fleet, client)).len()
            )
        })
        .collect();
    eprintln!(
        "nat: {} ({:.1} s)",
        report.join("; "),
        started.elapsed().as_secs_f64()
    );
    assert!(
        all_attached,
        "not every client attached to both supernodes: {report:?}"
    );
}

/// What the delay adds, measured: UDP round trips from a client through
/// its router (two links each way) to the public segment, with the delay
/// and then with its rules removed. Prints both; asserts only what is not
/// a matter of timing: every answered round trip went through the delayer
/// both ways.
#[test]
fn round_trips_through_a_router_carry_its_link_delay() {
    if !lab_can_run("nat") {
        return;
    }
    const ROUND_TRIPS: u64 = 50;
    const ROUND_TRIP_TIMEOUT: Duration = Duration::from_millis(250);
    let mut lab = Lab::new("d");
    let public = lab.public();
    let site = lab.site(&public, 0, NatKind::Cone);
    let echo_addr: std::net::SocketAddr = "10.77.0.1:7007".parse().expect("address");
    let _echo = round_trip::Echo::start(&public, echo_addr).expect("echo in the public segment");
    let measure = || {
        round_trip::round_trips(&site.client_ns, echo_addr, ROUND_TRIPS, ROUND_TRIP_TIMEOUT)
            .expect("round trips from the client")
    };
    let delayed = measure();
    let stats = lab.remove_delays();
    let undelayed = measure();
    let added_ms = match (round_trip::median(&delayed), round_trip::median(&undelayed)) {
        (Some(with), Some(without)) => with.as_secs_f64() * 1000.0 - without.as_secs_f64() * 1000.0,
        _ => f64::NAN,
    };
    eprintln!(
        "nat: UDP round trips through one router, {LINK_DELAY}: {}; without the delay: {}; \
         the links add {added_ms:.1} ms to the median",
        round_trip::summary(&delayed),
        round_trip::summary(&undelayed)
    );
    let answered = delayed.iter().flatten().count() as u64;
    let stats = stats[0].as_ref().expect("the delayer ran to the end");
    assert!(answered > 0 && undelayed.iter().flatten().count() > 0);
    assert!(
        stats.packets + stats.let_go_at_stop >= 2 * answered,
        "{answered} round trips answered but the delayer held only {stats}"
    );
}
