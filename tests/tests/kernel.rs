//! Real-kernel integration tests of `nhi-sensor`.
//!
//! They need root (the sensor loads eBPF programs, the actor changes uids) and the release
//! sensor binary:
//!
//! ```text
//! cargo build --release -p nhi-sensor
//! sudo -E cargo test -p nhi-sensor-tests --test kernel -- --test-threads=1
//! ```
//!
//! Run them one at a time (`--test-threads=1`); a process-wide lock serialises them anyway.
//! Each test starts its own sensor with `--watch` on its own temporary directory, so the tests
//! are independent of each other and of the order they run in. Not running as root makes each
//! test FAIL, unless `NHI_ALLOW_SKIP=1` is set (then they print `SKIPPED: needs root` and
//! return). `NHI_SENSOR_BIN` overrides the sensor binary path.
//!
//! Waits are bounded (`WAIT` = 10 s per event); no assertion relies on a fixed sleep.

use std::ffi::{CString, OsStr, OsString};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::MutexGuard;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use nhi_sensor_tests::{
    Sensor, Stopped, TempDir, WAIT, compact, get, get_bool, get_str, get_u64, is_kind, is_kind_pid,
    run_with_timeout, sensor_bin, spawn_actor,
};
use serde_json::Value;

const NOBODY: u64 = 65534;

/// Common prologue: serialises the tests, sets the actor binary, checks for root.
/// `None` means "skip" (only when not root and NHI_ALLOW_SKIP=1).
fn setup(test: &str) -> Option<MutexGuard<'static, ()>> {
    nhi_sensor_tests::init_actor_bin!();
    nhi_sensor_tests::serial_root_test(test)
}

fn our_pid() -> u64 {
    u64::from(std::process::id())
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

fn canon(p: &Path) -> String {
    let c = std::fs::canonicalize(p).unwrap_or_else(|e| panic!("canonicalize {p:?}: {e}"));
    c.to_str().expect("UTF-8").to_string()
}

/// `"major:minor"` of a `st_dev`, as the kernel's MAJOR()/MINOR() of the superblock dev.
fn dev_string(dev: u64) -> String {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{major}:{minor}")
}

/// The login name of `uid` in /etc/passwd, if any.
fn passwd_name(uid: u64) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u64>().ok()? == uid).then(|| name.to_string())
    })
}

fn has_str(v: &Value, dotted: &str, want: &str) -> bool {
    get(v, dotted)
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(want)))
}

fn step_fd(step: &Value) -> u64 {
    get_u64(step, "fd").unwrap_or_else(|| panic!("actor step without fd: {step}"))
}

/// Stops the sensor, checks exit 0 / JSON-only stdout / a final stats event.
fn finish(sensor: Sensor) -> Stopped {
    let stopped = sensor.stop();
    stopped.assert_clean();
    let st = stopped.final_stats();
    assert!(
        get_u64(st, "stats.kernel_drops").is_some(),
        "final stats without kernel_drops: {st}"
    );
    stopped
}

/// Common `process` object checks.
fn assert_process_basics(ev: &Value, pid: u32) {
    assert_eq!(get_u64(ev, "process.pid"), Some(u64::from(pid)), "{ev}");
    let key = get_str(ev, "process.key").unwrap_or_else(|| panic!("no process.key: {ev}"));
    assert!(
        key.len() == 16 && key.chars().all(|c| c.is_ascii_hexdigit()),
        "process.key must be 16 hex chars: {ev}"
    );
    assert!(
        get_str(ev, "time").is_some_and(|t| t.ends_with('Z')),
        "{ev}"
    );
    assert!(get_u64(ev, "boot_ns").is_some_and(|n| n > 0), "{ev}");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn drop_privileges_relative_read_short_lived() {
    let Some(_g) = setup("drop_privileges_relative_read_short_lived") else {
        return;
    };
    let d = TempDir::new("privdrop");
    d.mkdir("sub");
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let secret = d.write("secret.txt", &data);
    let secret_path = canon(&secret);
    let meta = std::fs::metadata(&secret).expect("stat");

    let sensor = Sensor::watching(&[d.path()], &[]);
    let mut a = spawn_actor(&[
        "--setgroups-clear",
        "--setgid",
        "65534",
        "--setuid",
        "65534",
        "--chdir",
        path_str(d.path()),
        "--open",
        "./secret.txt",
        "--read",
        "1234",
        "--exit",
        "0",
    ]);
    let pid = a.pid();
    a.expect_step("start");
    a.expect_ok("setgroups-clear");
    a.expect_ok("setgid");
    a.expect_ok("setuid");
    a.expect_ok("chdir");
    let fd = step_fd(&a.expect_ok("open"));
    assert_eq!(get_u64(&a.expect_ok("read"), "bytes"), Some(1234));
    a.expect_step("exit");
    assert_eq!(a.wait().code(), Some(0));

    let open = sensor.wait_for("file.open of secret.txt by the actor", WAIT, |e| {
        is_kind_pid(e, "file.open", pid)
    });
    assert_process_basics(&open, pid);
    assert_eq!(get_u64(&open, "process.ppid"), Some(our_pid()), "{open}");
    let exe = get_str(&open, "process.exe").unwrap_or("");
    assert!(exe.ends_with("/nhi-actor"), "process.exe {exe:?}: {open}");
    for f in ["uid", "euid", "gid", "egid", "fsuid"] {
        assert_eq!(
            get_u64(&open, &format!("process.{f}")),
            Some(NOBODY),
            "process.{f}: {open}"
        );
    }
    if let Some(name) = passwd_name(NOBODY) {
        assert_eq!(
            get_str(&open, "process.user"),
            Some(name.as_str()),
            "{open}"
        );
    }
    assert_eq!(
        get_str(&open, "file.path"),
        Some(secret_path.as_str()),
        "{open}"
    );
    assert!(get(&open, "file.fd").is_number(), "{open}");
    assert_eq!(get_u64(&open, "file.fd"), Some(fd), "{open}");
    assert_eq!(get_str(&open, "file.access"), Some("read"), "{open}");
    assert_eq!(
        get_bool(&open, "file.path_truncated"),
        Some(false),
        "{open}"
    );
    assert_eq!(get_bool(&open, "file.path_resolved"), Some(true), "{open}");
    assert!(get(&open, "file.error").is_null(), "{open}");
    assert!(
        get(&open, "file.path_b64").is_null(),
        "UTF-8 path has no path_b64: {open}"
    );
    assert_eq!(get_u64(&open, "file.ino"), Some(meta.ino()), "{open}");
    assert_eq!(
        get_str(&open, "file.dev"),
        Some(dev_string(meta.dev()).as_str()),
        "{open}"
    );
    assert_eq!(get_str(&open, "file.mode"), Some("0100644"), "{open}");
    assert!(has_str(&open, "file.matched", "prefix"), "{open}");

    let close = sensor.wait_for("file.close of secret.txt at exit", WAIT, |e| {
        is_kind_pid(e, "file.close", pid)
    });
    assert_eq!(
        get_str(&close, "file.path"),
        Some(secret_path.as_str()),
        "{close}"
    );
    assert_eq!(get_u64(&close, "file.bytes_read"), Some(1234), "{close}");
    assert_eq!(get_str(&close, "file.reason"), Some("exit"), "{close}");
    assert_eq!(get_u64(&close, "file.fd"), Some(fd), "{close}");
    assert!(
        get_u64(&close, "file.reads").is_some_and(|n| n >= 1),
        "{close}"
    );
    assert_eq!(get(&close, "file.ino"), get(&open, "file.ino"), "{close}");

    let exec = sensor.wait_for("process.exec of the actor", WAIT, |e| {
        is_kind_pid(e, "process.exec", pid)
    });
    assert!(has_str(&exec, "exec.argv", "--open"), "{exec}");
    assert!(has_str(&exec, "exec.argv", "./secret.txt"), "{exec}");
    assert!(
        get_str(&exec, "exec.filename").is_some_and(|f| f.ends_with("nhi-actor")),
        "{exec}"
    );
    assert_eq!(get_u64(&exec, "process.ppid"), Some(our_pid()), "{exec}");

    let exit = sensor.wait_for("process.exit of the actor", WAIT, |e| {
        is_kind_pid(e, "process.exit", pid)
    });
    assert_eq!(get_u64(&exit, "exit.code"), Some(0), "{exit}");
    assert_eq!(get(&exit, "process.key"), get(&open, "process.key"));

    finish(sensor);
}

#[test]
fn symlink_and_dotdot_give_real_path() {
    let Some(_g) = setup("symlink_and_dotdot_give_real_path") else {
        return;
    };
    let d = TempDir::new("symlink");
    d.mkdir("real");
    d.mkdir("other");
    let target = d.write("real/target.txt", b"target contents\n");
    std::os::unix::fs::symlink("real/target.txt", d.join("link")).expect("symlink");
    let want = canon(&target);
    let via_dotdot = format!("{}/other/../real/target.txt", path_str(d.path()));
    let via_link = format!("{}/link", path_str(d.path()));

    let sensor = Sensor::watching(&[d.path()], &[]);
    let mut a = spawn_actor(&["--open", &via_dotdot, "--open", &via_link, "--exit", "0"]);
    let pid = a.pid();
    a.expect_step("start");
    let fd1 = step_fd(&a.expect_ok("open"));
    let fd2 = step_fd(&a.expect_ok("open"));
    a.expect_step("exit");
    a.wait();

    for (how, fd) in [("other/../real/target.txt", fd1), ("link", fd2)] {
        let ev = sensor.wait_for(&format!("file.open via {how} (fd {fd})"), WAIT, |e| {
            is_kind_pid(e, "file.open", pid) && get_u64(e, "file.fd") == Some(fd)
        });
        assert_eq!(
            get_str(&ev, "file.path"),
            Some(want.as_str()),
            "via {how}: {ev}"
        );
        assert_eq!(get_bool(&ev, "file.path_resolved"), Some(true), "{ev}");
        assert_eq!(get_bool(&ev, "file.path_truncated"), Some(false), "{ev}");
    }
    let stopped = finish(sensor);
    assert_eq!(
        stopped.count(|e| is_kind_pid(e, "file.open", pid)),
        2,
        "exactly the two watched opens: {}",
        stopped.dump(20)
    );
}

/// Open dedupe: one process opening the same watched file N times inside the window gives one
/// `file.open` for the first, and the other N-1 as one event's `file.repeats` (the next open
/// after the window, or a summary without `fd` once the window has passed); another
/// process's open of the same file meanwhile is still reported.
#[test]
fn repeated_opens_are_counted_in_the_kernel() {
    let Some(_g) = setup("repeated_opens_are_counted_in_the_kernel") else {
        return;
    };
    const N: u64 = 300;
    let d = TempDir::new("dedupe");
    let file = d.write("token", b"secret\n");
    let path = path_str(&file).to_string();
    let want = canon(&file);
    let sensor = Sensor::watching(&[d.path()], &["--open-dedupe-ms", "1000"]);
    let n = N.to_string();
    let mut a = spawn_actor(&[
        "--open-loop",
        &path,
        &n,
        "--sleep-ms",
        "2500",
        "--open",
        &path,
        "--exit",
        "0",
    ]);
    let pid_a = a.pid();
    a.expect_step("start");
    assert_eq!(get_u64(&a.expect_ok("open-loop"), "opened"), Some(N));
    // Another process, inside A's window: reported on its own.
    let mut b = spawn_actor(&["--open", &path, "--exit", "0"]);
    let pid_b = b.pid();
    b.expect_step("start");
    let fd_b = step_fd(&b.expect_ok("open"));
    b.expect_step("exit");
    b.wait();
    a.expect_step("sleep-ms");
    let fd_a = step_fd(&a.expect_ok("open"));
    a.expect_step("exit");
    a.wait();

    sensor.wait_for("B's open", WAIT, |e| {
        is_kind_pid(e, "file.open", pid_b) && get_u64(e, "file.fd") == Some(fd_b)
    });
    sensor.wait_for("A's open after the window", WAIT, |e| {
        is_kind_pid(e, "file.open", pid_a) && get_u64(e, "file.fd") == Some(fd_a)
    });
    let stopped = finish(sensor);
    let of_a: Vec<&Value> = stopped
        .events
        .iter()
        .filter(|e| is_kind_pid(e, "file.open", pid_a))
        .collect();
    for e in &of_a {
        assert_eq!(get_str(e, "file.path"), Some(want.as_str()), "{e}");
    }
    let reported = of_a
        .iter()
        .filter(|e| get_u64(e, "file.fd").is_some())
        .count();
    let with_repeats: Vec<u64> = of_a
        .iter()
        .filter_map(|e| get_u64(e, "file.repeats"))
        .collect();
    assert_eq!(
        reported,
        2,
        "A's first open and its open after the window are reported: {}",
        stopped.dump(20)
    );
    assert_eq!(
        with_repeats,
        vec![N - 1],
        "one event carries the N-1 counted opens: {}",
        stopped.dump(20)
    );
    assert_eq!(
        stopped.count(|e| is_kind_pid(e, "file.open", pid_b)),
        1,
        "B's open is reported: {}",
        stopped.dump(20)
    );
    let st = stopped.final_stats();
    assert!(
        get_u64(st, "stats.kernel.opens_deduped").is_some_and(|c| c >= N - 1),
        "the kernel counted the repeats: {st}"
    );
}

/// Creates `levels` nested directories named `name_of(i)` under `base` with *at() calls (the
/// full path exceeds PATH_MAX) and a file `file.txt` with `content` in the deepest one.
fn make_deep_tree(base: &Path, levels: usize, name_of: impl Fn(usize) -> String, content: &[u8]) {
    fn cstr(s: &[u8]) -> CString {
        CString::new(s).expect("no NUL")
    }
    let b = cstr(base.as_os_str().as_bytes());
    // SAFETY: valid C strings; every fd is checked and closed below.
    unsafe {
        let mut dfd = libc::open(
            b.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        assert!(
            dfd >= 0,
            "open {base:?}: {}",
            std::io::Error::last_os_error()
        );
        for i in 0..levels {
            let n = cstr(name_of(i).as_bytes());
            let rc = libc::mkdirat(dfd, n.as_ptr(), 0o755);
            assert_eq!(
                rc,
                0,
                "mkdirat level {i}: {}",
                std::io::Error::last_os_error()
            );
            let nfd = libc::openat(
                dfd,
                n.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            assert!(
                nfd >= 0,
                "openat level {i}: {}",
                std::io::Error::last_os_error()
            );
            libc::close(dfd);
            dfd = nfd;
        }
        let f = cstr(b"file.txt");
        let ffd = libc::openat(
            dfd,
            f.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o644,
        );
        assert!(
            ffd >= 0,
            "create file.txt: {}",
            std::io::Error::last_os_error()
        );
        let w = libc::write(ffd, content.as_ptr().cast(), content.len());
        assert_eq!(w, content.len() as isize, "write file.txt");
        libc::close(ffd);
        libc::close(dfd);
    }
}

#[test]
fn hostile_names() {
    let Some(_g) = setup("hostile_names") else {
        return;
    };
    let d = TempDir::new("hostile");
    d.mkdir("sub");

    // 1. A file name that is not UTF-8.
    let mut raw = d.path().as_os_str().as_bytes().to_vec();
    raw.extend_from_slice(b"/cred\xff\xfe.txt");
    let raw_path = OsString::from_vec(raw.clone());
    std::fs::write(&raw_path, b"0123456789").expect("write non-UTF-8 file");

    // 2. A name with a newline, quotes, a backslash and a tab, opened through "sub/..".
    let weird = "new\nline \"dq\" 'sq' \\bs\ttab.txt";
    std::fs::write(d.join(weird), b"weird").expect("write weird file");
    let weird_abs = format!("{}/{weird}", path_str(d.path()));
    let weird_via = format!("{}/sub/../{weird}", path_str(d.path()));

    // 3. A path longer than PATH_MAX: 25 levels of 200-byte names.
    const LEVELS: usize = 25;
    let name_of = |i: usize| format!("{i:02}{}", "x".repeat(198));
    make_deep_tree(d.path(), LEVELS, name_of, b"deep file contents\n");

    let sensor = Sensor::watching(&[d.path()], &[]);

    // Long path first, then check the sensor survived and still reports the others.
    let mut deep_args: Vec<OsString> = vec!["--chdir".into(), d.path().into()];
    for i in 0..LEVELS {
        deep_args.push("--chdir".into());
        deep_args.push(name_of(i).into());
    }
    deep_args.extend(["--open", "file.txt", "--read", "10", "--exit", "0"].map(OsString::from));
    let mut deep = spawn_actor(&deep_args);
    let deep_pid = deep.pid();
    deep.expect_step("start");
    for _ in 0..=LEVELS {
        deep.expect_ok("chdir");
    }
    let deep_fd = step_fd(&deep.expect_ok("open"));
    assert_eq!(get_u64(&deep.expect_ok("read"), "bytes"), Some(10));
    deep.expect_step("exit");
    deep.wait();

    let ev = sensor.wait_for("file.open of the >PATH_MAX path", WAIT, |e| {
        is_kind_pid(e, "file.open", deep_pid)
    });
    assert_eq!(
        get_bool(&ev, "file.path_truncated"),
        Some(true),
        "{}",
        compact(&ev, 600)
    );
    assert!(
        get_str(&ev, "file.path").is_some_and(|p| p.ends_with("/file.txt")),
        "truncated path must keep the file name: {}",
        compact(&ev, 600)
    );
    assert_eq!(get_u64(&ev, "file.fd"), Some(deep_fd));
    let close = sensor.wait_for("file.close of the >PATH_MAX path", WAIT, |e| {
        is_kind_pid(e, "file.close", deep_pid)
    });
    assert_eq!(
        get_u64(&close, "file.bytes_read"),
        Some(10),
        "{}",
        compact(&close, 600)
    );
    assert!(sensor.is_running(), "the sensor died on a >PATH_MAX path");

    let mut a = spawn_actor(&[
        OsStr::new("--open"),
        raw_path.as_os_str(),
        OsStr::new("--open"),
        OsStr::new(&weird_via),
        OsStr::new("--exit"),
        OsStr::new("0"),
    ]);
    let pid = a.pid();
    a.expect_step("start");
    let raw_fd = step_fd(&a.expect_ok("open"));
    let weird_fd = step_fd(&a.expect_ok("open"));
    a.expect_step("exit");
    a.wait();

    let ev = sensor.wait_for("file.open of the non-UTF-8 name", WAIT, |e| {
        is_kind_pid(e, "file.open", pid) && get_u64(e, "file.fd") == Some(raw_fd)
    });
    let b64 = get_str(&ev, "file.path_b64")
        .unwrap_or_else(|| panic!("non-UTF-8 path without path_b64: {ev}"));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap_or_else(|e| panic!("path_b64 is not standard base64 ({e}): {ev}"));
    assert_eq!(
        decoded, raw,
        "path_b64 must decode to the full absolute path: {ev}"
    );
    assert_eq!(
        get_str(&ev, "file.path"),
        Some(String::from_utf8_lossy(&raw).as_ref()),
        "file.path is the lossy UTF-8 form: {ev}"
    );

    let ev = sensor.wait_for("file.open of the newline/quote name", WAIT, |e| {
        is_kind_pid(e, "file.open", pid) && get_u64(e, "file.fd") == Some(weird_fd)
    });
    assert_eq!(get_str(&ev, "file.path"), Some(weird_abs.as_str()), "{ev}");
    assert!(get(&ev, "file.path_b64").is_null(), "{ev}");
    assert_eq!(get_bool(&ev, "file.path_truncated"), Some(false), "{ev}");

    assert!(sensor.is_running());
    let stopped = finish(sensor);
    assert!(
        get_u64(stopped.final_stats(), "stats.kernel.paths_truncated").is_some_and(|n| n >= 1),
        "paths_truncated should count the >PATH_MAX open: {}",
        stopped.final_stats()
    );
}

#[test]
fn unwatched_opens_stay_in_kernel() {
    let Some(_g) = setup("unwatched_opens_stay_in_kernel") else {
        return;
    };
    const N: u64 = 10_000;
    let d = TempDir::new("unwatched");
    let watched_dir = d.mkdir("watched");
    let unwatched = d.write("unwatched.txt", b"not watched");
    // Shares the string prefix ".../watched" but is outside the watched directory.
    let sibling = d.write("watched-sibling.txt", b"not watched either");
    let w = d.write("watched/w.txt", b"abcdef");
    let (unwatched_s, sibling_s, w_s) = (canon(&unwatched), canon(&sibling), canon(&w));

    let sensor = Sensor::watching(&[&watched_dir], &[]);
    let n_arg = N.to_string();
    let mut a = spawn_actor(&[
        "--open-loop",
        &unwatched_s,
        &n_arg,
        "--open",
        &sibling_s,
        "--close",
        "--open",
        &w_s,
        "--read",
        "3",
        "--exit",
        "0",
    ]);
    let pid = a.pid();
    a.expect_step("start");
    let l = a.next_step_timeout(Duration::from_secs(60));
    assert_eq!(get_u64(&l, "opened"), Some(N), "{l}");
    a.expect_ok("open");
    a.expect_ok("close");
    a.expect_ok("open");
    a.expect_ok("read");
    a.expect_step("exit");
    a.wait();

    // Proves the sensor was working during the loop.
    let ev = sensor.wait_for("file.open of the watched file after the loop", WAIT, |e| {
        is_kind_pid(e, "file.open", pid)
            && get_str(e, "file.path").is_some_and(|p| p.ends_with("/watched/w.txt"))
    });
    assert_eq!(get_str(&ev, "file.path"), Some(w_s.as_str()), "{ev}");
    sensor.wait_for("process.exit of the actor", WAIT, |e| {
        is_kind_pid(e, "process.exit", pid)
    });

    let stopped = finish(sensor);
    for p in [&unwatched_s, &sibling_s] {
        let n = stopped.count(|e| get_str(e, "file.path") == Some(p.as_str()));
        assert_eq!(n, 0, "events for unwatched {p}: {}", stopped.dump(20));
    }
    assert_eq!(
        stopped.count(|e| is_kind_pid(e, "file.open", pid)),
        1,
        "only the watched open is reported: {}",
        stopped.dump(20)
    );
    let st = stopped.final_stats();
    assert_eq!(get_u64(st, "stats.kernel_drops"), Some(0), "{st}");
    let matched = get_u64(st, "stats.kernel.opens_matched").expect("opens_matched");
    assert!(
        (1..100).contains(&matched),
        "opens_matched must count only watched opens (1 expected), got {matched}: {st}"
    );
    let seen = get_u64(st, "stats.kernel.opens_seen").expect("opens_seen");
    assert!(
        seen >= N,
        "opens_seen {seen} < {N} opens done by the actor: {st}"
    );
}

/// Accepts `n` connections on a listener in the background (bounded by 15 s); returns the
/// peers' addresses and keeps the streams open until the join.
fn accept_n(l: TcpListener, n: usize) -> JoinHandle<Vec<(TcpStream, SocketAddr)>> {
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            match l.accept() {
                Ok(c) => out.push(c),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        out
    })
}

#[test]
fn tcp_udp_connects_attributed() {
    let Some(_g) = setup("tcp_udp_connects_attributed") else {
        return;
    };
    let d = TempDir::new("net");
    let l4 = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let p4 = l4.local_addr().expect("addr").port();
    let l6 = TcpListener::bind("[::1]:0").expect("bind [::1] (is IPv6 loopback up?)");
    let p6 = l6.local_addr().expect("addr").port();
    let closed = {
        let t = TcpListener::bind("127.0.0.1:0").expect("bind");
        t.local_addr().expect("addr").port()
    };
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let pu = udp.local_addr().expect("addr").port();

    let sensor = Sensor::watching(&[d.path()], &[]);
    // Two connections reach the v4 listener: the plain one and the v4-mapped one.
    let acc4 = accept_n(l4, 2);
    let acc6 = accept_n(l6, 1);
    let mut a = spawn_actor(&[
        "--setgroups-clear".to_string(),
        "--setgid".into(),
        "65534".into(),
        "--setuid".into(),
        "65534".into(),
        "--connect-tcp".into(),
        format!("127.0.0.1:{p4}"),
        "--connect-tcp".into(),
        format!("[::1]:{p6}"),
        "--connect-tcp".into(),
        format!("127.0.0.1:{closed}"),
        "--udp-send".into(),
        format!("127.0.0.1:{pu}"),
        "--connect-tcp-blocking".into(),
        format!("[::ffff:127.0.0.1]:{p4}"),
        "--exit".into(),
        "0".into(),
    ]);
    let pid = a.pid();
    a.expect_step("start");
    a.expect_ok("setgroups-clear");
    a.expect_ok("setgid");
    a.expect_ok("setuid");
    let c4 = a.expect_ok("connect");
    let lp4 = get_u64(&c4, "local_port").expect("local port");
    let c6 = a.expect_ok("connect");
    let lp6 = get_u64(&c6, "local_port").expect("local port");
    let cr = a.expect_step("connect");
    assert_eq!(
        get_u64(&cr, "errno"),
        Some(libc::ECONNREFUSED as u64),
        "{cr}"
    );
    let us = a.expect_ok("udp-send");
    assert_eq!(get_u64(&us, "datagrams"), Some(2));
    let cm = a.expect_ok("connect-blocking");
    let lpm = get_u64(&cm, "local_port").expect("local port");
    a.expect_step("exit");
    assert_eq!(a.wait().code(), Some(0));
    let accepted4 = acc4.join().expect("accept thread");
    let accepted6 = acc6.join().expect("accept thread");
    assert_eq!(accepted4.len(), 2, "v4 listener accepted {accepted4:?}");
    assert_eq!(accepted6.len(), 1, "v6 listener accepted {accepted6:?}");

    let conn = |what: &str, port: u16, result: &str| {
        sensor.wait_for(
            &format!("network.connect {what} to port {port} with result {result}"),
            WAIT,
            |e| {
                is_kind_pid(e, "network.connect", pid)
                    && get_u64(e, "network.dst.port") == Some(u64::from(port))
                    && get_str(e, "network.result") == Some(result)
                    // The v4-mapped connect below goes to the same port.
                    && get_bool(e, "network.v4_mapped") != Some(true)
            },
        )
    };

    let ev = conn("v4", p4, "established");
    assert_process_basics(&ev, pid);
    assert_eq!(get_u64(&ev, "process.uid"), Some(NOBODY), "{ev}");
    assert_eq!(get_u64(&ev, "process.euid"), Some(NOBODY), "{ev}");
    assert_eq!(get_str(&ev, "network.protocol"), Some("tcp"), "{ev}");
    assert_eq!(get_str(&ev, "network.family"), Some("ipv4"), "{ev}");
    assert_eq!(get_str(&ev, "network.direction"), Some("outbound"), "{ev}");
    assert_eq!(get_str(&ev, "network.dst.ip"), Some("127.0.0.1"), "{ev}");
    assert_eq!(get_str(&ev, "network.src.ip"), Some("127.0.0.1"), "{ev}");
    let sp = get_u64(&ev, "network.src.port").unwrap_or(0);
    assert_ne!(sp, 0, "src.port must be known once established: {ev}");
    assert_eq!(sp, lp4, "src.port is the actor's local port: {ev}");
    assert_eq!(get_bool(&ev, "network.v4_mapped"), Some(false), "{ev}");
    assert!(get(&ev, "network.error").is_null(), "{ev}");
    assert!(get(&ev, "network.cookie").is_u64(), "{ev}");

    let ev = conn("v6", p6, "established");
    assert_eq!(get_u64(&ev, "process.uid"), Some(NOBODY), "{ev}");
    assert_eq!(get_str(&ev, "network.family"), Some("ipv6"), "{ev}");
    assert_eq!(get_str(&ev, "network.protocol"), Some("tcp"), "{ev}");
    assert_eq!(get_str(&ev, "network.dst.ip"), Some("::1"), "{ev}");
    assert_eq!(get_str(&ev, "network.src.ip"), Some("::1"), "{ev}");
    assert_eq!(get_u64(&ev, "network.src.port"), Some(lp6), "{ev}");

    let ev = conn("to a closed port", closed, "refused");
    assert_eq!(get_u64(&ev, "process.uid"), Some(NOBODY), "{ev}");
    assert_eq!(get_str(&ev, "network.family"), Some("ipv4"), "{ev}");
    assert_eq!(
        get_str(&ev, "network.error.name"),
        Some("ECONNREFUSED"),
        "{ev}"
    );
    assert_eq!(
        get_u64(&ev, "network.error.errno"),
        Some(libc::ECONNREFUSED as u64),
        "{ev}"
    );

    let ev = sensor.wait_for("network.connect v4-mapped (blocking connect)", WAIT, |e| {
        is_kind_pid(e, "network.connect", pid)
            && get_u64(e, "network.dst.port") == Some(u64::from(p4))
            && get_bool(e, "network.v4_mapped") == Some(true)
            && get_str(e, "network.result") == Some("established")
    });
    assert_eq!(get_u64(&ev, "network.src.port"), Some(lpm), "{ev}");

    let ev = sensor.wait_for("network.udp_send to the UDP socket", WAIT, |e| {
        is_kind_pid(e, "network.udp_send", pid)
            && get_u64(e, "network.dst.port") == Some(u64::from(pu))
    });
    assert_eq!(get_u64(&ev, "process.uid"), Some(NOBODY), "{ev}");
    assert_eq!(get_str(&ev, "network.protocol"), Some("udp"), "{ev}");
    assert_eq!(get_str(&ev, "network.family"), Some("ipv4"), "{ev}");
    assert_eq!(get_str(&ev, "network.dst.ip"), Some("127.0.0.1"), "{ev}");
    assert_eq!(get_str(&ev, "network.direction"), Some("outbound"), "{ev}");
    assert_eq!(get_str(&ev, "network.result"), Some("sent"), "{ev}");

    // The test process's own accept of the actor's v4 connection.
    let ev = sensor.wait_for("network.accept by the test process (v4)", WAIT, |e| {
        is_kind_pid(e, "network.accept", std::process::id())
            && get_u64(e, "network.src.port") == Some(lp4)
    });
    assert_eq!(get_str(&ev, "network.protocol"), Some("tcp"), "{ev}");
    assert_eq!(get_str(&ev, "network.family"), Some("ipv4"), "{ev}");
    assert_eq!(get_str(&ev, "network.direction"), Some("inbound"), "{ev}");
    assert_eq!(get_str(&ev, "network.result"), Some("accepted"), "{ev}");
    assert_eq!(get_str(&ev, "network.src.ip"), Some("127.0.0.1"), "{ev}");
    assert_eq!(
        get_u64(&ev, "network.dst.port"),
        Some(u64::from(p4)),
        "{ev}"
    );
    assert_eq!(get_str(&ev, "network.dst.ip"), Some("127.0.0.1"), "{ev}");

    sensor.wait_for("process.exit of the actor", WAIT, |e| {
        is_kind_pid(e, "process.exit", pid)
    });
    let stopped = finish(sensor);
    let udp_events = stopped.count(|e| {
        is_kind_pid(e, "network.udp_send", pid)
            && get_u64(e, "network.dst.port") == Some(u64::from(pu))
    });
    assert_eq!(
        udp_events,
        1,
        "two datagrams on one flow must give ONE udp_send event: {}",
        stopped.dump(30)
    );
    let st = stopped.final_stats();
    assert!(
        get_u64(st, "stats.kernel.udp_deduped").is_some_and(|n| n >= 1),
        "the second datagram should count as deduplicated: {st}"
    );
    drop(udp);
}

#[test]
fn setuid_emits_cred_change() {
    let Some(_g) = setup("setuid_emits_cred_change") else {
        return;
    };
    let d = TempDir::new("cred");
    let sensor = Sensor::watching(&[d.path()], &[]);
    let mut a = spawn_actor(&["--setuid", "65534", "--exit", "0"]);
    let pid = a.pid();
    a.expect_step("start");
    a.expect_ok("setuid");
    a.expect_step("exit");
    a.wait();

    let ev = sensor.wait_for("process.cred_change (setuid) of the actor", WAIT, |e| {
        is_kind_pid(e, "process.cred_change", pid)
    });
    assert_process_basics(&ev, pid);
    assert_eq!(get_str(&ev, "cred_change.syscall"), Some("setuid"), "{ev}");
    for (f, old, new) in [
        ("uid", 0, NOBODY),
        ("euid", 0, NOBODY),
        ("suid", 0, NOBODY),
        ("fsuid", 0, NOBODY),
    ] {
        assert_eq!(
            get_u64(&ev, &format!("cred_change.old.{f}")),
            Some(old),
            "old.{f}: {ev}"
        );
        assert_eq!(
            get_u64(&ev, &format!("cred_change.new.{f}")),
            Some(new),
            "new.{f}: {ev}"
        );
    }
    // SAFETY: getgid has no preconditions.
    let gid = u64::from(unsafe { libc::getgid() });
    assert_eq!(get_u64(&ev, "cred_change.old.gid"), Some(gid), "{ev}");
    assert_eq!(get_u64(&ev, "cred_change.new.gid"), Some(gid), "{ev}");
    assert!(
        get_str(&ev, "cred_change.old.cap_effective").is_some_and(|c| c.starts_with("0x")),
        "{ev}"
    );
    assert_eq!(
        get_str(&ev, "cred_change.new.cap_effective"),
        Some("0x0000000000000000"),
        "setuid away from root clears the effective capabilities: {ev}"
    );
    finish(sensor);
}

#[test]
fn sensor_started_after_child_knows_it() {
    let Some(_g) = setup("sensor_started_after_child_knows_it") else {
        return;
    };
    let d = TempDir::new("prestart");
    let watched = d.write("watched.txt", b"hello world");
    let watched_s = canon(&watched);

    let mut a = spawn_actor(&[
        "--wait-stdin",
        "--open",
        &watched_s,
        "--read",
        "5",
        "--exit",
        "0",
    ]);
    let pid = a.pid();
    a.expect_step("start"); // it has exec'd and is now blocked on stdin

    let sensor = Sensor::watching(&[d.path()], &[]);
    a.send_line("go");
    a.expect_ok("wait-stdin");
    a.expect_ok("open");
    a.expect_ok("read");
    a.expect_step("exit");
    a.wait();

    let ev = sensor.wait_for(
        "file.open by the actor started before the sensor",
        WAIT,
        |e| is_kind_pid(e, "file.open", pid),
    );
    assert_process_basics(&ev, pid);
    assert_eq!(get_str(&ev, "file.path"), Some(watched_s.as_str()), "{ev}");
    let exe = get_str(&ev, "process.exe").unwrap_or("");
    assert!(exe.ends_with("/nhi-actor"), "process.exe {exe:?}: {ev}");
    assert_eq!(get_u64(&ev, "process.ppid"), Some(our_pid()), "{ev}");
    assert_eq!(
        get_u64(&ev, "process.ancestry.0.pid"),
        Some(our_pid()),
        "{ev}"
    );
    assert_eq!(
        get(&ev, "process.ancestry.0.key"),
        get(&ev, "process.parent_key"),
        "{ev}"
    );
    if let Some(argv) = get(&ev, "process.argv").as_array() {
        assert!(
            argv.iter().any(|a| a.as_str() == Some("--wait-stdin")),
            "argv from /proc: {ev}"
        );
    }
    let close = sensor.wait_for("file.close by the pre-existing actor", WAIT, |e| {
        is_kind_pid(e, "file.close", pid)
    });
    assert_eq!(get_u64(&close, "file.bytes_read"), Some(5), "{close}");
    finish(sensor);
}

#[test]
fn exit_event_has_code() {
    let Some(_g) = setup("exit_event_has_code") else {
        return;
    };
    let d = TempDir::new("exit");
    let sensor = Sensor::watching(&[d.path()], &[]);
    let mut a = spawn_actor(&["--exit", "7"]);
    let pid = a.pid();
    a.expect_step("start");
    a.expect_step("exit");
    assert_eq!(a.wait().code(), Some(7));
    let ev = sensor.wait_for("process.exit with code 7", WAIT, |e| {
        is_kind_pid(e, "process.exit", pid)
    });
    assert_process_basics(&ev, pid);
    assert_eq!(get_u64(&ev, "exit.code"), Some(7), "{ev}");
    assert_eq!(get_u64(&ev, "exit.signal"), Some(0), "{ev}");
    assert_eq!(get_u64(&ev, "exit.status"), Some(7 << 8), "{ev}");
    let stopped = finish(sensor);
    assert_eq!(
        stopped.count(|e| is_kind_pid(e, "process.exit", pid)),
        1,
        "{}",
        stopped.dump(20)
    );
}

#[test]
fn non_root_is_refused_with_clear_message() {
    let Some(_g) = setup("non_root_is_refused_with_clear_message") else {
        return;
    };
    // A copy in a world-readable place, so uid 65534 can exec it wherever the checkout is.
    let d = TempDir::new("nonroot");
    let bin: PathBuf = d.join("nhi-sensor");
    std::fs::copy(sensor_bin(), &bin).expect("copy sensor binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut cmd = Command::new(&bin);
    cmd.args([
        "run",
        "--format",
        "json",
        "--watch",
        &nhi_sensor_tests::watch_arg(d.path()),
    ])
    .current_dir(d.path())
    .env("HOME", d.path())
    .uid(65534)
    .gid(65534);
    let out = run_with_timeout(cmd, Duration::from_secs(20));
    assert!(
        matches!(out.status.code(), Some(c) if c != 0),
        "the sensor must exit non-zero without privileges, got {}; stderr:\n{}",
        out.status,
        out.stderr
    );
    assert!(
        out.stderr.contains("CAP_BPF") || out.stderr.contains("root"),
        "stderr must name the missing privilege (CAP_BPF / root):\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains(nhi_sensor_tests::READY_MARKER),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.lines().all(|l| !l.contains("\"kind\":\"file.")),
        "no events without privileges:\n{}",
        out.stdout
    );
}

#[test]
fn check_reports_hooks() {
    let Some(_g) = setup("check_reports_hooks") else {
        return;
    };
    let mut cmd = Command::new(sensor_bin());
    cmd.arg("check");
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(0),
        "nhi-sensor check failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    for word in ["tracepoint", "chosen"] {
        assert!(
            out.stdout.contains(word),
            "`nhi-sensor check` stdout should mention {word:?}:\n{}",
            out.stdout
        );
    }
}

/// Sanity check of the helpers used above (runs without root).
#[test]
fn helpers_work() {
    assert_eq!(dev_string(0xfe00), "254:0");
    assert_eq!(dev_string((8 << 8) | 1), "8:1");
    let v: Value = serde_json::json!({"a": {"b": [1, {"c": "x"}]}, "k": "file.open"});
    assert_eq!(get_u64(&v, "a.b.0"), Some(1));
    assert_eq!(get_str(&v, "a.b.1.c"), Some("x"));
    assert!(get(&v, "a.nope.c").is_null());
    assert!(is_kind(&serde_json::json!({"kind": "x"}), "x"));
}

#[test]
fn failed_open_of_watched_file_is_reported() {
    let Some(_g) = setup("failed_open_of_watched_file_is_reported") else {
        return;
    };
    let d = TempDir::new("denied");
    d.mkdir("vault");
    let secret = d.write("vault/token", b"s3cr3t-token-value");
    // Root-only: the unprivileged actor is refused.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let secret_path = canon(&secret);
    let missing_path = format!("{}/vault/absent", path_str(d.path()));

    let sensor = Sensor::watching(&[d.path()], &[]);
    let mut a = spawn_actor(&[
        "--setgroups-clear",
        "--setgid",
        "65534",
        "--setuid",
        "65534",
        "--chdir",
        path_str(d.path()),
        "--open",
        "vault/../vault/token",
        "--open",
        missing_path.as_str(),
        "--exit",
        "0",
    ]);
    let pid = a.pid();
    a.expect_step("start");
    for step in ["setgroups-clear", "setgid", "setuid", "chdir"] {
        a.expect_ok(step);
    }
    let denied = a.next_step();
    assert_eq!(
        get_u64(&denied, "errno"),
        Some(libc::EACCES as u64),
        "{denied}"
    );
    let absent = a.next_step();
    assert_eq!(
        get_u64(&absent, "errno"),
        Some(libc::ENOENT as u64),
        "{absent}"
    );
    a.expect_step("exit");
    a.wait();

    let ev = sensor.wait_for("file.open (EACCES) of the root-only token", WAIT, |e| {
        is_kind_pid(e, "file.open", pid) && get_u64(e, "file.error.errno") == Some(13)
    });
    assert_process_basics(&ev, pid);
    assert_eq!(get_u64(&ev, "process.uid"), Some(NOBODY), "{ev}");
    assert_eq!(get_str(&ev, "file.error.name"), Some("EACCES"), "{ev}");
    assert!(
        get(&ev, "file.fd").is_null(),
        "a failed open has no fd: {ev}"
    );
    assert_eq!(get_bool(&ev, "file.path_resolved"), Some(false), "{ev}");
    assert_eq!(
        get_str(&ev, "file.path"),
        Some(secret_path.as_str()),
        "relative path joined to the cwd (resolved in the kernel) and normalized: {ev}"
    );
    assert_eq!(
        get_str(&ev, "file.path_requested"),
        Some("vault/../vault/token"),
        "{ev}"
    );
    assert!(has_str(&ev, "file.matched", "prefix"), "{ev}");

    let ev = sensor.wait_for("file.open (ENOENT) of an absent watched path", WAIT, |e| {
        is_kind_pid(e, "file.open", pid) && get_u64(e, "file.error.errno") == Some(2)
    });
    assert_eq!(
        get_str(&ev, "file.path"),
        Some(missing_path.as_str()),
        "{ev}"
    );
    assert_eq!(get_str(&ev, "file.error.name"), Some("ENOENT"), "{ev}");
    finish(sensor);
}

#[test]
fn unix_socket_connects_to_watched_sockets() {
    let Some(_g) = setup("unix_socket_connects_to_watched_sockets") else {
        return;
    };
    let d = TempDir::new("unixsock");
    let spire = d.join("spire-agent.sock");
    let watched = d.join("app.sock");
    let unwatched = d.join("other.sock");
    let mut listeners = Vec::new();
    for p in [&spire, &watched, &unwatched] {
        let l = std::os::unix::net::UnixListener::bind(p).expect("bind unix listener");
        // The actor connects as nobody: connecting needs write permission on the socket.
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        listeners.push(l);
    }
    let missing = d.join("gone.sock");

    let sensor = Sensor::start(&[
        "run",
        "--format",
        "json",
        "--watch-socket",
        path_str(&watched),
        "--watch-socket",
        path_str(&missing),
        "--spiffe-socket",
        path_str(&spire),
    ]);
    let mut a = spawn_actor(&[
        "--setgroups-clear",
        "--setgid",
        "65534",
        "--setuid",
        "65534",
        "--connect-unix",
        path_str(&spire),
        "--connect-unix",
        path_str(&unwatched),
        "--connect-unix",
        path_str(&watched),
        "--connect-unix",
        path_str(&missing),
        "--exit",
        "0",
    ]);
    let pid = a.pid();
    a.expect_step("start");
    for step in ["setgroups-clear", "setgid", "setuid"] {
        a.expect_ok(step);
    }
    a.expect_ok("connect-unix");
    a.expect_ok("connect-unix");
    a.expect_ok("connect-unix");
    let gone = a.next_step();
    assert_eq!(get_u64(&gone, "errno"), Some(libc::ENOENT as u64), "{gone}");
    a.expect_step("exit");
    a.wait();

    let ev = sensor.wait_for("network.unix_connect to the SPIFFE socket", WAIT, |e| {
        is_kind_pid(e, "network.unix_connect", pid)
            && get_str(e, "unix.path") == Some(path_str(&spire))
    });
    assert_process_basics(&ev, pid);
    assert_eq!(get_u64(&ev, "process.uid"), Some(NOBODY), "{ev}");
    assert_eq!(get_str(&ev, "unix.result"), Some("connected"), "{ev}");
    assert_eq!(
        get_str(&ev, "unix.endpoint.kind"),
        Some("spiffe_workload_api"),
        "{ev}"
    );
    let ev = sensor.wait_for("network.unix_connect to the watched socket", WAIT, |e| {
        is_kind_pid(e, "network.unix_connect", pid)
            && get_str(e, "unix.path") == Some(path_str(&watched))
    });
    assert_eq!(
        get_str(&ev, "unix.endpoint.kind"),
        Some("watched_socket"),
        "{ev}"
    );
    let ev = sensor.wait_for("network.unix_connect to the missing socket", WAIT, |e| {
        is_kind_pid(e, "network.unix_connect", pid)
            && get_str(e, "unix.path") == Some(path_str(&missing))
    });
    assert_eq!(get_str(&ev, "unix.result"), Some("failed"), "{ev}");
    assert_eq!(get_str(&ev, "unix.error.name"), Some("ENOENT"), "{ev}");

    let stopped = finish(sensor);
    let unix_events: Vec<_> = stopped
        .events
        .iter()
        .filter(|e| is_kind_pid(e, "network.unix_connect", pid))
        .collect();
    assert_eq!(
        unix_events.len(),
        3,
        "exactly the three watched sockets, not {}: {unix_events:?}",
        path_str(&unwatched)
    );
    drop(listeners);
}
