//! The control API: HTTP/1.1 + JSON on a Unix socket (mode 0600). See docs/api.md.

use crate::engine_task::{Command, Handle};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path as FsPath;
use std::time::Duration;
use tandem_ike::IkeSaState;
use tokio::net::UnixListener;

/// Bind the API socket: create the directory, refuse when another tandemd answers, replace a stale file.
pub async fn bind(path: &FsPath) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(format!("another tandemd is running on {}", path.display()));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path).map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    Ok(l)
}

pub async fn serve(listener: UnixListener, handle: Handle) {
    let _ = axum::serve(listener, router(handle)).await;
}

pub fn router(handle: Handle) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/ike-sas", get(ike_sas).delete(terminate_vpn))
        .route("/v1/ike-sas/{id}", delete(terminate_ike))
        .route("/v1/ike-sas/{id}/rekey", post(rekey_ike))
        .route("/v1/child-sas", get(child_sas))
        .route("/v1/child-sas/{spi}", delete(terminate_child))
        .route("/v1/child-sas/{spi}/rekey", post(rekey_child))
        .route("/v1/vpns/{name}/initiate", post(initiate))
        .route("/v1/ipsec-sas", get(ipsec_sas).delete(flush_ipsec_sas))
        .route("/v1/ipsec-sas/{spi}", delete(delete_ipsec_sa))
        .route("/v1/ipsec-stat", get(ipsec_stat))
        .route("/v1/reload", post(reload))
        .route("/v1/ha", get(ha_status))
        .route("/v1/ha/state", post(ha_set_state))
        .with_state(handle)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

fn engine_down(e: String) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, e)
}

/// SPIs and IKE SA ids are accepted as 0x-hex or decimal.
fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn done(r: Result<Result<(), String>, String>) -> Response {
    match r {
        Err(e) => engine_down(e),
        Ok(Err(e)) => error(StatusCode::NOT_FOUND, e),
        Ok(Ok(())) => Json(json!({ "ok": true })).into_response(),
    }
}

async fn status(State(h): State<Handle>) -> Response {
    match h.ask(Command::Status).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => engine_down(e),
    }
}

async fn ike_sas(State(h): State<Handle>) -> Response {
    match h.ask(Command::IkeSas).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => engine_down(e),
    }
}

async fn child_sas(State(h): State<Handle>) -> Response {
    match h.ask(Command::ChildSas).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => engine_down(e),
    }
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<f64>,
}

async fn initiate(State(h): State<Handle>, Path(name): Path<String>, Query(q): Query<WaitQuery>) -> Response {
    let id = match h.ask(|r| Command::Initiate(name.clone(), r)).await {
        Err(e) => return engine_down(e),
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
        Ok(Ok(id)) => id,
    };
    let Some(wait) = q.wait.filter(|w| *w > 0.0) else {
        return Json(json!({ "ike_sa": id, "state": "connecting" })).into_response();
    };
    // Poll the engine until the SA is established, gone, or the wait ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait.min(300.0));
    loop {
        let sas = match h.ask(Command::IkeSas).await {
            Ok(s) => s,
            Err(e) => return engine_down(e),
        };
        let children = h.ask(Command::ChildSas).await.unwrap_or_default();
        match sas.iter().find(|s| s.id == id) {
            Some(s) if s.state == IkeSaState::Established => {
                let c: Vec<_> = children.into_iter().filter(|c| c.ike_sa == id).collect();
                if c.is_empty() {
                    // IKE_AUTH carries the first CHILD SA: without it the peer refused it.
                    return error(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "IKE SA for vpn {name:?} is up but the peer refused its CHILD SA (see the log)"
                        ),
                    );
                }
                return Json(json!({ "ike_sa": id, "state": "established", "child_sas": c })).into_response();
            }
            None => {
                return error(
                    StatusCode::BAD_GATEWAY,
                    format!("IKE SA for vpn {name:?} failed (see the log)"),
                )
            }
            Some(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("vpn {name:?} not established within {wait}s"),
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn terminate_ike(State(h): State<Handle>, Path(id): Path<String>) -> Response {
    let Some(id) = parse_num(&id) else { return error(StatusCode::BAD_REQUEST, "bad IKE SA id") };
    done(h.ask(|r| Command::TerminateIke(id, r)).await)
}

#[derive(Deserialize)]
struct VpnQuery {
    vpn: String,
}

async fn terminate_vpn(State(h): State<Handle>, Query(q): Query<VpnQuery>) -> Response {
    match h.ask(|r| Command::TerminateVpn(q.vpn.clone(), r)).await {
        Err(e) => engine_down(e),
        Ok(Err(e)) => error(StatusCode::NOT_FOUND, e),
        Ok(Ok(0)) => error(StatusCode::NOT_FOUND, format!("no IKE SA for vpn {:?}", q.vpn)),
        Ok(Ok(n)) => Json(json!({ "terminated": n })).into_response(),
    }
}

fn parse_spi(s: &str) -> Option<u32> {
    parse_num(s).and_then(|n| u32::try_from(n).ok())
}

async fn terminate_child(State(h): State<Handle>, Path(spi): Path<String>) -> Response {
    let Some(spi) = parse_spi(&spi) else { return error(StatusCode::BAD_REQUEST, "bad SPI") };
    done(h.ask(|r| Command::TerminateChild(spi, r)).await)
}

async fn rekey_child(State(h): State<Handle>, Path(spi): Path<String>) -> Response {
    let Some(spi) = parse_spi(&spi) else { return error(StatusCode::BAD_REQUEST, "bad SPI") };
    done(h.ask(|r| Command::RekeyChild(spi, r)).await)
}

async fn rekey_ike(State(h): State<Handle>, Path(id): Path<String>) -> Response {
    let Some(id) = parse_num(&id) else { return error(StatusCode::BAD_REQUEST, "bad IKE SA id") };
    done(h.ask(|r| Command::RekeyIke(id, r)).await)
}

/// Answers of dataplane queries: 409 when the dataplane is disabled.
fn dataplane_answer<T: serde::Serialize>(r: Result<Result<T, String>, String>) -> Response {
    match r {
        Err(e) => engine_down(e),
        Ok(Err(e)) => error(StatusCode::CONFLICT, e),
        Ok(Ok(v)) => Json(v).into_response(),
    }
}

async fn ipsec_sas(State(h): State<Handle>) -> Response {
    dataplane_answer(h.ask(Command::IpsecSas).await)
}

async fn ipsec_stat(State(h): State<Handle>) -> Response {
    dataplane_answer(h.ask(Command::IpsecStat).await)
}

#[derive(Deserialize)]
struct LocalQuery {
    #[serde(default)]
    local: bool,
}

async fn delete_ipsec_sa(
    State(h): State<Handle>,
    Path(spi): Path<String>,
    Query(q): Query<LocalQuery>,
) -> Response {
    let Some(spi) = parse_spi(&spi) else { return error(StatusCode::BAD_REQUEST, "bad SPI") };
    done(h.ask(|reply| Command::DeleteIpsecSa { spi, local_only: q.local, reply }).await)
}

async fn flush_ipsec_sas(State(h): State<Handle>) -> Response {
    match h.ask(Command::FlushIpsecSas).await {
        Err(e) => engine_down(e),
        Ok(Err(e)) => error(StatusCode::CONFLICT, e),
        Ok(Ok(n)) => Json(json!({ "flushed": n })).into_response(),
    }
}

async fn reload(State(h): State<Handle>) -> Response {
    match h.reload().await {
        Ok(d) => Json(d).into_response(),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_hex_or_decimal() {
        assert_eq!(parse_num("0x10"), Some(16));
        assert_eq!(parse_num("16"), Some(16));
        assert_eq!(parse_spi("0x1ffffffff"), None);
        assert_eq!(parse_num("zz"), None);
    }
}

async fn ha_status(State(h): State<Handle>) -> Response {
    match h.ask(Command::HaStatus).await {
        Err(e) => engine_down(e),
        Ok(Err(e)) => error(StatusCode::NOT_FOUND, e),
        Ok(Ok(s)) => Json(s).into_response(),
    }
}

#[derive(Deserialize)]
struct StateQuery {
    state: String,
}

async fn ha_set_state(State(h): State<Handle>, Query(q): Query<StateQuery>) -> Response {
    let state = q.state.to_ascii_lowercase();
    match h.ask(|r| Command::HaSetState(state, r)).await {
        Err(e) => engine_down(e),
        Ok(Err(e)) => error(StatusCode::CONFLICT, e),
        Ok(Ok(s)) => Json(s).into_response(),
    }
}
