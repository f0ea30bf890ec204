//! HTTP replies read to the close: what the status service and the
//! proxy's own refusals answer (both close after one reply).

use std::io::{Read, Write};
use std::net::SocketAddr;

use crate::net::connect;

/// A reply: its status, head, header fields and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The status line and the header lines, without the blank line.
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first field called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A whole reply: an HTTP/1.x status line, header lines, and a body
    /// as long as its Content-Length says (when it says).
    pub fn parse(raw: &[u8]) -> Result<Reply, String> {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("no complete head in {:?}", String::from_utf8_lossy(raw)))?;
        let head = std::str::from_utf8(&raw[..end]).map_err(|e| format!("head not UTF-8: {e}"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
            return Err(format!("bad status line {status_line:?}"));
        };
        if !version.starts_with("HTTP/1.") {
            return Err(format!("bad status line {status_line:?}"));
        }
        let status: u16 = code
            .parse()
            .map_err(|_| format!("bad status code in {status_line:?}"))?;
        let mut headers = Vec::new();
        for l in lines {
            let (k, v) = l
                .split_once(':')
                .ok_or_else(|| format!("bad header line {l:?}"))?;
            headers.push((k.to_string(), v.trim().to_string()));
        }
        let body = String::from_utf8(raw[end + 4..].to_vec()).map_err(|e| format!("body: {e}"))?;
        let reply = Reply {
            status,
            head: head.to_string(),
            headers,
            body,
        };
        if let Some(cl) = reply.header("content-length") {
            let n: usize = cl
                .parse()
                .map_err(|_| format!("bad Content-Length {cl:?}"))?;
            if n != reply.body.len() {
                return Err(format!(
                    "Content-Length {n} but {} body bytes",
                    reply.body.len()
                ));
            }
        }
        Ok(reply)
    }
}

/// Sends `request` to `addr` on a new connection and reads the reply to
/// the close.
pub fn exchange(addr: SocketAddr, request: &str) -> Result<Reply, String> {
    let mut s = connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.write_all(request.as_bytes())
        .map_err(|e| format!("write the request: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read the reply: {e} (after {} bytes)", raw.len()))?;
    Reply::parse(&raw)
}
