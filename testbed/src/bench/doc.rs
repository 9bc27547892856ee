//! docs/performance.md holds one section per benchmark script; each script replaces only its own.
//! A section runs from its marker comment `<!-- section: KEY -->` to the next such marker (or the
//! end). A document written before the markers existed is recognised by its `## ` headings.

/// The document's opening, kept when present.
pub const PREAMBLE: &str = "# Performance\n\nEvery figure is measured by a script, against a baseline measured in the same run on the same\nnamespace topology, and is reproduced by the command given with it.\n";

/// Known sections in document order, with the heading prefix that identifies an unmarked one.
pub const SECTIONS: &[(&str, &str)] = &[
    ("ike", "## IKE handshakes"),
    ("scale", "## Scale"),
    ("dataplane", "## ESP dataplane"),
    ("ha", "## HA"),
];

fn marker(key: &str) -> String {
    format!("<!-- section: {key} (written by its script; rerunning the other script keeps it) -->")
}

/// Split a document into its preamble and (key, body) sections.
fn split(doc: &str) -> (String, Vec<(String, String)>) {
    let mut pre = String::new();
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in doc.split_inclusive('\n') {
        let t = line.trim_end();
        let marked =
            t.strip_prefix("<!-- section: ").and_then(|r| r.split([' ', '-']).next()).map(str::to_string);
        let headed = SECTIONS.iter().find(|(_, h)| t.starts_with(h)).map(|(k, _)| k.to_string());
        match (marked, headed) {
            (Some(k), _) => sections.push((k, String::new())),
            (None, Some(k)) => {
                // An unmarked heading starts a section unless the marker just opened this one.
                let opened = sections.last().is_some_and(|(lk, b)| *lk == k && b.trim().is_empty());
                if !opened {
                    sections.push((k, String::new()));
                }
                sections.last_mut().expect("pushed").1.push_str(line);
            }
            (None, None) => match sections.last_mut() {
                Some((_, b)) => b.push_str(line),
                None => pre.push_str(line),
            },
        }
    }
    (pre, sections)
}

/// `doc` with section `key` replaced by `body` (which starts with its `## ` heading), or added in
/// the order of `SECTIONS`. Other sections are kept byte for byte.
pub fn replace_section(doc: &str, key: &str, body: &str) -> String {
    let (mut pre, mut sections) = split(doc);
    if pre.trim().is_empty() {
        pre = PREAMBLE.to_string();
    }
    let mut body = body.trim_end().to_string();
    body.push('\n');
    match sections.iter_mut().find(|(k, _)| k == key) {
        Some(s) => s.1 = body,
        None => sections.push((key.to_string(), body)),
    }
    let order = |k: &str| SECTIONS.iter().position(|(s, _)| *s == k).unwrap_or(usize::MAX);
    sections.sort_by_key(|(k, _)| order(k));
    let mut out = pre.trim_end().to_string();
    out.push('\n');
    for (k, b) in sections {
        out.push('\n');
        out.push_str(&marker(&k));
        out.push('\n');
        out.push_str(b.trim_start_matches('\n').trim_end());
        out.push('\n');
    }
    out
}

/// Rewrite section `key` of the file at `path` (created when missing).
pub fn write_section(path: &str, key: &str, body: &str) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    std::fs::write(path, replace_section(&old, key, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str =
        "# Performance\n\nIntro.\n\n## IKE handshakes (x)\n\n| a |\n\n## ESP dataplane\n\nNot built yet.\n";

    #[test]
    fn replaces_only_its_own_section() {
        let d = replace_section(OLD, "dataplane", "## ESP dataplane (AES)\n\nfigures\n");
        assert!(d.starts_with("# Performance\n\nIntro.\n"));
        assert!(d.contains("## IKE handshakes (x)\n\n| a |\n"));
        assert!(d.contains("figures"));
        assert!(!d.contains("Not built yet"));
        // Again, now with markers: idempotent, and the other script's rewrite keeps this one.
        let d2 = replace_section(&d, "dataplane", "## ESP dataplane (AES)\n\nfigures\n");
        assert_eq!(d, d2);
        let d3 = replace_section(&d2, "ike", "## IKE handshakes (y)\n\n| b |\n");
        assert!(d3.contains("| b |") && !d3.contains("| a |") && d3.contains("figures"));
        assert!(d3.find("## IKE").unwrap() < d3.find("## ESP").unwrap());
        assert_eq!(d3.matches("<!-- section:").count(), 2);
    }

    #[test]
    fn creates_a_document() {
        let d = replace_section("", "dataplane", "## ESP dataplane\n\nx\n");
        assert!(d.starts_with(PREAMBLE.trim_end()));
        assert!(d.ends_with("## ESP dataplane\n\nx\n"));
    }
}
