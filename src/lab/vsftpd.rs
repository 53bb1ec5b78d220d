//! vsftpd (Debian's) as the lab's FTP server, with its protocol log as the witness of which
//! command a client really sent.
//!
//! The FTP account: a system user `ftpalg` with a *locked* system password and a `nologin`
//! shell, so it cannot log in anywhere else on the host. Its home is `/`: vsftpd always
//! `chdir`s to the home directory before `local_root`, so the home must exist. vsftpd authenticates through a PAM
//! service of the lab's own (`/etc/pam.d/ftp-alg-lab`) that admits exactly that user; the
//! password sent by the clients ([`FTP_PASSWORD`]) is therefore not checked. This keeps a
//! well-known password out of `/etc/shadow` of whatever machine runs the tests.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::error::{LabError, Result};
use super::netns::{ADMIN_TIMEOUT, Netns};
use super::process::{ServiceChild, run_bounded};
use super::scratch::ScratchDir;
use super::topology::SERVER_IP;

/// The FTP login of the lab's servers.
pub const FTP_USER: &str = "ftpalg";
/// The password the lab's clients send.
pub const FTP_PASSWORD: &str = "ftpalg-lab";
/// vsftpd's passive port range.
pub const VSFTPD_PASV_PORTS: (u16, u16) = (30000, 30100);
/// The lab's PAM service for vsftpd.
const PAM_SERVICE: &str = "ftp-alg-lab";
const PAM_CONFIG: &str = "# Written by the ftp-alg test lab: vsftpd in the lab's namespaces admits only the\n\
# lab user ftpalg (locked system password, nologin shell); no other service uses this file.\n\
auth required pam_succeed_if.so quiet user = ftpalg\n\
auth required pam_permit.so\n\
account required pam_succeed_if.so quiet user = ftpalg\n\
account required pam_permit.so\n\
session required pam_permit.so\n";

/// Creates the lab's FTP user and PAM service if missing. Idempotent, safe across processes
/// running it at once.
pub fn ensure_ftp_user() -> Result<(u32, u32)> {
    static ONCE: Mutex<Option<(u32, u32)>> = Mutex::new(None);
    let mut done = ONCE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(ids) = *done {
        return Ok(ids);
    }
    // Test processes run in parallel (nextest: one process per test): serialize the account
    // set-up across processes, or a half-created account can be seen.
    let lock_path = std::env::temp_dir().join("ftp-alg-lab-account.lock");
    let lock = fs::File::create(&lock_path)
        .map_err(|e| LabError::io(format!("creating {}", lock_path.display()), e))?;
    lock.lock()
        .map_err(|e| LabError::io(format!("locking {}", lock_path.display()), e))?;
    let pam_path = Path::new("/etc/pam.d").join(PAM_SERVICE);
    if fs::read_to_string(&pam_path).ok().as_deref() != Some(PAM_CONFIG) {
        // Write-then-rename so that a concurrent vsftpd never reads half a file.
        let tmp = pam_path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, PAM_CONFIG)
            .and_then(|()| fs::rename(&tmp, &pam_path))
            .map_err(|e| LabError::io(format!("writing {}", pam_path.display()), e))?;
    }
    if user_ids()?.is_none() {
        let mut add = Command::new("useradd");
        add.args([
            "--system",
            "--no-create-home",
            "--home-dir",
            "/",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "ftp-alg test lab",
            FTP_USER,
        ]);
        let run = run_bounded(add, None, ADMIN_TIMEOUT)?;
        // 9 = "already exists": another test process won the race, which is fine.
        let code = run.output.status.code();
        if code != Some(0) && code != Some(9) && user_ids()?.is_none() {
            return Err(LabError::CommandFailed {
                command: format!("useradd {FTP_USER}"),
                status: run.output.status.to_string(),
                stderr: String::from_utf8_lossy(&run.output.stderr)
                    .trim()
                    .to_owned(),
            });
        }
    }
    ensure_home_exists()?;
    let ids = user_ids()?
        .ok_or_else(|| LabError::Unavailable(format!("user {FTP_USER} missing after useradd")))?;
    *done = Some(ids);
    Ok(ids)
}

/// An account made by an older lab (home `/nonexistent`) gets `/` as home.
fn ensure_home_exists() -> Result<()> {
    let mut getent = Command::new("getent");
    getent.args(["passwd", FTP_USER]);
    let entry = run_bounded(getent, None, ADMIN_TIMEOUT)?;
    let entry = String::from_utf8_lossy(&entry.output.stdout).into_owned();
    let home = entry.trim().split(':').nth(5).unwrap_or("");
    if !home.is_empty() && Path::new(home).is_dir() {
        return Ok(());
    }
    let mut usermod = Command::new("usermod");
    usermod.args(["--home", "/", FTP_USER]);
    let run = run_bounded(usermod, None, ADMIN_TIMEOUT)?;
    if run.output.status.success() {
        return Ok(());
    }
    Err(LabError::CommandFailed {
        command: format!("usermod --home / {FTP_USER}"),
        status: run.output.status.to_string(),
        stderr: String::from_utf8_lossy(&run.output.stderr)
            .trim()
            .to_owned(),
    })
}

fn user_ids() -> Result<Option<(u32, u32)>> {
    let mut uid = Command::new("id");
    uid.args(["-u", FTP_USER]);
    let uid = run_bounded(uid, None, ADMIN_TIMEOUT)?;
    if !uid.output.status.success() {
        return Ok(None);
    }
    let mut gid = Command::new("id");
    gid.args(["-g", FTP_USER]);
    let gid = run_bounded(gid, None, ADMIN_TIMEOUT)?;
    let parse = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().parse::<u32>().ok();
    Ok(parse(&uid.output.stdout).zip(parse(&gid.output.stdout)))
}

/// Where and how a [`Vsftpd`] runs ([`Vsftpd::start_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsftpdOptions {
    /// The control address: IPv4 (`listen_address`) or IPv6 (`listen_ipv6=YES` +
    /// `listen_address6`; vsftpd serves one family per instance). Default 203.0.113.2:21.
    pub listen: SocketAddr,
    /// Announce this address in every 227 instead of the server's own (`pasv_address` with
    /// `pasv_addr_resolve=NO`), as a server behind its own NAT does. Default: none.
    pub pasv_address: Option<Ipv4Addr>,
    /// Passive port range instead of [`VSFTPD_PASV_PORTS`] (a single port makes every PASV of
    /// every session use the same one). Default: none.
    pub pasv_ports: Option<(u16, u16)>,
}

impl Default for VsftpdOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::V4(SocketAddrV4::new(SERVER_IP, 21)),
            pasv_address: None,
            pasv_ports: None,
        }
    }
}

impl VsftpdOptions {
    /// The standard settings, listening on `listen`.
    pub fn at(listen: SocketAddr) -> Self {
        Self {
            listen,
            ..Self::default()
        }
    }
}

/// One vsftpd process's part of the protocol log (vsftpd runs each session's pre-login and
/// post-login parts in processes of their own; everything after login is one process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedProcess {
    /// The pid in the log's `[pid N]`.
    pub pid: u32,
    /// The peer address vsftpd logged for that process's commands (`Client "..."`).
    pub client: String,
    /// The commands it received, in order.
    pub commands: Vec<String>,
}

/// A vsftpd listening on 203.0.113.2:21 (or where [`VsftpdOptions`] say) in the server
/// namespace.
#[derive(Debug)]
pub struct Vsftpd {
    // Field order: the process goes before its directory.
    child: ServiceChild,
    root: PathBuf,
    log: PathBuf,
    ids: (u32, u32),
    _dir: ScratchDir,
    listen: SocketAddr,
}

impl Vsftpd {
    /// Writes a config into a scratch dir and starts vsftpd inside `ns`; returns once it listens.
    pub fn start(ns: &Netns) -> Result<Self> {
        Self::start_with(ns, &VsftpdOptions::default())
    }

    /// Like [`Vsftpd::start`], with another address or a wrong advertised passive address.
    pub fn start_with(ns: &Netns, options: &VsftpdOptions) -> Result<Self> {
        let ids = ensure_ftp_user()?;
        let dir = ScratchDir::new("vsftpd")?;
        let root = dir.subdir("root")?;
        std::os::unix::fs::chown(&root, Some(ids.0), Some(ids.1))
            .map_err(|e| LabError::io(format!("chown {}", root.display()), e))?;
        let log = dir.path().join("vsftpd.log");
        let conf = dir.path().join("vsftpd.conf");
        fs::write(&conf, config_with(&root, &log, options))
            .map_err(|e| LabError::io(format!("writing {}", conf.display()), e))?;
        let conf_arg = conf.to_string_lossy().into_owned();
        let mut child = ns.spawn("vsftpd", &["vsftpd", &conf_arg])?;
        wait_listening_on(ns, &mut child, options.listen)?;
        Ok(Self {
            child,
            root,
            log,
            ids,
            _dir: dir,
            listen: options.listen,
        })
    }

    /// Where the server keeps the user's files (its login directory).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where clients connect (an IPv4 instance; for either family see
    /// [`Vsftpd::socket_addr`]).
    ///
    /// # Panics
    /// For an instance listening on IPv6.
    pub fn addr(&self) -> SocketAddrV4 {
        match self.listen {
            SocketAddr::V4(addr) => addr,
            SocketAddr::V6(addr) => panic!("vsftpd listens on IPv6 {addr}: use socket_addr()"),
        }
    }

    /// Where clients connect, either family.
    pub fn socket_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The protocol log grouped by vsftpd process, in order of first appearance.
    pub fn processes(&self) -> Vec<LoggedProcess> {
        parse_processes(&self.log_text())
    }

    /// Puts `data` into the login directory as `name`, readable by the FTP user.
    pub fn put_file(&self, name: &str, data: &[u8]) -> Result<PathBuf> {
        let path = self.root.join(name);
        fs::write(&path, data)
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
        std::os::unix::fs::chown(&path, Some(self.ids.0), Some(self.ids.1))
            .map_err(|e| LabError::io(format!("chown {}", path.display()), e))?;
        Ok(path)
    }

    /// The protocol log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every FTP command the server received, in order, as logged (`"PORT 203,0,113,1,..."`).
    pub fn commands(&self) -> Vec<String> {
        parse_commands(&self.log_text())
    }

    /// Every reply the server sent, in order, as logged.
    pub fn replies(&self) -> Vec<String> {
        parse_quoted_after(&self.log_text(), "FTP response: ")
    }

    /// vsftpd's own stdout/stderr (it prints `500 OOPS` there when it refuses to start).
    pub fn output(&self) -> String {
        self.child.output()
    }
}

/// Waits until something listens on TCP `port` inside `ns`, or `child` exits.
#[allow(dead_code)] // vsftpd now waits for its exact address; kept for other servers
pub(crate) fn wait_listening(ns: &Netns, child: &mut ServiceChild, port: u16) -> Result<()> {
    let timeout = Duration::from_secs(10);
    let start = Instant::now();
    let filter = format!("sport = :{port}");
    loop {
        let out = ns.exec(&["ss", "-Hltn", &filter])?;
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(());
        }
        if let Some(status) = child.try_status() {
            return Err(LabError::NotReady {
                what: format!("server in {} (exited: {status})", ns.name()),
                timeout,
                output: child.output(),
            });
        }
        if start.elapsed() > timeout {
            return Err(LabError::NotReady {
                what: format!("server in {}", ns.name()),
                timeout,
                output: child.output(),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something listens on exactly `addr` inside `ns`, or `child` exits.
pub(crate) fn wait_listening_on(
    ns: &Netns,
    child: &mut ServiceChild,
    addr: SocketAddr,
) -> Result<()> {
    let timeout = Duration::from_secs(10);
    let start = Instant::now();
    let filter = addr.to_string();
    loop {
        let out = ns.exec(&["ss", "-Hltn", "src", &filter])?;
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(());
        }
        if let Some(status) = child.try_status() {
            return Err(LabError::NotReady {
                what: format!("server on {addr} in {} (exited: {status})", ns.name()),
                timeout,
                output: child.output(),
            });
        }
        if start.elapsed() > timeout {
            return Err(LabError::NotReady {
                what: format!("server on {addr} in {}", ns.name()),
                timeout,
                output: child.output(),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn config_with(root: &Path, log: &Path, options: &VsftpdOptions) -> String {
    let listen = match options.listen {
        SocketAddr::V4(addr) => format!(
            "listen=YES\n\
             listen_ipv6=NO\n\
             listen_address={}\n\
             listen_port={}\n",
            addr.ip(),
            addr.port()
        ),
        SocketAddr::V6(addr) => format!(
            "listen=NO\n\
             listen_ipv6=YES\n\
             listen_address6={}\n\
             listen_port={}\n",
            addr.ip(),
            addr.port()
        ),
    };
    let mut text = config(root, log).replacen(&default_listen_lines(), &listen, 1);
    if let Some(pasv) = options.pasv_address {
        text.push_str(&format!("pasv_address={pasv}\npasv_addr_resolve=NO\n"));
    }
    if let Some((min, max)) = options.pasv_ports {
        let (default_min, default_max) = VSFTPD_PASV_PORTS;
        text = text.replacen(
            &format!("pasv_min_port={default_min}\npasv_max_port={default_max}\n"),
            &format!("pasv_min_port={min}\npasv_max_port={max}\n"),
            1,
        );
    }
    text
}

fn default_listen_lines() -> String {
    format!(
        "listen=YES\n\
         listen_ipv6=NO\n\
         listen_address={SERVER_IP}\n\
         listen_port=21\n"
    )
}

fn config(root: &Path, log: &Path) -> String {
    let (pasv_min, pasv_max) = VSFTPD_PASV_PORTS;
    format!(
        "# ftp-alg test lab\n\
         listen=YES\n\
         listen_ipv6=NO\n\
         listen_address={SERVER_IP}\n\
         listen_port=21\n\
         background=NO\n\
         anonymous_enable=NO\n\
         local_enable=YES\n\
         write_enable=YES\n\
         local_umask=022\n\
         file_open_mode=0644\n\
         local_root={root}\n\
         pam_service_name={PAM_SERVICE}\n\
         secure_chroot_dir=/var/run/vsftpd/empty\n\
         seccomp_sandbox=NO\n\
         ssl_enable=NO\n\
         connect_from_port_20=YES\n\
         port_enable=YES\n\
         pasv_enable=YES\n\
         pasv_min_port={pasv_min}\n\
         pasv_max_port={pasv_max}\n\
         connect_timeout=5\n\
         accept_timeout=5\n\
         data_connection_timeout=20\n\
         idle_session_timeout=60\n\
         max_clients=0\n\
         max_per_ip=0\n\
         dirmessage_enable=NO\n\
         ftpd_banner=ftp-alg lab vsftpd\n\
         syslog_enable=NO\n\
         xferlog_enable=YES\n\
         xferlog_std_format=NO\n\
         log_ftp_protocol=YES\n\
         vsftpd_log_file={log}\n",
        root = root.display(),
        log = log.display(),
    )
}

/// The commands in a vsftpd protocol log: lines like
/// `... [ftpalg] FTP command: Client "203.0.113.1", "PORT 203,0,113,1,156,65"`.
pub fn parse_commands(log: &str) -> Vec<String> {
    parse_quoted_after(log, "FTP command: ")
}

/// The protocol log grouped by `[pid N]`, in order of first appearance; only processes that
/// logged commands.
pub fn parse_processes(log: &str) -> Vec<LoggedProcess> {
    let mut processes: Vec<LoggedProcess> = Vec::new();
    for line in log.lines() {
        let Some(pid) = line
            .split_once("[pid ")
            .and_then(|(_, rest)| rest.split_once(']'))
            .and_then(|(pid, _)| pid.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let Some(rest) = line
            .find("FTP command: Client \"")
            .map(|at| &line[at + "FTP command: Client \"".len()..])
        else {
            continue;
        };
        let Some((client, command)) = rest.split_once("\", \"") else {
            continue;
        };
        let command = command.strip_suffix('"').unwrap_or(command).to_owned();
        match processes.iter_mut().find(|p| p.pid == pid) {
            Some(process) => process.commands.push(command),
            None => processes.push(LoggedProcess {
                pid,
                client: client.to_owned(),
                commands: vec![command],
            }),
        }
    }
    processes
}

fn parse_quoted_after(log: &str, marker: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find(marker)? + marker.len()..];
            // Client "<ip>", "<text>"
            let text = rest.split_once("\", \"")?.1;
            Some(text.strip_suffix('"').unwrap_or(text).to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{VsftpdOptions, config, config_with, parse_commands, parse_processes};
    use std::path::Path;

    #[test]
    fn default_options_give_the_original_config() {
        let (root, log) = (Path::new("/r"), Path::new("/l"));
        assert_eq!(
            config_with(root, log, &VsftpdOptions::default()),
            config(root, log)
        );
        let v6 = config_with(
            root,
            log,
            &VsftpdOptions {
                listen: "[2001:db8:2::2]:2100".parse().unwrap(),
                pasv_address: Some("10.9.9.9".parse().unwrap()),
                pasv_ports: Some((30000, 30000)),
            },
        );
        assert!(
            v6.contains("pasv_min_port=30000\npasv_max_port=30000\n"),
            "{v6}"
        );
        assert!(
            v6.contains(
                "listen=NO\nlisten_ipv6=YES\nlisten_address6=2001:db8:2::2\nlisten_port=2100\n"
            ),
            "{v6}"
        );
        assert!(
            v6.contains("pasv_address=10.9.9.9\npasv_addr_resolve=NO\n"),
            "{v6}"
        );
    }

    #[test]
    fn the_log_is_grouped_by_process() {
        let log = "Fri Nov 22 01:00:00 2024 [pid 7] CONNECT: Client \"192.0.2.2\"\n\
                   Fri Nov 22 01:00:00 2024 [pid 7] FTP command: Client \"192.0.2.2\", \"USER ftpalg\"\n\
                   Fri Nov 22 01:00:00 2024 [pid 9] [ftpalg] FTP command: Client \"2001:db8:a::2\", \"EPSV\"\n\
                   Fri Nov 22 01:00:00 2024 [pid 8] [ftpalg] FTP command: Client \"192.0.2.2\", \"PORT 192,0,2,2,156,65\"\n\
                   Fri Nov 22 01:00:00 2024 [pid 8] [ftpalg] FTP response: Client \"192.0.2.2\", \"200 PORT command successful.\"\n\
                   Fri Nov 22 01:00:00 2024 [pid 8] [ftpalg] FTP command: Client \"192.0.2.2\", \"STOR up-1.bin\"\n";
        let processes = parse_processes(log);
        assert_eq!(processes.len(), 3);
        assert_eq!(processes[0].pid, 7);
        assert_eq!(processes[1].client, "2001:db8:a::2");
        assert_eq!(processes[1].commands, vec!["EPSV".to_owned()]);
        assert_eq!(processes[2].pid, 8);
        assert_eq!(
            processes[2].commands,
            vec![
                "PORT 192,0,2,2,156,65".to_owned(),
                "STOR up-1.bin".to_owned()
            ]
        );
    }

    #[test]
    fn commands_are_read_from_the_protocol_log() {
        let log = "Fri Nov 22 01:00:00 2024 [pid 7] CONNECT: Client \"203.0.113.1\"\n\
                   Fri Nov 22 01:00:00 2024 [pid 7] FTP command: Client \"203.0.113.1\", \"USER ftpalg\"\n\
                   Fri Nov 22 01:00:00 2024 [pid 7] [ftpalg] FTP response: Client \"203.0.113.1\", \"230 Login successful.\"\n\
                   Fri Nov 22 01:00:00 2024 [pid 8] [ftpalg] FTP command: Client \"203.0.113.1\", \"PORT 203,0,113,1,156,65\"\n";
        assert_eq!(
            parse_commands(log),
            vec![
                "USER ftpalg".to_owned(),
                "PORT 203,0,113,1,156,65".to_owned()
            ]
        );
    }
}
