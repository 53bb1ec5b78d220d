//! ftp-alg: a userspace FTP application-level gateway for Linux gateways.
//!
//! Layout (dependencies point downward only):
//!
//! - [`cli`] / `main.rs`: argument parsing and start-up; no protocol logic.
//! - [`proxy`]: sockets — the intercepting listener, original destination, upstream connect.
//! - [`session`]: one control connection; drives [`ftp`] with bytes, asks [`firewall`] for
//!   pinholes, decides what to forward, owns the lifetime of its pinholes.
//! - [`ftp`]: the sans-IO protocol: line framing, commands, replies, address codecs.
//! - [`firewall`]: the only code that talks to netfilter (base table and pinholes).
//! - [`config`]: the typed configuration, validated once at load.
//! - [`host`]: what the host's CPU idle setup costs each wake-up (read-only, for the start
//!   log, `ftp-alg status` and the benchmark reports).
//! - [`generate`]: the man page and shell completions, from the [`cli`] definitions.
//! - [`lab`]: network-namespace test beds used by the tests, the demo and the benchmark, and
//!   `ftp-alg lab` (scenarios, diagrams, report).
//! - [`watch`]: `ftp-alg watch`, the live explainer (read-only capture, plain-word findings).

pub mod cli;
pub mod config;
pub mod daemon;
pub mod firewall;
pub mod ftp;
pub mod generate;
pub mod host;
pub mod lab;
pub mod proxy;
pub mod realtime;
pub mod session;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod watch;
