//! `[pac]`, `[[parent]]` and `via`: checked apart from the rest of the
//! file since they only name services and parents already read.

use std::time::Duration;

use super::super::raw::{RawPac, RawParent, S};
use super::super::values;
use super::super::{PacConfig, Parent, ParentKind, Pick, ProxyVersion, Service, ServiceKind, Via};
use super::{check_no_control, Ctx, Result};

/// `[pac]`: the service it names must be an http or auto service.
pub(super) fn pac(cx: &Ctx, raw: &RawPac, services: &[Service]) -> Result<PacConfig> {
    let name = raw.proxy.get_ref();
    let proxies: Vec<&str> = services
        .iter()
        .filter(|s| matches!(s.kind, ServiceKind::Http | ServiceKind::Auto))
        .map(|s| s.name.as_str())
        .collect();
    let which = if proxies.is_empty() {
        "there is none; add a [[service]] with kind = \"http\" or kind = \"auto\"".to_string()
    } else {
        format!("the http and auto services are: {}", proxies.join(", "))
    };
    match services.iter().find(|s| &s.name == name) {
        None => {
            return Err(cx.err(
                raw.proxy.span(),
                format!("pac.proxy names unknown service '{name}'; {which}"),
            ))
        }
        Some(s) if !matches!(s.kind, ServiceKind::Http | ServiceKind::Auto) => {
            return Err(cx.err(
                raw.proxy.span(),
                format!(
                    "pac.proxy names service '{name}', a {} service; browsers need an http or \
                     auto service there ({which})",
                    s.kind
                ),
            ))
        }
        Some(_) => {}
    }
    let mut direct = Vec::new();
    if let Some(l) = &raw.direct {
        for d in l.get_ref() {
            direct.push(cx.named("pac.direct", d, |t| values::parse_dest_pattern(t))?);
        }
    }
    Ok(PacConfig {
        proxy: name.clone(),
        direct,
        fallback_direct: raw.fallback_direct.as_ref().is_some_and(|v| *v.get_ref()),
    })
}

/// `via = "direct" | "NAME"` on a service or a rule.
pub(super) fn via(cx: &Ctx, v: &S<String>, parents: &[Parent]) -> Result<Via> {
    cx.value(v, |n| {
        if n == "direct" {
            return Ok(Via::Direct);
        }
        match parents.iter().position(|p| &p.name == n) {
            Some(i) => Ok(Via::Parent(i)),
            None if parents.is_empty() => Err(format!(
                "via names unknown parent '{n}'; no [[parent]] is defined (use \"direct\" \
                 or define one)"
            )),
            None => {
                let known: Vec<&str> = parents.iter().map(|p| p.name.as_str()).collect();
                Err(format!(
                    "via names unknown parent '{n}'; the parents are: {} (or \"direct\")",
                    known.join(", ")
                ))
            }
        }
    })
}

/// One `[[parent]]`.
pub(super) fn parent(cx: &Ctx, p: &S<RawParent>) -> Result<Parent> {
    let r = p.get_ref();
    let name = cx.value(&r.name, |n| {
        if n.is_empty() {
            return Err("a parent name must not be empty".to_string());
        }
        check_no_control(n, "parent")?;
        if n.chars().any(char::is_whitespace) || n.contains('"') || n.contains('=') {
            return Err(format!(
                "parent name \"{n}\" contains whitespace, '\"' or '='; names appear in log \
                 lines (via=NAME) and metric labels"
            ));
        }
        if n == "direct" {
            return Err(
                "\"direct\" is what via says for no parent; give the parent another name"
                    .to_string(),
            );
        }
        Ok(n.clone())
    })?;
    let what = format!("parent '{name}'");
    let kind = cx.named(&what, &r.kind, |k| match k.as_str() {
        "http" => Ok(ParentKind::Http),
        "socks5" => Ok(ParentKind::Socks5),
        "socks4" | "socks4a" => Ok(ParentKind::Socks4),
        other => Err(format!(
            "kind \"{other}\" is not \"http\", \"socks5\" or \"socks4\""
        )),
    })?;
    if r.addresses.get_ref().is_empty() {
        return Err(cx.err(
            r.addresses.span(),
            format!("{what}: addresses = [] lists none; give at least one host:port"),
        ));
    }
    let mut addresses = Vec::new();
    for a in r.addresses.get_ref() {
        let d = cx.named(&format!("{what}: address"), a, |t| {
            values::parse_destination(t, None)
        })?;
        addresses.push((a.get_ref().trim().to_string(), d));
    }
    let pick = match &r.pick {
        None => Pick::Failover,
        Some(v) => cx.named(&what, v, |t| match t.as_str() {
            "failover" => Ok(Pick::Failover),
            "round-robin" => Ok(Pick::RoundRobin),
            "client-hash" => Ok(Pick::ClientHash),
            other => Err(format!(
                "pick \"{other}\" is not \"failover\", \"round-robin\" or \"client-hash\""
            )),
        })?,
    };
    let user = match &r.user {
        None => None,
        Some(u) => Some(cx.named(&what, u, |t| {
            check_no_control(t, "parent user")?;
            if t.is_empty() || t.len() > 255 {
                return Err("user must be 1 to 255 bytes long".to_string());
            }
            if kind == ParentKind::Http && t.contains(':') {
                return Err("an http parent's user cannot contain ':' (Basic \
                            credentials split at the first colon)"
                    .to_string());
            }
            Ok(t.clone())
        })?),
    };
    let password = match &r.password {
        None => None,
        Some(v) => Some(cx.named(&what, v, |t| {
            if kind == ParentKind::Socks4 {
                return Err("a socks4 parent takes a user id only, no password; remove \
                            password or use kind = \"socks5\""
                    .to_string());
            }
            if user.is_none() {
                return Err("password needs user = \"...\" too".to_string());
            }
            if t.len() > 255 {
                return Err("password must be at most 255 bytes long".to_string());
            }
            Ok(t.clone())
        })?),
    };
    if let (Some(u), None, false) = (&r.user, &password, kind == ParentKind::Socks4) {
        return Err(cx.err(
            u.span(),
            format!("{what}: user needs password = \"...\" too"),
        ));
    }
    let down_after = match &r.down_after {
        None => 3,
        Some(v) => cx.named(&what, v, |&n| {
            u32::try_from(n)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("down_after = {n}: use 1 or more failures in a row"))
        })?,
    };
    let retry_after = match &r.retry_after {
        None => Duration::from_secs(30),
        Some(v) => cx.named(&format!("{what}: retry_after"), v, values::duration_value)?,
    };
    let send_proxy_protocol = match &r.send_proxy_protocol {
        None => None,
        Some(v) => Some(cx.named(&what, v, |t| match t.as_str() {
            "v1" => Ok(ProxyVersion::V1),
            "v2" => Ok(ProxyVersion::V2),
            other => Err(format!(
                "send_proxy_protocol \"{other}\" is not \"v1\" or \"v2\""
            )),
        })?),
    };
    Ok(Parent {
        name,
        kind,
        addresses,
        pick,
        user,
        password,
        down_after,
        retry_after,
        send_proxy_protocol,
    })
}
