//! Shipping events to a collector: every event is converted to the gRPC contract, numbered
//! and written to the on-disk spool by the pipeline ([`Exporter`]); the shipper task sends
//! what the collector has not acknowledged, in batches, compressed, over one `Ship` stream,
//! reconnecting with jittered backoff. Nothing is lost to a collector outage or a sensor
//! restart; what the spool must discard when full is reported with a loss record.

pub mod convert;
mod shipper;
pub mod spool;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use clap::Args;
use nhi_proto::v1 as pb;
use prost::Message as _;
use tokio::sync::Notify;

pub use shipper::spawn;

use crate::{metrics::Counter, transport::ClientTlsArgs};

/// Default spool directory of a host install.
pub const DEFAULT_SPOOL: &str = "/var/lib/nhi-sensor/spool";

#[derive(Debug, Args, Clone)]
pub struct ExportArgs {
    /// Ship events to this collector (`https://HOST:PORT`, or `http://` on loopback). Without
    /// it, `run` starts a collector in-process on `--store`.
    #[arg(long, value_name = "URL", env = "NHI_SENSOR_COLLECTOR")]
    pub collector: Option<String>,

    /// Spool directory: events not yet acknowledged by the collector, kept across restarts.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_SPOOL)]
    pub spool: PathBuf,

    /// Spool size limit in bytes; when a collector outage fills it, the oldest events are
    /// discarded and reported with a loss record. 256 MiB holds about an hour of a busy
    /// node's events (~70 events/s at ~1 KiB).
    #[arg(long, value_name = "BYTES", default_value_t = spool::DEFAULT_MAX_BYTES)]
    pub spool_max_bytes: u64,

    /// Stable id of this sensor, unique in the fleet. Default: derived from /etc/machine-id
    /// (an application-specific hash of it, as systemd recommends, never the id itself).
    #[arg(long, value_name = "ID", env = "NHI_SENSOR_ID")]
    pub sensor_id: Option<String>,

    /// Node name reported with every event. Default: `$NODE_NAME` (the Kubernetes downward
    /// API convention), else the host name.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,

    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

#[derive(Debug, Default)]
pub struct ExportMetrics {
    pub appended: Counter,
    /// Events that could not be written to the spool (lost, counted in `sensor.stats`).
    pub spool_write_errors: Counter,
    pub acked: Counter,
    pub batches_sent: Counter,
    pub events_sent: Counter,
    pub reconnects: Counter,
    pub connected: crate::metrics::Gauge,
    pub ack_latency_seconds_total: Mutex<f64>,
}

/// The pipeline's side: converts, numbers and spools events.
pub struct Exporter {
    spool: Arc<Mutex<spool::Spool>>,
    notify: Arc<Notify>,
    sensor: pb::SensorIdentity,
    pending: Vec<pb::Event>,
    pub metrics: Arc<ExportMetrics>,
}

impl Exporter {
    pub fn open(args: &ExportArgs, boot_id: &str) -> anyhow::Result<Self> {
        let spool = spool::Spool::open(spool::SpoolConfig {
            dir: args.spool.clone(),
            max_bytes: args.spool_max_bytes,
            segment_bytes: spool::DEFAULT_SEGMENT_BYTES,
        })
        .with_context(|| format!("opening the spool {}", args.spool.display()))?;
        let sensor = pb::SensorIdentity {
            sensor_id: match &args.sensor_id {
                Some(id) => id.clone(),
                None => default_sensor_id()?,
            },
            node_name: match &args.node_name {
                Some(n) => n.clone(),
                None => hostname(),
            },
            boot_id: boot_id.to_string(),
            stream_id: spool.stream_id().to_string(),
            sensor_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        tracing::info!(
            sensor_id = %sensor.sensor_id, node = %sensor.node_name, stream = %sensor.stream_id,
            next_sequence = spool.next_sequence(), acked = spool.acked(),
            "spool open"
        );
        Ok(Self {
            spool: Arc::new(Mutex::new(spool)),
            notify: Arc::new(Notify::new()),
            sensor,
            pending: Vec::new(),
            metrics: Arc::new(ExportMetrics::default()),
        })
    }

    pub fn sensor(&self) -> &pb::SensorIdentity {
        &self.sensor
    }

    pub fn push(&mut self, ev: pb::Event) {
        self.pending.push(ev);
    }

    /// Spools what was pushed and wakes the shipper. Called after each batch of kernel
    /// events and on every tick.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut spool = self.spool.lock().expect("spool mutex");
        for mut ev in self.pending.drain(..) {
            ev.sensor = Some(self.sensor.clone());
            let appended = spool.append(|seq, buf| {
                ev.sequence = seq;
                ev.encode(buf).expect("a Vec grows as needed");
            });
            match appended {
                Ok(_) => self.metrics.appended.inc(),
                // Disk full, an I/O error, an event over the record limit: this event cannot
                // be kept (its sequence number is not used, so there is no gap to explain);
                // count it, say why, keep going.
                Err(e) => {
                    self.metrics.spool_write_errors.inc();
                    if self.metrics.spool_write_errors.get() <= 10 {
                        tracing::error!(error = %format!("{e:#}"), "an event could not be spooled and is lost");
                    }
                }
            }
        }
        if let Err(e) = spool.flush() {
            self.metrics.spool_write_errors.inc();
            tracing::error!(error = %format!("{e:#}"), "flushing the spool");
        }
        drop(spool);
        self.notify.notify_one();
        Ok(())
    }

    /// The spool's counters, for `sensor.stats`. Spools what is pending and evicts what the
    /// spool has no room for first, so the counters include every eviction these events
    /// cause, and the stats event itself (appended next) finds room without evicting.
    pub fn spool_stats(&mut self) -> pb::SpoolStats {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %format!("{e:#}"), "spooling before the stats");
        }
        let mut spool = self.spool.lock().expect("spool mutex");
        if let Err(e) = spool.make_room() {
            tracing::warn!(error = %format!("{e:#}"), "making room in the spool");
        }
        let s = spool.stats();
        pb::SpoolStats {
            bytes: s.bytes,
            unacked: s.unacked_records,
            acked: s.acked,
            evicted: s.evicted_records_total,
            corrupt: s.corrupt_records_total,
        }
    }

    pub fn spool(&self) -> Arc<Mutex<spool::Spool>> {
        self.spool.clone()
    }

    pub fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// An application-specific id derived from /etc/machine-id (HMAC keyed by the machine id
/// over our application name), as `sd_id128_get_machine_app_specific` does: stable across
/// restarts and reboots, and it does not reveal the machine id.
fn default_sensor_id() -> anyhow::Result<String> {
    use hmac::{Hmac, Mac as _};
    // Where systemd and D-Bus keep it; minimal images and initramfs have neither: the host
    // name then, with a warning (pass --sensor-id to choose).
    let machine_id = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| {
            tracing::warn!("no /etc/machine-id: the sensor id derives from the host name; pass --sensor-id for a stable one");
            hostname()
        });
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(machine_id.trim().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(b"nhi-sensor/sensor-id/v1");
    let digest = mac.finalize().into_bytes();
    Ok(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}
