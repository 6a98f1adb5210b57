//! The Kafka sink: every event a sensor ships is produced to a Kafka topic as its OCSF JSON,
//! where SIEM connectors (Splunk, Sentinel, Elastic, Chronicle, ...) already read.
//!
//! **Messages.** Value: the OCSF event ([`ocsf::to_ocsf`], the same JSON as the OCSF file and
//! `nhi-sensor events --format json`). Key: its `metadata.uid`, "SENSOR_ID:STREAM_ID:SEQUENCE"
//! ([`ocsf::event_uid`]), the same for every copy of an event, whichever collector replica
//! produced it and however often the sensor resent it: a compacted topic or a consumer that
//! remembers keys removes the duplicates. Headers: `sensor_id`, `node`, `kind` (the nhi kind,
//! e.g. `file.open`), so a router can filter without parsing JSON.
//!
//! **Delivery.** The producer is idempotent (`enable.idempotence`, `acks=all`): its own
//! retries never duplicate a message. The collector produces a batch *before* committing it to
//! its store and acknowledges the batch to the sensor only after both, so the store never
//! holds an event the broker has not acknowledged. That ordering matters: a reconnecting
//! sensor resumes after what the collector's store holds, so a batch stored but not produced
//! would never be resent. When the broker does not acknowledge every event of a batch within
//! `--kafka-timeout-secs`, the stream ends with UNAVAILABLE, nothing of the batch is stored,
//! and the sensor resends it from its spool (the events that did reach Kafka get there twice,
//! under the same key). The failed batch's producer is replaced by a new one (see
//! [`KafkaSink::replace`]).

use std::{collections::VecDeque, fmt, sync::Mutex, time::Duration};

use anyhow::Context as _;
use clap::Args;
use nhi_proto::v1 as pb;
use rdkafka::{
    ClientConfig, ClientContext,
    config::RDKafkaLogLevel,
    error::{KafkaError, KafkaResult, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
};

use super::ocsf;

/// One topic for every event class: a SIEM connector subscribes to one name and routes on the
/// OCSF `class_uid` (or the `kind` header). Dotted `<product>.<format>` so the topic says what
/// it carries next to other products' topics on a shared cluster.
pub const DEFAULT_TOPIC: &str = "nhi-sensor.ocsf";
/// How long the broker may take to acknowledge a batch before it is failed back to the
/// sensor. 30 s rides out a partition leader election or a broker restart without failing
/// anything; a longer outage is better buffered by the sensors' spools (hundreds of MiB per
/// node) than by the collector's memory.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;

/// Producer settings the sink sets before `--kafka-option`s (which may override them).
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    // No duplicates from the producer's own retries, and a message counts as delivered only
    // when every in-sync replica has it.
    ("enable.idempotence", "true"),
    ("acks", "all"),
    // OCSF JSON is repetitive: zstd shrinks it several times over at little CPU cost.
    ("compression.type", "zstd"),
    // A batch from a sensor is up to 1000 events produced at once; 5 ms gathers them (and
    // other streams' events) into few requests without adding noticeable ack latency.
    ("linger.ms", "5"),
    // The partition of a key is the one the Java client (and Kafka Streams, ksqlDB) would
    // choose, so every copy of an event, from any producer, lands in the same partition,
    // which is what log compaction needs to remove duplicates.
    ("partitioner", "murmur2_random"),
    ("client.id", "nhi-sensor-collector"),
];

#[derive(Debug, Args, Clone)]
pub struct KafkaArgs {
    /// Produce every event, as OCSF JSON keyed by its `metadata.uid`, to these Kafka brokers
    /// (bootstrap list). Enables the Kafka sink: batches are then acknowledged to sensors only
    /// once the brokers have them.
    #[arg(long, value_name = "HOST:PORT[,...]")]
    pub kafka_brokers: Option<String>,

    /// The topic to produce to (it must exist unless the brokers auto-create topics).
    #[arg(long, value_name = "TOPIC", default_value = DEFAULT_TOPIC)]
    pub kafka_topic: String,

    /// Seconds the brokers may take to acknowledge every event of a batch; past that, the
    /// sensor's stream ends with UNAVAILABLE and the sensor resends the batch.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub kafka_timeout_secs: u64,

    /// A librdkafka producer setting, e.g. `security.protocol=SSL`,
    /// `ssl.ca.location=/etc/nhi/kafka-ca.pem`, `sasl.mechanism=SCRAM-SHA-512`. Repeatable;
    /// applied after (and so overriding) the sink's defaults: idempotence, acks=all, zstd,
    /// linger.ms=5, the murmur2 partitioner.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = parse_option)]
    pub kafka_options: Vec<KafkaOption>,
}

impl KafkaArgs {
    /// No Kafka sink (the embedded collector).
    pub fn disabled() -> Self {
        Self {
            kafka_brokers: None,
            kafka_topic: DEFAULT_TOPIC.to_string(),
            kafka_timeout_secs: DEFAULT_TIMEOUT_SECS,
            kafka_options: Vec::new(),
        }
    }
}

/// A `--kafka-option`. Its value is never printed: it may be a password.
#[derive(Clone)]
pub struct KafkaOption {
    pub key: String,
    pub value: String,
}

impl fmt::Debug for KafkaOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=…", self.key)
    }
}

fn parse_option(s: &str) -> Result<KafkaOption, String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok(KafkaOption {
            key: k.trim().to_string(),
            value: v.to_string(),
        }),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// One event, ready to produce.
pub struct Record {
    key: String,
    value: Vec<u8>,
    sensor_id: String,
    node: String,
    kind: String,
}

impl Record {
    /// The message of one event of `sensor`'s batch. Sets the event's sensor when the batch
    /// left it out, as the store does, so key and value match the stored event's.
    pub fn of(sensor: &pb::SensorIdentity, ev: &mut pb::Event) -> Self {
        if ev.sensor.is_none() {
            ev.sensor = Some(sensor.clone());
        }
        let json = ocsf::to_ocsf(ev);
        let kind = json["metadata"]["event_code"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Self {
            key: ocsf::event_uid(ev),
            value: serde_json::to_vec(&json).expect("a JSON value serializes"),
            sensor_id: sensor.sensor_id.clone(),
            node: sensor.node_name.clone(),
            kind,
        }
    }

    fn headers(&self) -> OwnedHeaders {
        OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "sensor_id",
                value: Some(&self.sensor_id),
            })
            .insert(Header {
                key: "node",
                value: Some(&self.node),
            })
            .insert(Header {
                key: "kind",
                value: Some(&self.kind),
            })
    }
}

/// Why a batch did not reach Kafka.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the brokers did not acknowledge the batch within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    #[error("the producer dropped a message without a delivery report")]
    Canceled,
}

/// The sink: one producer shared by every sensor stream.
pub struct KafkaSink {
    config: ClientConfig,
    topic: String,
    timeout: Duration,
    producer: Mutex<Current>,
    /// The last error librdkafka reported, shared by successive producers (see [`SinkContext`]).
    last_error: LastError,
}

/// The producer in use, and how many were started before it.
struct Current {
    generation: u64,
    producer: Producer,
}

type Producer = FutureProducer<SinkContext>;

impl KafkaSink {
    /// `None` when `--kafka-brokers` is not given. Fails on a setting librdkafka rejects; an
    /// unreachable broker is not an error here (batches wait for it, then fail).
    pub fn from_args(args: &KafkaArgs) -> anyhow::Result<Option<Self>> {
        let KafkaArgs {
            kafka_brokers,
            kafka_topic,
            kafka_timeout_secs,
            kafka_options,
        } = args;
        let Some(brokers) = kafka_brokers else {
            return Ok(None);
        };
        let timeout = Duration::from_secs((*kafka_timeout_secs).max(1));
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        for (k, v) in PRODUCER_DEFAULTS {
            config.set(*k, *v);
        }
        // librdkafka's own give-up time for a message, retries included: longer than the
        // batch timeout, so it never expires messages itself (see `replace`).
        config.set(
            "message.timeout.ms",
            (timeout + MESSAGE_TIMEOUT_MARGIN).as_millis().to_string(),
        );
        for KafkaOption { key, value } in kafka_options {
            config.set(key, value);
        }
        let last_error = LastError::default();
        let producer = create(&config, &last_error)
            .context("creating the Kafka producer (check the --kafka-option settings)")?;
        tracing::info!(%brokers, topic = %kafka_topic, "Kafka sink enabled");
        Ok(Some(Self {
            config,
            topic: kafka_topic.clone(),
            timeout,
            producer: Mutex::new(Current {
                generation: 0,
                producer,
            }),
            last_error,
        }))
    }

    /// Logs whether the brokers answer and have the topic (at start, for the operator).
    pub fn spawn_check(self: &std::sync::Arc<Self>) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let (_, producer) = this.current();
            let md = producer
                .client()
                .fetch_metadata(Some(&this.topic), Duration::from_secs(10));
            let partitions = md.as_ref().ok().and_then(|md| {
                md.topics()
                    .iter()
                    .find(|t| t.name() == this.topic && t.error().is_none())
                    .map(|t| t.partitions().len())
            });
            match (md, partitions) {
                (Ok(_), Some(n)) => {
                    tracing::info!(topic = %this.topic, partitions = n, "Kafka brokers reachable")
                }
                (Ok(_), None) => tracing::warn!(
                    topic = %this.topic,
                    "Kafka topic not found (create it, or let the brokers auto-create it)"
                ),
                (Err(e), _) => tracing::warn!(
                    error = %e,
                    "Kafka brokers not reachable yet: batches wait for them"
                ),
            }
        });
    }

    fn current(&self) -> (u64, Producer) {
        let c = self.producer.lock().expect("kafka producer");
        (c.generation, c.producer.clone())
    }

    /// Produces every record and waits until the brokers acknowledged all of them, for at
    /// most the batch timeout.
    pub async fn deliver(&self, records: &[Record]) -> Result<(), DeliveryError> {
        let (generation, producer) = self.current();
        let result = tokio::time::timeout(self.timeout, self.produce_all(&producer, records))
            .await
            .unwrap_or(Err(DeliveryError::Timeout(self.timeout)));
        if let Err(e) = &result {
            self.replace(generation, e);
        }
        if self.current().0 != generation {
            // Replaced: if this is the last handle, dropping it purges and flushes (blocking).
            tokio::task::spawn_blocking(move || drop(producer));
        }
        result
    }

    async fn produce_all(
        &self,
        producer: &Producer,
        records: &[Record],
    ) -> Result<(), DeliveryError> {
        let mut pending = VecDeque::with_capacity(records.len());
        for r in records {
            let mut record = FutureRecord::to(&self.topic)
                .key(&r.key)
                .payload(&r.value)
                .headers(r.headers());
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    // The local queue is full (other streams' batches): wait for our oldest
                    // message, which frees room, then retry.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        match pending.pop_front() {
                            Some(delivery) => check(delivery.await)?,
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        // Every message is in flight: the total wait is the slowest one's.
        for delivery in pending {
            check(delivery.await)?;
        }
        Ok(())
    }

    /// After a failed batch, replaces the producer (unless another stream already did) with a
    /// new one, with a new producer id. The old one's unacknowledged messages are dropped: the
    /// sensor resends them. This is what keeps the idempotent producer out of trouble: left to
    /// itself, librdkafka would expire those messages and then bump its epoch to reset its
    /// sequence numbers, which some Kafka-compatible brokers handle badly (tansu 0.6 stops
    /// accepting writes), and which ends in a fatal error when `enable.gapless.guarantee` is on.
    fn replace(&self, failed: u64, error: &DeliveryError) {
        let mut c = self.producer.lock().expect("kafka producer");
        if c.generation != failed {
            return;
        }
        match create(&self.config, &self.last_error) {
            Ok(p) => {
                let old = std::mem::replace(&mut c.producer, p);
                c.generation += 1;
                tracing::warn!(%error, generation = c.generation, "Kafka batch failed: new producer");
                drop_off_async(old);
            }
            Err(e) => tracing::error!(error = %e, "creating a new Kafka producer"),
        }
    }
}

/// librdkafka's message timeout is the batch timeout plus this.
const MESSAGE_TIMEOUT_MARGIN: Duration = Duration::from_secs(30);

fn create(config: &ClientConfig, last_error: &LastError) -> KafkaResult<Producer> {
    config.create_with_context(SinkContext {
        last_error: last_error.clone(),
    })
}

/// Drops a producer on a blocking thread: the last handle's drop purges and flushes it
/// (up to 500 ms).
fn drop_off_async(p: Producer) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn_blocking(move || drop(p));
        }
        Err(_) => drop(p),
    }
}

/// librdkafka's logs and errors, into tracing. Broker connection failures are expected during
/// an outage and retried: warnings, and the same error at most every 30 s.
struct SinkContext {
    last_error: LastError,
}

/// The last error logged, and when.
type LastError = std::sync::Arc<Mutex<Option<(String, std::time::Instant)>>>;

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        use RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning => {
                tracing::warn!(target: "librdkafka", facility = fac, "{message}")
            }
            L::Notice | L::Info => {
                tracing::info!(target: "librdkafka", facility = fac, "{message}")
            }
            L::Debug => tracing::debug!(target: "librdkafka", facility = fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The same error with another detail ("1/1 brokers are down", "0/1 ...") is a repeat.
        let kind = error.to_string();
        let mut last = self.last_error.lock().expect("kafka context");
        let repeat = last
            .as_ref()
            .is_some_and(|(k, at)| *k == kind && at.elapsed() < Duration::from_secs(30));
        if !repeat {
            tracing::warn!(target: "librdkafka", "{kind}: {reason}");
            *last = Some((kind, std::time::Instant::now()));
        }
    }
}

fn check(
    delivery: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, impl Sized>,
) -> Result<(), DeliveryError> {
    match delivery {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e.into()),
        Err(_) => Err(DeliveryError::Canceled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_hide_their_values() {
        let o = parse_option("sasl.password=a=b").unwrap();
        assert_eq!((o.key.as_str(), o.value.as_str()), ("sasl.password", "a=b"));
        assert_eq!(format!("{o:?}"), "sasl.password=…");
        assert!(parse_option("novalue").is_err());
        assert!(parse_option("=x").is_err());
    }

    #[test]
    fn a_record_is_keyed_by_the_event_uid() {
        let sensor = pb::SensorIdentity {
            sensor_id: "s1".into(),
            stream_id: "st".into(),
            node_name: "n1".into(),
            ..Default::default()
        };
        let mut ev = pb::Event {
            sequence: 7,
            kind: pb::EventKind::SensorStats as i32,
            ..Default::default()
        };
        let r = Record::of(&sensor, &mut ev);
        assert_eq!(r.key, "s1:st:7");
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(v["metadata"]["uid"], "s1:st:7");
        assert_eq!(r.kind, v["metadata"]["event_code"].as_str().unwrap());
        assert_eq!((r.sensor_id.as_str(), r.node.as_str()), ("s1", "n1"));
    }

    #[test]
    fn librdkafka_accepts_the_defaults() {
        let mut args = KafkaArgs::disabled();
        assert!(KafkaSink::from_args(&args).unwrap().is_none());
        args.kafka_brokers = Some("127.0.0.1:1".into());
        assert!(KafkaSink::from_args(&args).unwrap().is_some());
        args.kafka_options
            .push(parse_option("no.such.setting=1").unwrap());
        assert!(KafkaSink::from_args(&args).is_err());
    }

    /// Against librdkafka's in-process mock cluster: a batch is delivered keyed and with
    /// headers; with the broker down, delivery fails within the timeout; once it is back,
    /// delivery works again with the same sink.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_batches_and_fails_them_while_the_broker_is_down() {
        use rdkafka::{
            Message as _, Offset, TopicPartitionList,
            consumer::{BaseConsumer, Consumer as _},
            message::Headers as _,
            mocking::MockCluster,
        };
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 3, 1).unwrap();
        let mut args = KafkaArgs::disabled();
        args.kafka_brokers = Some(cluster.bootstrap_servers());
        args.kafka_topic = "t".into();
        args.kafka_timeout_secs = 2;
        let sink = KafkaSink::from_args(&args).unwrap().unwrap();
        let sensor = pb::SensorIdentity {
            sensor_id: "s".into(),
            stream_id: "st".into(),
            node_name: "n".into(),
            ..Default::default()
        };
        let batch = |seqs: std::ops::Range<u64>| -> Vec<Record> {
            seqs.map(|sequence| {
                let mut ev = pb::Event {
                    sequence,
                    kind: pb::EventKind::SensorStats as i32,
                    ..Default::default()
                };
                Record::of(&sensor, &mut ev)
            })
            .collect()
        };
        sink.deliver(&batch(1..101)).await.unwrap();

        cluster.broker_down(-1).unwrap();
        let started = std::time::Instant::now();
        let err = sink.deliver(&batch(101..111)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
        assert_eq!(sink.current().0, 1, "a failed batch replaces the producer");
        cluster.broker_up(-1).unwrap();
        sink.deliver(&batch(111..121)).await.unwrap();

        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "test")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset("t", p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut keys = std::collections::BTreeSet::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while keys.len() < 110 && std::time::Instant::now() < deadline {
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m.unwrap();
            let key = std::str::from_utf8(m.key().unwrap()).unwrap().to_string();
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            assert_eq!(v["metadata"]["uid"], key.as_str());
            let h = m.headers().unwrap();
            assert_eq!(h.get(0).key, "sensor_id");
            assert_eq!(h.get(0).value, Some(&b"s"[..]));
            assert_eq!(h.get(2).value, Some(&b"sensor.stats"[..]));
            keys.insert(key);
        }
        // The failed batch may or may not have reached the broker; the others all did.
        for seq in (1..101).chain(111..121) {
            assert!(keys.contains(&format!("s:st:{seq}")), "{seq} missing");
        }
    }
}
