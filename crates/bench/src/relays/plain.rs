//! The baseline: the least a UDP relay written on tokio can do per
//! datagram — read it, check that it comes from A or B, send it to the
//! other one.

use super::{loopback_socket, route};
use crate::generator::Route;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

const DATAGRAM_LEN_MAX: usize = 2_048;

pub struct PlainForwarder {
    task: JoinHandle<()>,
    port: u16,
    forwarded: Arc<AtomicU64>,
    send_failed: Arc<AtomicU64>,
}

/// Starts a forwarder between `a` and `b` on `runtime`.
pub fn start(
    runtime: &Runtime,
    a: SocketAddr,
    b: SocketAddr,
    payload_len: usize,
    buffer_bytes: usize,
) -> io::Result<(PlainForwarder, Route)> {
    let socket = loopback_socket(buffer_bytes)?;
    socket.set_nonblocking(true)?;
    let address = socket.local_addr()?;
    let socket = {
        let _runtime = runtime.enter();
        UdpSocket::from_std(socket)?
    };
    let forwarded = Arc::new(AtomicU64::new(0));
    let send_failed = Arc::new(AtomicU64::new(0));
    let task = runtime.spawn(forward(
        socket,
        (a, b),
        forwarded.clone(),
        send_failed.clone(),
    ));
    let forwarder = PlainForwarder {
        task,
        port: address.port(),
        forwarded,
        send_failed,
    };
    Ok((
        forwarder,
        route(address, &[], payload_len, Vec::new(), address),
    ))
}

async fn forward(
    socket: UdpSocket,
    (a, b): (SocketAddr, SocketAddr),
    forwarded: Arc<AtomicU64>,
    send_failed: Arc<AtomicU64>,
) {
    let mut buffer = vec![0u8; DATAGRAM_LEN_MAX];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let to = match from {
            from if from == a => b,
            from if from == b => a,
            _ => continue,
        };
        let counter = match socket.try_send_to(&buffer[..len], to) {
            Ok(_) => &forwarded,
            Err(_) => &send_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl PlainForwarder {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("forwarded", self.forwarded.load(Ordering::Relaxed)),
            ("send_failed", self.send_failed.load(Ordering::Relaxed)),
        ]
    }

    pub fn stop(self) {
        self.task.abort();
    }
}
