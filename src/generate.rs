//! The man page and shell completions, generated from the clap definitions in [`crate::cli`]
//! so that they can never disagree with `--help`. `ftp-alg generate --out DIR` (hidden) writes
//! them; `scripts/package.sh` runs it before `cargo deb` packs them.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Command, CommandFactory};
use clap_complete::Shell;
use clap_mangen::Man;

use crate::cli::Cli;

/// Arguments of the hidden `generate` subcommand.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Directory the man page and the completions are written to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// The name the binary is installed and completed as.
const BIN: &str = "ftp-alg";

/// The files [`write_all`] writes, as (file name, what it is). The packaging metadata in
/// Cargo.toml maps each to its installed path.
pub const OUTPUTS: [(&str, Output); 4] = [
    ("ftp-alg.8", Output::ManPage),
    ("ftp-alg.bash", Output::Completion(Shell::Bash)),
    ("_ftp-alg", Output::Completion(Shell::Zsh)),
    ("ftp-alg.fish", Output::Completion(Shell::Fish)),
];

/// One generated artefact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The section-8 manual page (roff).
    ManPage,
    /// A completion script for one shell.
    Completion(Shell),
}

impl Output {
    /// The artefact's bytes.
    pub fn render(self) -> io::Result<Vec<u8>> {
        match self {
            Self::ManPage => man_page(),
            Self::Completion(shell) => Ok(completion(shell)),
        }
    }
}

/// Writes every artefact of [`OUTPUTS`] into `dir`; returns the paths written.
pub fn write_all(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    OUTPUTS
        .iter()
        .map(|(name, output)| {
            let path = dir.join(name);
            std::fs::write(&path, output.render()?)?;
            Ok(path)
        })
        .collect()
}

/// The completion script for `shell`.
pub fn completion(shell: Shell) -> Vec<u8> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut visible_command(), BIN, &mut buf);
    buf
}

/// The command line as users see it. clap_complete offers hidden subcommands too, so the
/// completions are generated from a copy without them.
fn visible_command() -> Command {
    let cli = Cli::command();
    Command::new(BIN)
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(cli.is_subcommand_required_set())
        .subcommands(cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// The man page, section 8: the top-level synopsis and options, then one subsection per
/// (visible) subcommand with its own synopsis and options, then the files it uses.
pub fn man_page() -> io::Result<Vec<u8>> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = Man::new(cmd.clone())
        .title("FTP-ALG")
        .section("8")
        .manual("System Administration");
    // Each clap_mangen fragment starts with the same string-definition preamble; keep the
    // title's and drop the others.
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    page.extend(section(|w| man.render_name_section(w))?);
    page.extend(section(|w| man.render_synopsis_section(w))?);
    page.extend_from_slice(DESCRIPTION_SECTION.as_bytes());
    page.extend(section(|w| man.render_options_section(w))?);

    writeln!(page, ".SH COMMANDS")?;
    // Subcommands that take exactly the same arguments as an earlier one refer to it rather
    // than repeat a long option list.
    let mut seen: Vec<(String, Vec<String>)> = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        render_subcommand(&mut page, sub, &mut seen)?;
    }
    page.extend_from_slice(FILES_SECTION.as_bytes());
    page.extend(section(|w| man.render_version_section(w))?);
    Ok(page)
}

fn render_subcommand(
    page: &mut Vec<u8>,
    sub: &Command,
    seen: &mut Vec<(String, Vec<String>)>,
) -> io::Result<()> {
    writeln!(page, ".SS {}", sub.get_name())?;
    if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
        writeln!(page, "{}", escape(&about.to_string()))?;
    }
    // clap's short usage (`ftp-alg run [OPTIONS]`), not clap_mangen's synopsis, which spells
    // out every flag a second time.
    let usage = sub.clone().render_usage().to_string();
    let usage = usage.trim_start_matches("Usage:").trim();
    writeln!(page, ".PP\n\\fB{}\\fR", escape(usage).replace('-', "\\-"))?;

    let arguments: Vec<String> = sub
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .map(|a| a.get_id().to_string())
        .collect();
    if let Some((earlier, _)) = seen.iter().find(|(_, args)| *args == arguments) {
        writeln!(page, ".PP\nOptions: as for \\fB{earlier}\\fR.")?;
    } else if !arguments.is_empty() {
        writeln!(page, ".PP\nOptions:")?;
        let man = Man::new(sub.clone());
        page.extend(without_heading(&section(|w| {
            man.render_options_section(w)
        })?));
    }
    seen.push((sub.get_name().to_string(), arguments));
    Ok(())
}

/// Renders one clap_mangen section into a buffer, without the preamble every fragment repeats
/// (`.ie \n(.g .ds Aq \(aq` / `.el .ds Aq '`).
fn section(render: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    render(&mut buf)?;
    Ok(buf
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| !line.starts_with(b".ie \\n(.g .ds Aq") && !line.starts_with(b".el .ds Aq"))
        .flatten()
        .copied()
        .collect())
}

/// A section's roff without its `.SH` heading lines, to nest it under a subcommand's `.SS`.
fn without_heading(roff: &[u8]) -> Vec<u8> {
    roff.split_inclusive(|&b| b == b'\n')
        .filter(|line| !line.starts_with(b".SH"))
        .flatten()
        .copied()
        .collect()
}

/// Escapes text for roff: backslashes, and a leading `.` or `'` that would read as a request.
fn escape(text: &str) -> String {
    text.lines()
        .map(|line| {
            let line = line.replace('\\', "\\\\");
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const DESCRIPTION_SECTION: &str = r#".SH DESCRIPTION
\fBftp\-alg\fR runs on a Linux gateway as a transparent proxy for the FTP control channel.
Its own nftables table redirects FTP control connections from the LAN interfaces to its
listener; it reads PORT/EPRT commands and 227/229 replies, rewrites the embedded addresses
where NAT requires it, and opens one single\-use, tuple\-exact pinhole per data connection.
The data connections themselves are forwarded by the kernel.
.PP
Settings come from a TOML file (\fB\-\-config\fR); every key also has a flag, which
overrides the file. \fBftp\-alg check\fR validates a configuration and prints the effective
settings; \fBftp\-alg rules\fR prints the table the daemon would install.
.PP
The daemon needs CAP_NET_ADMIN (nftables, policy routing, transparent sockets), and
CAP_NET_BIND_SERVICE only for listeners below port 1024. It spawns \fBnft\fR(8) and
\fBip\fR(8) to install and remove its table.
.SH SIGNALS
.TP
SIGHUP
Re\-read the configuration; sessions are kept. An invalid configuration is refused with a log
line and the running one stays.
.TP
SIGTERM, SIGINT
Stop accepting, let sessions finish for up to the drain grace period, then remove the table.
"#;

const FILES_SECTION: &str = r#".SH FILES
.TP
\fI/etc/ftp\-alg/ftp\-alg.toml\fR
The configuration (check it with \fBftp\-alg check \-\-config\fR \fIFILE\fR).
.TP
\fI/usr/share/ftp\-alg/ftp\-alg.nft\fR
The nftables table the daemon installs, with placeholders; \fBftp\-alg rules\fR prints it
filled in for a configuration.
.TP
\fI/run/ftp\-alg/status.sock\fR
The daemon's status socket, when it runs under systemd.
.TP
\fI/usr/lib/systemd/system/ftp\-alg.service\fR
The systemd unit (Type=notify; \fBsystemctl reload\fR sends SIGHUP).
.SH SEE ALSO
\fBnft\fR(8), \fBip\fR(8), \fBsystemd.exec\fR(5), \fI/usr/share/doc/ftp\-alg/README.md\fR
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn man_text() -> String {
        String::from_utf8(man_page().unwrap()).unwrap()
    }

    #[test]
    fn man_page_is_section_8_and_documents_every_visible_subcommand() {
        let text = man_text();
        assert!(text.contains("\n.TH FTP-ALG 8 "), "no section-8 title");
        assert_eq!(
            text.matches(".ds Aq").count(),
            2,
            "one preamble (two lines)"
        );
        let cli = Cli::command();
        let visible: Vec<_> = cli.get_subcommands().filter(|s| !s.is_hide_set()).collect();
        assert!(visible.len() >= 3);
        for sub in visible {
            assert!(
                text.contains(&format!(".SS {}\n", sub.get_name())),
                "no subsection for `{}`",
                sub.get_name()
            );
        }
        assert!(
            !text.contains(".SS generate"),
            "the hidden subcommand leaked"
        );
    }

    #[test]
    fn man_page_lists_every_long_flag_of_every_subcommand() {
        let text = man_text();
        for sub in Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
        {
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                if let Some(long) = arg.get_long() {
                    // roff escapes '-' as '\-'.
                    let flag = format!("\\-\\-{}", long.replace('-', "\\-"));
                    assert!(text.contains(&flag), "`--{long}` of `{}`", sub.get_name());
                }
            }
        }
    }

    #[test]
    fn subcommands_with_the_same_options_refer_to_the_first() {
        let text = man_text();
        // run, check and rules share Settings: one option list, two references.
        assert_eq!(text.matches("\\-\\-lan\\-interface").count(), 1, "{text}");
        assert!(text.contains("Options: as for \\fBrun\\fR."));
    }

    #[test]
    fn every_completion_knows_every_visible_subcommand() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completion(shell)).unwrap();
            for sub in Cli::command()
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
            {
                assert!(
                    script.contains(sub.get_name()),
                    "{shell}: `{}` missing",
                    sub.get_name()
                );
            }
            assert!(script.contains("lan-interface"), "{shell}: flags missing");
            assert!(
                !script.contains("generate"),
                "{shell}: hidden subcommand offered"
            );
        }
    }

    #[test]
    fn write_all_writes_every_output() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_all(dir.path()).unwrap();
        assert_eq!(written.len(), OUTPUTS.len());
        for path in written {
            assert!(std::fs::metadata(&path).unwrap().len() > 100, "{path:?}");
        }
    }
}
