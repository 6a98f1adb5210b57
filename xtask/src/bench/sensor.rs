//! The sensor and a separate collector as the benchmark runs them, and the end-to-end
//! accounting between them: what the sensor emitted, what the kernel could not deliver, what the
//! store holds.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;

use super::procs::{Guarded, Metrics, TempDir, free_port, output};

/// How long the sensor may take to load, verify and attach its programs and scan /proc.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// SIGTERM to exit: the sensor drains what the kernel queued and waits up to its 5 s drain
/// timeout for acknowledgements; with a backlog that can take long.
const STOP_GRACE: Duration = Duration::from_secs(60);

pub struct Sensor {
    pub proc: Guarded,
    pub metrics_addr: SocketAddr,
    /// The separate collector's metrics endpoint; `None`: the embedded one (same endpoint).
    collector_metrics: Option<SocketAddr>,
    state: TempDir,
    bin: PathBuf,
    /// From spawn to the `sensor ready` line.
    pub startup: Duration,
}

/// Totals at one moment when everything the sensor spooled is acknowledged (stored).
#[derive(Debug, Clone, Copy, Default)]
pub struct Accounting {
    /// Events the sensor put in its spool (acknowledged + unacknowledged): what it emitted.
    pub spooled: f64,
    /// Records the kernel programs submitted to the ring buffer (`kernel_total{emitted}`).
    pub kernel_records: f64,
    /// Events the kernel could not deliver (`nhi_sensor_kernel_drops_total`), and records
    /// userspace could not decode.
    pub kernel_drops: f64,
    pub decode_errors: f64,
    /// Events the collector stored, declared losses, unexplained sequence gaps.
    pub stored: f64,
    pub lost: f64,
    pub gaps: f64,
    pub processes_tracked: f64,
    /// False when the spool still held unacknowledged events at the settle timeout (a
    /// backlog, not by itself a loss).
    pub settled: bool,
    /// How long the pipeline took to acknowledge everything.
    pub drain_secs: f64,
}

impl Accounting {
    /// `self - before`, for one workload's window.
    pub fn delta(&self, before: &Accounting) -> Accounting {
        Accounting {
            spooled: self.spooled - before.spooled,
            kernel_records: self.kernel_records - before.kernel_records,
            kernel_drops: self.kernel_drops - before.kernel_drops,
            decode_errors: self.decode_errors - before.decode_errors,
            stored: self.stored - before.stored,
            lost: self.lost - before.lost,
            gaps: self.gaps - before.gaps,
            processes_tracked: self.processes_tracked,
            settled: self.settled,
            drain_secs: self.drain_secs,
        }
    }

    /// Nothing lost between the kernel and the store: no kernel drop, no undecodable record,
    /// no sequence gap or declared loss at the collector, and everything spooled acknowledged.
    pub fn zero_loss(&self) -> bool {
        self.kernel_drops == 0.0
            && self.decode_errors == 0.0
            && self.lost == 0.0
            && self.gaps == 0.0
            && self.settled
    }

    pub fn to_json(self) -> Value {
        serde_json::json!({
            "emitted": self.spooled,
            "kernel_records": self.kernel_records,
            "kernel_drops": self.kernel_drops,
            "decode_errors": self.decode_errors,
            "stored": self.stored,
            "lost_declared": self.lost,
            "sequence_gaps": self.gaps,
            "settled": self.settled,
            "drain_secs": round3(self.drain_secs),
            "zero_loss": self.zero_loss(),
        })
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Sensor {
    /// `nhi-sensor run --format none ... --watch WATCH/ --stats-interval 1 EXTRA...`, otherwise
    /// the default configuration; ships to the embedded collector, or to `collector`.
    pub fn start(
        bin: &Path,
        watch: &Path,
        collector: Option<&Collector>,
        extra: &[&str],
    ) -> anyhow::Result<Sensor> {
        let state = TempDir::new("sensor")?;
        let port = free_port()?;
        let metrics_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut cmd = Command::new(bin);
        cmd.args(["--log-format", "json", "run", "--format", "none", "--spool"])
            .arg(state.join("spool"))
            .arg("--store")
            .arg(state.join("store"))
            // Kept out of /var/lib: the benchmark leaves no state behind.
            .arg("--fingerprint-key-file")
            .arg(state.join("fingerprint.key"))
            .arg("--watch")
            .arg(format!("{}/", watch.display()))
            .args(["--stats-interval", "1", "--metrics-addr"])
            .arg(metrics_addr.to_string())
            .args(extra);
        if let Some(c) = collector {
            cmd.arg("--collector").arg(format!("http://{}", c.listen));
        }
        // The default configuration: whatever the caller's environment says.
        for var in [
            "NHI_SENSOR_DISABLE_HOOKS",
            "NHI_SENSOR_COLLECTOR",
            "NHI_SENSOR_METRICS_ADDR",
            "NHI_SENSOR_ID",
            "NHI_SENSOR_LOG",
        ] {
            cmd.env_remove(var);
        }
        let t0 = Instant::now();
        let proc = Guarded::spawn("nhi-sensor run", &mut cmd)?;
        proc.wait_for_line("sensor ready", READY_TIMEOUT)?;
        let startup = t0.elapsed();
        say!("sensor ready in {:.1} s", startup.as_secs_f64());
        let mut s = Sensor {
            proc,
            metrics_addr,
            collector_metrics: collector.map(|c| c.metrics_addr),
            state,
            bin: bin.to_path_buf(),
            startup,
        };
        // The metrics endpoint may come up a moment after the log line.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match s.scrape() {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        Ok(s)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn scrape(&mut self) -> anyhow::Result<Metrics> {
        self.proc.check_alive()?;
        Metrics::scrape(self.metrics_addr)
    }

    /// Waits (up to `timeout`) until the pipeline has caught up, and returns the totals at
    /// that moment; `drain_secs` is when the quiet period began.
    ///
    /// Caught up means, for a whole second: the spool held (almost) nothing unacknowledged,
    /// (almost) nothing new was spooled, and the pipeline's own published event count agrees
    /// with the spool's. The last matters: while the pipeline works through a ring-buffer
    /// backlog it spools in bursts and publishes its counters only between them, so a pause
    /// between bursts looks quiet on the spool alone. "Almost": the machine's background
    /// activity keeps producing a trickle of events.
    pub fn settle(&mut self, timeout: Duration) -> anyhow::Result<Accounting> {
        /// Events in flight that still count as drained (background activity).
        const SLACK: f64 = 50.0;
        /// New events in a quiet period that count as background (100/s).
        const QUIET_EVENTS: f64 = 100.0;
        const QUIET_FOR: f64 = 1.0;
        let t0 = Instant::now();
        // Start (time, spooled) of the current quiet period.
        let mut quiet_since: Option<(f64, f64)> = None;
        loop {
            let (acc, unacked, published) = self.totals()?;
            let t = t0.elapsed().as_secs_f64();
            let quiet_now = unacked <= SLACK && (acc.spooled - published).abs() <= SLACK;
            quiet_since = match quiet_since {
                _ if !quiet_now => None,
                Some((start, spooled)) if acc.spooled - spooled < QUIET_EVENTS => {
                    Some((start, spooled))
                }
                _ => Some((t, acc.spooled)),
            };
            if let Some((start, _)) = quiet_since
                && t - start >= QUIET_FOR
            {
                return Ok(Accounting {
                    settled: true,
                    drain_secs: start,
                    ..acc
                });
            }
            if t0.elapsed() > timeout {
                return Ok(Accounting {
                    drain_secs: t,
                    ..acc
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The current totals, the spool's unacknowledged events, and the events the pipeline has
    /// published as emitted (on its own tick).
    fn totals(&mut self) -> anyhow::Result<(Accounting, f64, f64)> {
        let s = self.scrape()?;
        let c = match self.collector_metrics {
            Some(addr) => Metrics::scrape(addr).context("scraping the collector")?,
            None => s.clone(),
        };
        let unacked = s.sum("nhi_sensor_spool_unacked_events");
        Ok((
            Accounting {
                spooled: s.sum("nhi_sensor_export_events_acked_total") + unacked,
                kernel_records: s.series("nhi_sensor_kernel_total", "counter=\"emitted\""),
                kernel_drops: s.sum("nhi_sensor_kernel_drops_total"),
                decode_errors: s.sum("nhi_sensor_decode_errors_total"),
                stored: c.sum("nhi_collector_events_stored_total"),
                lost: c.sum("nhi_collector_events_lost_reported_total"),
                gaps: c.sum("nhi_collector_sequence_gaps_total"),
                processes_tracked: s.sum("nhi_sensor_processes_tracked"),
                settled: false,
                drain_secs: 0.0,
            },
            unacked,
            s.sum("nhi_sensor_events_total"),
        ))
    }

    /// The hooks the sensor chose (`hook chosen` log lines): (job, hook).
    pub fn hooks(&self) -> Vec<(String, String)> {
        self.proc
            .stderr_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "hook chosen")
            .map(|v| {
                (
                    v["fields"]["job"].as_str().unwrap_or("?").to_string(),
                    v["fields"]["hook"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect()
    }

    /// Warnings and errors the sensor logged (drops, export trouble), for the report.
    pub fn warnings(&self) -> Vec<String> {
        self.proc
            .stderr_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["level"] == "WARN" || v["level"] == "ERROR")
            .map(|v| v["fields"]["message"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    /// SIGTERM; waits for the exit; with the embedded collector, returns its store's streams.
    /// A sensor that does not exit in time is killed: that is a finding for the report, not a
    /// failure of the harness.
    pub fn stop(mut self) -> anyhow::Result<Stopped> {
        let t0 = Instant::now();
        let status = self.proc.stop(STOP_GRACE)?;
        let secs = t0.elapsed().as_secs_f64();
        say!("sensor stopped in {secs:.1} s ({status})");
        let streams = if self.collector_metrics.is_some() {
            Vec::new()
        } else {
            streams(&self.bin, &self.state.join("store"))?
        };
        Ok(Stopped {
            clean: status.success(),
            status: status.to_string(),
            secs,
            streams,
        })
    }
}

/// How a sensor stopped.
pub struct Stopped {
    /// Exited 0 after SIGTERM within the grace period.
    pub clean: bool,
    pub status: String,
    /// From SIGTERM to exit.
    pub secs: f64,
    /// The embedded collector's store (empty when shipping elsewhere).
    pub streams: Vec<StreamRow>,
}

impl Stopped {
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "clean": self.clean,
            "status": self.status,
            "secs": round3(self.secs),
        })
    }
}

/// `nhi-sensor collector` on loopback (plaintext), with its own store and metrics.
pub struct Collector {
    pub proc: Guarded,
    pub listen: SocketAddr,
    pub metrics_addr: SocketAddr,
    state: TempDir,
    bin: PathBuf,
}

impl Collector {
    pub fn start(bin: &Path) -> anyhow::Result<Collector> {
        let state = TempDir::new("collector")?;
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let metrics_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let mut cmd = Command::new(bin);
        cmd.args(["--log-format", "json", "collector", "--listen"])
            .arg(listen.to_string())
            .arg("--store")
            .arg(state.join("store"))
            .arg("--metrics-addr")
            .arg(metrics_addr.to_string())
            .env_remove("NHI_SENSOR_LOG");
        let proc = Guarded::spawn("nhi-sensor collector", &mut cmd)?;
        proc.wait_for_line("collector listening", Duration::from_secs(30))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = Metrics::scrape(metrics_addr) {
            if Instant::now() > deadline {
                return Err(e).context("the collector's metrics endpoint");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Collector {
            proc,
            listen,
            metrics_addr,
            state,
            bin: bin.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stops the collector and returns its store's streams.
    pub fn stop(mut self) -> anyhow::Result<Vec<StreamRow>> {
        self.proc.stop(STOP_GRACE)?;
        streams(&self.bin, &self.state.join("store"))
    }
}

/// One row of `nhi-sensor events --streams`.
#[derive(Debug, Clone, Default)]
pub struct StreamRow {
    pub durable: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub gaps: u64,
}

impl StreamRow {
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "durable": self.durable, "stored": self.stored, "duplicates": self.duplicates,
            "lost": self.lost, "gaps": self.gaps,
        })
    }

    /// Every sequence number up to the durable position is stored: nothing missing.
    pub fn complete(&self) -> bool {
        self.gaps == 0 && self.lost == 0 && self.stored == self.durable
    }
}

fn streams(bin: &Path, store: &Path) -> anyhow::Result<Vec<StreamRow>> {
    let out = output(
        Command::new(bin)
            .args(["events", "--streams", "--store"])
            .arg(store),
    )?;
    let v: Value = serde_json::from_str(&out).context("parsing `events --streams`")?;
    let rows = v
        .as_array()
        .context("`events --streams` is not a JSON array")?;
    Ok(rows
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap_or(0);
            StreamRow {
                durable: n("durable"),
                stored: n("stored"),
                duplicates: n("duplicates"),
                lost: n("lost"),
                gaps: n("gaps"),
            }
        })
        .collect())
}
