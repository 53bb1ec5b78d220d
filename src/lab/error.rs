//! The one error type of the lab.

use std::io;
use std::time::Duration;

/// What went wrong while building or driving a lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// The machine cannot host a lab (not root, no `ip`/`nft`, namespaces refused, ...).
    #[error("network-namespace lab unavailable: {0}")]
    Unavailable(String),
    /// A program could not be started at all.
    #[error("could not start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A program ran and reported failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A program did not finish in time and was killed.
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The command line.
        command: String,
        /// The bound it exceeded.
        timeout: Duration,
    },
    /// Joining a thread to a network namespace failed.
    #[error("cannot enter network namespace {name}: {source}")]
    Setns {
        /// The namespace.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A closure run inside a namespace panicked.
    #[error("thread in namespace {name} panicked: {message}")]
    ThreadPanicked {
        /// The namespace.
        name: String,
        /// The panic message, if it was a string.
        message: String,
    },
    /// A file or socket operation of the lab itself failed.
    #[error("{what}: {source}")]
    Io {
        /// What the lab was doing.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A started service did not become ready in time.
    #[error("{what} was not ready within {timeout:?}; its output so far:\n{output}")]
    NotReady {
        /// The service.
        what: String,
        /// The bound it exceeded.
        timeout: Duration,
        /// Its stderr/log so far.
        output: String,
    },
    /// A request the chosen peer cannot honour (e.g. lftp cannot send EPRT over IPv4).
    #[error("{0}")]
    Unsupported(String),
    /// A peer spoke FTP in a way the lab's own small client did not expect.
    #[error("unexpected FTP reply to {command}: {reply}")]
    Protocol {
        /// The command that was answered.
        command: String,
        /// The reply received.
        reply: String,
    },
}

impl LabError {
    /// Wraps an `io::Error` with a description of what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result of lab operations.
pub type Result<T, E = LabError> = std::result::Result<T, E>;
