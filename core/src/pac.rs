//! The proxy auto-config file (`[pac]`): the `FindProxyForURL` script that
//! the http, auto and status services answer `GET /proxy.pac` and
//! `GET /wpad.dat` with.
//!
//! It is a pure function of the configuration in force and of the local
//! address the request for it arrived on ([`script`]): the proxies it names
//! are on that address, which is one the browser could reach. A reload
//! changes the configuration, and so the next script.
//!
//! What the script returns, in order:
//!
//! - `DIRECT` for a plain host name (no dot), for the `network.internal`
//!   addresses themselves, and for `[pac] direct`: names as `host == name`
//!   or `shExpMatch(host, "*.domain")`, IPv4 networks with `isInNet`, IPv6
//!   networks with `isInNetEx` for IPv6 literals only, where the browser
//!   has it (Chromium does; Firefox does not, and sends those through the
//!   proxy);
//! - otherwise `PROXY addr:port` for `[pac] proxy` (`HTTPS addr:port`
//!   when it has `tls`), then `SOCKS5 addr:port` for the first socks or
//!   auto service without `tls`, then `DIRECT` only with
//!   `fallback_direct = true`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::config::{Config, DestPattern, Service, ServiceKind};

/// The Content-Type a PAC file is served with.
pub const CONTENT_TYPE: &str = "application/x-ns-proxy-autoconfig";

/// Whether a request for `target` (origin-form, its query ignored) asks
/// for the PAC file: `/proxy.pac` (what a browser is pointed at) or
/// `/wpad.dat` (what WPAD discovery fetches).
pub fn is_pac_path(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or("");
    path == "/proxy.pac" || path == "/wpad.dat"
}

/// The PAC script for a request that arrived on the local address
/// `here`; none without `[pac]`.
pub fn script(config: &Config, here: IpAddr) -> Option<String> {
    let pac = config.pac.as_ref()?;
    let mut ways = Vec::new();
    if let Some(proxy) = config.service(&pac.proxy) {
        if let Some(addr) = reach(proxy, here) {
            ways.push(format!("{} {addr}", proxy_keyword(proxy)));
        }
    }
    // A browser speaks SOCKS in the clear only: a socks service with
    // `tls` is passed over.
    let socks = config
        .services
        .iter()
        .find(|s| matches!(s.kind, ServiceKind::Socks | ServiceKind::Auto) && s.tls.is_none());
    if let Some(addr) = socks.and_then(|s| reach(s, here)) {
        ways.push(format!("SOCKS5 {addr}"));
    }
    if pac.fallback_direct || ways.is_empty() {
        // (No way at all cannot happen with a validated configuration:
        // its proxy listens somewhere.)
        ways.push("DIRECT".to_string());
    }

    let mut js = String::with_capacity(1024);
    js.push_str(
        "// Proxy auto-config made by Portico from its configuration.\n\
         function FindProxyForURL(url, host) {\n\
         \x20 var h = host.toLowerCase();\n\
         \x20 if (isPlainHostName(h) && h.indexOf(\":\") < 0) return \"DIRECT\";\n\
         \x20 if (h.charAt(0) == \"[\") h = h.substring(1, h.length - 1);\n",
    );
    let internal: Vec<String> = config
        .network
        .internal
        .iter()
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| format!("h == \"{ip}\""))
        .collect();
    if !internal.is_empty() {
        let _ = writeln!(
            js,
            "  // network.internal: this proxy's own addresses.\n  if ({}) return \"DIRECT\";",
            internal.join(" || ")
        );
    }
    let names: Vec<String> = pac
        .direct
        .iter()
        .filter_map(|d| match d {
            DestPattern::Exact(n) => Some(format!("h == \"{n}\"")),
            DestPattern::Suffix(d) => Some(format!("shExpMatch(h, \"*.{d}\")")),
            DestPattern::Net(_) => None,
        })
        .collect();
    if !names.is_empty() {
        let _ = writeln!(
            js,
            "  // [pac] direct: names.\n  if ({}) return \"DIRECT\";",
            names.join(" || ")
        );
    }
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for d in &pac.direct {
        match d {
            DestPattern::Net(ipnet::IpNet::V4(n)) => v4.push(format!(
                "isInNet(h, \"{}\", \"{}\")",
                n.network(),
                n.netmask()
            )),
            DestPattern::Net(ipnet::IpNet::V6(n)) => v6.push(format!("isInNetEx(h, \"{n}\")")),
            _ => {}
        }
    }
    if !v4.is_empty() {
        let _ = writeln!(
            js,
            "  // [pac] direct: IPv4 networks (a name is resolved by the browser).\n  \
             if ({}) return \"DIRECT\";",
            v4.join(" || ")
        );
    }
    if !v6.is_empty() {
        let _ = writeln!(
            js,
            "  // [pac] direct: IPv6 networks, for IPv6 addresses, where the browser has \
             isInNetEx.\n  if (h.indexOf(\":\") >= 0 && typeof isInNetEx == \"function\" && \
             ({})) return \"DIRECT\";",
            v6.join(" || ")
        );
    }
    let _ = writeln!(js, "  return \"{}\";\n}}", ways.join("; "));
    Some(js)
}

/// The PAC keyword for reaching the http or auto service `service`:
/// `HTTPS` when it speaks TLS first (the keyword Chromium and Firefox use
/// for a proxy spoken to over TLS), else `PROXY`.
fn proxy_keyword(service: &Service) -> &'static str {
    if service.tls.is_some() {
        "HTTPS"
    } else {
        "PROXY"
    }
}

/// Where a browser that reached this host at `here` reaches `service`:
/// `here` itself when the service listens there (or on the wildcard of its
/// family), else the service's first listen address.
fn reach(service: &Service, here: IpAddr) -> Option<SocketAddr> {
    let on_here = service
        .listen
        .iter()
        .find(|a| a.ip() == here || (a.ip().is_unspecified() && a.is_ipv4() == here.is_ipv4()));
    match on_here {
        Some(a) if !here.is_unspecified() => Some(SocketAddr::new(here, a.port())),
        _ => service.listen.first().copied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    const SERVICES: &str = "[network]\ninternal = [\"127.0.0.1\", \"10.0.0.1\", \"fd00::1\"]\n\
        [[service]]\nname = \"web\"\nkind = \"http\"\nport = 3128\n\
        [[service]]\nname = \"s\"\nkind = \"socks\"\nlisten = [\"10.0.0.1:1080\"]\n\
        [[service]]\nname = \"all\"\nkind = \"auto\"\nport = 8000\n\
        [[service]]\nname = \"status\"\nkind = \"status\"\nport = 8081\n";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn none_without_pac() {
        assert_eq!(script(&config(SERVICES), ip("127.0.0.1")), None);
    }

    #[test]
    fn names_the_services_on_the_address_the_request_arrived_on() {
        let c = config(&format!("{SERVICES}[pac]\nproxy = \"web\"\n"));
        let js = script(&c, ip("127.0.0.1")).expect("a script");
        // The socks service listens on 10.0.0.1 only: named there.
        assert!(
            js.contains("return \"PROXY 127.0.0.1:3128; SOCKS5 10.0.0.1:1080\";"),
            "{js}"
        );
        let js = script(&c, ip("10.0.0.1")).expect("a script");
        assert!(
            js.contains("return \"PROXY 10.0.0.1:3128; SOCKS5 10.0.0.1:1080\";"),
            "{js}"
        );
        let js = script(&c, ip("fd00::1")).expect("a script");
        assert!(
            js.contains("return \"PROXY [fd00::1]:3128; SOCKS5 10.0.0.1:1080\";"),
            "{js}"
        );
        assert!(!js.contains("DIRECT\";\n}"), "no fallback: {js}");
    }

    #[test]
    fn auto_as_proxy_and_as_first_socks() {
        let text = "[[service]]\nname = \"all\"\nkind = \"auto\"\nport = 8000\n\
                    [[service]]\nname = \"s\"\nkind = \"socks\"\nport = 1080\n\
                    [pac]\nproxy = \"all\"\nfallback_direct = true\n";
        let js = script(&config(text), ip("127.0.0.1")).expect("a script");
        assert!(
            js.contains("return \"PROXY 127.0.0.1:8000; SOCKS5 127.0.0.1:8000; DIRECT\";"),
            "{js}"
        );
    }

    /// A proxy with `tls` is named `HTTPS`; a socks service with `tls` is
    /// no way for a browser, so the next one without is named.
    #[test]
    fn tls_services_are_https_and_no_socks() {
        let text = "[[service]]\nname = \"web\"\nkind = \"http\"\nport = 3129\n\
                    [[service]]\nname = \"st\"\nkind = \"socks\"\nport = 1443\n\
                    [[service]]\nname = \"s\"\nkind = \"socks\"\nport = 1080\n\
                    [pac]\nproxy = \"web\"\n";
        let mut c = config(text);
        for i in [0, 1] {
            c.services[i].tls = Some(crate::config::Tls {
                cert: "/etc/portico/proxy.pem".into(),
                key: "/etc/portico/proxy.key".into(),
                client_ca: None,
                client_cert_user: false,
                server: None,
            });
        }
        let js = script(&c, ip("127.0.0.1")).expect("a script");
        assert!(
            js.contains("return \"HTTPS 127.0.0.1:3129; SOCKS5 127.0.0.1:1080\";"),
            "{js}"
        );
    }

    #[test]
    fn without_socks_the_proxy_alone() {
        let text = "[[service]]\nname = \"web\"\nkind = \"http\"\nport = 3128\n\
                    [pac]\nproxy = \"web\"\n";
        let js = script(&config(text), ip("127.0.0.1")).expect("a script");
        assert!(js.contains("return \"PROXY 127.0.0.1:3128\";"), "{js}");
    }

    #[test]
    fn direct_entries() {
        let c = config(&format!(
            "{SERVICES}[pac]\nproxy = \"all\"\ndirect = [\"*.lan\", \"printer.example\", \
             \"192.168.0.0/16\", \"10.1.2.3\", \"fd12::/16\"]\n"
        ));
        let js = script(&c, ip("127.0.0.1")).expect("a script");
        for want in [
            "function FindProxyForURL(url, host) {",
            "if (isPlainHostName(h) && h.indexOf(\":\") < 0) return \"DIRECT\";",
            "if (h == \"127.0.0.1\" || h == \"10.0.0.1\" || h == \"fd00::1\") return \"DIRECT\";",
            "if (shExpMatch(h, \"*.lan\") || h == \"printer.example\") return \"DIRECT\";",
            "if (isInNet(h, \"192.168.0.0\", \"255.255.0.0\") || \
             isInNet(h, \"10.1.2.3\", \"255.255.255.255\")) return \"DIRECT\";",
            "typeof isInNetEx == \"function\" && (isInNetEx(h, \"fd12::/16\"))",
            "return \"PROXY 127.0.0.1:8000; SOCKS5 10.0.0.1:1080\";",
        ] {
            assert!(js.contains(want), "{want:?} missing from:\n{js}");
        }
    }

    #[test]
    fn pac_paths() {
        assert!(is_pac_path("/proxy.pac"));
        assert!(is_pac_path("/wpad.dat?x=1"));
        assert!(!is_pac_path("/"));
        assert!(!is_pac_path("/proxy.pac/x"));
    }
}
