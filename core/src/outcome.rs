//! How a connection (or an HTTP request) ended: the access log's outcome
//! column, and the reason a refusal is counted under on the status page.
//!
//! One word per outcome, fixed: scripts and tests read them.

/// The outcome of a connection, as the access log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It ran its course.
    Ok,
    /// The client left before it finished its handshake.
    Aborted,
    /// A trusted balancer's PROXY header did not parse.
    BadProxyHeader,
    /// A handshake, a connect or a request head took too long.
    Timeout,
    /// No byte either way for `idle_timeout`.
    Idle,
    /// Still open when the shutdown grace ran out (or refused during it).
    Shutdown,
    /// A rule denied it.
    Denied,
    /// A connection limit was reached.
    Limit,
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
    /// The client asked for something the service does not do.
    Unsupported,
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
            Outcome::Timeout => "timeout",
            Outcome::Idle => "idle",
            Outcome::Shutdown => "shutdown",
            Outcome::Denied => "denied",
            Outcome::Limit => "limit",
            Outcome::Refused => "refused",
            Outcome::Unreachable => "unreachable",
            Outcome::Unresolved => "unresolved",
            Outcome::Error => "error",
            Outcome::Quit => "quit",
            Outcome::BadRequest => "bad-request",
            Outcome::BadGreeting => "bad-greeting",
            Outcome::LineTooLong => "line-too-long",
            Outcome::Unavailable => "unavailable",
            Outcome::AuthFailed => "auth-failed",
            Outcome::AuthRequired => "auth-required",
            Outcome::Unsupported => "unsupported",
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

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}
