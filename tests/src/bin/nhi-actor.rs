//! `nhi-actor`: a scripted test workload for the nhi-sensor integration tests.
//!
//! It performs the real actions given as argv steps, in order, and prints one JSON object per
//! step on stdout (flushed after each line), e.g. `{"step":"open","path":"/x","fd":3}`.
//! The first line is always `{"step":"start","pid":..,"ppid":..,"uid":..}`.
//!
//! A step that fails reports `"errno"` and `"error"` in its line and the actor goes on with the
//! next step. The whole command line is parsed before anything runs: an unknown flag, a missing
//! or malformed argument makes it print a usage message on stderr and exit 2 (before the start
//! line).

use std::ffi::{CString, OsString};
use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

const USAGE: &str = "\
usage: nhi-actor [STEP]...
steps (run in order, one JSON line printed on stdout per step):
  --setgroups-clear        setgroups(0, NULL)
  --setgid N               setgid(N)
  --setuid N               setuid(N)
  --chdir DIR              chdir(DIR) (repeat it with relative components to go deeper than PATH_MAX)
  --open PATH              open(PATH, O_RDONLY); the fd becomes the 'last opened fd'
  --open-nonblock PATH     open(PATH, O_RDONLY|O_NONBLOCK) (a FIFO without writer does not block)
  --join-cgroup DIR        write our pid to DIR/cgroup.procs (move into that cgroup v2 group)
  --unshare-mount          unshare(CLONE_NEWNS) and make every mount private (own mount namespace)
  --mount-tmpfs DIR        mount a fresh tmpfs on DIR
  --mkdir-p DIR            create DIR and its parents
  --bind-mount SRC DST     bind-mount SRC on DST
  --open-loop PATH N       open(PATH, O_RDONLY) + close, N times
  --read N                 read exactly N bytes from the last opened fd (short only at EOF)
  --close                  close the last opened fd
  --connect-tcp HOST:PORT  TCP connect with a 2 s timeout (std's connect_timeout: a non-blocking
                           connect(2) + poll); the stream stays open until exit
  --connect-tcp-blocking HOST:PORT
                           plain blocking connect(2) (no timeout); the stream stays open until exit
  --udp-send HOST:PORT     unconnected UDP socket, send_to 4 bytes twice
  --dns-query HOST:PORT NAME
                           send a DNS query (type A) for NAME over UDP and wait up to 2 s for
                           the response; reports its size and rcode
  --connect-unix PATH      connect a Unix stream socket to PATH (kept open until exit)
  --sleep-ms N             sleep N milliseconds
  --wait-stdin             block until a line (or EOF) arrives on stdin
  --exit CODE              _exit(CODE) at once, leaving fds open
";

#[derive(Debug)]
enum Step {
    ConnectUnix(OsString),
    SetgroupsClear,
    Setgid(u32),
    Setuid(u32),
    Chdir(OsString),
    Open(OsString),
    OpenNonblock(OsString),
    JoinCgroup(OsString),
    UnshareMount,
    MountTmpfs(OsString),
    MkdirP(OsString),
    BindMount(OsString, OsString),
    OpenLoop(OsString, u64),
    Read(usize),
    Close,
    ConnectTcp(SocketAddr),
    ConnectTcpBlocking(SocketAddr),
    UdpSend(SocketAddr),
    DnsQuery(SocketAddr, String),
    SleepMs(u64),
    WaitStdin,
    Exit(i32),
}

fn parse_num<T: std::str::FromStr>(flag: &str, v: Option<OsString>) -> anyhow::Result<T> {
    let v = v.ok_or_else(|| anyhow!("{flag} needs an argument"))?;
    let s = v
        .to_str()
        .ok_or_else(|| anyhow!("{flag}: argument is not UTF-8"))?;
    s.parse::<T>()
        .map_err(|_| anyhow!("{flag}: bad number {s:?}"))
}

fn parse_addr(flag: &str, v: Option<OsString>) -> anyhow::Result<SocketAddr> {
    let v = v.ok_or_else(|| anyhow!("{flag} needs HOST:PORT"))?;
    let s = v
        .to_str()
        .ok_or_else(|| anyhow!("{flag}: argument is not UTF-8"))?;
    s.parse::<SocketAddr>()
        .with_context(|| format!("{flag}: bad socket address {s:?} (use 1.2.3.4:P or [::1]:P)"))
}

fn parse_path(flag: &str, v: Option<OsString>) -> anyhow::Result<OsString> {
    v.ok_or_else(|| anyhow!("{flag} needs a path"))
}

fn parse(args: Vec<OsString>) -> anyhow::Result<Vec<Step>> {
    let mut it = args.into_iter();
    let mut steps = Vec::new();
    while let Some(flag) = it.next() {
        let f = flag.to_string_lossy().into_owned();
        let step = match f.as_str() {
            "--setgroups-clear" => Step::SetgroupsClear,
            "--setgid" => Step::Setgid(parse_num(&f, it.next())?),
            "--setuid" => Step::Setuid(parse_num(&f, it.next())?),
            "--chdir" => Step::Chdir(parse_path(&f, it.next())?),
            "--open" => Step::Open(parse_path(&f, it.next())?),
            "--open-nonblock" => Step::OpenNonblock(parse_path(&f, it.next())?),
            "--join-cgroup" => Step::JoinCgroup(parse_path(&f, it.next())?),
            "--unshare-mount" => Step::UnshareMount,
            "--mount-tmpfs" => Step::MountTmpfs(parse_path(&f, it.next())?),
            "--mkdir-p" => Step::MkdirP(parse_path(&f, it.next())?),
            "--bind-mount" => {
                let src = parse_path(&f, it.next())?;
                Step::BindMount(src, parse_path(&f, it.next())?)
            }
            "--open-loop" => {
                let p = parse_path(&f, it.next())?;
                Step::OpenLoop(p, parse_num(&f, it.next())?)
            }
            "--read" => Step::Read(parse_num(&f, it.next())?),
            "--close" => Step::Close,
            "--connect-tcp" => Step::ConnectTcp(parse_addr(&f, it.next())?),
            "--connect-tcp-blocking" => Step::ConnectTcpBlocking(parse_addr(&f, it.next())?),
            "--udp-send" => Step::UdpSend(parse_addr(&f, it.next())?),
            "--dns-query" => {
                let addr = parse_addr(&f, it.next())?;
                let name = it
                    .next()
                    .and_then(|n| n.into_string().ok())
                    .ok_or_else(|| anyhow!("{f} needs HOST:PORT and a UTF-8 NAME"))?;
                Step::DnsQuery(addr, name)
            }
            "--connect-unix" => Step::ConnectUnix(parse_path(&f, it.next())?),
            "--sleep-ms" => Step::SleepMs(parse_num(&f, it.next())?),
            "--wait-stdin" => Step::WaitStdin,
            "--exit" => Step::Exit(parse_num(&f, it.next())?),
            "-h" | "--help" => bail!("help requested"),
            other => bail!("unknown flag {other:?}"),
        };
        steps.push(step);
    }
    Ok(steps)
}

fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the script: the test may only care about the side effects.
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// The step line of an open: keeps the fd for later steps and reports it, or the error.
fn opened(st: &mut State, base: Value, r: std::io::Result<i32>) -> Value {
    match r {
        Ok(fd) => {
            st.fds.push(fd);
            let mut v = base;
            v["ok"] = json!(true);
            v["fd"] = json!(fd);
            v
        }
        Err(e) => with_err(base, &e),
    }
}

/// Adds `"errno"` and `"error"` to a step line.
fn with_err(mut v: Value, e: &std::io::Error) -> Value {
    v["ok"] = json!(false);
    v["errno"] = json!(e.raw_os_error());
    v["error"] = json!(e.to_string());
    v
}

fn cstring(p: &OsString) -> std::io::Result<CString> {
    CString::new(p.clone().into_vec()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn lossy(p: &OsString) -> String {
    String::from_utf8_lossy(p.as_bytes()).into_owned()
}

fn open_ro(p: &OsString) -> std::io::Result<i32> {
    open_flags(p, libc::O_RDONLY)
}

fn open_flags(p: &OsString, flags: i32) -> std::io::Result<i32> {
    let c = cstring(p)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 { Err(errno()) } else { Ok(fd) }
}

fn mount(
    src: Option<&OsString>,
    dst: &OsString,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> std::io::Result<()> {
    let src = src.map(cstring).transpose()?;
    let dst = cstring(dst)?;
    let fstype = fstype.map(|t| CString::new(t).expect("literal"));
    // SAFETY: valid C strings or NULL, no data argument.
    check(unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            dst.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            std::ptr::null(),
        )
    })
}

/// Result of a syscall that returns 0 on success and -1 with errno on failure.
fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 { Err(errno()) } else { Ok(()) }
}

fn simple(base: Value, r: std::io::Result<()>) -> Value {
    match r {
        Ok(()) => {
            let mut v = base;
            v["ok"] = json!(true);
            v
        }
        Err(e) => with_err(base, &e),
    }
}

fn connect_report(
    st: &mut State,
    name: &str,
    addr: SocketAddr,
    r: std::io::Result<TcpStream>,
) -> Value {
    let base = json!({"step": name, "addr": addr.to_string()});
    match r {
        Ok(s) => {
            let mut v = base;
            v["ok"] = json!(true);
            if let Ok(l) = s.local_addr() {
                v["local"] = json!(l.to_string());
                v["local_ip"] = json!(l.ip().to_string());
                v["local_port"] = json!(l.port());
            }
            st.tcp.push(s);
            v
        }
        Err(e) => with_err(base, &e),
    }
}

struct State {
    fds: Vec<i32>,
    tcp: Vec<TcpStream>,
    udp: Vec<UdpSocket>,
    unix: Vec<std::os::unix::net::UnixStream>,
}

fn run_step(st: &mut State, step: Step) {
    let line = match step {
        Step::SetgroupsClear => {
            // SAFETY: setgroups with size 0 does not read the list pointer.
            let r = check(unsafe { libc::setgroups(0, std::ptr::null()) });
            simple(json!({"step": "setgroups-clear"}), r)
        }
        Step::Setgid(g) => {
            // SAFETY: plain syscall wrapper.
            let r = check(unsafe { libc::setgid(g) });
            simple(json!({"step": "setgid", "gid": g}), r)
        }
        Step::Setuid(u) => {
            // SAFETY: plain syscall wrapper.
            let r = check(unsafe { libc::setuid(u) });
            simple(json!({"step": "setuid", "uid": u}), r)
        }
        Step::Chdir(d) => {
            let base = json!({"step": "chdir", "dir": lossy(&d)});
            let r = cstring(&d).and_then(|c| {
                // SAFETY: valid C string.
                check(unsafe { libc::chdir(c.as_ptr()) })
            });
            simple(base, r)
        }
        Step::Open(p) => opened(st, json!({"step": "open", "path": lossy(&p)}), open_ro(&p)),
        Step::OpenNonblock(p) => opened(
            st,
            json!({"step": "open-nonblock", "path": lossy(&p)}),
            open_flags(&p, libc::O_RDONLY | libc::O_NONBLOCK),
        ),
        Step::JoinCgroup(dir) => {
            let base = json!({"step": "join-cgroup", "dir": lossy(&dir)});
            let mut procs = std::path::PathBuf::from(&dir);
            procs.push("cgroup.procs");
            simple(base, std::fs::write(procs, b"0"))
        }
        Step::UnshareMount => {
            // SAFETY: plain syscall wrapper.
            let r = check(unsafe { libc::unshare(libc::CLONE_NEWNS) }).and_then(|()| {
                mount(
                    None,
                    &OsString::from("/"),
                    None,
                    libc::MS_REC | libc::MS_PRIVATE,
                )
            });
            simple(json!({"step": "unshare-mount"}), r)
        }
        Step::MountTmpfs(dir) => {
            let r = mount(Some(&OsString::from("tmpfs")), &dir, Some("tmpfs"), 0);
            simple(json!({"step": "mount-tmpfs", "dir": lossy(&dir)}), r)
        }
        Step::MkdirP(dir) => simple(
            json!({"step": "mkdir-p", "dir": lossy(&dir)}),
            std::fs::create_dir_all(&dir),
        ),
        Step::BindMount(src, dst) => {
            let r = mount(Some(&src), &dst, None, libc::MS_BIND);
            simple(
                json!({"step": "bind-mount", "src": lossy(&src), "dst": lossy(&dst)}),
                r,
            )
        }
        Step::OpenLoop(p, n) => {
            let mut ok = 0u64;
            let mut first_err: Option<std::io::Error> = None;
            for _ in 0..n {
                match open_ro(&p) {
                    Ok(fd) => {
                        ok += 1;
                        // SAFETY: we own fd.
                        unsafe { libc::close(fd) };
                    }
                    Err(e) => {
                        if first_err.is_none() {
                            first_err = Some(e);
                        }
                    }
                }
            }
            let base = json!({"step": "open-loop", "path": lossy(&p), "count": n, "opened": ok});
            match first_err {
                None => simple(base, Ok(())),
                Some(e) => with_err(base, &e),
            }
        }
        Step::Read(n) => {
            let base = json!({"step": "read", "want": n});
            match st.fds.last().copied() {
                None => with_err(base, &std::io::Error::from_raw_os_error(libc::EBADF)),
                Some(fd) => {
                    let mut buf = vec![0u8; n];
                    let mut got = 0usize;
                    let mut err = None;
                    while got < n {
                        // SAFETY: buf[got..] is valid writable memory of n - got bytes.
                        let r = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), n - got) };
                        if r < 0 {
                            let e = errno();
                            if e.kind() == std::io::ErrorKind::Interrupted {
                                continue;
                            }
                            err = Some(e);
                            break;
                        }
                        if r == 0 {
                            break;
                        }
                        got += r as usize;
                    }
                    let mut v = base;
                    v["fd"] = json!(fd);
                    v["bytes"] = json!(got);
                    v["eof"] = json!(got < n && err.is_none());
                    match err {
                        None => simple(v, Ok(())),
                        Some(e) => with_err(v, &e),
                    }
                }
            }
        }
        Step::Close => match st.fds.pop() {
            None => with_err(
                json!({"step": "close"}),
                &std::io::Error::from_raw_os_error(libc::EBADF),
            ),
            Some(fd) => {
                // SAFETY: we own fd and forget it now.
                let r = check(unsafe { libc::close(fd) });
                simple(json!({"step": "close", "fd": fd}), r)
            }
        },
        Step::ConnectTcp(addr) => connect_report(
            st,
            "connect",
            addr,
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)),
        ),
        Step::ConnectTcpBlocking(addr) => {
            connect_report(st, "connect-blocking", addr, TcpStream::connect(addr))
        }
        Step::DnsQuery(addr, name) => {
            let base = json!({"step": "dns-query", "addr": addr.to_string(), "name": name});
            let bind: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0".parse().expect("literal")
            } else {
                "[::]:0".parse().expect("literal")
            };
            // Header: id, RD, one question; then the name's labels, type A, class IN.
            let mut q = vec![0x4e, 0x48, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in name.split('.') {
                q.push(label.len() as u8);
                q.extend_from_slice(label.as_bytes());
            }
            q.extend_from_slice(&[0, 0, 1, 0, 1]);
            let r = UdpSocket::bind(bind).and_then(|s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.send_to(&q, addr)?;
                let mut buf = [0u8; 1500];
                let (n, _) = s.recv_from(&mut buf)?;
                Ok((n, buf.get(3).map_or(0, |b| b & 0x0f)))
            });
            match r {
                Ok((n, rcode)) => {
                    let mut v = base;
                    v["ok"] = json!(true);
                    v["bytes"] = json!(n);
                    v["rcode"] = json!(rcode);
                    v
                }
                Err(e) => with_err(base, &e),
            }
        }
        Step::UdpSend(addr) => {
            let base = json!({"step": "udp-send", "addr": addr.to_string()});
            let bind: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0".parse().expect("literal")
            } else {
                "[::]:0".parse().expect("literal")
            };
            let r = UdpSocket::bind(bind).and_then(|s| {
                let mut sent = 0usize;
                for _ in 0..2 {
                    sent += s.send_to(b"nhi!", addr)?;
                }
                Ok((s, sent))
            });
            match r {
                Ok((s, sent)) => {
                    let mut v = base;
                    v["ok"] = json!(true);
                    v["datagrams"] = json!(2);
                    v["bytes"] = json!(sent);
                    if let Ok(l) = s.local_addr() {
                        v["local_port"] = json!(l.port());
                    }
                    st.udp.push(s);
                    v
                }
                Err(e) => with_err(base, &e),
            }
        }
        Step::ConnectUnix(path) => {
            let base = json!({"step": "connect-unix", "path": path.to_string_lossy()});
            match std::os::unix::net::UnixStream::connect(&path) {
                Ok(s) => {
                    st.unix.push(s);
                    let mut v = base;
                    v["ok"] = json!(true);
                    v
                }
                Err(e) => with_err(base, &e),
            }
        }
        Step::SleepMs(ms) => {
            std::thread::sleep(Duration::from_millis(ms));
            json!({"step": "sleep-ms", "ms": ms, "ok": true})
        }
        Step::WaitStdin => {
            let mut line = String::new();
            match std::io::stdin().lock().read_line(&mut line) {
                Ok(n) => json!({"step": "wait-stdin", "ok": true, "eof": n == 0,
                                "line": line.trim_end_matches('\n')}),
                Err(e) => with_err(json!({"step": "wait-stdin"}), &e),
            }
        }
        Step::Exit(code) => {
            emit(json!({"step": "exit", "code": code}));
            // SAFETY: terminates the process at once; nothing to clean up on purpose.
            unsafe { libc::_exit(code) }
        }
    };
    emit(line);
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let steps = match parse(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nhi-actor: {e:#}\n{USAGE}");
            std::process::exit(2);
        }
    };
    // SAFETY: plain syscall wrappers without arguments.
    let (pid, ppid, uid) = unsafe { (libc::getpid(), libc::getppid(), libc::getuid()) };
    emit(json!({"step": "start", "pid": pid, "ppid": ppid, "uid": uid}));
    let mut st = State {
        fds: Vec::new(),
        tcp: Vec::new(),
        udp: Vec::new(),
        unix: Vec::new(),
    };
    for step in steps {
        run_step(&mut st, step);
    }
    emit(json!({"step": "done"}));
}
