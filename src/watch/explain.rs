//! From captured segments to plain words: which address each side announced, what the gateway
//! did to it, and what became of the data connection that followed.
//!
//! Sans-IO like [`crate::ftp`]: segments and the current time go in, [`Finding`]s come out, so
//! the pairing logic is tested on synthetic segments. What it pairs:
//!
//! - **Control connections** by their initial sequence number: NAT rewrites addresses and
//!   ports but never the ISN, so a SYN arriving on one interface and one leaving on another
//!   with the same ISN are the same connection, forwarded. A control SYN arriving that never
//!   leaves, followed by one the gateway itself sends, is a proxied control channel.
//! - **Announcements** (PORT/EPRT, 227/229) seen on two interfaces of one gateway: the first
//!   sighting is the near side, the second the far side; a different address means the gateway
//!   rewrote it. On any side an address that does not match the announcer as that side sees it
//!   is named: that is the address the other peer will fail to reach.
//! - **Data connections** by ISN again: every sighting of the SYN (arriving, leaving, each
//!   retransmission), and its answer (SYN-ACK or RST). No answer after a bound is reported with
//!   where the SYN was last seen: arrived but never left = dropped in this gateway.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::ftp::{Command, Line, Reply, parse_227, parse_229, parse_command};

use super::packet::Segment;

/// How long a rewritten announcement may trail the original to be taken as its far side.
const PAIR_WINDOW: Duration = Duration::from_secs(2);
/// Longest control line kept while waiting for its end.
const MAX_LINE: usize = 4096;

/// What the explainer watches for.
#[derive(Debug, Clone)]
pub struct ExplainConfig {
    /// Ports of FTP control connections (21, plus any other the gateway intercepts).
    pub control_ports: Vec<u16>,
    /// A data SYN without answer for this long is reported as unanswered.
    pub no_answer_after: Duration,
    /// Whether the capture sees every interface of the host (so a SYN that arrives and never
    /// leaves was dropped here), or only one (where it went next is not visible).
    pub all_interfaces: bool,
}

impl Default for ExplainConfig {
    fn default() -> Self {
        Self {
            control_ports: vec![21],
            no_answer_after: Duration::from_secs(3),
            all_interfaces: true,
        }
    }
}

/// The kind of a [`Finding`], for programs that read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// A control connection was opened, forwarded or proxied.
    Control,
    /// A peer announced a data address (PORT/EPRT/227/229).
    Announced,
    /// The far side saw the same announcement unchanged.
    Unchanged,
    /// The far side saw a different address: the gateway rewrote it.
    Rewritten,
    /// The announced address is not the announcer as this side sees it.
    Unreachable,
    /// A data connection was answered (SYN-ACK).
    DataUp,
    /// A data connection was refused (RST).
    DataRefused,
    /// A data connection's SYN got no answer.
    DataNoAnswer,
    /// A notable reply (an error, or a completed transfer).
    Reply,
}

/// One thing the explainer has to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// When (capture time of the segment that made it so).
    pub at: Duration,
    /// What kind of statement it is.
    pub kind: FindingKind,
    /// The statement, in plain words.
    pub text: String,
}

/// Who opens a data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    /// Active mode: the server connects to the address in PORT/EPRT.
    Server,
    /// Passive mode: the client connects to the address in 227/229.
    Client,
}

/// A data address announced on a control connection, as seen on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// When.
    pub at: Duration,
    /// Where it was seen.
    pub iface: String,
    /// `PORT`, `EPRT`, `227` or `229`.
    pub verb: &'static str,
    /// Who will connect to the address.
    pub opener: Opener,
    /// The announced address (for 229: the announcing server's address and the port).
    pub addr: SocketAddr,
    /// The announcer's address as seen on this side of the control connection.
    pub announcer: IpAddr,
    /// The line itself.
    pub text: String,
    /// The control channel it was seen on: one number for all views of a channel (a
    /// forwarded connection's sightings, a proxied one's two connections); none when the
    /// channel's SYN was not seen.
    pub control: Option<usize>,
    /// Index of the announcement it is the far-side view of.
    pub near_side: Option<usize>,
    /// Index of its far-side view, once seen.
    pub far_side: Option<usize>,
}

/// One sighting of a SYN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// When.
    pub at: Duration,
    /// Interface.
    pub iface: String,
    /// Leaving (else arriving).
    pub outgoing: bool,
    /// Source as seen there.
    pub src: SocketAddr,
    /// Destination as seen there.
    pub dst: SocketAddr,
}

impl Sighting {
    /// "arriving on lan0" / "leaving via wan0".
    pub fn where_seen(&self) -> String {
        if self.outgoing {
            format!("leaving via {}", self.iface)
        } else {
            format!("arriving on {}", self.iface)
        }
    }
}

/// How a data SYN was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// SYN-ACK: the connection is up.
    SynAck,
    /// RST: refused.
    Rst,
}

/// A data connection attempt: every sighting of its SYN (one ISN) and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataAttempt {
    /// The initial sequence number that ties the sightings together.
    pub isn: u32,
    /// Every sighting, retransmissions included, in order.
    pub sightings: Vec<Sighting>,
    /// The answer, with where it was seen.
    pub answer: Option<(Duration, Answer, SocketAddr)>,
    /// The announcement it answers, if one names its destination.
    pub announcement: Option<usize>,
    reported: bool,
}

impl DataAttempt {
    /// The first sighting (as near the opener as this capture saw it).
    pub fn first(&self) -> &Sighting {
        &self.sightings[0]
    }

    /// How many times the SYN was sent (sightings at the first place it was seen).
    pub fn tries(&self) -> usize {
        let first = self.first();
        self.sightings
            .iter()
            .filter(|s| s.iface == first.iface && s.outgoing == first.outgoing)
            .count()
    }

    /// The first sighting leaving through an interface other than where it first arrived.
    pub fn forwarded(&self) -> Option<&Sighting> {
        let first = self.first();
        if first.outgoing {
            return None;
        }
        self.sightings
            .iter()
            .find(|s| s.outgoing && s.iface != first.iface)
    }

    /// Arrived on an interface and never left through another: dropped (or taken) here.
    pub fn stopped_here(&self) -> bool {
        !self.first().outgoing && self.forwarded().is_none()
    }
}

#[derive(Debug, Default)]
struct StreamBuffer {
    next_seq: Option<u32>,
    pending: Vec<u8>,
}

impl StreamBuffer {
    /// Appends the in-order part of a segment; returns complete lines (LF-terminated).
    fn push(&mut self, seq: u32, payload: &[u8]) -> Vec<Vec<u8>> {
        let next = *self.next_seq.get_or_insert(seq);
        let offset = next.wrapping_sub(seq);
        if offset > u32::MAX / 2 {
            // A gap (a segment this capture missed): lines across it are lost.
            self.pending.clear();
            self.pending.extend_from_slice(payload);
        } else if (offset as usize) < payload.len() {
            self.pending.extend_from_slice(&payload[offset as usize..]);
        } else {
            return Vec::new(); // a retransmission of bytes already taken
        }
        self.next_seq = Some(seq.wrapping_add(payload.len() as u32));
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            lines.push(self.pending.drain(..=end).collect());
        }
        if self.pending.len() > MAX_LINE {
            self.pending.clear();
        }
        lines
    }
}

#[derive(Debug, Clone)]
struct ControlSyn {
    isn: u32,
    sightings: Vec<Sighting>,
    /// The control channel: its own index, or that of the connection it proxies.
    channel: usize,
    /// An arriving connection the gateway's own connection was matched to (proxied).
    claimed: bool,
}

/// Turns segments into findings. Feed every segment in capture order, call [`Self::tick`]
/// now and then, and [`Self::finish`] at the end.
#[derive(Debug)]
pub struct Explainer {
    config: ExplainConfig,
    streams: HashMap<(String, SocketAddr, SocketAddr), StreamBuffer>,
    controls: Vec<ControlSyn>,
    announcements: Vec<Announcement>,
    attempts: Vec<DataAttempt>,
    findings: Vec<Finding>,
    said: Vec<(Duration, String)>,
}

fn side(opener: Opener) -> (&'static str, &'static str) {
    match opener {
        Opener::Server => ("client", "server"),
        Opener::Client => ("server", "client"),
    }
}

impl Explainer {
    /// A fresh explainer.
    pub fn new(config: ExplainConfig) -> Self {
        Self {
            config,
            streams: HashMap::new(),
            controls: Vec::new(),
            announcements: Vec::new(),
            attempts: Vec::new(),
            findings: Vec::new(),
            said: Vec::new(),
        }
    }

    /// Whether `port` is a control port.
    pub fn is_control_port(&self, port: u16) -> bool {
        self.config.control_ports.contains(&port)
    }

    /// Every announcement seen so far.
    pub fn announcements(&self) -> &[Announcement] {
        &self.announcements
    }

    /// Every data connection attempt seen so far.
    pub fn attempts(&self) -> &[DataAttempt] {
        &self.attempts
    }

    /// Takes the findings made since the last call.
    pub fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }

    fn say(&mut self, at: Duration, kind: FindingKind, text: String) {
        self.findings.push(Finding { at, kind, text });
    }

    /// Says `text` unless the same was said within the pair window (a reply crossing the
    /// gateway is seen on both of its interfaces).
    fn say_once(&mut self, at: Duration, kind: FindingKind, text: String) {
        self.said
            .retain(|(when, _)| at.saturating_sub(*when) <= PAIR_WINDOW);
        if self.said.iter().any(|(_, said)| *said == text) {
            return;
        }
        self.said.push((at, text.clone()));
        self.say(at, kind, text);
    }

    /// Takes one segment.
    pub fn feed(&mut self, seg: &Segment) {
        let control = self.is_control_port(seg.dst.port()) || self.is_control_port(seg.src.port());
        if seg.flags.is_syn() {
            if control && self.is_control_port(seg.dst.port()) {
                self.control_syn(seg);
                self.streams.insert(
                    (seg.iface.clone(), seg.src, seg.dst),
                    StreamBuffer {
                        next_seq: Some(seg.seq.wrapping_add(1)),
                        pending: Vec::new(),
                    },
                );
            } else if !control {
                self.data_syn(seg);
            }
            return;
        }
        if seg.flags.is_syn_ack() {
            if control {
                self.streams.insert(
                    (seg.iface.clone(), seg.src, seg.dst),
                    StreamBuffer {
                        next_seq: Some(seg.seq.wrapping_add(1)),
                        pending: Vec::new(),
                    },
                );
            } else {
                self.answered(seg, Answer::SynAck);
            }
            return;
        }
        if seg.flags.rst && seg.flags.ack && !control {
            self.answered(seg, Answer::Rst);
            return;
        }
        if control && !seg.payload.is_empty() {
            let lines = self
                .streams
                .entry((seg.iface.clone(), seg.src, seg.dst))
                .or_default()
                .push(seg.seq, &seg.payload);
            for line in lines {
                self.control_line(seg, line);
            }
        }
        // A control connection's direction that ends needs no reassembly any more; a reset
        // ends both.
        if control && (seg.flags.fin || seg.flags.rst) {
            self.streams.remove(&(seg.iface.clone(), seg.src, seg.dst));
            if seg.flags.rst {
                self.streams.remove(&(seg.iface.clone(), seg.dst, seg.src));
            }
        }
    }

    fn control_syn(&mut self, seg: &Segment) {
        let sighting = Sighting {
            at: seg.at,
            iface: seg.iface.clone(),
            outgoing: seg.outgoing,
            src: seg.src,
            dst: seg.dst,
        };
        if let Some(index) = self.controls.iter().position(|c| c.isn == seg.seq) {
            let known = &self.controls[index];
            if known.sightings.iter().any(|s| s.iface == seg.iface) {
                return; // a retransmission
            }
            let first = known.sightings[0].clone();
            self.controls[index].sightings.push(sighting);
            let mut text = format!(
                "  the gateway forwards it via {} as {} → {}",
                seg.iface, seg.src, seg.dst
            );
            let mut nat = Vec::new();
            if seg.src != first.src {
                nat.push("source NAT");
            }
            if seg.dst != first.dst {
                nat.push("destination NAT: a port-forward");
            }
            if !nat.is_empty() {
                let _ = write!(text, " ({})", nat.join(", "));
            }
            self.say(seg.at, FindingKind::Control, text);
            return;
        }
        // A connection the gateway itself opens while one arriving was not forwarded: proxied.
        // Each arriving connection is proxied by one of the gateway's own: the oldest one not
        // yet matched, preferring one to the same server (several clients may connect within
        // a few milliseconds).
        let candidates = |c: &&ControlSyn| {
            let first = &c.sightings[0];
            !first.outgoing
                && !c.claimed
                && first.iface != seg.iface
                && c.sightings.len() == 1
                && seg.at.saturating_sub(first.at) <= PAIR_WINDOW
        };
        let proxied = if seg.outgoing {
            self.controls
                .iter()
                .filter(candidates)
                .find(|c| c.sightings[0].dst == seg.dst)
                .or_else(|| self.controls.iter().find(candidates))
                .map(|c| c.channel)
        } else {
            None
        };
        if let Some(channel) = proxied {
            self.controls[channel].claimed = true;
        }
        let proxied_for = proxied.map(|channel| self.controls[channel].sightings[0].clone());
        let channel = proxied.unwrap_or(self.controls.len());
        self.controls.push(ControlSyn {
            isn: seg.seq,
            sightings: vec![sighting],
            channel,
            claimed: false,
        });
        let text = match proxied_for {
            Some(first) => format!(
                "  the gateway does not forward {} → {}: it opens its own control connection \
                 {} → {} via {} — the control channel is proxied (a userspace ALG such as ftp-alg)",
                first.src, first.dst, seg.src, seg.dst, seg.iface
            ),
            None => format!(
                "control connection {} → {} ({})",
                seg.src,
                seg.dst,
                seg.where_seen()
            ),
        };
        self.say(seg.at, FindingKind::Control, text);
    }

    fn control_line(&mut self, seg: &Segment, raw: Vec<u8>) {
        let line = Line::from_raw(raw);
        let text = String::from_utf8_lossy(&line.text()).into_owned();
        if self.is_control_port(seg.dst.port()) {
            let (verb, opener_addr) = match parse_command(&line.text()) {
                Ok(Command::Port(addr)) => ("PORT", SocketAddr::V4(addr)),
                Ok(Command::Eprt(addr)) => ("EPRT", addr),
                _ => return,
            };
            self.announced(seg, verb, Opener::Server, opener_addr, seg.src.ip(), text);
            return;
        }
        let reply = Reply::from_lines(vec![line]);
        match reply.code() {
            Some(227) => {
                if let Ok(addr) = parse_227(&reply) {
                    let addr = SocketAddr::V4(addr);
                    self.announced(seg, "227", Opener::Client, addr, seg.src.ip(), text);
                }
            }
            Some(229) => {
                if let Ok(port) = parse_229(&reply) {
                    let addr = SocketAddr::new(seg.src.ip(), port);
                    self.announced(seg, "229", Opener::Client, addr, seg.src.ip(), text);
                }
            }
            Some(226) => self.say_once(
                seg.at,
                FindingKind::Reply,
                format!("server reports the transfer complete: {text}"),
            ),
            Some(code) if code >= 400 => self.say_once(
                seg.at,
                FindingKind::Reply,
                format!("reply {text} (toward {})", seg.dst),
            ),
            _ => {}
        }
    }

    fn announced(
        &mut self,
        seg: &Segment,
        verb: &'static str,
        opener: Opener,
        addr: SocketAddr,
        announcer: IpAddr,
        text: String,
    ) {
        // The far side of an announcement is on the same control channel (where both
        // channels are known): two sessions announcing at once are not one rewrite.
        let control = self.control_of(seg).map(|c| c.channel);
        let near_side = self.announcements.iter().rposition(|a| {
            a.opener == opener
                && a.iface != seg.iface
                && a.near_side.is_none()
                && a.far_side.is_none()
                && seg.at.saturating_sub(a.at) <= PAIR_WINDOW
                && (a.control.is_none() || control.is_none() || a.control == control)
        });
        let index = self.announcements.len();
        if let Some(near) = near_side {
            self.announcements[near].far_side = Some(index);
        }
        let (announcer_role, other_role) = side(opener);
        let announcement = Announcement {
            at: seg.at,
            iface: seg.iface.clone(),
            verb,
            opener,
            addr,
            announcer,
            text: text.clone(),
            control,
            near_side,
            far_side: None,
        };
        self.announcements.push(announcement);
        match near_side {
            None => self.say(
                seg.at,
                FindingKind::Announced,
                format!(
                    "{announcer_role} announced {addr} in {verb} ({}): `{text}`",
                    seg.where_seen()
                ),
            ),
            // A 229 carries only a port: its address is the one the client reached the
            // server at, which NAT changes on the way without anyone rewriting the reply.
            Some(near) if verb == "229" && self.announcements[near].addr.port() == addr.port() => {
                self.say(
                    seg.at,
                    FindingKind::Unchanged,
                    format!(
                        "  it crosses the gateway unchanged ({}): the client is told port {} \
                         on the address it reached the server at",
                        seg.where_seen(),
                        addr.port()
                    ),
                );
            }
            Some(near) if self.announcements[near].addr == addr => self.say(
                seg.at,
                FindingKind::Unchanged,
                format!(
                    "  it crosses the gateway unchanged ({}): the {other_role} is told {addr}",
                    seg.where_seen()
                ),
            ),
            Some(near) => {
                let by = self.rewriter(seg);
                let before = self.announcements[near].addr;
                self.say(
                    seg.at,
                    FindingKind::Rewritten,
                    format!(
                        "  {by} rewrote it from {before} to {addr} ({}): `{text}`",
                        seg.where_seen()
                    ),
                );
            }
        }
        if addr.ip() != announcer && !addr.ip().is_unspecified() {
            let (what, lesson) = match opener {
                Opener::Server => (
                    format!("the server sees the client as {announcer}"),
                    "active mode through NAT without an ALG",
                ),
                Opener::Client => (
                    format!("the client reached the server at {announcer}"),
                    "passive mode behind a port-forward without an ALG",
                ),
            };
            self.say(
                seg.at,
                FindingKind::Unreachable,
                format!(
                    "  {verb} names {}, but {what}: the {other_role} will try an address it \
                     cannot reach ({lesson})",
                    addr.ip()
                ),
            );
        }
    }

    /// Who rewrote an announcement seen on `seg`'s control connection: the kernel (the
    /// control connection itself was forwarded) or a proxy (the gateway opened it).
    fn rewriter(&self, seg: &Segment) -> &'static str {
        match self.control_of(seg) {
            Some(c) if c.sightings.len() > 1 => "the kernel's FTP helper (nf_nat_ftp)",
            Some(c) if c.sightings[0].outgoing => "the proxy on the gateway (ftp-alg)",
            _ => "the gateway",
        }
    }

    /// The control connection a control segment belongs to, if its SYN was seen.
    fn control_of(&self, seg: &Segment) -> Option<&ControlSyn> {
        let (client_end, server_end) = if self.is_control_port(seg.dst.port()) {
            (seg.src, seg.dst)
        } else {
            (seg.dst, seg.src)
        };
        self.controls.iter().rev().find(|c| {
            c.sightings
                .iter()
                .any(|s| s.iface == seg.iface && s.src == client_end && s.dst == server_end)
        })
    }

    fn data_syn(&mut self, seg: &Segment) {
        let sighting = Sighting {
            at: seg.at,
            iface: seg.iface.clone(),
            outgoing: seg.outgoing,
            src: seg.src,
            dst: seg.dst,
        };
        if let Some(attempt) = self.attempts.iter_mut().rev().find(|a| {
            a.isn == seg.seq && seg.at.saturating_sub(a.first().at) < Duration::from_secs(60)
        }) {
            attempt.sightings.push(sighting);
            return;
        }
        // Only connections to an announced address are FTP data connections: the rest of a
        // gateway's traffic (HTTPS, SSH, scans) is neither explained nor kept.
        // Most clients ignore a 227's address and connect to the one they reached the server
        // at (curl, lftp, FileZilla): an announced passive port within a minute counts too.
        let Some(announcement) = self
            .announcements
            .iter()
            .rposition(|a| a.addr == seg.dst)
            .or_else(|| {
                self.announcements.iter().rposition(|a| {
                    a.opener == Opener::Client
                        && a.addr.port() == seg.dst.port()
                        && seg.at.saturating_sub(a.at) <= Duration::from_secs(60)
                })
            })
        else {
            return;
        };
        let announcement = Some(announcement);
        self.forget_old_attempts(seg.at);
        self.attempts.push(DataAttempt {
            isn: seg.seq,
            sightings: vec![sighting],
            answer: None,
            announcement,
            reported: false,
        });
    }

    /// Keeps the attempts bounded on a long watch: reported ones older than a minute go once
    /// there are many (nothing refers to an attempt by index beyond the call that made it).
    fn forget_old_attempts(&mut self, now: Duration) {
        const KEEP: usize = 1024;
        if self.attempts.len() >= KEEP {
            self.attempts.retain(|a| {
                !a.reported || now.saturating_sub(a.first().at) < Duration::from_secs(60)
            });
        }
    }

    fn answered(&mut self, seg: &Segment, answer: Answer) {
        let isn = seg.ack.wrapping_sub(1);
        let Some(index) = self
            .attempts
            .iter()
            .rposition(|a| a.isn == isn && a.answer.is_none())
        else {
            return;
        };
        self.attempts[index].answer = Some((seg.at, answer, seg.src));
        self.report(index, seg.at);
    }

    /// Reports attempts unanswered for longer than the bound.
    pub fn tick(&mut self, now: Duration) {
        let bound = self.config.no_answer_after;
        let due: Vec<usize> = (0..self.attempts.len())
            .filter(|&i| {
                let a = &self.attempts[i];
                !a.reported && a.answer.is_none() && now.saturating_sub(a.first().at) >= bound
            })
            .collect();
        for index in due {
            self.report(index, now);
        }
    }

    /// Reports everything still pending (the capture ends).
    pub fn finish(&mut self, now: Duration) {
        let pending: Vec<usize> = (0..self.attempts.len())
            .filter(|&i| !self.attempts[i].reported)
            .collect();
        for index in pending {
            self.report(index, now);
        }
    }

    fn report(&mut self, index: usize, now: Duration) {
        let attempt = &self.attempts[index];
        if attempt.reported {
            return;
        }
        // Link late: the far-side sighting may match an announcement the near side did not.
        let announcement = attempt.announcement.or_else(|| {
            attempt
                .sightings
                .iter()
                .find_map(|s| self.announcements.iter().rposition(|a| a.addr == s.dst))
        });
        let first = attempt.first().clone();
        let who = match announcement.map(|i| self.announcements[i].opener) {
            Some(Opener::Server) => "server",
            Some(Opener::Client) => "client",
            None => "a host",
        };
        let mut text = format!("{who} connects {} → {}", first.src, first.dst);
        if let Some(i) = announcement {
            let a = &self.announcements[i];
            let _ = write!(text, " (the address in {})", a.verb);
        }
        let _ = write!(text, ", {}", first.where_seen());
        if let Some(out) = attempt.forwarded() {
            let _ = write!(text, "; the gateway forwards it via {}", out.iface);
            if out.dst != first.dst {
                let _ = write!(text, " to {} (destination NAT)", out.dst);
            }
            if out.src != first.src {
                let _ = write!(text, " as from {} (source NAT)", out.src);
            }
        }
        let (kind, outcome) = match attempt.answer {
            Some((_, Answer::SynAck, _)) => (
                FindingKind::DataUp,
                "answered with SYN-ACK: the data connection is up".to_owned(),
            ),
            Some((_, Answer::Rst, from)) => (
                FindingKind::DataRefused,
                format!("refused with RST from {from}: nothing listens there"),
            ),
            None => {
                let tries = attempt.tries();
                let waited = now.saturating_sub(first.at);
                let mut why = format!(
                    "got no answer ({tries} SYN{}, {:.1} s)",
                    if tries == 1 { "" } else { "s" },
                    waited.as_secs_f64()
                );
                if !self.config.all_interfaces {
                    let _ = write!(
                        why,
                        ": this capture sees only {}, so where it stopped is not visible here",
                        first.iface
                    );
                } else if attempt.stopped_here() {
                    let _ = write!(
                        why,
                        ": it arrived on {} and never left the gateway — dropped here, the \
                         firewall does not know this data connection",
                        first.iface
                    );
                } else if let Some(out) = attempt.forwarded() {
                    let _ = write!(why, ": it left via {} but nothing answered", out.iface);
                }
                (FindingKind::DataNoAnswer, why)
            }
        };
        let _ = write!(text, " — {outcome}");
        self.attempts[index].reported = true;
        self.attempts[index].announcement = announcement;
        self.say(now.max(first.at), kind, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::packet::TcpFlags;

    #[allow(clippy::too_many_arguments)]
    fn seg(
        at_ms: u64,
        iface: &str,
        outgoing: bool,
        src: &str,
        dst: &str,
        flags: TcpFlags,
        seq: u32,
        ack: u32,
        payload: &str,
    ) -> Segment {
        Segment {
            at: Duration::from_millis(at_ms),
            iface: iface.into(),
            outgoing,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            flags,
            seq,
            ack,
            payload: payload.as_bytes().to_vec(),
        }
    }

    const SYN: TcpFlags = TcpFlags {
        syn: true,
        ack: false,
        rst: false,
        fin: false,
    };
    const SYN_ACK: TcpFlags = TcpFlags {
        syn: true,
        ack: true,
        rst: false,
        fin: false,
    };
    const DATA: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        rst: false,
        fin: false,
    };

    fn texts(findings: &[Finding]) -> String {
        findings
            .iter()
            .map(|f| f.text.clone())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn an_alg_rewrite_and_a_forwarded_server_syn_are_paired() {
        let mut ex = Explainer::new(ExplainConfig::default());
        let client = "10.0.0.2:43000";
        let server = "203.0.113.2:21";
        let alg = "203.0.113.1:51000";
        ex.feed(&seg(0, "lan0", false, client, server, SYN, 100, 0, ""));
        ex.feed(&seg(1, "wan0", true, alg, server, SYN, 900, 0, ""));
        ex.feed(&seg(
            10,
            "lan0",
            false,
            client,
            server,
            DATA,
            101,
            0,
            "PORT 10,0,0,2,195,80\r\n",
        ));
        ex.feed(&seg(
            11,
            "wan0",
            true,
            alg,
            server,
            DATA,
            901,
            0,
            "PORT 203,0,113,1,156,187\r\n",
        ));
        ex.feed(&seg(
            20,
            "wan0",
            false,
            "203.0.113.2:20",
            "203.0.113.1:40123",
            SYN,
            5000,
            0,
            "",
        ));
        ex.feed(&seg(
            20,
            "lan0",
            true,
            "203.0.113.2:20",
            "10.0.0.2:50000",
            SYN,
            5000,
            0,
            "",
        ));
        ex.feed(&seg(
            21,
            "lan0",
            false,
            "10.0.0.2:50000",
            "203.0.113.2:20",
            SYN_ACK,
            7000,
            5001,
            "",
        ));
        let all = texts(&ex.take_findings());
        assert!(all.contains("proxied"), "{all}");
        assert!(
            all.contains("client announced 10.0.0.2:50000 in PORT"),
            "{all}"
        );
        assert!(
            all.contains("the proxy on the gateway (ftp-alg) rewrote it from 10.0.0.2:50000 to 203.0.113.1:40123"),
            "{all}"
        );
        assert!(
            all.contains(
                "server connects 203.0.113.2:20 → 203.0.113.1:40123 (the address in PORT)"
            ),
            "{all}"
        );
        assert!(all.contains("to 10.0.0.2:50000 (destination NAT)"), "{all}");
        assert!(all.contains("data connection is up"), "{all}");
    }

    /// A control connection forwarded by a port-forward: outside client, inside server
    /// (lan0), published as 203.0.113.1:21 (wan0).
    fn port_forwarded_control(ex: &mut Explainer, client: &str, isn: u32) {
        ex.feed(&seg(
            0,
            "wan0",
            false,
            client,
            "203.0.113.1:21",
            SYN,
            isn,
            0,
            "",
        ));
        ex.feed(&seg(
            0,
            "lan0",
            true,
            client,
            "198.51.100.2:21",
            SYN,
            isn,
            0,
            "",
        ));
    }

    /// The server's `reply` on that control connection, leaving the port-forward unchanged.
    fn port_forwarded_reply(ex: &mut Explainer, client: &str, reply: &str) {
        ex.feed(&seg(
            5,
            "lan0",
            false,
            "198.51.100.2:21",
            client,
            DATA,
            1,
            0,
            reply,
        ));
        ex.feed(&seg(
            5,
            "wan0",
            true,
            "203.0.113.1:21",
            client,
            DATA,
            1,
            0,
            reply,
        ));
    }

    #[test]
    fn a_229_through_a_plain_port_forward_is_not_called_a_rewrite() {
        let mut ex = Explainer::new(ExplainConfig::default());
        let client = "192.0.2.9:43000";
        port_forwarded_control(&mut ex, client, 100);
        let reply = "229 Entering Extended Passive Mode (|||30001|)\r\n";
        port_forwarded_reply(&mut ex, client, reply);
        let all = texts(&ex.take_findings());
        assert!(all.contains("crosses the gateway unchanged"), "{all}");
        assert!(!all.contains("rewrote"), "{all}");
    }

    #[test]
    fn announcements_of_two_sessions_at_once_are_not_paired_with_each_other() {
        let mut ex = Explainer::new(ExplainConfig::default());
        let (a, b) = ("192.0.2.2:43000", "192.0.2.3:43001");
        for (client, isn) in [(a, 100), (b, 200)] {
            ex.feed(&seg(
                0,
                "lan0",
                false,
                client,
                "203.0.113.2:21",
                SYN,
                isn,
                0,
                "",
            ));
            ex.feed(&seg(
                0,
                "wan0",
                true,
                client,
                "203.0.113.2:21",
                SYN,
                isn,
                0,
                "",
            ));
        }
        // A's PORT arrives, then B's, then each leaves unchanged: A's far side must not be
        // taken for B's near side.
        let port_a = "PORT 192,0,2,2,156,187\r\n";
        let port_b = "PORT 192,0,2,3,156,188\r\n";
        ex.feed(&seg(
            5,
            "lan0",
            false,
            a,
            "203.0.113.2:21",
            DATA,
            101,
            0,
            port_a,
        ));
        ex.feed(&seg(
            6,
            "lan0",
            false,
            b,
            "203.0.113.2:21",
            DATA,
            201,
            0,
            port_b,
        ));
        ex.feed(&seg(
            7,
            "wan0",
            true,
            a,
            "203.0.113.2:21",
            DATA,
            101,
            0,
            port_a,
        ));
        ex.feed(&seg(
            8,
            "wan0",
            true,
            b,
            "203.0.113.2:21",
            DATA,
            201,
            0,
            port_b,
        ));
        let all = texts(&ex.take_findings());
        assert!(!all.contains("rewrote"), "{all}");
        assert_eq!(
            all.matches("crosses the gateway unchanged").count(),
            2,
            "{all}"
        );
    }

    #[test]
    fn a_passive_connection_to_the_control_address_is_tracked_when_the_227_address_is_ignored() {
        let mut ex = Explainer::new(ExplainConfig::default());
        let client = "192.0.2.9:43000";
        port_forwarded_control(&mut ex, client, 100);
        // The server names its inside address; the client (curl, lftp) uses the one it
        // reached the server at, and the gateway has no rule for the port.
        let reply = "227 Entering Passive Mode (198,51,100,2,117,49)\r\n";
        port_forwarded_reply(&mut ex, client, reply);
        ex.feed(&seg(
            10,
            "wan0",
            false,
            "192.0.2.9:43100",
            "203.0.113.1:30001",
            SYN,
            7,
            0,
            "",
        ));
        ex.tick(Duration::from_secs(5));
        let findings = ex.take_findings();
        let all = texts(&findings);
        let no_answer = findings
            .iter()
            .find(|f| f.kind == FindingKind::DataNoAnswer)
            .unwrap_or_else(|| panic!("the data connection was not tracked:\n{all}"));
        assert!(
            no_answer.text.contains("dropped here"),
            "{}",
            no_answer.text
        );
    }

    #[test]
    fn two_clients_proxied_at_once_each_pair_with_their_own_connection() {
        let mut ex = Explainer::new(ExplainConfig::default());
        let server = "203.0.113.2:21";
        let (c1, c2) = ("10.0.0.2:43000", "10.0.0.3:43001");
        let (p1, p2) = ("203.0.113.1:42001", "203.0.113.1:42002");
        // Both arrive before the gateway opens its own connections, in the same order.
        ex.feed(&seg(0, "lan0", false, c1, server, SYN, 100, 0, ""));
        ex.feed(&seg(1, "lan0", false, c2, server, SYN, 200, 0, ""));
        ex.feed(&seg(2, "wan0", true, p1, server, SYN, 900, 0, ""));
        ex.feed(&seg(3, "wan0", true, p2, server, SYN, 950, 0, ""));
        let port = |ip: &str, lo: u8| format!("PORT {ip},156,{lo}\r\n");
        ex.feed(&seg(
            5,
            "lan0",
            false,
            c1,
            server,
            DATA,
            101,
            0,
            &port("10,0,0,2", 187),
        ));
        ex.feed(&seg(
            6,
            "lan0",
            false,
            c2,
            server,
            DATA,
            201,
            0,
            &port("10,0,0,3", 188),
        ));
        ex.feed(&seg(
            7,
            "wan0",
            true,
            p1,
            server,
            DATA,
            901,
            0,
            &port("203,0,113,1", 1),
        ));
        ex.feed(&seg(
            8,
            "wan0",
            true,
            p2,
            server,
            DATA,
            951,
            0,
            &port("203,0,113,1", 2),
        ));
        let all = texts(&ex.take_findings());
        assert!(
            all.contains("rewrote it from 10.0.0.2:40123 to 203.0.113.1:39937"),
            "{all}"
        );
        assert!(
            all.contains("rewrote it from 10.0.0.3:40124 to 203.0.113.1:39938"),
            "{all}"
        );
    }

    #[test]
    fn connections_to_no_announced_address_are_neither_explained_nor_kept() {
        let mut ex = Explainer::new(ExplainConfig::default());
        for i in 0..2000u32 {
            ex.feed(&seg(
                u64::from(i),
                "lan0",
                false,
                "10.0.0.2:50000",
                "192.0.2.80:443",
                SYN,
                i,
                0,
                "",
            ));
        }
        ex.tick(Duration::from_secs(60));
        assert!(ex.attempts().is_empty());
        assert!(ex.take_findings().is_empty());
    }

    #[test]
    fn a_syn_that_never_leaves_the_gateway_is_reported_as_dropped_here() {
        let mut ex = Explainer::new(ExplainConfig::default());
        let client = "192.0.2.2:43000";
        let server = "203.0.113.2:21";
        ex.feed(&seg(0, "lan0", false, client, server, SYN, 100, 0, ""));
        ex.feed(&seg(0, "wan0", true, client, server, SYN, 100, 0, ""));
        ex.feed(&seg(
            5,
            "lan0",
            false,
            client,
            server,
            DATA,
            101,
            0,
            "PORT 192,0,2,2,156,187\r\n",
        ));
        ex.feed(&seg(
            5,
            "wan0",
            true,
            client,
            server,
            DATA,
            101,
            0,
            "PORT 192,0,2,2,156,187\r\n",
        ));
        for at in [10, 1010] {
            ex.feed(&seg(
                at,
                "wan0",
                false,
                "203.0.113.2:20",
                "192.0.2.2:40123",
                SYN,
                77,
                0,
                "",
            ));
        }
        ex.tick(Duration::from_millis(2000));
        let mut findings = ex.take_findings();
        assert!(
            !findings.iter().any(|f| f.kind == FindingKind::DataNoAnswer),
            "reported before the bound"
        );
        ex.tick(Duration::from_millis(3100));
        findings.extend(ex.take_findings());
        let all = texts(&findings);
        assert!(all.contains("it crosses the gateway unchanged"), "{all}");
        let no_answer = findings
            .iter()
            .find(|f| f.kind == FindingKind::DataNoAnswer)
            .unwrap_or_else(|| panic!("no DataNoAnswer in:\n{all}"));
        assert!(
            no_answer
                .text
                .contains("server connects 203.0.113.2:20 → 192.0.2.2:40123")
        );
        assert!(no_answer.text.contains("2 SYNs"), "{}", no_answer.text);
        assert!(
            no_answer.text.contains("dropped here"),
            "{}",
            no_answer.text
        );
    }

    #[test]
    fn a_227_naming_the_inside_address_is_called_unreachable() {
        let mut ex = Explainer::new(ExplainConfig::default());
        let client = "203.0.113.2:43000";
        let public = "203.0.113.1:21";
        ex.feed(&seg(0, "wan0", false, client, public, SYN, 1, 0, ""));
        ex.feed(&seg(
            0,
            "lan0",
            true,
            client,
            "198.51.100.2:21",
            SYN,
            1,
            0,
            "",
        ));
        ex.feed(&seg(
            0,
            "lan0",
            false,
            "198.51.100.2:21",
            client,
            SYN_ACK,
            50,
            2,
            "",
        ));
        ex.feed(&seg(
            5,
            "lan0",
            false,
            "198.51.100.2:21",
            client,
            DATA,
            51,
            2,
            "227 Entering Passive Mode (198,51,100,2,117,48).\r\n",
        ));
        ex.feed(&seg(
            5,
            "wan0",
            true,
            public,
            client,
            DATA,
            51,
            2,
            "227 Entering Passive Mode (198,51,100,2,117,48).\r\n",
        ));
        let all = texts(&ex.take_findings());
        assert!(all.contains("destination NAT: a port-forward"), "{all}");
        assert!(
            all.contains("server announced 198.51.100.2:30000 in 227"),
            "{all}"
        );
        assert!(
            all.contains(
                "227 names 198.51.100.2, but the client reached the server at 203.0.113.1"
            ),
            "{all}"
        );
    }

    #[test]
    fn lines_split_across_segments_and_retransmissions_are_reassembled_once() {
        let mut buf = StreamBuffer::default();
        assert!(buf.push(10, b"PORT 10,0,").is_empty());
        assert!(buf.push(10, b"PORT 10,0,").is_empty());
        let lines = buf.push(20, b"0,2,1,2\r\nNOOP\r\n");
        assert_eq!(
            lines,
            vec![b"PORT 10,0,0,2,1,2\r\n".to_vec(), b"NOOP\r\n".to_vec()]
        );
    }
}
