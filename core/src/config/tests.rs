use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use toml::Value;

use super::values::*;
use super::*;

const PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";

/// The full example configuration of the first edition's contract, verbatim except
/// for the password placeholder (`{PHC}` here).
const SPEC_EXAMPLE: &str = r#"[network]
internal = ["127.0.0.1", "192.168.1.1"]  # LAN-facing addresses (IPv4 or IPv6)
external = ["203.0.113.5"]               # Internet-facing addresses
outgoing = "203.0.113.5"                 # optional source address for connections out

[limits]
max_connections = 10000        # client connections at once, all services
max_per_client = 256           # client connections at once from one address
connect_timeout = "10s"
handshake_timeout = "30s"      # time to finish a request head / handshake / login
idle_timeout = "5m"            # no byte either way
shutdown_grace = "10s"
buffer = "64KiB"               # per direction per connection; the memory bound

[log]
access = "stderr"              # or a file path, or "off"; one line per finished connection
format = "text"                # or "json"

[[user]]
name = "alice"
password = "{PHC}"   # PHC string from `portico hash-password`; "plain:..." also accepted

[[service]]
name = "web"                   # unique; used in logs, rules and the status page
kind = "http"                  # http | socks | mapped | telnet | smtp | pop3 | nntp | ftp | status
port = 8080                    # opens on every internal address
# listen = ["127.0.0.1:8080"]  # or exact addresses instead of `port`
side = "internal"              # internal (default) | external
auth = false                   # true: clients must authenticate as a [[user]]
connect_ports = [443]          # http CONNECT: destination ports allowed (default [443])

[[service]]
name = "ssh-in"
kind = "mapped"
side = "external"              # an incoming mapped port
port = 2222
destination = "192.168.1.20:22"
protocol = "tcp"               # tcp (default) | udp

[[rule]]                       # first match wins; with no rules, all is allowed
action = "deny"                # allow | deny
services = ["web"]             # default: every service
clients = ["192.168.1.0/24"]   # default: any client address
users = ["alice"]              # default: anyone, authenticated or not
destinations = ["*.example.com", "10.0.0.0/8"]  # default: anywhere
ports = [25, "6660-6669"]      # destination ports; default: any
days = ["mon-fri"]             # default: every day
hours = "08:00-18:00"          # local time; default: all day
rate = "1MiB/s"                # allow only: a bandwidth cap each way, per user
                               # (per client address where there is no user)
"#;

fn spec_example() -> String {
    SPEC_EXAMPLE.replace("{PHC}", PHC)
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// A minimal valid config: one mapped port.
const MINIMAL: &str =
    "[[service]]\nname = \"m\"\nkind = \"mapped\"\nport = 2000\ndestination = \"10.0.0.1:22\"";

// ---------------------------------------------------------------------------
// The full example and the defaults

#[test]
fn spec_example_verbatim_is_refused_for_rate_on_deny() {
    // That example combines action = "deny" with rate (which it documents
    // as "allow only"); that is an error at the rate value.
    let e = parse_unchecked_kinds(&spec_example(), "spec.toml").unwrap_err();
    assert_eq!((e.line, e.column), (49, 8), "{e}");
    assert!(
        e.message.contains("rate only applies to allow rules"),
        "{e}"
    );
}

#[test]
fn spec_example_parses() {
    let text = spec_example().replace("action = \"deny\" ", "action = \"allow\"");
    let c = parse_unchecked_kinds(&text, "spec.toml").unwrap();
    assert_eq!(
        c.network,
        Network {
            internal: vec![v4(127, 0, 0, 1), v4(192, 168, 1, 1)],
            external: vec![v4(203, 0, 113, 5)],
            outgoing: Some(v4(203, 0, 113, 5)),
            outgoing6: None,
        }
    );
    assert_eq!(c.limits, Limits::default());
    assert_eq!(
        c.log,
        LogConfig {
            access: AccessTarget::Stderr,
            format: LogFormat::Text,
            diagnostics: DiagnosticsTarget::Stderr,
            syslog_socket: "/dev/log".into(),
        }
    );
    assert_eq!(c.process, ProcessConfig::default());
    assert_eq!(c.runtime, RuntimeConfig { workers: None });
    assert_eq!(
        c.users,
        vec![User {
            name: "alice".into(),
            password: Password::Phc(PHC.into())
        }]
    );
    assert_eq!(
        c.services,
        vec![
            Service {
                name: "web".into(),
                kind: ServiceKind::Http,
                side: ListenSide::Internal,
                listen: vec![sa("127.0.0.1:8080"), sa("192.168.1.1:8080")],
                auth: false,
                connect_ports: vec![443],
                destination: None,
                protocol: Transport::Tcp,
                open_proxy: false,
                separator: "#".into(),
                proxy_protocol: false,
                proxy_protocol_from: vec![],
                send_proxy_protocol: None,
                commands: SocksCommands::default(),
                udp_announce: None,
                tproxy: false,
                outgoing: None,
                via: None,
                tls: None,
            },
            Service {
                name: "ssh-in".into(),
                kind: ServiceKind::Mapped,
                side: ListenSide::External,
                listen: vec![sa("203.0.113.5:2222")],
                auth: false,
                connect_ports: vec![443],
                destination: Some(Destination {
                    host: Host::Ip(v4(192, 168, 1, 20)),
                    port: 22
                }),
                protocol: Transport::Tcp,
                open_proxy: false,
                separator: "#".into(),
                proxy_protocol: false,
                proxy_protocol_from: vec![],
                send_proxy_protocol: None,
                commands: SocksCommands::default(),
                udp_announce: None,
                tproxy: false,
                outgoing: None,
                via: None,
                tls: None,
            },
        ]
    );
    assert_eq!(
        c.rules,
        vec![Rule {
            action: RuleAction::Allow,
            services: vec!["web".into()],
            clients: vec![net("192.168.1.0/24")],
            users: vec!["alice".into()],
            destinations: vec![
                DestPattern::Suffix("example.com".into()),
                DestPattern::Net(net("10.0.0.0/8")),
            ],
            ports: vec![25..=25, 6660..=6669],
            days: Some(0b001_1111),
            hours: Some((8 * 60, 18 * 60)),
            rate: Some(1 << 20),
            outgoing: None,
            via: None,
        }]
    );
    assert!(warnings(&c).is_empty());
    // Runnable once every kind it names is implemented; until then refused
    // at a kind, never for anything else.
    if let Err(e) = parse(&text, "spec.toml") {
        assert!(
            e.message.contains("is not available in this version"),
            "{e}"
        );
    }
}

#[test]
fn default_toml() {
    let c = parse_unchecked_kinds(DEFAULT_TOML, "(embedded)").unwrap();
    assert_eq!(c.network, Network::default());
    assert_eq!(c.network.internal, vec![v4(127, 0, 0, 1)]);
    let got: Vec<(&str, ServiceKind, Vec<SocketAddr>)> = c
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.kind, s.listen.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("web", ServiceKind::Http, vec![sa("127.0.0.1:8080")]),
            ("socks", ServiceKind::Socks, vec![sa("127.0.0.1:1080")]),
            ("status", ServiceKind::Status, vec![sa("127.0.0.1:8081")]),
        ]
    );
    assert!(c.services.iter().all(|s| s.side == ListenSide::Internal));
    assert!(c.rules.is_empty() && c.users.is_empty());
    assert!(warnings(&c).is_empty());
    // Runnable once every kind it names is implemented; until then refused
    // at a kind, never for anything else.
    if let Err(e) = parse(DEFAULT_TOML, "(embedded)") {
        assert!(
            e.message.contains("is not available in this version"),
            "{e}"
        );
    }
}

#[test]
fn defaults_of_a_minimal_config() {
    let c = parse(MINIMAL, "m.toml").unwrap();
    assert_eq!(c.network.internal, vec![v4(127, 0, 0, 1)]);
    assert!(c.network.external.is_empty());
    assert_eq!(c.network.outgoing, None);
    assert_eq!(c.network.outgoing6, None);
    let l = &c.limits;
    assert_eq!(l.connect_attempt_delay, Duration::from_millis(250));
    assert_eq!(l.max_connections, 10_000);
    assert_eq!(l.max_per_client, 256);
    assert_eq!(l.connect_timeout, Duration::from_secs(10));
    assert_eq!(l.handshake_timeout, Duration::from_secs(30));
    assert_eq!(l.idle_timeout, Duration::from_secs(300));
    assert_eq!(l.shutdown_grace, Duration::from_secs(10));
    assert_eq!(l.udp_idle_timeout, Duration::from_secs(60));
    assert_eq!(l.buffer, 65_536);
    assert_eq!(c.log.access, AccessTarget::Stderr);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.runtime.workers, None);
    let s = &c.services[0];
    assert_eq!(s.side, ListenSide::Internal);
    assert_eq!(s.protocol, Transport::Tcp);
    assert!(!s.auth && !s.open_proxy && !s.proxy_protocol);
    assert_eq!(s.connect_ports, vec![443]);
    assert_eq!(s.separator, "#");
    assert_eq!(s.send_proxy_protocol, None);
    assert_eq!(s.listen, vec![sa("127.0.0.1:2000")]);
    assert_eq!(s.destination.as_ref().unwrap().to_string(), "10.0.0.1:22");
}

#[test]
fn network_section_without_internal_keeps_the_default() {
    let text = format!("[network]\nexternal = [\"203.0.113.5\"]\n{MINIMAL}");
    let c = parse(&text, "f").unwrap();
    assert_eq!(c.network.internal, vec![v4(127, 0, 0, 1)]);
    assert_eq!(c.network.external, vec![v4(203, 0, 113, 5)]);
}

#[test]
fn every_key_set() {
    let text = format!(
        r#"
[network]
internal = ["192.168.1.1", "fd00::1"]
external = ["203.0.113.5", "2001:db8::5"]
outgoing = "203.0.113.5"
outgoing6 = "2001:db8::5"

[limits]
max_connections = 5
max_per_client = 2
connect_timeout = 3
connect_attempt_delay = "100ms"
handshake_timeout = "250ms"
idle_timeout = "1h"
shutdown_grace = "0s"
udp_idle_timeout = "2m"
buffer = "16KB"
auth_cache = "0s"
auth_failures = 3

[log]
access = "/var/log/portico/access.log"
format = "json"

[runtime]
workers = 4

[[user]]
name = "bob"
password = "plain:hunter2"

[[user]]
name = "alice@example.com"
password = "{PHC}"

[[service]]
name = "web"
kind = "http"
listen = ["[fd00::1]:3128"]
auth = true
connect_ports = [443, 8443, 443]
proxy_protocol = true
proxy_protocol_from = ["192.168.1.7", "10.9.8.7/8"]

[[service]]
name = "pub"
kind = "socks"
side = "external"
open_proxy = true
port = 1080

[[service]]
name = "mail-in"
kind = "pop3"
port = 110
separator = "%%"

[[service]]
name = "mail-out"
kind = "smtp"
port = 25
destination = "SMTP.Example.NET."

[[service]]
name = "dns"
kind = "mapped"
protocol = "udp"
listen = ["192.168.1.1:53"]
destination = "[2001:db8::53]:53"

[[service]]
name = "dns-tcp"
kind = "mapped"
listen = ["192.168.1.1:53"]
destination = "[2001:db8::53]:53"
send_proxy_protocol = "v2"

[[service]]
name = "tn"
kind = "telnet"
port = 23
destination = "bbs.example.org"

[[rule]]
action = "allow"
rate = 1000

[[rule]]
action = "deny"
days = ["SAT", "sun", "fri-mon"]
hours = "22:00-06:00"
ports = ["80", 443]
destinations = ["Example.COM", "2001:db8::/32", "10.1.2.3"]
clients = ["192.168.1.77/24"]
"#
    );
    let c = parse_unchecked_kinds(&text, "f").unwrap();
    assert_eq!(
        c.network.internal,
        vec![v4(192, 168, 1, 1), "fd00::1".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(c.network.outgoing, Some(v4(203, 0, 113, 5)));
    assert_eq!(
        c.network.outgoing6,
        Some("2001:db8::5".parse::<IpAddr>().unwrap())
    );
    assert_eq!(
        c.limits,
        Limits {
            max_connections: 5,
            max_per_client: 2,
            max_per_user: None,
            connect_timeout: Duration::from_secs(3),
            connect_attempt_delay: Duration::from_millis(100),
            handshake_timeout: Duration::from_millis(250),
            idle_timeout: Duration::from_secs(3600),
            shutdown_grace: Duration::ZERO,
            udp_idle_timeout: Duration::from_secs(120),
            buffer: 16_000,
            auth_cache: Duration::ZERO,
            auth_failures: 3,
        }
    );
    assert_eq!(
        c.log.access,
        AccessTarget::File("/var/log/portico/access.log".into())
    );
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.runtime.workers, Some(4));
    assert_eq!(c.users[0].password, Password::Plain("hunter2".into()));
    assert_eq!(format!("{:?}", c.users[0].password), "Plain(\"***\")");
    assert_eq!(
        c.user("alice@example.com").unwrap().password,
        Password::Phc(PHC.into())
    );

    let web = c.service("web").unwrap();
    assert_eq!(web.listen, vec![sa("[fd00::1]:3128")]);
    assert!(web.auth && web.proxy_protocol);
    assert_eq!(web.connect_ports, vec![443, 8443]);
    assert_eq!(
        web.proxy_protocol_from,
        vec![net("192.168.1.7/32"), net("10.0.0.0/8")]
    );

    let public = c.service("pub").unwrap();
    assert_eq!(public.side, ListenSide::External);
    assert_eq!(
        public.listen,
        vec![sa("203.0.113.5:1080"), sa("[2001:db8::5]:1080")]
    );
    assert_eq!(
        warnings(&c),
        vec!["service 'pub' is an open proxy on the external side (open_proxy = true)".to_string()]
    );

    let pop = c.service("mail-in").unwrap();
    assert_eq!(pop.separator, "%%");
    assert_eq!(pop.destination, None);
    assert_eq!(pop.listen, vec![sa("192.168.1.1:110"), sa("[fd00::1]:110")]);

    let smtp = c.service("mail-out").unwrap();
    assert_eq!(
        smtp.destination,
        Some(Destination {
            host: Host::Name("smtp.example.net".into()),
            port: 25
        })
    );

    let dns = c.service("dns").unwrap();
    assert_eq!(dns.protocol, Transport::Udp);
    assert_eq!(
        dns.destination.as_ref().unwrap().to_string(),
        "[2001:db8::53]:53"
    );
    // The same address and port over tcp is no conflict.
    let dns_tcp = c.service("dns-tcp").unwrap();
    assert_eq!(dns_tcp.protocol, Transport::Tcp);
    assert_eq!(dns_tcp.send_proxy_protocol, Some(ProxyVersion::V2));

    assert_eq!(
        c.service("tn")
            .unwrap()
            .destination
            .as_ref()
            .unwrap()
            .to_string(),
        "bbs.example.org:23"
    );

    assert_eq!(c.rules[0].rate, Some(1000));
    assert_eq!(c.rules[0].action, RuleAction::Allow);
    let r = &c.rules[1];
    assert_eq!(r.days, Some(0b111_0001));
    assert_eq!(r.hours, Some((22 * 60, 6 * 60)));
    assert_eq!(r.ports, vec![80..=80, 443..=443]);
    assert_eq!(
        r.destinations,
        vec![
            DestPattern::Exact("example.com".into()),
            DestPattern::Net(net("2001:db8::/32")),
            DestPattern::Net(net("10.1.2.3/32")),
        ]
    );
    assert_eq!(r.clients, vec![net("192.168.1.0/24")]);
    // Refused, if at all, only for a kind or protocol not implemented yet.
    if let Err(e) = parse(&text, "f") {
        assert!(e.message.contains("not available in this version"), "{e}");
    }
}

// ---------------------------------------------------------------------------
// Every validation error, with its position

/// `(what, config lines, line, column, part of the message)`.
type Case = (
    &'static str,
    &'static [&'static str],
    usize,
    usize,
    &'static str,
);

const M: &str = "kind = \"mapped\"";
const D: &str = "destination = \"10.0.0.1:22\"";

#[rustfmt::skip]
const CASES: &[Case] = &[
    // TOML itself
    ("syntax error", &["[[service]]", "name = \"x"], 2, 10, "invalid basic string"),
    ("unknown table", &["[netwrok]"], 1, 2, "unknown field `netwrok`"),
    ("unknown key in service", &["[[service]]", "name = \"m\"", M, "prot = 5"], 4, 1, "unknown field `prot`"),
    ("unknown key in network", &["[network]", "internal = []", "bad = 1"], 3, 1, "unknown field `bad`"),
    ("unknown key in limits", &["[limits]", "timeout = \"1s\""], 2, 1, "unknown field `timeout`"),
    ("unknown key in log", &["[log]", "level = \"x\""], 2, 1, "unknown field `level`"),
    ("unknown key in runtime", &["[runtime]", "threads = 1"], 2, 1, "unknown field `threads`"),
    ("unknown key in user", &["[[user]]", "name = \"a\"", "password = \"plain:x\"", "pass = 1"], 4, 1, "unknown field `pass`"),
    ("unknown key in rule", &["[[rule]]", "action = \"allow\"", "service = [\"m\"]"], 3, 1, "unknown field `service`"),
    ("wrong type", &["[[service]]", "name = \"m\"", M, "port = \"2000\""], 4, 8, "invalid type: string \"2000\""),
    ("wrong type in list", &["[network]", "internal = [\"127.0.0.1\", 7]"], 2, 26, "invalid type: integer `7`"),
    ("missing kind", &["", "[[service]]", "name = \"m\""], 2, 1, "missing field `kind`"),
    ("missing action", &["[[rule]]", "services = []"], 1, 1, "missing field `action`"),
    ("duplicate key", &["[[service]]", "name = \"m\"", "name = \"n\""], 3, 1, "duplicate key"),

    // network
    ("internal empty", &["[network]", "internal = []"], 2, 12, "network.internal is empty"),
    ("internal not an ip", &["[network]", "internal = [\"lan0\"]"], 2, 13, "network.internal: \"lan0\" is not an IP address"),
    ("internal with port", &["[network]", "internal = [\"127.0.0.1:80\"]"], 2, 13, "not an IP address"),
    ("internal twice", &["[network]", "internal = [\"10.0.0.1\", \"10.0.0.1\"]"], 2, 25, "10.0.0.1 is listed twice"),
    ("internal and external overlap", &["[network]", "internal = [\"10.0.0.1\"]", "external = [\"1.2.3.4\", \"10.0.0.1\"]"], 3, 24, "10.0.0.1 is in both network.internal and network.external"),
    ("v6 wildcard overlap", &["[network]", "internal = [\"::\"]", "external = [\"1.2.3.4\"]"], 3, 13, "overlaps network.internal address ::"),
    ("wildcard overlap", &["[network]", "internal = [\"0.0.0.0\"]", "external = [\"1.2.3.4\"]"], 3, 13, "overlaps network.internal address 0.0.0.0"),
    ("outgoing with port", &["[network]", "outgoing = \"1.2.3.4:80\""], 2, 12, "network.outgoing must be a plain IP address"),
    ("outgoing cidr", &["[network]", "outgoing = \"1.2.3.0/24\""], 2, 12, "network.outgoing must be a plain IP address"),
    ("outgoing name", &["[network]", "outgoing = \"gw.example\""], 2, 12, "no host name"),
    ("outgoing not external", &["[network]", "outgoing = \"1.2.3.4\""], 2, 12, "network.outgoing = \"1.2.3.4\" is not one of the external addresses (network.external is empty); add it to network.external"),
    ("outgoing6 not external", &["[network]", "external = [\"1.2.3.4\"]", "outgoing6 = \"2001:db8::1\""], 3, 13, "(network.external is [1.2.3.4])"),
    ("outgoing6 ipv4", &["[network]", "external = [\"1.2.3.4\"]", "outgoing6 = \"1.2.3.4\""], 3, 13, "network.outgoing6 is the source of connections to IPv6 destinations and must be an IPv6 address"),
    ("service outgoing not external", &["[[service]]", "name = \"m\"", M, "port = 2000", "destination = \"10.0.0.1:22\"", "outgoing = \"9.9.9.9\""], 6, 12, "service 'm': outgoing = \"9.9.9.9\" is not one of the external addresses"),
    ("status outgoing", &["[network]", "external = [\"1.2.3.4\"]", "[[service]]", "name = \"s\"", "kind = \"status\"", "port = 2001", "outgoing = \"1.2.3.4\""], 7, 12, "outgoing does not apply to a status service"),
    ("rule outgoing not external", &[MINIMAL, "[[rule]]", "action = \"allow\"", "outgoing = \"9.9.9.9\""], 8, 12, "rule outgoing = \"9.9.9.9\" is not one of the external addresses"),
    ("rule outgoing on deny", &[MINIMAL, "[[rule]]", "action = \"deny\"", "outgoing = \"9.9.9.9\""], 8, 12, "outgoing only applies to allow rules"),
    ("zero attempt delay", &["[limits]", "connect_attempt_delay = \"0s\""], 2, 25, "limits.connect_attempt_delay must be more than zero"),

    // limits, log, runtime
    ("zero connections", &["[limits]", "max_connections = 0"], 2, 19, "limits.max_connections: 0 is out of range"),
    ("negative per client", &["[limits]", "max_per_client = -1"], 2, 18, "limits.max_per_client: -1 is out of range"),
    ("huge connections", &["[limits]", "max_connections = 5000000000"], 2, 19, "out of range"),
    ("zero timeout", &["[limits]", "connect_timeout = \"0s\""], 2, 19, "limits.connect_timeout must be more than zero"),
    ("zero idle (integer)", &["[limits]", "idle_timeout = 0"], 2, 16, "limits.idle_timeout must be more than zero"),
    ("zero udp idle", &["[limits]", "udp_idle_timeout = \"0ms\""], 2, 20, "limits.udp_idle_timeout must be more than zero"),
    ("zero handshake", &["[limits]", "handshake_timeout = \"0m\""], 2, 21, "limits.handshake_timeout must be more than zero"),
    ("bad duration unit", &["[limits]", "connect_timeout = \"10x\""], 2, 19, "unknown unit 'x'"),
    ("duration without unit", &["[limits]", "connect_timeout = \"10\""], 2, 19, "has no unit"),
    ("duration of wrong type", &["[limits]", "connect_timeout = 1.5"], 2, 19, "expected a duration, found a float"),
    ("negative duration", &["[limits]", "shutdown_grace = -5"], 2, 18, "cannot be negative"),
    ("buffer too small", &["[limits]", "buffer = \"1000B\""], 2, 10, "limits.buffer is 1000 bytes; it must be between 1KiB and 64MiB"),
    ("buffer too large", &["[limits]", "buffer = \"65MiB\""], 2, 10, "between 1KiB and 64MiB"),
    ("buffer bad unit", &["[limits]", "buffer = \"64kbit\""], 2, 10, "unknown unit 'kbit'"),
    ("log access empty", &["[log]", "access = \"\""], 2, 10, "log.access: empty"),
    ("log access stdout", &["[log]", "access = \"stdout\""], 2, 10, "\"stdout\" is not supported"),
    ("log format", &["[log]", "format = \"xml\""], 2, 10, "log.format: \"xml\" is not a log format"),
    ("workers zero", &["[runtime]", "workers = 0"], 2, 11, "runtime.workers: 0 is out of range"),

    // users
    ("user name empty", &["[[user]]", "name = \"\"", "password = \"plain:x\""], 2, 8, "a user name must not be empty"),
    ("user name with colon", &["[[user]]", "name = \"a:b\"", "password = \"plain:x\""], 2, 8, "contains ':'"),
    ("user name with NUL", &["[[user]]", "name = \"a\\u0000b\"", "password = \"plain:x\""], 2, 8, "control character"),
    ("user twice", &["[[user]]", "name = \"a\"", "password = \"plain:x\"", "[[user]]", "name = \"a\"", "password = \"plain:y\""], 5, 8, "user 'a' is defined twice (first on line 2)"),
    ("password neither", &["[[user]]", "name = \"a\"", "password = \"secret\""], 3, 12, "user 'a': the password is neither a PHC hash nor \"plain:...\"; run `portico hash-password`"),
    ("password placeholder", &["[[user]]", "name = \"a\"", "password = \"$argon2id$v=19$...\""], 3, 12, "not a valid PHC hash"),
    ("password bcrypt", &["[[user]]", "name = \"a\"", "password = \"$2b$12$abcdefghijklmnopqrstuv\""], 3, 12, "argon2id, argon2i or argon2d"),
    ("password no hash", &["[[user]]", "name = \"a\"", "password = \"$argon2id$v=19$m=1,t=1,p=1$c2FsdA\""], 3, 12, "run `portico hash-password`"),
    ("password plain empty", &["[[user]]", "name = \"a\"", "password = \"plain:\""], 3, 12, "the plain password is empty"),

    // services: names, kinds, sides
    ("no service", &["[network]", "internal = [\"127.0.0.1\"]"], 1, 1, "no [[service]] is configured"),
    ("empty file", &[""], 1, 1, "no [[service]] is configured"),
    ("service name empty", &["[[service]]", "name = \"\"", M, "port = 1", D], 2, 8, "a service name must not be empty"),
    ("service name with space", &["[[service]]", "name = \"my web\"", M, "port = 1", D], 2, 8, "contains whitespace"),
    ("duplicate service", &["[[service]]", "name = \"m\"", M, "port = 1", D, "[[service]]", "name = \"m\"", M, "port = 2", D], 7, 8, "service 'm' is defined twice (first on line 2)"),
    ("unknown kind", &["[[service]]", "name = \"m\"", "kind = \"htp\"", "port = 1"], 3, 8, "unknown kind \"htp\"; use one of http, socks, auto, mapped"),
    ("bad side", &["[[service]]", "name = \"m\"", M, "side = \"outside\"", "port = 1", D], 4, 8, "side \"outside\" is not"),
    ("bad protocol", &["[[service]]", "name = \"m\"", M, "protocol = \"sctp\"", "port = 1", D], 4, 12, "protocol \"sctp\""),
    ("open proxy", &["[network]", "external = [\"203.0.113.5\"]", "[[service]]", "name = \"web\"", "kind = \"http\"", "side = \"external\"", "port = 8080"], 6, 8, "service 'web': a http service with side = \"external\" would be an open proxy on the Internet side"),
    ("open socks", &["[network]", "external = [\"203.0.113.5\"]", "[[service]]", "name = \"s\"", "kind = \"socks\"", "port = 1080", "side = \"external\""], 7, 8, "open proxy on the Internet side"),
    ("open pop3", &["[network]", "external = [\"203.0.113.5\"]", "[[service]]", "name = \"p\"", "kind = \"pop3\"", "port = 110", "side = \"external\"", "open_proxy = false"], 7, 8, "open_proxy = true"),
    ("status external", &["[network]", "external = [\"203.0.113.5\"]", "[[service]]", "name = \"st\"", "kind = \"status\"", "side = \"external\"", "open_proxy = true", "port = 8081"], 6, 8, "the status page is internal only"),
    ("external side but no external addresses", &["[[service]]", "name = \"m\"", M, "side = \"external\"", "port = 1", D], 4, 8, "network.external is empty"),

    // port / listen
    ("port and listen", &["[[service]]", "name = \"m\"", M, "port = 1", "listen = [\"127.0.0.1:1\"]", D], 5, 10, "either port", ),
    ("neither port nor listen", &["[[service]]", "name = \"m\"", M, D], 1, 1, "service 'm': needs a port"),
    ("port zero", &["[[service]]", "name = \"m\"", M, "port = 0", D], 4, 8, "port 0 is out of range"),
    ("port too big", &["[[service]]", "name = \"m\"", M, "port = 65536", D], 4, 8, "port 65536 is out of range"),
    ("port negative", &["[[service]]", "name = \"m\"", M, "port = -22", D], 4, 8, "port -22 is out of range"),
    ("listen empty", &["[[service]]", "name = \"m\"", M, "listen = []", D], 4, 10, "listen is empty"),
    ("listen port zero", &["[[service]]", "name = \"m\"", M, "listen = [\"127.0.0.1:0\"]", D], 4, 11, "port 0 is out of range"),
    ("listen port too big", &["[[service]]", "name = \"m\"", M, "listen = [\"127.0.0.1:70000\"]", D], 4, 11, "port 70000 is out of range"),
    ("listen no port", &["[[service]]", "name = \"m\"", M, "listen = [\"127.0.0.1\"]", D], 4, 11, "has no port"),
    ("listen name", &["[[service]]", "name = \"m\"", M, "listen = [\"localhost:80\"]", D], 4, 11, "is not an IP address and port"),
    ("listen v6 unbracketed", &["[network]", "internal = [\"::1\"]", "[[service]]", "name = \"m\"", M, "listen = [\"::1:80\"]", D], 6, 11, "in brackets"),
    ("listen not internal", &["[[service]]", "name = \"m\"", M, "listen = [\"127.0.0.1:1\", \"10.0.0.1:1\"]", D], 4, 26, "service 'm': listen address 10.0.0.1:1 is not one of network.internal; add it to network.internal"),
    ("listen on external from internal side", &["[network]", "external = [\"203.0.113.5\"]", "[[service]]", "name = \"m\"", M, "listen = [\"203.0.113.5:1\"]", D], 6, 11, "is not one of network.internal; it is one of network.external"),
    ("listen not external", &["[network]", "external = [\"203.0.113.5\"]", "[[service]]", "name = \"ssh-in\"", M, "side = \"external\"", "listen = [\"10.0.0.1:22\"]", D], 7, 11, "service 'ssh-in': listen address 10.0.0.1:22 is not one of network.external; add it there or use side = \"internal\""),
    ("duplicate listen via port", &["[[service]]", "name = \"a\"", M, "port = 7", D, "[[service]]", "name = \"b\"", M, "port = 7", D], 9, 8, "service 'b': listen address 127.0.0.1:7 (tcp) is already used by service 'a'"),
    ("duplicate listen via listen", &["[network]", "internal = [\"127.0.0.1\", \"10.0.0.1\"]", "[[service]]", "name = \"a\"", M, "port = 7", D, "[[service]]", "name = \"b\"", M, "listen = [\"127.0.0.1:8\", \"10.0.0.1:7\"]", D], 11, 26, "listen address 10.0.0.1:7 (tcp) is already used by service 'a'"),
    ("duplicate listen in one service", &["[[service]]", "name = \"a\"", M, "listen = [\"127.0.0.1:7\", \"127.0.0.1:7\"]", D], 4, 26, "already used by service 'a'; list each address once"),
    ("duplicate udp listen", &["[[service]]", "name = \"a\"", M, "protocol = \"udp\"", "port = 53", D, "[[service]]", "name = \"b\"", M, "protocol = \"udp\"", "port = 53", D], 11, 8, "(udp) is already used by service 'a'"),
    ("wildcard listen overlap", &["[network]", "internal = [\"0.0.0.0\", \"127.0.0.1\"]", "[[service]]", "name = \"a\"", M, "listen = [\"0.0.0.0:7\"]", D, "[[service]]", "name = \"b\"", M, "listen = [\"127.0.0.1:7\"]", D], 11, 11, "overlaps 0.0.0.0:7 of service 'a'"),

    // destination
    ("mapped without destination", &["[[service]]", "name = \"m\"", M, "port = 1"], 1, 1, "service 'm': a mapped service needs a destination"),
    ("smtp without destination", &["[[service]]", "name = \"mail\"", "kind = \"smtp\"", "port = 25"], 1, 1, "a smtp service needs a destination"),
    ("nntp without destination", &["[[service]]", "name = \"news\"", "kind = \"nntp\"", "port = 119"], 1, 1, "a nntp service needs a destination"),
    ("inline table without destination", &["service = [{ name = \"m\", kind = \"mapped\", port = 1 }]"], 1, 12, "needs a destination"),
    ("http with destination", &["[[service]]", "name = \"web\"", "kind = \"http\"", "port = 8080", "destination = \"1.2.3.4:80\""], 5, 15, "a http service takes no destination"),
    ("socks with destination", &["[[service]]", "name = \"s\"", "kind = \"socks\"", "port = 1080", "destination = \"1.2.3.4:80\""], 5, 15, "a socks service takes no destination"),
    ("status with destination", &["[[service]]", "name = \"st\"", "kind = \"status\"", "port = 8081", "destination = \"1.2.3.4:80\""], 5, 15, "a status service takes no destination"),
    ("destination port zero", &["[[service]]", "name = \"m\"", M, "port = 1", "destination = \"10.0.0.1:0\""], 5, 15, "service 'm': destination port 0 is out of range"),
    ("destination port too big", &["[[service]]", "name = \"m\"", M, "port = 1", "destination = \"10.0.0.1:65536\""], 5, 15, "port 65536 is out of range"),
    ("mapped destination without port", &["[[service]]", "name = \"m\"", M, "port = 1", "destination = \"10.0.0.1\""], 5, 15, "has no port"),
    ("destination bad name", &["[[service]]", "name = \"m\"", M, "port = 1", "destination = \"bad_host!:22\""], 5, 15, "is not a valid host name"),
    ("destination v6 unbracketed", &["[[service]]", "name = \"m\"", M, "port = 1", "destination = \"2001:db8::1\""], 5, 15, "in brackets"),

    // per-kind options
    ("udp on http", &["[[service]]", "name = \"web\"", "kind = \"http\"", "port = 8080", "protocol = \"udp\""], 5, 12, "protocol = \"udp\" is only for mapped services"),
    ("send_proxy_protocol on http", &["[[service]]", "name = \"web\"", "kind = \"http\"", "port = 8080", "send_proxy_protocol = \"v1\""], 5, 23, "send_proxy_protocol only applies to mapped services"),
    ("send_proxy_protocol bad version", &["[[service]]", "name = \"m\"", M, "port = 1", D, "send_proxy_protocol = \"v3\""], 6, 23, "is not \"v1\" or \"v2\""),
    ("send_proxy_protocol on udp", &["[[service]]", "name = \"m\"", M, "protocol = \"udp\"", "port = 1", D, "send_proxy_protocol = \"v2\""], 7, 23, "needs a TCP mapped port"),
    ("proxy_protocol without from", &["[[service]]", "name = \"m\"", M, "port = 1", D, "proxy_protocol = true"], 6, 18, "proxy_protocol = true needs proxy_protocol_from"),
    ("proxy_protocol with empty from", &["[[service]]", "name = \"m\"", M, "port = 1", D, "proxy_protocol = true", "proxy_protocol_from = []"], 7, 23, "needs proxy_protocol_from"),
    ("proxy_protocol_from alone", &["[[service]]", "name = \"m\"", M, "port = 1", D, "proxy_protocol_from = [\"10.0.0.0/8\"]"], 6, 23, "no effect without proxy_protocol = true"),
    ("proxy_protocol_from bad", &["[[service]]", "name = \"m\"", M, "port = 1", D, "proxy_protocol = true", "proxy_protocol_from = [\"10.0.0.0/33\"]"], 7, 24, "is not an IP network"),
    ("proxy_protocol on udp", &["[[service]]", "name = \"m\"", M, "protocol = \"udp\"", "port = 1", D, "proxy_protocol = true", "proxy_protocol_from = [\"10.0.0.1\"]"], 7, 18, "cannot arrive on a udp"),
    ("separator empty", &["[[service]]", "name = \"p\"", "kind = \"pop3\"", "port = 110", "separator = \"\""], 5, 13, "separator is empty"),
    ("separator with space", &["[[service]]", "name = \"p\"", "kind = \"pop3\"", "port = 110", "separator = \"# \""], 5, 13, "contains whitespace"),
    ("separator on mapped", &["[[service]]", "name = \"m\"", M, "port = 1", D, "separator = \"%\""], 6, 13, "separator only applies to pop3"),
    ("connect_ports on socks", &["[[service]]", "name = \"s\"", "kind = \"socks\"", "port = 1", "connect_ports = [443]"], 5, 17, "connect_ports only applies to http"),
    ("commands on http", &["[[service]]", "name = \"w\"", "kind = \"http\"", "port = 1", "commands = [\"connect\"]"], 5, 12, "commands only applies to socks"),
    ("commands empty on socks", &["[[service]]", "name = \"s\"", "kind = \"socks\"", "port = 1", "commands = []"], 5, 12, "commands is empty: this socks service would refuse every request"),
    ("commands unknown", &["[[service]]", "name = \"s\"", "kind = \"socks\"", "port = 1", "commands = [\"connect\", \"listen\"]"], 5, 24, "\"listen\" is not a SOCKS command"),
    ("udp_announce bad", &["[[service]]", "name = \"s\"", "kind = \"socks\"", "port = 1", "udp_announce = \"nowhere\""], 5, 16, "udp_announce"),
    ("udp_announce on http", &["[[service]]", "name = \"w\"", "kind = \"http\"", "port = 1", "udp_announce = \"192.0.2.1\""], 5, 16, "udp_announce only applies to socks"),
    ("tproxy on http", &["[[service]]", "name = \"w\"", "kind = \"http\"", "port = 1", "tproxy = true"], 5, 10, "tproxy = true only applies to transparent services, not http"),
    ("transparent destination", &["[[service]]", "name = \"t\"", "kind = \"transparent\"", "port = 1", "destination = \"192.0.2.1:80\""], 5, 15, "a transparent service takes no destination"),
    ("transparent proxy_protocol", &["[[service]]", "name = \"t\"", "kind = \"transparent\"", "port = 1", "proxy_protocol = true", "proxy_protocol_from = [\"10.0.0.5/32\"]"], 5, 18, "does not apply to a transparent service"),
    ("transparent auth", &["[[user]]", "name = \"a\"", "password = \"plain:x\"", "[[service]]", "name = \"t\"", "kind = \"transparent\"", "port = 1", "auth = true"], 8, 8, "auth = true is not possible on a transparent service"),
    ("transparent tls", &["[[service]]", "name = \"t\"", "kind = \"transparent\"", "port = 1", "tls = { cert = \"c\", key = \"k\" }"], 5, 7, "tls applies to http, socks, auto and status services, not transparent"),
    ("destination on auto", &["[[service]]", "name = \"a\"", "kind = \"auto\"", "port = 1", "destination = \"h:1\""], 5, 15, "an auto service takes no destination"),
    ("separator on auto", &["[[service]]", "name = \"a\"", "kind = \"auto\"", "port = 1", "separator = \"#\""], 5, 13, "separator only applies to pop3 services, not auto"),
    ("auto auth without users", &["[[service]]", "name = \"a\"", "kind = \"auto\"", "port = 1", "auth = true"], 5, 8, "auth = true but no [[user]] is defined"),
    // [pac]
    ("pac proxy unknown", &["[[service]]", "name = \"w\"", "kind = \"http\"", "port = 1", "[pac]", "proxy = \"x\""], 6, 9, "pac.proxy names unknown service 'x'; the http and auto services are: w"),
    ("pac proxy socks", &["[[service]]", "name = \"s\"", "kind = \"socks\"", "port = 1", "[pac]", "proxy = \"s\""], 6, 9, "pac.proxy names service 's', a socks service; browsers need an http or auto service there (there is none; add a [[service]]"),
    ("pac without proxy", &["[[service]]", "name = \"w\"", "kind = \"http\"", "port = 1", "[pac]", "direct = [\"*.lan\"]"], 5, 1, "missing field `proxy`"),
    ("pac direct bad", &["[[service]]", "name = \"w\"", "kind = \"http\"", "port = 1", "[pac]", "proxy = \"w\"", "direct = [\"a*b\"]"], 7, 11, "pac.direct: \"a*b\": '*' is only allowed as the first label"),
    ("pac unknown key", &["[[service]]", "name = \"w\"", "kind = \"http\"", "port = 1", "[pac]", "proxy = \"w\"", "fallback = true"], 7, 1, "unknown field `fallback`"),
    ("connect_ports zero", &["[[service]]", "name = \"w\"", "kind = \"http\"", "port = 1", "connect_ports = [443, 0]"], 5, 23, "service 'w': connect_ports: port 0 is out of range"),
    ("connect_ports too big", &["[[service]]", "name = \"w\"", "kind = \"http\"", "port = 1", "connect_ports = [65536]"], 5, 18, "port 65536 is out of range"),
    ("auth on mapped", &["[[user]]", "name = \"a\"", "password = \"plain:x\"", "[[service]]", "name = \"m\"", M, "port = 1", D, "auth = true"], 9, 8, "auth = true is not possible on a mapped service"),
    ("auth without users", &["[[service]]", "name = \"w\"", "kind = \"http\"", "port = 1", "auth = true"], 5, 8, "no [[user]] is defined"),

    // [auth]
    ("unknown key in auth", &["[auth]", "helpr = []", MINIMAL], 2, 1, "unknown field `helpr`"),
    ("helper empty", &["[auth]", "helper = []", MINIMAL], 2, 10, "auth.helper is empty; give the program"),
    ("helper relative", &["[auth]", "helper = [\"basic_ncsa_auth\"]", MINIMAL], 2, 11, "\"basic_ncsa_auth\" is not an absolute path"),
    ("helpers zero", &["[auth]", "helper = [\"/bin/h\"]", "helpers = 0", MINIMAL], 3, 11, "auth.helpers: 0 is out of range; use 1 to 64"),
    ("helper_concurrency negative", &["[auth]", "helper = [\"/bin/h\"]", "helper_concurrency = -1", MINIMAL], 3, 22, "-1 is out of range; use 0"),
    ("helper_timeout zero", &["[auth]", "helper = [\"/bin/h\"]", "helper_timeout = \"0s\"", MINIMAL], 3, 18, "auth.helper_timeout must be more than zero"),
    ("helpers without helper", &["[auth]", "helpers = 3", MINIMAL], 2, 11, "auth.helpers is set but auth.helper is not"),

    // rules
    ("rule unknown service", &[MINIMAL, "[[rule]]", "action = \"allow\"", "services = [\"m\", \"web\"]"], 8, 18, "rule names unknown service 'web'; the services are: m"),
    ("rule unknown user", &[MINIMAL, "[[rule]]", "action = \"allow\"", "users = [\"bob\"]"], 8, 10, "rule names unknown user 'bob'; no [[user]] is defined"),
    ("rule unknown user among users", &["[[user]]", "name = \"alice\"", "password = \"plain:x\"", MINIMAL, "[[rule]]", "action = \"allow\"", "users = [\"alice\", \"Alice\"]"], 11, 19, "unknown user 'Alice'; the users are: alice"),
    ("rule bad action", &[MINIMAL, "[[rule]]", "action = \"reject\""], 7, 10, "rule action \"reject\""),
    ("rate on deny", &[MINIMAL, "[[rule]]", "action = \"deny\"", "rate = \"1MiB/s\""], 8, 8, "rate only applies to allow rules"),
    ("rate zero", &[MINIMAL, "[[rule]]", "action = \"allow\"", "rate = \"0B/s\""], 8, 8, "is zero"),
    ("rate without /s", &[MINIMAL, "[[rule]]", "action = \"allow\"", "rate = \"1MiB\""], 8, 8, "is not a rate"),
    ("rate float", &[MINIMAL, "[[rule]]", "action = \"allow\"", "rate = 1.5"], 8, 8, "expected a rate, found a float"),
    ("rule port zero", &[MINIMAL, "[[rule]]", "action = \"deny\"", "ports = [25, 0]"], 8, 14, "port 0 is out of range"),
    ("rule port range too big", &[MINIMAL, "[[rule]]", "action = \"deny\"", "ports = [\"6660-70000\"]"], 8, 10, "port 70000 is out of range"),
    ("rule port range reversed", &[MINIMAL, "[[rule]]", "action = \"deny\"", "ports = [\"6669-6660\"]"], 8, 10, "starts after it ends"),
    ("rule port bool", &[MINIMAL, "[[rule]]", "action = \"deny\"", "ports = [true]"], 8, 10, "expected a port"),
    ("rule empty list", &[MINIMAL, "[[rule]]", "action = \"deny\"", "clients = []"], 8, 11, "clients = [] would match nothing"),
    ("rule bad client", &[MINIMAL, "[[rule]]", "action = \"deny\"", "clients = [\"192.168.1.0/24\", \"lan\"]"], 8, 30, "rule clients: \"lan\" is not an IP network"),
    ("rule bad destination", &[MINIMAL, "[[rule]]", "action = \"deny\"", "destinations = [\"ex*ample.com\"]"], 8, 17, "'*' is only allowed as the first label"),
    ("rule destination with port", &[MINIMAL, "[[rule]]", "action = \"deny\"", "destinations = [\"example.com:443\"]"], 8, 17, "ports key"),
    ("rule bad day", &[MINIMAL, "[[rule]]", "action = \"deny\"", "days = [\"mon\", \"funday\"]"], 8, 16, "\"funday\" is not a day"),
    ("rule bad hours", &[MINIMAL, "[[rule]]", "action = \"deny\"", "hours = \"8-18\""], 8, 9, "is not an hour range"),
    ("rule empty hours", &[MINIMAL, "[[rule]]", "action = \"deny\"", "hours = \"08:00-08:00\""], 8, 9, "starts and ends at the same time"),
    ("rule hours past 24", &[MINIMAL, "[[rule]]", "action = \"deny\"", "hours = \"08:00-24:01\""], 8, 9, "is not an hour range"),

    // max_per_user, quotas, state
    ("zero per user", &["[limits]", "max_per_user = 0"], 2, 16, "limits.max_per_user: 0 is out of range"),
    ("quota without subjects", &[MINIMAL, "[[quota]]", "name = \"q\"", "bytes = \"1GiB\"", "per = \"day\""], 6, 1, "quota 'q' needs users = [...] or clients = [...]"),
    ("quota with both", &[MINIMAL, "[[quota]]", "name = \"q\"", "users = [\"al\"]", "clients = [\"10.0.0.0/8\"]", "bytes = \"1GiB\"", "per = \"day\""], 9, 11, "has both users and clients"),
    ("quota unknown user", &[MINIMAL, "[[quota]]", "name = \"q\"", "users = [\"al\"]", "bytes = \"1GiB\"", "per = \"day\""], 8, 10, "quota 'q' names unknown user 'al'"),
    ("quota bad client", &[MINIMAL, "[[quota]]", "name = \"q\"", "clients = [\"lan\"]", "bytes = \"1GiB\"", "per = \"day\""], 8, 12, "quota 'q' clients: \"lan\" is not an IP network"),
    ("quota zero bytes", &[MINIMAL, "[[quota]]", "name = \"q\"", "clients = [\"10.0.0.0/8\"]", "bytes = \"0B\"", "per = \"day\""], 9, 9, "bytes must be more than zero"),
    ("quota bad period", &[MINIMAL, "[[quota]]", "name = \"q\"", "clients = [\"10.0.0.0/8\"]", "bytes = \"1GiB\"", "per = \"year\""], 10, 7, "\"year\" is not a period"),
    ("quota twice", &[MINIMAL, "[[quota]]", "name = \"q\"", "clients = [\"10.0.0.0/8\"]", "bytes = \"1GiB\"", "per = \"day\"", "[[quota]]", "name = \"q\"", "clients = [\"10.0.0.0/8\"]", "bytes = \"1GiB\"", "per = \"day\""], 12, 8, "quota 'q' is defined twice"),
    ("state dir relative", &["[state]", "dir = \"var/lib\""], 2, 7, "state.dir: \"var/lib\" is not an absolute path"),
    ("state dir empty", &["[state]", "dir = \"\""], 2, 7, "state.dir: empty"),
    ("state redis tls", &["[state]", "redis = \"rediss://:pw@r.example:6380\""], 2, 9, "state.redis: \"rediss://:***@r.example:6380\": TLS to Redis is not built in"),
    ("state redis not a url", &["[state]", "redis = \"127.0.0.1:6379\""], 2, 9, "state.redis: \"127.0.0.1:6379\" is not a Redis URL"),

    // kinds not implemented: the last check of all
    ("udp destination name", &["[[service]]", "name = \"dns\"", M, "port = 53", "destination = \"dns.example.net:53\"", "protocol = \"udp\""], 5, 15, "a udp mapped port needs an IP address as its destination"),
    ("kind check comes after rules", &["[[service]]", "name = \"web\"", "kind = \"http\"", "port = 8080", "[[rule]]", "action = \"deny\"", "services = [\"nope\"]"], 7, 13, "unknown service 'nope'"),
    ("kind check comes after later services", &["[[service]]", "name = \"web\"", "kind = \"http\"", "port = 8080", "[[service]]", "name = \"m\"", M, "port = 1"], 5, 1, "needs a destination"),
];

#[test]
fn quotas_and_state() {
    let text = format!(
        "{MINIMAL}\n[limits]\nmax_per_user = 4\n[state]\ndir = \"/var/lib/portico\"\n\
         [[user]]\nname = \"alice\"\npassword = \"plain:x\"\n\
         [[quota]]\nname = \"daily\"\nusers = [\"alice\"]\nbytes = \"10GiB\"\nper = \"day\"\n\
         [[quota]]\nname = \"lan\"\nclients = [\"192.168.1.0/24\"]\nbytes = \"1MB\"\nper = \"week\"\n"
    );
    let c = parse(&text, "t.toml").expect("valid");
    assert_eq!(c.limits.max_per_user, Some(4));
    assert_eq!(
        c.state.dir.as_deref(),
        Some(std::path::Path::new("/var/lib/portico"))
    );
    assert_eq!(
        c.quotas,
        [
            crate::config::Quota {
                name: "daily".into(),
                subjects: crate::config::QuotaSubjects::Users(vec!["alice".into()]),
                bytes: 10 << 30,
                per: crate::quota::Per::Day,
            },
            crate::config::Quota {
                name: "lan".into(),
                subjects: crate::config::QuotaSubjects::Clients(vec!["192.168.1.0/24"
                    .parse()
                    .expect("net")]),
                bytes: 1_000_000,
                per: crate::quota::Per::Week,
            },
        ]
    );
    let shared = parse(
        &format!("{MINIMAL}\n[state]\nredis = \"redis://portico:pw@10.0.0.5:6379/2\"\n"),
        "t.toml",
    )
    .expect("valid");
    let url = shared.state.redis.expect("a redis URL");
    assert_eq!(url.full(), "redis://portico:pw@10.0.0.5:6379/2");
    assert_eq!(url.shown(), "redis://portico:***@10.0.0.5:6379/2");
    let none = parse(MINIMAL, "t.toml").expect("valid");
    assert_eq!(none.state.redis, None);
    assert_eq!(
        (none.limits.max_per_user, none.state.dir, none.quotas.len()),
        (None, None, 0)
    );
}

#[test]
fn validation_errors() {
    let mut failures = Vec::new();
    for (what, lines, line, column, needle) in CASES {
        let text = lines.join("\n");
        match parse(&text, "t.toml") {
            Ok(_) => failures.push(format!("{what}: parsed, expected an error")),
            Err(e) => {
                if (e.line, e.column) != (*line, *column) || !e.message.contains(needle) {
                    failures.push(format!(
                        "{what}: got {}:{}: {}\n    want {line}:{column}: …{needle}…",
                        e.line, e.column, e.message
                    ));
                }
                assert_eq!(e.file, "t.toml");
                assert!(!e.message.contains('\n'), "{what}: multi-line message");
                if says_twice(&e.message) {
                    failures.push(format!("{what}: says a word twice: {}", e.message));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A message that repeats a word, or its service prefix, as messages put
/// together from parts can.
fn says_twice(message: &str) -> bool {
    let words: Vec<&str> = message.split_whitespace().collect();
    let doubled = words.windows(2).any(|w| w[0] == w[1]);
    let prefix = message
        .strip_prefix("service '")
        .and_then(|rest| rest.find("': "))
        .map(|i| &message[..i + "service '".len() + 3]);
    doubled || prefix.is_some_and(|p| message[p.len()..].starts_with(p))
}

#[test]
fn open_proxy_accepted_with_warning() {
    let text = "[network]\nexternal = [\"203.0.113.5\"]\n[[service]]\nname = \"x\"\nkind = \"http\"\nside = \"external\"\nopen_proxy = true\nport = 3128\n";
    let c = parse_unchecked_kinds(text, "f").unwrap();
    assert_eq!(c.services[0].listen, vec![sa("203.0.113.5:3128")]);
    assert_eq!(
        warnings(&c),
        vec!["service 'x' is an open proxy on the external side (open_proxy = true)".to_string()]
    );
}

#[test]
fn incoming_mapped_port_needs_no_open_proxy() {
    let text = "[network]\nexternal = [\"203.0.113.5\"]\n[[service]]\nname = \"ssh-in\"\nkind = \"mapped\"\nside = \"external\"\nlisten = [\"203.0.113.5:2222\"]\ndestination = \"192.168.1.20:22\"\n";
    let c = parse(text, "f").unwrap();
    assert_eq!(c.services[0].side, ListenSide::External);
    assert!(warnings(&c).is_empty());
}

#[test]
fn wildcard_internal_is_a_warning() {
    let text = format!("[network]\ninternal = [\"0.0.0.0\"]\n{MINIMAL}");
    let c = parse(&text, "f").unwrap();
    assert_eq!(c.services[0].listen, vec![sa("0.0.0.0:2000")]);
    let w = warnings(&c);
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("network.internal contains 0.0.0.0"), "{w:?}");
}

#[test]
fn dual_stack_wildcards() {
    let text = format!("[network]\ninternal = [\"0.0.0.0\", \"::\"]\n{MINIMAL}");
    let c = parse(&text, "f").unwrap();
    assert_eq!(
        c.services[0].listen,
        vec![sa("0.0.0.0:2000"), sa("[::]:2000")]
    );
    assert_eq!(warnings(&c).len(), 2);
}

#[test]
fn same_port_on_different_addresses_is_fine() {
    let text = "[network]\ninternal = [\"127.0.0.1\", \"10.0.0.1\"]\n[[service]]\nname = \"a\"\nkind = \"mapped\"\nlisten = [\"127.0.0.1:7\"]\ndestination = \"10.0.0.9:7\"\n[[service]]\nname = \"b\"\nkind = \"mapped\"\nlisten = [\"10.0.0.1:7\"]\ndestination = \"10.0.0.9:7\"\n";
    assert!(parse(text, "f").is_ok());
}

#[test]
fn spans_count_characters_not_bytes() {
    let text = "# héllo wörld\n[[service]]\nname = \"é\"\nkind = \"nope\"\nport = 1\n";
    let e = parse(text, "f").unwrap_err();
    assert_eq!((e.line, e.column), (4, 8));
    let text = "[[service]]\nname = \"ü\", kind = 1\n";
    let e = parse(text, "f").unwrap_err();
    assert_eq!(e.line, 2);
    assert_eq!(line_column("aé\nb", 3), (1, 3));
    assert_eq!(line_column("aé\nb", 2), (1, 2)); // inside 'é': moved back
    assert_eq!(line_column("aé\nb", 5), (2, 2));
    assert_eq!(line_column("ab", 99), (1, 3));
    assert_eq!(line_column("", 0), (1, 1));
    assert_eq!(line_column("a\r\nb", 3), (2, 1));
}

#[test]
fn no_panic_on_mangled_input() {
    let text = spec_example();
    let mut cut = 0;
    while cut <= text.len() {
        if text.is_char_boundary(cut) {
            let _ = parse(&text[..cut], "f");
            let mut dropped = text.clone();
            if cut < text.len() && text.is_char_boundary(cut + 1) {
                dropped.remove(cut);
                let _ = parse(&dropped, "f");
            }
        }
        cut += 1;
    }
    for t in [
        "\u{feff}[network]",
        "\0",
        "[[service]]\nname=\"\u{202e}\"",
        "a = 1\n\n\n",
    ] {
        let _ = parse(t, "f");
    }
}

#[test]
fn implemented_kinds() {
    for k in ServiceKind::ALL {
        assert_eq!(
            implemented_kind(k, Transport::Tcp),
            matches!(
                k,
                ServiceKind::Mapped
                    | ServiceKind::Socks
                    | ServiceKind::Auto
                    | ServiceKind::Http
                    | ServiceKind::Status
                    | ServiceKind::Smtp
                    | ServiceKind::Nntp
                    | ServiceKind::Telnet
                    | ServiceKind::Pop3
                    | ServiceKind::Ftp
                    | ServiceKind::Transparent
            ),
            "{k}"
        );
        assert_eq!(
            implemented_kind(k, Transport::Udp),
            k == ServiceKind::Mapped,
            "{k} over udp"
        );
    }
}

#[test]
fn kind_names_round_trip() {
    for k in ServiceKind::ALL {
        assert_eq!(ServiceKind::from_name(k.name()), Some(k));
        assert_eq!(k.to_string(), k.name());
    }
    assert_eq!(ServiceKind::from_name("HTTP"), None);
    assert_eq!(ServiceKind::Pop3.name(), "pop3");
}

// ---------------------------------------------------------------------------
// Value formats

#[test]
fn durations() {
    let ok = [
        ("250ms", Duration::from_millis(250)),
        ("10s", Duration::from_secs(10)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
        ("2d", Duration::from_secs(2 * 86_400)),
        ("0s", Duration::ZERO),
        (" 7s ", Duration::from_secs(7)),
        ("10 s", Duration::from_secs(10)),
        ("365d", Duration::from_secs(365 * 86_400)),
    ];
    for (s, d) in ok {
        assert_eq!(parse_duration(s), Ok(d), "{s}");
    }
    for s in [
        "",
        "s",
        "10",
        "10x",
        "1.5s",
        "-1s",
        "10S",
        "1m30s",
        "366d",
        "99999999999999999999s",
        "18446744073709551615h",
    ] {
        assert!(parse_duration(s).is_err(), "{s}");
    }
    assert_eq!(
        duration_value(&Value::Integer(30)),
        Ok(Duration::from_secs(30))
    );
    assert_eq!(duration_value(&Value::Integer(0)), Ok(Duration::ZERO));
    assert!(duration_value(&Value::Integer(-1)).is_err());
    assert!(duration_value(&Value::Integer(i64::MAX)).is_err());
    assert!(duration_value(&Value::Boolean(true)).is_err());
}

#[test]
fn sizes() {
    let ok = [
        ("64KiB", 65_536),
        ("1MiB", 1 << 20),
        ("512B", 512),
        ("16KB", 16_000),
        ("2MB", 2_000_000),
        ("1GiB", 1 << 30),
        ("3GB", 3_000_000_000),
        ("64kib", 65_536),
        ("0B", 0),
    ];
    for (s, n) in ok {
        assert_eq!(parse_size(s), Ok(n), "{s}");
    }
    for s in [
        "",
        "KiB",
        "64",
        "64K",
        "1.5MiB",
        "-1B",
        "64 KiBs",
        "99999999999GiB",
    ] {
        assert!(parse_size(s).is_err(), "{s}");
    }
    assert_eq!(size_value(&Value::Integer(4096)), Ok(4096));
    assert!(size_value(&Value::Integer(-4096)).is_err());
}

#[test]
fn buffer_bounds() {
    let with = |b: &str| format!("[limits]\nbuffer = {b}\n{MINIMAL}");
    assert_eq!(parse(&with("\"1KiB\""), "f").unwrap().limits.buffer, 1024);
    assert_eq!(
        parse(&with("\"64MiB\""), "f").unwrap().limits.buffer,
        64 << 20
    );
    assert_eq!(parse(&with("2048"), "f").unwrap().limits.buffer, 2048);
    assert!(parse(&with("1023"), "f").is_err());
    assert!(parse(&with("67108865"), "f").is_err());
}

#[test]
fn rates() {
    let ok = [
        ("1MiB/s", 1 << 20),
        ("500KiB/s", 500 * 1024),
        ("100KB/s", 100_000),
        ("10B/s", 10),
        ("10b/S", 10),
    ];
    for (s, n) in ok {
        assert_eq!(parse_rate(s), Ok(n), "{s}");
    }
    for s in ["", "1MiB", "/s", "0B/s", "1MiB/h", "10/s", "fast"] {
        assert!(parse_rate(s).is_err(), "{s}");
    }
    assert_eq!(rate_value(&Value::Integer(5)), Ok(5));
    assert!(rate_value(&Value::Integer(0)).is_err());
}

#[test]
fn ports() {
    assert_eq!(port_from_int(1), Ok(1));
    assert_eq!(port_from_int(65535), Ok(65535));
    for i in [0, -1, 65536, i64::MAX, i64::MIN] {
        assert!(port_from_int(i).is_err(), "{i}");
    }
    assert_eq!(parse_port("443"), Ok(443));
    for s in [
        "",
        "0",
        "65536",
        "99999999999999999999",
        "+1",
        "1 2",
        "0x10",
    ] {
        assert!(parse_port(s).is_err(), "{s}");
    }
    let r = |v: Value| port_range_value(&v);
    assert_eq!(r(Value::Integer(25)), Ok(25..=25));
    assert_eq!(r(Value::String("6660-6669".into())), Ok(6660..=6669));
    assert_eq!(r(Value::String("80-80".into())), Ok(80..=80));
    assert_eq!(r(Value::String(" 1 - 65535 ".into())), Ok(1..=65535));
    assert_eq!(r(Value::String("443".into())), Ok(443..=443));
    for s in [
        "6669-6660",
        "0-10",
        "10-65536",
        "a-b",
        "1-2-3",
        "-5",
        "5-",
        "",
    ] {
        assert!(r(Value::String(s.into())).is_err(), "{s}");
    }
    assert!(r(Value::Float(1.0)).is_err());
}

#[test]
fn days() {
    assert_eq!(parse_days("mon"), Ok(0b000_0001));
    assert_eq!(parse_days("sun"), Ok(0b100_0000));
    assert_eq!(parse_days("MON-fri"), Ok(0b001_1111));
    assert_eq!(parse_days("sat-sun"), Ok(0b110_0000));
    assert_eq!(parse_days("fri-mon"), Ok(0b111_0001));
    assert_eq!(parse_days("sun-mon"), Ok(0b100_0001));
    assert_eq!(parse_days("wed-wed"), Ok(0b000_0100));
    assert_eq!(parse_days("tue-mon"), Ok(0b111_1111));
    assert_eq!(parse_days("Thursday"), Ok(0b000_1000));
    assert_eq!(parse_days(" tue - thu "), Ok(0b000_1110));
    for s in ["", "mo", "monday-", "-fri", "mon-fri-sat", "weekday", "1"] {
        assert!(parse_days(s).is_err(), "{s}");
    }
}

#[test]
fn hours() {
    assert_eq!(parse_hours("08:00-18:00"), Ok((480, 1080)));
    assert_eq!(parse_hours("22:00-06:00"), Ok((1320, 360)));
    assert_eq!(parse_hours("00:00-24:00"), Ok((0, 1440)));
    assert_eq!(parse_hours("23:59-00:00"), Ok((1439, 0)));
    assert_eq!(parse_hours("8:30-9:05"), Ok((510, 545)));
    assert_eq!(parse_hours("08:00 - 18:00"), Ok((480, 1080)));
    for s in [
        "",
        "08:00",
        "08:00-08:00",
        "00:00-00:00",
        "24:00-06:00",
        "24:00-24:00",
        "08:00-24:30",
        "25:00-26:00",
        "08:60-09:00",
        "8-18",
        "08:0-09:00",
        "008:00-09:00",
        "08h00-09h00",
        "-08:00-09:00",
    ] {
        assert!(parse_hours(s).is_err(), "{s}");
    }
}

#[test]
fn host_names() {
    assert_eq!(parse_dns_name("Example.COM"), Ok("example.com".into()));
    assert_eq!(parse_dns_name("example.com."), Ok("example.com".into()));
    assert_eq!(parse_dns_name("localhost"), Ok("localhost".into()));
    assert_eq!(
        parse_dns_name("a-b.c_d.example"),
        Ok("a-b.c_d.example".into())
    );
    assert_eq!(parse_dns_name("123.example"), Ok("123.example".into()));
    let long_label = "a".repeat(64);
    let long_name = vec!["a".repeat(63); 4].join(".");
    for s in [
        "",
        ".",
        "a..b",
        ".a",
        "-a.com",
        "a-.com",
        "a b",
        "é.com",
        "1.2.3",
        "256.1.1.1",
        long_label.as_str(),
        long_name.as_str(),
        "a/b",
    ] {
        assert!(parse_dns_name(s).is_err(), "{s}");
    }
}

#[test]
fn destinations() {
    let d = |s: &str, p: Option<u16>| parse_destination(s, p).map(|d| d.to_string());
    assert_eq!(d("192.168.1.20:22", None), Ok("192.168.1.20:22".into()));
    assert_eq!(d("[2001:db8::1]:22", None), Ok("[2001:db8::1]:22".into()));
    assert_eq!(
        d("Mail.Example.net:25", None),
        Ok("mail.example.net:25".into())
    );
    assert_eq!(
        d("mail.example.net", Some(110)),
        Ok("mail.example.net:110".into())
    );
    assert_eq!(d("[2001:db8::1]", Some(23)), Ok("[2001:db8::1]:23".into()));
    assert_eq!(d("2001:db8::1", Some(23)), Ok("[2001:db8::1]:23".into()));
    for s in [
        "",
        ":22",
        "host:",
        "host:0",
        "host:65536",
        "host:x",
        "[1.2.3.4]:22",
        "[nope]:22",
        "[::1",
        "[::1]22",
        "2001:db8::1:22",
        "a b:22",
        "1.2.3:22",
    ] {
        assert!(parse_destination(s, None).is_err(), "{s}");
    }
    assert!(parse_destination("2001:db8::1", None).is_err());
    let dest = parse_destination("[::1]:8080", None).unwrap();
    assert_eq!(dest.host, Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    assert_eq!(dest.host.to_string(), "::1");
}

#[test]
fn listen_addresses() {
    assert_eq!(parse_listen("127.0.0.1:8080"), Ok(sa("127.0.0.1:8080")));
    assert_eq!(parse_listen("[::1]:8080"), Ok(sa("[::1]:8080")));
    for s in [
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "::1:80",
        "[127.0.0.1]:80",
        "host:80",
        ":80",
    ] {
        assert!(parse_listen(s).is_err(), "{s}");
    }
}

#[test]
fn nets_and_patterns() {
    assert_eq!(parse_net("10.0.0.0/8"), Ok(net("10.0.0.0/8")));
    assert_eq!(parse_net("10.1.2.3"), Ok(net("10.1.2.3/32")));
    assert_eq!(parse_net("::1"), Ok(net("::1/128")));
    assert_eq!(parse_net("192.168.1.77/24"), Ok(net("192.168.1.0/24")));
    for s in ["", "10.0.0.0/33", "lan", "10.0.0.0/", "[::1]"] {
        assert!(parse_net(s).is_err(), "{s}");
    }
    assert_eq!(
        parse_dest_pattern("*.Example.com"),
        Ok(DestPattern::Suffix("example.com".into()))
    );
    assert_eq!(
        parse_dest_pattern("example.com"),
        Ok(DestPattern::Exact("example.com".into()))
    );
    assert_eq!(
        parse_dest_pattern("fd00::/8"),
        Ok(DestPattern::Net(net("fd00::/8")))
    );
    for s in [
        "*",
        "*.",
        "*.*.com",
        "a.*.com",
        "ex*.com",
        "example.com:443",
        "10.0.0.0/40",
        "",
    ] {
        assert!(parse_dest_pattern(s).is_err(), "{s}");
    }
    let suffix = DestPattern::Suffix("example.com".into());
    assert!(suffix.matches_name("www.example.com"));
    assert!(suffix.matches_name("a.b.example.com"));
    assert!(!suffix.matches_name("example.com"));
    assert!(!suffix.matches_name("badexample.com"));
    assert!(!suffix.matches_name(".example.com"));
    assert!(DestPattern::Exact("example.com".into()).matches_name("example.com"));
    assert!(DestPattern::Net(net("10.0.0.0/8")).matches_ip(v4(10, 9, 9, 9)));
    assert!(!DestPattern::Net(net("10.0.0.0/8")).matches_name("10.0.0.1"));
}

#[test]
fn passwords() {
    let ok = [
        PHC,
        "$argon2id$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
        "$argon2i$v=19$m=4096,t=3,p=1$c2FsdA$aGFzaA",
        "$argon2d$v=16$m=8,t=1,p=1,keyid=abc$YQ$Yg",
    ];
    for p in ok {
        let text = format!("[[user]]\nname = \"u\"\npassword = \"{p}\"\n{MINIMAL}");
        assert_eq!(
            parse(&text, "f").unwrap().users[0].password,
            Password::Phc(p.into()),
            "{p}"
        );
    }
    let bad = [
        "",
        "$",
        "$argon2id",
        "$argon2id$v=19",
        "$argon2id$v=19$m=19456,t=2,p=1",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$",
        "$argon2id$v=19$m=19456,t=2,p=1$c2Fs=dA$aGFzaA",
        "$argon2id$v=x$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        "$argon2id$v=19$m19456$c2FsdA$aGFzaA",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA$extra",
        "$scrypt$ln=15,r=8,p=1$c2FsdA$aGFzaA",
        "argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        "hunter2",
        "plain:",
    ];
    for p in bad {
        let text = format!("[[user]]\nname = \"u\"\npassword = \"{p}\"\n{MINIMAL}");
        let e = parse(&text, "f").unwrap_err();
        assert_eq!((e.line, e.column), (3, 12), "{p}: {e}");
        assert!(e.message.starts_with("user 'u': "), "{p}: {e}");
    }
    let text = format!("[[user]]\nname = \"u\"\npassword = \"plain:a:b c\"\n{MINIMAL}");
    assert_eq!(
        parse(&text, "f").unwrap().users[0].password,
        Password::Plain("a:b c".into())
    );
}

#[test]
fn access_targets() {
    let with =
        |a: &str| parse(&format!("[log]\naccess = \"{a}\"\n{MINIMAL}"), "f").map(|c| c.log.access);
    assert_eq!(with("off"), Ok(AccessTarget::Off));
    assert_eq!(with("stderr"), Ok(AccessTarget::Stderr));
    assert_eq!(with("./stdout"), Ok(AccessTarget::File("./stdout".into())));
    assert_eq!(
        with("access.log"),
        Ok(AccessTarget::File("access.log".into()))
    );
    assert!(with("stdout").is_err());
    assert!(with("").is_err());
}

#[test]
fn rule_helpers() {
    let rule = Rule {
        action: RuleAction::Allow,
        services: vec![],
        clients: vec![net("192.168.1.0/24")],
        users: vec![],
        destinations: vec![],
        ports: vec![25..=25, 6660..=6669],
        days: Some(0b001_1111),
        hours: Some((22 * 60, 6 * 60)),
        rate: None,
        outgoing: None,
        via: None,
    };
    assert!(rule.port_matches(25) && rule.port_matches(6665) && !rule.port_matches(26));
    assert!(rule.day_matches(0) && rule.day_matches(4) && !rule.day_matches(5));
    assert!(!rule.day_matches(7));
    assert!(rule.minute_matches(22 * 60) && rule.minute_matches(0) && rule.minute_matches(359));
    assert!(!rule.minute_matches(360) && !rule.minute_matches(12 * 60));
    assert!(rule.service_matches("anything"));
    assert!(rule.client_matches(v4(192, 168, 1, 9)) && !rule.client_matches(v4(10, 0, 0, 1)));
    let day = Rule {
        ports: vec![],
        days: None,
        hours: Some((8 * 60, 18 * 60)),
        ..rule
    };
    assert!(day.port_matches(1) && day.day_matches(6));
    assert!(day.minute_matches(8 * 60) && !day.minute_matches(18 * 60));
    let all_day = Rule {
        hours: Some((0, 24 * 60)),
        ..day
    };
    assert!(all_day.minute_matches(0) && all_day.minute_matches(1439));
}

#[test]
fn error_display() {
    let e = ConfigError::at("a\nbcd", "x.toml", 3, "bad");
    assert_eq!(e.to_string(), "x.toml:2:2: bad");
}

#[test]
fn log_diagnostics_and_syslog_socket() {
    let with = |lines: &str| parse(&format!("[log]\n{lines}\n{MINIMAL}"), "f").map(|c| c.log);
    let log = with("diagnostics = \"syslog\"\naccess = \"syslog\"").unwrap();
    assert_eq!(log.diagnostics, DiagnosticsTarget::Syslog);
    assert_eq!(log.access, AccessTarget::Syslog);
    assert_eq!(log.syslog_socket, std::path::PathBuf::from("/dev/log"));
    assert!(log.uses_syslog());
    let log = with("diagnostics = \"/var/log/portico.log\"\nsyslog_socket = \"/run/log\"").unwrap();
    assert_eq!(
        log.diagnostics,
        DiagnosticsTarget::File("/var/log/portico.log".into())
    );
    assert_eq!(log.syslog_socket, std::path::PathBuf::from("/run/log"));
    assert!(!log.uses_syslog());
    assert_eq!(
        with("").unwrap().diagnostics,
        DiagnosticsTarget::Stderr,
        "stderr by default"
    );
    for bad in [
        "diagnostics = \"off\"",
        "diagnostics = \"\"",
        "syslog_socket = \"\"",
    ] {
        let e = with(bad).unwrap_err();
        assert_eq!(e.line, 2, "{bad}: {e}");
        assert!(e.message.starts_with("log."), "{bad}: {e}");
    }
}

#[test]
fn process_section() {
    let with = |lines: &str| parse(&format!("[process]\n{lines}\n{MINIMAL}"), "f");
    let c = with("user = \"portico\"\ngroup = \"adm\"").unwrap();
    assert_eq!(
        c.process,
        ProcessConfig {
            user: Some("portico".into()),
            group: Some("adm".into())
        }
    );
    let c = with("user = \"portico\"").unwrap();
    assert_eq!(c.process.group, None);
    let e = with("group = \"adm\"").unwrap_err();
    assert_eq!((e.line, e.column), (2, 9), "{e}");
    assert!(e.message.contains("without process.user"), "{e}");
    for bad in [
        "user = \"\"",
        "user = \"a:b\"",
        "user = \"a\\nb\"",
        "user = \"a\"\ngroup = \"\"",
    ] {
        let e = with(bad).unwrap_err();
        assert!(e.message.starts_with("process."), "{bad}: {e}");
    }
    assert!(with("uid = 0").is_err(), "unknown keys are refused");
}

#[test]
fn a_helper_lets_rules_and_quotas_name_users_not_in_user_tables() {
    let text = "[auth]\nhelper = [\"/usr/lib/squid/basic_ncsa_auth\", \"/etc/portico/htpasswd\"]\n\
                [[service]]\nname = \"s\"\nkind = \"socks\"\nport = 1080\nauth = true\n\
                [[rule]]\naction = \"allow\"\nusers = [\"bob\"]\n\
                [[quota]]\nname = \"q\"\nusers = [\"bob\"]\nbytes = \"1GiB\"\nper = \"day\"\n";
    let c = parse(text, "p.toml").expect("valid");
    let h = c.helper.as_deref().expect("a helper");
    assert_eq!(
        h,
        &HelperConfig {
            argv: vec![
                "/usr/lib/squid/basic_ncsa_auth".into(),
                "/etc/portico/htpasswd".into()
            ],
            processes: 2,
            concurrency: 0,
            timeout: Duration::from_secs(5),
        }
    );
    assert_eq!(c.rules[0].users, vec!["bob".to_string()]);
    let c = parse(
        &text.replace(
            "[[service]]",
            "helpers = 3\nhelper_concurrency = 8\nhelper_timeout = \"300ms\"\n[[service]]",
        ),
        "p.toml",
    )
    .expect("valid");
    let h = c.helper.as_deref().expect("a helper");
    assert_eq!(
        (h.processes, h.concurrency, h.timeout),
        (3, 8, Duration::from_millis(300))
    );
    // Without the helper, the same names are refused.
    let plain = text.replace(
        "[auth]\nhelper = [\"/usr/lib/squid/basic_ncsa_auth\", \"/etc/portico/htpasswd\"]\n",
        "",
    );
    assert!(parse(&plain, "p.toml").is_err());
}

/// `outgoing` on a service and on an allow rule, each one of the external
/// addresses.
#[test]
fn outgoing_on_services_and_rules() {
    let text = format!(
        "[network]\nexternal = [\"203.0.113.5\", \"203.0.113.6\", \"2001:db8::5\"]\n\
         outgoing = \"203.0.113.5\"\noutgoing6 = \"2001:db8::5\"\n{MINIMAL}\n\
         outgoing = \"203.0.113.6\"\n[[rule]]\naction = \"allow\"\noutgoing = \"203.0.113.5\"\n"
    );
    let c = parse(&text, "f").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.services[0].outgoing, Some(v4(203, 0, 113, 6)));
    assert_eq!(c.rules[0].outgoing, Some(v4(203, 0, 113, 5)));
    assert_eq!(
        c.network.outgoing6,
        Some("2001:db8::5".parse::<IpAddr>().unwrap())
    );
}

#[test]
fn parents_and_via() {
    let c = parse(
        r#"
[[parent]]
name = "corp"
kind = "http"
addresses = ["10.0.0.8:3128", "proxy2.corp.example:3128"]
pick = "round-robin"
user = "gateway"
password = "secret"
down_after = 2
retry_after = "10s"
send_proxy_protocol = "v2"

[[parent]]
name = "tor"
kind = "socks4"
addresses = ["127.0.0.1:9050"]
user = "id"

[[service]]
name = "socks"
kind = "socks"
port = 1080
via = "corp"

[[rule]]
action = "allow"
destinations = ["*.onion"]
via = "tor"

[[rule]]
action = "allow"
via = "direct"
"#,
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.parents.len(), 2);
    let p = &c.parents[0];
    assert_eq!(p.kind, ParentKind::Http);
    assert_eq!(p.pick, Pick::RoundRobin);
    assert_eq!(p.addresses[1].0, "proxy2.corp.example:3128");
    assert_eq!(p.down_after, 2);
    assert_eq!(p.retry_after, Duration::from_secs(10));
    assert_eq!(p.send_proxy_protocol, Some(ProxyVersion::V2));
    assert_eq!(c.parents[1].kind, ParentKind::Socks4);
    assert_eq!(c.services[0].via, Some(Via::Parent(0)));
    assert_eq!(c.rules[0].via, Some(Via::Parent(1)));
    assert_eq!(c.rules[1].via, Some(Via::Direct));
}

#[test]
fn parent_mistakes_are_refused() {
    let svc = "[[service]]\nname = \"s\"\nkind = \"socks\"\nport = 1080\n";
    for (text, want) in [
        (
            format!("{svc}via = \"corp\"\n"),
            "via names unknown parent 'corp'; no [[parent]] is defined",
        ),
        (
            format!(
                "[[parent]]\nname = \"a\"\nkind = \"http\"\naddresses = [\"10.0.0.1:3128\"]\n\
                 {svc}via = \"b\"\n"
            ),
            "via names unknown parent 'b'; the parents are: a",
        ),
        (
            format!(
                "[[parent]]\nname = \"a\"\nkind = \"http\"\naddresses = [\"10.0.0.1:3128\"]\n\
                 [[parent]]\nname = \"a\"\nkind = \"http\"\naddresses = [\"10.0.0.1:3128\"]\n{svc}"
            ),
            "parent 'a' is defined twice",
        ),
        (
            format!(
                "[[parent]]\nname = \"a\"\nkind = \"ftp\"\naddresses = [\"10.0.0.1:1\"]\n{svc}"
            ),
            "is not \"http\", \"socks5\" or \"socks4\"",
        ),
        (
            format!("[[parent]]\nname = \"a\"\nkind = \"http\"\naddresses = [\"10.0.0.1\"]\n{svc}"),
            "has no port",
        ),
        (
            format!(
                "[[parent]]\nname = \"a\"\nkind = \"http\"\naddresses = [\"10.0.0.1:1\"]\n\
                 down_after = 0\n{svc}"
            ),
            "use 1 or more",
        ),
        (
            format!(
                "[[parent]]\nname = \"a\"\nkind = \"socks5\"\naddresses = [\"10.0.0.1:1\"]\n\
                 user = \"u\"\n{svc}"
            ),
            "user needs password",
        ),
        (
            format!(
                "[[parent]]\nname = \"a\"\nkind = \"socks4\"\naddresses = [\"10.0.0.1:1\"]\n\
                 user = \"u\"\npassword = \"p\"\n{svc}"
            ),
            "takes a user id only",
        ),
        (
            format!(
                "[[parent]]\nname = \"a\"\nkind = \"http\"\naddresses = [\"10.0.0.1:1\"]\n\
                 pick = \"random\"\n{svc}"
            ),
            "pick \"random\" is not",
        ),
        (
            format!(
                "[[parent]]\nname = \"a\"\nkind = \"http\"\naddresses = [\"10.0.0.1:1\"]\n\
                 send_proxy_protocol = \"v3\"\n{svc}"
            ),
            "send_proxy_protocol \"v3\"",
        ),
        (
            format!(
                "[[parent]]\nname = \"a\"\nkind = \"http\"\naddresses = [\"10.0.0.1:1\"]\n\
                 {svc}[[rule]]\naction = \"deny\"\nvia = \"a\"\n"
            ),
            "via only applies to allow rules",
        ),
    ] {
        let e = parse(&text, "t.toml").unwrap_err();
        assert!(e.message.contains(want), "{text}\n=> {}", e.message);
    }
}
