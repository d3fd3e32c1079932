//! Port mapping: asks the gateway for a UDP mapping of the node's port over
//! UPnP-IGD (the `igd-next` crate, its blocking client run on tokio's
//! blocking threads under our own time bounds), renews it at half its
//! lease, removes it at a graceful shutdown, and tells the node the mapped
//! address (`Control::set_mapped_addr`), which the core offers to peers as
//! a hole-punching candidate before its reflexive and advertised ones.
//!
//! Only for a node whose address is private (RFC 1918, or an IPv6 ULA —
//! which UPnP-IGD cannot map: said and skipped): a loopback or public
//! address is never mapped and no gateway is asked. The search (SSDP)
//! goes from the node's own address. NAT-PMP/PCP are not spoken.
//!
//! This lives in the daemon, not in `peerline-net`: it is about the host's
//! gateway, not the node's socket or protocol, and needs only `Control`.
//! *Must not depend on:* the core's internals; it never decides anything
//! about the protocol (the mapped address is one more candidate the core
//! may offer). A gateway that refuses or does not answer is a log line and
//! a later retry, never an error of the node.

use peerline_net::Control;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The lease asked for.
pub const LEASE_S: u32 = 3_600;
/// How long the SSDP search waits for a gateway.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);
/// A whole attempt (search, external address, mapping) or one renewal
/// or removal: past it the gateway counts as not answering.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before asking again when no gateway answered or it refused.
pub const RETRY_AFTER: Duration = Duration::from_secs(600);
/// Wait before trying a failed renewal again (while the lease runs).
pub const RENEW_RETRY_AFTER: Duration = Duration::from_secs(30);
/// A permanent mapping (lease 0) is re-added this often: a gateway that
/// restarted forgets it.
pub const PERMANENT_RENEW_AFTER: Duration = Duration::from_secs(1_800);
/// How long the removal at shutdown may take.
const STOP_WAIT: Duration = Duration::from_secs(3);
/// The mapping's description on the gateway.
const DESCRIPTION: &str = "peerline";

/// RFC 1918 IPv4 or an IPv6 unique local address (fc00::/7).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// The address to map: the listen address, or for 0.0.0.0 the outgoing
/// interface's; an error (why not) for loopback, public, other special
/// and IPv6 addresses.
pub fn local_addr(
    listen: SocketAddr,
    bound_port: u16,
    outgoing: Option<IpAddr>,
) -> Result<SocketAddr, String> {
    let ip = if listen.ip().is_unspecified() {
        outgoing.ok_or("no outgoing interface was found")?
    } else {
        listen.ip()
    };
    if ip.is_loopback() {
        return Err(format!("{ip} is a loopback address"));
    }
    if !is_private(ip) {
        return Err(format!(
            "{ip} is not a private address (RFC 1918 or ULA): nothing to map"
        ));
    }
    if ip.is_ipv6() {
        return Err(format!("{ip} is IPv6, which UPnP-IGD does not map"));
    }
    Ok(SocketAddr::new(ip, bound_port))
}

/// When to renew a lease of `lease_s` seconds (0: permanent).
pub fn renew_after(lease_s: u32) -> Duration {
    if lease_s == 0 {
        return PERMANENT_RENEW_AFTER;
    }
    Duration::from_secs(u64::from(lease_s / 2)).max(RENEW_RETRY_AFTER)
}

/// The log line of a mapping made.
pub fn mapped_line(local: SocketAddr, external: SocketAddr, lease_s: u32) -> String {
    let lease = match lease_s {
        0 => "permanent lease".to_string(),
        seconds => format!("lease {seconds} s"),
    };
    format!("mapped {local} -> {external} via UPnP ({lease})")
}

/// A mapping the gateway granted.
#[derive(Clone, Debug)]
struct Mapping {
    gateway: igd_next::Gateway,
    local: SocketAddr,
    external: SocketAddr,
    lease_s: u32,
    /// When the gateway drops it unless renewed (`None`: permanent).
    expires_at: Option<Instant>,
}

/// Runs `work` on a blocking thread, giving up waiting after `timeout`
/// (the thread then finishes on its own, within the HTTP client's bounds).
async fn blocking<T: Send + 'static>(
    timeout: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(value)) => Some(value),
        _ => None,
    }
}

/// Search, external address, mapping: one attempt, or why it failed.
fn establish(local: SocketAddr) -> Result<(igd_next::Gateway, SocketAddr, u32), String> {
    use igd_next::{AddAnyPortError, AddPortError, PortMappingProtocol::UDP};
    let options = igd_next::SearchOptions {
        bind_addr: SocketAddr::new(local.ip(), 0),
        timeout: Some(SEARCH_TIMEOUT),
        single_search_timeout: Some(SEARCH_TIMEOUT),
        ..Default::default()
    };
    let gateway = igd_next::search_gateway(options).map_err(|error| match error {
        igd_next::SearchError::NoResponseWithinTimeout => "no gateway answered".to_string(),
        igd_next::SearchError::IoError(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            "no gateway answered".to_string()
        }
        igd_next::SearchError::IoError(io) => format!("the search for a gateway failed: {io}"),
        other => format!("the gateway's answer was not understood ({other})"),
    })?;
    let refused = |what: String| format!("the gateway at {} refused: {what}", gateway.addr);
    let external_ip = gateway
        .get_external_ip()
        .map_err(|error| refused(format!("no external address ({error})")))?;
    if external_ip.is_unspecified() {
        return Err(refused("it has no external address".into()));
    }
    let mut lease_s = LEASE_S;
    let mut added = gateway.add_port(UDP, local.port(), local, lease_s, DESCRIPTION);
    if matches!(added, Err(AddPortError::OnlyPermanentLeasesSupported)) {
        lease_s = 0;
        added = gateway.add_port(UDP, local.port(), local, lease_s, DESCRIPTION);
    }
    let external_port = match added {
        Ok(()) => local.port(),
        Err(AddPortError::PortInUse) => gateway
            .add_any_port(UDP, local, lease_s, DESCRIPTION)
            .map_err(|error| match error {
                AddAnyPortError::NoPortsAvailable | AddAnyPortError::ExternalPortInUse => refused(
                    format!("port {} is taken and no other is free", local.port()),
                ),
                other => refused(other.to_string()),
            })?,
        Err(error) => return Err(refused(error.to_string())),
    };
    Ok((
        gateway,
        SocketAddr::new(external_ip, external_port),
        lease_s,
    ))
}

/// The running mapping task, stopped (and the mapping removed) by `stop`.
pub struct PortMapping {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl PortMapping {
    pub fn start(local: SocketAddr, control: Control) -> PortMapping {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(local, control, stopped));
        PortMapping { stop, task }
    }

    /// Removes the mapping (within a bound: a gateway that does not answer
    /// keeps it until its lease ends).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(STOP_WAIT + Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

async fn run(local: SocketAddr, control: Control, mut stopped: oneshot::Receiver<()>) {
    let mut mapping: Option<Mapping> = None;
    let mut last_failure: Option<String> = None;
    let mut next_at = Instant::now();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            () = tokio::time::sleep_until(next_at) => {}
        }
        let step = async {
            match mapping.clone() {
                None => {
                    let attempt = blocking(ATTEMPT_TIMEOUT, move || establish(local)).await;
                    match attempt
                        .unwrap_or_else(|| Err("the gateway did not answer in time".into()))
                    {
                        Ok((gateway, external, lease_s)) => {
                            tracing::info!("{}", mapped_line(local, external, lease_s));
                            last_failure = None;
                            let _ = control.set_mapped_addr(Some(external)).await;
                            let now = Instant::now();
                            mapping = Some(Mapping {
                                gateway,
                                local,
                                external,
                                lease_s,
                                expires_at: (lease_s > 0)
                                    .then(|| now + Duration::from_secs(u64::from(lease_s))),
                            });
                            now + renew_after(lease_s)
                        }
                        Err(reason) => {
                            if last_failure.as_ref() != Some(&reason) {
                                tracing::info!(
                                    "no port mapping: {reason} (asking again every {} min)",
                                    RETRY_AFTER.as_secs() / 60
                                );
                            }
                            last_failure = Some(reason);
                            Instant::now() + RETRY_AFTER
                        }
                    }
                }
                Some(held) => renew(held, &control, &mut mapping).await,
            }
        };
        tokio::select! {
            _ = &mut stopped => break,
            at = step => next_at = at,
        }
    }
    if let Some(held) = mapping {
        remove(held).await;
    }
}

/// Renews `held`, the mapping in `mapping` (the standard way: the same
/// AddPortMapping again); on failure tries again soon while the lease
/// runs, and once it has run out, says the mapping is lost and starts
/// over. Cancelled midway, `mapping` still holds it (removed at stop).
async fn renew(held: Mapping, control: &Control, mapping: &mut Option<Mapping>) -> Instant {
    let request = held.clone();
    let renewed = blocking(ATTEMPT_TIMEOUT, move || {
        request.gateway.add_port(
            igd_next::PortMappingProtocol::UDP,
            request.external.port(),
            request.local,
            request.lease_s,
            DESCRIPTION,
        )
    })
    .await;
    let now = Instant::now();
    match renewed {
        Some(Ok(())) => {
            tracing::debug!(
                "renewed the port mapping {} -> {}",
                held.local,
                held.external
            );
            let next = now + renew_after(held.lease_s);
            *mapping = Some(Mapping {
                expires_at: (held.lease_s > 0)
                    .then(|| now + Duration::from_secs(u64::from(held.lease_s))),
                ..held
            });
            next
        }
        failure => {
            let reason = match failure {
                Some(Err(error)) => error.to_string(),
                _ => "the gateway did not answer".to_string(),
            };
            if held.expires_at.is_some_and(|at| now >= at) {
                tracing::warn!(
                    "port mapping {} -> {} lost: {reason}",
                    held.local,
                    held.external
                );
                let _ = control.set_mapped_addr(None).await;
                *mapping = None;
                now
            } else {
                tracing::info!("could not renew the port mapping yet: {reason}");
                now + RENEW_RETRY_AFTER
            }
        }
    }
}

async fn remove(held: Mapping) {
    let request = held.clone();
    let removed = blocking(STOP_WAIT, move || {
        request
            .gateway
            .remove_port(igd_next::PortMappingProtocol::UDP, request.external.port())
    })
    .await;
    match removed {
        Some(Ok(())) => tracing::info!(
            "removed the port mapping {} -> {}",
            held.local,
            held.external
        ),
        Some(Err(error)) => tracing::warn!(
            "could not remove the port mapping {} -> {}: {error}",
            held.local,
            held.external
        ),
        None => tracing::warn!(
            "could not remove the port mapping {} -> {}: the gateway did not answer (it ends with its lease)",
            held.local,
            held.external
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn private_means_rfc1918_or_ula() {
        for private in [
            "10.0.0.2",
            "172.16.5.4",
            "172.31.255.1",
            "192.168.1.9",
            "fd00::1",
        ] {
            assert!(is_private(ip(private)), "{private}");
        }
        for other in [
            "8.8.8.8",
            "172.32.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "2001:db8::1",
            "fe80::1",
            "::1",
        ] {
            assert!(!is_private(ip(other)), "{other}");
        }
    }

    #[test]
    fn only_private_ipv4_addresses_are_mapped() {
        assert_eq!(
            local_addr(addr("10.0.0.2:4433"), 4433, None),
            Ok(addr("10.0.0.2:4433"))
        );
        assert_eq!(
            local_addr(addr("0.0.0.0:4433"), 4433, Some(ip("192.168.1.9"))),
            Ok(addr("192.168.1.9:4433")),
            "0.0.0.0: the outgoing interface's address"
        );
        assert_eq!(
            local_addr(addr("10.0.0.2:0"), 50_123, None),
            Ok(addr("10.0.0.2:50123")),
            "the port bound"
        );
        let cases = [
            (addr("127.0.0.1:4433"), None, "loopback"),
            (addr("0.0.0.0:4433"), Some(ip("127.0.0.1")), "loopback"),
            (addr("203.0.113.5:4433"), None, "not a private address"),
            (
                addr("0.0.0.0:4433"),
                Some(ip("8.8.4.4")),
                "not a private address",
            ),
            (addr("[fd00::2]:4433"), None, "IPv6"),
            (addr("0.0.0.0:4433"), None, "no outgoing interface"),
        ];
        for (listen, outgoing, needle) in cases {
            let error = local_addr(listen, 4433, outgoing).unwrap_err();
            assert!(error.contains(needle), "{listen} {outgoing:?}: {error}");
        }
    }

    #[test]
    fn leases_are_renewed_at_half_time_within_bounds() {
        assert_eq!(renew_after(3_600), Duration::from_secs(1_800));
        assert_eq!(renew_after(120), Duration::from_secs(60));
        assert_eq!(renew_after(20), RENEW_RETRY_AFTER, "never a busy loop");
        assert_eq!(renew_after(0), PERMANENT_RENEW_AFTER);
    }

    #[test]
    fn the_mapping_line_says_what_was_mapped_and_for_how_long() {
        assert_eq!(
            mapped_line(addr("10.0.0.2:4433"), addr("203.0.113.5:4433"), 3_600),
            "mapped 10.0.0.2:4433 -> 203.0.113.5:4433 via UPnP (lease 3600 s)"
        );
        assert!(mapped_line(addr("10.0.0.2:1"), addr("203.0.113.5:2"), 0)
            .ends_with("(permanent lease)"));
    }
}
