//! `server.write_timeout`: a response body that the client stops reading for longer than the
//! timeout has its connection shut down, so a slow or vanished reader never holds a transfer (and
//! the file descriptor and lock behind it) open indefinitely.
//!
//! The dispatcher stops polling a body while the socket's send buffer is full, so a stall is seen
//! from outside the body: a watchdog task on the same worker thread checks when the body was last
//! polled and shuts the socket down; the dispatcher then fails its write and drops the connection.

use std::any::Any;
use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::dev::Extensions;

/// The connection's socket, recorded when it is accepted.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionFd(pub RawFd);

/// `HttpServer::on_connect` hook: remembers the socket of plain and TLS connections.
pub fn record_socket(conn: &dyn Any, data: &mut Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(ConnectionFd(tcp.as_raw_fd()));
    } else if let Some(tls) =
        conn.downcast_ref::<actix_tls::accept::openssl::TlsStream<actix_web::rt::net::TcpStream>>()
    {
        data.insert(ConnectionFd(tls.get_ref().as_raw_fd()));
    }
}

/// The state a body shares with its watchdog. Both live on one worker thread: the watchdog can
/// never run between the connection's close and the body's drop, so the fd is still this
/// connection's whenever `live` is true.
pub struct Progress {
    last_poll: Cell<Instant>,
    live: Cell<bool>,
}

impl Progress {
    pub fn touch(&self) {
        self.last_poll.set(Instant::now());
    }

    pub fn finish(&self) {
        self.live.set(false);
    }
}

/// Starts the watchdog of one response body; returns the handle the body updates.
pub fn watch(fd: ConnectionFd, timeout: Duration) -> Rc<Progress> {
    let progress = Rc::new(Progress { last_poll: Cell::new(Instant::now()), live: Cell::new(true) });
    let watched = Rc::clone(&progress);
    actix_web::rt::spawn(async move {
        let tick = (timeout / 4).max(Duration::from_millis(100));
        loop {
            actix_web::rt::time::sleep(tick).await;
            if !watched.live.get() {
                return;
            }
            if watched.last_poll.get().elapsed() >= timeout {
                log::warn!(timeout_ms = timeout.as_millis() as u64; "client stopped reading the response; connection closed");
                // SAFETY: `live` proves the connection (and so the fd) is still open on this thread.
                unsafe {
                    libc::shutdown(fd.0, libc::SHUT_RDWR);
                }
                watched.live.set(false);
                return;
            }
        }
    });
    progress
}
