//! The operator's HTTP endpoint (`--metrics-addr`): `/metrics` (Prometheus text format),
//! `/healthz` (liveness: the process answers) and `/readyz` (readiness: the component says it
//! is ready). A deliberately tiny HTTP/1.1 server: GET only, one request per connection,
//! requests bounded in size and time, so a scraper or a hostile client cannot hold it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

/// What the endpoint serves.
pub trait Status: Send + Sync + 'static {
    /// The metrics, in the Prometheus text format.
    fn metrics(&self) -> String;
    /// `Ok` when ready; `Err(reason)` otherwise.
    fn ready(&self) -> Result<(), String>;
}

/// Binds now (so a bad address fails at start-up) and serves in the background.
pub async fn serve(addr: SocketAddr, status: Arc<dyn Status>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics/health endpoint {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "metrics and health endpoint: /metrics /healthz /readyz");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let status = status.clone();
            tokio::spawn(async move {
                // 5 s to send a request line: plenty for a scraper, short for a slowloris.
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut buf = vec![0u8; 4096];
                    let mut len = 0;
                    while len < buf.len() {
                        let n = sock.read(&mut buf[len..]).await.ok()?;
                        if n == 0 {
                            break;
                        }
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let (code, ctype, body) = respond(&buf[..len], status.as_ref());
                    let head = format!(
                        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    sock.write_all(head.as_bytes()).await.ok()?;
                    sock.write_all(body.as_bytes()).await.ok()?;
                    sock.shutdown().await.ok()
                })
                .await;
            });
        }
    });
    Ok(local)
}

fn respond(request: &[u8], status: &dyn Status) -> (&'static str, &'static str, String) {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" {
        return ("405 Method Not Allowed", TEXT, "GET only\n".into());
    }
    match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            status.metrics(),
        ),
        "/healthz" | "/livez" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => match status.ready() {
            Ok(()) => ("200 OK", TEXT, "ready\n".into()),
            Err(why) => (
                "503 Service Unavailable",
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S(bool);
    impl Status for S {
        fn metrics(&self) -> String {
            "m 1\n".into()
        }
        fn ready(&self) -> Result<(), String> {
            if self.0 {
                Ok(())
            } else {
                Err("starting".into())
            }
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            respond(b"GET /metrics HTTP/1.1\r\n\r\n", &S(true)).2,
            "m 1\n"
        );
        assert_eq!(
            respond(b"GET /readyz HTTP/1.1\r\n", &S(false)).0,
            "503 Service Unavailable"
        );
        assert_eq!(respond(b"GET /healthz HTTP/1.1\r\n", &S(false)).0, "200 OK");
        assert_eq!(
            respond(b"POST /metrics HTTP/1.1\r\n", &S(true)).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond(b"\xff\xfe", &S(true)).0, "405 Method Not Allowed");
        assert_eq!(respond(b"GET /x HTTP/1.1\r\n", &S(true)).0, "404 Not Found");
    }
}
