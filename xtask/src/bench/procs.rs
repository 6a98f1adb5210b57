//! What the benchmark starts and watches: temporary directories, child processes (the sensor, a
//! separate collector, redis), their `/metrics` endpoints and their CPU and memory in `/proc`.
//! Everything started here is stopped, and every directory removed, on drop — also when the
//! harness fails half-way.

use std::{
    collections::{BTreeMap, VecDeque},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, atomic::AtomicU32, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A directory under `/tmp`, removed with everything in it on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Removes what runs killed before their drop guards ran left behind (directories of
    /// processes that no longer exist).
    pub fn remove_stale() {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("nhi-bench-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    pub fn new(tag: &str) -> anyhow::Result<TempDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nhi-bench-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last lines a child wrote to stderr (it is drained by a thread so the child never blocks
/// on a full pipe).
#[derive(Default)]
struct Lines {
    st: Mutex<(VecDeque<String>, bool)>,
    cv: Condvar,
}

/// How many stderr lines of a child are kept for error messages and log parsing.
const KEPT_LINES: usize = 2000;

/// A child process, terminated on drop (SIGTERM, SIGKILL after a grace period).
pub struct Guarded {
    name: String,
    child: Option<Child>,
    lines: Arc<Lines>,
}

impl Guarded {
    /// Spawns `cmd` with stdin and stdout on /dev/null and stderr collected. Must be called
    /// from the main thread: the child gets SIGTERM when the thread that spawned it exits, so
    /// nothing outlives a harness that is killed (drop guards do not run then).
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Guarded> {
        use std::os::unix::process::CommandExt as _;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Lines::default());
        let l = lines.clone();
        std::thread::Builder::new()
            .name(format!("{name}-stderr"))
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut g = l.st.lock().expect("lines");
                    if g.0.len() == KEPT_LINES {
                        g.0.pop_front();
                    }
                    g.0.push_back(line);
                    drop(g);
                    l.cv.notify_all();
                }
                l.st.lock().expect("lines").1 = true;
                l.cv.notify_all();
            })
            .context("spawning a stderr reader")?;
        Ok(Guarded {
            name: name.to_string(),
            child: Some(child),
            lines,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until a stderr line contains `needle`; fails (with the stderr tail) if the child
    /// exits or `timeout` passes first.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lines.st.lock().expect("lines");
        loop {
            if g.0.iter().any(|l| l.contains(needle)) {
                return Ok(());
            }
            let now = Instant::now();
            if g.1 || now >= deadline {
                drop(g);
                bail!(
                    "{} did not log {needle:?} ({}); its stderr ends with:\n{}",
                    self.name,
                    if now >= deadline {
                        "timed out"
                    } else {
                        "it exited"
                    },
                    self.stderr_tail(30)
                );
            }
            g = self
                .lines
                .cv
                .wait_timeout(g, deadline - now)
                .expect("lines")
                .0;
        }
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.lines
            .st
            .lock()
            .expect("lines")
            .0
            .iter()
            .cloned()
            .collect()
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        let g = self.lines.st.lock().expect("lines");
        let skip = g.0.len().saturating_sub(n);
        g.0.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Fails if the child has already exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = &mut self.child
            && let Some(status) = c.try_wait()?
        {
            bail!(
                "{} exited unexpectedly ({status}); its stderr ends with:\n{}",
                self.name,
                self.stderr_tail(30)
            );
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `grace` (SIGKILL after that).
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} was already stopped", self.name);
        };
        terminate(&mut child, grace).with_context(|| format!("stopping {}", self.name))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child, Duration::from_secs(10));
        }
    }
}

fn terminate(child: &mut Child, grace: Duration) -> std::io::Result<ExitStatus> {
    if let Some(s) = child.try_wait()? {
        return Ok(s);
    }
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(l.local_addr()?.port())
}

/// One scrape of a Prometheus text endpoint: every sample by its full series name
/// (`name{labels}`).
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    pub fn scrape(addr: SocketAddr) -> anyhow::Result<Metrics> {
        let body = http_get(addr, "/metrics")?;
        let mut m = BTreeMap::new();
        for line in body.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((series, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.parse::<f64>()
            {
                m.insert(series.to_string(), v);
            }
        }
        Ok(Metrics(m))
    }

    /// The sum of every series of the metric `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .map(|(_, v)| v)
            .sum()
    }

    /// The series `name{label}` (exact label text, e.g. `counter="emitted"`), 0 when absent.
    pub fn series(&self, name: &str, label: &str) -> f64 {
        self.0
            .get(&format!("{name}{{{label}}}"))
            .copied()
            .unwrap_or(0.0)
    }
}

fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .with_context(|| format!("reading {path} from {addr}"))?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from {addr}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "GET {path} from {addr}: {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(body.to_string())
}

/// User + system CPU time of a whole process (all its threads, also exited ones), from
/// `/proc/PID/stat`, in seconds.
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime); `rest` starts at field 3.
    let ticks: u64 = f
        .get(11)
        .zip(f.get(12))
        .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?))
        .context("malformed /proc/PID/stat")?;
    Ok(ticks as f64 / clk_tck())
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The machine's CPU time so far from `/proc/stat`: (steal, total) in ticks. Steal is time
/// the hypervisor gave this VM's vCPUs to someone else.
pub fn cpu_steal() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    (fields.get(7).copied().unwrap_or(0), fields.iter().sum())
}

/// Percent of CPU time stolen by the hypervisor since `since` (a [`cpu_steal`] reading).
pub fn steal_pct(since: (u64, u64)) -> f64 {
    let now = cpu_steal();
    let total = now.1.saturating_sub(since.1);
    if total == 0 {
        0.0
    } else {
        100.0 * now.0.saturating_sub(since.0) as f64 / total as f64
    }
}

/// CPU use of one process over an interval.
pub struct CpuMeter {
    pid: u32,
    t0: Instant,
    cpu0: f64,
}

impl CpuMeter {
    pub fn start(pid: u32) -> anyhow::Result<CpuMeter> {
        Ok(CpuMeter {
            pid,
            t0: Instant::now(),
            cpu0: cpu_secs(pid)?,
        })
    }

    /// (CPU seconds used, wall seconds elapsed) since `start`.
    pub fn read(&self) -> anyhow::Result<(f64, f64)> {
        Ok((
            cpu_secs(self.pid)? - self.cpu0,
            self.t0.elapsed().as_secs_f64(),
        ))
    }
}

/// Runs a command to completion and returns its stdout; fails with its stderr otherwise.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Other sensors on this machine (`nhi-sensor run` processes that are not ours): their hooks
/// would be in a baseline too.
pub fn foreign_sensors(ours: &[u32]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !ours.contains(pid))
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let mut args = cmdline.split(|b| *b == 0);
            args.next().is_some_and(|a0| a0.ends_with(b"nhi-sensor")) && args.any(|a| a == b"run")
        })
        .collect()
}

/// Waits up to `max` for no foreign sensor to run; returns those still running.
pub fn wait_for_no_foreign_sensors(max: Duration) -> Vec<u32> {
    let deadline = Instant::now() + max;
    let mut said = false;
    loop {
        let f = foreign_sensors(&[]);
        if f.is_empty() || Instant::now() >= deadline {
            return f;
        }
        if !said {
            say!("waiting (up to {max:?}) for other sensors to exit: pids {f:?}");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
