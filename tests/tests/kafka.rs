//! The collector's Kafka sink against a real Kafka-protocol broker (tansu, `cargo xtask setup`
//! installs it): a sensor (real eBPF programs, a real workload) ships over mTLS to a collector
//! started with `--kafka-brokers`; the broker is SIGKILLed in the middle of the stream, stays
//! down longer than the collector's Kafka timeout (so batches fail back to the sensor and are
//! resent), and is restarted on the same storage. A librdkafka consumer (Python,
//! `tests/py/kafka_consume.py`) then reads the whole topic: every event the collector stored is
//! in Kafka under its `metadata.uid` key, and nothing else is.
//!
//! Root is needed (the sensor loads programs). The consumer runs with `$NHI_PYTHON`, which
//! `cargo xtask test` sets up.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::MutexGuard,
    time::{Duration, Instant},
};

use nhi_sensor_tests::shipping::{Collector, certs, free_port, poll, python, stored, streams};
use nhi_sensor_tests::{
    Sensor, TempDir, WAIT, get_str, get_u64, is_kind, run_with_timeout, scaled, sensor_bin,
    spawn_actor, watch_arg, workspace_root,
};
use serde_json::Value;

/// The topic the test creates and the collector produces to (the sink's default).
const TOPIC: &str = "nhi-sensor.ocsf";
/// Partitions of the test topic: more than one, so keys spread and partitioning matters.
const PARTITIONS: &str = "3";
/// The collector's `--kafka-timeout-secs`: short, so the outage below outlasts it.
const KAFKA_TIMEOUT_SECS: u64 = 3;
/// How long the broker stays down: well past the timeout, so batches fail and are resent.
const OUTAGE: Duration = Duration::from_secs(8);

fn setup(test: &str) -> Option<MutexGuard<'static, ()>> {
    nhi_sensor_tests::init_actor_bin!();
    nhi_sensor_tests::serial_root_test(test)
}

/// The `tansu` binary: `$NHI_TANSU`, else on PATH, else cargo's bin directory (where `cargo
/// xtask setup` installs it).
fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NHI_TANSU").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_home.map(|h| h.join("bin")));
    for dir in candidates {
        let p = dir.join("tansu");
        if p.is_file() {
            return p;
        }
    }
    panic!("the tansu broker is not installed: run `cargo xtask setup` (or set NHI_TANSU)")
}

/// A tansu broker on a free loopback port, its storage (SQLite) in `dir`: restartable on the
/// same port and storage, SIGKILLed on drop.
struct Broker {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl Broker {
    fn start(dir: &Path) -> Broker {
        let mut b = Broker {
            child: None,
            dir: dir.to_path_buf(),
            port: free_port(),
        };
        b.spawn();
        b.index_headers();
        b
    }

    /// tansu 0.6's SQLite schema has no index on record headers, so each fetched record
    /// scans every header stored: reading the topic back takes minutes instead of seconds.
    /// The index it lacks, added once the broker has created its schema.
    fn index_headers(&self) {
        let db = self.dir.join("tansu.db");
        let mut cmd = Command::new(python());
        cmd.args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], timeout=30)\n\
             c.execute('CREATE INDEX IF NOT EXISTS header_record \
                        ON header (topition, offset_id)')\n\
             c.commit()",
        ])
        .arg(&db);
        let out = run_with_timeout(cmd, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "indexing {}: {}",
            db.display(),
            out.stderr
        );
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .expect("the broker's log file");
        let child = nhi_sensor_tests::spawn_retrying(
            Command::new(tansu_bin())
                .arg("broker")
                .args(["--listener-url", &url, "--advertised-listener-url", &url])
                // Relative to the working directory: `dir/tansu.db`.
                .args(["--storage-engine", "sqlite://tansu.db"])
                .current_dir(&self.dir)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log),
        )
        .expect("spawning tansu");
        self.child = Some(child);
        let port = self.port;
        poll("the broker to listen", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn create_topic(&self, name: &str) {
        let mut cmd = Command::new(tansu_bin());
        cmd.args(["topic", "create", name, "--partitions", PARTITIONS])
            .args(["--broker", &format!("tcp://{}", self.addr())]);
        let out = run_with_timeout(cmd, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "tansu topic create: {}{}\nbroker log:\n{}",
            out.stdout,
            out.stderr,
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("[tansu] last lines of its log:");
            for l in tail.iter().rev() {
                eprintln!("[tansu] {l}");
            }
        }
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not in:\n{text}"))
}

/// How many file.open events of `path` the store holds (a cheap count for polling: lines
/// are matched, not parsed).
fn opens_stored(store: &Path, path: &str) -> usize {
    let mut cmd = Command::new(sensor_bin());
    cmd.arg("events").arg("--store").arg(store).args([
        "--kind",
        "file.open",
        "--format",
        "json",
        "--limit",
        "0",
    ]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "nhi-sensor events: {}", out.stderr);
    let needle = format!("\"path\":{}", Value::from(path));
    out.stdout.lines().filter(|l| l.contains(&needle)).count()
}

/// Every message of the topic, read by the Python librdkafka consumer: partition, offset,
/// key, headers, the SHA-256 of the value, and the value's fields the test checks.
fn consume(broker: &Broker) -> Vec<Value> {
    let mut cmd = Command::new(python());
    cmd.arg(workspace_root().join("tests/py/kafka_consume.py"))
        .args(["--brokers", &broker.addr(), "--topic", TOPIC, "--timeout"])
        .arg(scaled(Duration::from_secs(90)).as_secs().to_string());
    let out = run_with_timeout(cmd, Duration::from_secs(180));
    assert!(
        out.status.success(),
        "kafka_consume.py failed (run `cargo xtask setup` for confluent-kafka):\n{}",
        out.stderr
    );
    eprintln!("{}", out.stderr.trim_end());
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("consumer JSON line"))
        .collect()
}

/// A file.open of `path` (OCSF File System Activity, Open).
fn is_open_of(e: &Value, path: &str) -> bool {
    get_u64(e, "class_uid") == Some(1001)
        && get_u64(e, "activity_id") == Some(14)
        && get_str(e, "file.path") == Some(path)
}

/// A paced workload (rounds of opens with pauses) keeps the sensor's stream busy while the
/// broker is SIGKILLed, stays down past the collector's Kafka timeout, and comes back on the
/// same storage. Afterwards the topic holds, under distinct `metadata.uid` keys, exactly the
/// events of the collector's store (plus, only if the sensor stopped before its last acks,
/// events of its unacknowledged tail, which it resends at its next start): every open of the
/// workload, nothing missing, nothing foreign; copies of a key (resends) are counted and
/// reported, and must be identical.
#[test]
fn kafka_sink_survives_a_broker_restart_with_nothing_lost() {
    let Some(_g) = setup("kafka_sink_survives_a_broker_restart_with_nothing_lost") else {
        return;
    };
    const ROUNDS: usize = 60;
    const PER_ROUND: usize = 100;
    const OPENS: usize = ROUNDS * PER_ROUND;
    let dir = TempDir::new("kafka-sink");
    let kafka_dir = dir.mkdir("kafka");
    let watched = dir.mkdir("watched");
    let key = dir.write("watched/service-token", b"t");
    let key_s = key.to_str().unwrap().to_string();

    let t0 = Instant::now();
    let mut broker = Broker::start(&kafka_dir);
    broker.create_topic(TOPIC);
    let metrics_port = free_port();
    let col = Collector::start(
        dir.path(),
        &[
            "--kafka-brokers",
            &broker.addr(),
            "--kafka-timeout-secs",
            &KAFKA_TIMEOUT_SECS.to_string(),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    );
    let metrics = || http_get(metrics_port, "/metrics");
    let c = certs();
    let args: Vec<String> = vec![
        "run".into(),
        "--format".into(),
        "json".into(),
        "--watch".into(),
        watch_arg(&watched),
        "--collector".into(),
        col.url(),
        "--collector-ca".into(),
        c.join("ca.pem").display().to_string(),
        "--tls-cert".into(),
        c.join("sensor.pem").display().to_string(),
        "--tls-key".into(),
        c.join("sensor.key").display().to_string(),
        "--spool".into(),
        dir.join("spool").display().to_string(),
        "--sensor-id".into(),
        "kafka-test-sensor".into(),
        // Only the test's own files: other activity on the host stays out of the stream.
        "--no-default-rules".into(),
        "--drain-timeout".into(),
        "10".into(),
    ];
    let sensor = Sensor::start(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // ROUNDS rounds of PER_ROUND opens, 250 ms apart: about 15 s of steady traffic, before,
    // during and after the outage.
    let mut args: Vec<String> = Vec::new();
    for _ in 0..ROUNDS {
        args.extend(["--open-loop".into(), key_s.clone(), PER_ROUND.to_string()]);
        args.extend(["--sleep-ms".into(), "250".into()]);
    }
    let mut actor = spawn_actor(&args);

    // Kill the broker once the stream is flowing into Kafka.
    poll(
        "the first events delivered to Kafka",
        Duration::from_secs(60),
        || (metric(&metrics(), "nhi_collector_kafka_delivered_total") >= 500.0).then_some(()),
    );
    broker.kill9();
    let delivered_at_kill = metric(&metrics(), "nhi_collector_kafka_delivered_total");
    eprintln!("broker SIGKILLed after {delivered_at_kill} events delivered");
    std::thread::sleep(OUTAGE);
    broker.spawn();
    eprintln!("broker restarted");

    // The workload finishes (its opens all succeeded), then everything reaches the store.
    let mut opens = 0;
    while opens < ROUNDS {
        let v = actor.next_step_timeout(Duration::from_secs(60));
        if get_str(&v, "step") == Some("open-loop") {
            assert_eq!(v["ok"], Value::Bool(true), "nhi-actor open-loop: {v}");
            opens += 1;
        }
    }
    drop(actor);
    let store = dir.join("store");
    poll(
        "every open stored (delivered to Kafka first)",
        Duration::from_secs(120),
        || (opens_stored(&store, &key_s) >= OPENS).then_some(()),
    );
    eprintln!("every open stored after {:?}", t0.elapsed());
    let stopped = sensor.stop();
    stopped.assert_clean();
    assert_eq!(
        get_u64(stopped.final_stats(), "stats.kernel_drops"),
        Some(0),
        "the kernel dropped events; the test needs all of them"
    );
    assert_eq!(
        stopped.count(|e| is_kind(e, "file.open") && get_str(e, "file.path") == Some(&key_s)),
        OPENS
    );

    // The sensor gives up on its last acks after --drain-timeout; what it had sent may still
    // be on its way through the collector, which is done once the stream is closed.
    let drained = !stopped
        .stderr
        .iter()
        .any(|l| l.contains("events left in the spool"));
    poll("the collector to close the stream", WAIT * 3, || {
        (metric(&metrics(), "nhi_collector_sensor_streams") == 0.0).then_some(())
    });
    eprintln!(
        "sensor stopped after {:?} (spool drained: {drained})",
        t0.elapsed()
    );
    let m = metrics();
    let failures = metric(&m, "nhi_collector_kafka_failures_total");
    let delivered = metric(&m, "nhi_collector_kafka_delivered_total");
    assert!(
        delivered_at_kill < delivered,
        "the kill must happen mid-stream: {delivered_at_kill} then {delivered}"
    );
    assert!(
        failures >= 1.0,
        "the outage ({OUTAGE:?}) outlasts the {KAFKA_TIMEOUT_SECS} s timeout: batches must \
         have failed back to the sensor\n{m}"
    );

    // The store: each event once (the collector's dedupe), every open.
    let events = stored(&store);
    eprintln!("store read after {:?}", t0.elapsed());
    let store_uids: BTreeSet<String> = events
        .iter()
        .map(|e| {
            get_str(e, "metadata.uid")
                .expect("metadata.uid")
                .to_string()
        })
        .collect();
    assert_eq!(store_uids.len(), events.len(), "duplicates in the store");
    assert_eq!(
        events.iter().filter(|e| is_open_of(e, &key_s)).count(),
        OPENS
    );

    // Kafka: every message keyed by its metadata.uid, with the sensor and kind headers.
    let messages = consume(&broker);
    eprintln!("topic read after {:?}", t0.elapsed());
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_key: BTreeMap<String, (&Value, &str)> = BTreeMap::new();
    for msg in &messages {
        let k = get_str(msg, "key")
            .expect("every message has a key")
            .to_string();
        let v = &msg["value"];
        assert_eq!(
            get_str(v, "metadata.uid"),
            Some(k.as_str()),
            "key vs value: {msg}"
        );
        assert_eq!(
            get_str(msg, "headers.sensor_id"),
            Some("kafka-test-sensor"),
            "{msg}"
        );
        assert_eq!(
            get_str(msg, "headers.kind"),
            get_str(v, "metadata.event_code"),
            "{msg}"
        );
        *copies.entry(k.clone()).or_default() += 1;
        let sha = get_str(msg, "sha256").expect("sha256");
        if let Some((_, prev)) = by_key.insert(k, (v, sha)) {
            assert_eq!(prev, sha, "two copies of one key differ: {msg}");
        }
    }
    let kafka_uids: BTreeSet<String> = by_key.keys().cloned().collect();
    let duplicated: Vec<(&String, &usize)> = copies.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "Kafka: {} messages, {} distinct keys, {} keys with more than one copy ({} extra \
         copies); store: {} events; {failures} failed batches",
        messages.len(),
        kafka_uids.len(),
        duplicated.len(),
        messages.len() - kafka_uids.len(),
        events.len()
    );
    // Nothing stored is missing from Kafka. Nothing is in Kafka that the store lacks, except,
    // when the sensor stopped before its last batch was acknowledged, events of that
    // unacknowledged tail (past the stream's durable sequence): they stay in the sensor's
    // spool and are resent, under the same keys, at its next start.
    let missing: Vec<_> = store_uids.difference(&kafka_uids).take(10).collect();
    assert!(
        missing.is_empty(),
        "stored but not in Kafka (first 10): {missing:?}"
    );
    let durable = get_u64(&streams(&store)[0], "durable").expect("durable");
    let extra: Vec<&String> = kafka_uids.difference(&store_uids).collect();
    eprintln!(
        "in Kafka, not stored: {} (the sensor's unacknowledged tail after sequence {durable})",
        extra.len()
    );
    if drained {
        assert!(extra.is_empty(), "in Kafka but not stored: {extra:?}");
    }
    for k in &extra {
        let seq: u64 = k.rsplit(':').next().and_then(|s| s.parse().ok()).unwrap();
        assert!(
            seq > durable,
            "{k} is in Kafka, not stored, and not in the unacknowledged tail (durable {durable})"
        );
    }
    assert_eq!(
        by_key
            .values()
            .filter(|(v, _)| is_open_of(v, &key_s))
            .count(),
        OPENS,
        "every open of the workload in Kafka"
    );
    drop(col);
}
