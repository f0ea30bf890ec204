//! A small HTTP origin for the proxy tests: answers every request with one
//! fixed body and keeps each request head it read, so a test can tell what
//! reached it and whether through the proxy (Portico adds `Via: 1.1
//! portico` to what it forwards).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};

use crate::net::IO_TIMEOUT;
use crate::servers::Acceptor;

/// The longest request head an [`Origin`] reads.
const MAX_HEAD: usize = 64 * 1024;

/// An HTTP origin on `ip`:(a free port).
pub struct Origin {
    acceptor: Acceptor,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Origin {
    /// Starts an origin on `ip` answering `200 OK` with `body` (as
    /// text/html) and closing.
    pub fn start(ip: IpAddr, body: &'static str) -> Origin {
        let heads = Arc::new(Mutex::new(Vec::new()));
        let kept = heads.clone();
        let acceptor = Acceptor::start(ip, "origin", move |s, _| {
            serve(s, body, &kept);
        });
        Origin { acceptor, heads }
    }

    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// The request heads read so far, in order.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Reads one request head from `s`, keeps it in `heads` (before
/// answering: a client that has its answer finds it kept) and answers it.
fn serve(mut s: TcpStream, body: &str, heads: &Mutex<Vec<String>>) -> Option<()> {
    s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    s.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).ok()?;
        if n == 0 || head.len() > MAX_HEAD {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    heads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(String::from_utf8_lossy(&head).into_owned());
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(reply.as_bytes()).ok()?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    Some(())
}
