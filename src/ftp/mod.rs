//! The sans-IO FTP control-channel protocol.
//!
//! Why a separate, pure layer: everything the ALG decides (is this a PORT? which address does
//! this 227 name? what bytes go on the wire instead?) is a function of bytes, so it is tested
//! and fuzzed here without sockets, clocks or a kernel. The session feeds received bytes in and
//! writes the bytes it gets back out; nothing here does I/O, logs, or panics on input.
//!
//! - [`LineFramer`] / [`Line`]: LF-delimited lines with a hard length cap; telnet IAC removal
//!   for interpretation ([`Line::text`]) while the raw bytes stay available for forwarding.
//! - [`parse_command`] / [`render_port`] / [`render_eprt`]: client commands (RFC 959, 2428).
//! - [`ReplyAssembler`] / [`parse_227`] / [`parse_229`] / [`rewrite_227`] / [`rewrite_229`]:
//!   server replies, multi-line aware, holding back only 227/229.
//! - [`checks`]: invariant checks shared by the fuzz targets and a stable smoke test.

pub mod checks;
mod command;
mod line;
mod number;
mod reply;

pub use command::{
    Command, CommandError, EpsvArg, command_verb, is_plain_command, parse_command, render_eprt,
    render_port,
};
pub use line::{FrameError, Line, LineFramer, Terminator, render_command};
pub use reply::{
    Reply, ReplyAssembler, ReplyError, ReplyEvent, parse_227, parse_229, render_227, render_229,
    render_reply, rewrite_227, rewrite_229,
};
