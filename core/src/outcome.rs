//! How a connection (or an HTTP request) ended: the access log's outcome
//! column; and, when it was refused or could not reach its destination,
//! why ([`Cause`]): the access log's `err=`, the HTTP `Portico-Error`
//! header and the reason the status page counts it under.
//!
//! One word per outcome and per cause, fixed: scripts and tests read them.

/// The outcome of a connection, as the access log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It ran its course.
    Ok,
    /// The client left before it finished its handshake.
    Aborted,
    /// A trusted balancer's PROXY header did not parse.
    BadProxyHeader,
    /// A handshake or a request head took too long.
    Timeout,
    /// The destination did not answer within `connect_timeout` (its name's
    /// resolution included). Logged `timeout`, like [`Outcome::Timeout`].
    ConnectTimeout,
    /// No byte either way for `idle_timeout`.
    Idle,
    /// Still open when the shutdown grace ran out (or refused during it).
    Shutdown,
    /// A rule denied it.
    Denied,
    /// A connection limit was reached.
    Limit,
    /// The user's (or client address's) byte quota was used up.
    Quota,
    /// The destination refused the connection.
    Refused,
    /// The destination's network or host was unreachable.
    Unreachable,
    /// The destination's name did not resolve.
    Unresolved,
    /// A socket failed, or anything else went wrong.
    Error,
    /// The client said goodbye in its protocol (POP3, Telnet).
    Quit,
    /// The client's request was malformed.
    BadRequest,
    /// The server's greeting was not what its protocol says (POP3).
    BadGreeting,
    /// A command line was longer than its protocol allows (FTP).
    LineTooLong,
    /// The server could not be used (FTP).
    Unavailable,
    /// The credentials were wrong.
    AuthFailed,
    /// Credentials were needed and none could be given.
    AuthRequired,
    /// The client's address failed too many logins lately: refused
    /// without a check.
    Throttled,
    /// The client asked for something the service does not do.
    Unsupported,
    /// No parent proxy (`via`) could be reached or would connect onward.
    ParentFailed,
    /// A transparent service's connection that was not redirected to it.
    NotRedirected,
    /// An HTTP connection closed after a reply with this status.
    Http(u16),
}

impl Outcome {
    /// The access log's word for it.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Aborted => "aborted",
            Outcome::BadProxyHeader => "bad-proxy-header",
            Outcome::Timeout | Outcome::ConnectTimeout => "timeout",
            Outcome::Idle => "idle",
            Outcome::Shutdown => "shutdown",
            Outcome::Denied => "denied",
            Outcome::Limit => "limit",
            Outcome::Quota => "quota",
            Outcome::Refused => "refused",
            Outcome::Unreachable => "unreachable",
            Outcome::Unresolved => "unresolved",
            Outcome::Error => "error",
            Outcome::Quit => "quit",
            Outcome::BadRequest => "bad-request",
            Outcome::BadGreeting => "bad-greeting",
            Outcome::LineTooLong => "line-too-long",
            Outcome::Unavailable => "unavailable",
            Outcome::AuthFailed | Outcome::Throttled => "auth-failed",
            Outcome::AuthRequired => "auth-required",
            Outcome::Unsupported => "unsupported",
            Outcome::ParentFailed => "parent-failed",
            Outcome::NotRedirected => "not-redirected",
            Outcome::Http(status) => match status {
                400 => "400",
                403 => "403",
                407 => "407",
                408 => "408",
                414 => "414",
                431 => "431",
                501 => "501",
                502 => "502",
                503 => "503",
                504 => "504",
                505 => "505",
                508 => "508",
                _ => "error",
            },
        }
    }
}

impl Outcome {
    /// Why a connection that ended this way was refused or failed, if it
    /// was: a handshake timeout, an idle end, a shutdown, a socket error or
    /// a malformed request have none. An HTTP exchange carries its own
    /// cause (its status alone does not tell a 502's).
    pub fn cause(self) -> Option<Cause> {
        match self {
            Outcome::Denied => Some(Cause::Denied),
            Outcome::Limit => Some(Cause::Limit),
            Outcome::Quota => Some(Cause::Quota),
            Outcome::Refused => Some(Cause::ConnectRefused),
            Outcome::Unreachable => Some(Cause::Unreachable),
            Outcome::Unresolved => Some(Cause::DnsFailure),
            Outcome::ConnectTimeout => Some(Cause::ConnectTimeout),
            // Wrong credentials or none: either way the client must
            // authenticate (as HTTP's one 407 says for both).
            Outcome::AuthFailed | Outcome::AuthRequired => Some(Cause::AuthRequired),
            Outcome::Throttled => Some(Cause::Throttled),
            Outcome::ParentFailed => Some(Cause::ParentFailed),
            Outcome::NotRedirected => Some(Cause::NotRedirected),
            _ => None,
        }
    }
}

/// Why Portico refused a request, or could not connect where it asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    /// The destination's name did not resolve.
    DnsFailure,
    /// The destination refused the connection.
    ConnectRefused,
    /// The destination did not answer within `connect_timeout`.
    ConnectTimeout,
    /// The destination's network or host was unreachable.
    Unreachable,
    /// A rule denied it.
    Denied,
    /// An HTTP CONNECT to a port not in the service's `connect_ports`.
    PortDenied,
    /// The service needs a user and password, and none valid was given.
    AuthRequired,
    /// A connection limit (`max_connections`, `max_per_client`,
    /// `max_per_user`) was reached.
    Limit,
    /// The client's address failed `[limits] auth_failures` logins within
    /// a minute; it may try again once the minute is over.
    Throttled,
    /// The user's (or client address's) `[[quota]]` was used up.
    Quota,
    /// Every address of the parent proxy (`via`) was down, failed to
    /// connect, or refused to connect onward.
    ParentFailed,
    /// A connection came to a transparent service's port without the
    /// firewall redirecting it there (carrying it would loop).
    NotRedirected,
}

impl Cause {
    /// The word the access log, the `Portico-Error` header and the metrics
    /// say.
    pub fn word(self) -> &'static str {
        match self {
            Cause::DnsFailure => "dns-failure",
            Cause::ConnectRefused => "connect-refused",
            Cause::ConnectTimeout => "connect-timeout",
            Cause::Unreachable => "unreachable",
            Cause::Denied => "denied",
            Cause::PortDenied => "port-denied",
            Cause::AuthRequired => "auth-required",
            Cause::Limit => "limit",
            Cause::Throttled => "throttled",
            Cause::Quota => "quota",
            Cause::ParentFailed => "parent-failed",
            Cause::NotRedirected => "not-redirected",
        }
    }

    /// A failure to connect to the destination (counted in
    /// `portico_connect_errors_total`), rather than the proxy's own
    /// refusal (counted in `portico_refused_total`).
    pub fn is_connect_error(self) -> bool {
        matches!(
            self,
            Cause::DnsFailure
                | Cause::ConnectRefused
                | Cause::ConnectTimeout
                | Cause::Unreachable
                | Cause::ParentFailed
        )
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_causes() {
        assert_eq!(Outcome::Unresolved.cause(), Some(Cause::DnsFailure));
        assert_eq!(Outcome::Refused.cause(), Some(Cause::ConnectRefused));
        assert_eq!(Outcome::ConnectTimeout.cause(), Some(Cause::ConnectTimeout));
        assert_eq!(Outcome::ConnectTimeout.word(), "timeout");
        assert_eq!(Outcome::AuthFailed.cause(), Some(Cause::AuthRequired));
        for none in [
            Outcome::Ok,
            Outcome::Timeout,
            Outcome::Idle,
            Outcome::Shutdown,
            Outcome::Error,
            Outcome::BadRequest,
            Outcome::Http(502),
        ] {
            assert_eq!(none.cause(), None, "{none:?}");
        }
    }

    #[test]
    fn connect_errors_are_told_from_refusals() {
        let errors: Vec<&str> = [
            Cause::DnsFailure,
            Cause::ConnectRefused,
            Cause::ConnectTimeout,
            Cause::Unreachable,
            Cause::Denied,
            Cause::PortDenied,
            Cause::AuthRequired,
            Cause::Limit,
            Cause::Throttled,
            Cause::Quota,
            Cause::ParentFailed,
        ]
        .into_iter()
        .filter(|c| c.is_connect_error())
        .map(Cause::word)
        .collect();
        assert_eq!(
            errors,
            [
                "dns-failure",
                "connect-refused",
                "connect-timeout",
                "unreachable",
                "parent-failed"
            ]
        );
    }
}
