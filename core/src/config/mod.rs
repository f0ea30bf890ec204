//! The configuration: the TOML file `docs/configuration.md` describes,
//! parsed and validated into a [`Config`].
//!
//! This module owns the configuration's types, its text format, the embedded
//! default ([`DEFAULT_TOML`]) and every rule about what a valid configuration
//! is. It does no I/O: [`parse`] takes the text and a file name (used only in
//! messages), and returns a `Config` or the first [`ConfigError`], which
//! carries the file and the 1-based line and column of the offending key or
//! value. [`load`] reads a file and the files its `include` names through a
//! runtime's [`Files`], merges them (`include`) and checks the result the
//! same way; the command line and SIGHUP both load through it.
//!
//! Invariants of a `Config` that [`parse`] returned (code using it may rely
//! on them and need not re-check):
//!
//! - every value is in range: ports 1–65535, durations > 0 (except
//!   `shutdown_grace`, which may be 0) and at most 365 days, `buffer` between
//!   1 KiB and 64 MiB, counts ≥ 1;
//! - `network.internal` is non-empty, has no duplicates and shares no address
//!   with `network.external`;
//! - there is at least one service; service names are unique; every service
//!   has at least one listen address, each one of the addresses of its side,
//!   and no two services (of the same protocol) share or overlap a listen
//!   address;
//! - `destination` is present exactly where the kind needs one
//!   (`mapped`, `smtp`, `nntp`), may be present for `pop3`, `telnet` and
//!   `ftp`, and is absent for `http`, `socks`, `auto` and `status`;
//! - a service on the external side is `mapped`, or is an explicit
//!   `open_proxy` (never `status`);
//! - options only appear on the kinds they apply to (`protocol = "udp"` and
//!   `send_proxy_protocol` on mapped, `connect_ports` on http and auto,
//!   `separator` on pop3, `auth` on http, socks, auto and telnet), and
//!   `auth = true` implies at least one user;
//! - `[pac] proxy`, when there is a `[pac]`, names an http or auto service;
//! - user names are unique, non-empty, without ':' or control characters;
//!   passwords are `Plain` (non-empty) or an argon2 PHC string;
//! - every rule names only existing services and users; only allow rules
//!   carry a `rate`; a rule's lists, when present, are non-empty;
//! - every service's kind and protocol is implemented ([`implemented_kind`]),
//!   unless the config came from [`parse_unchecked_kinds`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

mod doc;
mod include;
mod raw;
pub mod tls;
mod validate;
pub mod values;

#[cfg(test)]
mod tests;

pub use include::{load, rule_lines, Files, LoadError, Loaded};
pub use tls::Tls;

/// The configuration used when no `--config` is given: it serves right away
/// and listens on 127.0.0.1 only. The Debian package installs the same file
/// as /etc/portico/portico.toml.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// A configuration error: where (1-based line and column, counted in
/// characters) and what, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ConfigError {
    /// An error at byte offset `offset` of `text`.
    pub fn at(text: &str, file: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_column(text, offset);
        ConfigError {
            file: file.to_string(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// The 1-based line and column (in characters) of byte offset `offset`.
/// An offset past the end, or inside a character, is moved back to the
/// nearest character start.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Parses and validates a configuration. `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    validate::parse(text, file, true, None)
}

/// Like [`parse`], reading the files the configuration names (a service's
/// `tls` certificates) through `files`. (No `include`: that needs
/// [`load`].)
pub fn parse_with_files(
    text: &str,
    file: &str,
    files: &mut dyn Files,
) -> Result<Config, ConfigError> {
    validate::parse(text, file, true, Some(files))
}

/// Like [`parse`] but without the final check that every service's kind is
/// implemented in this version ([`implemented_kind`]). Everything else is
/// validated. For tests and tools that look at a configuration without
/// running it.
pub fn parse_unchecked_kinds(text: &str, file: &str) -> Result<Config, ConfigError> {
    validate::parse(text, file, false, None)
}

/// Whether this version of portico can run a service of `kind` over
/// `protocol`. Flip an arm to `true` when a kind lands.
pub fn implemented_kind(kind: ServiceKind, protocol: Transport) -> bool {
    use ServiceKind::*;
    use Transport::{Tcp, Udp};
    match (kind, protocol) {
        (Mapped, Tcp) => true,
        (Mapped, Udp) => true,
        (Http, Tcp) => true,
        (Http, Udp) => false,
        (Socks, Tcp) => true,
        (Socks, Udp) => false,
        (Auto, Tcp) => true,
        (Auto, Udp) => false,
        (Telnet, Tcp) => true,
        (Telnet, Udp) => false,
        (Smtp, Tcp) => true,
        (Smtp, Udp) => false,
        (Pop3, Tcp) => true,
        (Pop3, Udp) => false,
        (Nntp, Tcp) => true,
        (Nntp, Udp) => false,
        (Ftp, Tcp) => true,
        (Ftp, Udp) => false,
        (Status, Tcp) => true,
        (Status, Udp) => false,
        (Transparent, Tcp) => true,
        (Transparent, Udp) => false,
    }
}

/// What the runtime should log as a warning at every start (and reload) of
/// `config`, one message each, without a "warning:" prefix.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for ip in &config.network.internal {
        if ip.is_unspecified() {
            out.push(format!(
                "network.internal contains {ip}, so internal services listen on every address \
                 of this machine; list the LAN addresses instead to keep them off other networks"
            ));
        }
    }
    for s in &config.services {
        if s.side == ListenSide::External && s.kind != ServiceKind::Mapped {
            out.push(format!(
                "service '{}' is an open proxy on the external side (open_proxy = true)",
                s.name
            ));
        }
    }
    out
}

/// A validated configuration. See the module docs for its invariants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub network: Network,
    pub limits: Limits,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    pub process: ProcessConfig,
    pub users: Vec<User>,
    pub services: Vec<Service>,
    pub rules: Vec<Rule>,
    /// `[[quota]]`, in file order.
    pub quotas: Vec<Quota>,
    /// `[state]`.
    pub state: StateConfig,
    /// `[auth] helper`: checks users not in `[[user]]`.
    pub helper: Option<std::sync::Arc<HelperConfig>>,
    /// `[[parent]]`, in file order ([`Via::Parent`] indexes it).
    pub parents: Vec<Parent>,
    /// `[pac]`: the proxy auto-config file the http, auto and status
    /// services serve (none: they serve none).
    pub pac: Option<PacConfig>,
}

/// `[[parent]]`: an upstream proxy that connections can go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub name: String,
    pub kind: ParentKind,
    /// Its addresses, in file order; each with its text as written (the
    /// metrics' `address` label).
    pub addresses: Vec<(String, Destination)>,
    pub pick: Pick,
    /// Basic / RFC 1929 credentials, or the SOCKS4 user id (no password).
    pub user: Option<String>,
    pub password: Option<String>,
    /// Failures in a row that mark an address down.
    pub down_after: u32,
    /// How long a down address is left alone.
    pub retry_after: Duration,
    /// A PROXY header naming the LAN client, first on every connection.
    pub send_proxy_protocol: Option<ProxyVersion>,
}

/// What a parent speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParentKind {
    /// HTTP CONNECT (and plain requests in absolute form).
    Http,
    Socks5,
    /// SOCKS4, and SOCKS4a when given a name.
    Socks4,
}

impl ParentKind {
    pub fn name(self) -> &'static str {
        match self {
            ParentKind::Http => "http",
            ParentKind::Socks5 => "socks5",
            ParentKind::Socks4 => "socks4",
        }
    }
}

/// How a parent's address is chosen for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pick {
    /// The first that is up, in file order.
    Failover,
    /// Each new connection the next one that is up.
    RoundRobin,
    /// The client address picks one (the same client, the same address
    /// while it is up).
    ClientHash,
}

/// Where a service's or a rule's connections go: `via = "direct" | "NAME"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    Direct,
    /// Through `Config::parents[i]`.
    Parent(usize),
}

/// `[pac]`: what the served `FindProxyForURL` says (see `crate::pac`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacConfig {
    /// `proxy`: the http or auto service browsers are sent to.
    pub proxy: String,
    /// `direct`: destinations reached without the proxy.
    pub direct: Vec<DestPattern>,
    /// `fallback_direct`: `DIRECT` as the last resort when the proxies
    /// cannot be reached.
    pub fallback_direct: bool,
}

/// `[auth] helper` and its settings: an external program speaking the
/// Squid basic-auth helper protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HelperConfig {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// `helpers`: how many processes run at once.
    pub processes: u32,
    /// `helper_concurrency`: requests one process takes at once, each
    /// with a channel id (zero: one at a time, no channel id).
    pub concurrency: u32,
    /// `helper_timeout`: an answer later than this is a failure.
    pub timeout: Duration,
}

/// `[state]`: where counts that outlive the process are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateConfig {
    /// `dir`: none keeps the counts in memory only.
    pub dir: Option<PathBuf>,
    /// `redis`: the URL of the Redis (or Valkey) the counts are shared
    /// through; none shares nothing.
    pub redis: Option<RedisUrl>,
}

/// A `redis://` or `redis+unix://` URL, kept whole for the client and
/// shown without its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Checks the form only (scheme, something after it); the client
    /// reads the rest.
    pub fn parse(s: &str) -> Result<RedisUrl, String> {
        if s.starts_with("rediss://") || s.starts_with("valkeys://") {
            return Err(format!(
                "\"{}\": TLS to Redis is not built in; reach it over loopback, a unix socket \
                 (redis+unix:///run/redis/redis.sock) or a tunnel",
                RedisUrl(s.to_string()).shown()
            ));
        }
        let rest = [
            "redis://",
            "valkey://",
            "redis+unix://",
            "valkey+unix://",
            "unix://",
        ]
        .iter()
        .find_map(|p| s.strip_prefix(p));
        match rest {
            Some(r) if !r.is_empty() && !r.contains(char::is_whitespace) => {
                Ok(RedisUrl(s.to_string()))
            }
            _ => Err(format!(
                "\"{}\" is not a Redis URL; write it like \"redis://127.0.0.1:6379/0\" or \
                 \"redis+unix:///run/redis/redis.sock\"",
                RedisUrl(s.to_string()).shown()
            )),
        }
    }

    /// The URL as the client takes it (with any password).
    pub fn full(&self) -> &str {
        &self.0
    }

    /// The URL for logs and errors: a password in it is replaced by `***`.
    pub fn shown(&self) -> String {
        let s = &self.0;
        let Some((scheme, rest)) = s.split_once("://") else {
            return s.clone();
        };
        let host_end = rest.find('/').unwrap_or(rest.len());
        match rest[..host_end].rfind('@') {
            Some(at) => {
                let user = rest[..at].split(':').next().unwrap_or("");
                let sep = if rest[..at].contains(':') { ":***" } else { "" };
                format!("{scheme}://{user}{sep}@{}", &rest[at + 1..])
            }
            None => s.clone(),
        }
    }
}

/// One `[[quota]]`: a byte count per user (or client address) and period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub name: String,
    pub subjects: QuotaSubjects,
    /// Bytes both directions together, per subject and period.
    pub bytes: u64,
    pub per: crate::quota::Per,
}

/// Whom a quota counts: each listed user, or each client address in the
/// listed networks, has a count of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaSubjects {
    Users(Vec<String>),
    Clients(Vec<IpNet>),
}

impl Config {
    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The user called `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// LAN-facing addresses; never empty.
    pub internal: Vec<IpAddr>,
    /// Internet-facing addresses.
    pub external: Vec<IpAddr>,
    /// Source address for outgoing connections.
    pub outgoing: Option<IpAddr>,
    /// Source address for outgoing connections to IPv6 destinations.
    pub outgoing6: Option<IpAddr>,
}

impl Default for Network {
    /// `internal = ["127.0.0.1"]`, nothing else.
    fn default() -> Self {
        Network {
            internal: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            external: Vec::new(),
            outgoing: None,
            outgoing6: None,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_per_client: u32,
    /// Connections of one authenticated user at once; `None`: no cap.
    pub max_per_user: Option<u32>,
    pub connect_timeout: Duration,
    /// Happy Eyeballs: how long one connect attempt has alone before the
    /// next address is tried beside it.
    pub connect_attempt_delay: Duration,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    pub udp_idle_timeout: Duration,
    /// Bytes per direction per connection.
    pub buffer: usize,
    /// How long a password check's verdict is remembered (zero: never).
    pub auth_cache: Duration,
    /// Failed logins from one client address within a minute after which
    /// its further attempts are refused unchecked until the minute is over.
    pub auth_failures: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_per_client: 256,
            max_per_user: None,
            connect_timeout: Duration::from_secs(10),
            connect_attempt_delay: Duration::from_millis(250),
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(5 * 60),
            shutdown_grace: Duration::from_secs(10),
            udp_idle_timeout: Duration::from_secs(60),
            buffer: 64 * 1024,
            auth_cache: Duration::from_secs(5 * 60),
            auth_failures: 10,
        }
    }
}

/// The smallest `limits.buffer` accepted.
pub const MIN_BUFFER: usize = 1024;
/// The largest `limits.buffer` accepted.
pub const MAX_BUFFER: usize = 64 * 1024 * 1024;

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub access: AccessTarget,
    pub format: LogFormat,
    /// Where diagnostics (errors, warnings, notes) go.
    pub diagnostics: DiagnosticsTarget,
    /// The local syslog socket `"syslog"` targets send to.
    pub syslog_socket: PathBuf,
}

/// The local syslog socket when `[log] syslog_socket` is not given.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            access: AccessTarget::default(),
            format: LogFormat::default(),
            diagnostics: DiagnosticsTarget::default(),
            syslog_socket: PathBuf::from(DEFAULT_SYSLOG_SOCKET),
        }
    }
}

impl LogConfig {
    /// Whether anything goes to the syslog socket.
    pub fn uses_syslog(&self) -> bool {
        self.access == AccessTarget::Syslog || self.diagnostics == DiagnosticsTarget::Syslog
    }
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessTarget {
    #[default]
    Stderr,
    Off,
    /// The local syslog socket ([`LogConfig::syslog_socket`]).
    Syslog,
    /// Appended to this file (the path as written, relative paths unresolved).
    File(PathBuf),
}

/// Where diagnostic lines go (`[log] diagnostics`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DiagnosticsTarget {
    #[default]
    Stderr,
    /// The local syslog socket ([`LogConfig::syslog_socket`]).
    Syslog,
    /// Appended to this file (the path as written, relative paths unresolved).
    File(PathBuf),
}

/// `[process]`: whom the process runs as once its listeners are open.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessConfig {
    /// The user to switch to (a name from the password database).
    pub user: Option<String>,
    /// The group to switch to; `None` = the user's primary group. Only
    /// given with `user`.
    pub group: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeConfig {
    /// Event loops; `None` = one per core. At least 1 when set.
    pub workers: Option<usize>,
}

/// The largest `runtime.workers` accepted.
pub const MAX_WORKERS: usize = 1024;

/// `[[user]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: Password,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// An argon2 PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    Phc(String),
    /// A clear-text password (`"plain:SECRET"` in the file; this holds SECRET).
    Plain(String),
}

impl fmt::Debug for Password {
    /// Never shows a clear-text password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Password::Phc(s) => f.debug_tuple("Phc").field(s).finish(),
            Password::Plain(_) => f.write_str("Plain(\"***\")"),
        }
    }
}

/// `[[service]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub kind: ServiceKind,
    pub side: ListenSide,
    /// Resolved listen addresses; never empty.
    pub listen: Vec<SocketAddr>,
    pub auth: bool,
    /// http and auto CONNECT: allowed destination ports (default `[443]`).
    pub connect_ports: Vec<u16>,
    pub destination: Option<Destination>,
    pub protocol: Transport,
    pub open_proxy: bool,
    /// pop3: the `USER name#host` separator (default `#`).
    pub separator: String,
    /// Accept a PROXY v1/v2 header from `proxy_protocol_from`.
    pub proxy_protocol: bool,
    pub proxy_protocol_from: Vec<IpNet>,
    /// mapped: send a PROXY header of this version to the destination.
    pub send_proxy_protocol: Option<ProxyVersion>,
    /// Serve TLS first (http, socks, status).
    pub tls: Option<Tls>,
    /// `via`: where its connections go unless a rule says otherwise
    /// (`None`: direct).
    pub via: Option<Via>,
    /// Source address of this service's connections out.
    pub outgoing: Option<IpAddr>,
    /// socks: the commands it accepts (default all three).
    pub commands: SocksCommands,
    /// socks: the address a UDP ASSOCIATE reply names instead of the one
    /// the association's socket is bound to (behind address translation).
    pub udp_announce: Option<IpAddr>,
    /// transparent: the listener is an IP_TRANSPARENT socket for TPROXY
    /// rules (the original destination is the accepted socket's local
    /// address), rather than one nftables `redirect` sends to (read with
    /// SO_ORIGINAL_DST).
    pub tproxy: bool,
}

/// Which SOCKS commands a socks service accepts (`commands`); another is
/// answered "command not supported".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocksCommands {
    pub connect: bool,
    pub bind: bool,
    pub udp: bool,
}

impl Default for SocksCommands {
    fn default() -> Self {
        SocksCommands {
            connect: true,
            bind: true,
            udp: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    Http,
    Socks,
    /// HTTP, SOCKS4 and SOCKS5 on one port, told by the first byte.
    Auto,
    Mapped,
    Telnet,
    Smtp,
    Pop3,
    Nntp,
    Ftp,
    Status,
    /// Connections the firewall redirected (or TPROXY sent) here, carried
    /// to their original destination.
    Transparent,
}

impl ServiceKind {
    /// Every kind, in the order the reference lists them.
    pub const ALL: [ServiceKind; 11] = [
        ServiceKind::Http,
        ServiceKind::Socks,
        ServiceKind::Auto,
        ServiceKind::Mapped,
        ServiceKind::Telnet,
        ServiceKind::Smtp,
        ServiceKind::Pop3,
        ServiceKind::Nntp,
        ServiceKind::Ftp,
        ServiceKind::Status,
        ServiceKind::Transparent,
    ];

    /// The spelling in the configuration (`kind = "…"`).
    pub fn name(&self) -> &'static str {
        match self {
            ServiceKind::Http => "http",
            ServiceKind::Socks => "socks",
            ServiceKind::Auto => "auto",
            ServiceKind::Mapped => "mapped",
            ServiceKind::Telnet => "telnet",
            ServiceKind::Smtp => "smtp",
            ServiceKind::Pop3 => "pop3",
            ServiceKind::Nntp => "nntp",
            ServiceKind::Ftp => "ftp",
            ServiceKind::Status => "status",
            ServiceKind::Transparent => "transparent",
        }
    }

    /// "a" or "an", for messages that say "a socks service", "an auto
    /// service".
    pub fn article(&self) -> &'static str {
        match self {
            ServiceKind::Auto => "an",
            _ => "a",
        }
    }

    /// The kind spelled `name` in the configuration.
    pub fn from_name(name: &str) -> Option<ServiceKind> {
        ServiceKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The destination port used when `destination` gives none: the
    /// protocol's well-known port. `None` (port required) for mapped, and
    /// for the kinds that take no destination.
    pub fn default_destination_port(&self) -> Option<u16> {
        match self {
            ServiceKind::Telnet => Some(23),
            ServiceKind::Smtp => Some(25),
            ServiceKind::Pop3 => Some(110),
            ServiceKind::Nntp => Some(119),
            ServiceKind::Ftp => Some(21),
            ServiceKind::Http
            | ServiceKind::Socks
            | ServiceKind::Auto
            | ServiceKind::Mapped
            | ServiceKind::Status
            | ServiceKind::Transparent => None,
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ListenSide {
    #[default]
    Internal,
    External,
}

impl ListenSide {
    pub fn name(&self) -> &'static str {
        match self {
            ListenSide::Internal => "internal",
            ListenSide::External => "external",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
/// The transport a service carries (`protocol = "tcp" | "udp"`).
pub enum Transport {
    #[default]
    Tcp,
    Udp,
}

impl Transport {
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// Where a service connects: `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Destination {
    /// `host:port`, `[v6]:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            h => write!(f, "{h}:{}", self.port),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// A valid DNS name, lower-cased, without a trailing dot.
    Name(String),
}

impl fmt::Display for Host {
    /// The address or name, IPv6 without brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// `[[rule]]`. Matching is the caller's job; a list left empty here means
/// "any".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: RuleAction,
    /// Service names; empty = every service.
    pub services: Vec<String>,
    /// Client networks; empty = any client.
    pub clients: Vec<IpNet>,
    /// User names; empty = anyone.
    pub users: Vec<String>,
    /// Empty = anywhere.
    pub destinations: Vec<DestPattern>,
    /// Destination ports; empty = any.
    pub ports: Vec<RangeInclusive<u16>>,
    /// Bitmask, bit 0 = Monday … bit 6 = Sunday; `None` = every day.
    pub days: Option<u8>,
    /// Minutes since midnight, start included, end excluded (end may be
    /// 1440); crosses midnight when start > end. `None` = all day.
    pub hours: Option<(u16, u16)>,
    /// Bytes per second each way (allow rules only).
    pub rate: Option<u64>,
    /// Source address of the connections it allows (allow rules only).
    pub outgoing: Option<IpAddr>,
    /// `via` (allow rules only): wins over the service's.
    pub via: Option<Via>,
}

impl Rule {
    /// Whether `port` is one of the rule's ports (any port when none given).
    pub fn port_matches(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.iter().any(|r| r.contains(&port))
    }

    /// Whether the rule applies on `weekday` (0 = Monday … 6 = Sunday).
    pub fn day_matches(&self, weekday: u8) -> bool {
        match self.days {
            None => true,
            Some(mask) => weekday < 7 && mask & (1 << weekday) != 0,
        }
    }

    /// Whether the rule applies at `minute` minutes after midnight (0–1439).
    pub fn minute_matches(&self, minute: u16) -> bool {
        match self.hours {
            None => true,
            Some((start, end)) if start < end => (start..end).contains(&minute),
            Some((start, end)) => minute >= start || minute < end,
        }
    }

    /// Whether `service` is one of the rule's services (any when none given).
    pub fn service_matches(&self, service: &str) -> bool {
        self.services.is_empty() || self.services.iter().any(|s| s == service)
    }

    /// Whether `client` is in one of the rule's client networks (any when
    /// none given).
    pub fn client_matches(&self, client: IpAddr) -> bool {
        self.clients.is_empty() || self.clients.iter().any(|n| n.contains(&client))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleAction {
    Allow,
    Deny,
}

/// One entry of a rule's `destinations`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DestPattern {
    /// This host name exactly (lower-cased).
    Exact(String),
    /// Every name under this domain, not the domain itself:
    /// `"*.example.com"` is stored as `"example.com"`.
    Suffix(String),
    /// An IP network; a bare IP is a /32 or /128.
    Net(IpNet),
}

impl DestPattern {
    /// Whether the (lower-case, no trailing dot) host name `name` matches
    /// this pattern before any lookup. `Net` patterns match no name.
    pub fn matches_name(&self, name: &str) -> bool {
        match self {
            DestPattern::Exact(n) => n == name,
            DestPattern::Suffix(d) => {
                name.len() > d.len() + 1
                    && name.ends_with(d.as_str())
                    && name.as_bytes()[name.len() - d.len() - 1] == b'.'
            }
            DestPattern::Net(_) => false,
        }
    }

    /// Whether the address `ip` matches this pattern (only `Net` ones do).
    pub fn matches_ip(&self, ip: IpAddr) -> bool {
        match self {
            DestPattern::Net(n) => n.contains(&ip),
            DestPattern::Exact(_) | DestPattern::Suffix(_) => false,
        }
    }
}
