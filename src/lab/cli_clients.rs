//! Debian's command-line FTP clients (lftp, curl) run inside the client namespace.
//!
//! Each session runs all requested ops over one control connection and prints a marker line per
//! op, which is how the outcome of each op is read back. Every run is bounded in time.
//!
//! Peer facts this relies on:
//! - lftp sends `EPRT` only over IPv6; on IPv4 it always sends `PORT`. So EPRT over IPv4 is
//!   driven with curl, and [`lftp`] refuses [`DataMode::Eprt`].
//! - curl with `--ftp-port -` tries `EPRT` first and falls back to `PORT` if the server refuses
//!   it; `--disable-eprt` makes it send `PORT` only. With `--ftp-pasv` it tries `EPSV` first and
//!   falls back to `PASV`; `--disable-epsv` makes it send `PASV` only. The server's log is what
//!   proves which one was used.
//! - `--no-ftp-skip-pasv-ip`: curl uses the address in the 227 reply (by default it ignores it
//!   and reuses the control connection's address, which would hide a wrong 227).

use std::net::SocketAddr;

use super::error::{LabError, Result};
use super::mode::{DataMode, FtpOp, OpOutcome, SessionReport, TransferPlan};
use super::netns::Netns;

/// Marker that starts each per-op result line (curl reads a `--write-out` starting with `@` from a file,
/// so the marker must not).
const MARK: &str = "~~";

/// Runs `plan` with lftp in `ns` (the client namespace) using `mode`.
pub fn lftp(ns: &Netns, mode: DataMode, plan: &TransferPlan) -> Result<SessionReport> {
    lftp_at(ns, mode, plan, SocketAddr::V4(plan.server))
}

/// Like [`lftp`], against `server` (either family) instead of `plan.server`.
///
/// Over IPv6 lftp speaks only EPRT ([`DataMode::Eprt`], `passive-mode off`) and EPSV; PORT and
/// PASV cannot name an IPv6 address and are refused here.
pub fn lftp_at(
    ns: &Netns,
    mode: DataMode,
    plan: &TransferPlan,
    server: SocketAddr,
) -> Result<SessionReport> {
    let (passive, epsv) = match (server.is_ipv6(), mode) {
        (false, DataMode::Port) | (true, DataMode::Eprt) => ("off", "no"),
        (false, DataMode::Pasv) => ("on", "no"),
        (_, DataMode::Epsv) => ("on", "yes"),
        (false, DataMode::Eprt) => {
            return Err(LabError::Unsupported(
                "lftp sends EPRT only over IPv6; use curl for EPRT over IPv4".into(),
            ));
        }
        (true, DataMode::Port | DataMode::Pasv) => {
            return Err(LabError::Unsupported(format!(
                "{mode} cannot carry IPv6; lftp uses EPRT/EPSV over IPv6"
            )));
        }
    };
    let mut script = format!(
        "set cmd:fail-exit no; set cmd:interactive no; set ftp:ssl-allow no; \
         set ftp:passive-mode {passive}; set ftp:prefer-epsv {epsv}; \
         set ftp:fix-pasv-address no; set net:max-retries 1; set net:timeout 5; \
         set net:reconnect-interval-base 1; set xfer:clobber on; \
         open -u {user},{password} ftp://{server}\n",
        user = plan.user,
        password = plan.password,
    );
    for op in &plan.ops {
        let action = match op {
            FtpOp::List => "ls".to_owned(),
            FtpOp::Retr => format!("get {} -o {}", plan.retr_remote, plan.retr_local.display()),
            FtpOp::Stor => format!("put {} -o {}", plan.stor_local.display(), plan.stor_remote),
        };
        script.push_str(&format!(
            "{action} && echo {MARK} {op} 0 || echo {MARK} {op} 1\n"
        ));
    }
    script.push_str("bye\n");
    let run = ns.exec_bounded(&["lftp", "-c", &script], plan.timeout)?;
    let transcript = run.transcript();
    let outcomes = plan
        .ops
        .iter()
        .map(|op| {
            let outcome = match marker(&transcript, *op) {
                Some(fields) if fields.first() == Some(&"0") => OpOutcome::ok("lftp: done"),
                Some(_) => OpOutcome::failed(lftp_error(&transcript, *op)),
                None => OpOutcome::failed(not_reached(run.timed_out)),
            };
            (*op, outcome)
        })
        .collect();
    Ok(SessionReport {
        client: "lftp",
        mode,
        outcomes,
        transcript,
        timed_out: run.timed_out,
        elapsed: run.elapsed,
    })
}

/// Runs `plan` with curl in `ns` (the client namespace) using `mode`; one curl invocation with a
/// `--next` segment per op, so the control connection is reused.
pub fn curl(ns: &Netns, mode: DataMode, plan: &TransferPlan) -> Result<SessionReport> {
    curl_at(ns, mode, plan, SocketAddr::V4(plan.server))
}

/// Like [`curl`], against `server` (either family) instead of `plan.server`.
///
/// Over IPv6 only EPRT and EPSV exist (PORT/PASV are refused here), and the URL's IPv6 literal
/// needs `--globoff` so that curl does not read its brackets as a glob.
pub fn curl_at(
    ns: &Netns,
    mode: DataMode,
    plan: &TransferPlan,
    server: SocketAddr,
) -> Result<SessionReport> {
    let mode_flags: &[&str] = match (server.is_ipv6(), mode) {
        (false, DataMode::Port) => &["--ftp-port", "-", "--disable-eprt"],
        (_, DataMode::Eprt) => &["--ftp-port", "-"],
        (false, DataMode::Pasv) => &["--ftp-pasv", "--disable-epsv"],
        (_, DataMode::Epsv) => &["--ftp-pasv"],
        (true, DataMode::Port | DataMode::Pasv) => {
            return Err(LabError::Unsupported(format!(
                "{mode} cannot carry IPv6; curl uses EPRT/EPSV over IPv6"
            )));
        }
    };
    let max_time = plan.timeout.as_secs().max(2).to_string();
    let credentials = format!("{}:{}", plan.user, plan.password);
    let base = format!("ftp://{server}/");
    let mut args: Vec<String> = vec!["curl".into()];
    for (i, op) in plan.ops.iter().enumerate() {
        if i > 0 {
            args.push("--next".into());
        }
        args.extend(
            [
                "--silent",
                "--show-error",
                "--connect-timeout",
                "5",
                "--max-time",
                &max_time,
                "--user",
                &credentials,
                "--no-ftp-skip-pasv-ip",
            ]
            .map(String::from),
        );
        args.extend(mode_flags.iter().map(|s| (*s).to_owned()));
        if server.is_ipv6() {
            args.push("--globoff".into());
        }
        args.push("--write-out".into());
        args.push(format!(
            "{MARK} {op} %{{exitcode}} %{{response_code}} %{{size_download}} %{{size_upload}} %{{errormsg}}\\n"
        ));
        match op {
            FtpOp::List => {
                args.extend(["--output".into(), "/dev/null".into(), base.clone()]);
            }
            FtpOp::Retr => {
                args.extend([
                    "--output".into(),
                    plan.retr_local.display().to_string(),
                    format!("{base}{}", plan.retr_remote),
                ]);
            }
            FtpOp::Stor => {
                args.extend([
                    "--upload-file".into(),
                    plan.stor_local.display().to_string(),
                    format!("{base}{}", plan.stor_remote),
                ]);
            }
        }
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    // curl bounds each op itself; the outer bound covers all of them plus a margin.
    let outer = plan.timeout * u32::try_from(plan.ops.len()).unwrap_or(1).max(1)
        + std::time::Duration::from_secs(5);
    let run = ns.exec_bounded(&argv, outer)?;
    let transcript = run.transcript();
    let outcomes = plan
        .ops
        .iter()
        .map(|op| {
            let outcome = match marker(&transcript, *op) {
                Some(fields) if fields.first() == Some(&"0") => OpOutcome::ok(format!(
                    "curl: reply {}, {} bytes down, {} up",
                    fields.get(1).unwrap_or(&"?"),
                    fields.get(2).unwrap_or(&"?"),
                    fields.get(3).unwrap_or(&"?")
                )),
                Some(fields) => OpOutcome::failed(format!(
                    "curl exit {}, last reply {}: {}",
                    fields.first().unwrap_or(&"?"),
                    fields.get(1).unwrap_or(&"?"),
                    fields
                        .get(4..)
                        .map(|rest| rest.join(" "))
                        .unwrap_or_default()
                )),
                None => OpOutcome::failed(not_reached(run.timed_out)),
            };
            (*op, outcome)
        })
        .collect();
    Ok(SessionReport {
        client: "curl",
        mode,
        outcomes,
        transcript,
        timed_out: run.timed_out,
        elapsed: run.elapsed,
    })
}

/// The fields after `@@ <OP>` on the marker line for `op`.
fn marker(transcript: &str, op: FtpOp) -> Option<Vec<&str>> {
    transcript.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == MARK && fields.next()? == op.command()).then(|| fields.collect())
    })
}

fn not_reached(timed_out: bool) -> String {
    if timed_out {
        "not reached: the session hit its time bound".into()
    } else {
        "not reached: the client ended first".into()
    }
}

/// lftp's error lines for an op (it prints `ls: ...`, `get: ...`, `put: ...` on failure).
fn lftp_error(transcript: &str, op: FtpOp) -> String {
    let prefix = match op {
        FtpOp::List => "ls:",
        FtpOp::Retr => "get:",
        FtpOp::Stor => "put:",
    };
    let lines: Vec<&str> = transcript
        .lines()
        .filter(|l| l.starts_with(prefix))
        .collect();
    if lines.is_empty() {
        "lftp reported failure".into()
    } else {
        lines.join(" / ")
    }
}
