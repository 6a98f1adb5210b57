//! The load generators: tight syscall loops in this process, paced or flat-out process spawns,
//! a loopback TCP connect/accept loop, redis-benchmark, and thousands of idle processes.

use std::{
    ffi::CString,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    os::unix::ffi::OsStrExt as _,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Operations completed in a measurement window.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub ops: u64,
    pub secs: f64,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }
}

fn cpath(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path with a NUL byte")
}

/// How many iterations of a tight loop run between two looks at the clock.
const CLOCK_EVERY: u64 = 64;

/// One task: `open(path, O_RDONLY)` + `close` as fast as possible for `dur`.
pub fn open_close(path: &Path, dur: Duration) -> anyhow::Result<Outcome> {
    let c = cpath(path)?;
    tight(dur, || {
        // SAFETY: a valid NUL-terminated path; the fd is closed right away.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: our own fd.
        unsafe { libc::close(fd) };
        Ok(())
    })
}

/// One task: `open` + `read` (up to 4 KiB) + `close` of the same file, as fast as possible.
pub fn open_read_close(path: &Path, dur: Duration) -> anyhow::Result<Outcome> {
    let c = cpath(path)?;
    let mut buf = [0u8; 4096];
    tight(dur, || {
        // SAFETY: as in `open_close`; `buf` is writable for its length.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        unsafe { libc::close(fd) };
        if n <= 0 {
            return Err(std::io::Error::other("read returned nothing"));
        }
        Ok(())
    })
}

fn tight(dur: Duration, mut op: impl FnMut() -> std::io::Result<()>) -> anyhow::Result<Outcome> {
    let t0 = Instant::now();
    let mut ops = 0u64;
    loop {
        for _ in 0..CLOCK_EVERY {
            op().context("workload operation")?;
        }
        ops += CLOCK_EVERY;
        if t0.elapsed() >= dur {
            break;
        }
    }
    Ok(Outcome {
        ops,
        secs: t0.elapsed().as_secs_f64(),
    })
}

/// `workers` threads run `op` for `dur`: flat out (`rate` = None) or at `rate` operations per
/// second in total (operation i is due at i/rate; a worker that falls behind does not burst to
/// catch up beyond what it can, so the achieved rate shows the shortfall).
pub fn paced(
    workers: usize,
    rate: Option<f64>,
    dur: Duration,
    op: &(dyn Fn(usize) -> std::io::Result<()> + Sync),
) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let end = start + dur;
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for w in 0..workers {
            let (next, done, failed, first_error) = (&next, &done, &failed, &first_error);
            s.spawn(move || {
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    if let Some(r) = rate {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let due = start + Duration::from_secs_f64(i as f64 / r);
                        if due >= end {
                            break;
                        }
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                    match op(w) {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .expect("error slot")
                                .get_or_insert_with(|| e.to_string());
                            // A broken workload: stop this worker instead of spinning.
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("error slot") {
        bail!(
            "workload operation failed ({} failures): {e}",
            failed.load(Ordering::Relaxed)
        );
    }
    Ok(Outcome {
        ops: done.load(Ordering::Relaxed),
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Spawns `program args...` (stdio on /dev/null) and waits for it; fails unless it exits 0.
pub fn spawn_wait(program: &Path, args: &[&std::ffi::OsStr]) -> std::io::Result<()> {
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{} exited with {status}",
            program.display()
        )))
    }
}

/// Loopback TCP: one client task connects, sends a byte, reads the answer and closes (with an
/// RST, so no TIME_WAIT piles up across rounds); a server thread accepts, answers and closes.
pub fn connect_loop(dur: Duration) -> anyhow::Result<Outcome> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a listener")?;
    let addr: SocketAddr = listener.local_addr()?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let stop = &stop;
        let server = s.spawn(move || {
            let mut byte = [0u8; 1];
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // The client may already have reset the connection: not an error here.
                if let Ok(mut c) = conn
                    && c.read_exact(&mut byte).is_ok()
                {
                    let _ = c.write_all(&byte);
                }
            }
        });
        let result = tight(dur, || {
            let mut c = TcpStream::connect(addr)?;
            c.set_nodelay(true)?;
            c.write_all(b"x")?;
            let mut byte = [0u8; 1];
            c.read_exact(&mut byte)?;
            set_linger_zero(&c);
            Ok(())
        });
        stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(addr);
        let _ = server.join();
        result
    })
}

fn set_linger_zero(c: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Idle child processes (forked, not exec'd: each is a real process the sensor tracks, but
/// costs only page tables and a kernel stack). They block reading a pipe whose only write end
/// this process holds, so they all exit when it is closed — on drop, or if the harness dies.
pub struct Sleepers {
    write_fd: libc::c_int,
    pids: Vec<libc::pid_t>,
}

impl Sleepers {
    /// Forks `n` sleepers. Must be called from the main thread of a process that is not inside
    /// a `std::thread::scope` (a fork copies only the calling thread).
    pub fn fork(n: usize) -> anyhow::Result<Sleepers> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()).context("pipe2");
        }
        let (read_fd, write_fd) = (fds[0], fds[1]);
        let mut s = Sleepers {
            write_fd,
            pids: Vec::with_capacity(n),
        };
        for _ in 0..n {
            // SAFETY: the child only calls async-signal-safe functions (close, read, _exit).
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                unsafe {
                    libc::close(write_fd);
                    let mut b = 0u8;
                    while libc::read(read_fd, (&mut b as *mut u8).cast(), 1) < 0 {}
                    libc::_exit(0);
                }
            }
            if pid < 0 {
                let e = std::io::Error::last_os_error();
                // SAFETY: our own fd; `s` (dropped on return) releases the children.
                unsafe { libc::close(read_fd) };
                return Err(e).with_context(|| format!("fork #{}", s.pids.len() + 1));
            }
            s.pids.push(pid);
        }
        // SAFETY: our own fd; only the children need the read end.
        unsafe { libc::close(read_fd) };
        Ok(s)
    }

    pub fn len(&self) -> usize {
        self.pids.len()
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        // SAFETY: our own fd; every child sees EOF and exits; then reap each of them.
        unsafe { libc::close(self.write_fd) };
        for pid in &self.pids {
            let mut status = 0;
            unsafe { libc::waitpid(*pid, &mut status, 0) };
        }
    }
}
