//! Reading a watched credential the moment it is opened, and describing it.
//!
//! The file is read through the *reader's* root (`/proc/<pid>/root`), so a path inside a
//! container resolves in that container. The reader is often gone before its event is handled,
//! so a handle on each mount namespace's root is kept from the first time a process of that
//! namespace is seen ([`RootHandles`]). Lookups use `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)`: symlinks cannot escape that root, and `/proc` magic links cannot be
//! followed. Only regular files are read (`O_NONBLOCK` + `fstat` first: a FIFO, device or socket
//! is never read), at most [`READ_CAP`] bytes, on a helper thread (kept for the next read) the
//! event loop waits for at most [`IO_TIMEOUT`] — a hung filesystem costs one parked thread,
//! never the event path.
//!
//! A file is parsed once per (device, inode, mtime, size); later opens reuse the result.

use std::{
    collections::HashMap,
    ffi::CString,
    io::Read as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Parsed, catalogue::Pattern};
use crate::{event::errno_name, fingerprint::FingerprintKey, secret::Secret};

/// Largest file read: credential files are a few KiB; 256 KiB holds the largest CA bundles and
/// MSAL caches while bounding memory and parse time on hostile input.
pub const READ_CAP: u64 = 256 * 1024;
/// How long the event loop waits for one open+stat or one read. Local filesystems answer in
/// microseconds; 500 ms only trips on hung network/FUSE filesystems.
pub const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// Helper threads that may be stuck in the kernel at once before reads are refused outright.
const MAX_IN_FLIGHT: usize = 8;
/// Classifications remembered; the cache is cleared when full (credentials are few).
const CACHE_ENTRIES: usize = 4096;
/// A mount-namespace handle unused this long is closed (its namespace is probably gone).
const ROOT_IDLE: Duration = Duration::from_secs(600);
/// Root handles kept at most (one per mount namespace: containers on a busy node).
const MAX_ROOTS: usize = 4096;

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn openat2(dirfd: i32, path: &CString, flags: i32, resolve: u64) -> std::io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: valid dirfd, NUL-terminated path and a correctly sized open_how struct.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const OpenHow,
            size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: a fresh fd we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-buffer; fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Opens an `O_PATH` handle for reading (through our own `/proc/self/fd`, the one magic link we
/// trust), without following anything else.
fn reopen(handle: &OwnedFd) -> std::io::Result<OwnedFd> {
    let path = CString::new(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .expect("no NUL in a formatted number");
    // SAFETY: valid C string.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn io_reason(what: &str, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{what} failed: {} ({})", errno_name(n as u32), e),
        None => format!("{what} failed: {e}"),
    }
}

/// The mount namespace inode of a live process, or None if it is gone.
fn mnt_ns_of(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

fn open_root(pid: u32) -> Option<OwnedFd> {
    let path = CString::new(format!("/proc/{pid}/root")).ok()?;
    // SAFETY: valid C string; O_PATH opens without reading.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    // SAFETY: a fresh fd we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One `O_PATH` handle on the root of each mount namespace seen, opened through a live member.
#[derive(Default)]
pub struct RootHandles {
    by_ns: HashMap<u32, (OwnedFd, Instant)>,
}

impl RootHandles {
    /// Records a way into `pid`'s mount namespace if we have none yet. Cheap when known.
    pub fn note(&mut self, pid: u32, mnt_ns: u32) {
        if mnt_ns == 0 {
            return;
        }
        if let Some((_, used)) = self.by_ns.get_mut(&mnt_ns) {
            *used = Instant::now();
            return;
        }
        if self.by_ns.len() >= MAX_ROOTS {
            return;
        }
        if let Some(fd) = open_root(pid)
            // The process may have moved to another namespace since its event.
            && mnt_ns_of(pid) == Some(u64::from(mnt_ns))
        {
            self.by_ns.insert(mnt_ns, (fd, Instant::now()));
        }
    }

    /// A handle on the root `pid` (of mount namespace `mnt_ns`) sees.
    fn get(&mut self, pid: u32, mnt_ns: u32) -> Result<OwnedFd, String> {
        self.note(pid, mnt_ns);
        match self.by_ns.get_mut(&mnt_ns) {
            Some((fd, used)) => {
                *used = Instant::now();
                fd.try_clone()
                    .map_err(|e| io_reason("duplicating the root handle", &e))
            }
            None => Err(format!(
                "no way into mount namespace {mnt_ns}: the reader (pid {pid}) is gone and no \
                 other process of that namespace was seen"
            )),
        }
    }

    pub fn prune(&mut self) {
        self.by_ns.retain(|_, (_, used)| used.elapsed() < ROOT_IDLE);
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Helper threads kept for bounded I/O. Starting a thread per credential open cost more than
/// the open itself (a process re-reading a key thousands of times a second); idle helpers wait
/// here for the next job instead.
struct HelperPool {
    jobs: Mutex<mpsc::Sender<Job>>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    /// Helper threads started (they never exit).
    threads: AtomicUsize,
}

impl HelperPool {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            jobs: Mutex::new(tx),
            queue: Arc::new(Mutex::new(rx)),
            threads: AtomicUsize::new(0),
        }
    }

    /// Queues `job`, first starting a helper unless one is surely free: `busy` jobs (this one
    /// included) are submitted and unfinished, and every helper runs one job at a time.
    fn submit(&self, busy: usize, job: Job) -> std::io::Result<()> {
        if self.threads.load(Ordering::Acquire) < busy {
            let queue = self.queue.clone();
            std::thread::Builder::new()
                .name("credential-io".into())
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting; the job runs without it.
                        let next = queue.lock().expect("helper queue").recv();
                        match next {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
            self.threads.fetch_add(1, Ordering::AcqRel);
        }
        self.jobs
            .lock()
            .expect("helper jobs")
            .send(job)
            .map_err(|_| std::io::Error::other("helper queue closed"))
    }
}

fn helpers() -> &'static HelperPool {
    static POOL: OnceLock<HelperPool> = OnceLock::new();
    POOL.get_or_init(HelperPool::new)
}

/// Runs `f` on a helper thread and waits at most [`IO_TIMEOUT`].
fn bounded<T: Send + 'static>(
    in_flight: &Arc<AtomicUsize>,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    if in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT {
        return Err(format!(
            "{what} not attempted: {MAX_IN_FLIGHT} earlier reads are still hung in the kernel"
        ));
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let counter = in_flight.clone();
    let busy = HELPERS_BUSY.fetch_add(1, Ordering::AcqRel) + 1;
    counter.fetch_add(1, Ordering::AcqRel);
    let job: Job = Box::new(move || {
        let r = f();
        counter.fetch_sub(1, Ordering::AcqRel);
        HELPERS_BUSY.fetch_sub(1, Ordering::AcqRel);
        let _ = tx.send(r);
    });
    if let Err(e) = helpers().submit(busy, job) {
        in_flight.fetch_sub(1, Ordering::AcqRel);
        HELPERS_BUSY.fetch_sub(1, Ordering::AcqRel);
        return Err(format!("{what}: cannot start a helper thread: {e}"));
    }
    rx.recv_timeout(IO_TIMEOUT)
        .map_err(|_| format!("{what} timed out after {} ms", IO_TIMEOUT.as_millis()))
}

/// Jobs submitted to the helpers and not finished, over every caller (each caller's own
/// `in_flight` bounds its hung reads).
static HELPERS_BUSY: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, Serialize)]
pub struct Credential {
    pub kind: String,
    /// The parser used (`auto` patterns report what they detected).
    pub format: &'static str,
    /// `hmac-sha256:<hex>` of the whole content, surrounding whitespace trimmed.
    pub fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub identifiers: Map<String, Value>,
    pub size: Option<u64>,
    /// Last modification (RFC 3339) and seconds since then.
    pub mtime: Option<String>,
    pub age_s: Option<i64>,
    /// JWT `iat` and seconds since then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_age_s: Option<i64>,
    pub owner_uid: Option<u32>,
    pub owner_gid: Option<u32>,
    pub mode: Option<String>,
    /// Readable by every local user: a finding in itself.
    pub world_readable: Option<bool>,
    /// `regular`, `fifo`, `socket`, `char_device`, `block_device`, `directory`, `symlink`.
    pub file_type: Option<&'static str>,
    /// Why the content (or part of it) could not be described.
    pub error: Option<String>,
    /// The description came from the per-(dev, ino, mtime, size) cache.
    pub cached: bool,
}

impl Credential {
    fn bare(pattern: &Pattern) -> Self {
        Self {
            kind: pattern.kind.clone(),
            format: pattern.format.name(),
            fingerprint: None,
            identifiers: Map::new(),
            size: None,
            mtime: None,
            age_s: None,
            issued_at: None,
            issued_age_s: None,
            owner_uid: None,
            owner_gid: None,
            mode: None,
            world_readable: None,
            file_type: None,
            error: None,
            cached: false,
        }
    }
}

#[derive(Clone)]
struct Cached {
    parsed: Parsed,
    fingerprint: Option<String>,
}

type CacheKey = (u64, u64, i64, i64, i64);

pub struct Classifier {
    key: Arc<FingerprintKey>,
    pub roots: RootHandles,
    cache: HashMap<CacheKey, Cached>,
    in_flight: Arc<AtomicUsize>,
}

fn file_type(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "char_device",
        libc::S_IFBLK => "block_device",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        _ => "unknown",
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Classifier {
    pub fn new(key: Arc<FingerprintKey>) -> Self {
        Self {
            key,
            roots: RootHandles::default(),
            cache: HashMap::new(),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn key(&self) -> &FingerprintKey {
        &self.key
    }

    /// A watched credential whose open failed: nothing to read.
    pub fn failed_open(pattern: &Pattern, errno: u32) -> Credential {
        let mut c = Credential::bare(pattern);
        c.error = Some(format!(
            "the process's open failed ({}); nothing was read",
            errno_name(errno)
        ));
        c
    }

    /// Describes the credential `path` that process `pid` (mount namespace `mnt_ns`) opened.
    pub fn classify(
        &mut self,
        pattern: &Pattern,
        path: &[u8],
        pid: u32,
        mnt_ns: u32,
    ) -> Credential {
        let mut c = Credential::bare(pattern);
        if let Err(e) = self.fill(&mut c, pattern, path, pid, mnt_ns) {
            c.error = Some(e);
        }
        c
    }

    fn fill(
        &mut self,
        c: &mut Credential,
        pattern: &Pattern,
        path: &[u8],
        pid: u32,
        mnt_ns: u32,
    ) -> Result<(), String> {
        let root = self.roots.get(pid, mnt_ns)?;
        let cpath = CString::new(path.to_vec()).map_err(|_| "path contains NUL".to_string())?;
        let (fd, st) = bounded(&self.in_flight, "open", move || {
            // O_PATH first: a device's driver `open` (tape rewind, modem hang-up) never runs.
            let handle = openat2(
                root.as_raw_fd(),
                &cpath,
                libc::O_PATH,
                RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
            )
            .map_err(|e| io_reason("open through the reader's root", &e))?;
            let st = fstat(&handle).map_err(|e| io_reason("fstat", &e))?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Ok((None, st));
            }
            let fd = reopen(&handle).map_err(|e| io_reason("reopen for reading", &e))?;
            Ok::<_, String>((Some(fd), st))
        })??;
        let ftype = file_type(st.st_mode);
        c.file_type = Some(ftype);
        c.size = Some(st.st_size as u64);
        c.owner_uid = Some(st.st_uid);
        c.owner_gid = Some(st.st_gid);
        c.mode = Some(format!("0{:o}", st.st_mode & 0o7777));
        c.world_readable = Some(st.st_mode & 0o004 != 0);
        let mtime = st.st_mtime;
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64);
        c.mtime = Some(humantime::format_rfc3339_seconds(wall).to_string());
        c.age_s = Some(now_unix() - mtime);
        let Some(fd) = fd.filter(|_| ftype == "regular") else {
            return Err(format!("not a regular file ({ftype}): never read"));
        };
        if st.st_size as u64 > READ_CAP {
            return Err(format!(
                "file is {} bytes, larger than the {READ_CAP}-byte read cap: not read",
                st.st_size
            ));
        }
        let key: CacheKey = (
            st.st_dev,
            st.st_ino,
            st.st_mtime,
            st.st_mtime_nsec,
            st.st_size,
        );
        let cached = match self.cache.get(&key) {
            Some(hit) => {
                c.cached = true;
                hit.clone()
            }
            None => {
                let content = bounded(&self.in_flight, "read", move || {
                    let mut buf = Vec::with_capacity(4096);
                    let mut f = std::fs::File::from(fd);
                    let r = (&mut f).take(READ_CAP + 1).read_to_end(&mut buf);
                    let secret = Secret::new(buf);
                    r.map(|_| secret).map_err(|e| io_reason("read", &e))
                })??;
                if content.expose().len() as u64 > READ_CAP {
                    return Err(format!(
                        "content exceeds the {READ_CAP}-byte read cap: not classified"
                    ));
                }
                let parsed = super::parse(pattern.format, content.expose(), &self.key);
                let trimmed = content.expose().trim_ascii();
                let fresh = Cached {
                    parsed,
                    fingerprint: (!trimmed.is_empty()).then(|| self.key.fingerprint(trimmed)),
                };
                if self.cache.len() >= CACHE_ENTRIES {
                    self.cache.clear();
                }
                self.cache.insert(key, fresh.clone());
                fresh
            }
        };
        c.format = cached.parsed.format;
        c.fingerprint = cached.fingerprint;
        c.identifiers = cached.parsed.identifiers;
        c.issued_at = cached.parsed.issued_at;
        c.issued_age_s = cached.parsed.issued_at.map(|iat| now_unix() - iat);
        if c.fingerprint.is_none() && cached.parsed.error.is_none() {
            c.error = Some("empty file".into());
        }
        if let Some(e) = cached.parsed.error {
            return Err(e);
        }
        Ok(())
    }
}

/// Reads a small regular file on the host (the kubelet's token files) with the same bounds.
pub fn read_host_file(path: &std::path::Path) -> Result<Secret, String> {
    use std::os::unix::ffi::OsStrExt as _;
    let cpath =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| "path contains NUL".to_string())?;
    static IN_FLIGHT: std::sync::OnceLock<Arc<AtomicUsize>> = std::sync::OnceLock::new();
    let in_flight = IN_FLIGHT.get_or_init(|| Arc::new(AtomicUsize::new(0)));
    bounded(in_flight, "read", move || {
        let fd = openat2(
            libc::AT_FDCWD,
            &cpath,
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
            RESOLVE_NO_MAGICLINKS,
        )
        .map_err(|e| io_reason("open", &e))?;
        let st = fstat(&fd).map_err(|e| io_reason("fstat", &e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(format!("not a regular file ({})", file_type(st.st_mode)));
        }
        if st.st_size as u64 > READ_CAP {
            return Err("larger than the read cap".into());
        }
        let mut buf = Vec::new();
        let r = std::fs::File::from(fd).take(READ_CAP).read_to_end(&mut buf);
        let s = Secret::new(buf);
        r.map(|_| s).map_err(|e| io_reason("read", &e))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Format;

    fn pattern(format: Format) -> Pattern {
        let mut p = crate::credentials::catalogue::builtin()
            .into_iter()
            .find(|p| p.kind == "aws_shared_credentials")
            .unwrap();
        p.format = format;
        p
    }

    #[test]
    fn reads_caches_and_refuses_non_regular() {
        let dir = std::env::temp_dir().join(format!("nhi-classify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("credentials");
        std::fs::write(
            &f,
            "[default]\naws_access_key_id=AKIAX\naws_secret_access_key=zzz\n",
        )
        .unwrap();
        let key = Arc::new(FingerprintKey::for_tests(b"0123456789abcdef"));
        let mut cl = Classifier::new(key);
        let me = std::process::id();
        let ns = mnt_ns_of(me).unwrap() as u32;
        let p = pattern(Format::AwsIni);
        let path = f.to_str().unwrap().as_bytes();
        let a = cl.classify(&p, path, me, ns);
        assert_eq!(a.error, None, "{a:?}");
        assert!(!a.cached);
        assert_eq!(a.identifiers["profiles"][0]["access_key_id"], "AKIAX");
        let b = cl.classify(&p, path, me, ns);
        assert!(b.cached);
        assert_eq!(a.fingerprint, b.fingerprint);

        let fifo = dir.join("fifo");
        let c = CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let r = cl.classify(&p, fifo.to_str().unwrap().as_bytes(), me, ns);
        assert_eq!(r.file_type, Some("fifo"));
        assert!(r.error.unwrap().contains("never read"));

        let big = dir.join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let r = cl.classify(&p, big.to_str().unwrap().as_bytes(), me, ns);
        assert!(r.error.unwrap().contains("read cap"));

        let l = dir.join("loop");
        std::os::unix::fs::symlink(&l, &l).unwrap();
        let r = cl.classify(&p, l.to_str().unwrap().as_bytes(), me, ns);
        assert!(r.error.unwrap().contains("ELOOP"));

        // No handle and no live process: a reason, not a panic.
        let r = cl.classify(&p, path, u32::MAX - 1, 12345);
        assert!(r.error.unwrap().contains("mount namespace"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
