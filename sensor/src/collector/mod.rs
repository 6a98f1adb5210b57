//! The collector: receives sensors' event streams over gRPC, deduplicates them into the
//! embedded store, and feeds its sinks (OCSF JSON lines, live subscribers, Kafka). It runs as
//! `nhi-sensor collector`, or in-process inside `nhi-sensor run` when no collector address
//! is given (the embedded default).

mod fleet;
mod ingest;
pub mod inventory;
pub mod kafka;
pub mod metrics;
pub mod ocsf;
mod ocsf_out;
pub mod query;
pub mod store;
mod subscribe;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use nhi_proto::v1::{collector_server::CollectorServer, subscriptions_server::SubscriptionsServer};
use tonic::{codec::CompressionEncoding, transport::Server};

pub use subscribe::Hub;

use crate::transport::ServerTlsArgs;

/// Default listen address: loopback, where plaintext is allowed. 4317 is taken by OTLP;
/// 50051 is gRPC's customary example port and free on most hosts.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// The default store directory of a host install.
pub const DEFAULT_STORE: &str = "/var/lib/nhi-sensor/store";

/// Store retention. 7 days covers a week of investigation on a node-local store; the SIEM
/// keeps the long history.
pub const DEFAULT_RETENTION: &str = "7d";
/// Largest gRPC message accepted: gRPC's own default; sensors keep batches near 1 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Events per second one sensor stream may send before it is slowed down: above what one
/// busy node produces, and a bound on what one client can make the store do.
pub const DEFAULT_MAX_EVENTS_PER_SECOND: u64 = 200_000;
/// Idle limit of a sensor stream (sensors send a keepalive every 5 s).
pub const DEFAULT_STREAM_IDLE_SECS: u64 = 60;
/// Concurrent requests per connection: a sensor uses one; room for subscribers and health
/// checks sharing a connection.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: usize = 16;

#[derive(Debug, Args, Clone)]
pub struct CollectorArgs {
    /// Address to serve gRPC on (`Collector`, `Subscriptions`, `grpc.health.v1`, reflection).
    /// Plaintext is refused off loopback unless `--allow-plaintext`.
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Directory of the embedded store (SQLite `events.db`). Created if absent.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STORE)]
    pub store: PathBuf,

    #[command(flatten)]
    pub store_options: StoreArgs,

    /// Write OCSF JSON lines to this file (rotated by size), or `-` for stdout.
    #[arg(long, value_name = "FILE")]
    pub ocsf_out: Option<PathBuf>,

    /// Rotate `--ocsf-out` at this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = ocsf_out::DEFAULT_MAX_BYTES)]
    pub ocsf_max_bytes: u64,

    /// Rotated OCSF files kept.
    #[arg(long, value_name = "N", default_value_t = ocsf_out::DEFAULT_KEEP)]
    pub ocsf_keep: usize,

    #[command(flatten)]
    pub tls: ServerTlsArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub kafka: kafka::KafkaArgs,

    /// Serve Prometheus `/metrics`, `/healthz` and `/readyz` on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    /// Events a subscriber may fall behind before it skips and is told how many it missed.
    #[arg(long, value_name = "N", default_value_t = subscribe::SUBSCRIBER_BUFFER)]
    pub subscriber_buffer: usize,
}

#[derive(Debug, Args, Clone)]
pub struct StoreArgs {
    /// fsync the store on every batch (power-loss durability) instead of relying on the WAL
    /// (process-crash durability). Costs one fsync per batch.
    #[arg(long)]
    pub store_sync_full: bool,

    /// Delete stored events older than this (e.g. `7d`, `12h`).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_RETENTION, value_parser = humantime::parse_duration)]
    pub retention: Duration,
}

#[derive(Debug, Args, Clone)]
pub struct LimitArgs {
    /// Largest gRPC message accepted, in bytes; larger ones end the stream with
    /// OUT_OF_RANGE.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// Events per second one sensor stream may send before it is slowed down (0: no
    /// limit).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_EVENTS_PER_SECOND)]
    pub max_events_per_second: u64,

    /// A sensor stream with no batch for this many seconds is ended.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_STREAM_IDLE_SECS)]
    pub stream_idle_secs: u64,

    /// Concurrent requests (streams) per connection.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_STREAMS_PER_CONNECTION)]
    pub max_streams_per_connection: usize,
}

impl CollectorArgs {
    /// The collector `run` starts in-process when no `--collector` is given: loopback, an
    /// ephemeral port, plaintext (it never leaves the host), default limits.
    pub fn embedded(store: PathBuf, ocsf_out: Option<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            store,
            store_options: StoreArgs {
                store_sync_full: false,
                retention: humantime::parse_duration(DEFAULT_RETENTION)
                    .expect("the default retention parses"),
            },
            ocsf_out,
            ocsf_max_bytes: ocsf_out::DEFAULT_MAX_BYTES,
            ocsf_keep: ocsf_out::DEFAULT_KEEP,
            tls: ServerTlsArgs::default(),
            limits: LimitArgs {
                max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
                // Our own sensor, on this host: never slowed down.
                max_events_per_second: 0,
                stream_idle_secs: DEFAULT_STREAM_IDLE_SECS,
                max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            },
            // The node-local store is the embedded collector's only destination.
            kafka: kafka::KafkaArgs::disabled(),
            metrics_addr: None,
            subscriber_buffer: subscribe::SUBSCRIBER_BUFFER,
        }
    }
}

/// A running collector (in-process handle).
pub struct Running {
    pub addr: SocketAddr,
    pub metrics: Arc<metrics::CollectorMetrics>,
}

struct HttpStatus(Arc<metrics::CollectorMetrics>);

impl crate::http::Status for HttpStatus {
    fn metrics(&self) -> String {
        let mut out = String::new();
        self.0.render(&mut out);
        out
    }
    fn ready(&self) -> Result<(), String> {
        // The store is open and the listener bound before this endpoint starts.
        Ok(())
    }
}

/// Opens the store, starts the sinks and serves until the process ends. Returns once the
/// listener is bound.
pub async fn start(args: CollectorArgs) -> anyhow::Result<Running> {
    let tls = crate::transport::server_tls(&args.tls, args.listen)?;
    let store = store::Store::open(&args.store, args.store_options.store_sync_full)?;
    let kafka = kafka::KafkaSink::from_args(&args.kafka)?.map(Arc::new);
    if let Some(k) = &kafka {
        k.spawn_check();
    }
    let hub = Arc::new(Hub::new(args.subscriber_buffer.max(16)));
    let metrics = Arc::new(metrics::CollectorMetrics::default());
    if let Some(out) = &args.ocsf_out {
        ocsf_out::spawn(
            ocsf_out::OcsfOut {
                path: (out.as_os_str() != "-").then(|| out.clone()),
                max_bytes: args.ocsf_max_bytes,
                keep: args.ocsf_keep,
            },
            store.clone(),
            hub.clone(),
            metrics.clone(),
        )?;
    }
    spawn_retention(store.clone(), args.store_options.retention);
    fleet::spawn(store.clone(), hub.clone()).context("starting the fleet view")?;

    let ingest = Arc::new(ingest::Ingest {
        store,
        hub: hub.clone(),
        limits: ingest::Limits {
            idle: Duration::from_secs(args.limits.stream_idle_secs.max(1)),
            events_per_second: args.limits.max_events_per_second,
        },
        metrics: metrics.clone(),
        kafka,
    });
    let collector = CollectorServer::new(ingest::IngestService(ingest))
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(args.limits.max_message_bytes);
    let subscriptions = SubscriptionsServer::new(subscribe::SubscriptionService {
        hub,
        metrics: metrics.clone(),
    })
    .send_compressed(CompressionEncoding::Zstd)
    .accept_compressed(CompressionEncoding::Zstd)
    .max_decoding_message_size(64 << 10);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CollectorServer<ingest::IngestService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(nhi_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;

    let mut builder = Server::builder()
        .concurrency_limit_per_connection(args.limits.max_streams_per_connection)
        // Finds dead peers on idle connections.
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .context("setting up the collector's TLS")?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let router = builder
        .add_service(collector)
        .add_service(subscriptions)
        .add_service(health)
        .add_service(reflection);
    tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "collector server stopped");
        }
    });
    if let Some(maddr) = args.metrics_addr {
        crate::http::serve(maddr, Arc::new(HttpStatus(metrics.clone()))).await?;
    }
    tracing::info!(%addr, store = %args.store.display(), tls = args.tls.tls_cert.is_some(), mtls = args.tls.client_ca.is_some(), "collector listening");
    Ok(Running { addr, metrics })
}

fn spawn_retention(store: store::Store, retention: Duration) {
    tokio::spawn(async move {
        // Hourly: retention is coarse, and a delete of an hour's events is a short write.
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let cutoff = std::time::SystemTime::now()
                .checked_sub(retention)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.expire(cutoff)).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(deleted = n, "expired old events"),
                Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "expiring old events"),
                _ => {}
            }
        }
    });
}

/// `nhi-sensor collector`: serves until SIGINT/SIGTERM.
pub async fn run(args: CollectorArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    start(args).await?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: collector shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: collector shutting down"),
    }
    Ok(())
}
