//! `tandemctl ha status` for a person: the role, the other node, the link and the counters that
//! matter when something is wrong, one topic per line (the whole document with `--json`).

use crate::tables::s;
use serde_json::Value;

fn count(v: &Value, keys: &[(&str, &str)]) -> String {
    keys.iter().map(|(k, label)| format!("{label} {}", s(&v[*k]))).collect::<Vec<_>>().join(", ")
}

fn channel(v: &Value) -> String {
    format!(
        "sent {} messages ({} bytes), received {} ({} bytes), queue full {}",
        s(&v["sent_messages"]),
        s(&v["sent_bytes"]),
        s(&v["received_messages"]),
        s(&v["received_bytes"]),
        s(&v["queue_full"])
    )
}

/// The status of `GET /v1/ha` as text.
pub fn ha_status(v: &Value) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    let handing = if v["handing_over"] == true { " (handing over)" } else { "" };
    line(format!("node {}: {}{handing}", s(&v["node_id"]), s(&v["role"])));
    let other = if v["role"] == "active" { "standby" } else { "mirror" };
    let digest = match &v["config_match"] {
        Value::Bool(true) => "configurations match",
        Value::Bool(false) => "CONFIGURATIONS DIFFER",
        _ => "configuration not compared yet",
    };
    line(format!(
        "{other}: {}; link {} (generation {}); {digest}",
        s(&v["peer"]),
        if v["link_up"] == true { "up" } else { "DOWN" },
        s(&v["link_generation"])
    ));
    let last = match v["since_last_sync_ms"].as_u64() {
        Some(ms) => format!("last sync {ms} ms ago"),
        None => "never synced".into(),
    };
    let lag = match v["lag_ms"].as_u64() {
        Some(ms) => format!(", the oldest for {ms} ms"),
        None => String::new(),
    };
    line(format!("IKE SAs: {}; lag {} messages{lag}; {last}", s(&v["ike_sas"]), s(&v["lag_messages"])));
    let t = &v["last_takeover"];
    let last_t = if t.is_object() {
        format!(
            " (last: {} IKE SAs, {} CHILD SAs, {} requests resent, {} dropped)",
            s(&t["ike_sas"]),
            s(&t["child_sas"]),
            s(&t["retransmitted"]),
            s(&t["dropped"])
        )
    } else {
        String::new()
    };
    line(format!(
        "takeovers {}{last_t}; {}",
        s(&v["takeovers"]),
        count(
            v,
            &[
                ("stale_takeovers", "stale"),
                ("mid_syncs", "Message ID syncs"),
                ("takeovers_deferred", "deferred"),
                ("switchovers_out", "switchovers out"),
                ("switchovers_in", "in"),
                ("split_brain", "split brain")
            ]
        )
    ));
    line(format!(
        "as active: {}",
        count(
            &v["active"],
            &[
                ("snapshots", "snapshots"),
                ("removals", "removals"),
                ("leases_asked", "leases asked"),
                ("rekeys_for_lease", "rekeys for a lease"),
                ("datagrams_held", "datagrams held"),
                ("ack_timeouts", "ack timeouts"),
                ("bulk_transfers", "bulk transfers"),
                ("replay_updates", "replay windows sent")
            ]
        )
    ));
    line(format!(
        "as standby: {}",
        count(
            &v["standby"],
            &[
                ("applied", "applied"),
                ("snapshots_refused", "snapshots refused"),
                ("out_of_order", "out of order"),
                ("bulk_transfers", "bulk transfers")
            ]
        )
    ));
    let l = &v["link"];
    line(format!("link live: {}", channel(&l["live"])));
    line(format!("link bulk: {}", channel(&l["bulk"])));
    line(format!(
        "link: {}",
        count(
            l,
            &[
                ("connects", "connects"),
                ("disconnects", "disconnects"),
                ("handshake_failures", "handshake failures"),
                ("auth_failures", "of them refused keys"),
                ("protocol_errors", "protocol errors")
            ]
        )
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_in_sync_reads_as_such() {
        let v = serde_json::json!({
            "node_id": 2, "role": "standby", "peer": "in-sync", "link_up": true, "link_generation": 3,
            "config_match": false, "ike_sas": 10, "lag_messages": 0, "since_last_sync_ms": 12,
            "takeovers": 0, "last_takeover": null, "stale_takeovers": 0, "mid_syncs": 0, "takeovers_deferred": 0, "switchovers_out": 0,
            "switchovers_in": 0, "split_brain": 0, "handing_over": false,
            "active": {"snapshots": 0}, "standby": {"applied": 40, "bulk_transfers": 1},
            "link": {"live": {"sent_messages": 40}, "bulk": {}, "connects": 1}
        });
        let t = ha_status(&v);
        assert!(
            t.starts_with(
                "node 2: standby\nmirror: in-sync; link up (generation 3); CONFIGURATIONS DIFFER\n"
            ),
            "{t}"
        );
        assert!(t.contains("IKE SAs: 10; lag 0 messages; last sync 12 ms ago"), "{t}");
        assert!(
            t.contains("as standby: applied 40, snapshots refused -, out of order -, bulk transfers 1"),
            "{t}"
        );
    }
}
