//! What a client session is asked to do and what came of it, independent of the peer.

use std::fmt;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

/// How the data connection is negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataMode {
    /// Active, RFC 959: `PORT h1,h2,h3,h4,p1,p2`; the server connects to the client.
    Port,
    /// Active, RFC 2428: `EPRT |1|addr|port|`.
    Eprt,
    /// Passive, RFC 959: `PASV` → `227 (h1,h2,h3,h4,p1,p2)`; the client connects to the server.
    Pasv,
    /// Passive, RFC 2428: `EPSV` → `229 (|||port|)`.
    Epsv,
}

impl DataMode {
    /// All four, in the order the reports show them.
    pub const ALL: [Self; 4] = [Self::Port, Self::Eprt, Self::Pasv, Self::Epsv];

    /// The FTP command that selects this mode.
    pub fn command(self) -> &'static str {
        match self {
            Self::Port => "PORT",
            Self::Eprt => "EPRT",
            Self::Pasv => "PASV",
            Self::Epsv => "EPSV",
        }
    }

    /// Whether the server opens the data connection.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Port | Self::Eprt)
    }
}

impl fmt::Display for DataMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.command())
    }
}

/// One data-channel operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FtpOp {
    /// `LIST` of the login directory.
    List,
    /// `RETR` of [`TransferPlan::retr_remote`] into [`TransferPlan::retr_local`].
    Retr,
    /// `STOR` of [`TransferPlan::stor_local`] as [`TransferPlan::stor_remote`].
    Stor,
}

impl FtpOp {
    /// All three, in session order.
    pub const ALL: [Self; 3] = [Self::List, Self::Retr, Self::Stor];

    /// The FTP command.
    pub fn command(self) -> &'static str {
        match self {
            Self::List => "LIST",
            Self::Retr => "RETR",
            Self::Stor => "STOR",
        }
    }
}

impl fmt::Display for FtpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.command())
    }
}

/// A client session: log in, run `ops` in order in one control connection, quit.
#[derive(Debug, Clone)]
pub struct TransferPlan {
    /// Where the client connects (the server's real address; the ALG intercepts on the way).
    pub server: SocketAddrV4,
    /// Login name.
    pub user: String,
    /// Password.
    pub password: String,
    /// What to do, in order.
    pub ops: Vec<FtpOp>,
    /// File to download (a name in the login directory).
    pub retr_remote: String,
    /// Where the download goes.
    pub retr_local: PathBuf,
    /// File to upload.
    pub stor_local: PathBuf,
    /// Name of the upload on the server.
    pub stor_remote: String,
    /// Bound for the whole session; the client is killed (or abandoned) after it.
    pub timeout: Duration,
}

/// How one operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpOutcome {
    /// Whether the client reported success.
    pub ok: bool,
    /// The client's own words (error text, reply, listing size...).
    pub detail: String,
}

impl OpOutcome {
    /// A success with a note.
    pub fn ok(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
        }
    }

    /// A failure with its reason.
    pub fn failed(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What a client session did.
#[derive(Debug, Clone)]
pub struct SessionReport {
    /// Which client ran it ("lftp", "curl", "suppaftp", ...).
    pub client: &'static str,
    /// The requested mode.
    pub mode: DataMode,
    /// One outcome per requested op, in order; an op never reached counts as failed.
    pub outcomes: Vec<(FtpOp, OpOutcome)>,
    /// The client's full output, for diagnostics.
    pub transcript: String,
    /// Whether the session hit its time bound.
    pub timed_out: bool,
    /// How long it took.
    pub elapsed: Duration,
}

impl SessionReport {
    /// The outcome of `op`, if it was requested.
    pub fn outcome(&self, op: FtpOp) -> Option<&OpOutcome> {
        self.outcomes
            .iter()
            .find(|(o, _)| *o == op)
            .map(|(_, out)| out)
    }

    /// Whether every requested op succeeded.
    pub fn all_ok(&self) -> bool {
        !self.outcomes.is_empty() && self.outcomes.iter().all(|(_, o)| o.ok)
    }

    /// Whether no requested op succeeded.
    pub fn none_ok(&self) -> bool {
        self.outcomes.iter().all(|(_, o)| !o.ok)
    }

    /// The first failure's reason, if any.
    pub fn first_failure(&self) -> Option<String> {
        self.outcomes
            .iter()
            .find(|(_, o)| !o.ok)
            .map(|(op, o)| format!("{op}: {}", o.detail))
    }
}

impl fmt::Display for SessionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({:.1?}", self.client, self.mode, self.elapsed)?;
        if self.timed_out {
            f.write_str(", timed out")?;
        }
        f.write_str("):")?;
        for (op, outcome) in &self.outcomes {
            let verdict = if outcome.ok { "ok" } else { "FAILED" };
            write!(f, " {op} {verdict} [{}];", outcome.detail.trim())?;
        }
        Ok(())
    }
}
