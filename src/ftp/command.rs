//! Client commands that carry or request a data-channel address.
//!
//! The ALG acts on PORT/EPRT (it opens a path *to the client*) and PASV/EPSV (it expects an
//! address in the reply), so these parsers are strict: anything not exactly in the RFC 959 /
//! RFC 2428 shape is an error the session answers with 501 instead of guessing. Only the verb
//! position counts: `NOOP PORT 1,2,3,4,5,6` or a PORT after a bare CR is [`Command::Other`].
//! Errors never echo the client's bytes, so their text is safe to put into a reply.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use super::number::{NumberError, parse_decimal};

/// The argument of EPSV (RFC 2428 section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EpsvArg {
    /// `EPSV` without argument.
    None,
    /// `EPSV ALL`: from now on the client uses EPSV only.
    All,
    /// `EPSV 1` (IPv4) or `EPSV 2` (IPv6).
    Protocol(u8),
}

/// A parsed client command, as far as the ALG cares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Command {
    /// `PORT h1,h2,h3,h4,p1,p2` (RFC 959).
    Port(SocketAddrV4),
    /// `EPRT |af|addr|port|` (RFC 2428).
    Eprt(SocketAddr),
    /// `PASV` (any argument is ignored, as servers do).
    Pasv,
    /// `EPSV`, `EPSV ALL`, `EPSV 1`, `EPSV 2`.
    Epsv(EpsvArg),
    /// `LPRT` (RFC 1639), not parsed.
    Lprt,
    /// `LPSV` (RFC 1639), not parsed.
    Lpsv,
    /// `AUTH` with its argument (trailing spaces removed); TLS hides the control channel.
    Auth(Vec<u8>),
    /// Any other command, or a line whose first word is not a plain ASCII-letter verb.
    Other,
}

/// Why a PORT, EPRT or EPSV command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The command needs an argument and had none.
    #[error("{verb} requires an argument")]
    MissingArgument {
        /// The verb, upper case.
        verb: &'static str,
    },
    /// PORT did not have six comma-separated fields.
    #[error("PORT needs exactly six comma-separated numbers h1,h2,h3,h4,p1,p2")]
    PortFieldCount,
    /// A PORT field was empty or held something other than decimal digits.
    #[error("PORT field is not a decimal number")]
    PortNotNumber,
    /// A PORT field was above 255 (including digit strings too long for any integer).
    #[error("PORT number above 255")]
    PortOctetTooLarge,
    /// PORT named port 0.
    #[error("PORT names port 0")]
    PortZero,
    /// The EPRT delimiter was not a printable ASCII character (33..=126).
    #[error("EPRT delimiter must be a printable ASCII character")]
    EprtDelimiter,
    /// EPRT was not `<d>af<d>addr<d>port<d>`.
    #[error("EPRT must look like |af|address|port|")]
    EprtFormat,
    /// The EPRT address family was neither 1 nor 2.
    #[error("EPRT address family must be 1 (IPv4) or 2 (IPv6)")]
    EprtFamily,
    /// The EPRT IPv4 address was not a strict dotted quad.
    #[error("EPRT IPv4 address is malformed")]
    EprtIpv4,
    /// The EPRT IPv6 address did not parse.
    #[error("EPRT IPv6 address is malformed")]
    EprtIpv6,
    /// The EPRT IPv6 address carried a `%zone` suffix.
    #[error("EPRT IPv6 address must not carry a zone id")]
    EprtZoneId,
    /// The EPRT port was not a decimal number from 1 to 65535.
    #[error("EPRT port must be a number from 1 to 65535")]
    EprtPort,
    /// EPSV had an argument other than ALL, 1 or 2.
    #[error("EPSV argument must be ALL, 1 or 2")]
    EpsvArgument,
}

/// The first word of a command line: the bytes before the first space (may be empty).
///
/// Only the space character separates words, as in vsftpd; a tab is part of the word.
pub fn command_verb(text: &[u8]) -> &[u8] {
    split_verb(text).0
}

/// Whether the line is one every server reads the same way: a verb of an ASCII letter then
/// letters or digits (`XSHA256`, `MD5`), followed by a space or nothing, and no CR before
/// its end (a server that ends lines at a bare CR would read a second command behind it).
/// A tab (or any other byte) after the verb, a leading space, or an empty line is not.
pub fn is_plain_command(text: &[u8]) -> bool {
    let verb = split_verb(text).0;
    verb.first().is_some_and(u8::is_ascii_alphabetic)
        && verb.iter().all(u8::is_ascii_alphanumeric)
        && !text.contains(&b'\r')
}

/// Splits at the first space; the argument has leading spaces removed.
fn split_verb(text: &[u8]) -> (&[u8], &[u8]) {
    match text.iter().position(|&b| b == b' ') {
        Some(at) => {
            let (verb, rest) = text.split_at(at);
            (verb, trim_leading_spaces(rest))
        }
        None => (text, &[]),
    }
}

fn trim_leading_spaces(mut bytes: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}

fn trim_trailing_spaces(mut bytes: &[u8]) -> &[u8] {
    while let [rest @ .., b' '] = bytes {
        bytes = rest;
    }
    bytes
}

/// Parses a command line's text (as from [`super::Line::text`]).
///
/// The verb is case-insensitive and must consist of ASCII letters only, else the line is
/// [`Command::Other`]; verb and argument are separated by one or more spaces, trailing spaces
/// are ignored. Errors come only from PORT, EPRT and EPSV arguments.
pub fn parse_command(text: &[u8]) -> Result<Command, CommandError> {
    let (verb, arg) = split_verb(text);
    if verb.is_empty() || !verb.iter().all(u8::is_ascii_alphabetic) {
        return Ok(Command::Other);
    }
    let arg = trim_trailing_spaces(arg);
    let is = |name: &str| verb.eq_ignore_ascii_case(name.as_bytes());
    if is("PORT") {
        parse_port(arg).map(Command::Port)
    } else if is("EPRT") {
        parse_eprt(arg).map(Command::Eprt)
    } else if is("PASV") {
        Ok(Command::Pasv)
    } else if is("EPSV") {
        parse_epsv(arg).map(Command::Epsv)
    } else if is("LPRT") {
        Ok(Command::Lprt)
    } else if is("LPSV") {
        Ok(Command::Lpsv)
    } else if is("AUTH") {
        Ok(Command::Auth(arg.to_vec()))
    } else {
        Ok(Command::Other)
    }
}

/// `h1,h2,h3,h4,p1,p2`: six decimal fields 0..=255 (leading zeros allowed), port not 0.
fn parse_port(arg: &[u8]) -> Result<SocketAddrV4, CommandError> {
    if arg.is_empty() {
        return Err(CommandError::MissingArgument { verb: "PORT" });
    }
    let mut numbers = [0u8; 6];
    let mut fields = arg.split(|&b| b == b',');
    for slot in &mut numbers {
        let field = fields.next().ok_or(CommandError::PortFieldCount)?;
        let value = parse_decimal(field, 255).map_err(|e| match e {
            NumberError::TooLarge => CommandError::PortOctetTooLarge,
            NumberError::Empty | NumberError::NotDigit => CommandError::PortNotNumber,
        })?;
        *slot = u8::try_from(value).map_err(|_| CommandError::PortOctetTooLarge)?;
    }
    if fields.next().is_some() {
        return Err(CommandError::PortFieldCount);
    }
    let [h1, h2, h3, h4, p1, p2] = numbers;
    let port = u16::from_be_bytes([p1, p2]);
    if port == 0 {
        return Err(CommandError::PortZero);
    }
    Ok(SocketAddrV4::new(Ipv4Addr::new(h1, h2, h3, h4), port))
}

/// `<d>af<d>addr<d>port<d>` with `d` in 33..=126 (RFC 2428 section 2).
fn parse_eprt(arg: &[u8]) -> Result<SocketAddr, CommandError> {
    let Some(&delimiter) = arg.first() else {
        return Err(CommandError::MissingArgument { verb: "EPRT" });
    };
    if !(33..=126).contains(&delimiter) {
        return Err(CommandError::EprtDelimiter);
    }
    let mut parts = arg.split(|&b| b == delimiter);
    let (Some(b""), Some(family), Some(address), Some(port), Some(b""), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(CommandError::EprtFormat);
    };
    let ip = match family {
        b"1" => parse_strict_ipv4(address)
            .map(IpAddr::V4)
            .ok_or(CommandError::EprtIpv4)?,
        b"2" => {
            if address.contains(&b'%') {
                return Err(CommandError::EprtZoneId);
            }
            std::str::from_utf8(address)
                .ok()
                .and_then(|s| s.parse::<Ipv6Addr>().ok())
                .map(IpAddr::V6)
                .ok_or(CommandError::EprtIpv6)?
        }
        _ => return Err(CommandError::EprtFamily),
    };
    let port = parse_decimal(port, u32::from(u16::MAX))
        .ok()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or(CommandError::EprtPort)?;
    Ok(SocketAddr::new(ip, port))
}

/// A dotted quad as std parses it: four decimal octets, no signs, no leading zeros (which
/// some `inet_aton` would read as octal, so server and ALG could disagree on the host).
fn parse_strict_ipv4(text: &[u8]) -> Option<Ipv4Addr> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn parse_epsv(arg: &[u8]) -> Result<EpsvArg, CommandError> {
    match arg {
        b"" => Ok(EpsvArg::None),
        b"1" => Ok(EpsvArg::Protocol(1)),
        b"2" => Ok(EpsvArg::Protocol(2)),
        _ if arg.eq_ignore_ascii_case(b"ALL") => Ok(EpsvArg::All),
        _ => Err(CommandError::EpsvArgument),
    }
}

/// `PORT h1,h2,h3,h4,p1,p2\r\n`.
pub fn render_port(addr: SocketAddrV4) -> Vec<u8> {
    let [h1, h2, h3, h4] = addr.ip().octets();
    let [p1, p2] = addr.port().to_be_bytes();
    format!("PORT {h1},{h2},{h3},{h4},{p1},{p2}\r\n").into_bytes()
}

/// `EPRT |1|a.b.c.d|port|\r\n` or `EPRT |2|ipv6|port|\r\n` (an IPv6 scope id is not sent).
pub fn render_eprt(addr: SocketAddr) -> Vec<u8> {
    let (family, ip) = match addr.ip() {
        IpAddr::V4(v4) => (1, v4.to_string()),
        IpAddr::V6(v6) => (2, v6.to_string()),
    };
    format!("EPRT |{family}|{ip}|{}|\r\n", addr.port()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_command_is_a_verb_of_letters_then_a_space_or_nothing_and_no_cr() {
        for good in [
            &b"NOOP"[..],
            b"dele x",
            b"RETR  a\tb",
            b"PORT 1,2,3,4,5,6",
            b"XSHA256 f",
            b"MD5 f",
        ] {
            assert!(is_plain_command(good), "{good:?}");
        }
        for bad in [
            &b""[..],
            b" DELE x",
            b"DELE\tx",
            b"DELE\x0bx",
            b"X-1 a",
            b"1X a",
            b"\tNOOP",
            b"USER x\rPORT 1,2,3,4,5,6",
        ] {
            assert!(!is_plain_command(bad), "{bad:?}");
        }
    }

    use proptest::prelude::*;

    fn port(text: &str) -> Result<Command, CommandError> {
        parse_command(text.as_bytes())
    }

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
    }

    #[test]
    fn port_with_six_numbers_is_parsed() {
        assert_eq!(
            port("PORT 192,168,1,2,4,1"),
            Ok(Command::Port(v4(192, 168, 1, 2, 1025)))
        );
    }

    #[test]
    fn verb_is_case_insensitive() {
        assert_eq!(
            port("pOrT 10,0,0,1,0,21"),
            Ok(Command::Port(v4(10, 0, 0, 1, 21)))
        );
        assert_eq!(port("pasv"), Ok(Command::Pasv));
    }

    #[test]
    fn several_spaces_and_trailing_spaces_are_tolerated() {
        assert_eq!(
            port("PORT   10,0,0,1,0,21  "),
            Ok(Command::Port(v4(10, 0, 0, 1, 21)))
        );
        assert_eq!(port("EPSV  ALL "), Ok(Command::Epsv(EpsvArg::All)));
    }

    #[test]
    fn port_with_leading_zeros_is_decimal() {
        assert_eq!(
            port("PORT 010,000,0,001,0004,01"),
            Ok(Command::Port(v4(10, 0, 0, 1, 1025)))
        );
    }

    #[test]
    fn port_with_octet_above_255_is_rejected() {
        assert_eq!(
            port("PORT 10,0,0,256,4,1"),
            Err(CommandError::PortOctetTooLarge)
        );
        assert_eq!(
            port("PORT 10,0,0,1,4,256"),
            Err(CommandError::PortOctetTooLarge)
        );
    }

    #[test]
    fn port_with_overflowing_digits_is_rejected_without_panic() {
        assert_eq!(
            port("PORT 99999999999999999999,0,0,1,4,1"),
            Err(CommandError::PortOctetTooLarge)
        );
        assert_eq!(
            port(&format!("PORT 1,2,3,4,5,{}", "9".repeat(5000))),
            Err(CommandError::PortOctetTooLarge)
        );
    }

    #[test]
    fn port_zero_is_rejected() {
        assert_eq!(port("PORT 10,0,0,1,0,0"), Err(CommandError::PortZero));
    }

    #[test]
    fn port_with_sign_space_or_empty_field_is_rejected() {
        for bad in [
            "PORT +10,0,0,1,4,1",
            "PORT -1,0,0,1,4,1",
            "PORT 10,,0,1,4,1",
            "PORT 10, 0,0,1,4,1",
            "PORT 0x10,0,0,1,4,1",
            "PORT 10,0,0,1,4,1\r",
            "PORT 10,0,0,1,4,1\t",
        ] {
            assert_eq!(port(bad), Err(CommandError::PortNotNumber), "{bad:?}");
        }
    }

    #[test]
    fn port_with_wrong_field_count_is_rejected() {
        assert_eq!(port("PORT 10,0,0,1,4"), Err(CommandError::PortFieldCount));
        assert_eq!(
            port("PORT 10,0,0,1,4,1,7"),
            Err(CommandError::PortFieldCount)
        );
        assert_eq!(
            port("PORT 10,0,0,1,4,1,"),
            Err(CommandError::PortFieldCount)
        );
    }

    #[test]
    fn port_without_argument_is_rejected() {
        assert_eq!(
            port("PORT"),
            Err(CommandError::MissingArgument { verb: "PORT" })
        );
        assert_eq!(
            port("PORT   "),
            Err(CommandError::MissingArgument { verb: "PORT" })
        );
    }

    #[test]
    fn port_inside_another_commands_argument_is_other() {
        assert_eq!(port("NOOP PORT 1,2,3,4,5,6"), Ok(Command::Other));
        assert_eq!(port("SITE x\rPORT 1,2,3,4,5,6"), Ok(Command::Other));
        assert_eq!(port(" PORT 1,2,3,4,5,6"), Ok(Command::Other));
    }

    #[test]
    fn verb_with_nul_or_non_letters_is_other() {
        assert_eq!(port("PO\0RT 1,2,3,4,5,6"), Ok(Command::Other));
        assert_eq!(port("PORT\t1,2,3,4,5,6"), Ok(Command::Other));
        assert_eq!(port("PORT\x001,2,3,4,5,6"), Ok(Command::Other));
        assert_eq!(
            parse_command(b"P\xc3\x96RT 1,2,3,4,5,6"),
            Ok(Command::Other)
        );
        assert_eq!(port(""), Ok(Command::Other));
    }

    #[test]
    fn command_verb_is_the_first_space_separated_word() {
        assert_eq!(command_verb(b"RETR a b"), b"RETR");
        assert_eq!(command_verb(b"NOOP"), b"NOOP");
        assert_eq!(command_verb(b" NOOP"), b"");
        assert_eq!(command_verb(b""), b"");
    }

    #[test]
    fn eprt_ipv4_is_parsed() {
        assert_eq!(
            port("EPRT |1|132.235.1.2|6275|"),
            Ok(Command::Eprt("132.235.1.2:6275".parse().unwrap()))
        );
    }

    #[test]
    fn eprt_ipv6_is_parsed() {
        assert_eq!(
            port("EPRT |2|1080::8:800:200C:417A|5282|"),
            Ok(Command::Eprt(
                "[1080::8:800:200c:417a]:5282".parse().unwrap()
            ))
        );
    }

    #[test]
    fn eprt_accepts_any_printable_delimiter() {
        assert_eq!(
            port("EPRT !1!10.0.0.1!21!"),
            Ok(Command::Eprt("10.0.0.1:21".parse().unwrap()))
        );
    }

    #[test]
    fn eprt_with_unprintable_delimiter_is_rejected() {
        assert_eq!(
            port("EPRT \x7f1\x7f10.0.0.1\x7f21\x7f"),
            Err(CommandError::EprtDelimiter)
        );
        assert_eq!(
            parse_command(b"EPRT \xff1\xff10.0.0.1\xff21\xff"),
            Err(CommandError::EprtDelimiter)
        );
    }

    #[test]
    fn eprt_with_unknown_family_is_rejected() {
        assert_eq!(port("EPRT |3|10.0.0.1|21|"), Err(CommandError::EprtFamily));
        assert_eq!(port("EPRT ||10.0.0.1|21|"), Err(CommandError::EprtFamily));
    }

    #[test]
    fn eprt_with_wrong_shape_is_rejected() {
        for bad in [
            "EPRT |1|10.0.0.1|21",
            "EPRT |1|10.0.0.1|21|x",
            "EPRT |1|10.0.0.1|21||",
            "EPRT 1|10.0.0.1|21|",
            "EPRT |1|10.0.0.1|",
        ] {
            assert_eq!(port(bad), Err(CommandError::EprtFormat), "{bad:?}");
        }
    }

    #[test]
    fn eprt_ipv4_must_be_a_strict_dotted_quad() {
        for bad in [
            "EPRT |1|+10.0.0.1|21|",
            "EPRT |1|010.0.0.1|21|",
            "EPRT |1|10.0.1|21|",
            "EPRT |1|10.0.0.256|21|",
            "EPRT |1|::1|21|",
            "EPRT |1| 10.0.0.1|21|",
        ] {
            assert_eq!(port(bad), Err(CommandError::EprtIpv4), "{bad:?}");
        }
    }

    #[test]
    fn eprt_ipv6_with_zone_id_is_rejected() {
        assert_eq!(
            port("EPRT |2|fe80::1%eth0|21|"),
            Err(CommandError::EprtZoneId)
        );
    }

    #[test]
    fn eprt_with_bad_ipv6_text_is_rejected() {
        assert_eq!(port("EPRT |2|10.0.0.1|21|"), Err(CommandError::EprtIpv6));
        assert_eq!(port("EPRT |2|1::2::3|21|"), Err(CommandError::EprtIpv6));
    }

    #[test]
    fn eprt_port_out_of_range_is_rejected() {
        for bad in [
            "EPRT |1|10.0.0.1|0|",
            "EPRT |1|10.0.0.1|65536|",
            "EPRT |1|10.0.0.1||",
            "EPRT |1|10.0.0.1|+21|",
            "EPRT |1|10.0.0.1|99999999999999999999999|",
        ] {
            assert_eq!(port(bad), Err(CommandError::EprtPort), "{bad:?}");
        }
    }

    #[test]
    fn epsv_arguments_are_parsed() {
        assert_eq!(port("EPSV"), Ok(Command::Epsv(EpsvArg::None)));
        assert_eq!(port("EPSV all"), Ok(Command::Epsv(EpsvArg::All)));
        assert_eq!(port("EPSV 1"), Ok(Command::Epsv(EpsvArg::Protocol(1))));
        assert_eq!(port("EPSV 2"), Ok(Command::Epsv(EpsvArg::Protocol(2))));
    }

    #[test]
    fn epsv_with_bad_argument_is_rejected() {
        for bad in ["EPSV 3", "EPSV 01", "EPSV ALLX", "EPSV 1 2"] {
            assert_eq!(port(bad), Err(CommandError::EpsvArgument), "{bad:?}");
        }
    }

    #[test]
    fn long_address_commands_and_auth_are_recognised() {
        assert_eq!(port("LPRT 4,4,1,2,3,4,2,0,21"), Ok(Command::Lprt));
        assert_eq!(port("lpsv"), Ok(Command::Lpsv));
        assert_eq!(port("AUTH TLS "), Ok(Command::Auth(b"TLS".to_vec())));
        assert_eq!(port("AUTH"), Ok(Command::Auth(Vec::new())));
    }

    #[test]
    fn other_verbs_are_other() {
        assert_eq!(port("RETR PORT"), Ok(Command::Other));
        assert_eq!(port("PORTS 1,2,3,4,5,6"), Ok(Command::Other));
    }

    #[test]
    fn error_texts_are_single_line_ascii() {
        let errors = [
            CommandError::MissingArgument { verb: "EPRT" },
            CommandError::PortFieldCount,
            CommandError::PortNotNumber,
            CommandError::PortOctetTooLarge,
            CommandError::PortZero,
            CommandError::EprtDelimiter,
            CommandError::EprtFormat,
            CommandError::EprtFamily,
            CommandError::EprtIpv4,
            CommandError::EprtIpv6,
            CommandError::EprtZoneId,
            CommandError::EprtPort,
            CommandError::EpsvArgument,
        ];
        for e in errors {
            let text = e.to_string();
            assert!(!text.is_empty());
            assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)), "{text:?}");
        }
    }

    #[test]
    fn render_port_is_canonical() {
        assert_eq!(render_port(v4(10, 0, 0, 1, 1025)), b"PORT 10,0,0,1,4,1\r\n");
    }

    #[test]
    fn render_eprt_uses_family_numbers() {
        assert_eq!(
            render_eprt("10.0.0.1:21".parse().unwrap()),
            b"EPRT |1|10.0.0.1|21|\r\n"
        );
        assert_eq!(
            render_eprt("[2001:db8::1]:2121".parse().unwrap()),
            b"EPRT |2|2001:db8::1|2121|\r\n"
        );
    }

    fn strip_crlf(bytes: &[u8]) -> &[u8] {
        bytes.strip_suffix(b"\r\n").unwrap()
    }

    proptest! {
        #[test]
        fn port_parse_of_render_is_identity(ip in any::<[u8; 4]>(), p in 1u16..) {
            let addr = SocketAddrV4::new(Ipv4Addr::from(ip), p);
            prop_assert_eq!(parse_command(strip_crlf(&render_port(addr))), Ok(Command::Port(addr)));
        }

        #[test]
        fn eprt_ipv4_parse_of_render_is_identity(ip in any::<[u8; 4]>(), p in 1u16..) {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p);
            prop_assert_eq!(parse_command(strip_crlf(&render_eprt(addr))), Ok(Command::Eprt(addr)));
        }

        #[test]
        fn eprt_ipv6_parse_of_render_is_identity(ip in any::<[u8; 16]>(), p in 1u16..) {
            let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p);
            prop_assert_eq!(parse_command(strip_crlf(&render_eprt(addr))), Ok(Command::Eprt(addr)));
        }

        #[test]
        fn parse_command_never_panics(text in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_command(&text);
        }

        #[test]
        fn port_arguments_never_panic(arg in "[0-9,+ -]{0,40}") {
            let _ = parse_command(format!("PORT {arg}").as_bytes());
            let _ = parse_command(format!("EPRT |1|{arg}|").as_bytes());
        }
    }
}
