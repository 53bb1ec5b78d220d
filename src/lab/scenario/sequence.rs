//! From one cell's observations to a [`Sequence`]: rows are made only from what the peers
//! recorded (their lines, their sockets' addresses, their errors) and what the gateway saw (the
//! capture, the dropped-SYN counters). A line that reached the other side changed is drawn in
//! two halves with a note on the gateway; a SYN that was dropped ends in a cross at the gateway.

use std::net::SocketAddr;

use super::Observation;
use super::Variant;
use super::peers::{ConnectFailure, PeerEvent, Side};
use super::verdict::{
    RstSender, Verdict, announcing_verb, failed_connect, matching_drop, rst_sender,
};
use crate::lab::diagram::{Lane, Row, Sequence, Style};

fn lane(side: Side) -> Lane {
    match side {
        Side::Client => Lane::Client,
        Side::Server => Lane::Server,
    }
}

fn verb(line: &str) -> String {
    line.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

fn code(line: &str) -> Option<&str> {
    line.get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
}

/// Lines not drawn one by one: the login is one row each way, goodbye is left out.
fn is_login(line: &str) -> bool {
    matches!(verb(line).as_str(), "USER" | "PASS" | "TYPE")
}

fn is_noise(line: &str) -> bool {
    matches!(verb(line).as_str(), "QUIT") || matches!(code(line), Some("220" | "221"))
}

/// The address a PORT/EPRT/227/229 line names, in dotted form, for the detail line.
fn named_address(line: &str, control_peer: Option<SocketAddr>) -> Option<String> {
    if let Ok(command) = crate::ftp::parse_command(line.as_bytes()) {
        match command {
            crate::ftp::Command::Port(addr) => return Some(format!("= {addr}")),
            crate::ftp::Command::Eprt(addr) => return Some(format!("= {addr}")),
            _ => {}
        }
    }
    if line.starts_with("227") {
        return crate::lab::raw_client::parse_227(line).map(|a| format!("= {a}"));
    }
    if line.starts_with("229") {
        let port = crate::lab::raw_client::parse_229(line)?;
        return Some(match control_peer {
            Some(peer) => format!("= port {port} at {} (the control peer)", peer.ip()),
            None => format!("= port {port}"),
        });
    }
    None
}

/// Shortens the long reply texts so that a half arrow can carry them.
fn short(line: &str) -> String {
    line.replace("Entering Extended Passive Mode ", "")
        .replace("Entering Passive Mode ", "")
}

fn ms(at: std::time::Duration) -> Option<u64> {
    Some(u64::try_from(at.as_millis()).unwrap_or(u64::MAX))
}

fn rewriter(variant: Variant) -> &'static str {
    match variant {
        Variant::None => "rewritten in the gateway",
        Variant::KernelHelper => "rewritten by the kernel's FTP helper (nf_nat_ftp)",
        Variant::FtpAlg => "rewritten by ftp-alg",
    }
}

/// Builds the diagram of one cell.
pub(super) fn build(obs: &Observation<'_>, verdict: &Verdict) -> Sequence {
    let addresses = &obs.addresses;
    let id = obs.id;
    let title = format!(
        "{} · {} · {}",
        id.topology.title(),
        id.mode,
        id.variant.title()
    );
    let lanes = [
        ("client".to_owned(), addresses.client.to_string()),
        (
            format!("gateway · {}", id.variant.title()),
            format!(
                "{} {} | {} {}",
                addresses.client_if,
                addresses.gateway_client_side,
                addresses.server_if,
                addresses.gateway_server_side
            ),
        ),
        ("server".to_owned(), addresses.server.ip().to_string()),
    ];
    let mut rows = Vec::new();
    let events = obs.events;
    let mut used = vec![false; events.len()];
    let client_control = events.iter().find_map(|e| match e.what {
        PeerEvent::ControlConnected { local, remote } => Some((local, remote)),
        _ => None,
    });
    let server_control = events.iter().find_map(|e| match e.what {
        PeerEvent::ControlAccepted { local, peer } => Some((local, peer)),
        _ => None,
    });
    let mut login_drawn = [false, false];
    let mut data_drawn = false;
    for (i, event) in events.iter().enumerate() {
        if used[i] {
            continue;
        }
        used[i] = true;
        let at = ms(event.at);
        match &event.what {
            PeerEvent::ControlConnected { local, remote } => {
                control_rows(obs, &mut rows, *local, *remote, server_control, at);
            }
            PeerEvent::ControlFailed { remote, error } => rows.push(Row::Arrow {
                from: Lane::Client,
                to: Lane::Gateway,
                label: format!("control connection to {remote}"),
                detail: Some(error.clone()),
                style: Style::Blocked,
                at_ms: at,
            }),
            PeerEvent::Sent(line) | PeerEvent::Received(line) if is_noise(line) => {}
            PeerEvent::Sent(line) | PeerEvent::Received(line)
                if is_login(line) || login_reply(events, i) =>
            {
                // One row for the whole login in each direction.
                let command = matches!(
                    (&event.what, event.side),
                    (PeerEvent::Sent(_), Side::Client) | (PeerEvent::Received(_), Side::Server)
                );
                let slot = usize::from(!command);
                if !login_drawn[slot] {
                    login_drawn[slot] = true;
                    rows.push(login_row(events, command, at));
                }
            }
            PeerEvent::Sent(line) if event.side == Side::Client => {
                let counterpart = find_unused(events, &used, i, |e| {
                    e.side == Side::Server
                        && matches!(&e.what, PeerEvent::Received(l) if verb(l) == verb(line))
                });
                crossing_rows(
                    obs,
                    &mut rows,
                    Side::Client,
                    line,
                    counterpart.map(|j| {
                        used[j] = true;
                        received_text(&events[j].what)
                    }),
                    at,
                    client_control.map(|c| c.1),
                );
            }
            PeerEvent::Sent(line) => {
                let counterpart = find_unused(events, &used, i, |e| {
                    e.side == Side::Client
                        && matches!(&e.what, PeerEvent::Received(l) if code(l) == code(line))
                });
                crossing_rows(
                    obs,
                    &mut rows,
                    Side::Server,
                    line,
                    counterpart.map(|j| {
                        used[j] = true;
                        received_text(&events[j].what)
                    }),
                    at,
                    client_control.map(|c| c.1),
                );
            }
            PeerEvent::Received(line) => {
                // Received without a matching send on the other side: the gateway said it.
                let (from, to) = match event.side {
                    Side::Client => (Lane::Gateway, Lane::Client),
                    Side::Server => (Lane::Gateway, Lane::Server),
                };
                rows.push(Row::Arrow {
                    from,
                    to,
                    label: short(line),
                    detail: Some("from the gateway itself".into()),
                    style: if event.side == Side::Client {
                        Style::Reply
                    } else {
                        Style::Command
                    },
                    at_ms: at,
                });
            }
            PeerEvent::Listening(_) | PeerEvent::DataAcceptTimedOut { .. } => {}
            PeerEvent::DataConnected { local, remote } => {
                data_connected_rows(obs, &mut rows, event.side, *local, *remote, at);
            }
            PeerEvent::DataConnectFailed { waited, .. } => {
                // Drawn when the first SYN left, not when the opener gave up.
                data_failed_rows(obs, &mut rows, ms(event.at.saturating_sub(*waited)));
            }
            PeerEvent::DataAccepted { .. } => {}
            PeerEvent::Transferred { .. } if event.side == Side::Server => {
                // The bytes as the client got them, drawn where the server finished sending
                // (before its 226).
                let got = events.iter().find_map(|e| match e.what {
                    PeerEvent::Transferred { bytes, intact } if e.side == Side::Client => {
                        Some((bytes, intact))
                    }
                    _ => None,
                });
                if let Some((bytes, intact)) = got {
                    rows.push(data_row(bytes, intact, at));
                    data_drawn = true;
                }
            }
            PeerEvent::Transferred { bytes, intact } => {
                if !data_drawn {
                    rows.push(data_row(*bytes, *intact, at));
                    data_drawn = true;
                }
            }
            PeerEvent::ControlAccepted { .. } => {}
        }
    }
    Sequence {
        title,
        lanes,
        rows,
        verdict: (verdict.ok, verdict.text.clone()),
    }
}

fn data_row(bytes: usize, intact: bool, at_ms: Option<u64>) -> Row {
    Row::Arrow {
        from: Lane::Server,
        to: Lane::Client,
        label: format!("data: {bytes} bytes of lab.bin"),
        detail: Some(if intact {
            "identical to the served file".into()
        } else {
            "NOT the served file".into()
        }),
        style: Style::Data,
        at_ms,
    }
}

/// Whether event `i` is a reply to a login command (the client's 331/230/200 after USER...).
fn login_reply(events: &[super::peers::Event], i: usize) -> bool {
    let side = events[i].side;
    let is_reply = matches!(
        (&events[i].what, side),
        (PeerEvent::Received(_), Side::Client) | (PeerEvent::Sent(_), Side::Server)
    );
    if !is_reply {
        return false;
    }
    // The command this side handled just before this reply.
    events[..i]
        .iter()
        .rev()
        .filter(|e| e.side == side)
        .find_map(|e| match (&e.what, side) {
            (PeerEvent::Sent(l), Side::Client) | (PeerEvent::Received(l), Side::Server) => {
                Some(is_login(l))
            }
            _ => None,
        })
        .unwrap_or(false)
}

fn login_row(events: &[super::peers::Event], command: bool, at_ms: Option<u64>) -> Row {
    let lines: Vec<String> = events
        .iter()
        .filter(|e| e.side == Side::Client)
        .filter_map(|e| match &e.what {
            PeerEvent::Sent(l) if is_login(l) => Some(l.clone()),
            _ => None,
        })
        .collect();
    if command {
        Row::Arrow {
            from: Lane::Client,
            to: Lane::Server,
            label: lines.join(" · "),
            detail: Some("log in (unchanged on the way)".into()),
            style: Style::Command,
            at_ms,
        }
    } else {
        let codes: Vec<String> = events
            .iter()
            .enumerate()
            .filter(|(i, e)| e.side == Side::Client && login_reply(events, *i))
            .filter_map(|(_, e)| match &e.what {
                PeerEvent::Received(l) => code(l).map(str::to_owned),
                _ => None,
            })
            .collect();
        Row::Arrow {
            from: Lane::Server,
            to: Lane::Client,
            label: codes.join(" · "),
            detail: None,
            style: Style::Reply,
            at_ms,
        }
    }
}

fn received_text(what: &PeerEvent) -> String {
    match what {
        PeerEvent::Received(l) | PeerEvent::Sent(l) => l.clone(),
        _ => String::new(),
    }
}

fn find_unused(
    events: &[super::peers::Event],
    used: &[bool],
    after: usize,
    wanted: impl Fn(&super::peers::Event) -> bool,
) -> Option<usize> {
    (after + 1..events.len()).find(|&j| !used[j] && wanted(&events[j]))
}

fn control_rows(
    obs: &Observation<'_>,
    rows: &mut Vec<Row>,
    local: SocketAddr,
    remote: SocketAddr,
    accepted: Option<(SocketAddr, SocketAddr)>,
    at_ms: Option<u64>,
) {
    match accepted {
        Some((server_local, peer)) if server_local == remote && peer == local => {
            rows.push(Row::Arrow {
                from: Lane::Client,
                to: Lane::Server,
                label: "control connection".into(),
                detail: Some(format!("{local} → {remote}")),
                style: Style::Connect,
                at_ms,
            });
        }
        Some((server_local, peer)) => {
            rows.push(Row::Arrow {
                from: Lane::Client,
                to: Lane::Gateway,
                label: "control connection".into(),
                detail: Some(format!("{local} → {remote}")),
                style: Style::Connect,
                at_ms,
            });
            let how = if control_forwarded(obs, local) {
                let mut parts = Vec::new();
                if server_local != remote {
                    parts.push(format!("port-forward (DNAT) {remote} → {server_local}"));
                }
                if peer != local {
                    parts.push(format!("masquerade {local} → {peer}"));
                }
                format!("kernel forwards it: {}", parts.join(", "))
            } else {
                "ftp-alg takes the control connection and opens its own to the server".to_owned()
            };
            rows.push(Row::Note {
                lane: Lane::Gateway,
                text: how,
                alarm: false,
            });
            rows.push(Row::Arrow {
                from: Lane::Gateway,
                to: Lane::Server,
                label: "control connection".into(),
                detail: Some(format!("{peer} → {server_local}")),
                style: Style::Connect,
                at_ms,
            });
        }
        None => rows.push(Row::Arrow {
            from: Lane::Client,
            to: Lane::Gateway,
            label: "control connection".into(),
            detail: Some(format!("{local} → {remote}: never reached the server")),
            style: Style::Blocked,
            at_ms,
        }),
    }
}

/// Whether the gateway forwarded the client's control SYN (seen leaving with the same ISN)
/// rather than terminating it (a proxy).
fn control_forwarded(obs: &Observation<'_>, client_local: SocketAddr) -> bool {
    let isn = obs
        .segments
        .iter()
        .find(|s| s.flags.is_syn() && s.src == client_local && !s.outgoing)
        .map(|s| s.seq);
    match isn {
        Some(isn) => obs.segments.iter().any(|s| {
            s.flags.is_syn() && s.seq == isn && s.outgoing && s.iface == obs.addresses.server_if
        }),
        // Not captured: say what the setup implies.
        None => obs.id.variant != Variant::FtpAlg,
    }
}

/// A line from one peer to the other: one arrow when it arrived as sent, two halves and a
/// note when the gateway changed it, a half when it never arrived.
fn crossing_rows(
    obs: &Observation<'_>,
    rows: &mut Vec<Row>,
    from: Side,
    sent: &str,
    received: Option<String>,
    at_ms: Option<u64>,
    client_peer: Option<SocketAddr>,
) {
    let (to, style) = match from {
        Side::Client => (Side::Server, Style::Command),
        Side::Server => (Side::Client, Style::Reply),
    };
    // A 229 names only a port: the client uses it at the address it is connected to.
    let at_client = (from == Side::Server).then_some(client_peer).flatten();
    match received {
        Some(got) if got == sent => rows.push(Row::Arrow {
            from: lane(from),
            to: lane(to),
            label: short(sent),
            detail: named_address(sent, at_client).map(|d| format!("{d} (unchanged)")),
            style,
            at_ms,
        }),
        Some(got) => {
            rows.push(Row::Arrow {
                from: lane(from),
                to: Lane::Gateway,
                label: short(sent),
                detail: named_address(sent, None),
                style,
                at_ms,
            });
            rows.push(Row::Note {
                lane: Lane::Gateway,
                text: rewriter(obs.id.variant).into(),
                alarm: false,
            });
            rows.push(Row::Arrow {
                from: Lane::Gateway,
                to: lane(to),
                label: short(&got),
                detail: named_address(&got, at_client),
                style,
                at_ms,
            });
        }
        None => rows.push(Row::Arrow {
            from: lane(from),
            to: Lane::Gateway,
            label: short(sent),
            detail: Some("answered by the gateway, not passed on".into()),
            style,
            at_ms,
        }),
    }
}

fn data_connected_rows(
    obs: &Observation<'_>,
    rows: &mut Vec<Row>,
    opener: Side,
    local: SocketAddr,
    remote: SocketAddr,
    at_ms: Option<u64>,
) {
    let accepted = obs.events.iter().find_map(|e| match e.what {
        PeerEvent::DataAccepted { local, peer } if e.side != opener => Some((local, peer)),
        _ => None,
    });
    let listener = match opener {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    };
    let label = format!("data connection (SYN from :{})", local.port());
    let admitted = match obs.id.variant {
        Variant::None => None,
        Variant::KernelHelper => Some("admitted as RELATED (the kernel helper's expectation)"),
        Variant::FtpAlg => Some("admitted by ftp-alg's single-use pinhole"),
    };
    match accepted {
        Some((l_local, l_peer)) if l_local == remote && l_peer == local => {
            rows.push(Row::Arrow {
                from: lane(opener),
                to: Lane::Gateway,
                label,
                detail: Some(format!("{local} → {remote}")),
                style: Style::Connect,
                at_ms,
            });
            rows.push(Row::Note {
                lane: Lane::Gateway,
                text: admitted.unwrap_or("forwarded unchanged").into(),
                alarm: false,
            });
            rows.push(Row::Arrow {
                from: Lane::Gateway,
                to: lane(listener),
                label: "unchanged".into(),
                detail: Some(format!("{l_peer} → {l_local}")),
                style: Style::Connect,
                at_ms,
            });
        }
        Some((l_local, l_peer)) => {
            rows.push(Row::Arrow {
                from: lane(opener),
                to: Lane::Gateway,
                label,
                detail: Some(format!("{local} → {remote}")),
                style: Style::Connect,
                at_ms,
            });
            let mut parts = Vec::new();
            if l_local != remote {
                parts.push(format!("DNAT {remote} → {l_local}"));
            }
            if l_peer != local {
                parts.push(format!("SNAT {local} → {l_peer}"));
            }
            rows.push(Row::Note {
                lane: Lane::Gateway,
                text: parts.join(", "),
                alarm: false,
            });
            if let Some(admitted) = admitted {
                rows.push(Row::Note {
                    lane: Lane::Gateway,
                    text: admitted.into(),
                    alarm: false,
                });
            }
            rows.push(Row::Arrow {
                from: Lane::Gateway,
                to: lane(listener),
                label: "translated".into(),
                detail: Some(format!("{l_peer} → {l_local}")),
                style: Style::Connect,
                at_ms,
            });
        }
        None => rows.push(Row::Arrow {
            from: lane(opener),
            to: lane(listener),
            label,
            detail: Some(format!(
                "{local} → {remote} (not accepted by the {listener:?})"
            )),
            style: Style::Connect,
            at_ms,
        }),
    }
}

fn data_failed_rows(obs: &Observation<'_>, rows: &mut Vec<Row>, at_ms: Option<u64>) {
    let Some(f) = failed_connect(obs) else {
        return;
    };
    let verb = announcing_verb(obs);
    let opener = f.side;
    let listener = match opener {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    };
    let from = f.local.map_or_else(|| "?".to_owned(), |l| l.to_string());
    match f.failure {
        ConnectFailure::Unreachable => {
            rows.push(Row::Arrow {
                from: lane(opener),
                to: Lane::Gateway,
                label: format!("SYN to {} (from {verb})", f.remote),
                detail: Some(match f.local {
                    Some(local) => format!("from {local}: no route, nothing is sent"),
                    None => "no route, nothing is sent".to_owned(),
                }),
                style: Style::NotSent,
                at_ms,
            });
            rows.push(Row::Note {
                lane: lane(opener),
                text: format!(
                    "{} is not reachable from the {}: {}",
                    f.remote.ip(),
                    match opener {
                        Side::Client => "client",
                        Side::Server => "server",
                    },
                    f.error
                ),
                alarm: true,
            });
        }
        ConnectFailure::TimedOut => match matching_drop(obs, f.local, f.remote) {
            Some(drop) => {
                rows.push(Row::Arrow {
                    from: lane(opener),
                    to: Lane::Gateway,
                    label: format!("SYN ×{}", drop.packets),
                    detail: Some(format!("{} → {}", drop.src, drop.dst)),
                    style: Style::Blocked,
                    at_ms,
                });
                rows.push(Row::Note {
                    lane: Lane::Gateway,
                    text: format!(
                        "dropped by the forward chain (policy drop): {} SYN{} counted",
                        drop.packets,
                        if drop.packets == 1 { "" } else { "s" }
                    ),
                    alarm: true,
                });
            }
            None => rows.push(Row::Arrow {
                from: lane(opener),
                to: lane(listener),
                label: format!("SYN {from} → {}: no answer", f.remote),
                detail: Some(format!("gave up after {:.1} s", f.waited.as_secs_f64())),
                style: Style::Blocked,
                at_ms,
            }),
        },
        ConnectFailure::Refused => {
            let gateway = [
                obs.addresses.gateway_client_side,
                obs.addresses.gateway_server_side,
            ]
            .contains(&f.remote.ip());
            // The RST is drawn from whoever the capture shows sent it; when the capture does
            // not show it, from where the SYN was addressed, and the detail says so.
            let rst = rst_sender(obs, f.local, f.remote);
            let (rst_lane, rst_detail) = match &rst {
                Some(RstSender::Gateway { iface }) if gateway => (
                    Lane::Gateway,
                    format!(
                        "sent by the gateway (via {iface}): no port-forward for :{}",
                        f.remote.port()
                    ),
                ),
                Some(RstSender::Gateway { iface }) => {
                    (Lane::Gateway, format!("sent by the gateway (via {iface})"))
                }
                Some(RstSender::Forwarded { from, iface }) => (
                    lane(listener),
                    format!("from {from} (arriving on {iface}): nothing listens there"),
                ),
                None => (
                    if gateway {
                        Lane::Gateway
                    } else {
                        lane(listener)
                    },
                    "sender not in the gateway's capture".to_owned(),
                ),
            };
            rows.push(Row::Arrow {
                from: lane(opener),
                to: if gateway {
                    Lane::Gateway
                } else {
                    lane(listener)
                },
                label: format!("SYN {from} → {}", f.remote),
                detail: None,
                style: Style::Connect,
                at_ms,
            });
            rows.push(Row::Arrow {
                from: rst_lane,
                to: lane(opener),
                label: "RST: refused".into(),
                detail: Some(rst_detail),
                style: Style::Blocked,
                at_ms,
            });
        }
        ConnectFailure::Other => rows.push(Row::Arrow {
            from: lane(opener),
            to: Lane::Gateway,
            label: format!("SYN {from} → {}", f.remote),
            detail: Some(f.error.clone()),
            style: Style::Blocked,
            at_ms,
        }),
    }
}
