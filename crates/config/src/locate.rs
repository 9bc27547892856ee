//! Find where a key path was written, so validation errors can name file:line.
//!
//! TOML parse errors carry a byte span; validation errors happen after deserialization, so we look the
//! key up in the text: the table header (`[vpn.x]`, `[[vpn.x.security-policy]]`) and then the key line
//! within it. Good enough for files written by hand; falls back to the table header or line 1.

/// 1-based line of `key` inside the table `table` (dotted, e.g. "vpn.site"), or of the table itself.
pub fn line_of(text: &str, table: &str, key: Option<&str>, nth_array_entry: Option<usize>) -> usize {
    let mut in_table = table.is_empty();
    let mut table_line = 1;
    let mut seen = 0usize;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let name =
                t.trim_start_matches('[').split(']').next().unwrap_or("").trim().replace(['"', ' '], "");
            let matches = name == table;
            in_table = matches
                && match nth_array_entry {
                    Some(n) => {
                        seen += 1;
                        seen == n + 1
                    }
                    None => true,
                };
            if in_table {
                table_line = i + 1;
                if key.is_none() {
                    return table_line;
                }
            }
            continue;
        }
        if in_table {
            if let Some(k) = key {
                let lhs = t.split('=').next().unwrap_or("").trim().trim_matches('"');
                if t.contains('=') && lhs == k {
                    return i + 1;
                }
            }
        }
    }
    table_line
}

/// 1-based (line, column) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_in_tables_and_array_entries() {
        let t = "[a]\nx = 1\n[vpn.s]\nike-policy = \"z\"\n[[vpn.s.security-policy]]\nname = \"1\"\n[[vpn.s.security-policy]]\nname = \"2\"\n";
        assert_eq!(line_of(t, "vpn.s", Some("ike-policy"), None), 4);
        assert_eq!(line_of(t, "vpn.s.security-policy", Some("name"), Some(1)), 8);
        assert_eq!(line_of(t, "vpn.s", None, None), 3);
        assert_eq!(line_col(t, 4), (2, 1));
    }
}
