//! UDP round trips between two namespaces, measured by this process: an
//! echo thread in one namespace, a pinging thread in the other (each enters
//! its namespace with setns). Shows what the links add.

use crate::delay::enter_namespace;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the echo thread looks at its stop flag.
const ECHO_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Bytes of a probe: its sequence number.
const PROBE_LEN: usize = 8;

/// A UDP echo server in a namespace; stops when dropped.
pub struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    /// Listens on `addr` in `namespace`; returns once it listens.
    pub fn start(namespace: &str, addr: SocketAddr) -> Result<Echo, String> {
        let socket = in_namespace(namespace, move || {
            let socket = UdpSocket::bind(addr).map_err(|error| format!("bind {addr}: {error}"))?;
            socket
                .set_read_timeout(Some(ECHO_POLL_INTERVAL))
                .map_err(|error| error.to_string())?;
            Ok(socket)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut probe = [0u8; PROBE_LEN];
            while !thread_stop.load(Ordering::Relaxed) {
                if let Ok((len, from)) = socket.recv_from(&mut probe) {
                    let _ = socket.send_to(&probe[..len], from);
                }
            }
        });
        Ok(Echo {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `make` on a thread that has entered `namespace`; what it made
/// (sockets stay in the namespace they were made in).
fn in_namespace<T: Send + 'static>(
    namespace: &str,
    make: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let namespace = namespace.to_string();
    std::thread::spawn(move || {
        enter_namespace(&namespace)?;
        make()
    })
    .join()
    .unwrap_or_else(|_| Err("the namespace thread panicked".to_string()))
}

/// `count` round trips, one after another, from `namespace` to `to`: each
/// one's time, or `None` when no answer came within `timeout` (loss).
pub fn round_trips(
    namespace: &str,
    to: SocketAddr,
    count: u64,
    timeout: Duration,
) -> Result<Vec<Option<Duration>>, String> {
    let socket = in_namespace(namespace, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|error| error.to_string())?;
        socket.connect(to).map_err(|error| error.to_string())?;
        Ok(socket)
    })?;
    (0..count)
        .map(|sequence| round_trip(&socket, sequence, timeout))
        .collect()
}

fn round_trip(
    socket: &UdpSocket,
    sequence: u64,
    timeout: Duration,
) -> Result<Option<Duration>, String> {
    let sent = Instant::now();
    socket
        .send(&sequence.to_be_bytes())
        .map_err(|error| format!("send: {error}"))?;
    let mut answer = [0u8; PROBE_LEN];
    loop {
        let Some(left) = timeout.checked_sub(sent.elapsed()) else {
            return Ok(None);
        };
        socket
            .set_read_timeout(Some(left.max(Duration::from_micros(1))))
            .map_err(|error| error.to_string())?;
        match socket.recv(&mut answer) {
            // An answer to an earlier probe that came late is skipped.
            Ok(len) if len == PROBE_LEN && answer == sequence.to_be_bytes() => {
                return Ok(Some(sent.elapsed()));
            }
            Ok(_) => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(error) => return Err(format!("receive: {error}")),
        }
    }
}

/// "median M ms (p10 A, p90 B), N of C answered", in hundredths of a ms.
pub fn summary(round_trips: &[Option<Duration>]) -> String {
    let mut answered: Vec<Duration> = round_trips.iter().flatten().copied().collect();
    answered.sort();
    let ms = |share: f64| {
        let index = ((answered.len() as f64 - 1.0) * share).round() as usize;
        answered
            .get(index)
            .map_or(f64::NAN, |duration| duration.as_secs_f64() * 1000.0)
    };
    format!(
        "median {:.2} ms (p10 {:.2}, p90 {:.2}), {} of {} answered",
        ms(0.5),
        ms(0.1),
        ms(0.9),
        answered.len(),
        round_trips.len()
    )
}

/// The median of the answered round trips.
pub fn median(round_trips: &[Option<Duration>]) -> Option<Duration> {
    let mut answered: Vec<Duration> = round_trips.iter().flatten().copied().collect();
    answered.sort();
    answered.get(answered.len() / 2).copied()
}
