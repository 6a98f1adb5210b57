//! The running sensor's own health, as Prometheus metrics and readiness (`run --metrics-addr`):
//! events by kind, the kernel's counters (drops by reason, rule hits), the process table, the
//! spool and the export stream.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, atomic::AtomicBool, atomic::Ordering},
};

use crate::{
    export::{ExportMetrics, spool::Spool},
    metrics::{Gauge, counter, family, gauge, label},
};

/// What the pipeline publishes (on its 250 ms tick).
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    pub events: Mutex<BTreeMap<&'static str, u64>>,
    /// The kernel's counters by name, and whether each is a loss.
    pub kernel: Mutex<BTreeMap<&'static str, (u64, bool)>>,
    pub decode_errors: Gauge,
    pub processes: Gauge,
    /// Detection findings reported, by rule id; and those an allow-list or the repeat window
    /// held back.
    pub findings: Mutex<BTreeMap<&'static str, u64>>,
    pub findings_allowed: Gauge,
    pub findings_suppressed: Gauge,
}

pub struct SensorStatus {
    pub pipeline: Arc<PipelineMetrics>,
    pub export: Arc<ExportMetrics>,
    pub spool: Arc<Mutex<Spool>>,
    pub embedded_collector: Option<Arc<crate::collector::metrics::CollectorMetrics>>,
    /// Set once the programs are attached and the pipeline runs.
    pub ready: AtomicBool,
}

impl crate::http::Status for SensorStatus {
    fn metrics(&self) -> String {
        let mut out = String::new();
        let events = self.pipeline.events.lock().expect("metrics").clone();
        let samples: Vec<(String, f64)> = events
            .iter()
            .map(|(k, v)| (format!("kind=\"{}\"", label(k)), *v as f64))
            .collect();
        let refs: Vec<(&str, f64)> = samples.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        family(
            &mut out,
            "nhi_sensor_events_total",
            "counter",
            "Events emitted, by kind.",
            &refs,
        );
        let findings = self.pipeline.findings.lock().expect("metrics").clone();
        let samples: Vec<(String, f64)> = findings
            .iter()
            .map(|(k, v)| (format!("rule=\"{}\"", label(k)), *v as f64))
            .collect();
        let refs: Vec<(&str, f64)> = samples.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        family(
            &mut out,
            "nhi_sensor_findings_total",
            "counter",
            "Detection findings reported, by rule id.",
            &refs,
        );
        let held = [
            (
                "nhi_sensor_findings_allowed_total",
                "Findings an allow-list entry matched (not reported).",
                &self.pipeline.findings_allowed,
            ),
            (
                "nhi_sensor_findings_suppressed_total",
                "Findings held back because the same one fired within repeat_after_s.",
                &self.pipeline.findings_suppressed,
            ),
        ];
        for (name, help, g) in held {
            family(&mut out, name, "counter", help, &[("", g.get() as f64)]);
        }
        let kernel = self.pipeline.kernel.lock().expect("metrics").clone();
        let drops: Vec<(String, f64)> = kernel
            .iter()
            .filter(|(_, (_, loss))| *loss)
            .map(|(k, (v, _))| (format!("reason=\"{k}\""), *v as f64))
            .collect();
        let refs: Vec<(&str, f64)> = drops.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        family(
            &mut out,
            "nhi_sensor_kernel_drops_total",
            "counter",
            "Events the kernel could not deliver, by reason.",
            &refs,
        );
        let other: Vec<(String, f64)> = kernel
            .iter()
            .filter(|(_, (_, loss))| !*loss)
            .map(|(k, (v, _))| (format!("counter=\"{k}\""), *v as f64))
            .collect();
        let refs: Vec<(&str, f64)> = other.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        family(
            &mut out,
            "nhi_sensor_kernel_total",
            "counter",
            "The eBPF programs' activity counters (opens_matched = rule hits).",
            &refs,
        );
        gauge(
            &mut out,
            "nhi_sensor_decode_errors_total",
            "Kernel records userspace could not decode.",
            &self.pipeline.decode_errors,
        );
        gauge(
            &mut out,
            "nhi_sensor_processes_tracked",
            "Processes in the process table.",
            &self.pipeline.processes,
        );
        let s = self.spool.lock().expect("spool mutex").stats();
        family(
            &mut out,
            "nhi_sensor_spool_bytes",
            "gauge",
            "Bytes in the spool.",
            &[("", s.bytes as f64)],
        );
        family(
            &mut out,
            "nhi_sensor_spool_unacked_events",
            "gauge",
            "Events waiting for the collector's acknowledgement.",
            &[("", s.unacked_records as f64)],
        );
        family(
            &mut out,
            "nhi_sensor_spool_evicted_total",
            "counter",
            "Events the full spool discarded (each range sent as a loss record).",
            &[("", s.evicted_records_total as f64)],
        );
        family(
            &mut out,
            "nhi_sensor_spool_corrupt_total",
            "counter",
            "Spool records that could not be read back.",
            &[("", s.corrupt_records_total as f64)],
        );
        let x = &self.export;
        counter(
            &mut out,
            "nhi_sensor_spool_write_errors_total",
            "Events that could not be spooled (lost).",
            &x.spool_write_errors,
        );
        gauge(
            &mut out,
            "nhi_sensor_export_connected",
            "1 while a Ship stream to the collector is up.",
            &x.connected,
        );
        counter(
            &mut out,
            "nhi_sensor_export_events_sent_total",
            "Events sent (resends included).",
            &x.events_sent,
        );
        counter(
            &mut out,
            "nhi_sensor_export_events_acked_total",
            "Events the collector acknowledged as stored.",
            &x.acked,
        );
        counter(
            &mut out,
            "nhi_sensor_export_batches_total",
            "Batches sent.",
            &x.batches_sent,
        );
        counter(
            &mut out,
            "nhi_sensor_export_reconnects_total",
            "Ship streams that ended and were retried.",
            &x.reconnects,
        );
        family(
            &mut out,
            "nhi_sensor_export_ack_latency_seconds_total",
            "counter",
            "Sum over batches of the time from send to acknowledgement (divide by batches for the mean).",
            &[("", *x.ack_latency_seconds_total.lock().expect("metrics"))],
        );
        if let Some(c) = &self.embedded_collector {
            c.render(&mut out);
        }
        out
    }

    fn ready(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("programs not attached yet".into())
        }
    }
}
