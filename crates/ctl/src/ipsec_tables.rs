//! `show ipsec-sa [--all-properties]` and `show ipsec-stat`, laid out like the F5 commands of the
//! same names: one row per SA direction, then (with all properties) one block per SA.

use crate::tables::{host, render, s};
use serde_json::Value;
use std::fmt::Write as _;

fn spi(v: &Value) -> String {
    v.as_u64().map(|n| format!("{n:#010x}")).unwrap_or_else(|| s(v))
}

fn algorithm(sa: &Value) -> String {
    match sa["integ"].as_str() {
        Some(i) => format!("{}-{i}", s(&sa["encr"])),
        None => s(&sa["encr"]),
    }
}

fn encap(sa: &Value) -> &'static str {
    if sa["udp_encap"].as_bool() == Some(true) {
        "udp"
    } else {
        "esp"
    }
}

/// The one-line-per-SA table.
pub fn ipsec_sa_table(sas: &Value) -> String {
    let rows: Vec<Vec<String>> = sas
        .as_array()
        .into_iter()
        .flatten()
        .map(|sa| {
            let c = &sa["counters"];
            vec![
                s(&sa["name"]),
                s(&sa["direction"]),
                spi(&sa["spi"]),
                s(&sa["reqid"]),
                host(&sa["local"]),
                host(&sa["remote"]),
                encap(sa).into(),
                s(&sa["mode"]),
                algorithm(sa),
                s(&sa["state"]),
                s(&c["packets"]),
                s(&c["bytes"]),
            ]
        })
        .collect();
    render(
        &[
            "Name",
            "Dir",
            "SPI",
            "Reqid",
            "Local",
            "Remote",
            "Encap",
            "Mode",
            "Algorithm",
            "State",
            "Packets",
            "Bytes",
        ],
        &rows,
    )
}

fn limit(v: &Value) -> String {
    if v.is_null() {
        "unlimited".into()
    } else {
        s(v)
    }
}

/// Every property of every SA, one block each (`show ipsec-sa all-properties`).
pub fn ipsec_sa_properties(sas: &Value) -> String {
    let mut out = String::new();
    for sa in sas.as_array().into_iter().flatten() {
        let c = &sa["counters"];
        let l = &sa["lifetime"];
        let _ = writeln!(out, "{} {} SPI {}", s(&sa["name"]), s(&sa["direction"]), spi(&sa["spi"]));
        let mut line = |k: &str, v: String| {
            let _ = writeln!(out, "  {k:<22}{v}");
        };
        line("reqid", s(&sa["reqid"]));
        line("protocol", s(&sa["protocol"]));
        line("mode", s(&sa["mode"]));
        line("state", s(&sa["state"]));
        line("local address", s(&sa["local"]));
        line("remote address", s(&sa["remote"]));
        line("encapsulation", encap(sa).into());
        line("algorithm", algorithm(sa));
        line("extended seq numbers", s(&sa["esn"]));
        line("replay window", s(&sa["replay_window"]));
        line("sequence number", s(&sa["seq"]));
        line("packets", s(&c["packets"]));
        line("bytes", s(&c["bytes"]));
        line("replay drops", s(&c["replay_drops"]));
        line("auth failures", s(&c["auth_failures"]));
        line("malformed drops", s(&c["malformed"]));
        line("policy mismatches", s(&c["policy_mismatch"]));
        line("created (s ago)", s(&sa["age_secs"]));
        line("last use (s ago)", s(&sa["last_use_secs_ago"]));
        line(
            "soft lifetime",
            format!("{} bytes, {} packets", limit(&l["soft_bytes"]), limit(&l["soft_packets"])),
        );
        line(
            "hard lifetime",
            format!("{} bytes, {} packets", limit(&l["hard_bytes"]), limit(&l["hard_packets"])),
        );
        out.push('\n');
    }
    out
}

/// `show ipsec-stat`: totals, then drops by reason, then the I/O counters.
pub fn ipsec_stat(v: &Value) -> String {
    let mut rows = Vec::new();
    for k in ["sa_pairs", "in_packets", "in_bytes", "out_packets", "out_bytes"] {
        rows.push(vec![k.replace('_', " "), s(&v[k])]);
    }
    for section in ["esp", "io"] {
        if let Some(m) = v[section].as_object() {
            for (k, val) in m {
                rows.push(vec![k.replace('_', " "), s(val)]);
            }
        }
    }
    render(&["Counter", "Value"], &rows)
}
