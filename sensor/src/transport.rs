//! The gRPC channel between sensors, collectors and subscribers: TLS and mutual TLS (rustls),
//! and the rule that plaintext is refused except on loopback unless explicitly allowed.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// Client side (a sensor shipping, the `events`/subscribe tools): how to reach a collector.
#[derive(Debug, Clone, Args, Default)]
pub struct ClientTlsArgs {
    /// CA certificate (PEM) that signed the collector's certificate. Required for an
    /// `https://` collector.
    #[arg(long, value_name = "PEM", env = "NHI_SENSOR_COLLECTOR_CA")]
    pub collector_ca: Option<PathBuf>,
    /// Our client certificate (PEM), for collectors that require mutual TLS.
    #[arg(
        long,
        value_name = "PEM",
        env = "NHI_SENSOR_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(
        long,
        value_name = "PEM",
        env = "NHI_SENSOR_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Name to verify in the collector's certificate, when it differs from the host of the
    /// collector URL (e.g. connecting by IP to a certificate issued for a DNS name).
    #[arg(long, value_name = "NAME")]
    pub collector_server_name: Option<String>,
    /// Allow a plaintext (`http://`) collector that is not on loopback. Events then cross
    /// the network readable and unauthenticated: only for isolated test networks.
    #[arg(long)]
    pub allow_plaintext: bool,
}

/// Server side (the collector).
#[derive(Debug, Clone, Args, Default)]
pub struct ServerTlsArgs {
    /// Our certificate (PEM). With `--tls-key`, the collector serves TLS.
    #[arg(
        long,
        value_name = "PEM",
        env = "NHI_COLLECTOR_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(
        long,
        value_name = "PEM",
        env = "NHI_COLLECTOR_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates are accepted: sensors and subscribers must then
    /// present one (mutual TLS). Without it, TLS authenticates the collector only.
    #[arg(
        long,
        value_name = "PEM",
        env = "NHI_COLLECTOR_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub client_ca: Option<PathBuf>,
    /// Serve plaintext on a non-loopback address. Without TLS anyone on the network can
    /// read events and inject forged ones: only for isolated test networks.
    #[arg(long)]
    pub allow_plaintext: bool,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A tonic endpoint for `url` (`http://` or `https://HOST:PORT`), with TLS set up from `tls`.
pub fn client_endpoint(url: &str, tls: &ClientTlsArgs) -> anyhow::Result<Endpoint> {
    let uri: tonic::transport::Uri = url
        .parse()
        .with_context(|| format!("collector address {url:?} is not a URL"))?;
    let host = uri
        .host()
        .with_context(|| format!("collector address {url:?} has no host"))?
        .to_string();
    let mut ep = Endpoint::from(uri.clone())
        // 5 s: a collector that does not complete a TCP+TLS handshake by then is as good as
        // down; the exporter backs off and retries.
        .connect_timeout(Duration::from_secs(5))
        // Detects a dead peer on an idle stream (no RST, e.g. a node that lost power).
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    match uri.scheme_str() {
        Some("https") => {
            let ca = tls
                .collector_ca
                .as_deref()
                .context("an https:// collector needs --collector-ca (the CA that signed it)")?;
            let mut cfg = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(ca, "collector CA")?))
                .domain_name(tls.collector_server_name.clone().unwrap_or(host));
            if let (Some(cert), Some(key)) = (&tls.tls_cert, &tls.tls_key) {
                cfg = cfg.identity(Identity::from_pem(
                    read(cert, "client certificate")?,
                    read(key, "client key")?,
                ));
            }
            ep = ep
                .tls_config(cfg)
                .context("setting up TLS to the collector")?;
        }
        Some("http") => {
            if !is_loopback_host(&host) && !tls.allow_plaintext {
                bail!(
                    "refusing plaintext to {url}: it is not on loopback. Use https:// with \
                     --collector-ca (and --tls-cert/--tls-key for mutual TLS), or pass \
                     --allow-plaintext on an isolated network"
                );
            }
        }
        other => bail!("collector address {url:?}: unsupported scheme {other:?} (http, https)"),
    }
    Ok(ep)
}

/// The server TLS config, or `None` for plaintext (refused off loopback unless allowed).
pub fn server_tls(
    args: &ServerTlsArgs,
    listen: SocketAddr,
) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        if !listen.ip().is_loopback() && !args.allow_plaintext {
            bail!(
                "refusing to serve plaintext on {listen}: it is not a loopback address. Give \
                 --tls-cert/--tls-key (and --client-ca for mutual TLS), or pass \
                 --allow-plaintext on an isolated network"
            );
        }
        return Ok(None);
    };
    let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(
        read(cert, "collector certificate")?,
        read(key, "collector key")?,
    ));
    if let Some(ca) = &args.client_ca {
        cfg = cfg
            .client_ca_root(Certificate::from_pem(read(ca, "client CA")?))
            .client_auth_optional(false);
    }
    Ok(Some(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_on_loopback() {
        let none = ClientTlsArgs::default();
        assert!(client_endpoint("http://127.0.0.1:4317", &none).is_ok());
        assert!(client_endpoint("http://[::1]:4317", &none).is_ok());
        assert!(client_endpoint("http://localhost:4317", &none).is_ok());
        let err = client_endpoint("http://10.0.0.1:4317", &none).unwrap_err();
        assert!(err.to_string().contains("refusing plaintext"), "{err}");
        let allowed = ClientTlsArgs {
            allow_plaintext: true,
            ..Default::default()
        };
        assert!(client_endpoint("http://10.0.0.1:4317", &allowed).is_ok());
        let err = client_endpoint("https://10.0.0.1:4317", &none).unwrap_err();
        assert!(err.to_string().contains("--collector-ca"), "{err}");
        assert!(client_endpoint("ftp://x:1", &none).is_err());

        let srv = ServerTlsArgs::default();
        assert!(
            server_tls(&srv, "127.0.0.1:1".parse().unwrap())
                .unwrap()
                .is_none()
        );
        assert!(server_tls(&srv, "0.0.0.0:1".parse().unwrap()).is_err());
    }
}
