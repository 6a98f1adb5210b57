//! `nhisensor.v1.Collector/Ship`: sensors' event streams in, acknowledgements out.
//!
//! Each batch is checked, produced to Kafka when that sink is on (see [`super::kafka`] for why
//! before the store), committed to the store (which deduplicates), then handed to the hub for
//! the live sinks, and acknowledged with the stream's durable position. Hostile or
//! broken clients are cut off with a status that says why; they cannot slow the others:
//! every stream has its own task, the store commit is the only shared step, and a client
//! that sends faster than its rate limit is simply read more slowly.

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use nhi_proto::v1::{self as pb, collector_server::Collector};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::{
    Hub,
    kafka::{KafkaSink, Record},
    metrics::CollectorMetrics,
    store::Store,
};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A stream with no batch for this long is ended (DEADLINE_EXCEEDED). Sensors send a
    /// keepalive batch every `KEEPALIVE` (5 s); 60 s tolerates a long GC-like pause while
    /// still freeing what a stalled or abandoned client holds.
    pub idle: Duration,
    /// Events per second one stream may send before it is slowed down (0 = no limit).
    pub events_per_second: u64,
}

pub struct Ingest {
    pub store: Store,
    pub hub: Arc<Hub>,
    pub limits: Limits,
    pub metrics: Arc<CollectorMetrics>,
    pub kafka: Option<Arc<KafkaSink>>,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::Ack, Status>> + Send>>;

fn check_batch(
    first: &Option<pb::SensorIdentity>,
    batch: &pb::EventBatch,
) -> Result<pb::SensorIdentity, Status> {
    let sensor = batch
        .sensor
        .clone()
        .ok_or_else(|| Status::invalid_argument("EventBatch.sensor is required on every batch"))?;
    if sensor.sensor_id.is_empty() || sensor.stream_id.is_empty() {
        return Err(Status::invalid_argument(
            "EventBatch.sensor needs a sensor_id and a stream_id",
        ));
    }
    if sensor.sensor_id.len() > 256 || sensor.stream_id.len() > 256 {
        return Err(Status::invalid_argument(
            "sensor_id/stream_id longer than 256 bytes",
        ));
    }
    if let Some(f) = first
        && (f.sensor_id != sensor.sensor_id || f.stream_id != sensor.stream_id)
    {
        return Err(Status::failed_precondition(format!(
            "one Ship stream carries one sensor stream: started as {}/{}, got {}/{}",
            f.sensor_id, f.stream_id, sensor.sensor_id, sensor.stream_id
        )));
    }
    let mut prev = 0u64;
    for ev in &batch.events {
        if ev.sequence == 0 || ev.sequence <= prev {
            return Err(Status::invalid_argument(format!(
                "events must carry increasing sequence numbers >= 1 (got {} after {prev})",
                ev.sequence
            )));
        }
        prev = ev.sequence;
    }
    Ok(sensor)
}

/// Token bucket: how long to wait before `n` more events may be read.
struct RateLimit {
    per_second: u64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_second: u64) -> Self {
        Self {
            per_second,
            tokens: per_second as f64,
            last: Instant::now(),
        }
    }

    fn delay_for(&mut self, n: usize) -> Option<Duration> {
        if self.per_second == 0 {
            return None;
        }
        let now = Instant::now();
        let rate = self.per_second as f64;
        // At most one second of burst.
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
        self.tokens -= n as f64;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / rate))
    }
}

/// The gRPC service: one shared [`Ingest`] behind every stream.
#[derive(Clone)]
pub struct IngestService(pub Arc<Ingest>);

#[tonic::async_trait]
impl Collector for IngestService {
    type ShipStream = AckStream;

    async fn ship(
        &self,
        request: Request<Streaming<pb::EventBatch>>,
    ) -> Result<Response<Self::ShipStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "in-process".into());
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let this = self.0.clone();
        tokio::spawn(async move {
            this.metrics.streams_open.inc();
            let result = this.serve_stream(&mut inbound, &tx).await;
            this.metrics.streams_open.dec();
            if let Err(status) = result {
                tracing::info!(%peer, code = ?status.code(), message = status.message(), "sensor stream ended");
                this.metrics.stream_errors.inc();
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn inventory(
        &self,
        request: Request<pb::InventoryRequest>,
    ) -> Result<Response<pb::InventoryResponse>, Status> {
        let pb::InventoryRequest {
            unused_days,
            rotation_days_default,
            rotation_days,
        } = request.into_inner();
        let defaults = super::inventory::PolicyArgs {
            unused_days: super::inventory::DEFAULT_UNUSED_DAYS,
            rotation_days: super::inventory::DEFAULT_ROTATION_DAYS,
            rotation: Vec::new(),
        };
        let mut policy = super::inventory::Policy::from_args(&defaults);
        if unused_days > 0 {
            policy.unused_days = unused_days;
        }
        if rotation_days_default > 0 {
            policy.rotation_days_default = rotation_days_default;
        }
        policy.rotation_days.extend(rotation_days);
        let store = self.0.store.clone();
        let inv = tokio::task::spawn_blocking(move || {
            let conn = store.reader()?;
            super::inventory::build(&conn, policy, super::store::now_ns())
        })
        .await
        .map_err(|e| Status::internal(format!("inventory task: {e}")))?
        .map_err(|e| Status::internal(format!("{e:#}")))?;
        let json = serde_json::to_string(&inv).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::InventoryResponse { json }))
    }
}

impl Ingest {
    async fn serve_stream(
        &self,
        inbound: &mut Streaming<pb::EventBatch>,
        tx: &mpsc::Sender<Result<pb::Ack, Status>>,
    ) -> Result<(), Status> {
        let mut first: Option<pb::SensorIdentity> = None;
        let mut rate = RateLimit::new(self.limits.events_per_second);
        loop {
            let batch = match tokio::time::timeout(self.limits.idle, inbound.message()).await {
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "no batch for {} s: stream closed (sensors send keepalives)",
                        self.limits.idle.as_secs()
                    )));
                }
                Ok(Err(status)) => return Err(status),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(b))) => b,
            };
            let sensor = check_batch(&first, &batch)?;
            if let Some(d) = rate.delay_for(batch.events.len()) {
                self.metrics.rate_limited.inc();
                tokio::time::sleep(d).await;
            }
            let n = batch.events.len();
            let durable = if n == 0 {
                let store = self.store.clone();
                let (sid, st) = (sensor.sensor_id.clone(), sensor.stream_id.clone());
                tokio::task::spawn_blocking(move || store.durable(&sid, &st))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(|e| Status::unavailable(format!("store: {e:#}")))?
            } else {
                let mut events = batch.events;
                if let Some(kafka) = &self.kafka {
                    events = self.produce(kafka, &sensor, events).await?;
                }
                let store = self.store.clone();
                let s = sensor.clone();
                let started = Instant::now();
                let committed = tokio::task::spawn_blocking(move || store.commit(&s, events))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(|e| Status::unavailable(format!("store: {e:#}")))?;
                self.metrics
                    .observe_commit(&committed, n, started.elapsed());
                let durable = committed.durable;
                self.hub.publish(committed.stored);
                durable
            };
            if first.is_none() {
                first = Some(sensor);
            }
            if tx
                .send(Ok(pb::Ack {
                    durable_sequence: durable,
                }))
                .await
                .is_err()
            {
                return Ok(()); // the client went away
            }
        }
    }

    /// Produces every event of a batch, duplicates of stored ones too (a batch that failed in
    /// Kafka was not stored, but some of its events may have reached Kafka: they go again,
    /// under the same key), and waits for the brokers' acknowledgement. Returns the events
    /// for the store; a failure ends the stream with UNAVAILABLE, so the sensor resends.
    async fn produce(
        &self,
        kafka: &KafkaSink,
        sensor: &pb::SensorIdentity,
        events: Vec<pb::Event>,
    ) -> Result<Vec<pb::Event>, Status> {
        let s = sensor.clone();
        // OCSF mapping and JSON encoding of up to 1000 events: CPU work, off the async threads.
        let (events, records) = tokio::task::spawn_blocking(move || {
            let mut events = events;
            let records: Vec<Record> = events.iter_mut().map(|ev| Record::of(&s, ev)).collect();
            (events, records)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        match kafka.deliver(&records).await {
            Ok(()) => {
                self.metrics.kafka_delivered.add(records.len() as u64);
                Ok(events)
            }
            Err(e) => {
                self.metrics.kafka_failures.inc();
                Err(Status::unavailable(format!("kafka: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_checked() {
        let s = pb::SensorIdentity {
            sensor_id: "a".into(),
            stream_id: "b".into(),
            ..Default::default()
        };
        let ev = |seq| pb::Event {
            sequence: seq,
            ..Default::default()
        };
        let batch = |events| pb::EventBatch {
            sensor: Some(s.clone()),
            first_sequence: 1,
            events,
        };
        assert!(check_batch(&None, &batch(vec![ev(1), ev(2)])).is_ok());
        let e = check_batch(&None, &batch(vec![ev(2), ev(2)])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = check_batch(&None, &batch(vec![ev(0)])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let other = pb::SensorIdentity {
            stream_id: "c".into(),
            ..s.clone()
        };
        let e = check_batch(&Some(other), &batch(vec![])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        let e = check_batch(&None, &pb::EventBatch::default()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn rate_limit_delays_beyond_the_burst() {
        let mut r = RateLimit::new(1000);
        assert!(r.delay_for(1000).is_none());
        let d = r.delay_for(500).unwrap();
        assert!(d > Duration::from_millis(400), "{d:?}");
        assert!(RateLimit::new(0).delay_for(1 << 30).is_none());
    }
}
