//! Plain-text tables in the operator's layout (6WIND `show ike-sa`, F5 `show ipsec-sa`).

use serde_json::Value;

/// Left-aligned columns separated by two spaces.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{:w$}", c, w = widths[i])).collect();
        s.join("  ").trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `1.2.3.4:500` -> `1.2.3.4`; `[::1]:500` -> `::1`.
pub(crate) fn host(v: &Value) -> String {
    let a = s(v);
    match a.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h.trim_matches(['[', ']']).to_string(),
        _ => a,
    }
}

/// Identities are serialized as `{"Fqdn": "x"}`; show the inner value.
fn identity(v: &Value) -> String {
    match v {
        Value::Object(m) => match m.iter().next() {
            Some((k, Value::Array(bytes))) if k == "KeyId" => {
                let hex: String =
                    bytes.iter().filter_map(|b| b.as_u64()).map(|b| format!("{b:02x}")).collect();
                format!("keyid:{hex}")
            }
            Some((_, inner)) => s(inner),
            None => "-".into(),
        },
        other => s(other),
    }
}

pub fn ike_sa_table(sas: &Value) -> String {
    let rows: Vec<Vec<String>> = sas
        .as_array()
        .into_iter()
        .flatten()
        .map(|sa| {
            vec![
                sa.get("vpn").and_then(|v| v.as_str()).unwrap_or("(unknown)").to_string(),
                host(&sa["local"]),
                identity(&sa["local_id"]),
                host(&sa["remote"]),
                identity(&sa["remote_id"]),
                // An HA standby lists the SAs it mirrors; it does not run them.
                if sa["standby"] == true {
                    format!("{} (standby)", s(&sa["state"]))
                } else {
                    s(&sa["state"])
                },
                s(&sa["child_sas"]),
            ]
        })
        .collect();
    render(&["VPN", "Local-Addr", "Local-ID", "Remote-Addr", "Remote-ID", "State", "Child-SAs"], &rows)
}

fn hex32(v: &Value) -> String {
    v.as_u64().map_or("-".into(), |n| format!("0x{n:08x}"))
}

fn selectors(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let (a, b) = (s(&t["start_addr"]), s(&t["end_addr"]));
            let mut out = cidr(&a, &b).unwrap_or_else(|| format!("{a}-{b}"));
            let proto = t["ip_protocol"].as_u64().unwrap_or(0);
            let (lo, hi) = (t["start_port"].as_u64().unwrap_or(0), t["end_port"].as_u64().unwrap_or(65535));
            if proto != 0 || (lo, hi) != (0, 65535) {
                out.push_str(&format!("[{proto}"));
                if (lo, hi) != (0, 65535) {
                    out.push_str(&if lo == hi { format!("/{lo}") } else { format!("/{lo}-{hi}") });
                }
                out.push(']');
            }
            out
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `a/len` when the range from `a` to `b` is exactly one prefix.
fn cidr(a: &str, b: &str) -> Option<String> {
    use std::net::IpAddr;
    let (s, e, bits) = match (a.parse::<IpAddr>().ok()?, b.parse::<IpAddr>().ok()?) {
        (IpAddr::V4(s), IpAddr::V4(e)) => (u32::from(s) as u128, u32::from(e) as u128, 32),
        (IpAddr::V6(s), IpAddr::V6(e)) => (u128::from(s), u128::from(e), 128),
        _ => return None,
    };
    let host = s ^ e;
    (host.count_ones() == host.trailing_ones() && s & host == 0)
        .then(|| format!("{a}/{}", bits - host.count_ones()))
}

pub fn child_sa_table(sas: &Value) -> String {
    let rows: Vec<Vec<String>> = sas
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            vec![
                s(&c["vpn"]),
                s(&c["child"]),
                s(&c["reqid"]),
                hex32(&c["spi_in"]),
                hex32(&c["spi_out"]),
                s(&c["mode"]).to_lowercase(),
                "ESP".into(),
                s(&c["encr"]),
                s(&c["integ"]),
                selectors(&c["local_ts"]),
                selectors(&c["remote_ts"]),
                if c["udp_encap"].as_bool() == Some(true) { "udp".into() } else { "no".into() },
            ]
        })
        .collect();
    render(
        &[
            "VPN",
            "Name",
            "Reqid",
            "SPI-In",
            "SPI-Out",
            "Mode",
            "Proto",
            "Encryption",
            "Integrity",
            "Local-TS",
            "Remote-TS",
            "Encap",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_as_prefixes() {
        let v = json!([{"start_addr": "10.1.0.0", "end_addr": "10.1.0.255", "ip_protocol": 6, "start_port": 80, "end_port": 80},
                       {"start_addr": "10.1.0.1", "end_addr": "10.1.0.9", "ip_protocol": 0, "start_port": 0, "end_port": 65535}]);
        assert_eq!(selectors(&v), "10.1.0.0/24[6/80],10.1.0.1-10.1.0.9");
    }

    #[test]
    fn ike_sa_table_matches_the_operator_layout() {
        let v = json!([
            {"vpn": "vpn-secgw", "local": "10.175.0.1:500", "local_id": {"Fqdn": "secgw.example"},
             "remote": "10.225.0.1:4500", "remote_id": {"Ipv4": "10.225.0.1"}, "state": "established", "child_sas": 1},
            {"vpn": null, "local": "10.175.0.1:500", "local_id": null, "remote": "[2001:db8::1]:500",
             "remote_id": null, "state": "connecting", "child_sas": 0}
        ]);
        let mirrored = json!([{"vpn": "v", "local": "10.0.0.1:500", "local_id": null, "remote": "10.0.0.2:500",
                               "remote_id": null, "state": "established", "child_sas": 1, "standby": true}]);
        assert!(ike_sa_table(&mirrored).contains("established (standby)"));
        assert_eq!(
            ike_sa_table(&v),
            "VPN        Local-Addr  Local-ID       Remote-Addr  Remote-ID   State        Child-SAs\n\
             vpn-secgw  10.175.0.1  secgw.example  10.225.0.1   10.225.0.1  established  1\n\
             (unknown)  10.175.0.1  -              2001:db8::1  -           connecting   0\n"
        );
    }
}
