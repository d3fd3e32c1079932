//! LAN discovery and port mapping in network namespaces: `peerline node`
//! processes on segments this test builds, so that no mDNS or SSDP packet
//! reaches the machine's real network.
//!
//! ```text
//! discovery:    supernode 10.78.0.1 ── br0 (segment) ── client 10.78.0.2 (no --bootstrap)
//!
//! port mapping: node 10.79.0.2 ── lan 10.79.0.1 [gw: miniupnpd] wan 100.128.79.1 ── out 100.128.79.2
//! ```
//!
//! The gateway is a real UPnP IGD, miniupnpd (Debian's `miniupnpd-iptables`,
//! its rules in the legacy iptables tables). miniupnpd refuses to map when
//! its WAN address is in any reserved range (RFC 1918, 100.64/10, the
//! TEST-NETs, 198.18/15), so the WAN side has an ordinary unicast address:
//! it exists only inside the gateway's namespace and its peer `out`, which
//! have no link to the machine, and no packet to it leaves them.
//!
//! Needs root and `ip`; the port-mapping test also `iptables-legacy` and
//! `miniupnpd`. Outside CI a missing capability skips the test with its
//! reason; with `CI=true` it fails. Every namespace (and miniupnpd) goes on
//! every exit path ([`Lab`]'s `Drop`), names are unique per run, and
//! namespaces left by a killed run (whose process is gone) are swept.

mod common;

use common::netns::{run, start_in, Namespaces};
use common::{attached, Fleet};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NAMESPACE_PREFIX: &str = "pllan";

fn is_root() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    match uid {
        "0" => Ok(()),
        uid => Err(format!(
            "network namespaces need root (effective uid {uid})"
        )),
    }
}

/// Why this machine cannot run the test, if it cannot: not root, or one of
/// `programs` (name, version argument, package) missing.
fn missing(programs: &[(&str, &str, &str)]) -> Option<String> {
    if let Err(reason) = is_root() {
        return Some(reason);
    }
    programs.iter().find_map(|(program, arg, package)| {
        let found = Command::new(program)
            .arg(arg)
            .output()
            .is_ok_and(|output| output.status.success() || !output.stderr.is_empty());
        (!found).then(|| format!("`{program}` is missing (apt-get install -y {package})"))
    })
}

/// true: go on; false: skip (outside CI); a panic in CI.
fn lab_can_run(test: &str, programs: &[(&str, &str, &str)]) -> bool {
    let Some(reason) = missing(programs) else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("{test}: cannot run in CI: {reason}");
    }
    eprintln!("{test}: skipped: {reason}");
    false
}

const IP: (&str, &str, &str) = ("ip", "-V", "iproute2");

/// Namespaces and helper processes of one test run, all gone on drop.
struct Lab {
    namespaces: Namespaces,
    processes: Vec<Child>,
}

impl Lab {
    fn new(test: &str) -> Lab {
        Lab {
            namespaces: Namespaces::new(NAMESPACE_PREFIX, test),
            processes: Vec::new(),
        }
    }

    fn namespace(&mut self, role: &str) -> String {
        self.namespaces.add(role)
    }

    /// A veth from `a` (named `a_link`, address `a_cidr`) to `b`.
    fn link(&self, a: &str, a_link: &str, a_cidr: &str, b: &str, b_link: &str, b_cidr: &str) {
        run(&[
            "ip", "-n", a, "link", "add", a_link, "type", "veth", "peer", "name", b_link, "netns",
            b,
        ]);
        for (ns, link, cidr) in [(a, a_link, a_cidr), (b, b_link, b_cidr)] {
            if !cidr.is_empty() {
                run(&["ip", "-n", ns, "addr", "add", cidr, "dev", link]);
            }
            run(&["ip", "-n", ns, "link", "set", link, "up"]);
        }
    }

    /// A segment: a bridge in a namespace of its own.
    fn segment(&mut self) -> String {
        let ns = self.namespace("seg");
        run(&["ip", "-n", &ns, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &ns, "link", "set", "br0", "up"]);
        ns
    }

    /// A host on `segment` with `ip`/24 on its eth0, its default route on
    /// that link (where its multicast goes; there is no router).
    fn host_on(&mut self, segment: &str, role: &str, ip: &str) -> String {
        let ns = self.namespace(role);
        let port = format!("p{role}");
        self.link(segment, &port, "", &ns, "eth0", &format!("{ip}/24"));
        run(&["ip", "-n", segment, "link", "set", &port, "master", "br0"]);
        run(&["ip", "-n", &ns, "route", "add", "default", "dev", "eth0"]);
        ns
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The processes stop first; the namespaces go with `namespaces`.
        for process in &mut self.processes {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

/// Waits until node `index`'s log has `needle`; its log on failure.
fn wait_for_log(fleet: &mut Fleet, index: usize, needle: &str, within: Duration) {
    let seen = fleet.wait_until(within, |nodes| nodes[index].log().contains(needle));
    assert!(
        seen,
        "no '{needle}' within {within:?} in the log of {}:\n{}",
        fleet.nodes[index].name,
        fleet.nodes[index].log()
    );
}

/// A supernode and a client without `--bootstrap`, on one bridge in two
/// namespaces: the client finds the supernode's mDNS announcement and
/// attaches to it. Both run with port mapping on, and there is no gateway:
/// each says so in one log line and runs on.
#[test]
fn a_client_without_bootstrap_finds_a_supernode_on_its_segment() {
    if !lab_can_run("lan discovery", &[IP]) {
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::new("d");
    let segment = lab.segment();
    let supernode_ns = lab.host_on(&segment, "s", "10.78.0.1");
    let client_ns = lab.host_on(&segment, "c", "10.78.0.2");
    let mut fleet = Fleet::new("lan");
    let supernode = start_in(
        &mut fleet,
        &supernode_ns,
        "s",
        &[
            "--role",
            "supernode",
            "--listen",
            "10.78.0.1:4433",
            "--fast-timers",
        ],
    );
    let seed = fleet.bootstrap_of(supernode, Duration::from_secs(60));
    let key = seed.split('@').next().unwrap_or_default().to_string();
    wait_for_log(
        &mut fleet,
        supernode,
        "LAN discovery: announcing this supernode (10.78.0.1:4433)",
        Duration::from_secs(5),
    );
    let client_started = Instant::now();
    let client = start_in(
        &mut fleet,
        &client_ns,
        "c",
        &[
            "--role",
            "client",
            "--listen",
            "10.78.0.2:4433",
            "--fast-timers",
        ],
    );
    let attached_to_it = fleet.wait_until(Duration::from_secs(15), |nodes| {
        nodes[client]
            .status()
            .is_some_and(|status| attached(&status).contains(&key))
    });
    let client_log = fleet.nodes[client].log();
    assert!(
        attached_to_it,
        "the client did not attach to the supernode on its segment; its log:\n{client_log}"
    );
    eprintln!(
        "lan: client attached {:?} after its start",
        client_started.elapsed()
    );
    assert!(
        client_log.contains(&format!("LAN discovery: found supernode {seed}")),
        "{client_log}"
    );
    for index in [supernode, client] {
        wait_for_log(
            &mut fleet,
            index,
            "no port mapping: no gateway answered",
            Duration::from_secs(8),
        );
    }
    eprintln!("lan: discovery test took {:?}", started.elapsed());
}

const GATEWAY_LAN: &str = "10.79.0.1";
const NODE_IP: &str = "10.79.0.2";
/// The gateway's WAN address: not reserved, or miniupnpd refuses to map
/// (see the module's docs); it exists only inside the lab.
const GATEWAY_WAN: &str = "100.128.79.1";
const OUT_IP: &str = "100.128.79.2";

/// Enters `namespace` on a new thread and runs `work` there.
fn in_namespace<T: Send + 'static>(
    namespace: &str,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let path = format!("/var/run/netns/{namespace}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).map_err(|error| format!("{path}: {error}"))?;
        // SAFETY: setns takes a file descriptor that `file` keeps open for
        // the call and a namespace type flag; it touches no memory of ours.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
        }
        work()
    })
    .join()
    .unwrap_or_else(|_| Err("the namespace thread panicked".into()))
}

/// A STUN Binding request from `namespace` to `to`: whether a Binding
/// success answer came back within a second (a peerline node answers one
/// on its port).
fn stun_answered(namespace: &str, to: SocketAddr) -> Result<bool, String> {
    in_namespace(namespace, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|error| error.to_string())?;
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|error| error.to_string())?;
        let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        request.extend_from_slice(b"peerline-lan");
        for _ in 0..3 {
            socket
                .send_to(&request, to)
                .map_err(|error| error.to_string())?;
            let mut answer = [0u8; 512];
            if let Ok((len, _)) = socket.recv_from(&mut answer) {
                if len >= 20 && answer[..2] == [0x01, 0x01] && answer[8..20] == request[8..20] {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    })
}

/// The gateway: a namespace routing between the node's LAN and `out`,
/// with miniupnpd on its LAN side. Returns (gateway, node, out) namespaces.
fn gateway_lab(lab: &mut Lab, dir: &std::path::Path) -> (String, String, String) {
    let gateway = lab.namespace("gw");
    let node = lab.namespace("n");
    let out = lab.namespace("out");
    lab.link(
        &gateway,
        "lan",
        &format!("{GATEWAY_LAN}/24"),
        &node,
        "eth0",
        &format!("{NODE_IP}/24"),
    );
    lab.link(
        &gateway,
        "wan",
        &format!("{GATEWAY_WAN}/24"),
        &out,
        "eth0",
        &format!("{OUT_IP}/24"),
    );
    run(&[
        "ip",
        "-n",
        &node,
        "route",
        "add",
        "default",
        "via",
        GATEWAY_LAN,
    ]);
    let exec = ["ip", "netns", "exec", gateway.as_str()];
    run(&[&exec[..], &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]].concat());
    // The chains miniupnpd writes its rules into (its iptables_init.sh).
    let legacy = [&exec[..], &["iptables-legacy"]].concat();
    for rule in [
        "-t nat -N MINIUPNPD",
        "-t nat -A PREROUTING -i wan -j MINIUPNPD",
        "-t mangle -N MINIUPNPD",
        "-t mangle -A PREROUTING -i wan -j MINIUPNPD",
        "-t filter -N MINIUPNPD",
        "-t filter -A FORWARD -i wan ! -o wan -j MINIUPNPD",
        "-t nat -N MINIUPNPD-POSTROUTING",
        "-t nat -A POSTROUTING -o wan -j MINIUPNPD-POSTROUTING",
    ] {
        let words: Vec<&str> = rule.split(' ').collect();
        run(&[&legacy[..], &words[..]].concat());
    }
    let config = dir.join("miniupnpd.conf");
    std::fs::write(
        &config,
        format!(
            "ext_ifname=wan\nlistening_ip=lan\nenable_upnp=yes\nenable_natpmp=no\n\
             secure_mode=yes\nsystem_uptime=no\nuuid=3a1c9e4e-6b4f-4d7e-9c1a-5f0e2b7d8c10\n\
             allow 1024-65535 {GATEWAY_LAN}/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n"
        ),
    )
    .expect("miniupnpd config");
    let log = std::fs::File::create(dir.join("miniupnpd.log")).expect("miniupnpd log");
    let miniupnpd = Command::new("ip")
        .args(["netns", "exec", &gateway, "miniupnpd", "-d", "-f"])
        .arg(&config)
        .arg("-P")
        .arg(dir.join("miniupnpd.pid"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("miniupnpd starts");
    lab.processes.push(miniupnpd);
    let ready = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(dir.join("miniupnpd.log"))
        .unwrap_or_default()
        .contains("HTTP listening on port")
    {
        assert!(
            Instant::now() < ready,
            "miniupnpd did not start: {}",
            std::fs::read_to_string(dir.join("miniupnpd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (gateway, node, out)
}

/// The gateway's port-forwarding rules (miniupnpd's nat chain).
fn forwarding_rules(gateway: &str) -> String {
    run(&[
        "ip",
        "netns",
        "exec",
        gateway,
        "iptables-legacy",
        "-t",
        "nat",
        "-S",
        "MINIUPNPD",
    ])
}

/// A node on a private address behind a real UPnP IGD (miniupnpd) maps
/// its port, logs the mapping, is reachable from outside through it (a
/// STUN request from `out` to the mapped address is answered by the
/// node), and removes the mapping when stopped with SIGTERM.
#[test]
fn a_node_behind_an_igd_maps_its_port_and_removes_the_mapping_at_exit() {
    let programs = [
        IP,
        ("iptables-legacy", "-V", "iptables"),
        ("miniupnpd", "--version", "miniupnpd-iptables"),
    ];
    if !lab_can_run("port mapping", &programs) {
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::new("m");
    let mut fleet = Fleet::new("portmap");
    let (gateway, node_ns, out) = gateway_lab(&mut lab, &fleet.dir.clone());
    let mapped_to: SocketAddr = format!("{GATEWAY_WAN}:4433").parse().expect("address");
    assert_eq!(
        stun_answered(&out, mapped_to),
        Ok(false),
        "nothing answers at the gateway's port before the mapping"
    );
    let node = start_in(
        &mut fleet,
        &node_ns,
        "n",
        &[
            "--role",
            "supernode",
            "--listen",
            &format!("{NODE_IP}:4433"),
            "--fast-timers",
            "--lan-discovery",
            "off",
        ],
    );
    fleet.bootstrap_of(node, Duration::from_secs(60));
    let line = format!("mapped {NODE_IP}:4433 -> {GATEWAY_WAN}:4433 via UPnP (lease 3600 s)");
    wait_for_log(&mut fleet, node, &line, Duration::from_secs(10));
    // iptables-legacy cannot print the DNAT target's revision miniupnpd
    // writes, so the rule is known by its port.
    let rules = forwarding_rules(&gateway);
    assert!(rules.contains("--dport 4433 -j DNAT"), "{rules}");
    assert_eq!(
        stun_answered(&out, mapped_to),
        Ok(true),
        "the node answers from outside through the mapping"
    );

    fleet.nodes[node].send_sigterm();
    let exited = fleet.nodes[node].wait_exit(Instant::now() + Duration::from_secs(10));
    assert!(
        exited.is_some_and(|status| status.success()),
        "{exited:?}: {}",
        fleet.nodes[node].log()
    );
    let log = fleet.nodes[node].log();
    assert!(
        log.contains(&format!(
            "removed the port mapping {NODE_IP}:4433 -> {GATEWAY_WAN}:4433"
        )),
        "{log}"
    );
    let rules = forwarding_rules(&gateway);
    assert!(
        !rules.contains("--dport 4433"),
        "the mapping is still there: {rules}"
    );
    eprintln!("lan: port-mapping test took {:?}", started.elapsed());
}
