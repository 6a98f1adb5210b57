//! Tests of the `nhi-actor` workload itself (no sensor, no root needed).

use std::ffi::OsString;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::ffi::OsStringExt;

use nhi_sensor_tests::{TempDir, actor_command, get, get_bool, get_str, get_u64, spawn_actor};

fn init() {
    nhi_sensor_tests::init_actor_bin!();
}

#[test]
fn start_open_read_close_and_exit_code() {
    init();
    let d = TempDir::new("actor");
    let f = d.write("data.bin", &[7u8; 100]);
    let missing = d.join("missing.txt");
    let mut a = spawn_actor(&[
        OsString::from("--open"),
        f.clone().into(),
        "--read".into(),
        "60".into(),
        "--read".into(),
        "60".into(),
        "--close".into(),
        "--close".into(),
        "--open".into(),
        missing.into(),
        "--open-loop".into(),
        f.clone().into(),
        "50".into(),
        "--sleep-ms".into(),
        "1".into(),
        "--exit".into(),
        "3".into(),
    ]);

    let s = a.expect_step("start");
    assert_eq!(get_u64(&s, "pid"), Some(u64::from(a.pid())));
    assert_eq!(get_u64(&s, "ppid"), Some(u64::from(std::process::id())));
    // SAFETY: getuid has no preconditions.
    assert_eq!(
        get_u64(&s, "uid"),
        Some(u64::from(unsafe { libc::getuid() }))
    );

    let o = a.expect_ok("open");
    assert_eq!(get_str(&o, "path"), f.to_str());
    let fd = get_u64(&o, "fd").expect("fd");
    assert!(fd >= 3, "{o}");

    let r = a.expect_ok("read");
    assert_eq!(get_u64(&r, "bytes"), Some(60));
    assert_eq!(get_bool(&r, "eof"), Some(false));
    assert_eq!(get_u64(&r, "fd"), Some(fd));
    let r = a.expect_ok("read");
    assert_eq!(get_u64(&r, "bytes"), Some(40), "short read only at EOF");
    assert_eq!(get_bool(&r, "eof"), Some(true));

    let c = a.expect_ok("close");
    assert_eq!(get_u64(&c, "fd"), Some(fd));
    let c = a.expect_step("close");
    assert_eq!(get_u64(&c, "errno"), Some(libc::EBADF as u64), "{c}");

    let m = a.expect_step("open");
    assert_eq!(get_bool(&m, "ok"), Some(false));
    assert_eq!(get_u64(&m, "errno"), Some(libc::ENOENT as u64), "{m}");
    assert!(get_str(&m, "error").is_some());

    let l = a.expect_ok("open-loop");
    assert_eq!(get_u64(&l, "opened"), Some(50));

    a.expect_ok("sleep-ms");
    let e = a.expect_step("exit");
    assert_eq!(get_u64(&e, "code"), Some(3));
    assert_eq!(a.wait().code(), Some(3));
}

#[test]
fn relative_chdir_steps_and_non_utf8_names() {
    init();
    let d = TempDir::new("actor");
    d.mkdir("a/b");
    let name = OsString::from_vec(b"cred\xff\xfe.txt".to_vec());
    std::fs::write(d.join("a/b").join(&name), b"hello").expect("write");
    let mut a = spawn_actor(&[
        OsString::from("--chdir"),
        d.path().into(),
        "--chdir".into(),
        "a".into(),
        "--chdir".into(),
        "b".into(),
        "--open".into(),
        name.clone(),
        "--read".into(),
        "5".into(),
        "--chdir".into(),
        "does-not-exist".into(),
    ]);
    a.expect_step("start");
    a.expect_ok("chdir");
    a.expect_ok("chdir");
    a.expect_ok("chdir");
    let o = a.expect_ok("open");
    assert_eq!(get_str(&o, "path"), Some("cred\u{fffd}\u{fffd}.txt"));
    let r = a.expect_ok("read");
    assert_eq!(get_u64(&r, "bytes"), Some(5));
    let c = a.expect_step("chdir");
    assert_eq!(get_u64(&c, "errno"), Some(libc::ENOENT as u64), "{c}");
    a.expect_step("done");
    assert!(a.rest().is_empty());
    assert_eq!(a.wait().code(), Some(0));
}

#[test]
fn network_steps() {
    init();
    let l4 = TcpListener::bind("127.0.0.1:0").expect("bind v4");
    let p4 = l4.local_addr().expect("addr").port();
    let closed = {
        let t = TcpListener::bind("127.0.0.1:0").expect("bind");
        t.local_addr().expect("addr").port()
    };
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let pu = udp.local_addr().expect("addr").port();
    udp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");

    let mut a = spawn_actor(&[
        "--connect-tcp".to_string(),
        format!("127.0.0.1:{p4}"),
        "--connect-tcp".into(),
        format!("127.0.0.1:{closed}"),
        "--udp-send".into(),
        format!("127.0.0.1:{pu}"),
        "--wait-stdin".into(),
    ]);
    a.expect_step("start");
    let c = a.expect_ok("connect");
    assert_eq!(get_str(&c, "local_ip"), Some("127.0.0.1"));
    let local_port = get_u64(&c, "local_port").expect("local_port");
    let (_s, peer) = l4.accept().expect("accept");
    assert_eq!(u64::from(peer.port()), local_port);

    let r = a.expect_step("connect");
    assert_eq!(get_bool(&r, "ok"), Some(false));
    assert_eq!(get_u64(&r, "errno"), Some(libc::ECONNREFUSED as u64), "{r}");

    let u = a.expect_ok("udp-send");
    assert_eq!(get_u64(&u, "datagrams"), Some(2));
    let mut buf = [0u8; 16];
    for _ in 0..2 {
        let (n, from) = udp.recv_from(&mut buf).expect("datagram");
        assert_eq!(&buf[..n], b"nhi!");
        assert_eq!(Some(u64::from(from.port())), get_u64(&u, "local_port"));
    }

    a.send_line("go on");
    let w = a.expect_ok("wait-stdin");
    assert_eq!(get_str(&w, "line"), Some("go on"));
    assert_eq!(get_bool(&w, "eof"), Some(false));
    a.expect_step("done");
    assert!(a.wait().success());
}

#[test]
fn ipv6_and_v4_mapped_addresses_parse() {
    init();
    // Only the parsing is checked here (connecting to a port nobody listens on); kernel.rs
    // connects for real.
    let mut a = spawn_actor(&[
        "--connect-tcp",
        "[::1]:1",
        "--connect-tcp",
        "[::ffff:127.0.0.1]:1",
        "--wait-stdin",
    ]);
    a.expect_step("start");
    for want in ["[::1]:1", "[::ffff:127.0.0.1]:1"] {
        let c = a.expect_step("connect");
        assert_eq!(get_str(&c, "addr"), Some(want));
        assert_eq!(get_bool(&c, "ok"), Some(false), "{c}");
        assert!(get(&c, "errno").is_u64(), "{c}");
    }
    a.close_stdin();
    let w = a.expect_ok("wait-stdin");
    assert_eq!(get_bool(&w, "eof"), Some(true));
    a.expect_step("done");
    assert!(a.wait().success());
}

#[test]
fn privilege_steps_report_result() {
    init();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // As root, dropping to 65534 works; otherwise asking for root must fail with EPERM.
    let target = if root { "65534" } else { "0" };
    let mut a = spawn_actor(&["--setgroups-clear", "--setgid", target, "--setuid", target]);
    a.expect_step("start");
    for name in ["setgroups-clear", "setgid", "setuid"] {
        let v = a.expect_step(name);
        if root {
            assert_eq!(get_bool(&v, "ok"), Some(true), "{v}");
        } else {
            assert_eq!(get_bool(&v, "ok"), Some(false), "{v}");
            assert_eq!(get_u64(&v, "errno"), Some(libc::EPERM as u64), "{v}");
        }
    }
    a.expect_step("done");
    assert!(a.wait().success());
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    init();
    for args in [
        &["--bogus"][..],
        &["--read"][..],
        &["--read", "x"][..],
        &["--connect-tcp", "localhost"][..],
        &["--open", "/x", "--nope"][..],
    ] {
        let out = actor_command(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run nhi-actor");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            out.stdout.is_empty(),
            "nothing runs on a bad command line: {args:?}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("usage: nhi-actor"), "{args:?}: {err}");
    }
}
