//! Read-only looks at a namespace's policy routing: what routed mode's daemon installs (an
//! `ip rule` on its fwmark and `local` default routes in its table, both families) must be
//! gone after it exits.

use super::error::Result;
use super::netns::Netns;

/// The daemon's default fwmark for routed mode's policy routing (`routing.fwmark`).
pub const ALG_ROUTE_MARK: u32 = 0x2122;
/// The daemon's default routing table for routed mode (`routing.table`).
pub const ALG_ROUTE_TABLE: u32 = 2121;

/// Every `ip rule` naming `fwmark` or `lookup table`, and every route in `table`, for IPv4
/// and IPv6, prefixed with what listed it; empty when nothing of the kind exists.
pub fn policy_routing_entries(ns: &Netns, fwmark: u32, table: u32) -> Result<Vec<String>> {
    let mark = format!("fwmark {fwmark:#x}");
    let lookup = format!("lookup {table} ");
    let table = table.to_string();
    let mut found = Vec::new();
    for family in ["-4", "-6"] {
        let rules = ns.exec(&["ip", family, "rule", "show"])?;
        for line in String::from_utf8_lossy(&rules.stdout).lines() {
            // `32765:	from all fwmark 0x2122 lookup 2121`: compare word by word.
            let words = line.split_whitespace().collect::<Vec<_>>().join(" ");
            if words.contains(&mark) || format!("{words} ").contains(&lookup) {
                found.push(format!("ip {family} rule: {}", line.trim()));
            }
        }
        // A table that never existed lists nothing (or fails): both mean "no routes".
        let routes = ns.exec(&["ip", family, "route", "show", "table", &table])?;
        if routes.status.success() {
            for line in String::from_utf8_lossy(&routes.stdout).lines() {
                if !line.trim().is_empty() {
                    found.push(format!("ip {family} route table {table}: {}", line.trim()));
                }
            }
        }
    }
    Ok(found)
}
