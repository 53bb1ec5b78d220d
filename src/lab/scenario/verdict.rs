//! Did the session work, and if not, why — in words built from what was observed: the peers'
//! socket errors and addresses, the gateway's dropped-SYN counters, the capture.

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

/// The drop recorder's entry for a SYN toward `remote` (or from `local`).
pub(super) fn matching_drop<'a>(
    obs: &'a Observation<'_>,
    local: Option<SocketAddr>,
    remote: SocketAddr,
) -> Option<&'a super::DroppedSyn> {
    obs.dropped
        .iter()
        .find(|d| d.dst == remote || Some(d.src) == local)
        .or_else(|| obs.dropped.iter().find(|d| d.dst.port() == remote.port()))
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
                let gateway = [
                    obs.addresses.gateway_client_side,
                    obs.addresses.gateway_server_side,
                ]
                .contains(&f.remote.ip());
                if gateway {
                    format!(
                        "{opener}'s SYN{from} to {} (named in {verb}) was refused (RST) by the \
                         gateway itself: no port-forward for port {} and nothing listens there",
                        f.remote,
                        f.remote.port()
                    )
                } else {
                    format!(
                        "{opener}'s SYN{from} to {} (named in {verb}) was refused (RST): nothing listens there",
                        f.remote
                    )
                }
            }
            ConnectFailure::Other => {
                format!(
                    "{opener} could not connect{from} to {}: {}",
                    f.remote, f.error
                )
            }
        };
        return Verdict { ok: false, text };
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
    Verdict { ok: false, text }
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
