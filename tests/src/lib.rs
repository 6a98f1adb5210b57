//! Test harness for the nhi-sensor integration tests.
//!
//! * [`Sensor`]: runs the real `nhi-sensor` binary, collects its JSON events (stdout) and logs
//!   (stderr) on reader threads, and lets a test wait for events matching a predicate.
//! * [`Actor`]: runs the scripted `nhi-actor` workload (see `src/bin/nhi-actor.rs`) and reads the
//!   JSON line it prints for each step.
//! * [`TempDir`]: a world-traversable temporary directory removed on drop (also on panic).
//! * [`get`] and friends: dotted access into JSON events (`"network.dst.port"`).
//!
//! Nothing here needs root; the tests in `tests/kernel.rs` do.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub mod cgroups;
pub mod pods;
pub mod shipping;

pub use cgroups::CgroupGuard;

/// Default bound for waiting on one event or one actor step.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long [`Sensor::start`] waits for the `sensor ready` log line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Stretches a timeout by `$NHI_TIME_SCALE` (default 1): the kernel matrix runs these tests
/// under software CPU emulation, several times slower than the host. Only waits are stretched;
/// no assertion depends on timing.
pub fn scaled(d: Duration) -> Duration {
    let scale = std::env::var("NHI_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|s| *s >= 1)
        .unwrap_or(1);
    d * scale
}
/// How long [`Sensor::stop`] waits for the sensor to exit after SIGTERM. At SIGTERM the sensor
/// still handles every record left in the ring buffer (tens of thousands after a burst test,
/// a few hundred µs each on a loaded 2-vCPU machine), then gives the collector up to 5 s to
/// acknowledge: a minute is generous for that and still catches a hang.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// The stderr line that tells the sensor is attached and has scanned /proc.
pub const READY_MARKER: &str = "sensor ready";

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// The workspace root (the parent of this package's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The sensor binary: `$NHI_SENSOR_BIN`, else `<workspace>/target/release/nhi-sensor`.
///
/// Panics if it does not exist.
pub fn sensor_bin() -> PathBuf {
    let p = match std::env::var_os("NHI_SENSOR_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .map(|t| {
                    if t.is_relative() {
                        workspace_root().join(t)
                    } else {
                        t
                    }
                })
                .unwrap_or_else(|| workspace_root().join("target"));
            target.join("release").join("nhi-sensor")
        }
    };
    if !p.is_file() {
        panic!(
            "sensor binary {} not found: build it first: cargo build --release -p nhi-sensor \
             (or point NHI_SENSOR_BIN at it)",
            p.display()
        );
    }
    p
}

static ACTOR_BIN: OnceLock<PathBuf> = OnceLock::new();

/// Records the actor binary path; integration tests call it with
/// `env!("CARGO_BIN_EXE_nhi-actor")` (see [`init_actor_bin!`]). Later calls are ignored.
pub fn set_actor_bin(p: impl Into<PathBuf>) {
    let _ = ACTOR_BIN.set(p.into());
}

/// Sets the actor binary from the calling test crate's `CARGO_BIN_EXE_nhi-actor`.
#[macro_export]
macro_rules! init_actor_bin {
    () => {
        $crate::set_actor_bin(env!("CARGO_BIN_EXE_nhi-actor"))
    };
}

/// The `nhi-actor` binary: `$NHI_ACTOR_BIN`, else the path given to [`set_actor_bin`], else
/// `nhi-actor` next to the running test executable's `deps/` directory.
pub fn actor_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NHI_ACTOR_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = ACTOR_BIN.get() {
        return p.clone();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join("nhi-actor");
    assert!(
        p.is_file(),
        "nhi-actor not found at {}: call init_actor_bin!() or set NHI_ACTOR_BIN",
        p.display()
    );
    p
}

// ---------------------------------------------------------------------------------------------
// Privileges
// ---------------------------------------------------------------------------------------------

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Serialises the real-kernel tests of a test binary (they share kernel state: attached
/// programs, cgroup hooks) and checks for root; `None` means "skip" (see [`require_root`]).
/// Hold the guard for the whole test.
pub fn serial_root_test(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root(test).then_some(guard)
}

/// For tests that need root. Returns `true` when the test should run. When not root, it
/// panics (a skipped test must not look like a pass) unless `NHI_ALLOW_SKIP=1`, in which case it
/// prints `SKIPPED: needs root` and returns `false`.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("NHI_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED: needs root: {test}");
        return false;
    }
    panic!(
        "{test} needs root (it loads eBPF programs and changes uids): run the tests as root, \
         or set NHI_ALLOW_SKIP=1 to skip them"
    );
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------------------------

static NULL: Value = Value::Null;

/// Dotted access: `get(ev, "network.dst.port")`, numeric segments index arrays
/// (`"process.ancestry.0.pid"`). Missing fields give `Value::Null`.
pub fn get<'a>(v: &'a Value, dotted: &str) -> &'a Value {
    let mut cur = v;
    for seg in dotted.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(seg).unwrap_or(&NULL),
            Value::Array(a) => seg
                .parse::<usize>()
                .ok()
                .and_then(|i| a.get(i))
                .unwrap_or(&NULL),
            _ => &NULL,
        };
    }
    cur
}

pub fn get_u64(v: &Value, dotted: &str) -> Option<u64> {
    get(v, dotted).as_u64()
}

pub fn get_i64(v: &Value, dotted: &str) -> Option<i64> {
    get(v, dotted).as_i64()
}

pub fn get_str<'a>(v: &'a Value, dotted: &str) -> Option<&'a str> {
    get(v, dotted).as_str()
}

pub fn get_bool(v: &Value, dotted: &str) -> Option<bool> {
    get(v, dotted).as_bool()
}

/// `ev.kind == kind`.
pub fn is_kind(v: &Value, kind: &str) -> bool {
    get_str(v, "kind") == Some(kind)
}

/// `ev.kind == kind && ev.process.pid == pid`.
pub fn is_kind_pid(v: &Value, kind: &str, pid: u32) -> bool {
    is_kind(v, kind) && get_u64(v, "process.pid") == Some(u64::from(pid))
}

/// One-line rendering of an event, cut to `max` characters.
pub fn compact(v: &Value, max: usize) -> String {
    let s = v.to_string();
    if s.chars().count() <= max {
        s
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

fn dump_events(events: &[Value], last: usize) -> String {
    let start = events.len().saturating_sub(last);
    let mut out = format!("{} events, last {}:\n", events.len(), events.len() - start);
    for (i, e) in events[start..].iter().enumerate() {
        out.push_str(&format!("  #{} {}\n", start + i, compact(e, 400)));
    }
    out
}

fn dump_lines(lines: &[String], last: usize) -> String {
    let start = lines.len().saturating_sub(last);
    let mut out = String::new();
    for l in &lines[start..] {
        out.push_str("  | ");
        out.push_str(l);
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Sensor
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Collected {
    events: Vec<Value>,
    /// stdout lines that are not a JSON object.
    bad_stdout: Vec<String>,
    stderr: Vec<String>,
    ready: bool,
    stdout_eof: bool,
    stderr_eof: bool,
}

struct Shared {
    st: Mutex<Collected>,
    cv: Condvar,
}

/// A running `nhi-sensor`. Dropping it SIGKILLs the process if it is still running.
pub struct Sensor {
    child: Mutex<Option<Child>>,
    pid: u32,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// The spool and embedded store of a `run` that was given none: private to this sensor,
    /// removed with it.
    _state: Option<TempDir>,
}

/// What a stopped sensor left behind.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub events: Vec<Value>,
    pub stderr: Vec<String>,
    /// stdout lines that were not JSON objects (the contract says there are none).
    pub bad_stdout: Vec<String>,
}

impl Sensor {
    /// Starts `nhi-sensor ARGS...` (as the current user) and waits up to 60 s for its
    /// `sensor ready` log line. Panics, with the collected stderr, if it exits or times out.
    pub fn start(args: &[&str]) -> Sensor {
        Self::start_os(args)
    }

    /// [`Sensor::start`] with arbitrary (e.g. non-UTF-8) arguments.
    pub fn start_os<S: AsRef<OsStr>>(args: &[S]) -> Sensor {
        Self::start_bin(&sensor_bin(), args)
    }

    /// [`Sensor::start`] with an explicit binary (the harness's own tests use a fake one).
    pub fn start_bin<S: AsRef<OsStr>>(bin: &Path, args: &[S]) -> Sensor {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        let given = |flag: &str| args.iter().any(|a| a.as_ref() == OsStr::new(flag));
        let state = (args
            .first()
            .is_some_and(|a| a.as_ref() == OsStr::new("run"))
            && !given("--spool")
            && !given("--store"))
        .then(|| {
            let t = TempDir::new("sensor-state");
            cmd.arg("--spool")
                .arg(t.join("spool"))
                .arg("--store")
                .arg(t.join("store"));
            t
        });
        // Open dedupe (on by default) reports a process's repeated opens of one file as one
        // event with a count. These tests count opens one event each, so they run without it;
        // `kernel.rs` tests dedupe itself by passing its own window.
        if args
            .first()
            .is_some_and(|a| a.as_ref() == OsStr::new("run"))
            && !given("--open-dedupe-ms")
        {
            cmd.args(["--open-dedupe-ms", "0"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child =
            spawn_retrying(&mut cmd).unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let shared = Arc::new(Shared {
            st: Mutex::new(Collected::default()),
            cv: Condvar::new(),
        });

        let sh = shared.clone();
        let t_out = std::thread::Builder::new()
            .name("sensor-stdout".into())
            .spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buf.pop();
                    }
                    if buf.is_empty() {
                        continue;
                    }
                    let parsed = serde_json::from_slice::<Value>(&buf);
                    let mut g = lock(&sh.st);
                    match parsed {
                        Ok(v @ Value::Object(_)) => g.events.push(v),
                        _ => {
                            let l = String::from_utf8_lossy(&buf).into_owned();
                            eprintln!("[nhi-sensor stdout, not a JSON object] {l}");
                            g.bad_stdout.push(l);
                        }
                    }
                    drop(g);
                    sh.cv.notify_all();
                }
                lock(&sh.st).stdout_eof = true;
                sh.cv.notify_all();
            })
            .expect("spawn reader thread");

        let sh = shared.clone();
        let t_err = std::thread::Builder::new()
            .name("sensor-stderr".into())
            .spawn(move || {
                let mut r = BufReader::new(stderr);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let l = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    eprintln!("[nhi-sensor] {l}");
                    let mut g = lock(&sh.st);
                    if l.contains(READY_MARKER) {
                        g.ready = true;
                    }
                    g.stderr.push(l);
                    drop(g);
                    sh.cv.notify_all();
                }
                lock(&sh.st).stderr_eof = true;
                sh.cv.notify_all();
            })
            .expect("spawn reader thread");

        let s = Sensor {
            child: Mutex::new(Some(child)),
            pid,
            shared,
            threads: vec![t_out, t_err],
            _state: state,
        };
        // On panic `s` is dropped, which kills the process.
        s.wait_ready(args);
        s
    }

    /// Starts `nhi-sensor run --format json --watch DIR/ ...` for each of `dirs` plus `extra`.
    pub fn watching(dirs: &[&Path], extra: &[&str]) -> Sensor {
        let mut args: Vec<String> = vec!["run".into(), "--format".into(), "json".into()];
        for d in dirs {
            args.push("--watch".into());
            args.push(watch_arg(d));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start(&refs)
    }

    fn wait_ready<S: AsRef<OsStr>>(&self, args: &[S]) {
        let deadline = Instant::now() + scaled(READY_TIMEOUT);
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        loop {
            {
                let g = lock(&self.shared.st);
                if g.ready {
                    return;
                }
                let g = self
                    .shared
                    .cv
                    .wait_timeout(g, Duration::from_millis(100))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
                if g.ready {
                    return;
                }
            }
            if let Some(status) = self.try_status() {
                // Let the stderr reader drain so the message is complete.
                self.wait_eof(Duration::from_secs(2));
                let g = lock(&self.shared.st);
                let msg = format!(
                    "nhi-sensor {shown:?} exited ({status}) before logging {READY_MARKER:?}; \
                     stderr:\n{}stdout:\n{}{}",
                    dump_lines(&g.stderr, 200),
                    dump_lines(&g.bad_stdout, 20),
                    dump_events(&g.events, 10)
                );
                drop(g);
                panic!("{msg}");
            }
            if Instant::now() >= deadline {
                let g = lock(&self.shared.st);
                let msg = format!(
                    "nhi-sensor {shown:?} did not log {READY_MARKER:?} within {READY_TIMEOUT:?}; \
                     stderr:\n{}",
                    dump_lines(&g.stderr, 200)
                );
                drop(g);
                panic!("{msg}");
            }
        }
    }

    fn try_status(&self) -> Option<ExitStatus> {
        let mut c = lock(&self.child);
        c.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits (bounded) until both output pipes reached EOF; returns whether they did.
    fn wait_eof(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.shared.st);
        loop {
            if g.stdout_eof && g.stderr_eof {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .shared
                .cv
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// The sensor's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the sensor process is still running.
    pub fn is_running(&self) -> bool {
        let mut c = lock(&self.child);
        match c.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// Returns the first event (from the start of the run) matching `pred`, waiting up to
    /// `timeout`. Panics naming `what` and showing the last 40 events on timeout, or if the
    /// sensor's stdout closes first.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_n(what, timeout, 1, pred)
            .pop()
            .expect("one event")
    }

    /// Waits until at least `n` events match `pred`; returns the first `n` of them.
    pub fn wait_for_n(
        &self,
        what: &str,
        timeout: Duration,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + scaled(timeout);
        let mut found = Vec::new();
        let mut scanned = 0usize;
        let mut g = lock(&self.shared.st);
        loop {
            for e in &g.events[scanned..] {
                if pred(e) {
                    found.push(e.clone());
                    if found.len() >= n {
                        return found;
                    }
                }
            }
            scanned = g.events.len();
            let now = Instant::now();
            let closed = g.stdout_eof;
            if closed || now >= deadline {
                let why = if closed {
                    "the sensor's stdout closed (did it exit?)"
                } else {
                    "timed out"
                };
                let msg = format!(
                    "waiting for {what} ({} of {n} found after {timeout:?}): {why}\n{}\
                     non-JSON stdout lines: {}\nlast stderr lines:\n{}",
                    found.len(),
                    dump_events(&g.events, 40),
                    g.bad_stdout.len(),
                    dump_lines(&g.stderr, 20)
                );
                drop(g);
                panic!("{msg}");
            }
            g = self
                .shared
                .cv
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// A snapshot of all events so far.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.shared.st).events.clone()
    }

    /// How many events so far match `pred`.
    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        lock(&self.shared.st)
            .events
            .iter()
            .filter(|e| pred(e))
            .count()
    }

    /// A snapshot of the stderr lines so far.
    pub fn stderr(&self) -> Vec<String> {
        lock(&self.shared.st).stderr.clone()
    }

    /// A snapshot of the stdout lines that were not JSON objects.
    pub fn bad_stdout(&self) -> Vec<String> {
        lock(&self.shared.st).bad_stdout.clone()
    }

    /// SIGKILLs the sensor (no shutdown of any kind) and returns what it printed.
    pub fn kill9(mut self) -> Stopped {
        let child = lock(&self.child).take();
        let mut child = child.expect("sensor already reaped");
        let _ = child.kill();
        let status = child.wait().expect("waiting for the killed sensor");
        if self.wait_eof(Duration::from_secs(5)) {
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
        let mut g = lock(&self.shared.st);
        Stopped {
            status,
            events: std::mem::take(&mut g.events),
            stderr: std::mem::take(&mut g.stderr),
            bad_stdout: std::mem::take(&mut g.bad_stdout),
        }
    }

    /// Sends SIGTERM and waits up to [`STOP_TIMEOUT`] for the exit (then SIGKILLs and panics).
    pub fn stop(mut self) -> Stopped {
        let child = lock(&self.child).take();
        let Some(mut child) = child else {
            panic!("sensor already reaped");
        };
        let status = match child.try_wait() {
            Ok(Some(st)) => st,
            _ => {
                // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
                let deadline = Instant::now() + scaled(STOP_TIMEOUT);
                loop {
                    match child.try_wait() {
                        Ok(Some(st)) => break st,
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(25))
                        }
                        _ => {
                            let _ = child.kill();
                            let _ = child.wait();
                            self.wait_eof(Duration::from_secs(2));
                            let g = lock(&self.shared.st);
                            let msg = format!(
                                "nhi-sensor did not exit within {STOP_TIMEOUT:?} of SIGTERM \
                                 (killed); stderr:\n{}",
                                dump_lines(&g.stderr, 60)
                            );
                            drop(g);
                            panic!("{msg}");
                        }
                    }
                }
            }
        };
        if self.wait_eof(Duration::from_secs(5)) {
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
        let mut g = lock(&self.shared.st);
        Stopped {
            status,
            events: std::mem::take(&mut g.events),
            stderr: std::mem::take(&mut g.stderr),
            bad_stdout: std::mem::take(&mut g.bad_stdout),
        }
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        let child = lock(&self.child).take();
        if let Some(mut c) = child {
            if let Ok(None) = c.try_wait() {
                eprintln!("[harness] killing nhi-sensor pid {}", self.pid);
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl Stopped {
    /// The final `sensor.stats` event (`stats.final == true`); panics if there is none.
    pub fn final_stats(&self) -> &Value {
        self.events
            .iter()
            .rev()
            .find(|e| is_kind(e, "sensor.stats") && get_bool(e, "stats.final") == Some(true))
            .unwrap_or_else(|| {
                panic!(
                    "no final sensor.stats event; {}stderr:\n{}",
                    dump_events(&self.events, 40),
                    dump_lines(&self.stderr, 40)
                )
            })
    }

    /// Asserts exit code 0 and only JSON objects on stdout.
    pub fn assert_clean(&self) {
        assert_eq!(
            self.status.code(),
            Some(0),
            "nhi-sensor should exit 0 on SIGTERM, got {}; stderr:\n{}",
            self.status,
            dump_lines(&self.stderr, 60)
        );
        assert!(
            self.bad_stdout.is_empty(),
            "nhi-sensor printed non-JSON stdout lines: {:?}",
            self.bad_stdout
        );
    }

    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.events.iter().filter(|e| pred(e)).count()
    }

    pub fn find(&self, pred: impl Fn(&Value) -> bool) -> Option<&Value> {
        self.events.iter().find(|e| pred(e))
    }

    /// The last `n` events, compactly, for assertion messages.
    pub fn dump(&self, n: usize) -> String {
        dump_events(&self.events, n)
    }
}

/// The `--watch` argument for a directory: its path with a trailing `/`.
pub fn watch_arg(dir: &Path) -> String {
    let s = dir
        .to_str()
        .expect("watched directories have UTF-8 paths")
        .trim_end_matches('/');
    format!("{s}/")
}

// ---------------------------------------------------------------------------------------------
// TempDir
// ---------------------------------------------------------------------------------------------

/// A fresh directory under /tmp (mode 0755, canonical path), removed recursively on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        for _ in 0..100 {
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!(
                "nhi-test-{tag}-{}-{n}-{nanos:09}",
                std::process::id()
            ));
            match std::fs::create_dir(&p) {
                Ok(()) => {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                        .expect("chmod temp dir");
                    let path = std::fs::canonicalize(&p).expect("canonicalize temp dir");
                    return TempDir { path };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("creating {}: {e}", p.display()),
            }
        }
        panic!("could not create a unique temp dir");
    }

    /// The canonical absolute path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// `mkdir -p` of `rel` (mode 0755 each); returns the path.
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.path.join(rel);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    /// Writes `data` to `rel` (mode 0644); returns the path.
    pub fn write(&self, rel: impl AsRef<Path>, data: &[u8]) -> PathBuf {
        let p = self.path.join(rel);
        std::fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // std's remove_dir_all works with openat/unlinkat, so paths longer than PATH_MAX are
        // removed too.
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("[harness] removing {}: {e}", self.path.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Actor
// ---------------------------------------------------------------------------------------------

/// A running `nhi-actor`. Dropping it kills it if still running.
pub struct Actor {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every step line read so far.
    pub steps: Vec<Value>,
}

/// A `Command` for `nhi-actor ARGS...` with stdin/stdout piped (stderr inherited), for callers
/// that need to adjust it before [`Actor::from_command`].
pub fn actor_command<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(actor_bin());
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// Spawns `nhi-actor ARGS...` (see `src/bin/nhi-actor.rs` for the steps).
pub fn spawn_actor<S: AsRef<OsStr>>(args: &[S]) -> Actor {
    Actor::from_command(actor_command(args))
}

impl Actor {
    /// Spawns a command made by [`actor_command`] (stdin and stdout must be piped).
    pub fn from_command(mut cmd: Command) -> Actor {
        let mut child = spawn_retrying(&mut cmd)
            .unwrap_or_else(|e| panic!("spawning {:?}: {e}", cmd.get_program()));
        let stdout = child.stdout.take().expect("actor stdout must be piped");
        let stdin = child.stdin.take();
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("actor-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn actor reader");
        Actor {
            child,
            stdin,
            lines: rx,
            steps: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next step line, waiting up to [`WAIT`].
    pub fn next_step(&mut self) -> Value {
        self.next_step_timeout(WAIT)
    }

    /// The next step line, waiting up to `timeout`; panics on timeout or end of output.
    pub fn next_step_timeout(&mut self, timeout: Duration) -> Value {
        match self.lines.recv_timeout(scaled(timeout)) {
            Ok(l) => {
                let v: Value = serde_json::from_str(&l)
                    .unwrap_or_else(|e| panic!("nhi-actor printed non-JSON {l:?}: {e}"));
                self.steps.push(v.clone());
                v
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "nhi-actor pid {} printed no step within {timeout:?}; steps so far: {:?}",
                self.pid(),
                self.steps
            ),
            Err(RecvTimeoutError::Disconnected) => panic!(
                "nhi-actor pid {} closed stdout; steps so far: {:?}",
                self.pid(),
                self.steps
            ),
        }
    }

    /// The next step line, asserting its `"step"` name.
    pub fn expect_step(&mut self, name: &str) -> Value {
        let v = self.next_step();
        assert_eq!(
            get_str(&v, "step"),
            Some(name),
            "expected nhi-actor step {name:?}, got {v}"
        );
        v
    }

    /// Like [`Actor::expect_step`], and also asserts `"ok": true`.
    pub fn expect_ok(&mut self, name: &str) -> Value {
        let v = self.expect_step(name);
        assert_eq!(
            get_bool(&v, "ok"),
            Some(true),
            "nhi-actor step {name:?} failed: {v}"
        );
        v
    }

    /// Reads step lines until one named `name` (returned); panics on timeout / end.
    pub fn step_until(&mut self, name: &str) -> Value {
        loop {
            let v = self.next_step();
            if get_str(&v, "step") == Some(name) {
                return v;
            }
        }
    }

    /// All remaining step lines until the actor closes stdout (bounded by [`WAIT`] in total).
    pub fn rest(&mut self) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let v: Value = serde_json::from_str(&l)
                        .unwrap_or_else(|e| panic!("nhi-actor printed non-JSON {l:?}: {e}"));
                    self.steps.push(v.clone());
                    out.push(v);
                }
                Err(RecvTimeoutError::Disconnected) => return out,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("nhi-actor did not finish within {WAIT:?}; steps: {out:?}")
                }
            }
        }
    }

    /// Writes one line to the actor's stdin (for `--wait-stdin`).
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("actor stdin is open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("writing to actor stdin");
    }

    /// Closes the actor's stdin (EOF for `--wait-stdin`).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits up to 20 s for the actor to exit (else kills it and panics).
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return st,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                r => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("nhi-actor pid {} did not exit in time ({r:?})", self.pid());
                }
            }
        }
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Plain commands
// ---------------------------------------------------------------------------------------------

/// What [`run_with_timeout`] returns.
#[derive(Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Spawns `cmd`, retrying on `ETXTBSY`: a binary or script this test process just wrote can be
/// briefly held open for writing by a child another test thread is forking (the fd is
/// close-on-exec, but only after that child's exec).
pub fn spawn_retrying(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    let mut attempts = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Runs `cmd` (stdin null, outputs captured) and waits up to `timeout`, then kills it and panics.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> RunOutput {
    let timeout = scaled(timeout);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_retrying(&mut cmd)
        .unwrap_or_else(|e| panic!("spawning {:?}: {e}", cmd.get_program()));
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            r => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{:?} {:?} did not exit within {timeout:?} ({r:?})",
                    cmd.get_program(),
                    cmd.get_args().collect::<Vec<_>>()
                );
            }
        }
    };
    RunOutput {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}
