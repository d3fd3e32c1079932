//! Delay and jitter on a router's links without netem: the router's
//! `raw PREROUTING` chain hands every packet arriving on a link to an
//! NFQUEUE; a thread of the test process, entered into the router's
//! namespace, holds each one for delay ± jitter and then lets it go on
//! (verdict ACCEPT). The packet is not copied or rewritten — it keeps its
//! addresses and ports — and `raw PREROUTING` runs before conntrack, so the
//! router's conntrack, NAT and firewall see it when it leaves the link, as
//! on a real wire.
//!
//! A link is a FIFO: a packet never leaves before one that arrived earlier
//! on the same link, so jitter does not reorder (netem with a rate does
//! the same). Packets of a burst therefore share the latest due time among
//! them, which moves the mean a little above `delay`.
//!
//! Bounds: at most [`HELD_PACKETS_MAX`] packets held per router (beyond it
//! a packet is dropped, as by a full router buffer, and counted); the
//! kernel queue is sized above that; the thread checks its stop flag every
//! [`POLL_INTERVAL`] and stops when the [`Delayer`] is stopped or dropped.
//! The same interval is the delayer's resolution: a packet is received, and
//! released, up to about that much later than its time.

use nfq::{Message, Queue, Verdict};
use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Packets one router's delayer holds at once.
pub const HELD_PACKETS_MAX: usize = 1024;
/// The kernel's own queue also counts the packets held in user space.
const KERNEL_QUEUE_LEN_MAX: u32 = 2 * HELD_PACKETS_MAX as u32;
/// How often the thread looks for new packets and for the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// How long starting waits for the thread to be bound to its queue.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// One link's delay: each packet waits `delay` ± up to `jitter` (uniform).
#[derive(Clone, Copy, Debug)]
pub struct LinkDelay {
    pub delay: Duration,
    pub jitter: Duration,
}

impl std::fmt::Display for LinkDelay {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{} ms ± {} ms delay per link",
            self.delay.as_millis(),
            self.jitter.as_millis()
        )
    }
}

/// When each packet is due. Sans-IO: the caller says when a packet arrived
/// and on which link (the interface index it came in on).
pub struct Schedule {
    link_delay: LinkDelay,
    rng: Pcg64Mcg,
    /// The last due time handed out per link: a link is a FIFO.
    last_due_by_link: Vec<(u32, Instant)>,
}

impl Schedule {
    pub fn new(link_delay: LinkDelay, seed: u64) -> Schedule {
        assert!(link_delay.jitter <= link_delay.delay, "{link_delay:?}");
        Schedule {
            link_delay,
            rng: Pcg64Mcg::seed_from_u64(seed),
            last_due_by_link: Vec::new(),
        }
    }

    /// When a packet that arrived at `arrived` on `link` leaves it.
    pub fn due(&mut self, link: u32, arrived: Instant) -> Instant {
        let jitter_us = self.link_delay.jitter.as_micros() as u64;
        let offset_us = self.rng.next_u64() % (2 * jitter_us + 1);
        let drawn = arrived + self.link_delay.delay + Duration::from_micros(offset_us)
            - self.link_delay.jitter;
        let last_due = match self.last_due_by_link.iter_mut().find(|(id, _)| *id == link) {
            Some((_, last_due)) => last_due,
            None => {
                self.last_due_by_link.push((link, drawn));
                &mut self.last_due_by_link.last_mut().expect("just pushed").1
            }
        };
        *last_due = (*last_due).max(drawn);
        *last_due
    }
}

/// What a delayer did, for the test's report.
#[derive(Clone, Debug, Default)]
pub struct DelayStats {
    /// Packets let go when due (the hold times are theirs).
    pub packets: u64,
    pub dropped_over_cap: u64,
    /// Packets still held when the delayer stopped, let go early.
    pub let_go_at_stop: u64,
    pub held_max: usize,
    pub hold_min: Option<Duration>,
    pub hold_max: Duration,
    hold_total: Duration,
}

impl DelayStats {
    fn record_release(&mut self, held: Duration) {
        self.packets += 1;
        self.hold_total += held;
        self.hold_max = self.hold_max.max(held);
        self.hold_min = Some(self.hold_min.map_or(held, |least| least.min(held)));
    }

    pub fn hold_mean(&self) -> Duration {
        let packets = u32::try_from(self.packets.max(1)).unwrap_or(u32::MAX);
        self.hold_total / packets
    }
}

impl std::fmt::Display for DelayStats {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
        write!(
            formatter,
            "{} packets held {:.1}/{:.1}/{:.1} ms (min/mean/max), at most {} at once, \
             {} dropped over the cap of {HELD_PACKETS_MAX}, {} let go at stop",
            self.packets,
            ms(self.hold_min.unwrap_or_default()),
            ms(self.hold_mean()),
            ms(self.hold_max),
            self.held_max,
            self.dropped_over_cap,
            self.let_go_at_stop
        )
    }
}

/// A thread holding the packets of one NFQUEUE in one namespace.
pub struct Delayer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<DelayStats, String>>>,
}

impl Delayer {
    /// Enters `namespace` (a name under /var/run/netns) on a new thread,
    /// binds NFQUEUE `queue_num` there and returns once it is bound, so the
    /// rule sending packets to it can be added next.
    pub fn start(
        namespace: &str,
        queue_num: u16,
        link_delay: LinkDelay,
        seed: u64,
    ) -> Result<Delayer, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_sender, ready) = mpsc::sync_channel(1);
        let thread_namespace = namespace.to_string();
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("delay {namespace}"))
            .spawn(move || {
                let queue = match open_queue_in(&thread_namespace, queue_num) {
                    Ok(queue) => queue,
                    Err(reason) => {
                        let _ = ready_sender.send(Err(reason.clone()));
                        return Err(reason);
                    }
                };
                let _ = ready_sender.send(Ok(()));
                hold_and_release(queue, Schedule::new(link_delay, seed), &thread_stop)
            })
            .map_err(|error| format!("cannot start the delay thread: {error}"))?;
        let delayer = Delayer {
            stop,
            thread: Some(thread),
        };
        match ready.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => Ok(delayer),
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err(format!(
                "the delay thread did not bind in {START_TIMEOUT:?}"
            )),
        }
    }

    /// Stops the thread (packets still held are let go) and returns what
    /// it did, or why it stopped early.
    pub fn stop(mut self) -> Result<DelayStats, String> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<DelayStats, String> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().ok_or("already stopped")?;
        thread
            .join()
            .unwrap_or_else(|_| Err("the delay thread panicked".to_string()))
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop_and_join();
        }
    }
}

/// Moves the calling thread into network namespace `namespace` (a name
/// under /var/run/netns); setns changes only the calling thread.
pub fn enter_namespace(namespace: &str) -> Result<(), String> {
    let path = format!("/var/run/netns/{namespace}");
    let file =
        std::fs::File::open(&path).map_err(|error| format!("cannot open {path}: {error}"))?;
    // SAFETY: setns takes a file descriptor that `file` keeps open for the
    // call, and a namespace type flag; it touches no memory of ours.
    let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if entered != 0 {
        let error = std::io::Error::last_os_error();
        return Err(format!("cannot enter {path}: {error}"));
    }
    Ok(())
}

/// Moves this thread into `namespace` and binds the queue there.
fn open_queue_in(namespace: &str, queue_num: u16) -> Result<Queue, String> {
    enter_namespace(namespace)?;
    let no_queue = |error: std::io::Error| {
        format!(
            "NFQUEUE {queue_num} in {namespace}: {error} (the kernel needs nfnetlink_queue; \
             is another reader bound?)"
        )
    };
    let mut queue = Queue::open().map_err(no_queue)?;
    queue.bind(queue_num).map_err(no_queue)?;
    // Metadata only: the verdict lets the kernel's own packet go on.
    queue.set_copy_range(queue_num, 0).map_err(no_queue)?;
    queue
        .set_queue_max_len(queue_num, KERNEL_QUEUE_LEN_MAX)
        .map_err(no_queue)?;
    queue.set_nonblocking(true);
    Ok(queue)
}

/// Packets held, by (due time, arrival number); each with its arrival.
type Held = BTreeMap<(Instant, u64), (Instant, Message)>;

fn hold_and_release(
    mut queue: Queue,
    mut schedule: Schedule,
    stop: &AtomicBool,
) -> Result<DelayStats, String> {
    let mut held = Held::new();
    let mut stats = DelayStats::default();
    let mut arrivals: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        for (arrived, message) in release_due(&mut held, Instant::now()) {
            send_verdict(&mut queue, message, Verdict::Accept)?;
            stats.record_release(arrived.elapsed());
        }
        loop {
            let message = match queue.recv() {
                Ok(message) => message,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(format!("NFQUEUE receive: {error}")),
            };
            if held.len() >= HELD_PACKETS_MAX {
                send_verdict(&mut queue, message, Verdict::Drop)?;
                stats.dropped_over_cap += 1;
                continue;
            }
            let arrived = Instant::now();
            let due = schedule.due(message.get_indev(), arrived);
            arrivals += 1;
            held.insert((due, arrivals), (arrived, message));
            stats.held_max = stats.held_max.max(held.len());
        }
        let next_due = held.keys().next().map(|(due, _)| *due);
        let now = Instant::now();
        let wait = next_due.map_or(POLL_INTERVAL, |due| {
            due.saturating_duration_since(now).min(POLL_INTERVAL)
        });
        std::thread::sleep(wait);
    }
    for (_, message) in std::mem::take(&mut held).into_values() {
        send_verdict(&mut queue, message, Verdict::Accept)?;
        stats.let_go_at_stop += 1;
    }
    Ok(stats)
}

/// Takes every held packet due by `now` out of `held`, earliest first.
fn release_due(held: &mut Held, now: Instant) -> Vec<(Instant, Message)> {
    let mut due = Vec::new();
    while let Some(entry) = held.first_entry() {
        if entry.key().0 > now {
            break;
        }
        due.push(entry.remove());
    }
    due
}

fn send_verdict(queue: &mut Queue, mut message: Message, verdict: Verdict) -> Result<(), String> {
    message.set_verdict(verdict);
    queue
        .verdict(message)
        .map_err(|error| format!("NFQUEUE verdict: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: LinkDelay = LinkDelay {
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(5),
    };

    #[test]
    fn a_lone_packet_waits_delay_within_jitter() {
        let mut schedule = Schedule::new(LINK, 7);
        let start = Instant::now();
        for packet in 0..1000u32 {
            let arrived = start + Duration::from_secs(packet.into());
            let held = schedule.due(1, arrived) - arrived;
            assert!(held >= LINK.delay - LINK.jitter, "{held:?}");
            assert!(held <= LINK.delay + LINK.jitter, "{held:?}");
        }
    }

    #[test]
    fn a_link_never_reorders() {
        let mut schedule = Schedule::new(LINK, 7);
        let start = Instant::now();
        let mut last_due = start;
        for packet in 0..1000u64 {
            // 0.2 ms apart on a ±5 ms link: most draws would overtake.
            let arrived = start + Duration::from_micros(packet * 200);
            let due = schedule.due(1, arrived);
            assert!(due >= last_due, "packet {packet} overtook");
            assert!(due - arrived <= LINK.delay + LINK.jitter);
            last_due = due;
        }
    }

    #[test]
    fn two_links_do_not_wait_for_each_other() {
        let mut schedule = Schedule::new(LINK, 7);
        let start = Instant::now();
        let overtaken = (0..100u64)
            .filter(|pair| {
                let arrived = start + Duration::from_secs(*pair);
                let first = schedule.due(1, arrived);
                let second = schedule.due(2, arrived + Duration::from_micros(1));
                second < first
            })
            .count();
        assert!(overtaken > 0, "link 2 always waited for link 1");
    }
}
