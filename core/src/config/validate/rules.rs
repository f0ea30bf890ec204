//! `[[rule]]`: one rule's match and action, checked against the services
//! and users already read.

use super::*;

pub(super) fn rule(
    cx: &Ctx,
    r: &RawRule,
    services: &[Service],
    users: &[User],
    helper: bool,
    network: &Network,
) -> Result<Rule> {
    let action = match r.action.get_ref().as_str() {
        "allow" => RuleAction::Allow,
        "deny" => RuleAction::Deny,
        other => {
            return Err(cx.err(
                r.action.span(),
                format!("rule action \"{other}\" is not \"allow\" or \"deny\""),
            ))
        }
    };
    let non_empty = |len: usize, span: Range<usize>, key: &str, what: &str| -> Result<()> {
        if len == 0 {
            Err(cx.err(
                span,
                format!("rule {key} = [] would match nothing; leave the key out to match {what}"),
            ))
        } else {
            Ok(())
        }
    };

    let mut out_services = Vec::new();
    if let Some(l) = &r.services {
        non_empty(l.get_ref().len(), l.span(), "services", "every service")?;
        for s in l.get_ref() {
            let n = s.get_ref();
            if !services.iter().any(|x| &x.name == n) {
                let known: Vec<&str> = services.iter().map(|x| x.name.as_str()).collect();
                return Err(cx.err(
                    s.span(),
                    format!(
                        "rule names unknown service '{n}'; the services are: {}",
                        known.join(", ")
                    ),
                ));
            }
            out_services.push(n.clone());
        }
    }

    let mut clients = Vec::new();
    if let Some(l) = &r.clients {
        non_empty(l.get_ref().len(), l.span(), "clients", "any client")?;
        for c in l.get_ref() {
            clients.push(cx.named("rule clients", c, |t| values::parse_net(t))?);
        }
    }

    let mut out_users = Vec::new();
    if let Some(l) = &r.users {
        non_empty(l.get_ref().len(), l.span(), "users", "anyone")?;
        for u in l.get_ref() {
            let n = u.get_ref();
            if !helper && !users.iter().any(|x| &x.name == n) {
                let hint = if users.is_empty() {
                    "no [[user]] is defined".to_string()
                } else {
                    let known: Vec<&str> = users.iter().map(|x| x.name.as_str()).collect();
                    format!("the users are: {}", known.join(", "))
                };
                return Err(cx.err(u.span(), format!("rule names unknown user '{n}'; {hint}")));
            }
            out_users.push(n.clone());
        }
    }

    let mut destinations = Vec::new();
    if let Some(l) = &r.destinations {
        non_empty(l.get_ref().len(), l.span(), "destinations", "anywhere")?;
        for d in l.get_ref() {
            destinations.push(cx.named("rule destinations", d, |t| values::parse_dest_pattern(t))?);
        }
    }

    let mut ports = Vec::new();
    if let Some(l) = &r.ports {
        non_empty(l.get_ref().len(), l.span(), "ports", "any port")?;
        for p in l.get_ref() {
            ports.push(cx.named("rule ports", p, values::port_range_value)?);
        }
    }

    let days = match &r.days {
        None => None,
        Some(l) => {
            non_empty(l.get_ref().len(), l.span(), "days", "every day")?;
            let mut mask = 0u8;
            for d in l.get_ref() {
                mask |= cx.named("rule days", d, |t| values::parse_days(t))?;
            }
            Some(mask)
        }
    };

    let hours = match &r.hours {
        None => None,
        Some(h) => Some(cx.named("rule hours", h, |t| values::parse_hours(t))?),
    };

    let rate = match &r.rate {
        None => None,
        Some(v) => {
            if action == RuleAction::Deny {
                return Err(cx.err(
                    v.span(),
                    "rate only applies to allow rules (a deny rule lets nothing through to \
                     cap); remove it or use action = \"allow\"",
                ));
            }
            Some(cx.named("rule rate", v, values::rate_value)?)
        }
    };

    let outgoing = match &r.outgoing {
        None => None,
        Some(v) if action == RuleAction::Deny => {
            return Err(cx.err(
                v.span(),
                "outgoing only applies to allow rules (a deny rule opens no connection); \
                 remove it or use action = \"allow\"",
            ))
        }
        Some(v) => Some(source_address(
            cx,
            v,
            "rule outgoing",
            &network.external,
            false,
        )?),
    };

    Ok(Rule {
        action,
        services: out_services,
        clients,
        users: out_users,
        destinations,
        ports,
        days,
        hours,
        rate,
        outgoing,
        via: None,
    })
}
