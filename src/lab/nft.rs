//! Read-only looks at nftables state inside a lab namespace.

use super::error::Result;
use super::netns::Netns;

/// The ALG's table (family `inet`).
pub const ALG_TABLE: &str = "ftp_alg";

/// The pinhole sets and maps of the ALG's table that must be empty once sessions ended:
/// `(kind, name)` with kind `"set"` or `"map"` (the `_hot` sets take the keys reused within
/// seconds; see `rules/ftp-alg.nft`).
pub const ALG_PINHOLE_OBJECTS: [(&str, &str); 16] = [
    ("set", "passive_pin"),
    ("set", "passive_pin_hot"),
    ("set", "active_pin"),
    ("set", "active_pin_hot"),
    ("set", "dnat_once"),
    ("set", "dnat_once_hot"),
    ("map", "dnat_to"),
    ("map", "snat_to"),
    ("set", "passive_pin6"),
    ("set", "passive_pin6_hot"),
    ("set", "active_pin6"),
    ("set", "active_pin6_hot"),
    ("set", "dnat_once6"),
    ("set", "dnat_once6_hot"),
    ("map", "dnat_to6"),
    ("map", "snat_to6"),
];

/// Whether table `family name` exists in `ns`.
pub fn table_exists(ns: &Netns, family: &str, name: &str) -> Result<bool> {
    Ok(ns
        .exec(&["nft", "list", "table", family, name])?
        .status
        .success())
}

/// `nft -j list <kind> inet <table> <name>`: the JSON text (an error if the object is missing).
pub fn list_json(ns: &Netns, kind: &str, table: &str, name: &str) -> Result<String> {
    let out = ns.exec_ok(&["nft", "-j", "list", kind, "inet", table, name])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether an nft JSON listing of a set or map holds elements (`"elem"` appears only then).
pub fn json_has_elements(json: &str) -> bool {
    json.contains("\"elem\"")
}

/// The ALG's pinhole sets/maps that still hold elements, with their JSON listing.
pub fn alg_leftover_pinholes(ns: &Netns) -> Result<Vec<(String, String)>> {
    let mut leftovers = Vec::new();
    for (kind, name) in ALG_PINHOLE_OBJECTS {
        let json = list_json(ns, kind, ALG_TABLE, name)?;
        if json_has_elements(&json) {
            leftovers.push((format!("{kind} {name}"), json));
        }
    }
    Ok(leftovers)
}

/// The whole ruleset of `ns` as text (for failure messages).
pub fn ruleset(ns: &Netns) -> String {
    ns.exec(&["nft", "list", "ruleset"])
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_else(|e| format!("(nft list ruleset failed: {e})"))
}

#[cfg(test)]
mod tests {
    use super::json_has_elements;

    #[test]
    fn elements_are_detected_in_nft_json() {
        let empty = r#"{"nftables": [{"metainfo": {}}, {"set": {"family": "inet", "name": "s", "flags": ["timeout"]}}]}"#;
        let full = r#"{"nftables": [{"metainfo": {}}, {"set": {"name": "s", "elem": [{"elem": {"val": {"concat": ["1.2.3.4", "5.6.7.8", 80]}, "timeout": 30}}]}}]}"#;
        assert!(!json_has_elements(empty));
        assert!(json_has_elements(full));
    }
}
