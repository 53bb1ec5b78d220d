//! A minimal synchronous FTP client that speaks all four data modes over IPv4.
//!
//! It exists because no stock client sends `EPRT` over IPv4 in a scriptable way from Rust:
//! suppaftp (like lftp) chooses PORT or EPRT by the address family of its control socket. The
//! lab uses it for EPRT with the embedded peers, and it is small enough to read in one sitting.
//! Every socket has a read/write timeout, so a blocked data path ends as an error, not a hang.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::error::{LabError, Result};
use super::mode::{DataMode, FtpOp, OpOutcome, SessionReport, TransferPlan};
use super::netns::Netns;

/// Bound for each socket operation.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for the server to connect back in active mode.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(8);

/// One reply: code and full text (all lines of a multi-line reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text, lines joined with `\n`.
    pub text: String,
}

/// A logged-in control connection.
#[derive(Debug)]
pub struct RawFtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    transcript: Vec<String>,
}

enum DataSetup {
    Active(TcpListener),
    Passive(TcpStream),
}

impl RawFtp {
    /// Connects and reads the greeting.
    pub fn connect(server: SocketAddrV4) -> Result<Self> {
        Self::connect_any(SocketAddr::V4(server))
    }

    /// Like [`RawFtp::connect`], either family (the data-mode helpers stay IPv4-only; for
    /// IPv6 use [`RawFtp::command`] directly).
    pub fn connect_any(server: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&server, IO_TIMEOUT)
            .map_err(|e| LabError::io(format!("connecting to {server}"), e))?;
        set_timeouts(&stream)?;
        let writer = stream
            .try_clone()
            .map_err(|e| LabError::io("cloning the control socket", e))?;
        let mut ftp = Self {
            reader: BufReader::new(stream),
            writer,
            transcript: Vec::new(),
        };
        let greeting = ftp.read_reply()?;
        expect("greeting", &greeting, &[220])?;
        Ok(ftp)
    }

    /// `USER` + `PASS`, then `TYPE I`.
    pub fn login(&mut self, user: &str, password: &str) -> Result<()> {
        let reply = self.command(&format!("USER {user}"))?;
        if reply.code == 331 {
            let reply = self.command(&format!("PASS {password}"))?;
            expect("PASS", &reply, &[230])?;
        } else {
            expect("USER", &reply, &[230])?;
        }
        let reply = self.command("TYPE I")?;
        expect("TYPE I", &reply, &[200])
    }

    /// Sends one command line and reads its reply.
    pub fn command(&mut self, line: &str) -> Result<Reply> {
        let shown = if line.starts_with("PASS ") {
            "PASS ****"
        } else {
            line
        };
        self.transcript.push(format!("> {shown}"));
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .map_err(|e| LabError::io(format!("sending {shown}"), e))?;
        self.read_reply()
    }

    /// Reads one (possibly multi-line) reply.
    pub fn read_reply(&mut self) -> Result<Reply> {
        let first = self.read_line()?;
        let code = reply_code(&first).ok_or_else(|| LabError::Protocol {
            command: "(reply)".into(),
            reply: first.clone(),
        })?;
        let mut text = first.clone();
        if first.as_bytes().get(3) == Some(&b'-') {
            let end = format!("{code} ");
            loop {
                let line = self.read_line()?;
                text.push('\n');
                text.push_str(&line);
                if line.starts_with(&end) {
                    break;
                }
            }
        }
        Ok(Reply { code, text })
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| LabError::io("reading a reply", e))?;
        if n == 0 {
            return Err(LabError::io(
                "reading a reply",
                io::Error::new(io::ErrorKind::UnexpectedEof, "control connection closed"),
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        self.transcript.push(format!("< {line}"));
        Ok(line)
    }

    /// What was said on the control connection so far.
    pub fn transcript(&self) -> String {
        self.transcript.join("\n")
    }

    fn local_ip(&self) -> Result<Ipv4Addr> {
        match self.writer.local_addr() {
            Ok(SocketAddr::V4(addr)) => Ok(*addr.ip()),
            Ok(other) => Err(LabError::Unsupported(format!(
                "control connection is not IPv4: {other}"
            ))),
            Err(e) => Err(LabError::io("local address of the control socket", e)),
        }
    }

    fn peer_ip(&self) -> Result<IpAddr> {
        self.writer
            .peer_addr()
            .map(|a| a.ip())
            .map_err(|e| LabError::io("peer address of the control socket", e))
    }

    fn open_data(&mut self, mode: DataMode) -> Result<DataSetup> {
        match mode {
            DataMode::Port | DataMode::Eprt => {
                let ip = self.local_ip()?;
                let listener = TcpListener::bind(SocketAddrV4::new(ip, 0))
                    .map_err(|e| LabError::io("binding the active-mode listener", e))?;
                let port = listener
                    .local_addr()
                    .map_err(|e| LabError::io("active-mode listener address", e))?
                    .port();
                let line = if mode == DataMode::Port {
                    let [a, b, c, d] = ip.octets();
                    format!("PORT {a},{b},{c},{d},{},{}", port >> 8, port & 0xff)
                } else {
                    format!("EPRT |1|{ip}|{port}|")
                };
                let reply = self.command(&line)?;
                expect(&line, &reply, &[200])?;
                Ok(DataSetup::Active(listener))
            }
            DataMode::Pasv => {
                let reply = self.command("PASV")?;
                expect("PASV", &reply, &[227])?;
                let addr = parse_227(&reply.text).ok_or_else(|| LabError::Protocol {
                    command: "PASV".into(),
                    reply: reply.text.clone(),
                })?;
                Ok(DataSetup::Passive(connect_data(SocketAddr::V4(addr))?))
            }
            DataMode::Epsv => {
                let reply = self.command("EPSV")?;
                expect("EPSV", &reply, &[229])?;
                let port = parse_229(&reply.text).ok_or_else(|| LabError::Protocol {
                    command: "EPSV".into(),
                    reply: reply.text.clone(),
                })?;
                let addr = SocketAddr::new(self.peer_ip()?, port);
                Ok(DataSetup::Passive(connect_data(addr)?))
            }
        }
    }

    /// Runs a data command: negotiates `mode`, sends `line`, then `transfer` on the data
    /// connection, then reads the completion reply.
    fn data_command<T>(
        &mut self,
        mode: DataMode,
        line: &str,
        transfer: impl FnOnce(&mut TcpStream) -> io::Result<T>,
    ) -> Result<T> {
        let setup = self.open_data(mode)?;
        let reply = self.command(line)?;
        expect(line, &reply, &[125, 150])?;
        let mut data = match setup {
            DataSetup::Passive(stream) => stream,
            DataSetup::Active(listener) => accept_data(&listener)?,
        };
        let value = transfer(&mut data).map_err(|e| LabError::io(format!("data of {line}"), e))?;
        drop(data);
        let done = self.read_reply()?;
        expect(line, &done, &[226, 250])?;
        Ok(value)
    }

    /// `LIST`: the listing's bytes.
    pub fn list(&mut self, mode: DataMode) -> Result<Vec<u8>> {
        self.data_command(mode, "LIST", |data| {
            let mut buf = Vec::new();
            data.read_to_end(&mut buf).map(|_| buf)
        })
    }

    /// `RETR name`: the file's bytes.
    pub fn retr(&mut self, mode: DataMode, name: &str) -> Result<Vec<u8>> {
        self.data_command(mode, &format!("RETR {name}"), |data| {
            let mut buf = Vec::new();
            data.read_to_end(&mut buf).map(|_| buf)
        })
    }

    /// `STOR name` with `content`.
    pub fn stor(&mut self, mode: DataMode, name: &str, content: &[u8]) -> Result<()> {
        self.data_command(mode, &format!("STOR {name}"), |data| {
            data.write_all(content)?;
            data.flush()?;
            data.shutdown(std::net::Shutdown::Write)
        })
    }

    /// `QUIT`.
    pub fn quit(mut self) -> Result<()> {
        let reply = self.command("QUIT")?;
        expect("QUIT", &reply, &[221])
    }
}

fn set_timeouts(stream: &TcpStream) -> Result<()> {
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| LabError::io("setting socket timeouts", e))
}

fn connect_data(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| LabError::io(format!("connecting the data connection to {addr}"), e))?;
    set_timeouts(&stream)?;
    Ok(stream)
}

fn accept_data(listener: &TcpListener) -> Result<TcpStream> {
    listener
        .set_nonblocking(true)
        .map_err(|e| LabError::io("active-mode listener", e))?;
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(|e| LabError::io("accepted data connection", e))?;
                set_timeouts(&stream)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if start.elapsed() > ACCEPT_TIMEOUT {
                    return Err(LabError::io(
                        "waiting for the server's data connection",
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("none arrived within {ACCEPT_TIMEOUT:?}"),
                        ),
                    ));
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(LabError::io("accepting the data connection", e)),
        }
    }
}

fn expect(command: &str, reply: &Reply, codes: &[u16]) -> Result<()> {
    if codes.contains(&reply.code) {
        Ok(())
    } else {
        Err(LabError::Protocol {
            command: if command.starts_with("PASS ") {
                "PASS".into()
            } else {
                command.to_owned()
            },
            reply: reply.text.clone(),
        })
    }
}

fn reply_code(line: &str) -> Option<u16> {
    let digits = line.get(..3)?;
    if digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// The address in a 227 reply: the first run of six comma-separated numbers.
pub fn parse_227(text: &str) -> Option<SocketAddrV4> {
    let bytes = text.as_bytes();
    let mut start = 4.min(bytes.len());
    while start < bytes.len() {
        if bytes[start].is_ascii_digit() {
            let run: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == ',')
                .collect();
            let nums: Vec<u8> = run.split(',').filter_map(|n| n.parse().ok()).collect();
            if nums.len() == 6 && run.split(',').count() == 6 {
                let ip = Ipv4Addr::new(nums[0], nums[1], nums[2], nums[3]);
                let port = u16::from(nums[4]) << 8 | u16::from(nums[5]);
                return Some(SocketAddrV4::new(ip, port));
            }
            start += run.len().max(1);
        } else {
            start += 1;
        }
    }
    None
}

/// The port in a 229 reply: `(|||port|)` with any delimiter.
pub fn parse_229(text: &str) -> Option<u16> {
    let open = text.find('(')?;
    let inner = &text[open + 1..text[open..].find(')')? + open];
    let delimiter = inner.chars().next()?;
    let fields: Vec<&str> = inner.split(delimiter).collect();
    match fields.as_slice() {
        ["", "", "", port, ""] => port.parse().ok(),
        _ => None,
    }
}

/// Runs `plan` with this client inside `ns`, bounded by the plan's timeout.
pub fn run_session(ns: &Netns, mode: DataMode, plan: &TransferPlan) -> Result<SessionReport> {
    let plan_in = plan.clone();
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    // The thread is abandoned if it overruns; its sockets all carry timeouts, so it ends soon.
    let _thread = ns.spawn_thread(move || {
        let _ = tx.send(session(mode, &plan_in));
    })?;
    let (outcomes, transcript, timed_out) = match rx.recv_timeout(plan.timeout) {
        Ok((outcomes, transcript)) => (outcomes, transcript, false),
        Err(_) => (
            plan.ops
                .iter()
                .map(|op| {
                    (
                        *op,
                        OpOutcome::failed("not reached: the session hit its time bound"),
                    )
                })
                .collect(),
            String::new(),
            true,
        ),
    };
    Ok(SessionReport {
        client: "raw-client",
        mode,
        outcomes,
        transcript,
        timed_out,
        elapsed: start.elapsed(),
    })
}

type Outcomes = Vec<(FtpOp, OpOutcome)>;

fn session(mode: DataMode, plan: &TransferPlan) -> (Outcomes, String) {
    let mut outcomes = Vec::new();
    let mut ftp = match RawFtp::connect(plan.server).and_then(|mut ftp| {
        ftp.login(&plan.user, &plan.password)?;
        Ok(ftp)
    }) {
        Ok(ftp) => ftp,
        Err(e) => {
            let why = format!("login failed: {e}");
            return (
                plan.ops
                    .iter()
                    .map(|op| (*op, OpOutcome::failed(why.clone())))
                    .collect(),
                String::new(),
            );
        }
    };
    for op in &plan.ops {
        let outcome = match op {
            FtpOp::List => ftp
                .list(mode)
                .map(|listing| format!("{} bytes of listing", listing.len())),
            FtpOp::Retr => ftp.retr(mode, &plan.retr_remote).and_then(|data| {
                std::fs::write(&plan.retr_local, &data)
                    .map_err(|e| LabError::io("saving the download", e))?;
                Ok(format!("{} bytes", data.len()))
            }),
            FtpOp::Stor => std::fs::read(&plan.stor_local)
                .map_err(|e| LabError::io("reading the upload", e))
                .and_then(|data| {
                    ftp.stor(mode, &plan.stor_remote, &data)?;
                    Ok(format!("{} bytes", data.len()))
                }),
        };
        outcomes.push((
            *op,
            match outcome {
                Ok(note) => OpOutcome::ok(note),
                Err(e) => OpOutcome::failed(e.to_string()),
            },
        ));
    }
    let transcript = ftp.transcript();
    let _ = ftp.quit();
    (outcomes, transcript)
}

#[cfg(test)]
mod tests {
    use super::{parse_227, parse_229};
    use std::net::{Ipv4Addr, SocketAddrV4};

    #[test]
    fn passive_replies_are_parsed() {
        let want = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 2), 30001);
        assert_eq!(
            parse_227("227 Entering Passive Mode (203,0,113,2,117,49)."),
            Some(want)
        );
        assert_eq!(parse_227("227 =203,0,113,2,117,49"), Some(want));
        assert_eq!(parse_227("227 nothing here"), None);
        assert_eq!(
            parse_229("229 Entering Extended Passive Mode (|||30001|)"),
            Some(30001)
        );
        assert_eq!(parse_229("229 ok (!!!30001!)"), Some(30001));
        assert_eq!(parse_229("229 bad (|1|30001|)"), None);
    }
}
