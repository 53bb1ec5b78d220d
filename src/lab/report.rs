//! The lab's outputs: the table printed at the end, one HTML page with the table beside the
//! diagrams, `results.json` for programs, and what `--keep` left behind.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use super::DataMode;
use super::diagram::escape;
use super::scenario::{CellResult, KeptLab, LabReport, ScenarioId, Topology, Variant};

/// The text of one table cell: `ok`, `FAIL(n)` with a footnote number, `!` when unexpected.
fn cell_text(cell: Option<&CellResult>, footnote: Option<usize>) -> String {
    let Some(cell) = cell else {
        return "·".into();
    };
    let mut text = if cell.verdict.ok {
        "ok".to_owned()
    } else {
        format!("FAIL({})", footnote.unwrap_or(0))
    };
    if !cell.as_expected() {
        text.push('!');
    }
    text
}

/// Footnote numbers of the failed (or unexpected) cells, in table order.
fn footnotes(report: &LabReport) -> Vec<&CellResult> {
    report
        .cells
        .iter()
        .filter(|c| !c.verdict.ok || !c.as_expected())
        .collect()
}

fn footnote_of(report: &LabReport, id: &ScenarioId) -> Option<usize> {
    footnotes(report)
        .iter()
        .position(|c| c.id == *id)
        .map(|i| i + 1)
}

/// The table: one row per topology and mode, one column per variant, then why each failure
/// happened.
pub fn table(report: &LabReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ftp-alg lab: {} sessions in {:.1} s — each logs in, negotiates the mode, downloads \
         {} bytes and compares them",
        report.cells.len(),
        report.elapsed.as_secs_f64(),
        super::scenario::FILE_LEN
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<12} {:<5} {:<12} {:<14} {:<10}",
        "topology", "mode", "no helper", "kernel helper", "ftp-alg"
    );
    for topology in Topology::ALL {
        for mode in DataMode::ALL {
            let cells: Vec<Option<&CellResult>> = Variant::ALL
                .iter()
                .map(|&variant| {
                    report.cell(&ScenarioId {
                        topology,
                        mode,
                        variant,
                    })
                })
                .collect();
            if cells.iter().all(Option::is_none) {
                continue;
            }
            let text: Vec<String> = cells
                .iter()
                .map(|c| cell_text(*c, c.and_then(|c| footnote_of(report, &c.id))))
                .collect();
            let _ = writeln!(
                out,
                "{:<12} {:<5} {:<12} {:<14} {:<10}",
                topology.name(),
                mode.command(),
                text[0],
                text[1],
                text[2]
            );
        }
    }
    let notes = footnotes(report);
    if !notes.is_empty() {
        let _ = writeln!(out, "\nwhy:");
        for (i, cell) in notes.iter().enumerate() {
            let unexpected = cell
                .unexpected_note()
                .map(|note| format!(" — UNEXPECTED: {note}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "({}) {}: {}{unexpected}",
                i + 1,
                cell.id,
                cell.verdict.text
            );
        }
    }
    let _ = writeln!(out, "\ngateways:");
    for topology in Topology::ALL {
        if report.cells.iter().any(|c| c.id.topology == topology) {
            let _ = writeln!(
                out,
                "  {:<11} {}: {}",
                topology.name(),
                topology.title(),
                topology.firewall()
            );
        }
    }
    let _ = writeln!(
        out,
        "  kernel helper: ct helper \"ftp\" on the control connection + nf_nat_ftp; ftp-alg: \
         this binary, `ftp-alg run` in the gateway"
    );
    if report.cells.iter().any(|c| !c.as_expected()) {
        let _ = writeln!(
            out,
            "\n`!` marks a cell that is not what the physics predicts."
        );
    }
    out
}

/// How to look at the namespaces `--keep` left, and how to remove them.
pub fn kept_instructions(kept: &[KeptLab]) -> String {
    let mut out = String::from(
        "\nnamespaces kept (their firewall rules and the drop recorder's set are still there; \
         the FTP peers and ftp-alg were stopped):\n",
    );
    for lab in kept {
        let _ = writeln!(
            out,
            "  {} / {}: {}",
            lab.topology.name(),
            lab.variant.name(),
            lab.namespaces.join(" ")
        );
        if let Some(gateway) = lab.namespaces.get(1) {
            let _ = writeln!(out, "    explore:  sudo ip netns exec {gateway} bash");
            let _ = writeln!(
                out,
                "              sudo ip netns exec {gateway} nft list ruleset"
            );
            let _ = writeln!(out, "    watch:    sudo ftp-alg watch --netns {gateway}");
        }
        if let Some(command) = &lab.alg_command {
            let _ = writeln!(out, "    ftp-alg ran as: ip netns exec <gateway> {command}");
        }
        let _ = writeln!(
            out,
            "    delete:   for ns in {}; do sudo ip netns pids $ns | xargs -r sudo kill; sudo ip netns del $ns; done",
            lab.namespaces.join(" ")
        );
    }
    out.push_str(
        "  (kept on purpose: later lab runs and test runs leave them, and the shells you open \
         in them, alone; delete them with the line above)\n",
    );
    out
}

/// Writes every SVG, `index.html` and `results.json` into `dir` (created if missing).
pub fn write(dir: &Path, report: &LabReport) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for cell in &report.cells {
        let path = dir.join(format!("{}.svg", cell.id.file_stem()));
        std::fs::write(&path, cell.svg())?;
        written.push(path);
    }
    let html = dir.join("index.html");
    std::fs::write(&html, page(report))?;
    written.push(html);
    let json = dir.join("results.json");
    let text = serde_json::to_string_pretty(&results_json(report)).map_err(io::Error::other)?;
    std::fs::write(&json, text)?;
    written.push(json);
    Ok(written)
}

/// The machine-readable results.
pub fn results_json(report: &LabReport) -> serde_json::Value {
    let cells: Vec<serde_json::Value> = report
        .cells
        .iter()
        .map(|cell| {
            serde_json::json!({
                "id": cell.id.to_string(),
                "topology": cell.id.topology.name(),
                "mode": cell.id.mode.command(),
                "variant": cell.id.variant.name(),
                "ok": cell.verdict.ok,
                "expected_ok": cell.id.expected_ok(),
                "as_expected": cell.as_expected(),
                "text": cell.verdict.text,
                "svg": format!("{}.svg", cell.id.file_stem()),
                "ports": cell.ports.iter().collect::<Vec<_>>(),
                "dropped": cell.dropped.iter().map(|d| serde_json::json!({
                    "src": d.src.to_string(), "dst": d.dst.to_string(), "packets": d.packets,
                })).collect::<Vec<_>>(),
                "findings": cell.findings.iter().map(|f| f.text.clone()).collect::<Vec<_>>(),
                "events": cell.events.iter().map(|e| serde_json::json!({
                    "at_ms": e.at.as_millis() as u64,
                    "side": format!("{:?}", e.side).to_ascii_lowercase(),
                    "what": format!("{:?}", e.what),
                })).collect::<Vec<_>>(),
                "elapsed_secs": cell.elapsed.as_secs_f64(),
            })
        })
        .collect();
    serde_json::json!({
        "elapsed_secs": report.elapsed.as_secs_f64(),
        "matches_physics": report.matches_physics(),
        "cells": cells,
    })
}

const STYLE: &str = r#"
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 0; color: #212121; background: #fafafa; }
header { padding: 14px 24px; background: #263238; color: #eceff1; }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 4px 0 0; font-size: 13px; color: #b0bec5; }
.layout { display: grid; grid-template-columns: minmax(420px, 36%) 1fr; gap: 20px; padding: 16px 24px; align-items: start; }
.side { position: sticky; top: 12px; }
table { border-collapse: collapse; font-size: 13px; width: 100%; background: #fff; }
th, td { border: 1px solid #cfd8dc; padding: 5px 7px; text-align: left; }
th { background: #eceff1; }
td.ok a { color: #1b5e20; } td.ok { background: #e8f5e9; }
td.fail a { color: #b71c1c; } td.fail { background: #ffebee; }
td.unexpected { outline: 3px solid #ff6f00; outline-offset: -3px; }
td a { text-decoration: none; font-weight: bold; display: block; }
td.topo { font-weight: bold; background: #f5f5f5; }
ol.why { font-size: 12px; padding-left: 22px; }
ol.why li { margin-bottom: 5px; }
.legend { font-size: 12px; color: #455a64; }
.diagrams section { background: #fff; border: 1px solid #cfd8dc; border-radius: 6px; padding: 10px 14px; margin-bottom: 18px; }
.diagrams h3 { margin: 0 0 4px; font-size: 15px; }
.diagrams .verdict { font-size: 13px; margin: 0 0 8px; }
.diagrams .verdict.ok { color: #1b5e20; } .diagrams .verdict.fail { color: #b71c1c; }
.diagrams img { width: 100%; max-width: 860px; height: auto; display: block; }
details { font-size: 12px; margin-top: 6px; }
details pre { white-space: pre-wrap; background: #f5f5f5; padding: 6px; }
"#;

/// The HTML page: the table (sticky, cells link to their diagram) beside the diagrams.
pub fn page(report: &LabReport) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>ftp-alg lab</title><style>{STYLE}</style></head><body>\n\
         <header><h1>ftp-alg lab: active and passive FTP through three gateways</h1>\
         <p>{} sessions in {:.1} s. Each session logs in, negotiates the mode, downloads {} bytes \
         and compares them. Every diagram is drawn from what that session's peers and the \
         gateway observed.</p></header>\n<div class=\"layout\"><div class=\"side\">\n",
        report.cells.len(),
        report.elapsed.as_secs_f64(),
        super::scenario::FILE_LEN
    );
    html.push_str(
        "<table><tr><th>topology</th><th>mode</th><th>no helper</th><th>kernel helper</th><th>ftp-alg</th></tr>\n",
    );
    for topology in Topology::ALL {
        let modes: Vec<DataMode> = DataMode::ALL
            .into_iter()
            .filter(|&mode| {
                Variant::ALL.iter().any(|&variant| {
                    report
                        .cell(&ScenarioId {
                            topology,
                            mode,
                            variant,
                        })
                        .is_some()
                })
            })
            .collect();
        for (i, mode) in modes.iter().enumerate() {
            html.push_str("<tr>");
            if i == 0 {
                let _ = write!(
                    html,
                    "<td class=\"topo\" rowspan=\"{}\" title=\"{}\">{}</td>",
                    modes.len(),
                    escape(topology.firewall()),
                    escape(topology.title())
                );
            }
            let _ = write!(html, "<td>{mode}</td>");
            for variant in Variant::ALL {
                let id = ScenarioId {
                    topology,
                    mode: *mode,
                    variant,
                };
                match report.cell(&id) {
                    None => html.push_str("<td>·</td>"),
                    Some(cell) => {
                        let class = format!(
                            "{}{}",
                            if cell.verdict.ok { "ok" } else { "fail" },
                            if cell.as_expected() {
                                ""
                            } else {
                                " unexpected"
                            }
                        );
                        let _ = write!(
                            html,
                            "<td class=\"{class}\" title=\"{}\"><a href=\"#{}\">{}</a></td>",
                            escape(&cell.verdict.text),
                            cell.id.file_stem(),
                            escape(&cell_text(Some(cell), footnote_of(report, &cell.id)))
                        );
                    }
                }
            }
            html.push_str("</tr>\n");
        }
    }
    html.push_str("</table>\n");
    let notes = footnotes(report);
    if !notes.is_empty() {
        html.push_str("<ol class=\"why\">\n");
        for cell in notes {
            let _ = writeln!(
                html,
                "<li><a href=\"#{}\">{}</a>: {}{}</li>",
                cell.id.file_stem(),
                escape(&cell.id.to_string()),
                escape(&cell.verdict.text),
                cell.unexpected_note()
                    .map(|note| format!(
                        " <b>(not what the physics predicts: {})</b>",
                        escape(&note)
                    ))
                    .unwrap_or_default()
            );
        }
        html.push_str("</ol>\n");
    }
    html.push_str("<div class=\"legend\"><p><b>Gateways</b></p><ul>\n");
    for topology in Topology::ALL {
        let _ = writeln!(
            html,
            "<li><b>{}</b> ({}): {}</li>",
            escape(topology.title()),
            topology.name(),
            escape(topology.firewall())
        );
    }
    html.push_str(
        "<li><b>kernel helper</b>: <code>ct helper \"ftp\"</code> on the control connection \
         + nf_nat_ftp; <b>ftp-alg</b>: <code>ftp-alg run</code> in the gateway</li></ul>\
         <p>Cells link to their diagram; hover a cell for its verdict.</p></div>\n",
    );
    html.push_str("</div>\n<div class=\"diagrams\">\n");
    for cell in &report.cells {
        let _ = writeln!(
            html,
            "<section id=\"{stem}\"><h3>{title}</h3><p class=\"verdict {class}\">{mark} {text}</p>\
             <img src=\"{stem}.svg\" alt=\"sequence diagram of {id}\">",
            stem = cell.id.file_stem(),
            title = escape(&format!(
                "{} · {} · {}",
                cell.id.topology.title(),
                cell.id.mode,
                cell.id.variant.title()
            )),
            class = if cell.verdict.ok { "ok" } else { "fail" },
            mark = if cell.verdict.ok { "✔" } else { "✘" },
            text = escape(&cell.verdict.text),
            id = cell.id,
        );
        if !cell.findings.is_empty() {
            html.push_str(
                "<details><summary>what <code>ftp-alg watch</code> says about the gateway's capture</summary><pre>",
            );
            for finding in &cell.findings {
                let _ = writeln!(
                    html,
                    "[{:>7.3}] {}",
                    finding.at.as_secs_f64(),
                    escape(&finding.text)
                );
            }
            html.push_str("</pre></details>\n");
        }
        html.push_str("</section>\n");
    }
    html.push_str("</div></div></body></html>\n");
    html
}
