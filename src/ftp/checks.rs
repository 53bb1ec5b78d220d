//! Invariant checks over arbitrary input, shared by the cargo-fuzz targets in `fuzz/` and by a
//! stable-toolchain smoke test, so both exercise exactly the same entry points.
//!
//! Each function accepts any bytes and drives the public API of [`crate::ftp`]. The API itself
//! never panics; these functions panic (via `assert!`) only when an invariant is broken, which
//! is a bug for the fuzzer to report.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::{
    Command, Line, LineFramer, Reply, ReplyAssembler, ReplyEvent, Terminator, command_verb,
    parse_227, parse_229, parse_command, render_eprt, render_port, rewrite_227, rewrite_229,
};

/// Framing: any chunking of the input yields the same lines as one push; lines, discarded
/// bytes and the held partial line together account for every input byte; memory stays
/// below the limit. The first byte picks the line limit, the second seeds the chunk sizes.
pub fn check_framer(data: &[u8]) {
    let (max_line, seed, stream) = match data {
        [a, b, rest @ ..] => (usize::from(*a % 64) + 1, *b, rest),
        _ => return,
    };
    let mut whole = LineFramer::new(max_line);
    whole.push(stream);
    let expected: Vec<_> = std::iter::from_fn(|| whole.next_line()).collect();

    let mut chunked = LineFramer::new(max_line);
    let mut got = Vec::new();
    let mut rest = stream;
    let mut step = usize::from(seed);
    while !rest.is_empty() {
        step = (step * 7 + 3) % 17;
        let (chunk, tail) = rest.split_at(step.min(rest.len()));
        chunked.push(chunk);
        assert!(
            chunked.buffered() < max_line,
            "partial line exceeds the limit"
        );
        got.extend(std::iter::from_fn(|| chunked.next_line()));
        rest = tail;
    }
    assert_eq!(got, expected, "chunking changed the framing");

    let mut line_bytes = 0usize;
    for line in got.iter().flatten() {
        assert!(line.raw().ends_with(b"\n"), "a framed line lacks its LF");
        assert!(line.len() <= max_line, "a framed line exceeds the limit");
        assert_ne!(line.terminator(), Terminator::Missing);
        let _ = line.text();
        let _ = parse_command(&line.text());
        line_bytes += line.len();
    }
    let accounted = line_bytes as u64 + chunked.discarded_bytes() + chunked.buffered() as u64;
    assert_eq!(
        accounted,
        stream.len() as u64,
        "input bytes unaccounted for"
    );
}

/// Commands: parsing never panics, the verb is a prefix, and a parsed PORT/EPRT renders to a
/// command that parses back to the same address.
pub fn check_command(data: &[u8]) {
    for text in [data.to_vec(), Line::from_raw(data.to_vec()).text()] {
        assert!(text.starts_with(command_verb(&text)));
        let rendered = match parse_command(&text) {
            Ok(Command::Port(addr)) => render_port(addr),
            Ok(Command::Eprt(addr)) => render_eprt(addr),
            _ => continue,
        };
        let line = Line::from_raw(rendered);
        assert_eq!(line.terminator(), Terminator::CrLf);
        assert_eq!(
            parse_command(&line.text()),
            parse_command(&text),
            "render then parse changed the address"
        );
    }
}

/// Replies: the assembler and the 227/229 codecs never panic; rewriting to the parsed
/// address is the identity, and rewriting to another address parses back to that address.
/// The first byte picks the buffer limit and the code given to the direct-parse path.
pub fn check_reply(data: &[u8]) {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let mut framer = LineFramer::new(512);
    framer.push(stream);
    let mut assembler = ReplyAssembler::new(usize::from(selector) * 4);
    while let Some(framed) = framer.next_line() {
        let Ok(line) = framed else { continue };
        if let Ok(ReplyEvent::Complete(reply)) = assembler.push_line(line) {
            assert!(matches!(reply.code(), Some(227 | 229)));
            check_passive_reply(&reply);
        }
    }

    // The same bytes read directly as one reply, with a 227 or 229 code put in front.
    let mut raw = if selector % 2 == 0 {
        b"227 ".to_vec()
    } else {
        b"229 ".to_vec()
    };
    raw.extend_from_slice(stream);
    check_passive_reply(&reply_from_bytes(&raw));
}

fn reply_from_bytes(raw: &[u8]) -> Reply {
    Reply::from_lines(
        raw.split_inclusive(|&b| b == b'\n')
            .map(|l| Line::from_raw(l.to_vec()))
            .collect(),
    )
}

fn check_passive_reply(reply: &Reply) {
    let other = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 50_001);
    if let Ok(addr) = parse_227(reply) {
        assert_eq!(
            rewrite_227(reply, addr),
            reply.raw(),
            "227 identity rewrite"
        );
        let rewritten = reply_from_bytes(&rewrite_227(reply, other));
        assert_eq!(
            parse_227(&rewritten),
            Ok(other),
            "227 rewrite not re-parsed"
        );
    } else {
        let _ = rewrite_227(reply, other);
    }
    if let Ok(port) = parse_229(reply) {
        assert_eq!(
            rewrite_229(reply, port),
            reply.raw(),
            "229 identity rewrite"
        );
        let rewritten = reply_from_bytes(&rewrite_229(reply, 50_001));
        assert_eq!(
            parse_229(&rewritten),
            Ok(50_001),
            "229 rewrite not re-parsed"
        );
    } else {
        let _ = rewrite_229(reply, 50_001);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random inputs (64-bit LCG, Knuth's MMIX constants), biased towards
    /// the bytes and words these parsers care about, so no fuzzer is needed to run the checks.
    struct Inputs(u64);

    impl Inputs {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }

        fn number(&mut self) -> String {
            match self.next() % 16 {
                0 => "256".to_owned(),
                1 => "0".to_owned(),
                2 => format!("00{}", self.next() % 256),
                _ => (self.next() % 256).to_string(),
            }
        }

        /// A well-formed command or reply, then mutated a little.
        fn structured(&mut self) -> Vec<u8> {
            let n: Vec<String> = (0..6).map(|_| self.number()).collect();
            let port = self.next() % 70_000;
            let mut out = match self.next() % 6 {
                0 => format!("PORT {}", n.join(",")),
                1 => format!("EPRT |1|{}.{}.{}.{}|{port}|", n[0], n[1], n[2], n[3]),
                2 => format!("EPRT |2|2001:db8::{:x}|{port}|", self.next() % 65536),
                3 => format!("227 Entering Passive Mode ({}).\r\n", n.join(",")),
                4 => format!("227-x\r\n 227 {}\r\n227 ok\r\n", n.join(",")),
                _ => format!("229 Entering Extended Passive Mode (|||{port}|)\r\n"),
            }
            .into_bytes();
            for _ in 0..self.next() % 3 {
                let at = (self.next() as usize) % (out.len() + 1);
                let byte = (self.next() & 0xff) as u8;
                if self.next().is_multiple_of(2) && at < out.len() {
                    out[at] = byte;
                } else {
                    out.insert(at, byte);
                }
            }
            out
        }

        fn bytes(&mut self) -> Vec<u8> {
            if self.next().is_multiple_of(2) {
                return self.structured();
            }
            const WORDS: &[&[u8]] = &[
                b"PORT ",
                b"EPRT ",
                b"EPSV ",
                b"PASV",
                b"AUTH ",
                b"227 ",
                b"227-",
                b"229 ",
                b"229-",
                b"230-",
                b"230 ",
                b"(|||",
                b"|)",
                b"|1|",
                b"|2|",
                b"::",
                b"%",
                b"ALL",
                b",",
                b".",
                b"\r\n",
                b"\n",
                b"\r",
                b"\xff",
                b"\xff\xff",
                b"\xff\xfa",
                b"\xff\xf0",
                b"\xff\xfb",
                b" ",
                b"\0",
                b"255",
                b"256",
                b"0",
                b"65535",
                b"99999999999",
            ];
            let len = self.next() % 48;
            let mut out = Vec::new();
            for _ in 0..len {
                match self.next() % 4 {
                    0 => out.push(b'0' + (self.next() % 10) as u8),
                    1 => out.push((self.next() & 0xff) as u8),
                    _ => {
                        let word = WORDS[(self.next() as usize) % WORDS.len()];
                        out.extend_from_slice(word);
                    }
                }
            }
            out
        }
    }

    #[test]
    fn smoke_framer_invariants_hold_for_pseudo_random_input() {
        let mut inputs = Inputs(1);
        for _ in 0..3000 {
            check_framer(&inputs.bytes());
        }
    }

    #[test]
    fn smoke_command_invariants_hold_for_pseudo_random_input() {
        let mut inputs = Inputs(2);
        for _ in 0..3000 {
            check_command(&inputs.bytes());
        }
        check_command(b"PORT 10,0,0,1,4,1");
        check_command(b"EPRT |2|::ffff:1.2.3.4|21|");
    }

    /// check_reply's input: a selector byte, then a reply (whole, so structured ones parse).
    fn reply_input(inputs: &mut Inputs) -> Vec<u8> {
        let mut data = vec![(inputs.next() & 0xff) as u8];
        data.extend(inputs.bytes());
        data
    }

    #[test]
    fn smoke_reply_invariants_hold_for_pseudo_random_input() {
        let mut inputs = Inputs(3);
        for _ in 0..3000 {
            check_reply(&reply_input(&mut inputs));
        }
        check_reply(b"\x00227-a\r\n x (1,2,3,4,5,6)\r\n227 (1,2,3,4,5,6)\r\n");
        check_reply(b"\x01(|||21|)\r\n");
    }

    #[test]
    fn smoke_inputs_reach_the_interesting_cases() {
        let mut inputs = Inputs(2);
        let (mut ports, mut eprts) = (0, 0);
        for _ in 0..3000 {
            match parse_command(&inputs.bytes()) {
                Ok(Command::Port(_)) => ports += 1,
                Ok(Command::Eprt(_)) => eprts += 1,
                _ => {}
            }
        }
        // Not a proof of coverage, only a tripwire for a generator that stopped producing
        // anything parseable.
        assert!(ports > 50 && eprts > 50, "ports {ports} eprts {eprts}");
        // The reply smoke test's inputs (seed 3): complete 227/229 replies that parse, as
        // check_reply's assembler path sees them.
        let mut inputs = Inputs(3);
        let (mut pasv, mut epsv) = (0, 0);
        for _ in 0..3000 {
            let data = reply_input(&mut inputs);
            let mut framer = LineFramer::new(512);
            framer.push(&data[1..]);
            let mut assembler = ReplyAssembler::new(4096);
            while let Some(Ok(line)) = framer.next_line() {
                if let Ok(ReplyEvent::Complete(reply)) = assembler.push_line(line) {
                    pasv += usize::from(parse_227(&reply).is_ok());
                    epsv += usize::from(parse_229(&reply).is_ok());
                }
            }
        }
        assert!(pasv > 50 && epsv > 50, "227 {pasv} 229 {epsv}");
    }
}
