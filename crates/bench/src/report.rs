//! The results as markdown: side by side per payload size, the highest load
//! each relay carries with at most [`LOSS_MAX`] loss and the ratios the
//! issue asks for, then every step with the diagnostics.

use crate::generator::{Received, Sent, Step};
use crate::relays::RelayKind;
use std::fmt::Write;
use std::time::Duration;

/// Other processes using more than this many cores during a step mark it
/// as disturbed (†).
pub const DISTURBED_CORES_MIN: f64 = 0.25;
/// Loss above which a load counts as beyond a relay's capacity.
pub const LOSS_MAX: f64 = 0.01;
/// The goals of issue #4: peerline forwards at least this share of the
/// plain forwarder's capacity, and at least coturn's.
pub const GOAL_PLAIN_RATIO_MIN: f64 = 0.70;
pub const GOAL_COTURN_RATIO_MIN: f64 = 1.00;

/// One relay at one offered load.
#[derive(Clone, Debug)]
pub struct Row {
    pub relay: RelayKind,
    pub step: Step,
    pub sent: Sent,
    pub received: Received,
    /// CPU time the relay had from the first datagram to the end of the drain.
    pub relay_cpu: Duration,
    pub window: Duration,
    /// Datagrams the kernel dropped at the relay's socket for A (its
    /// receive buffer was full: the relay did not keep up) and at B's.
    pub relay_socket_drops: u64,
    pub receiver_drops: u64,
    pub counters: Vec<(&'static str, u64)>,
    /// CPU time the rest of the machine used in the window (other
    /// processes: a busy machine moves every figure), and what the
    /// hypervisor took from this virtual machine's cores.
    pub others_cpu: Duration,
    pub steal: Duration,
}

impl Row {
    pub fn loss(&self) -> f64 {
        if self.sent.datagrams == 0 {
            return 0.0;
        }
        1.0 - self.received.datagrams as f64 / self.sent.datagrams as f64
    }

    pub fn delivered_per_s(&self) -> f64 {
        self.received.datagrams as f64 / self.sent.elapsed.as_secs_f64().max(1e-9)
    }

    fn cpu_us_per_datagram(&self) -> Option<f64> {
        (self.received.datagrams > 0)
            .then(|| self.relay_cpu.as_secs_f64() * 1e6 / self.received.datagrams as f64)
    }

    fn cpu_share(&self) -> f64 {
        share(self.relay_cpu, self.window)
    }

    fn disturbed(&self) -> bool {
        share(self.others_cpu, self.window) > DISTURBED_CORES_MIN
    }
}

/// What the header says about the run.
pub struct Header {
    pub date: String,
    pub machine: String,
    pub command: String,
    pub notes: Vec<String>,
}

/// The highest offered load up to which `relay` lost at most [`LOSS_MAX`]
/// at every load (a load past one it failed does not count), and what it
/// delivered there.
pub fn capacity(rows: &[Row], relay: RelayKind, payload_len: usize) -> Option<(u64, f64)> {
    let mut loads: Vec<&Row> = rows
        .iter()
        .filter(|row| row.relay == relay && row.step.payload_len == payload_len)
        .collect();
    loads.sort_by_key(|row| row.step.rate_per_s);
    loads
        .into_iter()
        .take_while(|row| row.loss() <= LOSS_MAX)
        .last()
        .map(|row| (row.step.rate_per_s, row.delivered_per_s()))
}

pub fn markdown(header: &Header, rows: &[Row]) -> String {
    let mut out = String::new();
    let relays = distinct(rows.iter().map(|row| row.relay));
    let payloads = distinct(rows.iter().map(|row| row.step.payload_len));
    let _ = writeln!(out, "# Relay throughput on loopback, {}\n", header.date);
    let _ = writeln!(out, "- Machine: {}", header.machine);
    let _ = writeln!(out, "- Command: `{}`", header.command);
    for note in &header.notes {
        let _ = writeln!(out, "- {note}");
    }
    for &payload_len in &payloads {
        side_by_side(&mut out, rows, &relays, payload_len);
    }
    capacities(&mut out, rows, &relays, &payloads);
    every_step(&mut out, rows);
    out
}

fn distinct<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

fn side_by_side(out: &mut String, rows: &[Row], relays: &[RelayKind], payload_len: usize) {
    let _ = writeln!(
        out,
        "\n## {payload_len}-byte payloads: delivered packets/s and loss\n"
    );
    let mut head = String::from("| offered/s |");
    let mut rule = String::from("|---:|");
    for relay in relays {
        let _ = write!(head, " {0} delivered/s | {0} loss |", relay.name());
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(out, "{head}\n{rule}");
    let rates = distinct(
        rows.iter()
            .filter(|row| row.step.payload_len == payload_len)
            .map(|row| row.step.rate_per_s),
    );
    for rate in rates {
        let mut line = format!("| {} |", thousands(rate as f64));
        for &relay in relays {
            let row = rows.iter().find(|row| {
                row.relay == relay
                    && row.step.payload_len == payload_len
                    && row.step.rate_per_s == rate
            });
            match row {
                Some(row) => {
                    let _ = write!(
                        line,
                        " {}{} | {} |",
                        thousands(row.delivered_per_s()),
                        if row.disturbed() { " †" } else { "" },
                        percent(row.loss())
                    );
                }
                None => line.push_str(" – | – |"),
            }
        }
        let _ = writeln!(out, "{line}");
    }
    let disturbed = rows
        .iter()
        .any(|row| row.step.payload_len == payload_len && row.disturbed());
    if disturbed {
        let _ = writeln!(
            out,
            "\n† other processes used more than {DISTURBED_CORES_MIN} cores during that step \
             (column `others` below): the relay had less of the machine than the others had."
        );
    }
}

fn capacities(out: &mut String, rows: &[Row], relays: &[RelayKind], payloads: &[usize]) {
    let _ = writeln!(
        out,
        "\n## Capacity: the highest offered load carried with ≤ {} loss (and at every load below it)\n",
        percent(LOSS_MAX)
    );
    let _ = writeln!(
        out,
        "Ratios are of these loads, so they are known to within one step; the delivered \
         rate there is in brackets. The CPU columns compare work per datagram instead, at the \
         highest load all relays carried (peerline's CPU per datagram over the other's: below \
         1 is cheaper), which depends less on the steps and on what else the machine ran.\n"
    );
    let mut head = String::from("| payload |");
    let mut rule = String::from("|---:|");
    for relay in relays {
        let _ = write!(head, " {} |", relay.name());
        rule.push_str("---:|");
    }
    let others: Vec<(RelayKind, f64)> = [
        (RelayKind::Plain, GOAL_PLAIN_RATIO_MIN),
        (RelayKind::Coturn, GOAL_COTURN_RATIO_MIN),
    ]
    .into_iter()
    .filter(|(other, _)| relays.contains(other) && relays.contains(&RelayKind::Peerline))
    .collect();
    for (other, goal) in &others {
        let _ = write!(
            head,
            " peerline/{0} (goal ≥ {goal:.2}) | CPU/datagram peerline/{0} |",
            other.name()
        );
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(out, "{head}\n{rule}");
    for &payload_len in payloads {
        let mut line = format!("| {payload_len} B |");
        for &relay in relays {
            match capacity(rows, relay, payload_len) {
                Some((rate, delivered)) => {
                    let _ = write!(
                        line,
                        " {} ({}) |",
                        thousands(rate as f64),
                        thousands(delivered)
                    );
                }
                None => line.push_str(" none |"),
            }
        }
        let common = common_capacity(rows, relays, payload_len);
        let peerline = capacity(rows, RelayKind::Peerline, payload_len);
        for &(other, goal) in &others {
            match (peerline, capacity(rows, other, payload_len)) {
                (Some((peerline, _)), Some((other, _))) => {
                    let ratio = peerline as f64 / other as f64;
                    let verdict = if ratio >= goal { "met" } else { "**missed**" };
                    let _ = write!(line, " {ratio:.2} ({verdict}) |");
                }
                _ => line.push_str(" – |"),
            }
            let cpu = |relay| {
                let rate = common?;
                rows.iter()
                    .find(|row| {
                        row.relay == relay
                            && row.step.payload_len == payload_len
                            && row.step.rate_per_s == rate
                    })?
                    .cpu_us_per_datagram()
            };
            match (cpu(RelayKind::Peerline), cpu(other), common) {
                (Some(peerline), Some(other_cpu), Some(rate)) if other_cpu > 0.0 => {
                    let _ = write!(
                        line,
                        " {:.2} ({peerline:.1} / {other_cpu:.1} µs at {}/s) |",
                        peerline / other_cpu,
                        thousands(rate as f64)
                    );
                }
                _ => line.push_str(" – |"),
            }
        }
        let _ = writeln!(out, "{line}");
    }
}

/// The highest offered load that every relay carried with at most
/// [`LOSS_MAX`] loss.
fn common_capacity(rows: &[Row], relays: &[RelayKind], payload_len: usize) -> Option<u64> {
    relays
        .iter()
        .map(|&relay| capacity(rows, relay, payload_len).map(|(rate, _)| rate))
        .min()
        .flatten()
}

fn every_step(out: &mut String, rows: &[Row]) {
    let _ = writeln!(out, "\n## Every step\n");
    let _ = writeln!(
        out,
        "`sent/s` is what the sender achieved (below `offered/s` when the generator itself \
         fell behind). Latency is one way, send to read, queueing included. Relay CPU is its \
         thread's (coturn: its process's) time on a core from the first datagram to the end \
         of the drain: per delivered datagram, and as a share of one core. Drops are the \
         kernel's, at a full socket receive buffer: at the relay's socket (the relay fell \
         behind) and at B's (the generator fell behind). `others` is the CPU the rest of the \
         machine used meanwhile (other processes; in cores), `steal` what the hypervisor took: \
         either well above zero means the step was disturbed.\n"
    );
    let _ = writeln!(
        out,
        "| relay | payload | offered/s | sent/s | delivered/s | loss | p50 µs | p99 µs | \
         relay CPU µs/pkt | relay CPU | dropped at relay | dropped at B | others | steal | \
         relay's counters |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for row in rows {
        let counters: Vec<String> = row
            .counters
            .iter()
            .filter(|(_, value)| *value > 0)
            .map(|(name, value)| format!("{name} {value}"))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} |",
            row.relay.name(),
            row.step.payload_len,
            thousands(row.step.rate_per_s as f64),
            thousands(row.sent.rate_per_s()),
            thousands(row.delivered_per_s()),
            percent(row.loss()),
            optional(row.received.latency_us_p50),
            optional(row.received.latency_us_p99),
            row.cpu_us_per_datagram()
                .map_or("–".to_string(), |us| format!("{us:.2}")),
            percent(row.cpu_share()),
            row.relay_socket_drops,
            row.receiver_drops,
            share(row.others_cpu, row.window),
            share(row.steal, row.window),
            counters.join(", "),
        );
    }
}

/// `time` as a share of one core over `window`.
fn share(time: Duration, window: Duration) -> f64 {
    time.as_secs_f64() / window.as_secs_f64().max(1e-9)
}

fn optional(value: Option<u64>) -> String {
    value.map_or("–".to_string(), |value| value.to_string())
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// `1234567.8` → `1,234,568`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Today's date (UTC) as `YYYY-MM-DD`, from the system clock.
pub fn date_utc(unix_s: u64) -> String {
    let t = i64::try_from(unix_s)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(relay: RelayKind, rate_per_s: u64, sent: u64, received: u64) -> Row {
        Row {
            relay,
            step: Step {
                rate_per_s,
                payload_len: 170,
                duration: Duration::from_secs(1),
            },
            sent: Sent {
                datagrams: sent,
                errors: 0,
                elapsed: Duration::from_secs(1),
            },
            received: Received {
                datagrams: received,
                ..Received::default()
            },
            relay_cpu: Duration::from_millis(500),
            window: Duration::from_secs(1),
            relay_socket_drops: 0,
            receiver_drops: 0,
            counters: Vec::new(),
            others_cpu: Duration::ZERO,
            steal: Duration::ZERO,
        }
    }

    #[test]
    fn capacity_is_the_highest_load_within_the_loss_bound() {
        let rows = vec![
            row(RelayKind::Plain, 10_000, 10_000, 10_000),
            row(RelayKind::Plain, 20_000, 20_000, 19_900),
            row(RelayKind::Plain, 40_000, 40_000, 30_000),
            row(RelayKind::Plain, 80_000, 80_000, 80_000),
            row(RelayKind::Peerline, 10_000, 10_000, 9_000),
        ];
        assert_eq!(
            capacity(&rows, RelayKind::Plain, 170),
            Some((20_000, 19_900.0))
        );
        assert_eq!(capacity(&rows, RelayKind::Peerline, 170), None);
        let text = markdown(
            &Header {
                date: "2026-01-01".into(),
                machine: "test".into(),
                command: "relay-bench".into(),
                notes: Vec::new(),
            },
            &rows,
        );
        assert!(text.contains("| 20,000 | 19,900 | 0.5% |"), "{text}");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(date_utc(0), "1970-01-01");
        assert_eq!(date_utc(1_709_164_800), "2024-02-29");
    }
}
