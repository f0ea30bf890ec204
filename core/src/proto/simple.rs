//! The gateways that only forward: SMTP (mail out) and NNTP (news). They
//! connect to the service's `destination` at accept and relay untouched
//! (STARTTLS included); what they add is saying a refusal in the
//! protocol's own words, since the client waits for a greeting.
//!
//! # States and exits
//!
//! ```text
//! accept ──► Connect(destination) ──connected──► relay untouched
//!                 └─failed──► the protocol's refusal line, close
//! ```

use std::net::SocketAddr;

use super::{Failure, Next, Outcome, Protocol, Scope, Target};
use crate::config::{Destination, Host};

#[derive(Debug)]
pub struct Simple {
    method: &'static str,
    denied: &'static str,
    unavailable: &'static str,
    limit: &'static str,
}

impl Simple {
    pub fn smtp() -> Self {
        Simple {
            method: "SMTP",
            denied: "554 5.7.1 access denied\r\n",
            unavailable: "421 4.3.0 mail server unavailable, try again later\r\n",
            limit: "421 4.7.0 too many connections, try again later\r\n",
        }
    }

    pub fn nntp() -> Self {
        Simple {
            method: "NNTP",
            denied: "502 access denied\r\n",
            unavailable: "400 news server unavailable\r\n",
            limit: "400 too many connections, try again later\r\n",
        }
    }
}

/// The connect target for a configured destination.
pub fn destination_target(d: &Destination) -> Target {
    match &d.host {
        Host::Ip(ip) => Target::Addr(SocketAddr::new(*ip, d.port)),
        Host::Name(n) => Target::Name(n.clone(), d.port),
    }
}

impl Protocol for Simple {
    fn start(&mut self, _reply: &mut Vec<u8>, scope: &mut Scope) -> Next {
        match &scope.service.destination {
            Some(d) => Next::Connect {
                target: destination_target(d),
                user: None,
            },
            // Validation requires a destination for these kinds.
            None => Next::Close(Outcome::Error),
        }
    }

    fn input(&mut self, _input: &[u8], _reply: &mut Vec<u8>, _scope: &mut Scope) -> (usize, Next) {
        // The client speaks only after the server's greeting; whatever it
        // sends early waits in the buffer and is relayed.
        (0, Next::Wait)
    }

    fn connected(&mut self, _: SocketAddr, _: &mut Vec<u8>, _: &mut Vec<u8>) -> Next {
        Next::Relay
    }

    fn failed(&mut self, why: Failure, reply: &mut Vec<u8>) {
        let line = match why {
            Failure::Denied | Failure::Quota => self.denied,
            Failure::Limit => self.limit,
            _ => self.unavailable,
        };
        reply.extend_from_slice(line.as_bytes());
    }

    fn method(&self) -> &'static str {
        self.method
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        let mut r = Vec::new();
        Simple::smtp().failed(Failure::Denied, &mut r);
        assert_eq!(r, b"554 5.7.1 access denied\r\n");
        r.clear();
        Simple::smtp().failed(Failure::Refused, &mut r);
        assert_eq!(r, b"421 4.3.0 mail server unavailable, try again later\r\n");
        r.clear();
        Simple::nntp().failed(Failure::Denied, &mut r);
        assert_eq!(r, b"502 access denied\r\n");
        r.clear();
        Simple::nntp().failed(Failure::TimedOut, &mut r);
        assert_eq!(r, b"400 news server unavailable\r\n");
    }
}
