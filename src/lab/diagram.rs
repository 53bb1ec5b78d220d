//! SVG sequence diagrams: three lanes (client, gateway, server), one row per observed step.
//!
//! This module only draws. What goes into a [`Sequence`] is decided from the observations of a
//! run (see `scenario::sequence`): the texts are the lines the peers really sent and received,
//! the addresses and ports are their sockets', the drops are the ones the gateway counted. The
//! SVG is self-contained (inline style, no external fonts or scripts), so it renders the same
//! in a browser, in an `<img>` on a documentation page and in a file viewer.

use std::fmt::Write as _;

/// A lane of the diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The FTP client.
    Client,
    /// The gateway between them.
    Gateway,
    /// The FTP server.
    Server,
}

impl Lane {
    fn x(self) -> f64 {
        match self {
            Self::Client => 130.0,
            Self::Gateway => 430.0,
            Self::Server => 730.0,
        }
    }
}

/// How an arrow is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A command on the control connection (solid, dark).
    Command,
    /// A reply on the control connection (dashed, grey).
    Reply,
    /// A connection being opened (SYN) that got through (solid, blue).
    Connect,
    /// Bytes on a data connection (thick, blue).
    Data,
    /// Something that did not get through (red, ends in a cross).
    Blocked,
    /// Something that never left its sender (a short red stub ending in a cross).
    NotSent,
}

/// One row of the diagram.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// An arrow from one lane to another, with a label above and an optional detail below.
    Arrow {
        /// Where it starts.
        from: Lane,
        /// Where it points (for [`Style::Blocked`]: where it is stopped).
        to: Lane,
        /// Above the line.
        label: String,
        /// Below the line, smaller.
        detail: Option<String>,
        /// How it is drawn.
        style: Style,
        /// Milliseconds since the start of the session, shown in the margin.
        at_ms: Option<u64>,
    },
    /// A note box on a lane (what the gateway did, what a peer concluded).
    Note {
        /// On which lane.
        lane: Lane,
        /// The text (one line).
        text: String,
        /// Red when it explains a failure.
        alarm: bool,
    },
}

/// A whole diagram.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// The title line (scenario).
    pub title: String,
    /// Lane headings: (name, address line) for client, gateway, server.
    pub lanes: [(String, String); 3],
    /// The rows, top to bottom.
    pub rows: Vec<Row>,
    /// The verdict at the bottom: success, and its words.
    pub verdict: (bool, String),
}

const WIDTH: f64 = 860.0;
const TOP: f64 = 96.0;
const ARROW_ROW: f64 = 40.0;
const NOTE_ROW: f64 = 30.0;
/// Approximate advance of the 11 px monospace font, for sizing boxes.
const CHAR_W: f64 = 6.7;

/// Escapes text for XML character data and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Shortens `text` to at most `max` characters, marking the cut.
fn fit(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

fn row_height(row: &Row) -> f64 {
    match row {
        Row::Arrow { .. } => ARROW_ROW,
        Row::Note { .. } => NOTE_ROW,
    }
}

/// Renders the diagram as a standalone SVG document.
pub fn render(seq: &Sequence) -> String {
    let rows_height: f64 = seq.rows.iter().map(row_height).sum();
    let verdict_lines = wrap(&seq.verdict.1, VERDICT_CHARS, 3);
    let verdict_y = TOP + rows_height + 14.0;
    let verdict_h = 14.0 + 16.0 * verdict_lines.len() as f64;
    let height = verdict_y + verdict_h + 14.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="11">
<title>{title}</title>
<defs>
<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="10" markerHeight="10" markerUnits="userSpaceOnUse" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#333"/></marker>
<marker id="arrow-blue" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="10" markerHeight="10" markerUnits="userSpaceOnUse" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#1565c0"/></marker>
<marker id="arrow-grey" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="10" markerHeight="10" markerUnits="userSpaceOnUse" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#777"/></marker>
</defs>
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>
<text x="{half}" y="20" text-anchor="middle" font-size="13" font-weight="bold">{title}</text>
"##,
        title = escape(&seq.title),
        half = WIDTH / 2.0,
    );
    for (lane, (name, address)) in [Lane::Client, Lane::Gateway, Lane::Server]
        .into_iter()
        .zip(&seq.lanes)
    {
        let x = lane.x();
        let w = (address.chars().count().max(name.chars().count()) as f64 * CHAR_W + 20.0)
            .clamp(150.0, 290.0);
        let _ = write!(
            svg,
            r##"<rect x="{bx}" y="32" width="{w}" height="44" rx="6" fill="#eceff1" stroke="#546e7a"/>
<text x="{x}" y="50" text-anchor="middle" font-weight="bold" font-size="12">{name}</text>
<text x="{x}" y="67" text-anchor="middle" fill="#37474f">{address}</text>
<line x1="{x}" y1="76" x2="{x}" y2="{end}" stroke="#90a4ae" stroke-dasharray="4 4"/>
"##,
            bx = x - w / 2.0,
            name = escape(&fit(name, 42)),
            address = escape(&fit(address, 42)),
            end = verdict_y - 6.0,
        );
    }
    let mut y = TOP;
    for row in &seq.rows {
        match row {
            Row::Arrow {
                from,
                to,
                label,
                detail,
                style,
                at_ms,
            } => draw_arrow(
                &mut svg,
                y,
                *from,
                *to,
                label,
                detail.as_deref(),
                *style,
                *at_ms,
            ),
            Row::Note { lane, text, alarm } => draw_note(&mut svg, y, *lane, text, *alarm),
        }
        y += row_height(row);
    }
    let ok = seq.verdict.0;
    let (fill, stroke, mark) = if ok {
        ("#e8f5e9", "#2e7d32", "✔")
    } else {
        ("#ffebee", "#c62828", "✘")
    };
    let _ = writeln!(
        svg,
        r##"<rect x="20" y="{verdict_y}" width="{w}" height="{verdict_h}" rx="6" fill="{fill}" stroke="{stroke}"/>"##,
        w = WIDTH - 40.0,
    );
    for (i, line) in verdict_lines.iter().enumerate() {
        let prefix = if i == 0 {
            format!("{mark} ")
        } else {
            "  ".into()
        };
        let _ = writeln!(
            svg,
            r##"<text x="34" y="{}" font-size="12" font-weight="bold" fill="{stroke}">{}{}</text>"##,
            verdict_y + 19.0 + 16.0 * i as f64,
            prefix,
            escape(line)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Characters of the bold verdict per line (12 px bold monospace in 820 px).
const VERDICT_CHARS: usize = 104;

/// Splits `text` at spaces into lines of at most `width` characters, at most `max` lines
/// (the last one cut with `…`).
fn wrap(text: &str, width: usize, max: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    for word in text.split(' ') {
        let len = current.chars().count();
        if len > 0 && len + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() || lines.is_empty() {
        lines.push(current);
    }
    if lines.len() > max {
        let rest = lines.split_off(max - 1).join(" ");
        lines.push(fit(&rest, width));
    }
    lines.into_iter().map(|l| fit(&l, width)).collect()
}

#[allow(clippy::too_many_arguments)]
fn draw_arrow(
    svg: &mut String,
    y: f64,
    from: Lane,
    to: Lane,
    label: &str,
    detail: Option<&str>,
    style: Style,
    at_ms: Option<u64>,
) {
    let (x1, x2) = (from.x(), to.x());
    let line_y = y + 20.0;
    let span = (x2 - x1).abs();
    let max_chars = ((span - 10.0) / CHAR_W).max(12.0) as usize;
    let dir = if x2 >= x1 { 1.0 } else { -1.0 };
    // Labels sit over the whole span, also for a stub.
    let mid = (x1 + x2) / 2.0;
    if let Some(ms) = at_ms {
        let _ = writeln!(
            svg,
            r##"<text x="8" y="{}" fill="#90a4ae" font-size="10">{}</text>"##,
            line_y + 4.0,
            format_ms(ms)
        );
    }
    let (stroke, width, dash, marker) = match style {
        Style::Command => ("#333333", 1.4, "", "url(#arrow)"),
        Style::Reply => ("#777777", 1.2, "5 3", "url(#arrow-grey)"),
        Style::Connect => ("#1565c0", 1.8, "", "url(#arrow-blue)"),
        Style::Data => ("#1565c0", 4.0, "", "url(#arrow-blue)"),
        Style::Blocked | Style::NotSent => ("#c62828", 1.8, "6 3", ""),
    };
    // Stop short of the lane line so that the head (or the cross) is visible on it; what was
    // never sent is a stub at its sender.
    let (x2, end_x) = if style == Style::NotSent {
        let x = x1 + dir * 40.0;
        (x, x)
    } else {
        (x2, x2 - dir * 4.0)
    };
    let _ = write!(
        svg,
        r##"<line x1="{x1}" y1="{line_y}" x2="{end_x}" y2="{line_y}" stroke="{stroke}" stroke-width="{width}""##
    );
    if !dash.is_empty() {
        let _ = write!(svg, r##" stroke-dasharray="{dash}""##);
    }
    if !marker.is_empty() {
        let _ = write!(svg, r##" marker-end="{marker}""##);
    }
    svg.push_str("/>\n");
    if matches!(style, Style::Blocked | Style::NotSent) {
        let cx = x2 - dir * 2.0;
        let _ = writeln!(
            svg,
            r##"<path d="M{a},{b} L{c},{d} M{a},{d} L{c},{b}" stroke="#c62828" stroke-width="3"/>"##,
            a = cx - 7.0,
            b = line_y - 7.0,
            c = cx + 7.0,
            d = line_y + 7.0,
        );
    }
    let label_fill = if matches!(style, Style::Blocked | Style::NotSent) {
        "#c62828"
    } else {
        "#212121"
    };
    // A stub's words go beside its cross, toward where it was meant to go.
    let (text_x, anchor) = if style == Style::NotSent {
        (x2 + dir * 14.0, if dir < 0.0 { "end" } else { "start" })
    } else {
        (mid, "middle")
    };
    let _ = writeln!(
        svg,
        r##"<text x="{text_x}" y="{}" text-anchor="{anchor}" fill="{label_fill}">{}</text>"##,
        line_y - 5.0,
        escape(&fit(label, max_chars))
    );
    if let Some(detail) = detail {
        let _ = writeln!(
            svg,
            r##"<text x="{text_x}" y="{}" text-anchor="{anchor}" fill="#546e7a" font-size="10">{}</text>"##,
            line_y + 13.0,
            escape(&fit(detail, max_chars + max_chars / 10))
        );
    }
}

fn draw_note(svg: &mut String, y: f64, lane: Lane, text: &str, alarm: bool) {
    let text = fit(text, 110);
    let w = text.chars().count() as f64 * CHAR_W + 16.0;
    let x = lane.x();
    // Keep the box inside the canvas even for long notes on an outer lane.
    let left = (x - w / 2.0).clamp(6.0, (WIDTH - 6.0 - w).max(6.0));
    let (fill, stroke, ink) = if alarm {
        ("#ffebee", "#c62828", "#b71c1c")
    } else {
        ("#fff8e1", "#f9a825", "#5d4037")
    };
    let _ = write!(
        svg,
        r##"<rect x="{left}" y="{ry}" width="{w}" height="20" rx="4" fill="{fill}" stroke="{stroke}"/>
<text x="{tx}" y="{ty}" text-anchor="middle" fill="{ink}">{text}</text>
"##,
        ry = y + 4.0,
        tx = left + w / 2.0,
        ty = y + 18.0,
        text = escape(&text),
    );
}

fn format_ms(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sequence {
        Sequence {
            title: "routed / PORT / no helper".into(),
            lanes: [
                ("client".into(), "192.0.2.2".into()),
                ("gateway".into(), "192.0.2.1 | 203.0.113.1".into()),
                ("server".into(), "203.0.113.2".into()),
            ],
            rows: vec![
                Row::Arrow {
                    from: Lane::Client,
                    to: Lane::Server,
                    label: "PORT 192,0,2,2,156,187".into(),
                    detail: Some("= 192.0.2.2:40123".into()),
                    style: Style::Command,
                    at_ms: Some(3),
                },
                Row::Arrow {
                    from: Lane::Server,
                    to: Lane::Gateway,
                    label: "SYN 203.0.113.2:20 → 192.0.2.2:40123 ×2".into(),
                    detail: None,
                    style: Style::Blocked,
                    at_ms: Some(2010),
                },
                Row::Note {
                    lane: Lane::Gateway,
                    text: "dropped by the forward chain <policy drop> & logged".into(),
                    alarm: true,
                },
            ],
            verdict: (false, "SYN dropped".into()),
        }
    }

    #[test]
    fn the_svg_names_every_label_and_escapes_markup() {
        let svg = render(&sample());
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("PORT 192,0,2,2,156,187"));
        assert!(svg.contains("192.0.2.2:40123"));
        assert!(svg.contains("&lt;policy drop&gt; &amp; logged"));
        assert!(!svg.contains("<policy"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
    }

    #[test]
    fn a_long_verdict_wraps_at_spaces() {
        let text = "word ".repeat(60);
        let lines = wrap(text.trim(), 30, 3);
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.chars().count() <= 30));
        assert!(lines[2].ends_with('…'));
        assert_eq!(wrap("short", 30, 3), vec!["short".to_owned()]);
    }

    #[test]
    fn long_labels_are_cut_to_the_arrow() {
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
    }
}
