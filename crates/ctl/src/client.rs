//! A small HTTP/1.1 client for tandemd's Unix socket API: one request per connection.

use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub enum ClientError {
    /// The daemon is not there (exit code 3).
    Unreachable(String),
    /// The daemon answered with an error status.
    Api(u16, String),
    Protocol(String),
}

pub fn request(socket: &Path, method: &str, path: &str, timeout: Duration) -> Result<Value, ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|e| ClientError::Unreachable(e.to_string()))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(Duration::from_secs(5))).ok();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: tandemd\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| ClientError::Protocol("bad HTTP response".into()))?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    let body = if chunked { dechunk(body) } else { body.to_string() };
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::String(body.clone()));
    if (200..300).contains(&status) {
        Ok(value)
    } else {
        let msg = value.get("error").and_then(|e| e.as_str()).map(str::to_string).unwrap_or(body);
        Err(ClientError::Api(status, msg))
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}
