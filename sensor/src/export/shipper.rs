//! The shipper task: spool → collector over one `Ship` stream at a time.
//!
//! A stream starts with an empty batch; the collector's first ack says what it already holds,
//! and sending resumes right after it. Batches then go out as the spool fills, at most
//! `MAX_IN_FLIGHT` events ahead of the last ack; each ack lets the spool delete what is
//! stored. Any failure ends the stream; the next one starts after a jittered exponential
//! backoff, from the last ack, so the collector may see an event twice (it deduplicates),
//! never miss one.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nhi_proto::v1::{self as pb, collector_client::CollectorClient};
use prost::Message as _;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{codec::CompressionEncoding, transport::Endpoint};

use super::{
    ExportMetrics,
    spool::{Entry, Spool},
};

/// Events per batch: large enough to amortize the per-message cost, small enough (with
/// `BATCH_BYTES`) to stay far below the collector's 4 MiB message limit.
const BATCH_EVENTS: usize = 1000;
const BATCH_BYTES: usize = 1 << 20;
/// Events sent but not yet acknowledged, at most: bounds what a stream failure resends.
const MAX_IN_FLIGHT: u64 = 20_000;
/// An empty batch this often keeps an idle stream alive and refreshes the ack.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// Reconnect backoff: from 200 ms, doubling, up to 30 s, each wait drawn uniformly from its
/// upper half so a fleet that lost its collector does not reconnect in lockstep.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An ack for the first batch must come within this; a collector that accepts the stream but
/// never answers is treated as down.
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(15);

pub struct ShipperHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    spool: Arc<Mutex<Spool>>,
}

impl ShipperHandle {
    /// Stops after giving the shipper up to `grace` to deliver what is spooled. Whatever is
    /// left stays in the spool for the next start.
    pub async fn shutdown(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            let s = self.spool.lock().expect("spool mutex").stats();
            if s.unacked_records == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let s = self.spool.lock().expect("spool mutex").stats();
        if s.unacked_records > 0 {
            tracing::info!(
                unacked = s.unacked_records,
                "events left in the spool; they are shipped at the next start"
            );
        }
        if let Err(e) = self.spool.lock().expect("spool mutex").sync() {
            tracing::warn!(error = %format!("{e:#}"), "syncing the spool at shutdown");
        }
    }
}

pub fn spawn(
    endpoint: Endpoint,
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
    sensor: pb::SensorIdentity,
    metrics: Arc<ExportMetrics>,
) -> ShipperHandle {
    let (stop, mut stopped) = watch::channel(false);
    let task_spool = spool.clone();
    let task = tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        let mut sync_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                r = ship_once(&endpoint, &task_spool, &notify, &sensor, &metrics, &mut sync_tick) => r,
                _ = stopped.changed() => return,
            };
            metrics.connected.set(0);
            match result {
                Ok(()) => tracing::info!("collector closed the stream; reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "shipping to the collector failed; will retry")
                }
            }
            metrics.reconnects.inc();
            // A stream that lived a while was healthy: start the backoff over.
            if started.elapsed() > Duration::from_secs(30) {
                backoff = BACKOFF_MIN;
            }
            let wait = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    });
    ShipperHandle { stop, task, spool }
}

fn loss_event(sensor: &pb::SensorIdentity, first: u64, last: u64) -> pb::Event {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    pb::Event {
        sensor: Some(sensor.clone()),
        sequence: first,
        kind: pb::EventKind::SensorLoss as i32,
        time: Some(prost_types::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        }),
        payload: Some(pb::event::Payload::Loss(pb::Loss {
            reason: pb::LossReason::SpoolFull as i32,
            first_sequence: first,
            last_sequence: last,
            count: last - first + 1,
        })),
        ..Default::default()
    }
}

/// Reads the next batch from `cursor`. Returns the batch and the new cursor.
fn next_batch(
    spool: &Mutex<Spool>,
    sensor: &pb::SensorIdentity,
    cursor: u64,
) -> anyhow::Result<(Vec<pb::Event>, u64)> {
    let entries =
        spool
            .lock()
            .expect("spool mutex")
            .read_from(cursor, BATCH_EVENTS, BATCH_BYTES)?;
    let mut events = Vec::with_capacity(entries.len());
    let mut next = cursor;
    for e in entries {
        match e {
            Entry::Record { seq, bytes } => {
                next = seq + 1;
                match pb::Event::decode(bytes.as_slice()) {
                    Ok(ev) => events.push(ev),
                    Err(err) => {
                        // The CRC matched, so this is a bug, not disk damage: report it as lost.
                        tracing::error!(seq, error = %err, "undecodable spool record");
                        events.push(loss_event(sensor, seq, seq));
                    }
                }
            }
            Entry::Lost { first, last } => {
                tracing::warn!(first, last, "reporting events the spool discarded");
                next = last + 1;
                events.push(loss_event(sensor, first, last));
            }
        }
    }
    Ok((events, next))
}

async fn ship_once(
    endpoint: &Endpoint,
    spool: &Arc<Mutex<Spool>>,
    notify: &Notify,
    sensor: &pb::SensorIdentity,
    metrics: &ExportMetrics,
    sync_tick: &mut tokio::time::Interval,
) -> anyhow::Result<()> {
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {}", endpoint.uri()))?;
    let mut client = CollectorClient::new(channel)
        .send_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_encoding_message_size(4 << 20);
    let (tx, rx) = mpsc::channel::<pb::EventBatch>(8);
    let next_seq = spool.lock().expect("spool mutex").next_sequence();
    tx.send(pb::EventBatch {
        sensor: Some(sensor.clone()),
        first_sequence: next_seq,
        events: Vec::new(),
    })
    .await?;
    let mut acks = client
        .ship(ReceiverStream::new(rx))
        .await
        .context("opening the Ship stream")?
        .into_inner();
    let first = tokio::time::timeout(FIRST_ACK_TIMEOUT, acks.message())
        .await
        .context("no ack from the collector")??
        .context("the collector ended the stream before its first ack")?;
    let mut acked = first.durable_sequence;
    {
        let mut s = spool.lock().expect("spool mutex");
        if acked > 0 {
            s.ack(acked)?;
        }
        acked = acked.max(s.acked());
    }
    metrics.connected.set(1);
    tracing::info!(uri = %endpoint.uri(), acked, "shipping to the collector");
    let mut cursor = acked + 1;
    // When each in-flight batch was sent: its ack latency is measured against this.
    let mut sent_at: std::collections::VecDeque<(u64, Instant)> = Default::default();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    loop {
        // Send what is spooled, within the in-flight bound.
        while cursor.saturating_sub(acked + 1) < MAX_IN_FLIGHT {
            let (events, next) = next_batch(spool, sensor, cursor)?;
            if events.is_empty() {
                break;
            }
            let n = events.len() as u64;
            let first_sequence = events[0].sequence;
            tx.send(pb::EventBatch {
                sensor: Some(sensor.clone()),
                first_sequence,
                events,
            })
            .await
            .context("the Ship stream closed")?;
            metrics.batches_sent.inc();
            metrics.events_sent.add(n);
            sent_at.push_back((next - 1, Instant::now()));
            cursor = next;
            keepalive.reset();
        }
        tokio::select! {
            ack = acks.message() => {
                let ack = match ack {
                    Ok(Some(a)) => a,
                    Ok(None) => return Ok(()),
                    Err(status) => bail!("the collector ended the stream: {:?}: {}", status.code(), status.message()),
                };
                if ack.durable_sequence < acked {
                    bail!("the collector's ack went backwards ({} after {acked})", ack.durable_sequence);
                }
                if ack.durable_sequence > acked {
                    spool.lock().expect("spool mutex").ack(ack.durable_sequence)?;
                    metrics.acked.add(ack.durable_sequence - acked);
                    acked = ack.durable_sequence;
                    while let Some((last, at)) = sent_at.front() && *last <= acked {
                        *metrics.ack_latency_seconds_total.lock().expect("metrics") += at.elapsed().as_secs_f64();
                        sent_at.pop_front();
                    }
                }
            }
            _ = notify.notified() => {}
            _ = keepalive.tick() => {
                tx.send(pb::EventBatch { sensor: Some(sensor.clone()), first_sequence: cursor, events: Vec::new() })
                    .await
                    .context("the Ship stream closed")?;
            }
            _ = sync_tick.tick() => {
                spool.lock().expect("spool mutex").sync()?;
            }
        }
    }
}
