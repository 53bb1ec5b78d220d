//! The session's security invariants over arbitrary input, for the cargo-fuzz target
//! `session` (and a stable smoke test): bytes are split into an interleaving of client and
//! server chunks, fed through a real [`Session`] with the in-memory firewall, and every
//! pinhole it asked for must name the session's own client and server and a port above
//! 1023, and none may be left when it ends. Panics (for the fuzzer) when one does not hold.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Endpoints, Policy, PortAllocator, Session, Topology};
use crate::config::{PasvAddressPolicy, TlsPolicy};
use crate::firewall::{Direction, FakeFirewall};

/// Runs one session over `data` and checks the invariants; returns how many pinholes the
/// session opened (so that a harness can tell whether its inputs reach the interesting paths).
pub fn check_session(data: &[u8]) -> usize {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return 0;
    };
    let ends = Endpoints {
        client: ([10, 0, 0, 2], 50000).into(),
        client_facing: ([203, 0, 113, 2], 21).into(),
        server: ([203, 0, 113, 2], 21).into(),
        upstream_local: ([203, 0, 113, 1], 40000).into(),
    };
    let policy = Policy {
        pinhole_timeout: Duration::from_secs(30),
        max_pinholes: 4,
        pasv_address: PasvAddressPolicy::Rewrite,
        max_line: 256,
        idle_timeout: Duration::from_secs(60),
        allow: Vec::new(),
        deny: vec![b"DELE".to_vec()],
        mask_banner: data.first().is_some_and(|b| b & 1 == 1),
        mask_syst: true,
        tls: TlsPolicy::Passthrough,
        realtime_boost: 0,
    };
    let firewall = Arc::new(FakeFirewall::default());
    let fake = firewall.clone();
    runtime.block_on(async move {
        let (mut client, client_side) = tokio::io::duplex(1 << 16);
        let (mut server, server_side) = tokio::io::duplex(1 << 16);
        let session = Session::new(
            ends,
            Topology::ClientNat,
            Arc::new(policy),
            firewall,
            Arc::new(PortAllocator::new(40000..=40015, Duration::ZERO)),
        );
        let session = tokio::spawn(session.run(client_side, server_side));
        let (mut client_r, mut client_w) = tokio::io::split(&mut client);
        let (mut server_r, mut server_w) = tokio::io::split(&mut server);
        let feed = async {
            // Each chunk: a header byte (side in the top bit, length in the rest), then bytes.
            let mut rest = data.get(1..).unwrap_or_default();
            while let Some((&header, tail)) = rest.split_first() {
                let len = usize::from(header & 0x7f).min(tail.len());
                let (chunk, tail) = tail.split_at(len);
                let _ = if header & 0x80 == 0 {
                    client_w.write_all(chunk).await
                } else {
                    server_w.write_all(chunk).await
                };
                tokio::task::yield_now().await;
                rest = tail;
            }
            let _ = client_w.shutdown().await;
            let _ = server_w.shutdown().await;
        };
        let drain_client = async {
            let mut sink = Vec::new();
            let _ = client_r.read_to_end(&mut sink).await;
        };
        let drain_server = async {
            let mut sink = Vec::new();
            let _ = server_r.read_to_end(&mut sink).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(feed, drain_client, drain_server)
        })
        .await;
        drop(client);
        drop(server);
        let _ = tokio::time::timeout(Duration::from_secs(5), session).await;
    });
    let client = ends.client.ip();
    let server = ends.server.ip();
    for (pinhole, _) in fake.opened() {
        assert!(pinhole.to.port() > 1023, "privileged port: {pinhole}");
        match pinhole.direction {
            Direction::Passive => {
                assert_eq!(pinhole.from, client, "{pinhole}");
                assert_eq!(pinhole.to.ip(), server, "{pinhole}");
            }
            Direction::Active => {
                assert_eq!(pinhole.from, server, "{pinhole}");
                assert_eq!(pinhole.to.ip(), client, "{pinhole}");
                assert_eq!(
                    pinhole.via.map(|v| v.ip()),
                    Some(ends.upstream_local.ip()),
                    "{pinhole}"
                );
            }
        }
    }
    assert!(fake.live().is_empty(), "left open: {:?}", fake.live());
    fake.opened().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_session_invariants_hold_for_pseudo_random_input() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let pieces: [&[u8]; 8] = [
            b"PASV\r\n",
            b"PORT 10,0,0,2,195,80\r\n",
            b"PORT 1,2,3,4,0,21\r\n",
            b"EPRT |1|10.0.0.2|50001|\r\n",
            b"227 x (203,0,113,2,117,48)\r\n",
            b"229 (|||4000|)\r\n",
            b"200 ok\r\n",
            b"220 hi\r\n",
        ];
        let mut opened = 0;
        for _ in 0..300 {
            let mut data = vec![0u8];
            for _ in 0..12 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let piece = pieces[(state % 8) as usize];
                let side = if state & 0x100 == 0 { 0 } else { 0x80 };
                data.push(side | piece.len() as u8);
                data.extend_from_slice(piece);
            }
            opened += check_session(&data);
        }
        assert!(
            opened > 50,
            "inputs reached few pinholes ({opened}): the smoke proves little"
        );
    }
}
