//! `[[service]]`: one service's keys, its kind's own, and the addresses
//! it listens on (checked against the network's sides).

use super::*;

pub(super) fn service(
    cx: &Ctx,
    s: &S<RawService>,
    network: &Network,
    have_users: bool,
) -> Result<Service> {
    let r = s.get_ref();
    let name = cx.value(&r.name, |n| {
        if n.is_empty() {
            return Err("a service name must not be empty".to_string());
        }
        check_no_control(n, "service")?;
        if n.chars().any(char::is_whitespace) {
            return Err(format!(
                "service name \"{n}\" contains whitespace; names appear in log lines and \
                 metrics, use e.g. \"{}\"",
                n.split_whitespace().collect::<Vec<_>>().join("-")
            ));
        }
        Ok(n.clone())
    })?;
    let e = |span: Range<usize>, msg: String| cx.err(span, format!("service '{name}': {msg}"));

    let kind = ServiceKind::from_name(r.kind.get_ref()).ok_or_else(|| {
        let list: Vec<&str> = ServiceKind::ALL.iter().map(|k| k.name()).collect();
        e(
            r.kind.span(),
            format!(
                "unknown kind \"{}\"; use one of {}",
                r.kind.get_ref(),
                list.join(", ")
            ),
        )
    })?;
    let is_mapped = kind == ServiceKind::Mapped;

    let side = match &r.side {
        None => ListenSide::Internal,
        Some(v) => match v.get_ref().as_str() {
            "internal" => ListenSide::Internal,
            "external" => ListenSide::External,
            other => {
                return Err(e(
                    v.span(),
                    format!("side \"{other}\" is not \"internal\" or \"external\""),
                ))
            }
        },
    };
    let open_proxy = r.open_proxy.as_ref().is_some_and(|v| *v.get_ref());
    if side == ListenSide::External && !is_mapped {
        let span = r.side.as_ref().map_or(r.kind.span(), |v| v.span());
        if kind == ServiceKind::Status {
            return Err(e(
                span,
                "the status page is internal only, even with open_proxy = true; use side = \
                 \"internal\""
                    .to_string(),
            ));
        }
        if !open_proxy {
            return Err(e(
                span,
                format!(
                    "{} {kind} service with side = \"external\" would be an open proxy on the \
                     Internet side; use side = \"internal\" (only mapped ports may listen on the \
                     external side), or add open_proxy = true if that is really what you want",
                    kind.article()
                ),
            ));
        }
    }

    let protocol = match &r.protocol {
        None => Transport::Tcp,
        Some(v) => match v.get_ref().as_str() {
            "tcp" => Transport::Tcp,
            "udp" if is_mapped => Transport::Udp,
            "udp" => {
                return Err(e(
                    v.span(),
                    format!(
                        "protocol = \"udp\" is only for mapped services; {} {kind} service is tcp",
                        kind.article()
                    ),
                ))
            }
            other => {
                return Err(e(
                    v.span(),
                    format!("protocol \"{other}\" is not \"tcp\" or \"udp\""),
                ))
            }
        },
    };

    let listen = listen(cx, s, side, network).map_err(|mut err| {
        err.message = format!("service '{name}': {}", err.message);
        err
    })?;

    let destination = match (&r.destination, kind) {
        (
            Some(d),
            ServiceKind::Http
            | ServiceKind::Socks
            | ServiceKind::Auto
            | ServiceKind::Status
            | ServiceKind::Transparent,
        ) => {
            let why = match kind {
                ServiceKind::Status => "the status page serves itself",
                ServiceKind::Transparent => {
                    "each connection goes where the client sent it before the firewall \
                     redirected it"
                }
                _ => "its clients name the destination of each request",
            };
            return Err(e(
                d.span(),
                format!(
                    "{} {kind} service takes no destination ({why}); remove it",
                    kind.article()
                ),
            ));
        }
        (Some(d), _) => Some(
            cx.value(d, |t| {
                values::parse_destination(t, kind.default_destination_port())
            })
            .map_err(|mut err| {
                err.message = format!("service '{name}': destination {}", err.message);
                err
            })?,
        ),
        (None, ServiceKind::Mapped | ServiceKind::Smtp | ServiceKind::Nntp) => {
            let example = match kind {
                ServiceKind::Mapped => "destination = \"192.168.1.20:22\"",
                ServiceKind::Smtp => "destination = \"smtp.example.net:25\"",
                _ => "destination = \"news.example.net:119\"",
            };
            return Err(e(
                s.span(),
                format!("a {kind} service needs a destination to connect to; add e.g. {example}"),
            ));
        }
        (None, _) => None,
    };
    if protocol == Transport::Udp {
        if let (Some(d), Some(raw)) = (&destination, &r.destination) {
            if let crate::config::Host::Name(n) = &d.host {
                return Err(e(
                    raw.span(),
                    format!(
                        "a udp mapped port needs an IP address as its destination, not the \
                         name '{n}' (datagrams are not worth a lookup each)"
                    ),
                ));
            }
        }
    }

    let auth = match &r.auth {
        None => false,
        Some(v) => {
            let on = *v.get_ref();
            if on
                && !matches!(
                    kind,
                    ServiceKind::Http
                        | ServiceKind::Socks
                        | ServiceKind::Auto
                        | ServiceKind::Telnet
                )
            {
                return Err(e(
                    v.span(),
                    format!(
                        "auth = true is not possible on a {kind} service (only http, socks, \
                         auto and telnet ask clients for a user name and password); remove it \
                         and limit access with [[rule]] clients instead"
                    ),
                ));
            }
            if on && !have_users {
                return Err(e(
                    v.span(),
                    "auth = true but no [[user]] is defined, so nobody could log in; add a \
                     [[user]] with a name and a password"
                        .to_string(),
                ));
            }
            on
        }
    };

    let connect_ports = match &r.connect_ports {
        None => vec![443],
        Some(l) if !matches!(kind, ServiceKind::Http | ServiceKind::Auto) => {
            return Err(e(
                l.span(),
                format!(
                    "connect_ports only applies to http and auto services, not {kind}; remove it"
                ),
            ))
        }
        Some(l) => {
            let mut out = Vec::new();
            for p in l.get_ref() {
                let port = cx
                    .value(p, |&i| values::port_from_int(i))
                    .map_err(|mut err| {
                        err.message = format!("service '{name}': connect_ports: {}", err.message);
                        err
                    })?;
                if !out.contains(&port) {
                    out.push(port);
                }
            }
            out
        }
    };

    let separator = match &r.separator {
        None => "#".to_string(),
        Some(v) if kind != ServiceKind::Pop3 => {
            return Err(e(
                v.span(),
                format!("separator only applies to pop3 services, not {kind}; remove it"),
            ))
        }
        Some(v) => {
            let sep = v.get_ref();
            if sep.is_empty() {
                return Err(e(
                    v.span(),
                    "separator is empty; use one or more characters, e.g. \"#\"".to_string(),
                ));
            }
            if sep
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ':')
            {
                return Err(e(
                    v.span(),
                    format!(
                        "separator \"{}\" contains whitespace, a control character or ':'; \
                         use e.g. \"#\" or \"%\"",
                        sep.escape_default()
                    ),
                ));
            }
            sep.clone()
        }
    };

    let proxy_protocol = r.proxy_protocol.as_ref().is_some_and(|v| *v.get_ref());
    if let (true, Transport::Udp, Some(v)) = (proxy_protocol, protocol, &r.proxy_protocol) {
        return Err(e(
            v.span(),
            "proxy_protocol = true needs a TCP service; a PROXY header cannot arrive on a udp \
             mapped port"
                .to_string(),
        ));
    }
    let proxy_protocol_from = match &r.proxy_protocol_from {
        None => Vec::new(),
        Some(l) if !proxy_protocol => {
            return Err(e(
                l.span(),
                "proxy_protocol_from has no effect without proxy_protocol = true; add that or \
                 remove proxy_protocol_from"
                    .to_string(),
            ))
        }
        Some(l) => {
            let mut out = Vec::new();
            for n in l.get_ref() {
                out.push(cx.value(n, |t| values::parse_net(t)).map_err(|mut err| {
                    err.message = format!("service '{name}': proxy_protocol_from: {}", err.message);
                    err
                })?);
            }
            out
        }
    };
    if proxy_protocol && proxy_protocol_from.is_empty() {
        let span = r
            .proxy_protocol_from
            .as_ref()
            .map(|l| l.span())
            .or(r.proxy_protocol.as_ref().map(|v| v.span()))
            .unwrap_or(s.span());
        return Err(e(
            span,
            "proxy_protocol = true needs proxy_protocol_from = [...] listing the load balancers \
             allowed to send a PROXY header (e.g. [\"10.0.0.5/32\"]); a header from anyone else \
             would let them forge client addresses"
                .to_string(),
        ));
    }

    let send_proxy_protocol = match &r.send_proxy_protocol {
        None => None,
        Some(v) if !is_mapped => {
            return Err(e(
                v.span(),
                format!("send_proxy_protocol only applies to mapped services, not {kind}"),
            ))
        }
        Some(v) if protocol == Transport::Udp => {
            return Err(e(
                v.span(),
                "send_proxy_protocol needs a TCP mapped port, not protocol = \"udp\"".to_string(),
            ))
        }
        Some(v) => Some(match v.get_ref().as_str() {
            "v1" => ProxyVersion::V1,
            "v2" => ProxyVersion::V2,
            other => {
                return Err(e(
                    v.span(),
                    format!("send_proxy_protocol \"{other}\" is not \"v1\" or \"v2\""),
                ))
            }
        }),
    };

    let commands = match &r.commands {
        None => SocksCommands::default(),
        Some(l) if !matches!(kind, ServiceKind::Socks | ServiceKind::Auto) => {
            return Err(e(
                l.span(),
                format!("commands only applies to socks and auto services, not {kind}; remove it"),
            ))
        }
        Some(l) => {
            let mut c = SocksCommands {
                connect: false,
                bind: false,
                udp: false,
            };
            for v in l.get_ref() {
                match v.get_ref().as_str() {
                    "connect" => c.connect = true,
                    "bind" => c.bind = true,
                    "udp" => c.udp = true,
                    other => {
                        return Err(e(
                            v.span(),
                            format!(
                                "commands: \"{}\" is not a SOCKS command; use \"connect\", \
                                 \"bind\" or \"udp\"",
                                other.escape_default()
                            ),
                        ))
                    }
                }
            }
            // An auto service with none still serves HTTP; a socks one
            // would refuse every request.
            if kind == ServiceKind::Socks && !(c.connect || c.bind || c.udp) {
                return Err(e(
                    l.span(),
                    "commands is empty: this socks service would refuse every request; list \
                     at least one of \"connect\", \"bind\" or \"udp\" (or remove the service)"
                        .to_string(),
                ));
            }
            c
        }
    };
    let udp_announce = match &r.udp_announce {
        None => None,
        Some(v) if !matches!(kind, ServiceKind::Socks | ServiceKind::Auto) => {
            return Err(e(
                v.span(),
                format!(
                    "udp_announce only applies to socks and auto services, not {kind}; remove it"
                ),
            ))
        }
        Some(v) => Some(cx.value(v, |t| values::parse_ip(t)).map_err(|mut err| {
            err.message = format!("service '{name}': udp_announce: {}", err.message);
            err
        })?),
    };
    let outgoing =
        match &r.outgoing {
            None => None,
            Some(o) if kind == ServiceKind::Status => return Err(e(
                o.span(),
                "outgoing does not apply to a status service, which connects nowhere; remove it"
                    .to_string(),
            )),
            Some(o) => Some(
                source_address(cx, o, "outgoing", &network.external, false)
                    .map_err(|err| e(o.span(), err.message))?,
            ),
        };
    let tls = match &r.tls {
        None => None,
        Some(t) => {
            if !matches!(
                kind,
                ServiceKind::Http | ServiceKind::Socks | ServiceKind::Auto | ServiceKind::Status
            ) {
                return Err(e(
                    t.span(),
                    format!("tls applies to http, socks, auto and status services, not {kind}"),
                ));
            }
            if proxy_protocol {
                return Err(e(
                    t.span(),
                    "tls and proxy_protocol = true together are not supported yet; a balancer \
                     in front of a TLS service passes TLS through as a mapped port"
                        .to_string(),
                ));
            }
            let t = t.get_ref();
            let path = |v: &S<String>, what: &str| {
                cx.value(v, |p| match p.as_str() {
                    "" => Err(format!(
                        "service '{name}': tls {what} is empty; give the path of a PEM file"
                    )),
                    _ if p.contains('\0') => Err(format!(
                        "service '{name}': tls {what} contains a NUL character"
                    )),
                    _ => Ok(PathBuf::from(p)),
                })
            };
            let client_ca = t
                .client_ca
                .as_ref()
                .map(|v| path(v, "client_ca"))
                .transpose()?;
            let client_cert_user = t.client_cert_user.as_ref().is_some_and(|v| *v.get_ref());
            if let (true, None, Some(v)) = (client_cert_user, &client_ca, &t.client_cert_user) {
                return Err(e(
                    v.span(),
                    "tls client_cert_user = true needs client_ca: only a certificate the CA \
                     signed can name a user"
                        .to_string(),
                ));
            }
            Some(crate::config::Tls {
                cert: path(&t.cert, "cert")?,
                key: path(&t.key, "key")?,
                client_ca,
                client_cert_user,
                server: None,
            })
        }
    };

    let tproxy = match &r.tproxy {
        Some(v) if *v.get_ref() && kind != ServiceKind::Transparent => {
            return Err(e(
                v.span(),
                format!(
                    "tproxy = true only applies to transparent services, not {kind}; remove it"
                ),
            ))
        }
        Some(v) => *v.get_ref(),
        None => false,
    };
    if let (ServiceKind::Transparent, Some(v)) = (kind, &r.proxy_protocol) {
        if *v.get_ref() {
            return Err(e(
                v.span(),
                "proxy_protocol = true does not apply to a transparent service: a balancer in \
                 front would hide the original destination the firewall redirected; remove it"
                    .to_string(),
            ));
        }
    }

    Ok(Service {
        tproxy,
        tls,
        name,
        kind,
        side,
        listen,
        auth,
        connect_ports,
        destination,
        protocol,
        open_proxy,
        separator,
        proxy_protocol,
        proxy_protocol_from,
        send_proxy_protocol,
        commands,
        udp_announce,
        outgoing,
        via: None,
    })
}

/// Resolves `port` / `listen` into addresses (errors without the service
/// prefix, which the caller adds).
fn listen(
    cx: &Ctx,
    s: &S<RawService>,
    side: ListenSide,
    network: &Network,
) -> Result<Vec<SocketAddr>> {
    let r = s.get_ref();
    let (mine, list_name, other, other_name) = match side {
        ListenSide::Internal => (
            &network.internal,
            "network.internal",
            &network.external,
            "network.external",
        ),
        ListenSide::External => (
            &network.external,
            "network.external",
            &network.internal,
            "network.internal",
        ),
    };
    match (&r.port, &r.listen) {
        (Some(_), Some(l)) => Err(cx.err(
            l.span(),
            "give either port (every address of the side) or listen (exact addresses), not both",
        )),
        (None, None) => Err(cx.err(
            s.span(),
            "needs a port to listen on (port = 8080 opens it on every address of its side) or \
             exact addresses (listen = [\"127.0.0.1:8080\"])",
        )),
        (Some(p), None) => {
            let port = cx.value(p, |&i| values::port_from_int(i))?;
            if mine.is_empty() {
                let span = r.side.as_ref().map_or(p.span(), |v| v.span());
                return Err(cx.err(
                    span,
                    format!(
                        "side = \"{}\" but {list_name} is empty, so port = {port} would open \
                         nowhere; add the addresses to {list_name}",
                        side.name()
                    ),
                ));
            }
            Ok(mine.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
        }
        (None, Some(l)) => {
            if l.get_ref().is_empty() {
                return Err(cx.err(
                    l.span(),
                    "listen is empty; give at least one address, e.g. [\"127.0.0.1:8080\"], or \
                     use port = N",
                ));
            }
            let mut out = Vec::new();
            for a in l.get_ref() {
                let addr = cx.value(a, |t| values::parse_listen(t))?;
                if !mine.contains(&addr.ip()) {
                    let fix = match (side, other.contains(&addr.ip())) {
                        (ListenSide::Internal, true) => format!(
                            "it is one of {other_name}, where only an incoming mapped port \
                             (side = \"external\") may listen"
                        ),
                        (ListenSide::Internal, false) => format!("add it to {list_name}"),
                        (ListenSide::External, true) => {
                            format!("it is one of {other_name}; use side = \"internal\"")
                        }
                        (ListenSide::External, false) => {
                            "add it there or use side = \"internal\"".to_string()
                        }
                    };
                    return Err(cx.err(
                        a.span(),
                        format!("listen address {addr} is not one of {list_name}; {fix}"),
                    ));
                }
                out.push(addr);
            }
            Ok(out)
        }
    }
}
