//! `peerline demo`: a whole network on loopback over real QUIC — supernodes
//! come up, clients log in, look each other up and exchange messages, 40%
//! of the supernodes are killed at once, and every claim about what
//! follows is checked, with timings, in a short report. Exit 0 when every
//! claim holds, 1 when one fails.
//!
//! Every node is a real driver with its own UDP socket on 127.0.0.1, real
//! Ed25519 keys and key-bound TLS; the checks read what the nodes report
//! to their applications (events) and what they believe (status).

use anyhow::{bail, Context, Result};
use peerline_core::{Event, Params};
use peerline_net::loopback::{attached_indices, LoggedEvent, LoopbackNetwork, LoopbackPlan, Role};
use peerline_net::{DriverLimits, NodeStatus};
use peerline_proto::PublicKey;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The whole demo, whatever hangs.
const DEMO_WITHIN: Duration = Duration::from_secs(55);
/// One step's bound (login, lookups, a round of messages, re-attachment).
const STEP_WITHIN: Duration = Duration::from_secs(20);
/// Messages sent during the outage may wait for the outbox's re-send.
const OUTAGE_MESSAGES_WITHIN: Duration = Duration::from_secs(25);

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Supernodes to start (at least 3).
    #[arg(long, default_value_t = 8)]
    supernodes: usize,
    /// Clients to start (at least 2).
    #[arg(long, default_value_t = 40)]
    clients: usize,
    /// Fraction of the supernodes killed at once.
    #[arg(long, default_value_t = 0.4)]
    kill_fraction: f64,
    /// Seeds the node identities.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// What the demo changes from production parameters, and why; printed in
/// the report (shared with `peerline node --fast-timers`).
fn params() -> (Params, Vec<String>) {
    crate::timers::fast()
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    if args.supernodes < 3 {
        bail!("--supernodes must be at least 3 (clients attach to two, and one must die)");
    }
    if args.clients < 2 {
        bail!("--clients must be at least 2 (they message each other)");
    }
    if args.supernodes + args.clients > 1_000 {
        bail!("the demo runs at most 1,000 nodes on loopback");
    }
    let killed = (args.kill_fraction * args.supernodes as f64).round() as usize;
    if !(args.kill_fraction > 0.0 && killed >= 1 && args.supernodes - killed >= 2) {
        bail!(
            "--kill-fraction must kill at least one supernode and leave two ({} of {} would die)",
            killed,
            args.supernodes
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let started = Instant::now();
    let outcome =
        runtime.block_on(async { tokio::time::timeout(DEMO_WITHIN, demo(&args, killed)).await });
    let mut report = match outcome {
        Ok(report) => report?,
        Err(_) => {
            println!(
                "FAIL  the demo did not finish within {} s",
                DEMO_WITHIN.as_secs()
            );
            return Ok(ExitCode::from(1));
        }
    };
    report.finish(started.elapsed());
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Claims as they are checked, printed as they go.
#[derive(Default)]
struct Report {
    claims: usize,
    failed: usize,
}

impl Report {
    fn claim(&mut self, holds: bool, what: &str, detail: &str) -> bool {
        self.claims += 1;
        if !holds {
            self.failed += 1;
        }
        let mark = if holds { "ok  " } else { "FAIL" };
        if detail.is_empty() {
            println!("  {mark}  {what}");
        } else {
            println!("  {mark}  {what} · {detail}");
        }
        holds
    }

    fn note(&self, what: &str) {
        println!("        {what}");
    }

    fn finish(&mut self, elapsed: Duration) {
        if self.failed == 0 {
            println!(
                "\nall {} claims hold · {:.1} s in all",
                self.claims,
                elapsed.as_secs_f64()
            );
        } else {
            println!(
                "\n{} of {} claims FAILED · {:.1} s in all",
                self.failed,
                self.claims,
                elapsed.as_secs_f64()
            );
        }
    }
}

fn ms(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1_000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1_000.0)
    }
}

/// "p50 X, p99 Y, max Z" of some durations.
fn spread(mut durations: Vec<Duration>) -> String {
    if durations.is_empty() {
        return "none measured".into();
    }
    durations.sort();
    let at = |q: f64| durations[((durations.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {}, p99 {}, max {}",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(durations[durations.len() - 1])
    )
}

async fn demo(args: &DemoArgs, killed: usize) -> Result<Report> {
    let (params, overrides) = params();
    println!(
        "peerline demo · {} supernodes, {} clients on 127.0.0.1 · QUIC, TLS 1.3 with certificates bound to Ed25519 node keys",
        args.supernodes, args.clients
    );
    println!("  changed from production: {}\n", overrides.join("; "));
    let mut report = Report::default();
    let mut network = LoopbackNetwork::start(LoopbackPlan {
        supernodes: args.supernodes,
        clients: args.clients,
        params,
        limits: DriverLimits::default(),
        seed: args.seed,
        ip: LoopbackPlan::IPV4,
    })
    .await
    .context("the network could not start on loopback")?;
    let ok = steps(&mut network, &mut report, killed).await;
    if !ok {
        report.note("(stopped at the first failed step)");
    }
    network.shutdown().await;
    Ok(report)
}

/// Runs the steps in order; false once one fails.
async fn steps(network: &mut LoopbackNetwork, report: &mut Report, killed: usize) -> bool {
    let supernodes = network.indices(Role::Supernode);
    let clients = network.indices(Role::Client);
    let membership = network
        .wait_until("full membership", STEP_WITHIN, |s| {
            supernodes.iter().all(|&i| {
                s[i].as_ref()
                    .is_some_and(|status| status.membership_len == supernodes.len())
            })
        })
        .await;
    if !report.claim(
        membership.is_ok(),
        &format!("{} supernodes up, each knows all", supernodes.len()),
        &format!("{} after start", ms(network.elapsed())),
    ) {
        return false;
    }

    if !login(network, report).await {
        return false;
    }
    let pairs: Vec<(usize, usize)> = (0..clients.len())
        .map(|i| (clients[i], clients[(i + 1) % clients.len()]))
        .collect();
    if !lookups(network, report, &pairs, "", true).await {
        return false;
    }
    let mut ledger = Ledger::default();
    let round = message_pairs(&clients, 7);
    if !messages(network, report, &mut ledger, &round, "", STEP_WITHIN).await {
        return false;
    }

    // The crash wave.
    let victims: Vec<usize> = supernodes[..killed].to_vec();
    let statuses = network.statuses().await;
    let orphans: Vec<usize> = clients
        .iter()
        .copied()
        .filter(|&c| {
            statuses[c].as_ref().is_some_and(|s| {
                attached_indices(network, s)
                    .iter()
                    .any(|a| victims.contains(a))
            })
        })
        .collect();
    let kill_at = network.elapsed();
    network.stop_all(&victims, false).await;
    report.note(&format!(
        "killed {} of {} supernodes at once (no goodbye); {} of {} clients lost an attachment",
        victims.len(),
        supernodes.len(),
        orphans.len(),
        clients.len()
    ));
    // Messages sent while the network heals.
    let outage_round = message_pairs(&clients, 13);
    let sent_during = send_round(network, &mut ledger, &outage_round, "during the outage").await;
    if !reattach(network, report, &orphans, kill_at).await {
        return false;
    }
    // Orphans re-publish where they are now; lookups must find that.
    let republished = wait_republished(network, &orphans, kill_at).await;
    let stored = republished && wait_stored(network).await;
    if !report.claim(
        stored,
        "every client that lost a supernode published its new presence, re-stored on live replicas",
        "",
    ) {
        return false;
    }
    if !lookups(network, report, &pairs, " after the outage", false).await {
        return false;
    }
    let delivered = sent_during
        && await_round(network, &mut ledger, &outage_round, OUTAGE_MESSAGES_WITHIN).await;
    let detail = ledger.round_detail(&outage_round);
    if !report.claim(
        delivered,
        &format!(
            "{} messages sent during the outage delivered once and acknowledged",
            outage_round.len()
        ),
        &detail,
    ) {
        return false;
    }
    let (sent, lost, duplicated) = ledger.totals(network);
    report.claim(
        lost == 0 && duplicated == 0,
        &format!("nothing lost or duplicated: {sent} messages sent, {lost} lost, {duplicated} duplicated"),
        "",
    )
}

fn client_at_two_live(network: &LoopbackNetwork, status: &NodeStatus) -> bool {
    let attached = attached_indices(network, status);
    attached.len() == 2 && attached.iter().all(|&s| network.peers[s].is_running())
}

/// When a client's attachments first reached two, from its event log.
fn attached_two_at(log: &[LoggedEvent]) -> Option<Duration> {
    let mut attached: Vec<PublicKey> = Vec::new();
    for entry in log {
        match &entry.event {
            Event::Attached { supernode } => {
                if !attached.contains(&supernode.key) {
                    attached.push(supernode.key);
                }
                if attached.len() >= 2 {
                    return Some(entry.at);
                }
            }
            Event::Detached { supernode, .. } => attached.retain(|k| *k != supernode.key),
            _ => {}
        }
    }
    None
}

async fn login(network: &LoopbackNetwork, report: &mut Report) -> bool {
    let clients = network.indices(Role::Client);
    let all = network
        .wait_until("every client attached to two", STEP_WITHIN, |s| {
            clients.iter().all(|&c| {
                s[c].as_ref()
                    .is_some_and(|st| client_at_two_live(network, st))
            })
        })
        .await;
    let times: Vec<Duration> = clients
        .iter()
        .filter_map(|&c| {
            let peer = &network.peers[c];
            attached_two_at(&peer.log.snapshot()).map(|at| at.saturating_sub(peer.started_at))
        })
        .collect();
    if !report.claim(
        all.is_ok(),
        &format!(
            "{} clients logged in, each attached to 2 supernodes",
            clients.len()
        ),
        &format!("login {}", spread(times)),
    ) {
        return false;
    }
    // Logged in means findable: each client's record names both supernodes.
    let mut published = Vec::with_capacity(clients.len());
    for &client in &clients {
        let peer = &network.peers[client];
        let Some(whole_at) = attached_two_at(&peer.log.snapshot()) else {
            break;
        };
        match network
            .wait_logged(client, "presence published", STEP_WITHIN, |logged| {
                logged.at >= whole_at && matches!(logged.event, Event::PresencePublished { .. })
            })
            .await
        {
            Ok(logged) => published.push(logged.at.saturating_sub(peer.started_at)),
            Err(_) => break,
        }
    }
    let stored = published.len() == clients.len() && wait_stored(network).await;
    report.claim(
        stored,
        &format!(
            "{}/{} clients published their presence; supernodes hold {} copies of each record",
            published.len(),
            clients.len(),
            params().0.replication_k
        ),
        &format!(
            "{} after start (a {} ms debounce gathers both attachments)",
            spread(published),
            params().0.presence_debounce_ms
        ),
    )
}

/// Each `(seeker, target)`: the seeker looks the target's account up and
/// must find the target device's record. With `current_only`, the record
/// must also name only supernodes the target is attached to now; after an
/// outage a replica may still answer with the record from before the move
/// for a moment (records are sent, not acknowledged, and the newest one
/// wins as it spreads), so there such answers are counted and shown, not
/// failed.
async fn lookups(
    network: &LoopbackNetwork,
    report: &mut Report,
    pairs: &[(usize, usize)],
    when: &str,
    current_only: bool,
) -> bool {
    let mut issued = Vec::with_capacity(pairs.len());
    for &(seeker, target) in pairs {
        let at = network.elapsed();
        let _ = network.peers[seeker]
            .control
            .lookup(network.peers[target].account)
            .await;
        issued.push((seeker, target, at));
    }
    let statuses = network.statuses().await;
    let mut times = Vec::with_capacity(pairs.len());
    let (mut found, mut current, mut wrong) = (0, 0, 0);
    for (seeker, target, at) in issued {
        let account = network.peers[target].account;
        let answer = network
            .wait_logged(seeker, "lookup done", STEP_WITHIN, |logged| {
                logged.at >= at
                    && matches!(&logged.event, Event::LookupDone { account: a, .. } if *a == account)
            })
            .await;
        let Ok(LoggedEvent {
            at: done_at,
            event: Event::LookupDone { record, .. },
        }) = answer
        else {
            continue;
        };
        times.push(done_at.saturating_sub(at));
        let Some(record) = record else { continue };
        if record.body.cert.body.device_key != network.peers[target].device_key {
            wrong += 1;
            continue;
        }
        found += 1;
        let attached: Vec<PublicKey> = statuses[target]
            .as_ref()
            .map(|s| s.attached.iter().map(|c| c.key).collect())
            .unwrap_or_default();
        let names_current = !record.body.supernodes.is_empty()
            && record
                .body
                .supernodes
                .iter()
                .all(|c| attached.contains(&c.key));
        current += usize::from(names_current);
    }
    let mut detail = spread(times);
    detail.push_str(&format!(
        "; {current} named only the target's current supernodes"
    ));
    let not_found = pairs.len() - found - wrong;
    if not_found + wrong > 0 {
        detail.push_str(&format!(
            "; {not_found} not found, {wrong} for another device"
        ));
    }
    let holds = found == pairs.len() && (!current_only || current == pairs.len());
    let what = if current_only {
        "the target's record, naming its current supernodes"
    } else {
        "the target's record"
    };
    report.claim(
        holds,
        &format!("{found}/{} lookups{when} found {what}", pairs.len()),
        &detail,
    )
}

/// Message pairs: client i to client i + offset.
fn message_pairs(clients: &[usize], offset: usize) -> Vec<(usize, usize)> {
    (0..clients.len())
        .map(|i| (clients[i], clients[(i + offset) % clients.len()]))
        .filter(|(a, b)| a != b)
        .collect()
}

/// What was sent, to check deliveries against.
#[derive(Default)]
struct Ledger {
    /// (sender, recipient, payload) → (sequence number, sent at).
    sent: BTreeMap<(usize, usize, Vec<u8>), (u64, Duration)>,
    /// Deliveries and acknowledgements seen, with their times.
    delivered_at: BTreeMap<(usize, usize, Vec<u8>), Duration>,
    acked_at: BTreeMap<(usize, usize, Vec<u8>), Duration>,
}

fn payload(sender: usize, recipient: usize, tag: &str) -> Vec<u8> {
    format!("demo message {tag} from {sender} to {recipient}").into_bytes()
}

impl Ledger {
    fn round_detail(&self, round: &[(usize, usize)]) -> String {
        let mut delivery = Vec::new();
        let mut ack = Vec::new();
        for (key, (_, sent_at)) in &self.sent {
            if !round.contains(&(key.0, key.1)) {
                continue;
            }
            if let Some(at) = self.delivered_at.get(key) {
                delivery.push(at.saturating_sub(*sent_at));
            }
            if let Some(at) = self.acked_at.get(key) {
                ack.push(at.saturating_sub(*sent_at));
            }
        }
        format!("delivery {}; ack {}", spread(delivery), spread(ack))
    }

    /// Sent, lost (sent but never delivered) and duplicated (delivered
    /// more than once) over the whole run, read from the recipients' logs.
    fn totals(&self, network: &LoopbackNetwork) -> (usize, usize, usize) {
        let mut lost = 0;
        let mut duplicated = 0;
        for (sender, recipient, payload) in self.sent.keys() {
            let from_device = network.peers[*sender].device_key;
            let copies = network.peers[*recipient]
                .log
                .snapshot()
                .iter()
                .filter(|e| matches!(&e.event, Event::MessageReceived { from_device: d, payload: p, .. } if *d == from_device && p == payload))
                .count();
            if copies == 0 {
                lost += 1;
            }
            duplicated += copies.saturating_sub(1);
        }
        (self.sent.len(), lost, duplicated)
    }
}

async fn send_round(
    network: &LoopbackNetwork,
    ledger: &mut Ledger,
    round: &[(usize, usize)],
    tag: &str,
) -> bool {
    let mut all = true;
    for &(sender, recipient) in round {
        let bytes = payload(sender, recipient, tag);
        let at = network.elapsed();
        match network.peers[sender]
            .control
            .send_message(
                network.peers[recipient].device_key,
                network.peers[recipient].account,
                bytes.clone(),
            )
            .await
        {
            Ok(seq) => {
                ledger.sent.insert((sender, recipient, bytes), (seq, at));
            }
            Err(_) => all = false,
        }
    }
    all
}

/// Waits until every message of the round was delivered and acknowledged.
async fn await_round(
    network: &LoopbackNetwork,
    ledger: &mut Ledger,
    round: &[(usize, usize)],
    within: Duration,
) -> bool {
    let started = tokio::time::Instant::now();
    let keys: Vec<(usize, usize, Vec<u8>)> = ledger
        .sent
        .keys()
        .filter(|k| round.contains(&(k.0, k.1)))
        .cloned()
        .collect();
    loop {
        for key in &keys {
            let (sender, recipient, bytes) = key;
            let (seq, _) = ledger.sent[key];
            if !ledger.delivered_at.contains_key(key) {
                let from_device = network.peers[*sender].device_key;
                if let Some(e) = network.peers[*recipient].log.snapshot().iter().find(|e| {
                    matches!(&e.event, Event::MessageReceived { from_device: d, payload: p, .. } if *d == from_device && p == bytes)
                }) {
                    ledger.delivered_at.insert(key.clone(), e.at);
                }
            }
            if !ledger.acked_at.contains_key(key) {
                let to = network.peers[*recipient].device_key;
                if let Some(e) = network.peers[*sender].log.snapshot().iter().find(|e| {
                    matches!(&e.event, Event::MessageAcked { to_device, up_to_seq } if *to_device == to && *up_to_seq >= seq)
                }) {
                    ledger.acked_at.insert(key.clone(), e.at);
                }
            }
        }
        let done = keys
            .iter()
            .all(|k| ledger.delivered_at.contains_key(k) && ledger.acked_at.contains_key(k));
        if done {
            return true;
        }
        if started.elapsed() >= within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn messages(
    network: &LoopbackNetwork,
    report: &mut Report,
    ledger: &mut Ledger,
    round: &[(usize, usize)],
    tag: &str,
    within: Duration,
) -> bool {
    let sent = send_round(network, ledger, round, tag).await;
    let done = sent && await_round(network, ledger, round, within).await;
    let detail = ledger.round_detail(round);
    report.claim(
        done,
        &format!("{} messages delivered once and acknowledged", round.len()),
        &detail,
    )
}

/// Waits until every client is attached to two live supernodes, timing
/// each orphan from the kill to the first look that found it whole.
async fn reattach(
    network: &LoopbackNetwork,
    report: &mut Report,
    orphans: &[usize],
    kill_at: Duration,
) -> bool {
    let clients = network.indices(Role::Client);
    let mut whole_at: BTreeMap<usize, Duration> = BTreeMap::new();
    let started = tokio::time::Instant::now();
    let all = loop {
        let statuses = network.statuses().await;
        let now = network.elapsed();
        for &orphan in orphans {
            if !whole_at.contains_key(&orphan)
                && statuses[orphan]
                    .as_ref()
                    .is_some_and(|s| client_at_two_live(network, s))
            {
                whole_at.insert(orphan, now.saturating_sub(kill_at));
            }
        }
        let everyone = clients.iter().all(|&c| {
            statuses[c]
                .as_ref()
                .is_some_and(|s| client_at_two_live(network, s))
        });
        if everyone {
            break true;
        }
        if started.elapsed() >= STEP_WITHIN {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if !all {
        diagnose_short(network, kill_at).await;
    }
    let total = whole_at.values().max().copied().unwrap_or_default();
    report.claim(
        all,
        &format!(
            "every client attached to 2 live supernodes again, {} after the kill",
            ms(total)
        ),
        &format!("re-attach {}", spread(whole_at.into_values().collect())),
    )
}

/// Waits until each orphan published its presence after its last
/// attachment since the kill (a record naming where it is now).
async fn wait_republished(network: &LoopbackNetwork, orphans: &[usize], kill_at: Duration) -> bool {
    for &orphan in orphans {
        let log = network.peers[orphan].log.snapshot();
        let last_attached = log
            .iter()
            .filter(|e| e.at >= kill_at && matches!(e.event, Event::Attached { .. }))
            .map(|e| e.at)
            .max()
            .unwrap_or(kill_at);
        let published = network
            .wait_logged(orphan, "presence re-published", STEP_WITHIN, |logged| {
                logged.at >= last_attached
                    && matches!(logged.event, Event::PresencePublished { .. })
            })
            .await;
        if published.is_err() {
            return false;
        }
    }
    true
}

/// Prints, for each client short of two live attachments, what it believes
/// and what happened to it since the kill: the first thing to read when the
/// re-attach claim fails.
async fn diagnose_short(network: &LoopbackNetwork, kill_at: Duration) {
    let statuses = network.statuses().await;
    for client in network.indices(Role::Client) {
        let Some(status) = statuses[client].as_ref() else {
            continue;
        };
        if client_at_two_live(network, status) {
            continue;
        }
        report_line(&format!(
            "client {client} attached to {:?}; dials {} failed {}, frames dropped out {}",
            attached_indices(network, status),
            status.links.dials,
            status.links.dials_failed,
            status.links.frames_dropped_out
        ));
        for logged in network.peers[client].log.snapshot() {
            if logged.at >= kill_at {
                let index =
                    |key: &PublicKey| network.peers.iter().position(|p| p.device_key == *key);
                let event = match &logged.event {
                    Event::Attached { supernode } => {
                        format!("attached to {:?}", index(&supernode.key))
                    }
                    Event::Detached { supernode, reason } => {
                        format!("detached from {:?}: {reason:?}", index(&supernode.key))
                    }
                    other => format!("{other:?}").chars().take(80).collect(),
                };
                report_line(&format!(
                    "  {:>8}  {event}",
                    ms(logged.at.saturating_sub(kill_at))
                ));
            }
        }
    }
}

fn report_line(text: &str) {
    println!("        {text}");
}

/// Waits until the live supernodes hold every client's record on its
/// replicas (`replication_k` copies each, or one per live supernode): a
/// publish is sent, not acknowledged, so a lookup right after it could
/// race the store.
async fn wait_stored(network: &LoopbackNetwork) -> bool {
    let k = params().0.replication_k;
    let clients = network.indices(Role::Client).len();
    network
        .wait_until("every record stored on its replicas", STEP_WITHIN, |s| {
            let live: Vec<&NodeStatus> = network
                .indices(Role::Supernode)
                .into_iter()
                .filter_map(|i| s[i].as_ref())
                .collect();
            let held: usize = live.iter().map(|status| status.stored_records).sum();
            held >= clients * k.min(live.len())
        })
        .await
        .is_ok()
}
