//! How operators run the sensor: the config file (`config check`, precedence, SIGHUP reload
//! without losing events), least privilege (a non-root uid holding only the documented
//! capabilities sees what root sees; without any one of them the sensor says which), and the
//! metrics and health endpoints. Real kernel, real processes; root needed.

use std::{ffi::OsString, path::Path, process::Command, sync::MutexGuard, time::Duration};

use nhi_sensor_tests::{
    Sensor, TempDir, WAIT, get_str, is_kind, run_with_timeout, scaled, sensor_bin,
    shipping::{free_port, http_get},
    spawn_actor, watch_arg,
};

fn setup(test: &str) -> Option<MutexGuard<'static, ()>> {
    nhi_sensor_tests::init_actor_bin!();
    nhi_sensor_tests::serial_root_test(test)
}

/// The capabilities the README documents, by their setpriv names.
const CAPS: &[&str] = &[
    "bpf",
    "perfmon",
    "net_admin",
    "dac_read_search",
    "sys_ptrace",
];
const NOBODY: &str = "65534";

fn opens_of(events: &[serde_json::Value], path: &str) -> usize {
    events
        .iter()
        .filter(|e| is_kind(e, "file.open") && get_str(e, "file.path") == Some(path))
        .count()
}

#[test]
fn config_check_explains_errors_with_line_numbers() {
    let dir = TempDir::new("config-check");
    let check = |text: &str| {
        let f = dir.write("c.toml", text.as_bytes());
        let mut cmd = Command::new(sensor_bin());
        cmd.args(["config", "check"]).arg(&f);
        run_with_timeout(cmd, Duration::from_secs(30))
    };
    let ok = check(
        "watch = [\"/srv/secrets/\"]\nstats_interval = 5\n[[credential]]\nkind = \"acme\"\nformat = \"opaque\"\nname = \"acme.key\"\n",
    );
    assert!(ok.status.success(), "{}", ok.stderr);
    assert!(ok.stdout.starts_with("ok:"), "{}", ok.stdout);
    for (text, expect) in [
        ("stats_interval = 5\nstats_intervall = 6\n", "line 2"),
        ("watch = [\"/a/\"]\n\nring_mib = \"big\"\n", "line 3"),
        ("# comment\nwatch_name = [\"a/b\"]\n", "line 2"),
        (
            "collector = \"http://192.0.2.7:50051\"\n",
            "refusing plaintext",
        ),
        ("watch = [\n", "line"),
    ] {
        let out = check(text);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{text:?} accepted: {}",
            out.stdout
        );
        assert!(out.stderr.contains(expect), "{text:?}: {}", out.stderr);
    }
}

/// SIGHUP swaps the watch rules in the running kernel programs: a newly watched directory
/// is reported, a dropped one no longer is, and a file watched before and after loses no
/// event while the rules change under a stream of opens.
#[test]
fn sighup_reloads_watch_rules_without_losing_events() {
    let Some(_g) = setup("sighup_reloads_watch_rules_without_losing_events") else {
        return;
    };
    const OPENS: usize = 3_000;
    let dir = TempDir::new("sighup");
    let (a, b, kept) = (dir.mkdir("a"), dir.mkdir("b"), dir.mkdir("kept"));
    let fa = dir.write("a/f", b"a");
    let fb = dir.write("b/f", b"b");
    let fk = dir.write("kept/f", b"k");
    let config = |dirs: &[&Path]| {
        let list: Vec<String> = dirs.iter().map(|d| format!("{:?}", watch_arg(d))).collect();
        dir.write(
            "sensor.toml",
            format!("watch = [{}]\nstats_interval = 0\n", list.join(", ")).as_bytes(),
        )
    };
    let cfg = config(&[&a, &kept]);
    let sensor = Sensor::start(&[
        "run",
        "--format",
        "json",
        "--no-default-rules",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let (fa_s, fb_s, fk_s) = (
        fa.to_str().unwrap().to_string(),
        fb.to_str().unwrap().to_string(),
        fk.to_str().unwrap().to_string(),
    );
    let mut actor = spawn_actor(&["--open", &fa_s, "--close", "--open", &fb_s, "--close"]);
    actor.step_until("done");
    sensor.wait_for("the open of a/f (watched from the file)", WAIT, |e| {
        is_kind(e, "file.open") && get_str(e, "file.path") == Some(fa_s.as_str())
    });

    // Change the rules while a stream of opens of kept/f runs.
    config(&[&b, &kept]);
    let mut stream = spawn_actor(&["--sleep-ms", "50", "--open-loop", &fk_s, &OPENS.to_string()]);
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(sensor.pid() as i32, libc::SIGHUP) };
    stream.step_until("done");
    drop(stream);
    let deadline = std::time::Instant::now() + scaled(WAIT);
    while !sensor
        .stderr()
        .iter()
        .any(|l| l.contains("watch rules reloaded"))
    {
        assert!(std::time::Instant::now() < deadline, "no reload log line");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut actor = spawn_actor(&["--open", &fa_s, "--close", "--open", &fb_s, "--close"]);
    actor.step_until("done");
    sensor.wait_for("the open of b/f (watched after the reload)", WAIT, |e| {
        is_kind(e, "file.open") && get_str(e, "file.path") == Some(fb_s.as_str())
    });
    // A broken file leaves the running rules in place, with an error in the log.
    dir.write("sensor.toml", b"watch = [\"relative\"]\n");
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(sensor.pid() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + scaled(WAIT);
    while !sensor.stderr().iter().any(|l| l.contains("reload failed")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload-failed log line"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        sensor
            .stderr()
            .iter()
            .any(|l| l.contains("not an absolute path")),
        "the log must say what is wrong"
    );
    let mut actor = spawn_actor(&["--open", &fb_s, "--close"]);
    actor.step_until("done");
    sensor.wait_for_n("b/f still watched after a failed reload", WAIT, 2, |e| {
        is_kind(e, "file.open") && get_str(e, "file.path") == Some(fb_s.as_str())
    });
    let stopped = sensor.stop();
    stopped.assert_clean();
    assert_eq!(
        opens_of(&stopped.events, &fk_s),
        OPENS,
        "events of the kept rule were lost"
    );
    assert_eq!(
        opens_of(&stopped.events, &fa_s),
        1,
        "a/ is no longer watched"
    );
    assert_eq!(
        opens_of(&stopped.events, &fb_s),
        2,
        "b/ was not watched before"
    );
}

/// `setpriv` arguments that run the sensor as uid 65534 with exactly `caps` (inheritable,
/// ambient and bounding sets), its state in a directory that uid owns.
fn unprivileged(
    caps: &[&str],
    state: &Path,
    watched: &Path,
    metrics_port: Option<u16>,
) -> Vec<OsString> {
    let set = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut args: Vec<OsString> = [
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    args.push(sensor_bin().into());
    for a in [
        "run",
        "--format",
        "json",
        "--stats-interval",
        "0",
        "--watch",
    ] {
        args.push(a.into());
    }
    args.push(watch_arg(watched).into());
    for (flag, p) in [
        ("--spool", "spool"),
        ("--store", "store"),
        ("--fingerprint-key-file", "fingerprint.key"),
    ] {
        args.push(flag.into());
        args.push(state.join(p).into());
    }
    if let Some(p) = metrics_port {
        args.push("--metrics-addr".into());
        args.push(format!("127.0.0.1:{p}").into());
    }
    args
}

/// A non-root uid holding only the documented capabilities gets the same events as root,
/// and its metrics/health endpoints answer with real values; without any one capability the
/// sensor refuses to start and names it.
#[test]
fn documented_capabilities_are_enough_and_each_is_needed() {
    let Some(_g) = setup("documented_capabilities_are_enough_and_each_is_needed") else {
        return;
    };
    let dir = TempDir::new("caps");
    let watched = dir.mkdir("watched");
    let key = dir.write("watched/id_rsa", b"k");
    let key_s = key.to_str().unwrap().to_string();
    let state = dir.mkdir("state");
    let chown = |p: &Path| {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: chown(2) on a path we created.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
    };
    chown(&state);

    // Root, for comparison.
    let root = Sensor::start(&["run", "--format", "json", "--watch", &watch_arg(&watched)]);
    let mut actor = spawn_actor(&[
        "--setuid", "1000", "--open", &key_s, "--read", "1", "--close",
    ]);
    actor.step_until("done");
    drop(actor);
    root.wait_for("root sees the open", WAIT, |e| {
        is_kind(e, "file.open") && get_str(e, "file.path") == Some(key_s.as_str())
    });
    let root_events = root.stop().events;

    let port = free_port();
    let sensor = Sensor::start_bin(
        Path::new("/usr/bin/setpriv"),
        &unprivileged(CAPS, &state, &watched, Some(port)),
    );
    let mut actor = spawn_actor(&[
        "--setuid", "1000", "--open", &key_s, "--read", "1", "--close",
    ]);
    actor.step_until("done");
    drop(actor);
    let open = sensor.wait_for("the unprivileged sensor sees the open", WAIT, |e| {
        is_kind(e, "file.open") && get_str(e, "file.path") == Some(key_s.as_str())
    });
    sensor.wait_for("and the close with the bytes read", WAIT, |e| {
        is_kind(e, "file.close") && get_str(e, "file.path") == Some(key_s.as_str())
    });
    // The same description as root gives: executable, credentials, identity, credential.
    let root_open = root_events
        .iter()
        .find(|e| is_kind(e, "file.open") && get_str(e, "file.path") == Some(key_s.as_str()))
        .unwrap();
    for field in [
        "process.exe",
        "process.uid",
        "process.euid",
        "identity.name",
        "credential.kind",
        "file.mode",
    ] {
        assert_eq!(
            nhi_sensor_tests::get(&open, field),
            nhi_sensor_tests::get(root_open, field),
            "{field} differs between root and the unprivileged sensor"
        );
    }
    assert!(
        nhi_sensor_tests::get(&open, "process.argv").is_array(),
        "{open}"
    );
    // Published on the pipeline's 250 ms tick.
    let deadline = std::time::Instant::now() + scaled(WAIT);
    let metrics = loop {
        let m = http_get(port, "/metrics");
        if m.contains("nhi_sensor_events_total{kind=\"file.open\"}") {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no file.open in /metrics: {m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics.contains("nhi_sensor_kernel_drops_total{reason=\"ringbuf_full\"} 0"),
        "{metrics}"
    );
    assert!(http_get(port, "/readyz").starts_with("HTTP/1.1 200"));
    assert!(http_get(port, "/healthz").starts_with("HTTP/1.1 200"));
    sensor.stop().assert_clean();

    for missing in CAPS {
        let caps: Vec<&str> = CAPS.iter().copied().filter(|c| c != missing).collect();
        let mut cmd = Command::new("/usr/bin/setpriv");
        cmd.args(unprivileged(&caps, &state, &watched, None));
        let out = run_with_timeout(cmd, Duration::from_secs(60));
        let name = format!("CAP_{}", missing.to_uppercase());
        assert_eq!(
            out.status.code(),
            Some(1),
            "started without {name}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&format!("needs {name} (")),
            "the error must name {name}: {}",
            out.stderr
        );
    }
}
