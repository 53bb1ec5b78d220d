//! Line framing for the FTP control connection.
//!
//! The ALG may only interpret *complete* lines (a PORT split across TCP segments must not be
//! acted on half-read), and an attacker must not be able to grow our memory or push a PORT
//! into command position by overflowing a buffer. So framing is deliberately dumb:
//!
//! - A line ends at the first LF (0x0A), nothing else. CR LF gives [`Terminator::CrLf`], a LF
//!   not preceded by CR gives [`Terminator::BareLf`]; the session decides what a bare LF may do.
//! - Telnet (RFC 854) is *not* interpreted while framing. An IAC (0xFF) followed by LF cannot
//!   occur in valid telnet, so an LF after an IAC still ends the line; the dangling IAC is then
//!   dropped by [`Line::text`]. An `IAC SB` left open at the end of a line is closed by it.
//! - A line longer than `max_line` bytes (terminator included) is reported once as
//!   [`FrameError::TooLong`] with its first `max_line - 2` bytes (room for a CR LF, so a
//!   caller can pass it on cut); the rest up to and including its LF is dropped, then framing
//!   resumes with the next line. The incomplete line held is always shorter than `max_line`.

use std::collections::VecDeque;

/// Telnet "interpret as command" (RFC 854).
const IAC: u8 = 0xFF;
/// Telnet subnegotiation end.
const SE: u8 = 240;
/// Telnet subnegotiation begin.
const SB: u8 = 250;
/// Telnet option negotiation: WILL.
const WILL: u8 = 251;
/// Telnet option negotiation: DONT.
const DONT: u8 = 254;

/// How a [`Line`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Terminator {
    /// CR LF, as RFC 959 requires.
    CrLf,
    /// A LF not preceded by CR.
    BareLf,
    /// No LF at all: only for lines built with [`Line::from_raw`] or returned by
    /// [`LineFramer::take_partial`] at end of stream; [`LineFramer::next_line`] never yields it.
    Missing,
}

impl Terminator {
    /// Length of the terminator in bytes (0 for [`Terminator::Missing`]).
    pub fn byte_len(self) -> usize {
        match self {
            Self::CrLf => 2,
            Self::BareLf => 1,
            Self::Missing => 0,
        }
    }
}

/// One control-connection line, exactly as received.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Line {
    raw: Vec<u8>,
}

impl Line {
    /// Wraps bytes as a line, for tests, fuzzing and end of stream.
    ///
    /// The terminator is read from the end only: `\r\n` is [`Terminator::CrLf`], `\n` is
    /// [`Terminator::BareLf`], anything else is [`Terminator::Missing`]. An LF in the middle is
    /// *not* split off; it stays part of the line's content.
    pub fn from_raw(raw: Vec<u8>) -> Self {
        Self { raw }
    }

    /// Exactly the bytes received, terminator included.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Consumes the line, returning its raw bytes.
    pub fn into_raw(self) -> Vec<u8> {
        self.raw
    }

    /// How the line ended.
    pub fn terminator(&self) -> Terminator {
        if self.raw.ends_with(b"\r\n") {
            Terminator::CrLf
        } else if self.raw.ends_with(b"\n") {
            Terminator::BareLf
        } else {
            Terminator::Missing
        }
    }

    /// The raw bytes without the terminator, telnet sequences left in place.
    pub fn content(&self) -> &[u8] {
        let end = self.raw.len().saturating_sub(self.terminator().byte_len());
        self.raw.get(..end).unwrap_or_default()
    }

    /// The line as a command interpreter must see it: terminator removed, telnet removed.
    ///
    /// `IAC IAC` becomes one 0xFF; `IAC WILL|WONT|DO|DONT x` (3 bytes) is removed; `IAC SB ...
    /// IAC SE` is removed (an unclosed one runs to the end of the line); any other `IAC x` (IP,
    /// DM, AYT, NOP, ...) is removed (2 bytes); a lone trailing IAC is removed. All other bytes,
    /// NUL and bare CR included, are kept.
    pub fn text(&self) -> Vec<u8> {
        strip_telnet(self.content())
    }

    /// Length of the raw bytes, terminator included.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// True when the line holds no bytes at all (only possible via [`Line::from_raw`]).
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

/// Removes telnet command sequences, see [`Line::text`].
fn strip_telnet(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&byte) = input.get(i) {
        if byte != IAC {
            out.push(byte);
            i += 1;
            continue;
        }
        match input.get(i + 1) {
            None => break,
            Some(&IAC) => {
                out.push(IAC);
                i += 2;
            }
            Some(WILL..=DONT) => i += 3,
            Some(&SB) => i = end_of_subnegotiation(input, i + 2),
            Some(_) => i += 2,
        }
    }
    out
}

/// Index just past the `IAC SE` closing a subnegotiation whose data starts at `from`, or the
/// end of `input` when it is not closed. `IAC IAC` inside is escaped data, not a terminator.
fn end_of_subnegotiation(input: &[u8], from: usize) -> usize {
    let mut j = from;
    while let Some(&byte) = input.get(j) {
        if byte != IAC {
            j += 1;
            continue;
        }
        match input.get(j + 1) {
            Some(&SE) => return j + 2,
            Some(_) => j += 2,
            None => return input.len(),
        }
    }
    input.len()
}

/// A command line as the server is to receive it: `text` (as from [`Line::text`]) with any
/// 0xFF byte escaped as `IAC IAC`, then CRLF. Forwarding this, not the bytes received, means
/// the server reads exactly the command the ALG checked: no telnet sequence the two might
/// read differently survives.
pub fn render_command(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    for &byte in text {
        out.push(byte);
        if byte == IAC {
            out.push(IAC);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Why the framer could not produce a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The line exceeded the limit; its bytes were dropped but for its head.
    #[error("line too long (limit {max} bytes)")]
    TooLong {
        /// The limit, terminator included.
        max: usize,
        /// The line's first `max - 2` bytes (never its LF): with a CR LF added, the line cut
        /// to the limit.
        head: Vec<u8>,
    },
}

/// Splits a byte stream into [`Line`]s, with a hard cap on line length.
#[derive(Debug, Clone)]
pub struct LineFramer {
    max_line: usize,
    /// Bytes of the incomplete last line; always fewer than `max_line`.
    partial: Vec<u8>,
    /// Complete lines and errors not yet taken by [`LineFramer::next_line`].
    ready: VecDeque<Result<Line, FrameError>>,
    /// Dropping the rest of an over-long line, up to and including its LF.
    discarding: bool,
    discarded: u64,
}

impl LineFramer {
    /// A framer that accepts lines of at most `max_line` bytes, terminator included.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            partial: Vec::new(),
            ready: VecDeque::new(),
            discarding: false,
            discarded: 0,
        }
    }

    /// Appends received bytes.
    ///
    /// Complete lines are queued for [`LineFramer::next_line`] (the caller holds them anyway,
    /// it pushed them); the incomplete line kept is bounded by `max_line`, and the bytes of an
    /// over-long line are dropped as they arrive.
    pub fn push(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let newline = rest.iter().position(|&b| b == b'\n');
            if self.discarding {
                let Some(at) = newline else {
                    self.discard(rest.len());
                    return;
                };
                let (_, tail) = rest.split_at(at + 1);
                self.discard(at + 1);
                self.discarding = false;
                rest = tail;
                continue;
            }
            let Some(at) = newline else {
                if self.partial.len() + rest.len() >= self.max_line {
                    // Even the LF still to come would not fit: report now, drop the rest later.
                    self.reject_partial(rest);
                    self.discarding = true;
                } else {
                    self.partial.extend_from_slice(rest);
                }
                return;
            };
            let (piece, tail) = rest.split_at(at + 1);
            if self.partial.len() + piece.len() > self.max_line {
                self.reject_partial(piece);
            } else {
                let mut raw = std::mem::take(&mut self.partial);
                raw.extend_from_slice(piece);
                self.ready.push_back(Ok(Line { raw }));
            }
            rest = tail;
        }
    }

    /// Drops the incomplete line plus `more` of it and queues one `TooLong` with its head.
    fn reject_partial(&mut self, more: &[u8]) {
        self.discard(self.partial.len() + more.len());
        let mut head = std::mem::take(&mut self.partial);
        let keep = self.max_line.saturating_sub(2);
        if head.len() < keep {
            let wanted = (keep - head.len()).min(more.len());
            head.extend_from_slice(more.get(..wanted).unwrap_or_default());
        }
        head.truncate(keep);
        self.ready.push_back(Err(FrameError::TooLong {
            max: self.max_line,
            head,
        }));
    }

    fn discard(&mut self, count: usize) {
        self.discarded = self
            .discarded
            .saturating_add(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// The next complete line (ending in LF), or `TooLong` exactly once per over-long line,
    /// or `None` when more bytes are needed.
    pub fn next_line(&mut self) -> Option<Result<Line, FrameError>> {
        self.ready.pop_front()
    }

    /// Bytes of an incomplete line held (lines already complete are not counted).
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Total bytes dropped so far as parts of over-long lines.
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded
    }

    /// At end of stream: takes the incomplete line held, if any, as a line with
    /// [`Terminator::Missing`]. It was never complete, so it must not be interpreted.
    pub fn take_partial(&mut self) -> Option<Line> {
        if self.partial.is_empty() {
            return None;
        }
        Some(Line {
            raw: std::mem::take(&mut self.partial),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_command_reads_back_as_the_same_text() {
        for text in [&b"RETR a\xffb"[..], b"STAT  x y ", b"", b"\xff\xff\xff"] {
            let rendered = render_command(text);
            assert!(rendered.ends_with(b"\r\n"));
            assert_eq!(Line::from_raw(rendered).text(), text);
        }
        // Telnet commands do not survive: only the text the ALG checked does.
        let received = Line::from_raw(b"\xff\xf4\xff\xf2ABOR\r\n".to_vec());
        assert_eq!(render_command(&received.text()), b"ABOR\r\n");
    }
    use proptest::prelude::*;

    fn drain(framer: &mut LineFramer) -> Vec<Result<Vec<u8>, FrameError>> {
        std::iter::from_fn(|| framer.next_line())
            .map(|r| r.map(Line::into_raw))
            .collect()
    }

    fn text(raw: &[u8]) -> Vec<u8> {
        Line::from_raw(raw.to_vec()).text()
    }

    #[test]
    fn crlf_line_is_framed_with_crlf_terminator() {
        let mut f = LineFramer::new(512);
        f.push(b"USER bob\r\n");
        let line = f.next_line().unwrap().unwrap();
        assert_eq!(line.raw(), b"USER bob\r\n");
        assert_eq!(line.terminator(), Terminator::CrLf);
        assert_eq!(line.text(), b"USER bob");
        assert!(f.next_line().is_none());
    }

    #[test]
    fn lf_without_cr_is_a_bare_lf_line() {
        let mut f = LineFramer::new(512);
        f.push(b"PASV\n");
        let line = f.next_line().unwrap().unwrap();
        assert_eq!(line.terminator(), Terminator::BareLf);
        assert_eq!(line.text(), b"PASV");
    }

    #[test]
    fn bare_cr_does_not_end_a_line() {
        let mut f = LineFramer::new(512);
        f.push(b"SITE x\rPORT 1,2,3,4,5,6\r\n");
        let line = f.next_line().unwrap().unwrap();
        assert_eq!(line.text(), b"SITE x\rPORT 1,2,3,4,5,6");
        assert!(f.next_line().is_none());
    }

    #[test]
    fn line_split_across_pushes_is_released_only_when_complete() {
        let mut f = LineFramer::new(512);
        f.push(b"PORT 10,0,0");
        assert!(f.next_line().is_none());
        assert_eq!(f.buffered(), 11);
        f.push(b",1,4,5\r");
        assert!(f.next_line().is_none());
        f.push(b"\n");
        assert_eq!(
            f.next_line().unwrap().unwrap().raw(),
            b"PORT 10,0,0,1,4,5\r\n"
        );
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn pipelined_lines_in_one_push_come_out_in_order() {
        let mut f = LineFramer::new(512);
        f.push(b"NOOP\r\nPORT 1,2,3,4,5,6\r\nPAS");
        assert_eq!(
            drain(&mut f),
            vec![
                Ok(b"NOOP\r\n".to_vec()),
                Ok(b"PORT 1,2,3,4,5,6\r\n".to_vec())
            ]
        );
        assert_eq!(f.buffered(), 3);
    }

    #[test]
    fn line_of_exactly_max_bytes_is_accepted() {
        let mut f = LineFramer::new(6);
        f.push(b"NOOP\r\n");
        assert_eq!(drain(&mut f), vec![Ok(b"NOOP\r\n".to_vec())]);
    }

    #[test]
    fn line_one_byte_over_max_is_too_long() {
        let mut f = LineFramer::new(5);
        f.push(b"NOOP\r\nPASV\n");
        assert_eq!(
            drain(&mut f),
            vec![
                Err(FrameError::TooLong {
                    max: 5,
                    head: b"NOO".to_vec()
                }),
                Ok(b"PASV\n".to_vec())
            ]
        );
        assert_eq!(f.discarded_bytes(), 6);
    }

    #[test]
    fn over_long_line_is_reported_once_and_its_tail_discarded() {
        let mut f = LineFramer::new(8);
        f.push(b"AAAAAAAAAA");
        assert_eq!(
            drain(&mut f),
            vec![Err(FrameError::TooLong {
                max: 8,
                head: b"AAAAAA".to_vec()
            })]
        );
        assert_eq!(f.buffered(), 0);
        f.push(b"BBBBBBBBBBBBBBBBBBBB");
        f.push(b"PORT 1,2,3,4,5,6");
        assert!(f.next_line().is_none());
        assert_eq!(f.buffered(), 0);
        f.push(b"\r\nNOOP\r\n");
        assert_eq!(drain(&mut f), vec![Ok(b"NOOP\r\n".to_vec())]);
        assert_eq!(f.discarded_bytes(), 10 + 20 + 16 + 2);
    }

    #[test]
    fn incomplete_line_reaching_max_is_rejected_before_its_lf() {
        let mut f = LineFramer::new(4);
        f.push(b"ABCD");
        assert_eq!(
            drain(&mut f),
            vec![Err(FrameError::TooLong {
                max: 4,
                head: b"AB".to_vec()
            })]
        );
        f.push(b"\nOK\n");
        assert_eq!(drain(&mut f), vec![Ok(b"OK\n".to_vec())]);
    }

    #[test]
    fn the_head_of_an_over_long_line_spans_reads_and_leaves_room_for_crlf() {
        let mut f = LineFramer::new(10);
        f.push(b"257 \"/ab");
        f.push(b"cdefghij\"\r\n226 ok\r\n");
        assert_eq!(
            drain(&mut f),
            vec![
                Err(FrameError::TooLong {
                    max: 10,
                    head: b"257 \"/ab".to_vec()
                }),
                Ok(b"226 ok\r\n".to_vec())
            ]
        );
    }

    #[test]
    fn buffered_bytes_stay_below_max_line_under_a_flood() {
        let mut f = LineFramer::new(64);
        for _ in 0..10_000 {
            f.push(&[b'x'; 1000]);
            assert!(f.buffered() < 64);
        }
        assert_eq!(drain(&mut f).len(), 1);
    }

    #[test]
    fn zero_max_line_rejects_every_line() {
        let mut f = LineFramer::new(0);
        f.push(b"\n\n");
        assert_eq!(
            drain(&mut f),
            vec![
                Err(FrameError::TooLong {
                    max: 0,
                    head: Vec::new()
                }),
                Err(FrameError::TooLong {
                    max: 0,
                    head: Vec::new()
                })
            ]
        );
    }

    #[test]
    fn iac_before_lf_does_not_prevent_the_line_ending() {
        let mut f = LineFramer::new(64);
        f.push(b"NOOP\xff\nPASV\r\n");
        let first = f.next_line().unwrap().unwrap();
        assert_eq!(first.raw(), b"NOOP\xff\n");
        assert_eq!(first.text(), b"NOOP");
        assert_eq!(f.next_line().unwrap().unwrap().text(), b"PASV");
    }

    #[test]
    fn take_partial_returns_unterminated_tail_at_end_of_stream() {
        let mut f = LineFramer::new(64);
        f.push(b"QUIT\r\nNOO");
        let _ = f.next_line();
        let tail = f.take_partial().unwrap();
        assert_eq!(tail.raw(), b"NOO");
        assert_eq!(tail.terminator(), Terminator::Missing);
        assert!(f.take_partial().is_none());
    }

    #[test]
    fn from_raw_without_lf_has_missing_terminator() {
        let line = Line::from_raw(b"PASV\r".to_vec());
        assert_eq!(line.terminator(), Terminator::Missing);
        assert_eq!(line.content(), b"PASV\r");
        assert_eq!(line.text(), b"PASV\r");
    }

    #[test]
    fn from_raw_keeps_inner_lf_as_content() {
        let line = Line::from_raw(b"A\nB\r\n".to_vec());
        assert_eq!(line.terminator(), Terminator::CrLf);
        assert_eq!(line.text(), b"A\nB");
    }

    #[test]
    fn iac_iac_becomes_one_ff_byte() {
        assert_eq!(text(b"STOR a\xff\xffb\r\n"), b"STOR a\xffb");
    }

    #[test]
    fn iac_option_negotiation_is_removed_with_its_option_byte() {
        for verb in [WILL, 252, 253, DONT] {
            assert_eq!(
                text(&[b'P', IAC, verb, 1, b'A', b'S', b'V', b'\n']),
                b"PASV"
            );
        }
    }

    #[test]
    fn iac_subnegotiation_is_removed_up_to_iac_se() {
        assert_eq!(
            text(b"PO\xff\xfa\x18abc\xff\xff\xff\xf0RT 1,2,3,4,5,6\r\n"),
            b"PORT 1,2,3,4,5,6"
        );
    }

    #[test]
    fn unclosed_subnegotiation_runs_to_end_of_line() {
        assert_eq!(text(b"NOOP\xff\xfaPORT 1,2,3,4,5,6\r\n"), b"NOOP");
    }

    #[test]
    fn other_iac_commands_are_removed_as_two_bytes() {
        // IAC IP, IAC DM: what a client sends before ABOR (RFC 959 4.1.3).
        assert_eq!(text(b"\xff\xf4\xff\xf2ABOR\r\n"), b"ABOR");
        assert_eq!(text(b"NO\xff\xf1OP\r\n"), b"NOOP");
    }

    #[test]
    fn lone_trailing_iac_is_removed() {
        assert_eq!(text(b"NOOP\xff"), b"NOOP");
        assert_eq!(text(b"NOOP\xff\xfb"), b"NOOP");
    }

    #[test]
    fn nul_bytes_are_kept_in_text() {
        assert_eq!(text(b"PO\0RT\r\n"), b"PO\0RT");
    }

    fn split_points(len: usize) -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(0..=len, 0..8)
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_lines(
            (data, cuts) in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(0xffu8), any::<u8>()], 0..200)
                .prop_flat_map(|d| { let n = d.len(); (Just(d), split_points(n)) }),
            max in 1usize..40,
        ) {
            let mut whole = LineFramer::new(max);
            whole.push(&data);
            let expected = drain(&mut whole);

            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut chunked = LineFramer::new(max);
            let mut got = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain(std::iter::once(data.len())) {
                chunked.push(&data[start..cut]);
                got.extend(drain(&mut chunked));
                start = cut;
            }
            prop_assert_eq!(&got, &expected);
            prop_assert_eq!(chunked.buffered(), whole.buffered());
            prop_assert!(chunked.buffered() < max);

            let line_bytes: usize = got.iter().flatten().map(Vec::len).sum();
            let total = line_bytes as u64 + chunked.discarded_bytes() + chunked.buffered() as u64;
            prop_assert_eq!(total, data.len() as u64);
        }

        #[test]
        fn text_without_iac_is_content(content in proptest::collection::vec(0u8..0xff, 0..100)) {
            let mut raw = content.clone();
            raw.extend_from_slice(b"\r\n");
            prop_assert_eq!(Line::from_raw(raw).text(), content);
        }
    }
}
