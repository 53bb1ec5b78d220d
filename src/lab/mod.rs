//! Network-namespace test beds for the end-to-end tests, the demo and the benchmark.
//!
//! Everything here builds its own namespaces (names `fa<pid>x<n>-<role>`), joins them to each
//! other with veth pairs created inside them, and deletes them again — on drop, so also when a
//! test panics. Nothing is connected to the root namespace and no route leads out of the lab.
//!
//! - [`Netns`]: one namespace; run programs in it ([`Netns::exec`], [`Netns::spawn`]) or run a
//!   closure on a thread that joined it ([`Netns::run_in`]).
//! - [`ClientNatLab`]: client 10.0.0.2 — gateway (masquerade, a drop-policy forward chain as an
//!   admin would write it) — server 203.0.113.2, which has no route back to 10.0.0.0/8.
//! - Peers: [`Vsftpd`] (Debian's vsftpd, whose protocol log proves which command a client
//!   sent), [`lftp`] and [`curl`] clients, an [`EprtShim`] that gives libunftp (which has no
//!   EPRT) an EPRT, and [`raw_client`], a minimal client for EPRT over IPv4 (which neither lftp
//!   nor suppaftp send).
//! - [`AlgDaemon`]: the `ftp-alg` binary running in the gateway, and the [`nft`] helpers that
//!   inspect its table.
//! - [`preflight`]: whether this machine can host a lab, and the CI policy (fail under
//!   `CI=true`, skip with a reason otherwise).
//!
//! The embedded libunftp server and suppaftp client live with the tests (`tests/common`),
//! because those crates are dev-dependencies.

mod alg;
pub mod attacker;
mod cli_clients;
pub mod diagram;
mod eprt_shim;
mod error;
mod mode;
mod netns;
pub mod nft;
pub mod preflight;
mod process;
pub mod raw_client;
pub mod relay;
pub mod report;
pub mod reverse;
pub mod routed;
mod routing_state;
pub mod scenario;
mod scratch;
mod topology;
mod vsftpd;
mod wiring;

pub use alg::AlgDeployment;
pub use alg::{AlgDaemon, AlgOptions};
pub use cli_clients::{curl, lftp};
pub use cli_clients::{curl_at, lftp_at};
pub use eprt_shim::EprtShim;
pub use error::{LabError, Result};
pub use mode::{DataMode, FtpOp, OpOutcome, SessionReport, TransferPlan};
pub use netns::{
    Netns, NsThread, mark_kept, remove_own_namespaces, remove_stale_namespaces, unique_tag,
};
pub use process::{Bounded, ServiceChild};
pub use reverse::{ReverseLab, ReverseOptions};
pub use routed::RoutedLab;
pub use routing_state::{ALG_ROUTE_MARK, ALG_ROUTE_TABLE, policy_routing_entries};
pub use scratch::{PAYLOAD_LEN, ScratchDir, remove_own_scratch_dirs, set_mode, write_random_file};
pub use topology::{
    ALG_CT_MARK, CLIENT_IP, ClientNatLab, ClientNatOptions, GATEWAY_LAN_IP, GATEWAY_WAN_IP, LAN_IF,
    SERVER_IP, WAN_IF, gateway_ruleset, kernel_helper_table,
};
pub use topology::{CLIENT_IP6, GATEWAY_LAN_IP6, GATEWAY_WAN_IP6, SERVER_IP6};
pub use vsftpd::{
    FTP_PASSWORD, FTP_USER, VSFTPD_PASV_PORTS, Vsftpd, ensure_ftp_user, parse_commands,
};
pub use vsftpd::{LoggedProcess, VsftpdOptions, parse_processes};
