//! UDP I/O edge: one socket per local address and port (500 and 4500), so every received datagram
//! has an exact local address (the engine needs it for NAT detection) and replies leave from the
//! address the peer used. A wildcard listen address is expanded to the interface addresses present
//! at start.

use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tandem_config::DaemonSettings;
use tandem_wire::esp::{is_nat_keepalive, is_non_esp_marker, NON_ESP_MARKER_LEN};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// A received IKE datagram (marker stripped).
pub struct Datagram {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub data: Vec<u8>,
}

#[derive(Default, Debug, serde::Serialize)]
pub struct IoCounters {
    pub ike_received: AtomicU64,
    pub ike_sent: AtomicU64,
    pub esp_received_no_dataplane: AtomicU64,
    pub nat_keepalives: AtomicU64,
    pub send_errors: AtomicU64,
}

pub struct Sockets {
    sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    natt_port: u16,
    pub counters: Arc<IoCounters>,
}

fn local_addresses(wildcard: IpAddr) -> Vec<IpAddr> {
    let all = crate::ifaddr::interface_addresses();
    if all.is_empty() {
        return vec![wildcard];
    }
    all.into_iter()
        .filter(|ip| {
            let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            ip.is_ipv4() == wildcard.is_ipv4() && !link_local
        })
        .collect()
}

fn bind_one(addr: SocketAddr, mark: Option<u32>) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // An address that is not (yet) on an interface binds all the same: an HA standby serves its
    // cluster's virtual address the moment keepalived adds it, without a restart.
    if addr.is_ipv6() {
        s.set_freebind_v6(true)?;
    } else {
        s.set_freebind_v4(true)?;
    }
    s.set_reuse_address(true)?;
    // Bigger buffers absorb bursts of IKE_SA_INIT requests (load tests, reconnect storms).
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

impl Sockets {
    /// Bind the IKE port (and, with `natt`, the NAT-T port) on every listen address; `mark` is
    /// the SO_MARK of outgoing IKE (see `routes`).
    pub async fn bind(d: &DaemonSettings, natt: bool, mark: Option<u32>) -> Result<Sockets, String> {
        let mut addrs = Vec::new();
        for a in &d.listen {
            if a.is_unspecified() {
                addrs.extend(local_addresses(*a));
            } else {
                addrs.push(*a);
            }
        }
        let mut sockets = Vec::new();
        for ip in addrs {
            let ports: &[u16] = if natt { &[d.ike_port, d.natt_port] } else { &[d.ike_port] };
            for &port in ports {
                let sa = SocketAddr::new(ip, port);
                match bind_one(sa, mark) {
                    Ok(s) => sockets.push((sa, Arc::new(s))),
                    Err(e) => warn!(target: "io", "cannot bind {sa}: {e}"),
                }
            }
        }
        if sockets.is_empty() {
            return Err(format!("could not bind any IKE socket on {:?}", d.listen));
        }
        Ok(Sockets { sockets, natt_port: d.natt_port, counters: Arc::default() })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(a, _)| *a).collect()
    }

    /// One receive task per socket, feeding IKE datagrams to the engine.
    pub fn spawn_receivers(&self, tx: mpsc::Sender<Datagram>) {
        for (local, sock) in &self.sockets {
            let (local, sock, tx, natt, counters) =
                (*local, sock.clone(), tx.clone(), self.natt_port, self.counters.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let (n, remote) = match sock.recv_from(&mut buf).await {
                        Ok(x) => x,
                        Err(e) => {
                            debug!(target: "io", %local, "recv: {e}");
                            continue;
                        }
                    };
                    let data = &buf[..n];
                    let data = if local.port() == natt {
                        if is_nat_keepalive(data) {
                            counters.nat_keepalives.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if !is_non_esp_marker(data) {
                            counters.esp_received_no_dataplane.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        &data[NON_ESP_MARKER_LEN..]
                    } else {
                        data
                    };
                    counters.ike_received.fetch_add(1, Ordering::Relaxed);
                    if tx.send(Datagram { local, remote, data: data.to_vec() }).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    /// Send one IKE datagram from `local` (adding the non-ESP marker on the NAT-T port).
    pub async fn send(&self, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        let sock = self.sockets.iter().find(|(a, _)| *a == local).or_else(|| {
            self.sockets.iter().find(|(a, _)| a.port() == local.port() && a.is_ipv4() == remote.is_ipv4())
        });
        let Some((_, sock)) = sock else {
            self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
            warn!(target: "io", %local, "no socket to send from");
            return;
        };
        let res = if local.port() == self.natt_port {
            let mut v = Vec::with_capacity(data.len() + NON_ESP_MARKER_LEN);
            v.extend_from_slice(&[0; NON_ESP_MARKER_LEN]);
            v.extend_from_slice(data);
            sock.send_to(&v, remote).await
        } else {
            sock.send_to(data, remote).await
        };
        match res {
            Ok(_) => {
                self.counters.ike_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                debug!(target: "io", %remote, "send: {e}");
            }
        }
    }
}
