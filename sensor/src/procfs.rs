//! Everything the agent reads about the host from `/proc`, `/sys` and `/etc/passwd`.
//!
//! Rules this module follows:
//!
//! * Every error names the file (or mount point) it was about.
//! * Nothing here panics on odd input: process names can contain spaces, `)`, newlines and
//!   non-UTF-8 bytes, and so can executable paths, argv and cgroup paths. Such data is kept as
//!   raw bytes (`Vec<u8>`, `PathBuf`) and never lossily converted here; rendering is the
//!   caller's business.
//! * Processes come and go while we look at them. [`scan_processes`] skips those that vanish
//!   mid-scan silently; [`is_vanished`] tells callers of [`read_process`] whether an error just
//!   means "that process is gone".

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Root of the proc filesystem.
const PROC: &str = "/proc";

/// Upper bound on the bytes of `/proc/<pid>/cmdline` we keep; argv beyond this is cut off so
/// a process with a huge argument vector cannot make the sensor allocate without bound.
pub const MAX_CMDLINE_BYTES: u64 = 256 * 1024;

// ---------------------------------------------------------------------------------------------
// Boot id, start time and process keys
// ---------------------------------------------------------------------------------------------

/// Path of the per-boot random UUID.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The kernel's boot id, a UUID that changes on every boot (trimmed of its newline).
pub fn boot_id() -> anyhow::Result<String> {
    let raw =
        fs::read_to_string(BOOT_ID_PATH).with_context(|| format!("reading {BOOT_ID_PATH}"))?;
    let id = raw.trim();
    if id.is_empty() {
        bail!("{BOOT_ID_PATH} is empty");
    }
    Ok(id.to_owned())
}

/// Clock ticks per second as exposed to user space (`USER_HZ`, `sysconf(_SC_CLK_TCK)`).
///
/// It is 100 on every architecture Linux supports for user-visible tick counts.
pub const USER_HZ: u64 = 100;

/// Converts a task start time in nanoseconds since boot to the clock ticks that
/// `/proc/<pid>/stat` field 22 (`starttime`) shows.
///
/// This is the kernel's own `nsec_to_clock_t()`: `ns / (NSEC_PER_SEC / USER_HZ)`, rounding
/// down. Feed it `task_struct->start_boottime` (what `/proc` reports since Linux 5.5) so a key
/// computed from an eBPF event equals one computed from a `/proc` scan.
pub const fn start_ticks_from_ns(start_ns: u64) -> u64 {
    start_ns / (1_000_000_000 / USER_HZ)
}

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Feeds `bytes` into a running FNV-1a 64-bit hash.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// A process's identity as 16 lowercase hex characters.
///
/// It is the 64-bit FNV-1a hash of the boot id's bytes, then `pid` as 4 little-endian bytes,
/// then `start_ticks` as 8 little-endian bytes. Because it depends only on those three values
/// it is stable across sensor restarts (a restarted sensor recomputes the same key for a
/// process it saw before), and because the start time is part of it a pid reused by a later
/// process gets a different key. The boot id keeps keys from different boots apart.
pub fn process_key(boot_id: &str, pid: u32, start_ticks: u64) -> String {
    let mut hash = fnv1a(FNV_OFFSET, boot_id.as_bytes());
    hash = fnv1a(hash, &pid.to_le_bytes());
    hash = fnv1a(hash, &start_ticks.to_le_bytes());
    format!("{hash:016x}")
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Namespace inode numbers of a process (from `readlink /proc/<pid>/ns/<kind>`); 0 where the
/// link could not be read or parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Namespaces {
    /// PID namespace.
    pub pid: u32,
    /// Mount namespace.
    pub mnt: u32,
    /// Network namespace.
    pub net: u32,
    /// User namespace.
    pub user: u32,
    /// UTS (hostname) namespace.
    pub uts: u32,
    /// IPC namespace.
    pub ipc: u32,
    /// Cgroup namespace.
    pub cgroup: u32,
}

/// What the sensor knows about one process from `/proc/<pid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSnapshot {
    /// Process id (the thread-group id).
    pub pid: u32,
    /// Parent process id (0 for the idle task's children: pid 1 and kthreadd).
    pub ppid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
    /// `comm`, the kernel's (at most 15 byte) task name, exactly as the kernel holds it.
    pub comm: Vec<u8>,
    /// Target of `/proc/<pid>/exe`; `None` for kernel threads, zombies and when not permitted.
    /// May end in `" (deleted)"` when the file was unlinked after exec.
    pub exe: Option<Vec<u8>>,
    /// Arguments from `/proc/<pid>/cmdline` (empty for kernel threads and zombies; cut off at
    /// [`MAX_CMDLINE_BYTES`]).
    pub argv: Vec<Vec<u8>>,
    /// Real, effective, saved and filesystem user ids.
    pub uid: [u32; 4],
    /// Real, effective, saved and filesystem group ids.
    pub gid: [u32; 4],
    /// Effective capability set (`CapEff`).
    pub cap_effective: u64,
    /// Permitted capability set (`CapPrm`).
    pub cap_permitted: u64,
    /// Audit login uid; `None` when unset (4294967295) or unreadable.
    pub loginuid: Option<u32>,
    /// Audit session id; `None` when unset (4294967295) or unreadable.
    pub sessionid: Option<u32>,
    /// Controlling terminal device number (`/proc/<pid>/stat` field 7).
    pub tty_nr: u32,
    /// Cgroup v2 path from the `0::` line of `/proc/<pid>/cgroup` (relative to the reader's
    /// cgroup namespace root); `None` when there is no such line.
    pub cgroup: Option<Vec<u8>>,
    /// Namespace inode numbers.
    pub ns: Namespaces,
}

/// The fields of `/proc/<pid>/stat` the sensor uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatFields {
    pid: u32,
    comm: Vec<u8>,
    ppid: u32,
    tty_nr: u32,
    start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`.
///
/// `comm` (field 2) is wrapped in parentheses but may itself contain spaces, `(`, `)` and even
/// newlines, so it runs from the first `(` to the *last* `)`; the numeric fields follow.
fn parse_stat(buf: &[u8]) -> Option<StatFields> {
    let open = buf.iter().position(|&b| b == b'(')?;
    let close = buf.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let pid = parse_num::<u32>(buf[..open].trim_ascii())?;
    let comm = buf[open + 1..close].to_vec();
    // Fields after the comm, numbered from 3 (state).
    let rest: Vec<&[u8]> = buf[close + 1..]
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .collect();
    let field = |n: usize| rest.get(n - 3).copied();
    // ppid and tty_nr are printed with %d; tty_nr is a dev_t that fits in 32 bits.
    let ppid = parse_num::<i64>(field(4)?)?;
    let tty_nr = parse_num::<i64>(field(7)?)?;
    let start_ticks = parse_num::<u64>(field(22)?)?;
    Some(StatFields {
        pid,
        comm,
        ppid: u32::try_from(ppid).unwrap_or(0),
        tty_nr: tty_nr as u32,
        start_ticks,
    })
}

/// The fields of `/proc/<pid>/status` the sensor uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct StatusFields {
    tgid: u32,
    uid: [u32; 4],
    gid: [u32; 4],
    cap_effective: u64,
    cap_permitted: u64,
}

/// Parses `/proc/<pid>/status`. The `Name:` line may hold arbitrary bytes, so lines are handled
/// as bytes and only the numeric values are interpreted. `None` if a needed line is missing.
fn parse_status(buf: &[u8]) -> Option<StatusFields> {
    let mut out = StatusFields::default();
    let (mut tgid, mut uid, mut gid, mut eff, mut prm) = (false, false, false, false, false);
    for line in buf.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (key, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        match key {
            b"Tgid" => {
                out.tgid = parse_num(value)?;
                tgid = true;
            }
            b"Uid" => {
                out.uid = parse_id_quad(value)?;
                uid = true;
            }
            b"Gid" => {
                out.gid = parse_id_quad(value)?;
                gid = true;
            }
            b"CapEff" => {
                out.cap_effective = parse_hex(value)?;
                eff = true;
            }
            b"CapPrm" => {
                out.cap_permitted = parse_hex(value)?;
                prm = true;
            }
            _ => {}
        }
    }
    (tgid && uid && gid && eff && prm).then_some(out)
}

/// Parses the four whitespace-separated ids of a `Uid:`/`Gid:` status line.
fn parse_id_quad(value: &[u8]) -> Option<[u32; 4]> {
    let mut ids = [0u32; 4];
    let mut fields = value
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    for id in &mut ids {
        *id = parse_num(fields.next()?)?;
    }
    Some(ids)
}

/// The path `/proc/<pid>/<name>`.
fn proc_path(pid: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("{PROC}/{pid}/{name}"))
}

/// Reads a whole file, naming it in the error.
fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Reads `/proc/<pid>/stat` and parses it.
fn read_stat(pid: u32) -> anyhow::Result<StatFields> {
    let path = proc_path(pid, "stat");
    let buf = read_file(&path)?;
    parse_stat(&buf).with_context(|| format!("parsing {}", path.display()))
}

/// Reads `/proc/<pid>/status` and parses it.
fn read_status(pid: u32) -> anyhow::Result<StatusFields> {
    let path = proc_path(pid, "status");
    let buf = read_file(&path)?;
    parse_status(&buf).with_context(|| {
        format!(
            "parsing {}: Tgid, Uid, Gid, CapEff or CapPrm missing",
            path.display()
        )
    })
}

/// Target of `/proc/<pid>/exe` as bytes; `None` for kernel threads (no executable), zombies
/// and processes we may not inspect.
fn read_exe(pid: u32) -> Option<Vec<u8>> {
    fs::read_link(proc_path(pid, "exe"))
        .ok()
        .map(|p| p.into_os_string().into_vec())
}

/// Splits the NUL-separated `/proc/<pid>/cmdline` into arguments. A process that rewrote its
/// argument area may leave no trailing NUL; the last argument is kept either way.
fn split_cmdline(buf: &[u8]) -> Vec<Vec<u8>> {
    let buf = buf.strip_suffix(b"\0").unwrap_or(buf);
    if buf.is_empty() {
        return Vec::new();
    }
    buf.split(|&b| b == 0).map(<[u8]>::to_vec).collect()
}

/// Arguments of a process, at most [`MAX_CMDLINE_BYTES`] of them; empty if unreadable.
fn read_argv(pid: u32) -> Vec<Vec<u8>> {
    let mut buf = Vec::new();
    let read = fs::File::open(proc_path(pid, "cmdline"))
        .and_then(|f| f.take(MAX_CMDLINE_BYTES).read_to_end(&mut buf));
    match read {
        Ok(_) => split_cmdline(&buf),
        Err(_) => Vec::new(),
    }
}

/// Reads an audit id file (`loginuid`, `sessionid`); `None` when unset (`u32::MAX`) or
/// unreadable.
fn read_audit_id(pid: u32, name: &str) -> Option<u32> {
    let buf = fs::read(proc_path(pid, name)).ok()?;
    parse_num::<u32>(buf.trim_ascii()).filter(|&id| id != u32::MAX)
}

/// The path on the `0::` (cgroup v2) line of a `/proc/<pid>/cgroup` file.
fn parse_cgroup_v2(buf: &[u8]) -> Option<Vec<u8>> {
    buf.split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"0::"))
        .map(<[u8]>::to_vec)
}

/// Parses a namespace link target such as `mnt:[4026531840]` into its inode number.
fn parse_ns_link(target: &[u8]) -> Option<u32> {
    let open = target.iter().position(|&b| b == b'[')?;
    let inner = target[open + 1..].strip_suffix(b"]")?;
    parse_num(inner)
}

/// Namespace inode numbers of a process; 0 for each one that cannot be read.
fn read_namespaces(pid: u32) -> Namespaces {
    let ns = |kind: &str| {
        fs::read_link(proc_path(pid, &format!("ns/{kind}")))
            .ok()
            .and_then(|t| parse_ns_link(t.as_os_str().as_bytes()))
            .unwrap_or(0)
    };
    Namespaces {
        pid: ns("pid"),
        mnt: ns("mnt"),
        net: ns("net"),
        user: ns("user"),
        uts: ns("uts"),
        ipc: ns("ipc"),
        cgroup: ns("cgroup"),
    }
}

/// Reads a process, returning its snapshot and its thread-group id.
fn read_process_with_tgid(pid: u32) -> anyhow::Result<(ProcSnapshot, u32)> {
    let stat = read_stat(pid)?;
    let status = read_status(pid)?;
    let snapshot = ProcSnapshot {
        pid: stat.pid,
        ppid: stat.ppid,
        start_ticks: stat.start_ticks,
        comm: stat.comm,
        exe: read_exe(pid),
        argv: read_argv(pid),
        uid: status.uid,
        gid: status.gid,
        cap_effective: status.cap_effective,
        cap_permitted: status.cap_permitted,
        loginuid: read_audit_id(pid, "loginuid"),
        sessionid: read_audit_id(pid, "sessionid"),
        tty_nr: stat.tty_nr,
        cgroup: fs::read(proc_path(pid, "cgroup"))
            .ok()
            .and_then(|b| parse_cgroup_v2(&b)),
        ns: read_namespaces(pid),
    };
    // If the pid was reused while we read the other files, they described someone else.
    let again = read_stat(pid)?;
    if again.start_ticks != snapshot.start_ticks {
        return Err(io::Error::from(io::ErrorKind::NotFound)).with_context(|| {
            format!("process {pid} exited and its pid was reused while reading {PROC}/{pid}")
        });
    }
    Ok((snapshot, status.tgid))
}

/// Reads everything the sensor wants about one process from `/proc/<pid>`.
///
/// `stat` and `status` must be readable; the other files are best effort (kernel threads have
/// no `exe` and an empty `cmdline`, other users' `exe` may be hidden without
/// `CAP_SYS_PTRACE`). `stat` is read again at the end so a pid reused mid-read is reported as
/// an error rather than mixing two processes. Use [`is_vanished`] to tell "the process went
/// away" apart from real failures. Given a thread id instead of a process id it describes
/// that thread.
pub fn read_process(pid: u32) -> anyhow::Result<ProcSnapshot> {
    read_process_with_tgid(pid).map(|(snapshot, _)| snapshot)
}

/// Whether an error from this module only means the process (or file) has gone away:
/// `ENOENT` or `ESRCH` somewhere in its chain.
pub fn is_vanished(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|e| {
            e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
        })
    })
}

/// Snapshots of all processes (thread-group leaders) in `/proc`.
///
/// Processes that exit during the scan are skipped silently; others that cannot be read are
/// skipped with a debug log. Returns an empty list if `/proc` itself cannot be listed.
pub fn scan_processes() -> Vec<ProcSnapshot> {
    let entries = match fs::read_dir(PROC) {
        Ok(entries) => entries,
        Err(err) => {
            tracing::warn!(error = %err, "cannot list {PROC}");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = parse_num::<u32>(name.as_bytes()) else {
            continue;
        };
        match read_process_with_tgid(pid) {
            // /proc lists only thread-group leaders; the check guards against odd procfs setups.
            Ok((snapshot, tgid)) if tgid == pid => out.push(snapshot),
            Ok(_) => {}
            Err(err) if is_vanished(&err) => {}
            Err(err) => tracing::debug!(pid, error = format!("{err:#}"), "skipping process"),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Privileges and capabilities
// ---------------------------------------------------------------------------------------------

/// `CAP_DAC_READ_SEARCH`: read other users' `/proc/<pid>` files.
const CAP_DAC_READ_SEARCH: u32 = 2;
/// `CAP_NET_ADMIN`: attach cgroup socket programs.
const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_PTRACE`: read other processes' `exe`, `ns/*` and `environ`.
const CAP_SYS_PTRACE: u32 = 19;
/// `CAP_SYS_ADMIN`: the pre-5.8 catch-all that also grants what BPF and PERFMON do.
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_PERFMON`: perf events, tracepoints and kprobes (Linux 5.8+).
const CAP_PERFMON: u32 = 38;
/// `CAP_BPF`: load BPF programs and create maps (Linux 5.8+).
const CAP_BPF: u32 = 39;

/// Names of capability bits 0..=63; bits the kernel does not define yet are named `CAP_<n>`.
const CAP_NAMES: [&str; 64] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_41",
    "CAP_42",
    "CAP_43",
    "CAP_44",
    "CAP_45",
    "CAP_46",
    "CAP_47",
    "CAP_48",
    "CAP_49",
    "CAP_50",
    "CAP_51",
    "CAP_52",
    "CAP_53",
    "CAP_54",
    "CAP_55",
    "CAP_56",
    "CAP_57",
    "CAP_58",
    "CAP_59",
    "CAP_60",
    "CAP_61",
    "CAP_62",
    "CAP_63",
];

/// Name of capability bit `bit`: `CAP_CHOWN` (0) through `CAP_CHECKPOINT_RESTORE` (40);
/// `CAP_41`..`CAP_63` for bits not defined yet, `CAP_UNKNOWN` beyond 63.
pub fn cap_name(bit: u32) -> &'static str {
    CAP_NAMES
        .get(bit as usize)
        .copied()
        .unwrap_or("CAP_UNKNOWN")
}

/// Names of the capabilities set in `mask`, lowest bit first.
pub fn cap_names(mask: u64) -> Vec<&'static str> {
    (0..64u32)
        .filter(|&bit| mask & (1 << bit) != 0)
        .map(cap_name)
        .collect()
}

/// The sensor process's own identity and effective capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    /// Effective user id.
    pub euid: u32,
    /// Effective capability set (`CapEff`).
    pub effective: u64,
}

/// Our own effective uid and capabilities, from `/proc/self/status`.
pub fn own_privileges() -> anyhow::Result<Privileges> {
    let path = Path::new("/proc/self/status");
    let buf = read_file(path)?;
    let status = parse_status(&buf)
        .with_context(|| format!("parsing {}: Uid or CapEff missing", path.display()))?;
    Ok(Privileges {
        euid: status.uid[1],
        effective: status.cap_effective,
    })
}

impl Privileges {
    /// Whether capability `bit` is in the effective set.
    pub fn has(&self, bit: u32) -> bool {
        bit < 64 && self.effective & (1 << bit) != 0
    }

    /// Names of the capabilities the sensor needs but does not hold, empty when it can run.
    ///
    /// Needed: `CAP_BPF` and `CAP_PERFMON` to load programs and attach tracepoints/kprobes —
    /// both implied by `CAP_SYS_ADMIN`, the only capability kernels before 5.8 know for this;
    /// `CAP_NET_ADMIN` for the cgroup socket hooks; `CAP_DAC_READ_SEARCH` and `CAP_SYS_PTRACE`
    /// to read other processes' `/proc` entries. `CAP_SYS_ADMIN` itself is not reported: it is
    /// only needed when tracefs must be mounted, and [`ensure_tracefs`] says so when it fails.
    /// The uid does not matter: root without capabilities (e.g. in a container) cannot load.
    pub fn missing_for_sensor(&self) -> Vec<&'static str> {
        let sys_admin = self.has(CAP_SYS_ADMIN);
        [
            (CAP_BPF, sys_admin),
            (CAP_PERFMON, sys_admin),
            (CAP_NET_ADMIN, false),
            (CAP_DAC_READ_SEARCH, false),
            (CAP_SYS_PTRACE, false),
        ]
        .into_iter()
        .filter(|&(bit, implied)| !implied && !self.has(bit))
        .map(|(bit, _)| cap_name(bit))
        .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------------

/// Our mount table.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted (relative to our root directory).
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. `cgroup2`, `tracefs`, `ext4`.
    pub fs_type: String,
    /// The directory of the filesystem that is mounted there (`/` unless a bind mount).
    pub root: PathBuf,
    /// Mount source, e.g. `/dev/sda1` or `none`. Bytes that are not UTF-8 stay octal-escaped
    /// (`\377`) so nothing is lost.
    pub source: String,
}

/// Decodes the kernel's `\ooo` octal escapes (used for space, tab, newline and backslash in
/// mountinfo fields). Anything else, including a malformed escape, is kept as-is.
fn decode_octal_escapes(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(&[a, b, c]) = field.get(i + 1..i + 4)
            && (b'0'..=b'3').contains(&a)
            && (b'0'..=b'7').contains(&b)
            && (b'0'..=b'7').contains(&c)
        {
            out.push((a - b'0') * 64 + (b - b'0') * 8 + (c - b'0'));
            i += 4;
            continue;
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Turns bytes into a `String`, octal-escaping (`\ooo`) bytes that are not valid UTF-8.
fn escape_non_utf8(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\{b:03o}");
        }
    }
    out
}

/// Parses one mountinfo line:
/// `36 35 98:0 /root /mount/point rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
/// The optional fields end at the ` - ` separator; paths never contain it because the kernel
/// escapes spaces. Returns `None` for a malformed line.
fn parse_mountinfo_line(line: &[u8]) -> Option<MountEntry> {
    let sep = line.windows(3).position(|w| w == b" - ")?;
    let mut left = line[..sep].split(|&b| b == b' ').filter(|f| !f.is_empty());
    let mut right = line[sep + 3..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    let root = left.nth(3)?;
    let mount_point = left.next()?;
    let fs_type = right.next()?;
    let source = right.next().unwrap_or(b"");
    let path = |field: &[u8]| PathBuf::from(OsString::from_vec(decode_octal_escapes(field)));
    Some(MountEntry {
        mount_point: path(mount_point),
        fs_type: escape_non_utf8(&decode_octal_escapes(fs_type)),
        root: path(root),
        source: escape_non_utf8(&decode_octal_escapes(source)),
    })
}

/// Parses a whole mountinfo file, skipping malformed lines.
fn parse_mountinfo(buf: &[u8]) -> Vec<MountEntry> {
    buf.split(|&b| b == b'\n')
        .filter_map(parse_mountinfo_line)
        .collect()
}

/// All mounts visible to us, in `/proc/self/mountinfo` order (parents before children).
pub fn mounts() -> anyhow::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&read_file(Path::new(MOUNTINFO))?))
}

/// Picks the mount point of the first entry of `fs_type`, preferring one that mounts the
/// filesystem's root (`root == "/"`, i.e. not a bind mount of a subdirectory).
fn pick_mount(entries: &[MountEntry], fs_type: &str) -> Option<PathBuf> {
    let mut of_type = entries.iter().filter(|m| m.fs_type == fs_type);
    let first = of_type.clone().next()?;
    let best = of_type.find(|m| m.root == Path::new("/")).unwrap_or(first);
    Some(best.mount_point.clone())
}

/// Where a filesystem of type `fs_type` is mounted: the first such mount whose root is `/`
/// (which is what matters for `cgroup2`, whose bind mounts of sub-cgroups would give wrong
/// paths), else the first of that type at all. `None` if it is not mounted.
pub fn find_mount(fs_type: &str) -> anyhow::Result<Option<PathBuf>> {
    Ok(pick_mount(&mounts()?, fs_type))
}

/// Mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on unified systems,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    find_mount("cgroup2")?.context(
        "no cgroup v2 filesystem mounted (see /proc/self/mountinfo); nhi-sensor needs cgroup v2 \
         for its socket hooks",
    )
}

/// Where tracefs is mounted when nobody has mounted it yet.
const TRACEFS_DEFAULT: &str = "/sys/kernel/tracing";

/// Returns a usable tracefs directory, mounting tracefs if needed.
///
/// In order: an existing tracefs mount (wherever it is, including the legacy
/// `/sys/kernel/debug/tracing`); `<debugfs>/tracing` if it has an `events` directory (older
/// kernels automount tracefs there on first access); otherwise tracefs is mounted at
/// `/sys/kernel/tracing`, which needs `CAP_SYS_ADMIN`.
pub fn ensure_tracefs() -> anyhow::Result<PathBuf> {
    let entries = mounts()?;
    if let Some(path) = pick_mount(&entries, "tracefs") {
        return Ok(path);
    }
    if let Some(debugfs) = pick_mount(&entries, "debugfs") {
        let tracing = debugfs.join("tracing");
        if tracing.join("events").is_dir() {
            return Ok(tracing);
        }
    }
    mount_tracefs(Path::new(TRACEFS_DEFAULT))?;
    Ok(PathBuf::from(TRACEFS_DEFAULT))
}

/// `mount -t tracefs nodev <target>`.
fn mount_tracefs(target: &Path) -> anyhow::Result<()> {
    let target_c = CString::new(target.as_os_str().as_bytes())
        .with_context(|| format!("mount point {} contains a NUL byte", target.display()))?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; the data
    // argument may be null.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target_c.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(err).with_context(|| {
            format!(
                "tracefs is not mounted and mounting it at {} failed (needs CAP_SYS_ADMIN and an \
                 existing directory)",
                target.display()
            )
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cgroup ids
// ---------------------------------------------------------------------------------------------

/// Deepest cgroup nesting [`CgroupPaths`] walks into.
const CGROUP_MAX_DEPTH: usize = 32;

/// Maps cgroup v2 ids (as `bpf_get_current_cgroup_id()` returns them) to cgroup paths.
///
/// A cgroup v2 id is the inode number of its directory in the cgroup2 filesystem, so the map
/// is built by walking the hierarchy and `stat`ing directories.
#[derive(Debug, Clone)]
pub struct CgroupPaths {
    root: PathBuf,
    cache: HashMap<u64, PathBuf>,
    last_scan: Option<std::time::Instant>,
}

/// Minimum time between two walks of the cgroup tree on cache misses. Containers start in
/// bursts; one walk per second keeps new cgroups resolvable within a second at bounded cost.
const CGROUP_RESCAN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl CgroupPaths {
    /// A resolver for the cgroup2 hierarchy mounted at `root` (see [`cgroup2_root`]). Nothing is
    /// read until the first [`lookup`](Self::lookup).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            cache: HashMap::new(),
            last_scan: None,
        }
    }

    /// The path of cgroup `id` relative to the cgroup2 root, written `/a/b` (`/` for the root
    /// cgroup); `None` if no such cgroup exists.
    ///
    /// Answers from the cache; on a miss it walks the hierarchy once (at most
    /// 32 levels, skipping unreadable directories) and replaces the cache
    /// with what it found, which also drops cgroups that have since been removed.
    pub fn lookup(&mut self, id: u64) -> Option<PathBuf> {
        if let Some(path) = self.cache.get(&id) {
            return Some(path.clone());
        }
        // An id that is not in the tree (a cgroup gone already, or one from another hierarchy)
        // must not cost a walk per event: rescan at most once per RESCAN_INTERVAL.
        if self
            .last_scan
            .is_some_and(|t| t.elapsed() < CGROUP_RESCAN_INTERVAL)
        {
            return None;
        }
        self.cache = scan_cgroups(&self.root);
        self.last_scan = Some(std::time::Instant::now());
        self.cache.get(&id).cloned()
    }
}

/// Walks the cgroup2 hierarchy at `root`, mapping each directory's inode to its `/a/b` path.
/// Stays on the root's filesystem.
fn scan_cgroups(root: &Path) -> HashMap<u64, PathBuf> {
    let mut found = HashMap::new();
    let Ok(meta) = fs::metadata(root) else {
        return found;
    };
    let dev = meta.dev();
    found.insert(meta.ino(), PathBuf::from("/"));
    // (absolute directory, path relative to root as "/a/b", depth)
    let mut stack = vec![(root.to_path_buf(), PathBuf::from("/"), 0usize)];
    while let Some((dir, rel, depth)) = stack.pop() {
        if depth >= CGROUP_MAX_DEPTH {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            // stat rather than d_ino: the id is defined as the inode stat reports.
            let ino = match fs::symlink_metadata(&path) {
                Ok(m) if m.dev() == dev => m.ino(),
                Ok(_) => continue,
                // Removed while we walked.
                Err(_) => continue,
            };
            let child_rel = rel.join(entry.file_name());
            found.insert(ino, child_rel.clone());
            stack.push((path, child_rel, depth + 1));
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

/// Local user names by uid, from `/etc/passwd`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users(HashMap<u32, String>);

impl Users {
    /// Reads `/etc/passwd`; an unreadable file gives an empty table (names are cosmetic).
    pub fn load() -> Self {
        match fs::read("/etc/passwd") {
            Ok(buf) => Self::parse(&buf),
            Err(err) => {
                tracing::debug!(error = %err, "cannot read /etc/passwd");
                Self::default()
            }
        }
    }

    /// Parses passwd-format text (`name:password:uid:gid:gecos:home:shell`). Malformed lines,
    /// comments, NIS `+`/`-` entries and names that are not UTF-8 are ignored; for a uid
    /// listed twice the first entry wins, as with `getpwuid`.
    pub fn parse(buf: &[u8]) -> Self {
        let mut users = HashMap::new();
        for line in buf.split(|&b| b == b'\n') {
            if line.starts_with(b"#") || line.starts_with(b"+") || line.starts_with(b"-") {
                continue;
            }
            let mut fields = line.split(|&b| b == b':');
            let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let (Ok(name), Some(uid)) = (std::str::from_utf8(name), parse_num::<u32>(uid)) else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            users.entry(uid).or_insert_with(|| name.to_owned());
        }
        Self(users)
    }

    /// The name of `uid`, if it is a local user.
    pub fn name(&self, uid: u32) -> Option<&str> {
        self.0.get(&uid).map(String::as_str)
    }
}

// ---------------------------------------------------------------------------------------------
// Terminals
// ---------------------------------------------------------------------------------------------

/// Turns a kernel `tty_struct` name into the `/dev`-relative name: `pts3` → `pts/3`; other
/// names (`tty1`, `ttyS0`, `console`) are returned unchanged.
pub fn kernel_tty_name(raw: &str) -> String {
    match raw.strip_prefix("pts") {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => format!("pts/{n}"),
        _ => raw.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Small parsing helpers
// ---------------------------------------------------------------------------------------------

/// Parses a decimal number from ASCII bytes.
fn parse_num<T: std::str::FromStr>(bytes: &[u8]) -> Option<T> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Parses a hexadecimal `u64` (as in `CapEff: 000001ffffffffff`).
fn parse_hex(bytes: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(bytes).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    #[test]
    fn boot_id_is_a_uuid() {
        let id = boot_id().unwrap();
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{id}"
        );
        assert!(
            id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
            "{id}"
        );
        assert_eq!(boot_id().unwrap(), id);
    }

    #[test]
    fn start_ticks_conversion() {
        assert_eq!(start_ticks_from_ns(0), 0);
        assert_eq!(start_ticks_from_ns(9_999_999), 0);
        assert_eq!(start_ticks_from_ns(10_000_000), 1);
        assert_eq!(start_ticks_from_ns(413_830_000_000), 41_383);
    }

    #[test]
    fn process_key_is_deterministic_and_distinguishes() {
        let boot = "0b6a9d1e-3f9c-4a43-9c59-7d8b6f0e2a11";
        let key = process_key(boot, 1234, 5678);
        assert_eq!(key.len(), 16);
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{key}"
        );
        assert_eq!(process_key(boot, 1234, 5678), key);
        assert_ne!(process_key(boot, 1235, 5678), key);
        assert_ne!(process_key(boot, 1234, 5679), key);
        assert_ne!(process_key("other-boot", 1234, 5678), key);
        // FNV-1a of the empty input is the offset basis; pins the algorithm.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn parses_stat_with_hostile_comm() {
        let line = b"4242 (a) (b)\n c) S 17 4242 4242 34817 -1 4194304 1 0 0 0 0 0 0 0 20 0 1 0 98765 1 1 18446744073709551615 0 0\n";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.pid, 4242);
        assert_eq!(stat.comm, b"a) (b)\n c");
        assert_eq!(stat.ppid, 17);
        assert_eq!(stat.tty_nr, 34817);
        assert_eq!(stat.start_ticks, 98765);
        assert_eq!(parse_stat(b"1 (x"), None);
        assert_eq!(parse_stat(b"1 (x) S 0"), None);
        assert_eq!(parse_stat(b")( 1 2 3"), None);
        assert_eq!(parse_stat(b""), None);
    }

    #[test]
    fn parses_cmdline_cgroup_and_ns_links() {
        assert_eq!(
            split_cmdline(b"a\0b c\0\0d\0"),
            [b"a".to_vec(), b"b c".to_vec(), vec![], b"d".to_vec()]
        );
        assert_eq!(
            split_cmdline(b"rewritten title"),
            [b"rewritten title".to_vec()]
        );
        assert!(split_cmdline(b"").is_empty());
        assert_eq!(
            parse_cgroup_v2(b"1:cpu:/\n0::/system.slice/x y.service\n"),
            Some(b"/system.slice/x y.service".to_vec())
        );
        assert_eq!(parse_cgroup_v2(b"1:name=systemd:/\n"), None);
        assert_eq!(parse_ns_link(b"mnt:[4026531840]"), Some(4_026_531_840));
        assert_eq!(parse_ns_link(b"mnt:4026531840"), None);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let snap = read_process(me).unwrap();
        assert_eq!(snap.pid, me);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(snap.exe.as_deref(), Some(exe.as_os_str().as_bytes()));
        // SAFETY: geteuid/getegid have no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!(snap.uid[1], euid);
        assert_eq!(snap.gid[1], egid);
        // SAFETY: as above.
        assert_eq!(snap.ppid, unsafe { libc::getppid() } as u32);
        let args: Vec<Vec<u8>> = std::env::args_os().map(|a| a.into_vec()).collect();
        assert_eq!(snap.argv, args);
        assert!(snap.start_ticks > 0);
        assert_ne!(snap.ns.mnt, 0);
        assert_ne!(snap.ns.pid, 0);
        let again = read_process(me).unwrap();
        assert_eq!(again.start_ticks, snap.start_ticks);
        assert_eq!(again.ns, snap.ns);
    }

    /// Kills and reaps the child when dropped, even if an assertion fails.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn reads_child_with_hostile_name_and_argv() {
        let dir = std::env::temp_dir().join(format!("nhi-procfs-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let name: &[u8] = b"a) (b)\xff c";
        let exe = dir.join(std::ffi::OsStr::from_bytes(name));
        fs::copy("/bin/sleep", &exe).unwrap();
        let arg0: &[u8] = b"argv0 \xfe)";
        let mut attempts = 0;
        let child = loop {
            // ETXTBSY if another test thread forked while the copy's fd was open.
            match Command::new(&exe)
                .arg0(std::ffi::OsStr::from_bytes(arg0))
                .arg("30")
                .spawn()
            {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break Reaped(other.unwrap()),
            }
        };
        // `spawn` returns once the child exists, possibly before its exec is done (cmdline
        // empty, comm still ours): poll until the new image shows, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let snap = loop {
            let snap = read_process(child.0.id());
            let execed = snap
                .as_ref()
                .is_ok_and(|s| s.comm == name && !s.argv.is_empty());
            if execed || std::time::Instant::now() > deadline {
                break snap;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let _ = fs::remove_dir_all(&dir);
        let snap = snap.unwrap();
        assert_eq!(snap.pid, child.0.id());
        assert_eq!(snap.ppid, std::process::id());
        assert_eq!(snap.comm, name);
        assert_eq!(snap.exe.as_deref(), Some(exe.as_os_str().as_bytes()));
        assert_eq!(snap.argv, [arg0.to_vec(), b"30".to_vec()]);
        assert!(snap.start_ticks >= read_process(std::process::id()).unwrap().start_ticks);
    }

    #[test]
    fn kernel_threads_have_no_exe() {
        // kthreadd is pid 2 when we share the host's pid namespace.
        if let Ok(snap) = read_process(2)
            && snap.ppid == 0
            && snap.comm == b"kthreadd"
        {
            assert_eq!(snap.exe, None);
            assert!(snap.argv.is_empty());
        }
    }

    #[test]
    fn vanished_process_is_recognised() {
        let err = read_process(u32::MAX).unwrap_err();
        assert!(is_vanished(&err), "{err:#}");
        assert!(
            format!("{err:#}").contains("/proc/4294967295/stat"),
            "{err:#}"
        );
    }

    #[test]
    fn scan_finds_init_and_us() {
        let all = scan_processes();
        let me = std::process::id();
        assert!(all.iter().any(|p| p.pid == 1), "pid 1 missing");
        assert!(all.iter().any(|p| p.pid == me), "own pid missing");
        let mut pids: Vec<u32> = all.iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        assert_eq!(pids.len(), all.len());
    }

    #[test]
    fn capability_names() {
        assert_eq!(cap_names(0x3), ["CAP_CHOWN", "CAP_DAC_OVERRIDE"]);
        assert_eq!(cap_name(21), "CAP_SYS_ADMIN");
        assert_eq!(cap_name(38), "CAP_PERFMON");
        assert_eq!(cap_name(39), "CAP_BPF");
        assert_eq!(cap_name(40), "CAP_CHECKPOINT_RESTORE");
        assert_eq!(cap_name(41), "CAP_41");
        assert_eq!(cap_name(64), "CAP_UNKNOWN");
        assert_eq!(cap_names(0), Vec::<&str>::new());
        assert_eq!(cap_names(u64::MAX).len(), 64);
        assert_eq!(cap_names(1 << 63), ["CAP_63"]);
    }

    #[test]
    fn sensor_privileges() {
        let all = Privileges {
            euid: 0,
            effective: (1 << 41) - 1,
        };
        assert!(all.missing_for_sensor().is_empty());
        let none = Privileges {
            euid: 0,
            effective: 0,
        };
        assert_eq!(
            none.missing_for_sensor(),
            [
                "CAP_BPF",
                "CAP_PERFMON",
                "CAP_NET_ADMIN",
                "CAP_DAC_READ_SEARCH",
                "CAP_SYS_PTRACE"
            ]
        );
        let old_kernel = Privileges {
            euid: 0,
            effective: 1 << CAP_SYS_ADMIN
                | 1 << CAP_NET_ADMIN
                | 1 << CAP_DAC_READ_SEARCH
                | 1 << CAP_SYS_PTRACE,
        };
        assert!(old_kernel.missing_for_sensor().is_empty());
        let no_perfmon = Privileges {
            effective: all.effective & !(1 << CAP_PERFMON | 1 << CAP_SYS_ADMIN),
            ..all
        };
        assert_eq!(no_perfmon.missing_for_sensor(), ["CAP_PERFMON"]);

        let own = own_privileges().unwrap();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(own.euid, unsafe { libc::geteuid() });
        assert_eq!(
            own.effective,
            read_process(std::process::id()).unwrap().cap_effective
        );
    }

    #[test]
    fn mountinfo_line_with_escapes() {
        let line = br"36 35 98:0 /my\040root /mnt/with\040space\011tab\134back\012nl rw,noatime master:1 shared:2 - ext4 /dev/disk\040x\377 rw,errors=continue";
        let m = parse_mountinfo_line(line).unwrap();
        assert_eq!(m.root, Path::new("/my root"));
        assert_eq!(
            m.mount_point.as_os_str().as_bytes(),
            b"/mnt/with space\ttab\\back\nnl"
        );
        assert_eq!(m.fs_type, "ext4");
        assert_eq!(m.source, r"/dev/disk x\377");
        // No optional fields, trailing text; malformed lines are skipped.
        let m = parse_mountinfo_line(
            b"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw",
        )
        .unwrap();
        assert_eq!(m.fs_type, "cgroup2");
        assert_eq!(m.mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(parse_mountinfo_line(b"garbage"), None);
        assert_eq!(parse_mountinfo_line(b"1 2 - x"), None);
        assert_eq!(decode_octal_escapes(br"\04\9x\"), br"\04\9x\");
        assert_eq!(escape_non_utf8(b"ok\xffd\xc3\xa9"), "ok\\377d\u{e9}");
    }

    #[test]
    fn cgroup2_mount_prefers_fs_root() {
        let text = b"1 0 0:1 /sub /mnt/sub rw - cgroup2 cgroup2 rw\n\
                     2 0 0:1 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                     3 0 0:2 / /sys/kernel/tracing rw - tracefs nodev rw\n";
        let entries = parse_mountinfo(text);
        assert_eq!(entries.len(), 3);
        assert_eq!(
            pick_mount(&entries, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            pick_mount(&entries[..1], "cgroup2"),
            Some(PathBuf::from("/mnt/sub"))
        );
        assert_eq!(
            pick_mount(&entries, "tracefs"),
            Some(PathBuf::from("/sys/kernel/tracing"))
        );
        assert_eq!(pick_mount(&entries, "bpf"), None);
    }

    #[test]
    fn real_mounts() {
        let all = mounts().unwrap();
        assert!(all.iter().any(|m| m.fs_type == "proc"), "{all:?}");
        let root = cgroup2_root().unwrap();
        assert!(root.join("cgroup.procs").is_file(), "{}", root.display());
        // tracefs is normally mounted already; this must then return it without mounting.
        if find_mount("tracefs").unwrap().is_some() {
            let tracefs = ensure_tracefs().unwrap();
            assert!(tracefs.join("events").is_dir(), "{}", tracefs.display());
        }
    }

    #[test]
    fn cgroup_paths_finds_own_cgroup() {
        let root = cgroup2_root().unwrap();
        let own = read_process(std::process::id())
            .unwrap()
            .cgroup
            .expect("no 0:: line");
        let own = PathBuf::from(OsString::from_vec(own));
        let dir = root.join(own.strip_prefix("/").unwrap());
        let id = fs::metadata(&dir).unwrap().ino();
        let mut paths = CgroupPaths::new(&root);
        assert_eq!(paths.lookup(id), Some(own.clone()));
        assert_eq!(paths.lookup(id), Some(own));
        assert_eq!(
            paths.lookup(fs::metadata(&root).unwrap().ino()),
            Some(PathBuf::from("/"))
        );
        assert_eq!(paths.lookup(u64::MAX), None);
        // A miss right after a walk is answered from the cache, without a new walk.
        assert!(paths.last_scan.is_some());

        // A nested cgroup with an awkward name, if we may create one.
        let top = root.join(format!("nhi-procfs-test {}", std::process::id()));
        let nested = top.join("in)ner");
        if fs::create_dir_all(&nested).is_ok() {
            let id = fs::metadata(&nested).map(|m| m.ino());
            // Made within the rescan interval of the last walk: allow a new walk now.
            paths.last_scan = None;
            let found = id.as_ref().ok().and_then(|&id| paths.lookup(id));
            let _ = fs::remove_dir(&nested);
            let _ = fs::remove_dir(&top);
            let expected = PathBuf::from(format!("/nhi-procfs-test {}/in)ner", std::process::id()));
            assert_eq!(found, Some(expected));
        }
    }

    #[test]
    fn users_from_passwd() {
        let users = Users::parse(
            b"root:x:0:0:root:/root:/bin/bash\n\
              # comment\n\
              broken line\n\
              nouid:x:abc:0::/:/bin/false\n\
              svc:x:1001:1001::/home/svc:/bin/sh\n\
              dup:x:1001:1001::/:/bin/sh\n\
              \xff\xfe:x:1002:0::/:/bin/sh\n\
              +nis::::::\n",
        );
        assert_eq!(users.name(0), Some("root"));
        assert_eq!(users.name(1001), Some("svc"));
        assert_eq!(users.name(1002), None);
        assert_eq!(users.name(4242), None);
        assert_eq!(Users::load().name(0), Some("root"));
    }

    #[test]
    fn tty_names() {
        // Large minors are split across bits 0-7 and 20-31.
        assert_eq!(kernel_tty_name("pts3"), "pts/3");
        assert_eq!(kernel_tty_name("pts"), "pts");
        assert_eq!(kernel_tty_name("ptsx"), "ptsx");
        assert_eq!(kernel_tty_name("tty1"), "tty1");
        assert_eq!(kernel_tty_name("ttyS0"), "ttyS0");
    }
}
