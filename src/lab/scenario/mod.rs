//! `ftp-alg lab`: every FTP data mode through three gateways, without a helper, with the
//! kernel's FTP helper and with ftp-alg — observed, judged, explained and drawn.
//!
//! For each topology × variant it builds a lab (the namespace test beds of [`crate::lab`]),
//! starts the lab's own FTP server ([`peers`]) and, for the ftp-alg variant, this very binary
//! as `ftp-alg run` in the gateway. For each mode it runs one short client session (log in,
//! negotiate the mode, `RETR` a 64 KiB file, compare it) while recording three things:
//!
//! 1. the peers' own account: every line sent and received, the real addresses of every
//!    socket, and the errors their connects got (no route, timeout, refused);
//! 2. a capture on all the gateway's interfaces (the recorder of `ftp-alg watch`), which shows
//!    whether a SYN crossed the gateway and how it was translated;
//! 3. the SYNs the admin's forward chain dropped, counted by an nft set the lab adds as the
//!    last rule of that chain.
//!
//! From these it judges the cell ([`verdict`]), explains a failure in words (`SYN from
//! 203.0.113.2:20 to 192.0.2.2:40123 dropped by the gateway's forward chain`), and draws the
//! session ([`sequence`] → [`crate::lab::diagram`]). The three topologies:
//!
//! | topology | gateway | without a helper |
//! |---|---|---|
//! | `client-nat` | home router: masquerade, any outbound connection, nothing inbound | active fails: PORT names the client's private address |
//! | `reverse` | a published server: port-forward of :21, the server may connect out (masqueraded) | passive fails: 227 names the server's inside address |
//! | `routed` | strict stateful firewall, no NAT: control connections only | both fail: the data SYN is dropped |

mod observe;
pub mod peers;
mod sequence;
mod setup;
mod verdict;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use observe::DroppedSyn;
pub use setup::{Addresses, ScenarioLab};
pub use verdict::{Failure, RstSender, Verdict};

use self::observe::{Recorder, clear_dropped, dropped_syns};
use self::peers::{ClientOutcome, ConnectFailure, Event, EventLog, PeerEvent, Side};
use super::diagram::{Sequence, render};
use super::{DataMode, LabError, Result};
use crate::watch::{ExplainConfig, Explainer, Finding, Segment};

/// Size of the file each session downloads.
pub const FILE_LEN: usize = 64 * 1024;
/// Bound of one client session (a failing one ends after its connect timeout, ~2 s).
const SESSION_BOUND: Duration = Duration::from_secs(20);
/// Time for the last segments of a session to reach the capture.
const SETTLE: Duration = Duration::from_millis(150);

/// Where the gateway sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topology {
    /// The client behind a masquerading home router.
    ClientNat,
    /// The server behind a port-forward (published on the gateway's address).
    Reverse,
    /// A routing firewall without NAT between client and server.
    Routed,
}

impl Topology {
    /// All three, in table order.
    pub const ALL: [Self; 3] = [Self::ClientNat, Self::Reverse, Self::Routed];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::ClientNat => "client-nat",
            Self::Reverse => "reverse",
            Self::Routed => "routed",
        }
    }

    /// Words for headings.
    pub fn title(self) -> &'static str {
        match self {
            Self::ClientNat => "client behind NAT",
            Self::Reverse => "server behind a port-forward",
            Self::Routed => "routed firewall",
        }
    }

    /// What the gateway's admin configured.
    pub fn firewall(self) -> &'static str {
        match self {
            Self::ClientNat => {
                "home router: masquerade on wan0; forward policy drop with established/related and every LAN→WAN connection accepted"
            }
            Self::Reverse => {
                "published server: DNAT of 203.0.113.1:21 to 198.51.100.2:21 (ftp-alg: it listens there instead); forward policy drop with established/related, the forwarded :21 and the server's outbound connections (masqueraded) accepted"
            }
            Self::Routed => {
                "stateful firewall, no NAT: forward policy drop with established/related and LAN→WAN :21 accepted"
            }
        }
    }
}

/// What helps the gateway with FTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    /// Nothing: the firewall as the admin wrote it.
    None,
    /// The kernel's own helper: `ct helper` "ftp" (nf_conntrack_ftp) and nf_nat_ftp.
    KernelHelper,
    /// ftp-alg running in the gateway.
    FtpAlg,
}

impl Variant {
    /// All three, in column order.
    pub const ALL: [Self; 3] = [Self::None, Self::KernelHelper, Self::FtpAlg];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::KernelHelper => "kernel-helper",
            Self::FtpAlg => "ftp-alg",
        }
    }

    /// Words for headings.
    pub fn title(self) -> &'static str {
        match self {
            Self::None => "no helper",
            Self::KernelHelper => "kernel helper",
            Self::FtpAlg => "ftp-alg",
        }
    }
}

/// One cell of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScenarioId {
    /// Where.
    pub topology: Topology,
    /// Which data mode.
    pub mode: DataMode,
    /// With what help.
    pub variant: Variant,
}

impl fmt::Display for ScenarioId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.topology.name(),
            self.mode,
            self.variant.name()
        )
    }
}

impl ScenarioId {
    /// A file name stem: `client-nat-port-none`.
    pub fn file_stem(&self) -> String {
        format!(
            "{}-{}-{}",
            self.topology.name(),
            self.mode.command().to_ascii_lowercase(),
            self.variant.name()
        )
    }

    /// What the physics says: without a helper, active fails behind client NAT, passive
    /// fails behind a port-forward, both fail through a strict firewall; with the kernel
    /// helper or ftp-alg everything works.
    pub fn expected_ok(&self) -> bool {
        self.prediction() == Prediction::Works
    }

    /// What the physics says, with how each predicted failure shows (docs/lab.md tells the
    /// same stories): a cell that fails some other way did not show what the table claims.
    pub fn prediction(&self) -> Prediction {
        match (self.variant, self.topology) {
            (Variant::None, Topology::ClientNat) if self.mode.is_active() => {
                Prediction::Fails(ExpectedFailure::NoRouteToPrivateClient)
            }
            (Variant::None, Topology::Reverse) if self.mode == DataMode::Pasv => {
                Prediction::Fails(ExpectedFailure::NoRouteToInsideServer)
            }
            (Variant::None, Topology::Reverse) if self.mode == DataMode::Epsv => {
                Prediction::Fails(ExpectedFailure::RefusedByGateway)
            }
            (Variant::None, Topology::Routed) => {
                Prediction::Fails(ExpectedFailure::DroppedByForwardChain)
            }
            _ => Prediction::Works,
        }
    }
}

/// What the physics predicts for a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The download arrives intact.
    Works,
    /// The session fails, and in this particular way.
    Fails(ExpectedFailure),
}

/// How a predicted failure shows in the observations: the opener of the data connection
/// (the server in active mode, the client in passive mode) and how its connect ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedFailure {
    /// Active mode behind client NAT: PORT/EPRT names the client's private address, and the
    /// server's connect to it finds no route.
    NoRouteToPrivateClient,
    /// PASV behind a port-forward: the 227 names the server's inside address, and the
    /// client's connect to it finds no route.
    NoRouteToInsideServer,
    /// EPSV behind a port-forward: the client tries the 229's port at the public address and
    /// is refused there — not by a host behind the gateway (only :21 is forwarded).
    RefusedByGateway,
    /// Routed firewall: every address is right, the opener's connect times out, and the
    /// forward chain's drop recorder counted its SYN.
    DroppedByForwardChain,
}

impl ExpectedFailure {
    /// The prediction in words, for an UNEXPECTED line.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NoRouteToPrivateClient => {
                "the server's data connect to the client's private address (named in PORT/EPRT) finds no route"
            }
            Self::NoRouteToInsideServer => {
                "the client's data connect to the server's inside address (named in 227) finds no route"
            }
            Self::RefusedByGateway => {
                "the client's data connect to the gateway's public address (the 229's port) is refused there"
            }
            Self::DroppedByForwardChain => {
                "the data connect to the announced address times out, its SYN counted by the forward chain's drop recorder"
            }
        }
    }

    /// Whether the observed `failure` of cell `id` is this one.
    pub fn is_met_by(self, id: &ScenarioId, failure: &Failure) -> bool {
        let Failure::DataConnect {
            opener,
            remote,
            how,
            dropped,
            rst,
        } = failure
        else {
            return false;
        };
        let addresses = id.topology.addresses();
        let (expected_opener, announced) = if id.mode.is_active() {
            (Side::Server, addresses.client)
        } else {
            (Side::Client, addresses.server.ip())
        };
        if *opener != expected_opener {
            return false;
        }
        match self {
            Self::NoRouteToPrivateClient | Self::NoRouteToInsideServer => {
                *how == ConnectFailure::Unreachable && remote.ip() == announced
            }
            Self::RefusedByGateway => {
                // A RST the capture saw arriving from behind the gateway would be another
                // story; one it did not see at all is not evidence against this one.
                *how == ConnectFailure::Refused
                    && remote.ip() == addresses.gateway_client_side
                    && !matches!(rst, Some(RstSender::Forwarded { .. }))
            }
            Self::DroppedByForwardChain => {
                *how == ConnectFailure::TimedOut && *dropped && remote.ip() == announced
            }
        }
    }
}

fn parse_mode(text: &str) -> Option<DataMode> {
    DataMode::ALL
        .into_iter()
        .find(|m| m.command().eq_ignore_ascii_case(text))
}

impl FromStr for ScenarioId {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let [topology, mode, variant] = parts.as_slice() else {
            return Err(format!("`{text}` is not TOPOLOGY/MODE/VARIANT"));
        };
        Ok(Self {
            topology: parse_topology(topology)?,
            mode: parse_mode(mode).ok_or_else(|| format!("unknown mode `{mode}`"))?,
            variant: parse_variant(variant)?,
        })
    }
}

fn parse_topology(text: &str) -> std::result::Result<Topology, String> {
    Topology::ALL
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(text))
        .ok_or_else(|| format!("unknown topology `{text}` (client-nat, reverse, routed)"))
}

fn parse_variant(text: &str) -> std::result::Result<Variant, String> {
    Variant::ALL
        .into_iter()
        .find(|v| v.name().eq_ignore_ascii_case(text))
        .ok_or_else(|| format!("unknown variant `{text}` (none, kernel-helper, ftp-alg)"))
}

/// A `--scenario` pattern: TOPOLOGY[/MODE[/VARIANT]], `*` for any part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    topology: Option<Topology>,
    mode: Option<DataMode>,
    variant: Option<Variant>,
}

impl FromStr for Pattern {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(format!("`{text}` is not TOPOLOGY[/MODE[/VARIANT]]"));
        }
        let any = |i: usize| parts.get(i).is_none_or(|p| *p == "*");
        Ok(Self {
            topology: if any(0) {
                None
            } else {
                Some(parse_topology(parts[0])?)
            },
            mode: if any(1) {
                None
            } else {
                Some(parse_mode(parts[1]).ok_or_else(|| format!("unknown mode `{}`", parts[1]))?)
            },
            variant: if any(2) {
                None
            } else {
                Some(parse_variant(parts[2])?)
            },
        })
    }
}

impl Pattern {
    /// Whether `id` matches.
    pub fn matches(&self, id: &ScenarioId) -> bool {
        self.topology.is_none_or(|t| t == id.topology)
            && self.mode.is_none_or(|m| m == id.mode)
            && self.variant.is_none_or(|v| v == id.variant)
    }
}

/// Every cell, in table order, that any of `patterns` matches (all when there are none).
pub fn selected(patterns: &[Pattern]) -> Vec<ScenarioId> {
    let mut ids = Vec::new();
    for topology in Topology::ALL {
        for variant in Variant::ALL {
            for mode in DataMode::ALL {
                let id = ScenarioId {
                    topology,
                    mode,
                    variant,
                };
                if patterns.is_empty() || patterns.iter().any(|p| p.matches(&id)) {
                    ids.push(id);
                }
            }
        }
    }
    ids
}

/// Everything one cell's judgement and drawing are made from.
pub(crate) struct Observation<'a> {
    id: ScenarioId,
    addresses: Addresses,
    events: &'a [Event],
    segments: &'a [Segment],
    dropped: &'a [DroppedSyn],
    client: &'a ClientOutcome,
}

/// The result of one cell.
#[derive(Debug, Clone)]
pub struct CellResult {
    /// Which cell.
    pub id: ScenarioId,
    /// Did it work, and the words for it.
    pub verdict: Verdict,
    /// What the peers recorded.
    pub events: Vec<Event>,
    /// What the gateway capture says, in the words of `ftp-alg watch`.
    pub findings: Vec<Finding>,
    /// SYNs the admin's forward chain dropped.
    pub dropped: Vec<DroppedSyn>,
    /// The diagram.
    pub sequence: Sequence,
    /// Every port the session's sockets used (both peers' views).
    pub ports: BTreeSet<u16>,
    /// Segments the gateway capture saw.
    pub segments_seen: usize,
    /// How long the cell took.
    pub elapsed: Duration,
}

impl CellResult {
    /// Whether the outcome is the one the physics predicts: a predicted failure counts only
    /// when it failed the predicted way.
    pub fn as_expected(&self) -> bool {
        match self.id.prediction() {
            Prediction::Works => self.verdict.ok,
            Prediction::Fails(expected) => {
                !self.verdict.ok
                    && self
                        .verdict
                        .failure
                        .as_ref()
                        .is_some_and(|f| expected.is_met_by(&self.id, f))
            }
        }
    }

    /// For a cell that is not as expected: what the physics predicted instead.
    pub fn unexpected_note(&self) -> Option<String> {
        if self.as_expected() {
            return None;
        }
        Some(match (self.id.prediction(), self.verdict.ok) {
            (Prediction::Works, _) => "the physics says this works".to_owned(),
            (Prediction::Fails(_), true) => "the physics says this fails".to_owned(),
            (Prediction::Fails(expected), false) => format!(
                "the physics predicts another failure: {}",
                expected.describe()
            ),
        })
    }

    /// The diagram as an SVG document.
    pub fn svg(&self) -> String {
        render(&self.sequence)
    }
}

/// Namespaces left up by `--keep`.
#[derive(Debug, Clone)]
pub struct KeptLab {
    /// Topology.
    pub topology: Topology,
    /// Variant.
    pub variant: Variant,
    /// client, gateway, server namespace names.
    pub namespaces: Vec<String>,
    /// How the ALG was started there, if it was.
    pub alg_command: Option<String>,
}

/// What `ftp-alg lab` was asked for.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The binary started as `ftp-alg run` in the gateway.
    pub alg_binary: PathBuf,
    /// Which cells (none: all).
    pub patterns: Vec<Pattern>,
    /// Leave the namespaces up.
    pub keep: bool,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct LabReport {
    /// One per cell run, in table order.
    pub cells: Vec<CellResult>,
    /// Namespaces left up (`--keep`).
    pub kept: Vec<KeptLab>,
    /// Wall time.
    pub elapsed: Duration,
    /// Stopped early by SIGINT/SIGTERM.
    pub interrupted: bool,
}

impl LabReport {
    /// Whether every cell came out as the physics predicts.
    pub fn matches_physics(&self) -> bool {
        !self.interrupted && self.cells.iter().all(CellResult::as_expected)
    }

    /// The cell `id`, if it was run.
    pub fn cell(&self, id: &ScenarioId) -> Option<&CellResult> {
        self.cells.iter().find(|c| c.id == *id)
    }
}

/// Runs the selected cells, reporting progress lines to `progress`. Stops between cells when
/// `stop` is set; everything built is removed on return (unless kept), also on error or panic.
/// On an error after `--keep` kept some labs, `progress` is told where they are first: the
/// error drops the report, and the stale-namespace sweep skips kept namespaces for good.
pub fn run(
    options: &LabOptions,
    progress: &mut dyn FnMut(&str),
    stop: &AtomicBool,
) -> Result<LabReport> {
    let start = Instant::now();
    let ids = selected(&options.patterns);
    let file = Arc::new(random_bytes(FILE_LEN)?);
    let mut report = LabReport {
        cells: Vec::new(),
        kept: Vec::new(),
        elapsed: Duration::ZERO,
        interrupted: false,
    };
    let total = ids.len();
    let mut groups: Vec<(Topology, Variant, Vec<DataMode>)> = Vec::new();
    for id in &ids {
        match groups.last_mut() {
            Some((t, v, modes)) if *t == id.topology && *v == id.variant => modes.push(id.mode),
            _ => groups.push((id.topology, id.variant, vec![id.mode])),
        }
    }
    if let Err(error) = run_groups(options, groups, &file, total, &mut report, progress, stop) {
        announce_kept_on_error(&report.kept, progress);
        return Err(error);
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Where the labs kept so far are and how to delete them, as progress lines: the only trace
/// of them once an error ends the run (this process forgot them, and they are marked kept).
fn announce_kept_on_error(kept: &[KeptLab], progress: &mut dyn FnMut(&str)) {
    if kept.is_empty() {
        return;
    }
    progress("the run failed; the labs kept before the failure stay up:");
    for line in super::report::kept_instructions(kept).lines() {
        if !line.is_empty() {
            progress(line);
        }
    }
}

/// The group loop of [`run`]: builds each topology × variant lab, runs its modes into
/// `report`, keeps it when asked.
fn run_groups(
    options: &LabOptions,
    groups: Vec<(Topology, Variant, Vec<DataMode>)>,
    file: &Arc<Vec<u8>>,
    total: usize,
    report: &mut LabReport,
    progress: &mut dyn FnMut(&str),
    stop: &AtomicBool,
) -> Result<()> {
    for (topology, variant, modes) in groups {
        if stop.load(Ordering::Relaxed) {
            report.interrupted = true;
            break;
        }
        progress(&format!(
            "building {} ({}) with {} …",
            topology.title(),
            topology.name(),
            variant.title()
        ));
        let lab =
            ScenarioLab::build_with(topology, variant, &options.alg_binary, Arc::clone(file))?;
        for mode in modes {
            if stop.load(Ordering::Relaxed) {
                report.interrupted = true;
                break;
            }
            let id = ScenarioId {
                topology,
                mode,
                variant,
            };
            let cell = lab.run(mode)?;
            let n = report.cells.len() + 1;
            let mark = match (cell.verdict.ok, cell.unexpected_note()) {
                (true, None) => "ok".to_owned(),
                (false, None) => "FAIL (as expected)".to_owned(),
                (true, Some(note)) => format!("ok — UNEXPECTED ({note})"),
                (false, Some(note)) => format!("FAIL — UNEXPECTED ({note})"),
            };
            progress(&format!(
                "  [{n:>2}/{total}] {:<26} {mark} ({:.1} s): {}",
                id.to_string(),
                cell.elapsed.as_secs_f64(),
                cell.verdict.text
            ));
            if !cell.as_expected() && variant == Variant::FtpAlg {
                let log = lab.alg_output();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                for line in tail.into_iter().rev() {
                    progress(&format!("        ftp-alg: {line}"));
                }
            }
            report.cells.push(cell);
        }
        if options.keep {
            let alg_command = lab.alg_command();
            report.kept.push(KeptLab {
                topology,
                variant,
                alg_command,
                namespaces: lab.keep(),
            });
        }
    }
    Ok(())
}

/// The error of an interrupted run: with `--keep`, the labs listed as kept stay up.
fn interrupted_message(cells: usize, some_kept: bool) -> String {
    if some_kept {
        format!(
            "interrupted after {cells} cell(s); the kept namespaces listed above stay up, the \
             others built so far are removed"
        )
    } else {
        format!("interrupted after {cells} cell(s); the namespaces built so far are removed")
    }
}

/// `len` random bytes (the file the sessions download).
pub(crate) fn random_bytes(len: usize) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let mut data = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .map_err(|e| LabError::io("reading /dev/urandom", e))?;
    Ok(data)
}

impl ScenarioLab {
    /// Runs one session in `mode` and judges it: the cell `topology/mode/variant`.
    pub fn run(&self, mode: DataMode) -> Result<CellResult> {
        run_cell(
            self,
            ScenarioId {
                topology: self.topology,
                mode,
                variant: self.variant,
            },
        )
    }
}

fn run_cell(lab: &ScenarioLab, id: ScenarioId) -> Result<CellResult> {
    let file = &lab.file;
    let start = Instant::now();
    let addresses = id.topology.addresses();
    let epoch = Instant::now();
    let log = EventLog::new(epoch);
    lab.server().set_log(log.clone());
    clear_dropped(lab.gateway())?;
    let recorder = Recorder::start(lab.gateway(), epoch)?;
    let client = peers::run_client(
        lab.client(),
        addresses.target,
        id.mode,
        Arc::clone(file),
        log.clone(),
        SESSION_BOUND,
    );
    std::thread::sleep(SETTLE);
    let segments = recorder.finish()?;
    let client = client?;
    let dropped = dropped_syns(lab.gateway())?;
    let events = log.take();
    let mut explainer = Explainer::new(ExplainConfig {
        control_ports: vec![21],
        no_answer_after: Duration::from_millis(1500),
        all_interfaces: true,
    });
    for segment in &segments {
        explainer.tick(segment.at);
        explainer.feed(segment);
    }
    explainer.finish(epoch.elapsed());
    let findings = explainer.take_findings();
    let observation = Observation {
        id,
        addresses,
        events: &events,
        segments: &segments,
        dropped: &dropped,
        client: &client,
    };
    let verdict = verdict::judge(&observation);
    let sequence = sequence::build(&observation, &verdict);
    let ports = ports_of(&events, &dropped);
    Ok(CellResult {
        id,
        verdict,
        findings,
        dropped,
        sequence,
        ports,
        segments_seen: segments.len(),
        events,
        elapsed: start.elapsed(),
    })
}

fn ports_of(events: &[Event], dropped: &[DroppedSyn]) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for event in events {
        match &event.what {
            PeerEvent::ControlConnected { local, remote }
            | PeerEvent::DataConnected { local, remote } => {
                ports.insert(local.port());
                ports.insert(remote.port());
            }
            PeerEvent::ControlAccepted { local, peer }
            | PeerEvent::DataAccepted { local, peer } => {
                ports.insert(local.port());
                ports.insert(peer.port());
            }
            PeerEvent::Listening(addr) => {
                ports.insert(addr.port());
            }
            PeerEvent::DataConnectFailed { local, remote, .. } => {
                if let Some(local) = local {
                    ports.insert(local.port());
                }
                ports.insert(remote.port());
            }
            _ => {}
        }
    }
    for drop in dropped {
        ports.insert(drop.src.port());
        ports.insert(drop.dst.port());
    }
    ports
}

/// `ftp-alg lab`: checks the machine, runs, prints progress (stderr) and the table (stdout),
/// writes the report when asked. Returns whether the table matches the physics.
pub fn command(args: &crate::cli::LabArgs, stop: &AtomicBool) -> anyhow::Result<bool> {
    use anyhow::Context as _;
    if let Err(why) = super::preflight::lab_available() {
        anyhow::bail!("the lab cannot run here: {why}");
    }
    let patterns = args
        .scenario
        .iter()
        .map(|p| p.parse::<Pattern>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--scenario: {e}"))?;
    if selected(&patterns).is_empty() {
        anyhow::bail!("--scenario matches no cell");
    }
    let alg_binary = match &args.alg_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find this executable")?,
    };
    let options = LabOptions {
        alg_binary,
        patterns,
        keep: args.keep,
    };
    let mut progress = |line: &str| eprintln!("{line}");
    let report = run(&options, &mut progress, stop).map_err(|e: LabError| anyhow::anyhow!(e))?;
    println!();
    print!("{}", super::report::table(&report));
    if let Some(dir) = &args.out {
        let written = super::report::write(dir, &report)
            .with_context(|| format!("cannot write the report to {}", dir.display()))?;
        println!(
            "\nwrote {} files to {} (open {})",
            written.len(),
            dir.display(),
            dir.join("index.html").display()
        );
    }
    if !report.kept.is_empty() {
        print!("{}", super::report::kept_instructions(&report.kept));
    }
    // Not a physics failure: say what happened instead of pointing at UNEXPECTED lines.
    if report.interrupted {
        anyhow::bail!(
            "{}",
            interrupted_message(report.cells.len(), !report.kept.is_empty())
        );
    }
    Ok(report.matches_physics())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::watch::TcpFlags;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    fn id(text: &str) -> ScenarioId {
        text.parse().expect("test cell")
    }

    fn ev(side: Side, what: PeerEvent) -> Event {
        Event {
            at: Duration::ZERO,
            side,
            what,
        }
    }

    fn failed(reason: &str) -> ClientOutcome {
        ClientOutcome {
            ok: false,
            failure: Some(reason.to_owned()),
            timed_out: false,
        }
    }

    fn connect_failed(side: Side, local: &str, remote: &str, failure: ConnectFailure) -> Event {
        ev(
            side,
            PeerEvent::DataConnectFailed {
                local: Some(addr(local)),
                remote: addr(remote),
                failure,
                error: "test".into(),
                waited: Duration::from_secs(2),
            },
        )
    }

    fn rst(iface: &str, outgoing: bool, src: &str, dst: &str) -> Segment {
        Segment {
            at: Duration::ZERO,
            iface: iface.into(),
            outgoing,
            src: addr(src),
            dst: addr(dst),
            flags: TcpFlags {
                rst: true,
                ack: true,
                ..TcpFlags::default()
            },
            seq: 0,
            ack: 4242,
            payload: Vec::new(),
        }
    }

    /// Judges and draws a cell from made-up observations, as `run_cell` does from real ones.
    fn cell(
        id: ScenarioId,
        events: Vec<Event>,
        segments: Vec<Segment>,
        dropped: Vec<DroppedSyn>,
        client: ClientOutcome,
    ) -> CellResult {
        let observation = Observation {
            id,
            addresses: id.topology.addresses(),
            events: &events,
            segments: &segments,
            dropped: &dropped,
            client: &client,
        };
        let verdict = verdict::judge(&observation);
        let sequence = sequence::build(&observation, &verdict);
        CellResult {
            id,
            verdict,
            findings: Vec::new(),
            dropped,
            sequence,
            ports: BTreeSet::new(),
            segments_seen: segments.len(),
            events,
            elapsed: Duration::ZERO,
        }
    }

    /// client-nat/PORT/none as docs/lab.md tells it: no route from the server to 10.0.0.2,
    /// the server answers 425, the client gives up.
    fn client_nat_port_events() -> Vec<Event> {
        vec![
            ev(
                Side::Server,
                PeerEvent::ControlAccepted {
                    local: addr("203.0.113.2:21"),
                    peer: addr("203.0.113.1:40000"),
                },
            ),
            connect_failed(
                Side::Server,
                "203.0.113.2:20",
                "10.0.0.2:41121",
                ConnectFailure::Unreachable,
            ),
            ev(
                Side::Client,
                PeerEvent::Received("425 Can't open data connection to 10.0.0.2:41121".into()),
            ),
        ]
    }

    #[test]
    fn a_predicted_failure_with_the_predicted_cause_is_as_expected() {
        let c = cell(
            id("client-nat/PORT/none"),
            client_nat_port_events(),
            Vec::new(),
            Vec::new(),
            failed("RETR was answered `425 …`"),
        );
        assert!(!c.verdict.ok);
        assert!(c.as_expected(), "{:?}", c.verdict);
        assert_eq!(c.unexpected_note(), None);
        assert!(c.verdict.text.contains("no route to 10.0.0.2"));
    }

    #[test]
    fn a_predicted_failure_for_a_control_timeout_is_unexpected() {
        let c = cell(
            id("client-nat/PORT/none"),
            vec![ev(
                Side::Client,
                PeerEvent::ControlFailed {
                    remote: addr("203.0.113.2:21"),
                    error: "connection timed out".into(),
                },
            )],
            Vec::new(),
            Vec::new(),
            failed("control connection to 203.0.113.2:21: connection timed out"),
        );
        assert!(!c.as_expected());
        let note = c.unexpected_note().expect("a note");
        assert!(note.contains("another failure"), "{note}");
        // The real reason is what is shown.
        assert!(
            c.verdict.text.contains("control connection"),
            "{}",
            c.verdict.text
        );
        let table = crate::lab::report::table(&LabReport {
            cells: vec![c],
            kept: Vec::new(),
            elapsed: Duration::ZERO,
            interrupted: false,
        });
        assert!(table.contains("FAIL(1)!"), "{table}");
        assert!(table.contains("UNEXPECTED: the physics predicts another failure"));
    }

    #[test]
    fn a_failed_bind_or_the_session_bound_is_not_the_predicted_failure() {
        // `425 Address already in use`: the server never got to connect.
        let bind = cell(
            id("client-nat/EPRT/none"),
            vec![ev(
                Side::Client,
                PeerEvent::Received("425 Can't open data connection: Address in use".into()),
            )],
            Vec::new(),
            Vec::new(),
            failed("RETR was answered `425 …`"),
        );
        assert!(!bind.as_expected());
        // The connect failed as predicted, but the session was cut off by its bound.
        let mut events = client_nat_port_events();
        events.pop();
        let bound = cell(
            id("client-nat/PORT/none"),
            events,
            Vec::new(),
            Vec::new(),
            ClientOutcome {
                ok: false,
                failure: Some("the session did not end within 20s".into()),
                timed_out: true,
            },
        );
        assert!(!bound.as_expected());
        assert!(bound.verdict.text.contains("did not end within"));
    }

    #[test]
    fn routed_failures_need_the_recorded_drop() {
        let events = vec![connect_failed(
            Side::Client,
            "192.0.2.2:55936",
            "203.0.113.2:42469",
            ConnectFailure::TimedOut,
        )];
        let drop = DroppedSyn {
            src: addr("192.0.2.2:55936"),
            dst: addr("203.0.113.2:42469"),
            packets: 2,
        };
        let outcome = failed("data connection to 203.0.113.2:42469: timed out");
        let with = cell(
            id("routed/PASV/none"),
            events.clone(),
            Vec::new(),
            vec![drop],
            outcome.clone(),
        );
        assert!(with.as_expected(), "{:?}", with.verdict);
        let without = cell(
            id("routed/PASV/none"),
            events,
            Vec::new(),
            Vec::new(),
            outcome,
        );
        assert!(!without.as_expected());
    }

    #[test]
    fn the_rst_is_attributed_only_as_the_capture_shows() {
        let events = vec![connect_failed(
            Side::Client,
            "203.0.113.2:37214",
            "203.0.113.1:37633",
            ConnectFailure::Refused,
        )];
        let outcome = failed("data connection to 203.0.113.1:37633: refused");
        let rst_out = rst("wan0", true, "203.0.113.1:37633", "203.0.113.2:37214");
        // Leaving via wan0 and never arriving: the gateway made it.
        let gateway = cell(
            id("reverse/EPSV/none"),
            events.clone(),
            vec![rst_out.clone()],
            Vec::new(),
            outcome.clone(),
        );
        assert!(gateway.as_expected(), "{:?}", gateway.verdict);
        assert!(gateway.verdict.text.contains("by the gateway itself"));
        assert!(gateway.verdict.text.contains("wan0"));
        // Not captured: nobody is named, and the prediction is not contradicted.
        let unseen = cell(
            id("reverse/EPSV/none"),
            events.clone(),
            Vec::new(),
            Vec::new(),
            outcome.clone(),
        );
        assert!(unseen.as_expected());
        assert!(!unseen.verdict.text.contains("refused by the gateway"));
        assert!(unseen.verdict.text.contains("not observed"));
        // Arriving from the server on lan0 and forwarded: another story.
        let forwarded = cell(
            id("reverse/EPSV/none"),
            events,
            vec![
                rst("lan0", false, "198.51.100.2:37633", "203.0.113.2:37214"),
                rst_out,
            ],
            Vec::new(),
            outcome,
        );
        assert!(!forwarded.as_expected());
        assert!(
            forwarded
                .verdict
                .text
                .contains("RST from 198.51.100.2:37633"),
            "{}",
            forwarded.verdict.text
        );
    }

    #[test]
    fn kept_labs_are_announced_when_a_later_group_fails() {
        let kept = vec![KeptLab {
            topology: Topology::Routed,
            variant: Variant::None,
            namespaces: vec!["fa1x0-cl".into(), "fa1x0-gw".into(), "fa1x0-sv".into()],
            alg_command: None,
        }];
        let mut lines = Vec::new();
        announce_kept_on_error(&kept, &mut |line: &str| lines.push(line.to_owned()));
        let all = lines.join("\n");
        assert!(all.contains("fa1x0-cl fa1x0-gw fa1x0-sv"), "{all}");
        assert!(all.contains("delete:"), "{all}");
        lines.clear();
        announce_kept_on_error(&[], &mut |line: &str| lines.push(line.to_owned()));
        assert!(lines.is_empty());
        assert!(interrupted_message(3, true).contains("kept namespaces listed above stay up"));
        assert!(!interrupted_message(3, false).contains("kept"));
    }

    #[test]
    fn predictions_follow_the_table() {
        assert_eq!(id("client-nat/PASV/none").prediction(), Prediction::Works);
        assert_eq!(id("reverse/PORT/none").prediction(), Prediction::Works);
        assert_eq!(id("routed/EPSV/ftp-alg").prediction(), Prediction::Works);
        assert_eq!(
            id("reverse/PASV/none").prediction(),
            Prediction::Fails(ExpectedFailure::NoRouteToInsideServer)
        );
        let works_but_failed = cell(
            id("routed/PORT/kernel-helper"),
            client_nat_port_events(),
            Vec::new(),
            Vec::new(),
            failed("x"),
        );
        assert_eq!(
            works_but_failed.unexpected_note().as_deref(),
            Some("the physics says this works")
        );
    }
}
