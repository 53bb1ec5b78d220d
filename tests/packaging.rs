//! Packaging: the systemd unit, the Debian package metadata in Cargo.toml and the generated man
//! page and completions agree with each other and with the daemon's defaults. Given a built
//! package (`FTP_ALG_DEB=path/to.deb`, as `scripts/ci-packaging.sh` and
//! `scripts/deb-install-test.sh` set it), the .deb holds every expected path with the right
//! mode, declares its dependencies and its conffile, ships the repository's files byte for
//! byte, and neither enables nor starts the service on install.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ftp_alg::config::{Config, DEFAULT_STATUS_SOCKET};
use ftp_alg::generate::OUTPUTS;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `(section, key, value)` for every assignment of a systemd unit file, in order.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, value)) = line.split_once('=') {
            entries.push((section.clone(), key.trim().into(), value.trim().into()));
        }
    }
    entries
}

struct Unit(Vec<(String, String, String)>);

impl Unit {
    fn load() -> Self {
        Self(unit_entries(&read("deploy/ftp-alg.service")))
    }

    /// Every value of `key` in `[Service]` (or `[Unit]`/`[Install]`), in order.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    fn one(&self, section: &str, key: &str) -> &str {
        match self.all(section, key).as_slice() {
            [value] => value,
            other => panic!("[{section}] {key}: expected one value, found {other:?}"),
        }
    }

    fn service(&self, key: &str) -> &str {
        self.one("Service", key)
    }
}

fn words(value: &str) -> BTreeSet<&str> {
    value.split_whitespace().collect()
}

/// `[package.metadata.deb]` from Cargo.toml.
fn deb_metadata() -> toml::Table {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml parses");
    manifest["package"]["metadata"]["deb"]
        .as_table()
        .expect("[package.metadata.deb]")
        .clone()
}

/// The `(source, destination)` pairs of the package's assets.
fn assets() -> Vec<(String, String)> {
    deb_metadata()["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|asset| {
            let asset = asset.as_array().expect("asset as [source, dest, mode]");
            (
                asset[0].as_str().unwrap().to_string(),
                asset[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn seconds(value: &str) -> u64 {
    let digits = value.trim_end_matches('s');
    digits
        .parse()
        .unwrap_or_else(|_| panic!("`{value}` is not N or Ns"))
}

#[test]
fn unit_is_type_notify_with_watchdog_reload_and_restart_on_failure() {
    let unit = Unit::load();
    assert_eq!(unit.service("Type"), "notify");
    // Only the daemon itself may report readiness: nft/ip children must not.
    assert_eq!(unit.service("NotifyAccess"), "main");
    assert!(seconds(unit.service("WatchdogSec")) > 0);
    assert_eq!(unit.service("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(unit.service("Restart"), "on-failure");
    assert_eq!(unit.one("Install", "WantedBy"), "multi-user.target");
}

#[test]
fn unit_starts_the_packaged_binary_with_the_packaged_config() {
    let unit = Unit::load();
    let exec = unit.service("ExecStart");
    assert_eq!(
        exec,
        "/usr/sbin/ftp-alg run --config /etc/ftp-alg/ftp-alg.toml"
    );
    // After any stop (a SIGKILL too) what the daemon left in the kernel goes; a failure of
    // the cleanup ('-') does not mark the unit failed.
    assert_eq!(
        unit.service("ExecStopPost"),
        "-/usr/sbin/ftp-alg cleanup --config /etc/ftp-alg/ftp-alg.toml"
    );
    let assets = assets();
    assert!(
        assets
            .iter()
            .any(|(src, dest)| src == "target/release/ftp-alg" && dest == "usr/sbin/"),
        "the binary is not packaged as /usr/sbin/ftp-alg: {assets:?}"
    );
    assert!(
        assets
            .iter()
            .any(|(src, dest)| src == "deploy/ftp-alg.toml" && dest == "etc/ftp-alg/ftp-alg.toml"),
        "the config is not packaged as /etc/ftp-alg/ftp-alg.toml: {assets:?}"
    );
    // The shipped config is the one the unit starts with, and it is valid.
    let config = Config::from_file(&Path::new(ROOT).join("deploy/ftp-alg.toml")).unwrap();
    config.validate().unwrap();
}

#[test]
fn unit_stop_timeout_outlasts_the_default_drain_grace() {
    let unit = Unit::load();
    let stop = seconds(unit.service("TimeoutStopSec"));
    let grace = Config::default().limits.drain_grace_secs;
    assert!(
        stop > grace,
        "TimeoutStopSec={stop}s would SIGKILL a drain of {grace}s and leave the table behind"
    );
}

#[test]
fn unit_runtime_directory_holds_the_default_status_socket() {
    let unit = Unit::load();
    let dir = Path::new("/run").join(unit.service("RuntimeDirectory"));
    assert_eq!(
        Path::new(DEFAULT_STATUS_SOCKET).parent(),
        Some(dir.as_path())
    );
}

#[test]
fn unit_grants_only_the_capabilities_the_daemon_uses() {
    let unit = Unit::load();
    let wanted = words("CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_CHOWN");
    assert_eq!(words(unit.service("CapabilityBoundingSet")), wanted);
    // Ambient: the daemon is not root (DynamicUser), and nft/ip inherit them.
    assert_eq!(words(unit.service("AmbientCapabilities")), wanted);
    assert_eq!(unit.service("DynamicUser"), "yes");
}

#[test]
fn unit_is_hardened() {
    let unit = Unit::load();
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
    ] {
        assert_eq!(unit.service(key), value, "{key}");
    }
    assert_eq!(
        words(unit.service("RestrictAddressFamilies")),
        words("AF_INET AF_INET6 AF_NETLINK AF_UNIX")
    );
    let filters = unit.all("Service", "SystemCallFilter");
    assert_eq!(filters.first(), Some(&"@system-service"), "{filters:?}");
    assert!(
        unit.all("Service", "PrivateNetwork").is_empty(),
        "the daemon works in the host's network namespace"
    );
}

#[test]
fn every_generated_file_is_packaged_and_nothing_else_is_expected_from_generate() {
    let generated: BTreeSet<String> = OUTPUTS
        .iter()
        .map(|(name, _)| format!("target/packaging/{name}"))
        .collect();
    let packaged: BTreeSet<String> = assets()
        .into_iter()
        .map(|(src, _)| src)
        .filter(|src| src.starts_with("target/packaging/"))
        .collect();
    assert_eq!(generated, packaged);
}

#[test]
fn package_installs_the_unit_but_neither_enables_nor_starts_it() {
    let meta = deb_metadata();
    let units = meta["systemd-units"].as_table().expect("systemd-units");
    assert_eq!(units["unit-scripts"].as_str(), Some("deploy/"));
    assert_eq!(units["enable"].as_bool(), Some(false));
    assert_eq!(units["start"].as_bool(), Some(false));
    let depends = meta["depends"].as_str().unwrap();
    // procps: /bin/kill, which ExecReload runs; conntrack: asked whether a data connection
    // still runs when a control connection goes idle.
    for package in ["nftables", "iproute2", "procps", "conntrack"] {
        assert!(depends.contains(package), "depends = {depends}");
    }
}

// ---- the built package --------------------------------------------------------------------

/// The package to check: `FTP_ALG_DEB`. Building one takes a release build and cargo-deb, so
/// `cargo test` alone does not; the packaging scripts build it and run this test with it set.
fn built_deb() -> PathBuf {
    std::env::var_os("FTP_ALG_DEB").map_or_else(
        || panic!("FTP_ALG_DEB not set: scripts/ci-packaging.sh builds a .deb and runs this"),
        PathBuf::from,
    )
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every path the package must hold, with its mode.
const EXPECTED: &[(&str, &str)] = &[
    ("./usr/sbin/ftp-alg", "-rwxr-xr-x"),
    ("./usr/lib/systemd/system/ftp-alg.service", "-rw-r--r--"),
    ("./etc/ftp-alg/ftp-alg.toml", "-rw-r--r--"),
    ("./usr/share/ftp-alg/ftp-alg.nft", "-rw-r--r--"),
    ("./usr/share/man/man8/ftp-alg.8.gz", "-rw-r--r--"),
    (
        "./usr/share/bash-completion/completions/ftp-alg",
        "-rw-r--r--",
    ),
    ("./usr/share/zsh/vendor-completions/_ftp-alg", "-rw-r--r--"),
    (
        "./usr/share/fish/vendor_completions.d/ftp-alg.fish",
        "-rw-r--r--",
    ),
    ("./usr/share/doc/ftp-alg/README.md", "-rw-r--r--"),
    ("./usr/share/doc/ftp-alg/copyright", "-rw-r--r--"),
];

#[test]
#[ignore = "needs a built package: scripts/ci-packaging.sh runs it with FTP_ALG_DEB"]
fn built_deb_holds_every_expected_path_with_its_mode() {
    let deb = built_deb();
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let files: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some((*fields.last()?, *fields.first()?))
        })
        .collect();
    for (path, mode) in EXPECTED {
        let found = files.iter().find(|(p, _)| p == path);
        assert_eq!(found.map(|(_, m)| *m), Some(*mode), "{path} in\n{listing}");
    }
    // Nothing is owned by anyone but root.
    for line in listing.lines() {
        assert!(line.contains(" 0/0 "), "not root-owned: {line}");
    }
}

#[test]
#[ignore = "needs a built package: scripts/ci-packaging.sh runs it with FTP_ALG_DEB"]
fn built_deb_declares_dependencies_and_the_conffile() {
    let deb = built_deb();
    let depends = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Depends"));
    for package in ["nftables", "iproute2", "procps", "conntrack", "libc6"] {
        assert!(depends.contains(package), "Depends: {depends}");
    }
    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(control.path()));
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/ftp-alg/ftp-alg.toml");
    // The unit is registered with deb-systemd-helper but not started or enabled on install:
    // `enable` only re-creates links of an admin who had enabled it (was-enabled), and an
    // upgrade restarts it only if it was running (try-restart).
    let postinst = std::fs::read_to_string(control.path().join("postinst")).unwrap();
    assert!(postinst.contains("deb-systemd-helper update-state ftp-alg.service"));
    assert!(postinst.contains("was-enabled ftp-alg.service"));
    assert!(postinst.contains("deb-systemd-invoke try-restart ftp-alg.service"));
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
    assert!(
        !postinst.contains("deb-systemd-invoke restart"),
        "{postinst}"
    );
    let postrm = std::fs::read_to_string(control.path().join("postrm")).unwrap();
    assert!(postrm.contains("deb-systemd-helper purge ftp-alg.service"));
}

#[test]
#[ignore = "needs a built package: scripts/ci-packaging.sh runs it with FTP_ALG_DEB"]
fn built_deb_ships_the_repository_files_and_the_generated_docs() {
    let deb = built_deb();
    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(root.path()));
    let installed = |path: &str| root.path().join(path.trim_start_matches('/'));
    for (packaged, source) in [
        (
            "/usr/lib/systemd/system/ftp-alg.service",
            "deploy/ftp-alg.service",
        ),
        ("/etc/ftp-alg/ftp-alg.toml", "deploy/ftp-alg.toml"),
        ("/usr/share/ftp-alg/ftp-alg.nft", "rules/ftp-alg.nft"),
        ("/usr/share/doc/ftp-alg/README.md", "README.md"),
    ] {
        let shipped = std::fs::read_to_string(installed(packaged)).unwrap();
        assert!(shipped == read(source), "{packaged} differs from {source}");
    }
    let man = run(Command::new("gzip")
        .arg("-dc")
        .arg(installed("/usr/share/man/man8/ftp-alg.8.gz")));
    assert!(man.contains("\n.TH FTP-ALG 8 "), "not a section-8 page");
    for sub in ["run", "check", "rules", "status"] {
        assert!(
            man.contains(&format!(".SS {sub}\n")),
            "man page lacks `{sub}`"
        );
    }
    let bash = std::fs::read_to_string(installed("/usr/share/bash-completion/completions/ftp-alg"))
        .unwrap();
    assert!(bash.contains("complete -F _ftp__alg") && bash.contains("lan-interface"));
    // The packaged binary runs and is this version.
    let version = run(Command::new(installed("/usr/sbin/ftp-alg")).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("ftp-alg {}", env!("CARGO_PKG_VERSION"))
    );
}
