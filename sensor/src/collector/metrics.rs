//! The collector's own metrics (`/metrics` on `--metrics-addr`).

use std::time::Duration;

use crate::metrics::{Counter, Gauge, counter, family, gauge};

use super::store::Committed;

#[derive(Debug, Default)]
pub struct CollectorMetrics {
    pub events_received: Counter,
    pub events_stored: Counter,
    pub duplicates: Counter,
    pub lost_reported: Counter,
    pub sequence_gaps: Counter,
    pub batches: Counter,
    pub commit_seconds_total: std::sync::Mutex<f64>,
    pub streams_open: Gauge,
    pub stream_errors: Counter,
    pub rate_limited: Counter,
    pub subscribers: Gauge,
    pub subscriber_lagged: Counter,
    pub ocsf_written: Counter,
    pub kafka_delivered: Counter,
    pub kafka_failures: Counter,
}

impl CollectorMetrics {
    pub fn observe_commit(&self, c: &Committed, received: usize, took: Duration) {
        self.batches.inc();
        self.events_received.add(received as u64);
        self.events_stored.add(c.stored.len() as u64);
        self.duplicates.add(c.duplicates);
        self.lost_reported.add(c.lost);
        self.sequence_gaps.add(c.gaps);
        *self.commit_seconds_total.lock().expect("metrics") += took.as_secs_f64();
    }

    pub fn render(&self, out: &mut String) {
        counter(
            out,
            "nhi_collector_events_received_total",
            "Events received from sensors, duplicates included.",
            &self.events_received,
        );
        counter(
            out,
            "nhi_collector_events_stored_total",
            "Events stored (each once).",
            &self.events_stored,
        );
        counter(
            out,
            "nhi_collector_duplicates_total",
            "Redelivered events dropped by deduplication.",
            &self.duplicates,
        );
        counter(
            out,
            "nhi_collector_events_lost_reported_total",
            "Events sensors reported lost through loss records.",
            &self.lost_reported,
        );
        counter(
            out,
            "nhi_collector_sequence_gaps_total",
            "Missing sequence numbers no loss record explained.",
            &self.sequence_gaps,
        );
        counter(
            out,
            "nhi_collector_batches_total",
            "Batches committed.",
            &self.batches,
        );
        family(
            out,
            "nhi_collector_commit_seconds_total",
            "counter",
            "Time spent committing batches to the store.",
            &[("", *self.commit_seconds_total.lock().expect("metrics"))],
        );
        gauge(
            out,
            "nhi_collector_sensor_streams",
            "Open sensor Ship streams.",
            &self.streams_open,
        );
        counter(
            out,
            "nhi_collector_stream_errors_total",
            "Sensor streams ended with an error status.",
            &self.stream_errors,
        );
        counter(
            out,
            "nhi_collector_rate_limited_total",
            "Batches delayed by the per-stream rate limit.",
            &self.rate_limited,
        );
        gauge(
            out,
            "nhi_collector_subscribers",
            "Connected subscribers.",
            &self.subscribers,
        );
        counter(
            out,
            "nhi_collector_subscriber_lagged_total",
            "Events slow subscribers skipped.",
            &self.subscriber_lagged,
        );
        counter(
            out,
            "nhi_collector_ocsf_written_total",
            "OCSF lines written.",
            &self.ocsf_written,
        );
        counter(
            out,
            "nhi_collector_kafka_delivered_total",
            "Events the Kafka brokers acknowledged (resent events included).",
            &self.kafka_delivered,
        );
        counter(
            out,
            "nhi_collector_kafka_failures_total",
            "Batches the Kafka brokers did not acknowledge in time: failed back to the sensor, which resends them.",
            &self.kafka_failures,
        );
    }
}
