//! Helpers for the tests of the event pipeline (`tests/pipeline.rs`, `tests/kafka.rs`,
//! `tests/operations.rs`): a restartable `nhi-sensor collector` process, sensor arguments
//! that ship to it with mutual TLS, queries of its store and OCSF output, the test PKI, the
//! Python of the test scripts, and the metrics endpoint.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    Sensor, get_str, get_u64, run_with_timeout, scaled, sensor_bin, watch_arg, workspace_root,
};

/// The test PKI (`cargo xtask certs`), made once per test process.
pub fn certs() -> PathBuf {
    let dir = workspace_root().join("target/certs");
    xtask::certs::generate(&dir).expect("generating the test PKI");
    dir
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `nhi-sensor collector` as a separate process, restartable on the same port and store.
pub struct Collector {
    child: Option<Child>,
    args: Vec<String>,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    /// mTLS collector on a fresh port with its store and OCSF output in `dir`.
    pub fn start(dir: &Path, extra: &[&str]) -> Collector {
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

    pub fn spawn(&mut self) {
        let mut child = crate::spawn_retrying(
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

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sensor arguments that ship to `col` with mutual TLS.
pub fn ship_args(col: &Collector, spool: &Path) -> Vec<String> {
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

pub fn start_sensor(watch: &Path, args: &[String], extra: &[&str]) -> Sensor {
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

pub fn query(store: &Path, args: &[&str]) -> String {
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
pub fn stored(store: &Path) -> Vec<Value> {
    query(store, &["--format", "json", "--limit", "0"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("OCSF JSON line"))
        .collect()
}

pub fn streams(store: &Path) -> Vec<Value> {
    serde_json::from_str(&query(store, &["--streams"])).expect("streams JSON")
}

/// The OCSF lines of `file` and of its rotated predecessors (`FILE.N` ... `FILE.1`), oldest
/// first.
pub fn ocsf_lines(file: &Path) -> Vec<Value> {
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

pub fn uid_seq(v: &Value) -> (String, u64) {
    let uid = get_str(v, "metadata.uid").expect("metadata.uid");
    let (stream, seq) = uid.rsplit_once(':').expect("sensor:stream:seq");
    (stream.to_string(), seq.parse().expect("numeric sequence"))
}

/// Polls `f` until it returns `Some`, for up to `timeout` (scaled).
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
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
pub fn file_events_for<'a>(events: &'a [Value], path: &str, activity: u64) -> Vec<&'a Value> {
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
pub fn assert_exactly_once(store: &Path, events: &[Value]) -> Value {
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
pub fn ok_step(actor: &mut crate::Actor, name: &str) {
    let v = actor.step_until(name);
    assert_eq!(
        v["ok"],
        Value::Bool(true),
        "nhi-actor step {name} failed: {v}"
    );
}

pub fn python() -> PathBuf {
    std::env::var_os("NHI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| xtask::venv_python(&workspace_root()))
}

pub fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not in:\n{text}"))
}
