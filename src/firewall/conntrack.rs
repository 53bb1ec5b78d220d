//! Is a data connection still alive? Asked of the kernel's connection tracking, so that a
//! control connection's idle timeout never cuts a session whose transfer is still running,
//! and always cuts one whose "transfer" has no connection at all.
//!
//! Asked only when an idle timer expires during a transfer or in FTPS passthrough (rare), so
//! spawning the `conntrack` tool is acceptable; without it we answer "alive" (never cut a
//! transfer) and say so once in the log.

use std::net::IpAddr;
use std::process::{Command, Stdio};

use tracing::warn;

use super::Pinhole;

/// Whether conntrack holds a TCP connection in the pinhole's original direction that is not
/// closing: `from` → (`via` or `to`).
pub(super) fn alive(pinhole: &Pinhole) -> bool {
    let target = pinhole.via.unwrap_or(pinhole.to);
    let (from, to, port) = (
        pinhole.from.to_string(),
        target.ip().to_string(),
        target.port().to_string(),
    );
    // No tool or no permission: do not cut what might be a transfer.
    list(&["-s", &from, "-d", &to, "--dport", &port]).is_none_or(|listed| {
        listed
            .lines()
            .any(|line| line.contains("ESTABLISHED") || line.contains("SYN_"))
    })
}

/// `conntrack -L -p tcp` with `filter`; `None` (said once in the log) when it cannot be asked.
fn list(filter: &[&str]) -> Option<String> {
    let out = Command::new("conntrack")
        .args(["-L", "-p", "tcp"])
        .args(filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        out => {
            unanswered(out.err());
            None
        }
    }
}

/// Says once that conntrack could not be asked, and what that costs.
fn unanswered(error: Option<std::io::Error>) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        let why = error.map_or_else(
            || "it failed (no permission?)".to_owned(),
            |e| format!("cannot run it: {e}"),
        );
        warn!(
            "conntrack: {why}; an idle control connection is then kept as long as a data \
             connection might be running, i.e. until a peer closes it (install the conntrack \
             package)"
        );
    });
}

/// Whether conntrack holds a live TCP connection between `client` and `server` (either way
/// round, through any NAT) shaped like an FTP data connection (see [`live_flow_between`]):
/// the data connection of an FTPS session, whose control channel hides it.
pub(super) fn between(client: IpAddr, server: IpAddr, control_ports: &[u16]) -> bool {
    // Client-initiated flows carry the client as original source; server-initiated ones
    // (active mode) carry it as reply source, after any DNAT.
    let client_text = client.to_string();
    let mut listed = String::new();
    for side in ["--orig-src", "--reply-src"] {
        match list(&[side, &client_text]) {
            Some(flows) => listed.push_str(&flows),
            // No tool or no permission: do not cut what might be a transfer.
            None => return true,
        }
    }
    listed
        .lines()
        .any(|line| live_flow_between(line, client, server, control_ports))
}

/// One line of `conntrack -L`: a live flow between the two hosts shaped like an FTP data
/// connection. Client-initiated (passive), its server-side port is above 1023 and not a
/// control port; server-initiated (active), it comes from port 20 or from the port below a
/// control port, or goes to a client port above 1023. HTTPS, SSH and the control
/// connection itself do not count.
fn live_flow_between(line: &str, client: IpAddr, server: IpAddr, control_ports: &[u16]) -> bool {
    if !(line.contains("ESTABLISHED") || line.contains("SYN_")) {
        return false;
    }
    // Original tuple first, then the reply tuple.
    let mut hosts = Vec::with_capacity(4);
    let mut dports = Vec::with_capacity(2);
    let mut sports = Vec::with_capacity(2);
    for (key, value) in line
        .split_ascii_whitespace()
        .filter_map(|word| word.split_once('='))
    {
        match key {
            "src" | "dst" => hosts.extend(value.parse::<IpAddr>().ok()),
            "sport" => sports.extend(value.parse::<u16>().ok()),
            "dport" => dports.extend(value.parse::<u16>().ok()),
            _ => {}
        }
    }
    if !(hosts.contains(&client) && hosts.contains(&server)) {
        return false;
    }
    let (Some(&opener), Some(&sport), Some(&dport)) =
        (hosts.first(), sports.first(), dports.first())
    else {
        return false;
    };
    if opener == client {
        dport >= 1024 && !control_ports.contains(&dport)
    } else if opener == server {
        // Port 20 (or the one below the control port) as root servers use; an unprivileged
        // one (vsftpd's default) connects from any port, to the client's port above 1023.
        sport == 20
            || control_ports.iter().any(|&c| c > 1 && sport == c - 1)
            || (dport >= 1024 && !control_ports.contains(&dport))
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    const CLIENT: &str = "10.0.0.2";
    const SERVER: &str = "203.0.113.2";

    fn between(line: &str) -> bool {
        live_flow_between(line, ip(CLIENT), ip(SERVER), &[21])
    }

    #[test]
    fn a_passive_data_connection_through_snat_counts() {
        assert!(between(
            "tcp      6 431999 ESTABLISHED src=10.0.0.2 dst=203.0.113.2 sport=50000 \
             dport=30001 src=203.0.113.2 dst=198.51.100.1 sport=30001 dport=50000 [ASSURED] \
             mark=0 use=1"
        ));
    }

    #[test]
    fn an_active_data_connection_through_dnat_counts() {
        assert!(between(
            "tcp      6 119 SYN_SENT src=203.0.113.2 dst=198.51.100.1 sport=20 dport=40001 \
             [UNREPLIED] src=10.0.0.2 dst=203.0.113.2 sport=50001 dport=20 mark=0 use=1"
        ));
    }

    #[test]
    fn the_control_connection_and_closing_or_unrelated_flows_do_not() {
        // The client's control connection, redirected to the proxy.
        assert!(!between(
            "tcp      6 431999 ESTABLISHED src=10.0.0.2 dst=203.0.113.2 sport=50000 dport=21 \
             src=10.0.0.1 dst=10.0.0.2 sport=2121 dport=50000 [ASSURED] mark=0 use=1"
        ));
        assert!(!between(
            "tcp      6 119 TIME_WAIT src=10.0.0.2 dst=203.0.113.2 sport=50000 dport=30001 \
             src=203.0.113.2 dst=198.51.100.1 sport=30001 dport=50000 [ASSURED] mark=0 use=1"
        ));
        assert!(!between(
            "tcp      6 431999 ESTABLISHED src=10.0.0.2 dst=192.0.2.9 sport=50000 dport=443 \
             src=192.0.2.9 dst=198.51.100.1 sport=443 dport=50000 [ASSURED] mark=0 use=1"
        ));
        // Other services of the same host: HTTPS, SSH, and a connection the server opens
        // from a port of its own.
        for (sport, dport) in [(50000, 443), (50001, 22)] {
            assert!(!between(&format!(
                "tcp      6 431999 ESTABLISHED src=10.0.0.2 dst=203.0.113.2 sport={sport} \
                 dport={dport} src=203.0.113.2 dst=198.51.100.1 sport={dport} dport={sport} \
                 [ASSURED] mark=0 use=1"
            )));
        }
        // A server-initiated connection to a low port of the client is no data connection.
        assert!(!between(
            "tcp      6 431999 ESTABLISHED src=203.0.113.2 dst=198.51.100.1 sport=33000 \
             dport=25 src=10.0.0.2 dst=203.0.113.2 sport=25 dport=33000 [ASSURED] \
             mark=0 use=1"
        ));
        // An unprivileged server's active data connection, from an ephemeral port.
        assert!(between(
            "tcp      6 431999 ESTABLISHED src=203.0.113.2 dst=198.51.100.1 sport=33000 \
             dport=40001 src=10.0.0.2 dst=203.0.113.2 sport=50001 dport=33000 [ASSURED] \
             mark=0 use=1"
        ));
    }

    #[test]
    fn ipv6_flows_compare_as_addresses() {
        assert!(live_flow_between(
            "tcp      6 431999 ESTABLISHED src=2001:db8:1::2 dst=2001:db8:2::2 sport=50000 \
             dport=30001 src=2001:db8:2::2 dst=2001:db8:1::2 sport=30001 dport=50000 \
             [ASSURED] mark=0 use=1",
            ip("2001:db8:1:0::2"),
            ip("2001:db8:2::2"),
            &[21],
        ));
    }
}
