//! Replaying a trace: a fresh table fed the recorded inputs, printing the
//! actions it takes, as the live run printed its own.

use std::time::{Duration, Instant};

use super::*;
use crate::config;
use crate::event::Event;
use crate::table::{Accepted, Proxy, Reload};

/// Runs a fresh core over `trace` and hands `out` one line per action (see
/// [`render_action`]), in order: actions are taken where the live run took
/// them (its `polled` records), and whatever is left at the end.
pub fn replay(trace: &[u8], out: &mut impl FnMut(String)) -> Result<(), TraceError> {
    let reader = Reader::new(trace)?;
    let header = reader.header().clone();
    let config = config::parse(&header.config, CONFIG_NAME).map_err(|e| TraceError::Config {
        message: e.to_string(),
    })?;
    let base = Instant::now();
    let mut proxy = Proxy::new(config, header.seed, base);
    let mut last_input = 0u64;
    for entry in reader {
        let Entry {
            number,
            offset,
            line,
            record,
        } = entry?;
        let diverged = |message: String| TraceError::Diverged {
            record: number,
            line,
            offset,
            message,
        };
        let at = |t: u64| {
            base.checked_add(Duration::from_nanos(t))
                .ok_or_else(|| TraceError::Corrupt {
                    offset,
                    line,
                    message: "the time is too far in the future for this system's clock".into(),
                })
        };
        match record {
            Record::Polled { n } => {
                for i in 0..n {
                    let Some(a) = proxy.poll_action() else {
                        return Err(diverged(format!(
                            "the live run took {n} actions here; the replay has only {i}"
                        )));
                    };
                    out(render_action(last_input, &a));
                }
                continue;
            }
            Record::Sent { n } => {
                for i in 0..n {
                    let Some((via, data)) = proxy.poll_datagram() else {
                        return Err(diverged(format!(
                            "the live run took {n} datagrams here; the replay has only {i}"
                        )));
                    };
                    out(render_datagram(last_input, &via, data.len()));
                }
                continue;
            }
            _ => {}
        }
        last_input = number;
        match record {
            Record::LogLevel(l) => proxy.set_log_level(l),
            Record::Wall(w) => proxy.set_wall(w),
            Record::Quotas(text) => proxy.load_quotas(&text).map_err(|e| TraceError::Corrupt {
                offset,
                line,
                message: format!("the quota counts: {e}"),
            })?,
            Record::Accept {
                t,
                listener,
                peer,
                local,
                original,
                result,
            } => {
                let now = at(t)?;
                let accepted = Accepted::new(listener, peer).original(original);
                let got = match local {
                    None => proxy.accept(accepted, now),
                    Some(local) => proxy.accept(accepted.local(local), now),
                };
                if got != result {
                    return Err(diverged(format!(
                        "accept returned {got:?}; the live run got {result:?}"
                    )));
                }
            }
            Record::Event { t, event, bytes } => {
                let now = at(t)?;
                if let Event::Read { conn, side, n } = event {
                    let Some(buf) = proxy.recv_buf(conn, side) else {
                        return Err(diverged(format!(
                            "the live run read {n} bytes on {} of {conn}; the replayed core \
                             offers no buffer there",
                            SideName(side)
                        )));
                    };
                    let room = buf.len();
                    let Some(dst) = buf.get_mut(..n) else {
                        return Err(diverged(format!(
                            "the live run read {n} bytes on {} of {conn}; the replayed core \
                             offers room for {room}",
                            SideName(side)
                        )));
                    };
                    match bytes {
                        Some(b) if b.len() == n => dst.copy_from_slice(&b),
                        Some(b) => {
                            return Err(TraceError::Corrupt {
                                offset,
                                line,
                                message: format!("a read of {n} bytes keeps {}", b.len()),
                            })
                        }
                        None => dst.fill(0),
                    }
                }
                proxy.handle(event, now);
            }
            Record::Timeout { t } => proxy.handle_timeout(at(t)?),
            Record::Shutdown { t } => proxy.shutdown(at(t)?),
            Record::Reload {
                t,
                config: text,
                recheck,
            } => {
                let now = at(t)?;
                let config = config::parse(&text, CONFIG_NAME).map_err(|e| TraceError::Config {
                    message: format!("the reload of record {number} (line {line}): {e}"),
                })?;
                let reload = Reload {
                    text: &text,
                    recheck,
                    closed_elsewhere: 0,
                };
                proxy.reconfigure(config, reload, now);
            }
            Record::ReloadFailed { t, message } => proxy.reload_failed(&message, at(t)?),
            Record::Datagram {
                t,
                listener,
                from,
                n,
            } => {
                let now = at(t)?;
                let buf = proxy.datagram_buf();
                let room = buf.len();
                let Some(dst) = buf.get_mut(..n) else {
                    return Err(diverged(format!(
                        "the live run received a datagram of {n} bytes; the replayed core \
                         offers room for {room}"
                    )));
                };
                dst.fill(0);
                proxy.handle_datagram(listener, from, n, now);
            }
            Record::Reply { t, id, n } => {
                let now = at(t)?;
                let buf = proxy.datagram_buf();
                let room = buf.len();
                let Some(dst) = buf.get_mut(..n) else {
                    return Err(diverged(format!(
                        "the live run received a reply of {n} bytes; the replayed core \
                         offers room for {room}"
                    )));
                };
                dst.fill(0);
                proxy.handle_reply(id, n, now);
            }
            Record::UdpFailed { t, id } => proxy.handle_udp_failed(id, at(t)?),
            Record::AssociationDatagram {
                t,
                conn,
                outward,
                from,
                n,
                bytes,
            } => {
                let now = at(t)?;
                let buf = proxy.datagram_buf();
                let room = buf.len();
                let Some(dst) = buf.get_mut(..n) else {
                    return Err(diverged(format!(
                        "the live run received a datagram of {n} bytes; the replayed core \
                         offers room for {room}"
                    )));
                };
                dst.fill(0);
                let kept = bytes.unwrap_or_default();
                if let Some(head) = dst.get_mut(..kept.len()) {
                    head.copy_from_slice(&kept);
                }
                proxy.handle_association_datagram(conn, outward, from, n, now);
            }
            Record::Polled { .. } | Record::Sent { .. } => {}
        }
    }
    while let Some(a) = proxy.poll_action() {
        out(render_action(last_input, &a));
    }
    while let Some((via, data)) = proxy.poll_datagram() {
        out(render_datagram(last_input, &via, data.len()));
    }
    Ok(())
}

/// [`replay`], collecting the lines.
pub fn replay_lines(trace: &[u8]) -> Result<Vec<String>, TraceError> {
    let mut lines = Vec::new();
    replay(trace, &mut |l| lines.push(l))?;
    Ok(lines)
}
