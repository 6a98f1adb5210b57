//! Tests of the harness itself against a fake sensor script (no root, no eBPF).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nhi_sensor_tests::{Sensor, TempDir, get_bool, get_u64, is_kind};

const FAKE: &str = r#"#!/bin/sh
trap 'echo "{\"kind\":\"sensor.stats\",\"stats\":{\"kernel_drops\":0,\"final\":true}}"; exit 0' TERM
echo "starting" >&2
if [ "$1" = die ]; then echo "error: cannot attach: missing CAP_BPF" >&2; exit 3; fi
if [ "$1" = hang ]; then trap '' TERM; fi
echo '{"kind":"file.open","process":{"pid":42},"file":{"path":"/a"}}'
echo "INFO sensor ready" >&2
echo '{"kind":"file.open","process":{"pid":43},"file":{"path":"/b"}}'
echo 'this is not json'
while true; do sleep 0.05; done
"#;

fn fake(d: &TempDir) -> PathBuf {
    let p = d.write("fake-sensor", FAKE.as_bytes());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

#[test]
fn start_wait_stop() {
    let d = TempDir::new("harness");
    let s = Sensor::start_bin(&fake(&d), &["run"]);
    assert!(s.is_running());
    let e = s.wait_for("pid 43", Duration::from_secs(5), |e| {
        get_u64(e, "process.pid") == Some(43)
    });
    assert_eq!(nhi_sensor_tests::get_str(&e, "file.path"), Some("/b"));
    // Events before the ready line are kept too.
    assert_eq!(s.count(|e| is_kind(e, "file.open")), 2);
    assert!(s.stderr().iter().any(|l| l.contains("sensor ready")));
    let stopped = s.stop();
    assert_eq!(stopped.status.code(), Some(0));
    assert_eq!(stopped.bad_stdout, vec!["this is not json".to_string()]);
    assert_eq!(get_bool(stopped.final_stats(), "stats.final"), Some(true));
    assert_eq!(stopped.events.len(), 3);
}

#[test]
fn wait_for_timeout_panics_with_context() {
    let d = TempDir::new("harness");
    let bin = fake(&d);
    let r = std::panic::catch_unwind(|| {
        let s = Sensor::start_bin(&bin, &["run"]);
        s.wait_for(
            "something that never comes",
            Duration::from_millis(200),
            |_| false,
        );
    });
    let msg = *r
        .expect_err("must panic")
        .downcast::<String>()
        .expect("String panic");
    assert!(msg.contains("something that never comes"), "{msg}");
    assert!(msg.contains("\"pid\":43"), "shows the events: {msg}");
}

#[test]
fn exit_before_ready_panics_with_stderr() {
    let d = TempDir::new("harness");
    let bin = fake(&d);
    let t = Instant::now();
    let r = std::panic::catch_unwind(|| Sensor::start_bin(&bin, &["die"]));
    let msg = *r
        .err()
        .expect("must panic")
        .downcast::<String>()
        .expect("String panic");
    assert!(msg.contains("missing CAP_BPF"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn drop_kills_the_sensor() {
    let d = TempDir::new("harness");
    let s = Sensor::start_bin(&fake(&d), &["hang"]);
    let pid = s.pid() as libc::pid_t;
    drop(s);
    // SAFETY: kill with signal 0 only checks existence; the child has been reaped by drop.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "sensor pid {pid} still alive after drop");
}

#[test]
fn temp_dir_is_traversable_and_removed() {
    let p;
    {
        let d = TempDir::new("harness");
        p = d.path().to_path_buf();
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        assert_eq!(std::fs::canonicalize(&p).expect("canon"), p);
        d.mkdir("a/b/c");
        d.write("a/b/c/f", b"x");
    }
    assert!(!p.exists());
}
