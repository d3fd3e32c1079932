//! What the kernel says about the run (Linux `/proc`): CPU time on the
//! relay's threads, and datagrams dropped at a socket's full receive buffer.

use std::time::Duration;

/// Time on a CPU (`schedstat`'s first field, nanoseconds) of the threads
/// of process `pid` whose name is `thread_name`, or of all its threads.
/// Loopback delivery runs in the sending thread, so a relay's time includes
/// putting each datagram into the receiver's socket (softirq time counts as
/// the task's on kernels without `CONFIG_IRQ_TIME_ACCOUNTING`, as here).
pub fn cpu_time(pid: u32, thread_name: Option<&str>) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let mut nanos = 0u64;
    for task in tasks.flatten() {
        let path = task.path();
        if let Some(name) = thread_name {
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
        }
        let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let run_ns = schedstat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok());
        nanos += run_ns.unwrap_or(0);
    }
    Duration::from_nanos(nanos)
}

/// Clock ticks per second in `/proc/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;

/// CPU time of the whole machine: busy (all but idle and I/O wait) and
/// stolen by the hypervisor, from the first line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineCpu {
    pub busy: Duration,
    pub steal: Duration,
}

pub fn machine_cpu() -> MachineCpu {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_machine_cpu(stat.lines().next().unwrap_or_default()).unwrap_or_default()
}

/// `cpu user nice system idle iowait irq softirq steal guest guest_nice`.
fn parse_machine_cpu(line: &str) -> Option<MachineCpu> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.map(|f| f.parse().unwrap_or(0)).collect();
    let at = |index: usize| ticks.get(index).copied().unwrap_or(0);
    let busy_ticks = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    let from_ticks = |ticks: u64| Duration::from_millis(ticks * 1_000 / USER_HZ);
    Some(MachineCpu {
        busy: from_ticks(busy_ticks),
        steal: from_ticks(at(7)),
    })
}

/// Datagrams the kernel dropped at the IPv4 UDP sockets bound to local
/// `port` (the last column of `/proc/net/udp`; a socket opened per client,
/// as coturn does, shares its listener's port and is summed in).
pub fn udp_drops(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(parse_udp_line)
        .filter(|(local_port, _)| *local_port == port)
        .map(|(_, drops)| drops)
        .sum()
}

/// `(local port, drops)` from one line of `/proc/net/udp`.
fn parse_udp_line(line: &str) -> Option<(u16, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = fields.get(1)?;
    let port_hex = local.rsplit(':').next()?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let drops = fields.last()?.parse().ok()?;
    Some((port, drops))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proc_net_udp_line_gives_port_and_drops() {
        let line = "  917: 0100007F:0D96 00000000:0000 07 00000000:00000000 00:00000000 \
                    00000000     0        0 1234567 2 0000000000000000 42";
        assert_eq!(parse_udp_line(line), Some((0x0D96, 42)));
        assert_eq!(parse_udp_line("garbage"), None);
    }

    #[test]
    fn proc_stat_gives_busy_and_stolen_time() {
        let line = "cpu  100 20 30 4000 50 0 6 7 0 0";
        let cpu = parse_machine_cpu(line).unwrap();
        assert_eq!(cpu.busy, Duration::from_millis(1_630));
        assert_eq!(cpu.steal, Duration::from_millis(70));
        assert!(parse_machine_cpu("intr 1 2 3").is_none());
    }

    #[test]
    fn this_process_has_cpu_time_and_its_socket_is_listed() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        assert_eq!(udp_drops(port), 0);
        let spent: u64 = (0..1_000_000u64).map(std::hint::black_box).sum();
        assert!(spent > 0);
        assert!(cpu_time(std::process::id(), None) > Duration::ZERO);
    }
}
