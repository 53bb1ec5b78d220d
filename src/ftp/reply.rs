//! Server replies: RFC 959 multi-line assembly, and the passive-mode addresses in 227/229.
//!
//! Only 227 and 229 replies are held back, because the ALG must open a pinhole (and maybe
//! rewrite the address) before the client sees them; every other line is forwarded at once so
//! the ALG adds no latency. Reply structure is judged on the raw bytes, which is what clients
//! read: a line is a continuation line until the one that ends its reply, whatever it says, so
//! a "227 " inside a "230-" banner is text. Addresses are parsed the way RFC 1123 4.1.2.6 asks
//! clients to (scan for the numbers), so every server format seen in the wild works, and a
//! rewrite replaces only the number sequence, leaving every other byte as the server sent it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;

use super::line::Line;
use super::number::{NumberError, digit_run, parse_decimal};

/// A complete server reply (or a line outside any reply, with no code).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reply {
    code: Option<u16>,
    lines: Vec<Line>,
}

impl Reply {
    /// Builds a reply from its lines; the code is read from the first line's first 3 bytes.
    pub fn from_lines(lines: Vec<Line>) -> Self {
        let code = lines
            .first()
            .and_then(|line| code_digits(line.raw()))
            .map(code_value);
        Self { code, lines }
    }

    /// The 3-digit reply code, if the reply starts with one.
    pub fn code(&self) -> Option<u16> {
        self.code
    }

    /// The lines, as received.
    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// All lines' raw bytes, concatenated.
    pub fn raw(&self) -> Vec<u8> {
        self.lines.iter().flat_map(Line::raw).copied().collect()
    }
}

/// What to do with a line just pushed into the [`ReplyAssembler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyEvent {
    /// Pass this line on unchanged, now.
    Forward(Line),
    /// A complete 227 or 229 reply, held back for interpretation.
    Complete(Reply),
    /// The line was buffered as part of a 227/229 multi-line reply.
    Pending,
    /// The line belongs to a 227/229 reply refused as too long ([`ReplyError::TooLong`]) and
    /// is dropped; `end`: it was that reply's last line.
    Dropped {
        /// The refused reply has ended.
        end: bool,
    },
}

/// Why a reply could not be assembled or interpreted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// A multi-line 227/229 reply exceeded the buffer; its buffered lines were dropped.
    #[error("passive reply longer than {max} bytes")]
    TooLong {
        /// The limit in bytes.
        max: usize,
    },
    /// The reply was given to the parser of another code.
    #[error("expected a {expected} reply")]
    WrongCode {
        /// The code the parser handles.
        expected: u16,
    },
    /// No `h1,h2,h3,h4,p1,p2` sequence in a 227 reply.
    #[error("227 reply carries no h1,h2,h3,h4,p1,p2 address")]
    NoAddress,
    /// A number of the 227 address was above 255.
    #[error("227 reply address number above 255")]
    OctetOutOfRange,
    /// The reply named port 0.
    #[error("passive reply names port 0")]
    PortZero,
    /// No `(|||port|)` in a 229 reply.
    #[error("229 reply carries no (|||port|)")]
    NoPort,
    /// The 229 port was above 65535.
    #[error("229 reply port above 65535")]
    PortOutOfRange,
    /// The line holding the address contained a telnet IAC byte, which clients may or may not
    /// interpret; refused rather than guessed.
    #[error("passive reply address line contains a telnet IAC byte")]
    Telnet,
    /// Several lines of a multi-line reply name different addresses.
    #[error("multi-line passive reply names more than one address")]
    Ambiguous,
}

/// The first 3 bytes, if they are ASCII digits.
fn code_digits(raw: &[u8]) -> Option<[u8; 3]> {
    match raw {
        [a, b, c, ..] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => Some([*a, *b, *c]),
        _ => None,
    }
}

fn code_value(digits: [u8; 3]) -> u16 {
    digits
        .iter()
        .fold(0, |acc, &d| acc * 10 + u16::from(d - b'0'))
}

/// Does `line` end the multi-line reply with these code digits? RFC 959: the same code
/// followed by a space; also accepted: the code followed directly by the terminator.
fn ends_reply(line: &Line, digits: [u8; 3]) -> bool {
    let raw = line.raw();
    if code_digits(raw) != Some(digits) {
        return false;
    }
    let after = raw.get(3..).unwrap_or_default();
    after.first() == Some(&b' ') || after.len() == line.terminator().byte_len()
}

#[derive(Debug, Clone)]
enum State {
    Idle,
    /// Holding a multi-line 227/229 reply.
    Buffering {
        digits: [u8; 3],
        lines: Vec<Line>,
        size: usize,
    },
    /// Inside a multi-line reply that is forwarded line by line.
    PassThrough {
        digits: [u8; 3],
    },
    /// Inside a 227/229 reply refused as too long: its lines are dropped up to its end.
    Discarding {
        digits: [u8; 3],
    },
}

/// Groups server lines into replies, holding back only 227 and 229.
#[derive(Debug, Clone)]
pub struct ReplyAssembler {
    max_buffered: usize,
    state: State,
}

impl ReplyAssembler {
    /// An assembler that holds at most `max_buffered` bytes of a multi-line 227/229 reply.
    pub fn new(max_buffered: usize) -> Self {
        Self {
            max_buffered,
            state: State::Idle,
        }
    }

    /// Takes the next line from the server.
    ///
    /// A single-line 227/229 completes at once; a multi-line one is buffered until its end
    /// line. Every other line is forwarded. When a buffered reply grows beyond `max_buffered`,
    /// its lines so far (this one included) are dropped, [`ReplyError::TooLong`] is returned,
    /// and the rest of that reply is dropped too ([`ReplyEvent::Dropped`]): the client, told
    /// once, must not read its end line as the answer to its next command.
    pub fn push_line(&mut self, line: Line) -> Result<ReplyEvent, ReplyError> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::PassThrough { digits } => {
                if !ends_reply(&line, digits) {
                    self.state = State::PassThrough { digits };
                }
                Ok(ReplyEvent::Forward(line))
            }
            State::Discarding { digits } => {
                let end = ends_reply(&line, digits);
                if !end {
                    self.state = State::Discarding { digits };
                }
                Ok(ReplyEvent::Dropped { end })
            }
            State::Buffering {
                digits,
                mut lines,
                size,
            } => {
                let size = size.saturating_add(line.len());
                let end = ends_reply(&line, digits);
                if size > self.max_buffered {
                    if !end {
                        self.state = State::Discarding { digits };
                    }
                    return Err(ReplyError::TooLong {
                        max: self.max_buffered,
                    });
                }
                lines.push(line);
                if end {
                    return Ok(ReplyEvent::Complete(Reply {
                        code: Some(code_value(digits)),
                        lines,
                    }));
                }
                self.state = State::Buffering {
                    digits,
                    lines,
                    size,
                };
                Ok(ReplyEvent::Pending)
            }
            State::Idle => self.start_reply(line),
        }
    }

    fn start_reply(&mut self, line: Line) -> Result<ReplyEvent, ReplyError> {
        let Some(digits) = code_digits(line.raw()) else {
            return Ok(ReplyEvent::Forward(line));
        };
        let code = code_value(digits);
        let multiline = line.raw().get(3) == Some(&b'-');
        if code != 227 && code != 229 {
            if multiline {
                self.state = State::PassThrough { digits };
            }
            return Ok(ReplyEvent::Forward(line));
        }
        if !multiline {
            return Ok(ReplyEvent::Complete(Reply {
                code: Some(code),
                lines: vec![line],
            }));
        }
        if line.len() > self.max_buffered {
            self.state = State::Discarding { digits };
            return Err(ReplyError::TooLong {
                max: self.max_buffered,
            });
        }
        self.state = State::Buffering {
            digits,
            size: line.len(),
            lines: vec![line],
        };
        Ok(ReplyEvent::Pending)
    }

    /// True while inside a multi-line reply (buffered or forwarded).
    pub fn in_multiline(&self) -> bool {
        !matches!(self.state, State::Idle)
    }
}

fn expect_code(reply: &Reply, expected: u16) -> Result<(), ReplyError> {
    if reply.code == Some(expected) {
        Ok(())
    } else {
        Err(ReplyError::WrongCode { expected })
    }
}

/// Where to look for the address in a line: after the reply code, if the line starts with it
/// (else the code's own digits would be read as h1).
fn scan_start(content: &[u8], reply: &Reply) -> usize {
    match (reply.code, code_digits(content)) {
        (Some(code), Some(digits)) if code_value(digits) == code => 3,
        _ => 0,
    }
}

/// The first `n,n,n,n,n,n` sequence (digits only, no spaces) starting at a digit-run start
/// at or after `from`: its byte range and its six values (saturated, not yet range-checked).
fn find_six_numbers(content: &[u8], from: usize) -> Option<(Range<usize>, [u32; 6])> {
    let region = content.get(from..)?;
    (0..region.len())
        .filter(|&p| {
            region.get(p).is_some_and(u8::is_ascii_digit)
                && (p == 0 || region.get(p - 1).is_some_and(|b| !b.is_ascii_digit()))
        })
        .find_map(|start| {
            let mut values = [0u32; 6];
            let mut at = start;
            for (i, value) in values.iter_mut().enumerate() {
                if i > 0 {
                    if region.get(at) != Some(&b',') {
                        return None;
                    }
                    at += 1;
                }
                let digits = region.get(at..).map_or(0, digit_run);
                let field = region.get(at..at + digits)?;
                *value = match parse_decimal(field, u32::MAX) {
                    Ok(v) => v,
                    Err(NumberError::TooLarge) => u32::MAX,
                    Err(NumberError::Empty | NumberError::NotDigit) => return None,
                };
                at += digits;
            }
            Some((from + start..from + at, values))
        })
}

fn address_from(values: [u32; 6]) -> Result<SocketAddrV4, ReplyError> {
    let mut octets = [0u8; 6];
    for (octet, value) in octets.iter_mut().zip(values) {
        *octet = u8::try_from(value).map_err(|_| ReplyError::OctetOutOfRange)?;
    }
    let [h1, h2, h3, h4, p1, p2] = octets;
    let port = u16::from_be_bytes([p1, p2]);
    if port == 0 {
        return Err(ReplyError::PortZero);
    }
    Ok(SocketAddrV4::new(Ipv4Addr::new(h1, h2, h3, h4), port))
}

/// The first `<d><d><d>port<d>` (d in 33..=126, not a digit, all four identical) at or after
/// `from`: the byte range of the port digits and their value (saturated).
fn find_extended_port(content: &[u8], from: usize) -> Option<(Range<usize>, u32)> {
    let region = content.get(from..)?;
    (0..region.len()).find_map(|i| {
        let d = *region.get(i)?;
        let is_delimiter = (33..=126).contains(&d) && !d.is_ascii_digit();
        if !is_delimiter || region.get(i + 1) != Some(&d) || region.get(i + 2) != Some(&d) {
            return None;
        }
        let start = i + 3;
        let digits = region.get(start..).map_or(0, digit_run);
        if digits == 0 || region.get(start + digits) != Some(&d) {
            return None;
        }
        let value = parse_decimal(region.get(start..start + digits)?, u32::MAX).unwrap_or(u32::MAX);
        Some((from + start..from + start + digits, value))
    })
}

/// Per line: the address span found in it, if any.
fn spans<T>(
    reply: &Reply,
    find: impl Fn(&[u8], usize) -> Option<(Range<usize>, T)>,
) -> Vec<(usize, Range<usize>, T)> {
    reply
        .lines
        .iter()
        .enumerate()
        .filter_map(|(index, line)| {
            let content = line.content();
            find(content, scan_start(content, reply)).map(|(range, value)| (index, range, value))
        })
        .collect()
}

/// Interprets the first span, requiring every other line's span to agree and no IAC near it.
fn interpret<T, V: PartialEq>(
    reply: &Reply,
    found: Vec<(usize, Range<usize>, T)>,
    missing: ReplyError,
    convert: impl Fn(T) -> Result<V, ReplyError>,
) -> Result<V, ReplyError> {
    let mut found = found.into_iter();
    let Some((index, _, first)) = found.next() else {
        return Err(missing);
    };
    let has_iac = |index: usize| {
        reply
            .lines
            .get(index)
            .is_some_and(|line| line.content().contains(&0xFF))
    };
    if has_iac(index) {
        return Err(ReplyError::Telnet);
    }
    let value = convert(first)?;
    for (other_index, _, other) in found {
        if has_iac(other_index) || convert(other).ok().as_ref() != Some(&value) {
            return Err(ReplyError::Ambiguous);
        }
    }
    Ok(value)
}

/// The address in a 227 reply (RFC 959; RFC 1123 4.1.2.6 scanning).
///
/// Every format seen in the wild is accepted: `(h1,...,p2)`, without parentheses, `=h1,...`,
/// trailing text after the numbers, leading zeros (read as decimal). The first place in a
/// line where six comma-separated numbers start is taken; in a multi-line 227, the first line
/// holding such a sequence, and every other line holding one must name the same address.
pub fn parse_227(reply: &Reply) -> Result<SocketAddrV4, ReplyError> {
    expect_code(reply, 227)?;
    interpret(
        reply,
        spans(reply, find_six_numbers),
        ReplyError::NoAddress,
        address_from,
    )
}

fn port_from(value: u32) -> Result<u16, ReplyError> {
    match u16::try_from(value) {
        Ok(0) => Err(ReplyError::PortZero),
        Ok(port) => Ok(port),
        Err(_) => Err(ReplyError::PortOutOfRange),
    }
}

/// The port in a 229 reply: `(|||port|)` (RFC 2428 section 3), any delimiter in 33..=126.
pub fn parse_229(reply: &Reply) -> Result<u16, ReplyError> {
    expect_code(reply, 229)?;
    interpret(
        reply,
        spans(reply, find_extended_port),
        ReplyError::NoPort,
        port_from,
    )
}

/// Replaces, in every line holding one, the span found by `find` with `replacement` unless
/// that span already names `new` (so rewriting to the same address is the identity).
fn rewrite<T: Copy>(
    reply: &Reply,
    find: impl Fn(&[u8], usize) -> Option<(Range<usize>, T)>,
    already: impl Fn(T) -> bool,
    replacement: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(reply.lines.iter().map(Line::len).sum::<usize>() + 32);
    for line in &reply.lines {
        let raw = line.raw();
        let content = line.content();
        match find(content, scan_start(content, reply)) {
            Some((range, value)) if !already(value) => {
                out.extend_from_slice(raw.get(..range.start).unwrap_or_default());
                out.extend_from_slice(replacement);
                out.extend_from_slice(raw.get(range.end..).unwrap_or_default());
            }
            _ => out.extend_from_slice(raw),
        }
    }
    out
}

fn six_numbers(addr: SocketAddrV4) -> String {
    let [h1, h2, h3, h4] = addr.ip().octets();
    let [p1, p2] = addr.port().to_be_bytes();
    format!("{h1},{h2},{h3},{h4},{p1},{p2}")
}

/// The reply's raw bytes with only the `h1,h2,h3,h4,p1,p2` sequence replaced by `new`.
///
/// Every other byte, terminators included, is unchanged. In a multi-line reply each line's
/// sequence is replaced, so a client reading any line sees `new`. A reply without a sequence
/// comes back unchanged.
pub fn rewrite_227(reply: &Reply, new: SocketAddrV4) -> Vec<u8> {
    rewrite(
        reply,
        find_six_numbers,
        |values| address_from(values).ok() == Some(new),
        six_numbers(new).as_bytes(),
    )
}

/// The reply's raw bytes with only the 229 port digits replaced by `new_port`.
pub fn rewrite_229(reply: &Reply, new_port: u16) -> Vec<u8> {
    rewrite(
        reply,
        find_extended_port,
        |value| value == u32::from(new_port),
        new_port.to_string().as_bytes(),
    )
}

/// `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2).\r\n`
pub fn render_227(addr: SocketAddrV4) -> Vec<u8> {
    format!("227 Entering Passive Mode ({}).\r\n", six_numbers(addr)).into_bytes()
}

/// `229 Entering Extended Passive Mode (|||port|)\r\n`
pub fn render_229(port: u16) -> Vec<u8> {
    format!("229 Entering Extended Passive Mode (|||{port}|)\r\n").into_bytes()
}

/// A single-line reply `code text\r\n` of our own.
///
/// CR, LF and every other control character in `text` become spaces, so no second line (and
/// no second reply) can be injected. Codes above 999 are clamped to 999; codes are printed as
/// three digits.
pub fn render_reply(code: u16, text: &str) -> Vec<u8> {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("{:03} {text}\r\n", code.min(999)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(raw: &str) -> Line {
        Line::from_raw(raw.as_bytes().to_vec())
    }

    fn reply(raw: &str) -> Reply {
        Reply::from_lines(
            raw.split_inclusive('\n')
                .map(|l| Line::from_raw(l.as_bytes().to_vec()))
                .collect(),
        )
    }

    fn addr(text: &str) -> SocketAddrV4 {
        text.parse().unwrap()
    }

    fn feed(assembler: &mut ReplyAssembler, raw: &str) -> Vec<Result<ReplyEvent, ReplyError>> {
        raw.split_inclusive('\n')
            .map(|l| assembler.push_line(line(l)))
            .collect()
    }

    #[test]
    fn single_line_227_completes_immediately() {
        let mut a = ReplyAssembler::new(4096);
        let events = feed(&mut a, "227 Entering Passive Mode (10,0,0,1,4,1)\r\n");
        let [Ok(ReplyEvent::Complete(r))] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(r.code(), Some(227));
        assert!(!a.in_multiline());
    }

    #[test]
    fn other_replies_are_forwarded_at_once() {
        let mut a = ReplyAssembler::new(4096);
        let events = feed(&mut a, "200 OK\r\n150 Here\r\n");
        assert_eq!(
            events,
            vec![
                Ok(ReplyEvent::Forward(line("200 OK\r\n"))),
                Ok(ReplyEvent::Forward(line("150 Here\r\n")))
            ]
        );
    }

    #[test]
    fn multiline_227_is_buffered_until_its_end_line() {
        let mut a = ReplyAssembler::new(4096);
        let events = feed(&mut a, "227-Hello\r\n text\r\n227 (10,0,0,1,4,1)\r\n");
        assert_eq!(events[0], Ok(ReplyEvent::Pending));
        assert_eq!(events[1], Ok(ReplyEvent::Pending));
        let Ok(ReplyEvent::Complete(r)) = &events[2] else {
            panic!("{events:?}")
        };
        assert_eq!(r.lines().len(), 3);
        assert_eq!(r.raw(), b"227-Hello\r\n text\r\n227 (10,0,0,1,4,1)\r\n");
        assert!(!a.in_multiline());
    }

    #[test]
    fn a_227_line_inside_a_230_banner_is_continuation_text() {
        let mut a = ReplyAssembler::new(4096);
        let events = feed(
            &mut a,
            "230-Welcome\r\n227 Entering Passive Mode (6,6,6,6,4,1)\r\n230 Done\r\n",
        );
        assert!(
            events
                .iter()
                .all(|e| matches!(e, Ok(ReplyEvent::Forward(_))))
        );
        assert!(!a.in_multiline());
    }

    #[test]
    fn multiline_reply_ends_only_at_same_code_and_space() {
        let mut a = ReplyAssembler::new(4096);
        feed(&mut a, "230-a\r\n231 b\r\n230-c\r\n");
        assert!(a.in_multiline());
        feed(&mut a, "230\r\n");
        assert!(!a.in_multiline());
    }

    #[test]
    fn line_without_code_outside_a_reply_is_forwarded() {
        let mut a = ReplyAssembler::new(4096);
        assert_eq!(
            a.push_line(line("hello\r\n")),
            Ok(ReplyEvent::Forward(line("hello\r\n")))
        );
    }

    #[test]
    fn oversized_multiline_227_errors_once_then_drops_the_rest_up_to_its_end() {
        let mut a = ReplyAssembler::new(30);
        let events = feed(
            &mut a,
            "227-aaaaaaaaaa\r\n bbbbbbbbbbbbbbbbbbbbbbbb\r\n cc\r\n227 (1,2,3,4,5,6)\r\n200 OK\r\n",
        );
        assert_eq!(events[0], Ok(ReplyEvent::Pending));
        assert_eq!(events[1], Err(ReplyError::TooLong { max: 30 }));
        assert_eq!(events[2], Ok(ReplyEvent::Dropped { end: false }));
        assert_eq!(events[3], Ok(ReplyEvent::Dropped { end: true }));
        assert_eq!(events[4], Ok(ReplyEvent::Forward(line("200 OK\r\n"))));
        assert!(!a.in_multiline());
    }

    #[test]
    fn an_oversized_first_line_of_a_227_drops_the_reply_up_to_its_end() {
        let mut a = ReplyAssembler::new(12);
        let events = feed(
            &mut a,
            "227-aaaaaaaaaaaaaaaa\r\n227 (1,2,3,4,5,6)\r\n200 OK\r\n",
        );
        assert_eq!(events[0], Err(ReplyError::TooLong { max: 12 }));
        assert_eq!(events[1], Ok(ReplyEvent::Dropped { end: true }));
        assert_eq!(events[2], Ok(ReplyEvent::Forward(line("200 OK\r\n"))));
    }

    #[test]
    fn oversized_end_line_of_227_leaves_the_assembler_idle() {
        let mut a = ReplyAssembler::new(12);
        let events = feed(&mut a, "227-a\r\n227 (1,2,3,4,5,6)\r\n");
        assert_eq!(events[1], Err(ReplyError::TooLong { max: 12 }));
        assert!(!a.in_multiline());
    }

    #[test]
    fn parse_227_accepts_formats_seen_in_the_wild() {
        let expected = addr("192.168.1.2:1025");
        for text in [
            "227 Entering Passive Mode (192,168,1,2,4,1)\r\n",
            "227 Entering Passive Mode (192,168,1,2,4,1).\r\n",
            "227 Entering Passive Mode 192,168,1,2,4,1\r\n",
            "227 =192,168,1,2,4,1\r\n",
            "227 Entering Passive Mode (192,168,001,002,004,001)\n",
            "227 Mode 1 of 2 (192,168,1,2,4,1)\r\n",
            "227 (192,168,1,2,4,1,7)\r\n",
            "227,192,168,1,2,4,1\r\n",
        ] {
            assert_eq!(parse_227(&reply(text)), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn parse_227_takes_first_line_with_an_address_in_multiline() {
        let r = reply("227-Passive 1 way\r\n227 Entering (10,0,0,1,4,1)\r\n");
        assert_eq!(parse_227(&r), Ok(addr("10.0.0.1:1025")));
    }

    #[test]
    fn parse_227_refuses_lines_naming_different_addresses() {
        let r = reply("227-(10,0,0,1,4,1)\r\n227 (10,0,0,2,4,1)\r\n");
        assert_eq!(parse_227(&r), Err(ReplyError::Ambiguous));
    }

    #[test]
    fn parse_227_with_octet_above_255_is_rejected() {
        assert_eq!(
            parse_227(&reply("227 (10,0,0,256,4,1)\r\n")),
            Err(ReplyError::OctetOutOfRange)
        );
        assert_eq!(
            parse_227(&reply("227 (10,0,0,1,4,99999999999999999999999)\r\n")),
            Err(ReplyError::OctetOutOfRange)
        );
    }

    #[test]
    fn parse_227_with_port_zero_is_rejected() {
        assert_eq!(
            parse_227(&reply("227 (10,0,0,1,0,0)\r\n")),
            Err(ReplyError::PortZero)
        );
    }

    #[test]
    fn parse_227_with_fewer_than_six_numbers_is_rejected() {
        assert_eq!(
            parse_227(&reply("227 (10,0,0,1,4)\r\n")),
            Err(ReplyError::NoAddress)
        );
        assert_eq!(
            parse_227(&reply("227 (10, 0, 0, 1, 4, 1)\r\n")),
            Err(ReplyError::NoAddress)
        );
        assert_eq!(parse_227(&reply("227\r\n")), Err(ReplyError::NoAddress));
    }

    #[test]
    fn parse_227_does_not_read_the_reply_code_as_h1() {
        assert_eq!(
            parse_227(&reply("2271,2,3,4,5\r\n")),
            Err(ReplyError::NoAddress)
        );
    }

    #[test]
    fn parse_227_refuses_iac_in_the_address_line() {
        let r = Reply::from_lines(vec![Line::from_raw(
            b"227 \xff\xfb1,2,3,4,5,6\r\n".to_vec(),
        )]);
        assert_eq!(parse_227(&r), Err(ReplyError::Telnet));
    }

    #[test]
    fn parse_227_on_a_229_is_wrong_code() {
        assert_eq!(
            parse_227(&reply("229 (|||21|)\r\n")),
            Err(ReplyError::WrongCode { expected: 227 })
        );
    }

    #[test]
    fn parse_229_reads_the_port() {
        assert_eq!(
            parse_229(&reply("229 Entering Extended Passive Mode (|||6446|)\r\n")),
            Ok(6446)
        );
        assert_eq!(parse_229(&reply("229 ok (!!!21!)\r\n")), Ok(21));
        assert_eq!(parse_229(&reply("229 (||||6446|)\n")), Ok(6446));
    }

    #[test]
    fn parse_229_requires_identical_delimiters() {
        assert_eq!(
            parse_229(&reply("229 (|!|6446|)\r\n")),
            Err(ReplyError::NoPort)
        );
        assert_eq!(
            parse_229(&reply("229 (|||6446!)\r\n")),
            Err(ReplyError::NoPort)
        );
        assert_eq!(parse_229(&reply("229 (||||)\r\n")), Err(ReplyError::NoPort));
    }

    #[test]
    fn parse_229_port_out_of_range_is_rejected() {
        assert_eq!(
            parse_229(&reply("229 (|||0|)\r\n")),
            Err(ReplyError::PortZero)
        );
        assert_eq!(
            parse_229(&reply("229 (|||65536|)\r\n")),
            Err(ReplyError::PortOutOfRange)
        );
        assert_eq!(
            parse_229(&reply("229 (|||999999999999999999999|)\r\n")),
            Err(ReplyError::PortOutOfRange)
        );
    }

    #[test]
    fn rewrite_227_changes_only_the_numbers() {
        let r = reply("227 Entering Passive Mode (192,168,1,2,4,1).\r\n");
        assert_eq!(
            rewrite_227(&r, addr("203.0.113.9:50000")),
            b"227 Entering Passive Mode (203,0,113,9,195,80).\r\n"
        );
    }

    #[test]
    fn rewrite_227_rewrites_every_line_naming_an_address() {
        let r = reply("227-(10,0,0,1,4,1)\r\n227 Ok (10,0,0,1,4,1)\n");
        assert_eq!(
            rewrite_227(&r, addr("1.2.3.4:5")),
            b"227-(1,2,3,4,0,5)\r\n227 Ok (1,2,3,4,0,5)\n"
        );
    }

    #[test]
    fn rewrite_227_to_the_same_address_keeps_leading_zeros() {
        let r = reply("227 (010,0,0,1,4,1)\r\n");
        assert_eq!(rewrite_227(&r, addr("10.0.0.1:1025")), r.raw());
    }

    #[test]
    fn rewrite_229_changes_only_the_port() {
        let r = reply("229 Entering Extended Passive Mode (|||6446|)\r\n");
        assert_eq!(
            rewrite_229(&r, 50000),
            b"229 Entering Extended Passive Mode (|||50000|)\r\n"
        );
    }

    #[test]
    fn render_reply_cannot_inject_a_second_line() {
        assert_eq!(
            render_reply(425, "no\r\n227 (6,6,6,6,4,1)"),
            b"425 no  227 (6,6,6,6,4,1)\r\n"
        );
        assert_eq!(render_reply(1234, "x"), b"999 x\r\n");
        assert_eq!(render_reply(0, ""), b"000 \r\n");
    }

    #[test]
    fn error_texts_are_single_line_ascii() {
        for e in [
            ReplyError::TooLong { max: 4096 },
            ReplyError::WrongCode { expected: 229 },
            ReplyError::NoAddress,
            ReplyError::OctetOutOfRange,
            ReplyError::PortZero,
            ReplyError::NoPort,
            ReplyError::PortOutOfRange,
            ReplyError::Telnet,
            ReplyError::Ambiguous,
        ] {
            let text = e.to_string();
            assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)), "{text:?}");
        }
    }

    /// Text around an address: no digits (the address must be the first number sequence), no
    /// line breaks, no IAC.
    fn filler() -> impl Strategy<Value = String> {
        "[ -/:-~]{0,30}"
    }

    fn any_v4() -> impl Strategy<Value = SocketAddrV4> {
        (any::<[u8; 4]>(), 1u16..).prop_map(|(ip, port)| SocketAddrV4::new(ip.into(), port))
    }

    proptest! {
        #[test]
        fn parse_227_of_render_is_identity(a in any_v4()) {
            prop_assert_eq!(parse_227(&reply(std::str::from_utf8(&render_227(a)).unwrap())), Ok(a));
        }

        #[test]
        fn parse_229_of_render_is_identity(port in 1u16..) {
            prop_assert_eq!(parse_229(&reply(std::str::from_utf8(&render_229(port)).unwrap())), Ok(port));
        }

        #[test]
        fn rewrite_227_keeps_every_byte_around_the_numbers(
            before in filler(), after in filler(), old in any_v4(), new in any_v4(),
            crlf in any::<bool>(),
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let text = format!("227 {before}{}{after}{end}", six_numbers(old));
            let r = reply(&text);
            prop_assert_eq!(parse_227(&r), Ok(old));
            let expected = format!("227 {before}{}{after}{end}", six_numbers(new));
            prop_assert_eq!(rewrite_227(&r, new), expected.into_bytes());
        }

        #[test]
        fn rewrite_229_keeps_every_byte_around_the_port(
            before in filler(), after in filler(), old in 1u16.., new in 1u16..,
        ) {
            let text = format!("229 {before}(|||{old}|){after}\r\n");
            let r = reply(&text);
            prop_assert_eq!(parse_229(&r), Ok(old));
            let expected = format!("229 {before}(|||{new}|){after}\r\n");
            prop_assert_eq!(rewrite_229(&r, new), expected.into_bytes());
        }

        #[test]
        fn rewrite_with_the_parsed_address_is_identity(
            before in filler(), after in filler(), a in any_v4(),
        ) {
            let text = format!("227 {before}{}{after}\r\n", six_numbers(a));
            let r = reply(&text);
            prop_assert_eq!(parse_227(&r), Ok(a));
            prop_assert_eq!(rewrite_227(&r, a), r.raw());
        }

        #[test]
        fn render_reply_is_always_one_line(code in any::<u16>(), text in any::<String>()) {
            let out = render_reply(code, &text);
            prop_assert!(out.ends_with(b"\r\n"));
            prop_assert_eq!(out.iter().filter(|&&b| b == b'\n' || b == b'\r').count(), 2);
        }
    }
}
