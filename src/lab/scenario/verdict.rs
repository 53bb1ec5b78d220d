//! Did the session work, and if not, why — in words built from what was observed: the peers'
//! socket errors and addresses, the gateway's dropped-SYN counters, the capture — and as a
//! typed [`Failure`], which is what a cell's prediction is checked against (a predicted
//! failure only counts as expected when it failed the predicted way).

use std::net::SocketAddr;
use std::time::Duration;

use super::Observation;
use super::peers::{ConnectFailure, PeerEvent, Side};

/// The outcome of one cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The download arrived intact.
    pub ok: bool,
    /// For a success: what carried the data; for a failure: why it failed.
    pub text: String,
    /// For a failure: what it failed on (`None` for a success).
    pub failure: Option<Failure>,
}

/// What a failed session failed on, in terms a prediction can be checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The data connection could not be opened and the session ended on that: in active mode
    /// the server's connect failed and it answered the client 425; in passive mode the
    /// client's own connect failed.
    DataConnect {
        /// Who opened the data connection.
        opener: Side,
        /// Where it tried to connect (the address named in PORT/EPRT/227/229).
        remote: SocketAddr,
        /// How the connect ended.
        how: ConnectFailure,
        /// The drop recorder counted a SYN toward `remote` (or from the opener's socket).
        dropped: bool,
        /// For a refused connect: who sent the RST, when the gateway's capture shows it.
        rst: Option<RstSender>,
    },
    /// Anything else: the control connection, a refused command, a damaged download, the
    /// session bound, or a failed data connect the session did not end on.
    Other,
}

/// Who sent the RST that refused a connect, as the gateway's capture shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RstSender {
    /// The gateway itself: seen leaving via `iface`, never arriving on any interface.
    Gateway {
        /// The interface it left by.
        iface: String,
    },
    /// A host beyond the gateway: it arrived from `from` on `iface` and was forwarded.
    Forwarded {
        /// Its source as it arrived.
        from: SocketAddr,
        /// The interface it arrived on.
        iface: String,
    },
}

/// The verb that announced the address the opener used: PORT/EPRT or 227/229.
pub(super) fn announcing_verb(obs: &Observation<'_>) -> &'static str {
    match obs.id.mode {
        crate::lab::DataMode::Port => "PORT",
        crate::lab::DataMode::Eprt => "EPRT",
        crate::lab::DataMode::Pasv => "227",
        crate::lab::DataMode::Epsv => "229",
    }
}

/// A failed data connection as the opener's socket reported it.
pub(super) struct FailedConnect {
    pub side: Side,
    pub local: Option<SocketAddr>,
    pub remote: SocketAddr,
    pub failure: ConnectFailure,
    pub error: String,
    pub waited: Duration,
}

pub(super) fn failed_connect(obs: &Observation<'_>) -> Option<FailedConnect> {
    obs.events.iter().find_map(|e| match &e.what {
        PeerEvent::DataConnectFailed {
            local,
            remote,
            failure,
            error,
            waited,
        } => Some(FailedConnect {
            side: e.side,
            local: *local,
            remote: *remote,
            failure: *failure,
            error: error.clone(),
            waited: *waited,
        }),
        _ => None,
    })
}

/// The drop recorder's entry for a SYN toward `remote` (or from `local`), exactly.
pub(super) fn recorded_drop<'a>(
    obs: &'a Observation<'_>,
    local: Option<SocketAddr>,
    remote: SocketAddr,
) -> Option<&'a super::DroppedSyn> {
    obs.dropped
        .iter()
        .find(|d| d.dst == remote || Some(d.src) == local)
}

/// The drop recorder's entry for a SYN toward `remote` (or from `local`); failing that, one
/// toward the same port (a destination NAT changed the address the chain saw).
pub(super) fn matching_drop<'a>(
    obs: &'a Observation<'_>,
    local: Option<SocketAddr>,
    remote: SocketAddr,
) -> Option<&'a super::DroppedSyn> {
    recorded_drop(obs, local, remote)
        .or_else(|| obs.dropped.iter().find(|d| d.dst.port() == remote.port()))
}

/// Who sent the RST that answered the opener's SYN to `remote`: the capture's sighting of it
/// leaving toward the opener, paired with a sighting of it arriving on another interface by
/// its sequence and acknowledgement numbers (NAT changes addresses, never those). No arrival:
/// the gateway made it. Not in the capture at all: `None`, and nobody is named.
pub(super) fn rst_sender(
    obs: &Observation<'_>,
    local: Option<SocketAddr>,
    remote: SocketAddr,
) -> Option<RstSender> {
    let leaving = obs.segments.iter().find(|s| {
        s.outgoing && s.flags.rst && s.src == remote && local.is_none_or(|l| s.dst == l)
    })?;
    let arrived = obs.segments.iter().find(|s| {
        !s.outgoing
            && s.flags.rst
            && s.iface != leaving.iface
            && s.seq == leaving.seq
            && s.ack == leaving.ack
    });
    Some(match arrived {
        Some(a) => RstSender::Forwarded {
            from: a.src,
            iface: a.iface.clone(),
        },
        None => RstSender::Gateway {
            iface: leaving.iface.clone(),
        },
    })
}

/// Whether the session ended on the failed data connect `f` (rather than merely recording
/// it): the client's account must be the consequence. In active mode that is the server's 425
/// to the client; in passive mode the client's connect error ends the session by itself.
fn session_ended_on(obs: &Observation<'_>, f: &FailedConnect) -> bool {
    if obs.client.timed_out {
        return false;
    }
    match f.side {
        Side::Client => true,
        Side::Server => obs.events.iter().any(|e| {
            e.side == Side::Client
                && matches!(&e.what, PeerEvent::Received(reply) if reply.starts_with("425"))
        }),
    }
}

fn role(side: Side) -> (&'static str, &'static str) {
    match side {
        Side::Server => ("server", "client"),
        Side::Client => ("client", "server"),
    }
}

/// How the other peer is seen from the opener: the server sees the client as the control
/// connection's source; the client reached the server at the address it connected to.
fn peer_as_seen(obs: &Observation<'_>, opener: Side) -> Option<std::net::IpAddr> {
    obs.events.iter().find_map(|e| match (&e.what, opener) {
        (PeerEvent::ControlAccepted { peer, .. }, Side::Server) if e.side == Side::Server => {
            Some(peer.ip())
        }
        (PeerEvent::ControlConnected { remote, .. }, Side::Client) if e.side == Side::Client => {
            Some(remote.ip())
        }
        _ => None,
    })
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Judges one cell.
pub(super) fn judge(obs: &Observation<'_>) -> Verdict {
    if obs.client.ok {
        return Verdict {
            ok: true,
            text: success(obs),
            failure: None,
        };
    }
    let verb = announcing_verb(obs);
    if let Some(f) = failed_connect(obs) {
        let (opener, other) = role(f.side);
        let from = f.local.map(|l| format!(" from {l}")).unwrap_or_default();
        let text = match f.failure {
            ConnectFailure::Unreachable => {
                let mut text = format!(
                    "{opener}'s SYN{from} to {} (named in {verb}) cannot be sent: no route to {}",
                    f.remote,
                    f.remote.ip()
                );
                if let Some(seen) = peer_as_seen(obs, f.side)
                    && seen != f.remote.ip()
                {
                    text.push_str(&format!(
                        " — the {opener} knows the {other} as {seen}; {} is an address behind the gateway",
                        f.remote.ip()
                    ));
                }
                text
            }
            ConnectFailure::TimedOut => match matching_drop(obs, f.local, f.remote) {
                Some(drop) => format!(
                    "SYN from {} to {} dropped by the gateway's forward chain (policy drop; {} SYN{} in {:.1} s)",
                    drop.src,
                    drop.dst,
                    drop.packets,
                    plural(drop.packets),
                    f.waited.as_secs_f64()
                ),
                None => format!(
                    "{opener}'s SYN{from} to {} (named in {verb}) got no answer within {:.1} s",
                    f.remote,
                    f.waited.as_secs_f64()
                ),
            },
            ConnectFailure::Refused => {
                let rst = rst_sender(obs, f.local, f.remote);
                refused_text(obs, &f, opener, &from, verb, rst.as_ref())
            }
            ConnectFailure::Other => {
                format!(
                    "{opener} could not connect{from} to {}: {}",
                    f.remote, f.error
                )
            }
        };
        if !session_ended_on(obs, &f) {
            // Not the story the connect error alone would tell: say how the session ended.
            let ended = obs
                .client
                .failure
                .as_deref()
                .unwrap_or("the session failed otherwise");
            return Verdict {
                ok: false,
                text: format!("{text}; but the session did not end on that: {ended}"),
                failure: Some(Failure::Other),
            };
        }
        let failure = Failure::DataConnect {
            opener: f.side,
            remote: f.remote,
            how: f.failure,
            dropped: recorded_drop(obs, f.local, f.remote).is_some(),
            rst: (f.failure == ConnectFailure::Refused)
                .then(|| rst_sender(obs, f.local, f.remote))
                .flatten(),
        };
        return Verdict {
            ok: false,
            text,
            failure: Some(failure),
        };
    }
    if let Some(bytes) = obs.events.iter().find_map(|e| match e.what {
        PeerEvent::Transferred { bytes, intact } if e.side == Side::Client && !intact => {
            Some(bytes)
        }
        _ => None,
    }) {
        return Verdict {
            ok: false,
            text: format!("the download differs from the served file ({bytes} bytes received)"),
            failure: Some(Failure::Other),
        };
    }
    let refusal = obs.events.iter().find_map(|e| match &e.what {
        PeerEvent::Received(reply)
            if e.side == Side::Client
                && reply.chars().next().is_some_and(|c| c == '4' || c == '5') =>
        {
            Some(reply.clone())
        }
        _ => None,
    });
    let text = match refusal {
        Some(reply) => format!("the client was answered `{reply}`"),
        None => obs
            .client
            .failure
            .clone()
            .unwrap_or_else(|| "the session failed".into()),
    };
    Verdict {
        ok: false,
        text,
        failure: Some(Failure::Other),
    }
}

/// The words for a refused connect: who sent the RST only when the capture shows it.
fn refused_text(
    obs: &Observation<'_>,
    f: &FailedConnect,
    opener: &str,
    from: &str,
    verb: &str,
    rst: Option<&RstSender>,
) -> String {
    let to_gateway = [
        obs.addresses.gateway_client_side,
        obs.addresses.gateway_server_side,
    ]
    .contains(&f.remote.ip());
    let syn = format!("{opener}'s SYN{from} to {} (named in {verb})", f.remote);
    let port = f.remote.port();
    match (rst, to_gateway) {
        (Some(RstSender::Gateway { iface }), true) => format!(
            "{syn} was refused by the gateway itself (its RST seen leaving via {iface}, never \
             arriving): no port-forward for port {port} and nothing listens there"
        ),
        (Some(RstSender::Gateway { iface }), false) => format!(
            "{syn} was refused by the gateway itself (its RST seen leaving via {iface}, never \
             arriving) instead of being forwarded"
        ),
        (
            Some(RstSender::Forwarded {
                from: sender,
                iface,
            }),
            _,
        ) => format!(
            "{syn} was refused: RST from {sender} (arriving on {iface}, forwarded by the \
             gateway): nothing listens there"
        ),
        (None, true) => format!(
            "{syn} was refused (RST); the gateway's capture does not show the RST, so whether \
             the gateway itself or a host it forwards port {port} to refused it is not observed"
        ),
        (None, false) => format!(
            "{syn} was refused (RST): nothing listens there, or a firewall on the way rejected \
             it (the gateway's capture does not show the RST)"
        ),
    }
}

fn success(obs: &Observation<'_>) -> String {
    let opened = obs.events.iter().find_map(|e| match e.what {
        PeerEvent::DataConnected { local, remote } => Some((e.side, local, remote)),
        _ => None,
    });
    let accepted = obs.events.iter().find_map(|e| match e.what {
        PeerEvent::DataAccepted { local, peer } => Some((local, peer)),
        _ => None,
    });
    let bytes = obs
        .events
        .iter()
        .find_map(|e| match e.what {
            PeerEvent::Transferred { bytes, .. } if e.side == Side::Client => Some(bytes),
            _ => None,
        })
        .unwrap_or(0);
    let mut text = format!("{bytes} bytes intact");
    if let Some((side, local, remote)) = opened {
        let (opener, _) = role(side);
        text.push_str(&format!("; {opener} connected {local} → {remote}"));
        if let Some((l_local, l_peer)) = accepted
            && (l_local != remote || l_peer != local)
        {
            text.push_str(&format!(", arrived as {l_peer} → {l_local}"));
        }
    }
    text
}
