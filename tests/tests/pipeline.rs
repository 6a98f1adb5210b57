//! The event pipeline, end to end, with real processes: the sensor (real eBPF programs, a
//! real workload) ships over gRPC with mutual TLS on loopback to a collector started as a
//! separate process; the tests kill either side with SIGKILL and check, from the collector's
//! store and OCSF output, that every event arrived exactly once and every loss is stated.
//!
//! Root is needed (the sensor loads programs). The Python parts (OCSF schema validation, the
//! grpcio subscriber) use `$NHI_PYTHON`, which `cargo xtask test` sets up.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use nhi_proto::v1 as pb;
use nhi_sensor_tests::{
    Sensor, TempDir, WAIT, get_str, get_u64, is_kind, run_with_timeout, scaled, sensor_bin,
    spawn_actor, watch_arg, workspace_root,
};
use serde_json::Value;

fn setup(test: &str) -> Option<MutexGuard<'static, ()>> {
    nhi_sensor_tests::init_actor_bin!();
    nhi_sensor_tests::serial_root_test(test)
}

/// The test PKI (`cargo xtask certs`), made once per test process.
fn certs() -> PathBuf {
    let dir = workspace_root().join("target/certs");
    xtask::certs::generate(&dir).expect("generating the test PKI");
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `nhi-sensor collector` as a separate process, restartable on the same port and store.
struct Collector {
    child: Option<Child>,
    args: Vec<String>,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    /// mTLS collector on a fresh port with its store and OCSF output in `dir`.
    fn start(dir: &Path, extra: &[&str]) -> Collector {
        let c = certs();
        let port = free_port();
        let mut args: Vec<String> = vec![
            "collector".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--store".into(),
            dir.join("store").display().to_string(),
            "--ocsf-out".into(),
            dir.join("ocsf.jsonl").display().to_string(),
            "--tls-cert".into(),
            c.join("collector.pem").display().to_string(),
            "--tls-key".into(),
            c.join("collector.key").display().to_string(),
            "--client-ca".into(),
            c.join("ca.pem").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut col = Collector {
            child: None,
            args,
            port,
            log: Default::default(),
        };
        col.spawn();
        col
    }

    fn spawn(&mut self) {
        let mut child = nhi_sensor_tests::spawn_retrying(
            Command::new(sensor_bin())
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
        .expect("spawning the collector");
        let stderr = child.stderr.take().expect("piped");
        let log = self.log.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[collector] {line}");
                if line.contains("collector listening") {
                    let _ = tx.send(());
                }
                log.lock().unwrap().push(line);
            }
        });
        if rx.recv_timeout(scaled(Duration::from_secs(30))).is_err() {
            let _ = child.kill();
            panic!(
                "the collector did not start: {:?}",
                self.log.lock().unwrap()
            );
        }
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sensor arguments that ship to `col` with mutual TLS.
fn ship_args(col: &Collector, spool: &Path) -> Vec<String> {
    let c = certs();
    vec![
        "--collector".into(),
        col.url(),
        "--collector-ca".into(),
        c.join("ca.pem").display().to_string(),
        "--tls-cert".into(),
        c.join("sensor.pem").display().to_string(),
        "--tls-key".into(),
        c.join("sensor.key").display().to_string(),
        "--spool".into(),
        spool.display().to_string(),
        "--sensor-id".into(),
        "test-sensor".into(),
    ]
}

fn start_sensor(watch: &Path, args: &[String], extra: &[&str]) -> Sensor {
    let mut all: Vec<String> = vec![
        "run".into(),
        "--format".into(),
        "json".into(),
        "--stats-interval".into(),
        "1".into(),
        "--watch".into(),
        watch_arg(watch),
    ];
    all.extend(args.iter().cloned());
    all.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    Sensor::start(&refs)
}

fn query(store: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(sensor_bin());
    cmd.arg("events").arg("--store").arg(store).args(args);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "nhi-sensor events failed: {}",
        out.stderr
    );
    out.stdout
}

/// The store's OCSF events (all of them, oldest first).
fn stored(store: &Path) -> Vec<Value> {
    query(store, &["--format", "json", "--limit", "0"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("OCSF JSON line"))
        .collect()
}

fn streams(store: &Path) -> Vec<Value> {
    serde_json::from_str(&query(store, &["--streams"])).expect("streams JSON")
}

/// The OCSF lines of `file` and of its rotated predecessors (`FILE.N` ... `FILE.1`), oldest
/// first.
fn ocsf_lines(file: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = (1..=50)
        .rev()
        .map(|n| PathBuf::from(format!("{}.{n}", file.display())))
        .collect();
    files.push(file.to_path_buf());
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        out.extend(
            text.lines().map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("OCSF line {l:?}: {e}"))
            }),
        );
    }
    out
}

fn uid_seq(v: &Value) -> (String, u64) {
    let uid = get_str(v, "metadata.uid").expect("metadata.uid");
    let (stream, seq) = uid.rsplit_once(':').expect("sensor:stream:seq");
    (stream.to_string(), seq.parse().expect("numeric sequence"))
}

/// Polls `f` until it returns `Some`, for up to `timeout` (scaled).
fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + scaled(timeout);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// OCSF events about `path` (file activity).
fn file_events_for<'a>(events: &'a [Value], path: &str, activity: u64) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            get_u64(e, "class_uid") == Some(1001)
                && get_u64(e, "activity_id") == Some(activity)
                && get_str(e, "file.path") == Some(path)
        })
        .collect()
}

/// Asserts one stream delivered exactly once: the stored sequence numbers are 1..=durable
/// with no duplicate, except the ranges loss records declare; returns the stream row.
fn assert_exactly_once(store: &Path, events: &[Value]) -> Value {
    let rows = streams(store);
    assert_eq!(rows.len(), 1, "one sensor stream expected: {rows:?}");
    let row = rows[0].clone();
    let durable = get_u64(&row, "durable").unwrap();
    let mut seen = BTreeSet::new();
    let mut declared_lost = BTreeSet::new();
    for e in events {
        let (_, seq) = uid_seq(e);
        assert!(seen.insert(seq), "sequence {seq} stored twice");
        if let Some(first) = get_u64(e, "unmapped.loss.first_sequence") {
            let last = get_u64(e, "unmapped.loss.last_sequence").unwrap();
            declared_lost.extend(first + 1..=last);
        }
    }
    for seq in 1..=durable {
        assert!(
            seen.contains(&seq) || declared_lost.contains(&seq),
            "sequence {seq} neither stored nor declared lost (durable {durable})"
        );
    }
    assert_eq!(seen.len() as u64, get_u64(&row, "stored").unwrap());
    assert_eq!(get_u64(&row, "gaps"), Some(0), "unexplained gaps: {row}");
    row
}

/// Reads the actor's steps up to `name` and asserts that one succeeded.
fn ok_step(actor: &mut nhi_sensor_tests::Actor, name: &str) {
    let v = actor.step_until(name);
    assert_eq!(
        v["ok"],
        Value::Bool(true),
        "nhi-actor step {name} failed: {v}"
    );
}

fn python() -> PathBuf {
    std::env::var_os("NHI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| xtask::venv_python(&workspace_root()))
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

/// Real kernel events reach the collector over mTLS, land in its store and OCSF output (every
/// line valid against the OCSF schema of its class), and reach a Python grpcio subscriber
/// through a server-side filter, while a subscriber whose filter excludes them gets nothing.
#[test]
fn events_reach_ocsf_store_and_a_python_subscriber() {
    let Some(_g) = setup("events_reach_ocsf_store_and_a_python_subscriber") else {
        return;
    };
    let dir = TempDir::new("pipe-ocsf");
    let watched = dir.mkdir("watched");
    let secret = dir.write("watched/api-key", b"s3cr3t-value-never-shipped");
    let metrics_port = free_port();
    let col = Collector::start(
        dir.path(),
        &["--metrics-addr", &format!("127.0.0.1:{metrics_port}")],
    );
    let sensor = start_sensor(&watched, &ship_args(&col, &dir.join("spool")), &[]);

    let c = certs();
    let subscriber = |filter: &[&str], count: &str| {
        let mut cmd = Command::new(python());
        cmd.arg(workspace_root().join("tests/py/subscribe.py"))
            .arg("--proto-dir")
            .arg(workspace_root().join("proto"))
            .args(["--target", &format!("127.0.0.1:{}", col.port)])
            .arg("--ca")
            .arg(c.join("ca.pem"))
            .arg("--cert")
            .arg(c.join("subscriber.pem"))
            .arg("--key")
            .arg(c.join("subscriber.key"))
            .args(["--server-name", "localhost", "--count", count, "--timeout"])
            .arg(scaled(Duration::from_secs(40)).as_secs().to_string())
            .args(filter)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("python subscriber (run `cargo xtask setup`)");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "subscriber exited before READY"
            );
            if line.contains("READY") {
                break;
            }
        }
        (child, err)
    };
    let (wanted, _e1) = subscriber(&["--kind", "EVENT_KIND_FILE_OPEN"], "1");
    let (excluded, _e2) = subscriber(&["--namespace", "no-such-namespace"], "1");

    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let mut actor = spawn_actor(&[
        "--open",
        secret.to_str().unwrap(),
        "--read",
        "8",
        "--close",
        "--connect-tcp",
        &format!("127.0.0.1:{port}"),
    ]);
    ok_step(&mut actor, "open");
    ok_step(&mut actor, "connect");
    let pid = actor.pid();
    let secret_s = secret.to_str().unwrap().to_string();
    sensor.wait_for("the file.open on stdout", WAIT, |e| {
        is_kind(e, "file.open") && get_str(e, "file.path") == Some(secret_s.as_str())
    });

    // OCSF output: the open (File System Activity, Open) and the connect (Network Activity).
    let ocsf_file = dir.join("ocsf.jsonl");
    let lines = poll("OCSF lines for the open and the connect", WAIT * 2, || {
        let lines = ocsf_lines(&ocsf_file);
        let open = !file_events_for(&lines, &secret_s, 14).is_empty();
        let connect = lines.iter().any(|e| {
            get_u64(e, "class_uid") == Some(4001)
                && get_u64(e, "dst_endpoint.port") == Some(u64::from(port))
        });
        (open && connect).then_some(lines)
    });
    let open = file_events_for(&lines, &secret_s, 14)[0];
    assert_eq!(
        get_u64(open, "actor.process.pid"),
        Some(u64::from(pid)),
        "{open}"
    );
    assert!(
        !lines.iter().any(|l| l.to_string().contains("s3cr3t")),
        "the secret's content must never be shipped"
    );

    // Every line validates against the published OCSF schema of its class.
    let mut cmd = Command::new(python());
    cmd.arg(workspace_root().join("tests/py/validate_ocsf.py"))
        .arg(&ocsf_file);
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "OCSF validation failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );

    // The store answers queries.
    let q = query(
        &dir.join("store"),
        &["--kind", "file.open", "--since", "10m", "--format", "json"],
    );
    assert!(q.contains(&secret_s), "events --kind file.open: {q}");

    // The Python subscriber got the open through its kind filter; the other got nothing.
    let out = wanted.wait_with_output().unwrap();
    assert!(out.status.success(), "subscriber: {out:?}");
    let got: Value = serde_json::from_slice(&out.stdout).expect("one JSON event");
    assert_eq!(get_str(&got, "kind"), Some("EVENT_KIND_FILE_OPEN"), "{got}");
    assert!(
        get_str(&got, "sensor.sensor_id") == Some("test-sensor"),
        "{got}"
    );
    drop(actor);

    // Metrics and health answer with real values.
    let m = http_get(metrics_port, "/metrics");
    assert!(
        metric(&m, "nhi_collector_events_stored_total") >= 2.0,
        "{m}"
    );
    assert!(metric(&m, "nhi_collector_subscribers") >= 1.0, "{m}");
    assert!(http_get(metrics_port, "/readyz").starts_with("HTTP/1.1 200"));

    let stopped = sensor.stop();
    stopped.assert_clean();
    let mut excluded = excluded;
    let _ = excluded.kill();
    let out = excluded.wait_with_output().unwrap();
    assert!(
        out.stdout.is_empty(),
        "the namespace filter let events through: {out:?}"
    );
}

/// The collector is SIGKILLed in the middle of a 50,000-event burst and restarted: every
/// event reaches the store and the OCSF file exactly once.
#[test]
fn collector_killed_mid_burst_loses_nothing_and_duplicates_nothing() {
    let Some(_g) = setup("collector_killed_mid_burst_loses_nothing_and_duplicates_nothing") else {
        return;
    };
    const OPENS: usize = 25_000; // an open and a close each: 50,000 file events
    let dir = TempDir::new("pipe-kill-collector");
    let watched = dir.mkdir("watched");
    let key = dir.write("watched/token", b"x");
    let key_s = key.to_str().unwrap().to_string();
    // Small OCSF files: the output rotates several times, across the kill too.
    let mut col = Collector::start(
        dir.path(),
        &["--ocsf-max-bytes", "20000000", "--ocsf-keep", "50"],
    );
    let sensor = start_sensor(
        &watched,
        &ship_args(&col, &dir.join("spool")),
        // Room for the whole burst in the ring, and time to drain the backlog at the end.
        &["--ring-mib", "64", "--drain-timeout", "120"],
    );
    let mut actor = spawn_actor(&["--open-loop", &key_s, &OPENS.to_string()]);
    let store = dir.join("store");
    poll(
        "the first 5,000 events stored",
        Duration::from_secs(120),
        || {
            let s = streams(&store);
            (s.first().and_then(|r| get_u64(r, "stored")).unwrap_or(0) >= 5_000).then_some(())
        },
    );
    col.kill9();
    let at_kill = streams(&store)[0].clone();
    std::thread::sleep(Duration::from_secs(1));
    col.spawn();
    ok_step(&mut actor, "open-loop");
    drop(actor);
    let stopped = sensor.stop();
    stopped.assert_clean();
    let printed_opens = stopped
        .count(|e| is_kind(e, "file.open") && get_str(e, "file.path") == Some(key_s.as_str()));
    assert_eq!(
        get_u64(stopped.final_stats(), "stats.kernel_drops"),
        Some(0),
        "the kernel dropped events; the test needs all of them"
    );
    assert_eq!(printed_opens, OPENS);
    let final_spool = stopped.final_stats()["stats"]["spool"].clone();

    let events = stored(&store);
    let row = assert_exactly_once(&store, &events);
    assert!(
        get_u64(&at_kill, "stored").unwrap() < get_u64(&row, "stored").unwrap(),
        "the kill must happen mid-burst: {at_kill} then {row}"
    );
    assert_eq!(get_u64(&row, "lost"), Some(0), "{row}");
    // Everything the sensor printed was stored, once: every kind's count matches.
    let mut printed: BTreeMap<String, usize> = BTreeMap::new();
    for e in &stopped.events {
        *printed
            .entry(get_str(e, "kind").unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        events.len(),
        stopped.events.len(),
        "stored vs printed events (printed by kind: {printed:?}); final spool {final_spool}"
    );
    assert_eq!(file_events_for(&events, &key_s, 14).len(), OPENS);

    // The OCSF file: the same events, each once, even across the kill.
    let lines = poll("the OCSF file to catch up", Duration::from_secs(60), || {
        let l = ocsf_lines(&dir.join("ocsf.jsonl"));
        (l.len() >= events.len()).then_some(l)
    });
    let uids: BTreeSet<String> = lines
        .iter()
        .map(|l| get_str(l, "metadata.uid").unwrap().to_string())
        .collect();
    assert_eq!(uids.len(), lines.len(), "duplicate lines in the OCSF file");
    assert_eq!(lines.len(), events.len(), "OCSF lines vs stored events");
    assert_eq!(file_events_for(&lines, &key_s, 14).len(), OPENS);
}

/// The sensor is SIGKILLed while its events are still spooled (collector down), then
/// restarted with the same spool: the spooled events are delivered, none twice.
#[test]
fn sensor_killed_with_spooled_events_delivers_them_once_after_restart() {
    let Some(_g) = setup("sensor_killed_with_spooled_events_delivers_them_once_after_restart")
    else {
        return;
    };
    const OPENS: usize = 300;
    let dir = TempDir::new("pipe-kill-sensor");
    let watched = dir.mkdir("watched");
    let key = dir.write("watched/id_ed25519", b"k");
    let key_s = key.to_str().unwrap().to_string();
    let spool = dir.join("spool");
    let mut col = Collector::start(dir.path(), &[]);
    let args = ship_args(&col, &spool);
    col.kill9();
    let sensor = start_sensor(&watched, &args, &[]);
    let mut actor = spawn_actor(&["--open-loop", &key_s, &OPENS.to_string()]);
    ok_step(&mut actor, "open-loop");
    sensor.wait_for_n("all opens printed (and so spooled)", WAIT, OPENS, |e| {
        is_kind(e, "file.open") && get_str(e, "file.path") == Some(key_s.as_str())
    });
    let first = sensor.kill9();
    assert!(
        !dir.join("store").join("events.db").exists()
            || streams(&dir.join("store"))
                .iter()
                .all(|r| get_u64(r, "stored") == Some(0)),
        "nothing can have been delivered yet"
    );
    drop(actor);

    col.spawn();
    let sensor = start_sensor(&watched, &args, &[]);
    let store = dir.join("store");
    poll(
        "the spooled opens delivered",
        Duration::from_secs(60),
        || {
            let ev = stored(&store);
            (file_events_for(&ev, &key_s, 14).len() >= OPENS).then_some(())
        },
    );
    let second = sensor.stop();
    second.assert_clean();
    let events = stored(&store);
    let row = assert_exactly_once(&store, &events);
    assert_eq!(file_events_for(&events, &key_s, 14).len(), OPENS, "{row}");
    assert_eq!(get_u64(&row, "lost"), Some(0));
    // One stream across the restart: the spool kept its stream id and numbering.
    assert!(events.len() >= first.events.len() + second.events.len() - 1);
}

/// A spool too small for an outage: the oldest events are discarded, and the loss records
/// state exactly which sequence numbers, in agreement with the sensor's and the collector's
/// counters.
#[test]
fn spool_overflow_is_reported_exactly() {
    let Some(_g) = setup("spool_overflow_is_reported_exactly") else {
        return;
    };
    const OPENS: usize = 3_000;
    let dir = TempDir::new("pipe-overflow");
    let watched = dir.mkdir("watched");
    let key = dir.write("watched/credentials", b"k");
    let key_s = key.to_str().unwrap().to_string();
    let mut col = Collector::start(dir.path(), &[]);
    let args = ship_args(&col, &dir.join("spool"));
    col.kill9();
    let sensor = start_sensor(&watched, &args, &["--spool-max-bytes", "262144"]);
    let mut actor = spawn_actor(&["--open-loop", &key_s, &OPENS.to_string()]);
    ok_step(&mut actor, "open-loop");
    drop(actor);
    sensor.wait_for(
        "the spool to discard events",
        Duration::from_secs(30),
        |e| is_kind(e, "sensor.stats") && get_u64(e, "stats.spool.evicted").unwrap_or(0) > 0,
    );
    col.spawn();
    let store = dir.join("store");
    poll("a loss record stored", Duration::from_secs(60), || {
        stored(&store)
            .iter()
            .any(|e| e["unmapped"]["loss"].is_object())
            .then_some(())
    });
    let stopped = sensor.stop();
    stopped.assert_clean();
    let evicted = get_u64(stopped.final_stats(), "stats.spool.evicted").unwrap();
    assert!(evicted > 0);

    let events = stored(&store);
    let row = assert_exactly_once(&store, &events);
    let mut declared = 0;
    let mut ranges = Vec::new();
    for e in &events {
        if let Some(first) = get_u64(e, "unmapped.loss.first_sequence") {
            let last = get_u64(e, "unmapped.loss.last_sequence").unwrap();
            assert_eq!(
                get_u64(e, "unmapped.loss.count"),
                Some(last - first + 1),
                "{e}"
            );
            assert_eq!(
                uid_seq(e).1,
                first,
                "a loss record takes its first lost number"
            );
            declared += last - first + 1;
            ranges.push((first, last));
        }
    }
    assert_eq!(
        declared, evicted,
        "loss records {ranges:?} vs the sensor's count"
    );
    assert_eq!(
        get_u64(&row, "lost"),
        Some(evicted),
        "collector's count: {row}"
    );
    // The stated numbers are exactly the missing ones.
    let present: BTreeSet<u64> = events.iter().map(|e| uid_seq(e).1).collect();
    for (first, last) in &ranges {
        for seq in first + 1..=*last {
            assert!(!present.contains(&seq), "{seq} is stored but declared lost");
        }
    }
    assert!(
        (file_events_for(&events, &key_s, 14).len() as u64) < OPENS as u64,
        "some opens must have been discarded"
    );
}

/// Hostile clients are refused or cut off with a clear status while a well-behaved sensor
/// on the same collector keeps flowing.
#[test]
fn hostile_clients_are_refused_while_a_sensor_keeps_flowing() {
    let Some(_g) = setup("hostile_clients_are_refused_while_a_sensor_keeps_flowing") else {
        return;
    };
    let dir = TempDir::new("pipe-hostile");
    let watched = dir.mkdir("watched");
    let key = dir.write("watched/token", b"k");
    let key_s = key.to_str().unwrap().to_string();
    let col = Collector::start(dir.path(), &["--stream-idle-secs", "8"]);
    let sensor = start_sensor(&watched, &ship_args(&col, &dir.join("spool")), &[]);
    let store = dir.join("store");
    let c = certs();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut opens = 0;
    let mut flows = |what: &str| {
        opens += 1;
        let mut actor = spawn_actor(&["--open", &key_s, "--close"]);
        ok_step(&mut actor, "open");
        drop(actor);
        let n = opens;
        poll(
            &format!("the sensor's events still flowing after {what}"),
            WAIT * 2,
            || (file_events_for(&stored(&store), &key_s, 14).len() >= n).then_some(()),
        );
    };
    flows("start");

    let pem = |f: &str| std::fs::read(c.join(f)).unwrap();
    let endpoint = |identity: Option<(&str, &str)>| {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem("ca.pem")))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(pem(cert), pem(key)));
        }
        tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", col.port))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
    };
    let ship = |ep: tonic::transport::Endpoint, batches: Vec<pb::EventBatch>, hold: bool| {
        rt.block_on(async move {
            let ch = ep.connect().await.map_err(|e| format!("connect: {e:?}"))?;
            let mut client =
                pb::collector_client::CollectorClient::new(ch).max_encoding_message_size(64 << 20);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            for b in batches {
                tx.send(b).await.unwrap();
            }
            if !hold {
                drop(tx);
            } else {
                std::mem::forget(tx); // a stream that stalls: never sends, never closes
            }
            let mut acks = client
                .ship(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            loop {
                match acks.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(()),
                    Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
                }
            }
        })
    };
    let sensor_id = pb::SensorIdentity {
        sensor_id: "hostile".into(),
        stream_id: "hostile-stream".into(),
        ..Default::default()
    };

    // 1. No client certificate.
    let err = ship(endpoint(None), vec![], false).unwrap_err();
    eprintln!("no certificate: {err}");
    flows("a client without a certificate");
    // 2. A certificate from another CA.
    let err = ship(endpoint(Some(("rogue.pem", "rogue.key"))), vec![], false).unwrap_err();
    eprintln!("rogue certificate: {err}");
    flows("a client with a certificate from another CA");
    // 3. Garbage bytes instead of a TLS handshake.
    let mut s = TcpStream::connect(("127.0.0.1", col.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef].repeat(100));
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    let n2 = s.read(&mut buf).unwrap_or(0);
    assert!(
        n < 512 && n2 == 0,
        "the connection must be closed on garbage"
    );
    flows("garbage bytes");
    // 4. An oversized message (5 MiB > the 4 MiB limit).
    let huge = pb::EventBatch {
        sensor: Some(sensor_id.clone()),
        first_sequence: 1,
        events: vec![pb::Event {
            sequence: 1,
            kind: pb::EventKind::ProcessExec as i32,
            payload: Some(pb::event::Payload::Exec(pb::Exec {
                argv: vec!["A".repeat(5 << 20)],
                ..Default::default()
            })),
            ..Default::default()
        }],
    };
    let good = Some(("sensor.pem", "sensor.key"));
    let err = ship(endpoint(good), vec![huge], false).unwrap_err();
    assert!(
        err.starts_with("OutOfRange") || err.starts_with("ResourceExhausted"),
        "oversized message: {err}"
    );
    flows("an oversized message");
    // 5. A malformed batch (sequence numbers going backwards).
    let bad = pb::EventBatch {
        sensor: Some(sensor_id.clone()),
        first_sequence: 2,
        events: vec![
            pb::Event {
                sequence: 2,
                ..Default::default()
            },
            pb::Event {
                sequence: 1,
                ..Default::default()
            },
        ],
    };
    let err = ship(endpoint(good), vec![bad], false).unwrap_err();
    assert!(err.starts_with("InvalidArgument"), "malformed batch: {err}");
    // 6. A stream that stalls is cut off after the idle limit.
    let started = Instant::now();
    let err = ship(endpoint(good), vec![], true).unwrap_err();
    assert!(err.starts_with("DeadlineExceeded"), "stalled stream: {err}");
    assert!(started.elapsed() < scaled(Duration::from_secs(30)));
    flows("a stalled stream");

    let stopped = sensor.stop();
    stopped.assert_clean();
    // Nothing the hostile clients sent was stored.
    let rows = streams(&store);
    assert!(
        rows.iter()
            .all(|r| get_str(r, "sensor_id") == Some("test-sensor")),
        "{rows:?}"
    );
}
