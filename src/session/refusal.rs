//! Everything a session refuses, with the FTP reply the sender gets and the log line we write.
//!
//! One enum so that every refusal has both: a user-facing reply that says what was wrong and
//! what to do, and a warning that names the session (the session span is active when logged).

use std::net::IpAddr;

use tracing::{debug, warn};

use crate::ftp::{self, CommandError};
use crate::telemetry::ChannelRefusal;

/// A refused command or reply.
#[derive(Debug)]
#[non_exhaustive]
pub enum Refusal {
    /// A data-channel command that does not parse.
    Malformed {
        /// The command verb, upper-cased.
        verb: Vec<u8>,
        /// The parser's reason.
        error: CommandError,
    },
    /// A data-channel command terminated by a bare LF.
    BareLf {
        /// The command verb.
        verb: Vec<u8>,
    },
    /// PORT/EPRT naming another host than the client (FTP bounce, RFC 2577).
    Bounce {
        /// PORT or EPRT.
        verb: &'static str,
        /// The address it named.
        announced: IpAddr,
        /// The client's real address.
        client: IpAddr,
    },
    /// PORT/EPRT naming a port below 1024.
    PrivilegedPort {
        /// PORT or EPRT.
        verb: &'static str,
        /// The port.
        port: u16,
    },
    /// EPRT naming the other address family than the control connection's.
    Family {
        /// The command.
        verb: &'static str,
        /// The RFC 2428 family number to use.
        expected: u8,
    },
    /// PORT/PASV on an IPv6 control connection (RFC 2428: use EPRT/EPSV).
    Ipv4Only {
        /// The command.
        verb: &'static str,
    },
    /// PORT/EPRT/PASV after `EPSV ALL`.
    EpsvAll {
        /// The command.
        verb: &'static str,
    },
    /// LPRT/LPSV (RFC 1639).
    LongAddress {
        /// The command.
        verb: Vec<u8>,
    },
    /// AUTH TLS/SSL: the ALG cannot read an encrypted control channel.
    Tls,
    /// The client's first line is an HTTP request (NAT slipstreaming): the session is closed.
    NotFtp,
    /// A line whose verb is empty or not a letter then letters and digits (a tab after it, a telnet
    /// subnegotiation in it), or with a CR inside: servers split such lines differently, so
    /// it could carry a command past the checks.
    BadVerb,
    /// A verb the command policy refuses.
    Denied {
        /// The verb, upper-cased.
        verb: Vec<u8>,
    },
    /// A 227/229 that does not parse.
    MalformedReply {
        /// 227 or 229.
        code: u16,
        /// Why.
        error: String,
    },
    /// A 227 naming another host than the server (policy `refuse`).
    ForeignPassive {
        /// What it named.
        announced: IpAddr,
        /// The server the client is talking to.
        server: IpAddr,
    },
    /// A 227/229 naming a port below 1024.
    PrivilegedPassivePort {
        /// The port.
        port: u16,
    },
    /// The session holds as many pinholes as allowed.
    TooManyPinholes {
        /// The limit.
        max: usize,
    },
    /// No free gateway port for an active data connection.
    PortsExhausted,
    /// The kernel refused the pinhole.
    Firewall {
        /// The firewall's error text.
        error: String,
    },
}

impl Refusal {
    /// The FTP reply for the side that sent the refused line.
    pub fn reply(&self) -> Vec<u8> {
        let (code, text) = self.text();
        ftp::render_reply(code, &text)
    }

    /// The reply for a client outside the published server's network (reverse mode): the
    /// server's private address and the gateway's firewall internals stay in the log.
    pub fn reply_to_outside(&self) -> Vec<u8> {
        match self {
            Self::ForeignPassive { .. } => ftp::render_reply(
                425,
                "Can't open data connection: the server announced another host's address",
            ),
            Self::Firewall { .. } => ftp::render_reply(
                425,
                "Can't open data connection: gateway error; try again later",
            ),
            _ => self.reply(),
        }
    }

    /// The reply code and the full text, as the log shows it.
    fn text(&self) -> (u16, String) {
        match self {
            Self::Malformed { verb, error } => (
                501,
                format!("Syntax error in {}: {error}", String::from_utf8_lossy(verb)),
            ),
            Self::BareLf { verb } => (
                500,
                format!(
                    "{} must end with CRLF; refused by ftp-alg",
                    String::from_utf8_lossy(verb)
                ),
            ),
            Self::Bounce {
                verb,
                announced,
                client,
            } => (
                501,
                format!(
                    "{verb} refused: {announced} is not your own address ({client}); third-party transfers are not allowed"
                ),
            ),
            Self::PrivilegedPort { verb, port } => (
                501,
                format!("{verb} refused: port {port} is below 1024; use a port above 1023"),
            ),
            Self::Family { verb, expected } => (
                522,
                format!(
                    "{verb} refused: wrong address family for this connection, use ({expected})"
                ),
            ),
            Self::Ipv4Only { verb } => (
                522,
                format!(
                    "{verb} is IPv4-only and this connection is IPv6; use {}",
                    if *verb == "PASV" { "EPSV" } else { "EPRT" }
                ),
            ),
            Self::EpsvAll { verb } => (
                501,
                format!("{verb} refused: EPSV ALL is in effect; use EPSV"),
            ),
            Self::LongAddress { verb } => (
                502,
                format!(
                    "{} is not supported through ftp-alg; use EPRT/EPSV",
                    String::from_utf8_lossy(verb)
                ),
            ),
            Self::Tls => (
                534,
                "ftp-alg cannot inspect TLS on this gateway; continue with plain FTP".into(),
            ),
            Self::NotFtp => (
                421,
                "This is an FTP control connection, not HTTP; closing".into(),
            ),
            Self::BadVerb => (
                500,
                "Syntax error: a command is its verb (a letter, then letters or digits), a \
                 space, then its argument, and no CR before the line's end"
                    .into(),
            ),
            Self::Denied { verb } => (
                502,
                format!(
                    "{} is not allowed through this gateway",
                    String::from_utf8_lossy(verb)
                ),
            ),
            Self::MalformedReply { code, error } => (
                425,
                format!(
                    "Can't open data connection: the server's {code} reply is malformed ({error})"
                ),
            ),
            Self::ForeignPassive { announced, server } => (
                425,
                format!(
                    "Can't open data connection: the server announced {announced}, not its own address {server}"
                ),
            ),
            Self::PrivilegedPassivePort { port } => (
                425,
                format!("Can't open data connection: the server announced port {port}, below 1024"),
            ),
            Self::TooManyPinholes { max } => (
                425,
                format!(
                    "Can't open data connection: {max} already pending in this session; use or abort them first"
                ),
            ),
            Self::PortsExhausted => (
                425,
                "Can't open data connection: no free gateway port; try passive mode or retry later"
                    .into(),
            ),
            Self::Firewall { error } => (
                425,
                format!("Can't open data connection: firewall error: {error}"),
            ),
        }
    }

    /// What kind of data-channel refusal this is, for the metrics (none for command policy).
    pub fn channel_kind(&self) -> Option<ChannelRefusal> {
        Some(match self {
            Self::Malformed { .. } | Self::BareLf { .. } | Self::MalformedReply { .. } => {
                ChannelRefusal::Malformed
            }
            Self::Bounce { .. } => ChannelRefusal::Bounce,
            Self::PrivilegedPort { .. } | Self::PrivilegedPassivePort { .. } => {
                ChannelRefusal::PrivilegedPort
            }
            Self::Family { .. }
            | Self::Ipv4Only { .. }
            | Self::EpsvAll { .. }
            | Self::LongAddress { .. } => ChannelRefusal::Protocol,
            Self::ForeignPassive { .. } => ChannelRefusal::ForeignAddress,
            Self::TooManyPinholes { .. } | Self::PortsExhausted => ChannelRefusal::Limit,
            Self::Firewall { .. } => ChannelRefusal::Firewall,
            Self::Tls | Self::Denied { .. } | Self::BadVerb | Self::NotFtp => return None,
        })
    }

    /// Writes the log line for this refusal.
    pub fn log(&self) {
        let (code, text) = self.text();
        warn!(code, reason = %text, "refused");
    }

    /// Writes the log line at debug level: for a session past its budget of warnings.
    pub fn log_quietly(&self) {
        let (code, text) = self.text();
        debug!(code, reason = %text, "refused");
    }
}
