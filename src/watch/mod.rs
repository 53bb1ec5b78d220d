//! `ftp-alg watch`: a live explainer for a real gateway or a lab namespace.
//!
//! It captures (read-only, see [`capture`]) on one interface or on every interface of a
//! network namespace, decodes the FTP control lines on the control ports and the SYN, SYN-ACK
//! and RST of every other TCP connection, pairs them ([`explain`]) and prints what happened in
//! plain words:
//!
//! ```text
//! [  0.004] client announced 10.0.0.2:50001 in PORT (arriving on lan0): `PORT 10,0,0,2,195,81`
//! [  0.005]   the proxy on the gateway (ftp-alg) rewrote it from 10.0.0.2:50001 to 203.0.113.1:40123 ...
//! [  0.009] server connects 203.0.113.2:20 → 203.0.113.1:40123 (the address in PORT), arriving
//!           on wan0; the gateway forwards it via lan0 to 10.0.0.2:50001 (destination NAT) —
//!           answered with SYN-ACK: the data connection is up
//! ```
//!
//! Watching every interface of the gateway is what makes the pairing possible: a forwarded
//! packet is seen arriving on one side and leaving on the other; one that arrives and never
//! leaves was dropped there. On a single interface it reports what that interface shows.

pub mod capture;
pub mod explain;
pub mod packet;
pub mod stop;

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use capture::{Capture, enter_netns};
pub use explain::{
    Announcement, Answer, DataAttempt, ExplainConfig, Explainer, Finding, FindingKind, Opener,
    Sighting,
};
pub use packet::{Segment, TcpFlags};

/// How often the capture loop looks at the stop flag and the clock.
const POLL: Duration = Duration::from_millis(100);

/// What `ftp-alg watch` was asked to do.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Capture on this interface only (else on every interface but loopback).
    pub interface: Option<String>,
    /// Enter this network namespace first (a name under /run/netns, or a path).
    pub netns: Option<String>,
    /// FTP control ports.
    pub control_ports: Vec<u16>,
    /// A data SYN without answer for this long is reported.
    pub no_answer_after: Duration,
    /// Stop after this long (else at SIGINT/SIGTERM).
    pub duration: Option<Duration>,
}

/// Counts at the end of a watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchSummary {
    /// Segments decoded.
    pub segments: u64,
    /// Findings printed.
    pub findings: u64,
}

/// Runs the explainer until `stop` is set or the duration is over, printing to `out`.
pub fn run(
    options: &WatchOptions,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> io::Result<WatchSummary> {
    if let Some(ns) = &options.netns {
        enter_netns(ns)?;
    }
    let epoch = Instant::now();
    let mut capture = Capture::open(options.interface.as_deref(), epoch)?;
    let mut explainer = Explainer::new(ExplainConfig {
        control_ports: options.control_ports.clone(),
        no_answer_after: options.no_answer_after,
        all_interfaces: options.interface.is_none(),
    });
    let place = match (&options.interface, &options.netns) {
        (Some(iface), Some(ns)) => format!("interface {iface} in network namespace {ns}"),
        (Some(iface), None) => format!("interface {iface}"),
        (None, Some(ns)) => format!("every interface of network namespace {ns}"),
        (None, None) => "every interface of this network namespace".to_owned(),
    };
    let ports: Vec<String> = options.control_ports.iter().map(u16::to_string).collect();
    writeln!(
        out,
        "watching {place} (read-only capture; FTP control on port {}; Ctrl-C to stop)",
        ports.join(", ")
    )?;
    out.flush()?;
    let control_ports = options.control_ports.clone();
    let keep = move |s: u16, d: u16| control_ports.contains(&s) || control_ports.contains(&d);
    let mut summary = WatchSummary::default();
    loop {
        let over = options.duration.is_some_and(|d| epoch.elapsed() >= d);
        if over || stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(segment) = capture.next_segment(POLL, &keep)? {
            summary.segments += 1;
            explainer.feed(&segment);
        }
        explainer.tick(epoch.elapsed());
        summary.findings += print(out, explainer.take_findings())?;
    }
    explainer.finish(epoch.elapsed());
    summary.findings += print(out, explainer.take_findings())?;
    writeln!(
        out,
        "stopped after {:.1} s: {} TCP segments seen, {} findings",
        epoch.elapsed().as_secs_f64(),
        summary.segments,
        summary.findings
    )?;
    out.flush()?;
    Ok(summary)
}

fn print(out: &mut dyn Write, findings: Vec<Finding>) -> io::Result<u64> {
    let mut n = 0;
    for finding in findings {
        writeln!(out, "[{:>8.3}] {}", finding.at.as_secs_f64(), finding.text)?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

/// Captures in the calling thread's network namespace until `stop` is set, keeping control
/// payloads: the lab's recorder of what crossed its gateway. At most `max` segments are kept.
/// `ready` is called once the capture is open (nothing sent after that is missed).
pub fn record(
    epoch: Instant,
    control_ports: &[u16],
    stop: &AtomicBool,
    max: usize,
    ready: impl FnOnce(),
) -> io::Result<Vec<Segment>> {
    let mut capture = Capture::open(None, epoch)?;
    ready();
    let ports = control_ports.to_vec();
    let keep = move |s: u16, d: u16| ports.contains(&s) || ports.contains(&d);
    let mut segments = Vec::new();
    // Bounded: the caller sets `stop`; the poll wakes at least every POLL.
    while !stop.load(Ordering::Relaxed) {
        if let Some(segment) = capture.next_segment(POLL, &keep)?
            && segments.len() < max
        {
            segments.push(segment);
        }
    }
    // Whatever is already queued belongs to the run too.
    while let Some(segment) = capture.next_segment(Duration::from_millis(20), &keep)? {
        if segments.len() >= max {
            break;
        }
        segments.push(segment);
    }
    Ok(segments)
}
