//! The kernel/user ABI of nhi-sensor.
//!
//! Everything that crosses the boundary between `sensor-ebpf` and the userspace agent lives here:
//! the records written to the ring buffer, the keys and values of the maps userspace fills, the
//! load-time globals and the counters. Every type is `#[repr(C)]` with **no implicit padding**
//! (explicit `_pad` fields, `u32` flags instead of `bool`), so the same bytes mean the same thing
//! on both sides; `tests` at the bottom pin the layout.
//!
//! A ring-buffer record is one of the `*Event` structs below, optionally followed by variable-size
//! byte payloads (paths, argv) whose lengths the fixed part carries. Every record starts with an
//! [`EventHeader`] so userspace can dispatch on [`EventKind`] before it decodes the rest.
#![no_std]

pub mod offsets;

pub use offsets::KernelOffsets;

/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;
/// Bytes kept of a tty's name (`tty_struct.name`, e.g. `pts3`, `ttyS0`); kernel names are short.
pub const TTY_LEN: usize = 16;
/// Size of the in-kernel path buffer. `PATH_MAX` is 4096 and a path that does not fit is sent as
/// its last components with [`PATH_TRUNCATED`] set.
pub const PATH_BUF: usize = 4096;
/// How many path components the in-kernel walk follows before it gives up and marks the path
/// truncated. 128 keeps every program well under the verifier's 1M-instruction budget (the walk
/// costs ~270 verified instructions per level) while covering any realistic directory depth.
pub const PATH_MAX_DEPTH: u32 = 128;
/// Bytes of `argv` kept per exec. Enough for the command lines operators read; longer ones are
/// cut and flagged with [`ARGS_TRUNCATED`].
pub const ARGS_MAX: usize = 1024;
/// Bytes of the environment (`envp`) captured per exec, so userspace can tell which credential
/// variables a process carries. Userspace keeps only names and keyed fingerprints of values,
/// never the values. 2 KiB covers typical service environments; longer ones are cut and flagged
/// with [`ENV_TRUNCATED`].
pub const ENV_MAX: usize = 2048;
/// Bytes kept of the file name passed to `execve` (scripts: the script, not the interpreter).
pub const EXEC_FILENAME_MAX: usize = 256;
/// Key size of the path-prefix LPM trie. 256 bytes is the kernel's limit for LPM keys
/// (`LPM_DATA_SIZE_MAX`), so prefixes longer than this are matched in userspace only.
pub const PREFIX_KEY_LEN: usize = 256;
/// Key size of the file-name maps. Longer rule names are matched in userspace only.
pub const NAME_KEY_LEN: usize = 64;

/// What a ring-buffer record is. Numbered by family, with room left in each range:
/// process 1–99, file 100–199, network 200–299.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    ProcessExec = 1,
    ProcessFork = 2,
    ProcessExit = 3,
    CredChange = 4,
    FileOpen = 100,
    FileClose = 101,
    NetConnect = 200,
    NetConnectResult = 201,
    NetUdpSend = 202,
    NetAccept = 203,
    NetUnixConnect = 204,
    NetDns = 205,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::ProcessExec,
            2 => Self::ProcessFork,
            3 => Self::ProcessExit,
            4 => Self::CredChange,
            100 => Self::FileOpen,
            101 => Self::FileClose,
            200 => Self::NetConnect,
            201 => Self::NetConnectResult,
            202 => Self::NetUdpSend,
            203 => Self::NetAccept,
            204 => Self::NetUnixConnect,
            205 => Self::NetDns,
            _ => return None,
        })
    }
}

/// First bytes of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// Total record size in bytes, payloads included.
    pub size: u32,
    /// `bpf_ktime_get_boot_ns()`: nanoseconds since boot, suspend included, so it converts to
    /// wall-clock time with one offset and orders events across CPUs.
    pub boot_ns: u64,
}

/// A task's credentials, read from `task->real_cred` (the objective credentials, the ones
/// `/proc/<pid>/status` shows) plus the audit login identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub suid: u32,
    pub sgid: u32,
    pub fsuid: u32,
    pub fsgid: u32,
    pub cap_effective: u64,
    pub cap_permitted: u64,
    /// `task->loginuid`: the uid that logged in, inherited across su/sudo. `u32::MAX` = unset.
    pub loginuid: u32,
    /// `task->sessionid`: the audit session. `u32::MAX` = unset.
    pub sessionid: u32,
}

/// Namespace inode numbers, as in `/proc/<pid>/ns/*`. 0 = could not be read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Namespaces {
    pub pid: u32,
    pub mnt: u32,
    pub net: u32,
    pub user: u32,
    pub uts: u32,
    pub ipc: u32,
    pub cgroup: u32,
    pub _pad: u32,
}

/// `TaskInfo::flags`: the task is a kernel thread (no mm).
pub const TASK_KTHREAD: u32 = 1 << 0;
/// `TaskInfo::flags`: the credentials could not be read.
pub const TASK_CREDS_MISSING: u32 = 1 << 1;
/// `TaskInfo::flags`: some namespace could not be read.
pub const TASK_NS_MISSING: u32 = 1 << 2;

/// Who did it: the process (thread group) in whose context the hook ran.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskInfo {
    /// Process id (thread-group id) in the initial pid namespace.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// `real_parent->tgid`.
    pub ppid: u32,
    /// `TASK_*` flags.
    pub flags: u32,
    /// `group_leader->start_boottime` in ns: with the boot id and the pid, it names the process
    /// uniquely across pid reuse and sensor restarts (`/proc/<pid>/stat` field 22 is the same
    /// clock in ticks).
    pub start_ns: u64,
    /// The parent's `group_leader->start_boottime`.
    pub parent_start_ns: u64,
    /// cgroup v2 id (`bpf_get_current_cgroup_id`, or the task's default-hierarchy cgroup inode).
    pub cgroup_id: u64,
    pub creds: Creds,
    pub ns: Namespaces,
    /// Controlling tty name (`tty_struct.name`), NUL-padded; empty = none.
    pub tty: [u8; TTY_LEN],
    pub comm: [u8; COMM_LEN],
}

/// `PathInfo::flags`: the path did not fit in the buffer or the depth bound; what was kept is
/// its tail.
pub const PATH_TRUNCATED: u32 = 1 << 0;
/// `PathInfo::flags`: a kernel read failed during the walk; the path is partial.
pub const PATH_READ_ERROR: u32 = 1 << 1;
/// `PathInfo::flags`: the path was not resolved from a `struct file` (the open failed), it is the
/// string the process passed, joined to its working directory when relative.
pub const PATH_UNRESOLVED: u32 = 1 << 2;
/// `PathInfo::flags`: the walk ended on a root that is not the process's root (a file on a
/// detached mount or an internal filesystem).
pub const PATH_DETACHED: u32 = 1 << 3;

/// Describes a path payload that follows a record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PathInfo {
    /// Bytes of path payload (no NUL).
    pub len: u32,
    /// `PATH_*` flags.
    pub flags: u32,
}

/// `ExecEvent::flags`: argv was longer than [`ARGS_MAX`] and was cut.
pub const ARGS_TRUNCATED: u32 = 1 << 0;
/// `ExecEvent::flags`: argv could not be read.
pub const ARGS_READ_ERROR: u32 = 1 << 1;
/// `ExecEvent::flags`: the environment was longer than [`ENV_MAX`] and was cut.
pub const ENV_TRUNCATED: u32 = 1 << 2;
/// `ExecEvent::flags`: the environment could not be read.
pub const ENV_READ_ERROR: u32 = 1 << 3;

/// A successful `execve`. Followed by `exe.len` bytes of the resolved executable path
/// (`mm->exe_file`), `filename_len` bytes of the name passed to exec, `args_len` bytes of
/// NUL-separated argv and `env_len` bytes of NUL-separated `NAME=value` environment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    pub exe: PathInfo,
    pub filename_len: u32,
    pub args_len: u32,
    /// `ARGS_*` flags.
    pub flags: u32,
    /// The pid before exec (differs when a non-leader thread execs).
    pub old_pid: u32,
    pub exe_dev: u64,
    pub exe_ino: u64,
    pub env_len: u32,
    pub _pad: u32,
}

/// A new process (not a thread). `task` is the parent, in whose context the fork ran.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    pub child_tgid: u32,
    pub _pad: u32,
    pub child_start_ns: u64,
}

/// The last thread of a process exited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    /// Wait status as `waitpid` reports it: `(code << 8) | signal`.
    pub exit_code: u32,
    pub _pad: u32,
}

/// A successful set*id/setgroups/capset syscall that changed credentials. `task.creds` are the
/// new ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CredChangeEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    pub old: Creds,
    /// The syscall number that made the change; [`SYSCALL_NONE`] when the hook (`commit_creds`)
    /// is not tied to one syscall.
    pub syscall_nr: u32,
    pub _pad: u32,
}

/// `syscall_nr` of events from hooks that are not tied to one syscall (fentry/fexit paths).
pub const SYSCALL_NONE: u32 = u32::MAX;

/// An open of a watched file, for reading. Followed by `path.len` bytes of path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileOpenEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    pub path: PathInfo,
    /// The fd returned, or `-errno`.
    pub ret: i64,
    /// `st_dev` of the file's filesystem (kernel `dev_t` encoding: major << 20 | minor).
    pub dev: u64,
    pub ino: u64,
    /// The open flags (`O_*`) as the process asked for them.
    pub open_flags: u32,
    /// `i_mode` of the inode (type and permission bits); 0 when the open failed.
    pub mode: u32,
    /// The syscall number (`open`, `openat`, `openat2`).
    pub syscall_nr: u32,
    /// `WATCH_*` bits: which kind of rule matched in the kernel.
    pub matched: u32,
    /// Failed opens ([`PATH_UNRESOLVED`]): the path ends with this many bytes of the string the
    /// process passed (the rest is the directory it was relative to). 0 otherwise.
    pub requested_len: u32,
    /// Open dedupe ([`Setting::OpenDedupeMs`]): the kernel's running total of opens of this
    /// [`OpenDedupeKey`] it counted instead of reporting (userspace reports the difference to
    /// the previous total). 0 for a key the kernel saw for the first time.
    pub repeats: u32,
}

/// `FileCloseEvent::reason`: the process called `close`.
pub const CLOSE_SYSCALL: u32 = 1;
/// `FileCloseEvent::reason`: closed because the process exited (seen in the kernel by the
/// fentry path; the tracepoint path reports these from userspace).
pub const CLOSE_EXIT: u32 = 2;

/// A watched fd was closed. Bytes read through it are counted in the kernel; fds still open
/// when a process exits are reported by userspace from the same counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileCloseEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    pub fd: i32,
    pub reason: u32,
    pub bytes_read: u64,
    pub reads: u64,
    pub dev: u64,
    pub ino: u64,
}

/// What an open syscall asked for, kept from its entry to its exit (per thread): a failed open
/// has no `struct file`, only the string the process passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenArgs {
    /// User-space pointer to the path string.
    pub filename: u64,
    /// `O_*` flags.
    pub flags: u32,
    /// Directory fd a relative path is relative to (`AT_FDCWD` = -100).
    pub dfd: i32,
}

/// Key of the watched-fd map: one per open watched file descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Value of the watched-fd map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FdState {
    /// The `struct file *` the fd pointed at when opened: a read through a reused fd number is
    /// not counted against the old file.
    pub file: u64,
    pub bytes_read: u64,
    pub reads: u64,
    pub dev: u64,
    pub ino: u64,
    pub open_boot_ns: u64,
}

/// An IPv4 or IPv6 socket address. IPv4 addresses are stored in the first 4 bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockAddr {
    pub addr: [u8; 16],
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    pub _pad: u32,
}

/// Key of the in-kernel UDP flow table: one report per (socket, destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpFlowKey {
    pub cookie: u64,
    pub dst: SockAddr,
}

/// What makes two successful watched opens "the same" for dedupe: one process, one inode,
/// the same open flags. A different process, inode (a replaced file) or flag is a new key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OpenDedupeKey {
    pub tgid: u32,
    /// `f_flags` of the opened file, as reported in `FileOpenEvent::open_flags`.
    pub flags: u32,
    pub dev: u64,
    pub ino: u64,
}

/// Per [`OpenDedupeKey`]: when its current window started (boot clock) and how many opens the
/// kernel counted instead of reporting, in total (only ever grows, so userspace can read it
/// without racing the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenDedupeState {
    pub window_start_ns: u64,
    pub repeats: u64,
}

/// An outbound connect (TCP or UDP), seen in the connecting process's context by the cgroup
/// `connect4`/`connect6` hooks. The outcome arrives as a [`NetResultEvent`] with the same cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetConnectEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    /// Socket cookie: stable id of the socket for its lifetime.
    pub cookie: u64,
    pub dst: SockAddr,
    /// `IPPROTO_TCP` (6) or `IPPROTO_UDP` (17).
    pub protocol: u32,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, ...
    pub sock_type: u32,
}

/// `NetResultEvent::result`.
pub const RESULT_ESTABLISHED: u32 = 1;
pub const RESULT_FAILED: u32 = 2;

/// The outcome of a TCP connect (from `sock:inet_sock_set_state`, which runs in softirq context
/// and so carries no process) or a synchronous connect failure (from `sys_exit_connect`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetResultEvent {
    pub header: EventHeader,
    pub cookie: u64,
    pub src: SockAddr,
    pub dst: SockAddr,
    /// `RESULT_*`.
    pub result: u32,
    /// Positive errno on failure (`sk_err`, or the syscall's error), 0 otherwise.
    pub error: u32,
}

/// A UDP datagram to a destination not yet seen for this socket (one per flow, deduplicated
/// in the kernel).
pub type NetUdpEvent = NetConnectEvent;

/// An accepted inbound TCP connection, in the accepting process's context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetAcceptEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    /// The local address (ours).
    pub local: SockAddr,
    /// The peer.
    pub remote: SockAddr,
    pub fd: i32,
    pub protocol: u32,
}

/// Bytes of a DNS message captured, at most: RFC 1035's classic UDP limit. Larger (EDNS)
/// responses keep their first 512 bytes: the question and the first answers, which is what
/// names a connection; the rest is reported as truncated.
pub const DNS_PAYLOAD_LEN: usize = 512;

/// A UDP datagram from port 53 received by a local socket: a DNS response, parsed in
/// userspace. Captured on cgroup ingress (softirq): there is no process, only the receiving
/// socket's cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetDnsEvent {
    pub header: EventHeader,
    /// cgroup v2 id of the receiving socket (`bpf_skb_cgroup_id`).
    pub cgroup_id: u64,
    /// The resolver (packet source).
    pub src: SockAddr,
    /// The receiver (packet destination).
    pub dst: SockAddr,
    /// Length of the DNS message (UDP payload) on the wire.
    pub msg_len: u32,
    /// Bytes of it in `payload`.
    pub captured: u32,
    pub payload: [u8; DNS_PAYLOAD_LEN],
}

/// Bytes of a Unix socket path (`sizeof(sun_path)` is 108), rounded up to keep records aligned.
pub const UNIX_PATH_LEN: usize = 112;

/// A `connect` to a watched Unix socket (the SPIFFE workload API, a container runtime): who
/// asked a local identity or control plane for something. Only watched paths leave the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetUnixEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    /// `sun_path` as passed to connect (NUL-padded; abstract sockets start with a NUL byte).
    pub path: [u8; UNIX_PATH_LEN],
    /// Bytes of `path` that were passed.
    pub path_len: u32,
    /// The connect's return value: 0 or `-errno`.
    pub ret: i32,
}

/// Key of the watched-Unix-socket map: the exact `sun_path`, NUL-padded.
pub type UnixPathKey = [u8; UNIX_PATH_LEN];

/// Arguments of a connect to a watched Unix socket, kept from entry to exit (tracepoint path).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnixConnectArgs {
    pub path: [u8; UNIX_PATH_LEN],
    pub path_len: u32,
    pub _pad: u32,
}

/// `FileOpenEvent::matched`: matched a path-prefix rule.
pub const WATCH_PREFIX: u32 = 1 << 0;
/// Matched an exact file-name rule.
pub const WATCH_NAME: u32 = 1 << 1;
/// Matched a file-name-prefix rule (`id_*`).
pub const WATCH_NAME_PREFIX: u32 = 1 << 2;
/// Matched a file-name-suffix rule (`*.pem`).
pub const WATCH_NAME_SUFFIX: u32 = 1 << 3;
/// Reported because the path was truncated and prefix rules cannot be decided on its tail.
pub const WATCH_TRUNCATED: u32 = 1 << 4;

/// Key of the path-prefix LPM trie (`WATCH_PREFIXES`), matching `aya`'s LPM key layout with the
/// prefix length in bits first.
pub type PrefixKeyData = [u8; PREFIX_KEY_LEN];
/// Key of the file-name maps, NUL-padded. Suffix rules are stored reversed.
pub type NameKeyData = [u8; NAME_KEY_LEN];

/// Runtime switches kept in the `SETTINGS` array map, which userspace may change while the
/// programs run (rule reloads). Each holds how many rules of one kind are loaded, so the open hook
/// skips the lookups (and the path walk) that cannot match.
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub enum Setting {
    PrefixRules = 0,
    NameRules = 1,
    NamePrefixRules = 2,
    NameSuffixRules = 3,
    /// Number of watched Unix socket paths; 0 skips the connect-path read entirely.
    UnixSockets = 4,
    /// Open dedupe window in ms: a watched open repeating an [`OpenDedupeKey`] reported less
    /// than this long ago is counted, not reported. 0 reports every open.
    OpenDedupeMs = 5,
}
pub const SETTINGS_LEN: u32 = 8;

/// Counters kept per CPU in the `COUNTERS` map, summed by userspace. Indices below
/// [`Counter::FIRST_INFO`] are losses: any non-zero value there is an event the kernel could not
/// deliver.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `bpf_ringbuf_output` failed: the ring buffer was full.
    DropRingbufFull = 0,
    /// A per-CPU scratch buffer was missing (cannot happen unless the map is broken).
    DropNoScratch = 1,
    /// A tracking map was full (watched fds, pending connects, in-flight syscalls).
    DropMapFull = 2,
    /// A kernel read of a field the event needs failed.
    DropReadError = 3,
    /// Events written to the ring buffer.
    Emitted = 8,
    /// Opens inspected by the open hook.
    OpensSeen = 9,
    /// Opens that matched a watch rule.
    OpensMatched = 10,
    /// Paths that were truncated (not a loss: the event was still sent).
    PathsTruncated = 11,
    /// UDP sends suppressed because the flow was already reported.
    UdpDeduped = 12,
    /// Watched opens counted instead of reported (open dedupe).
    OpensDeduped = 13,
}

impl Counter {
    pub const FIRST_INFO: u32 = 8;
    pub const LEN: u32 = 16;
    pub const ALL: [Counter; 10] = [
        Counter::DropRingbufFull,
        Counter::DropNoScratch,
        Counter::DropMapFull,
        Counter::DropReadError,
        Counter::Emitted,
        Counter::OpensSeen,
        Counter::OpensMatched,
        Counter::PathsTruncated,
        Counter::UdpDeduped,
        Counter::OpensDeduped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::DropRingbufFull => "ringbuf_full",
            Counter::DropNoScratch => "no_scratch",
            Counter::DropMapFull => "map_full",
            Counter::DropReadError => "read_error",
            Counter::Emitted => "emitted",
            Counter::OpensSeen => "opens_seen",
            Counter::OpensMatched => "opens_matched",
            Counter::PathsTruncated => "paths_truncated",
            Counter::UdpDeduped => "udp_deduped",
            Counter::OpensDeduped => "opens_deduped",
        }
    }

    pub fn is_drop(self) -> bool {
        (self as u32) < Self::FIRST_INFO
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, have no padding (see the layout tests) and every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for FdKey {}
    unsafe impl aya::Pod for FdState {}
    unsafe impl aya::Pod for OpenDedupeKey {}
    unsafe impl aya::Pod for OpenDedupeState {}
    unsafe impl aya::Pod for KernelOffsets {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    /// Sizes are sums of field sizes: any implicit padding would break these.
    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<EventHeader>(), 16);
        assert_eq!(size_of::<Creds>(), 8 * 4 + 2 * 8 + 2 * 4);
        assert_eq!(size_of::<Namespaces>(), 8 * 4);
        assert_eq!(
            size_of::<TaskInfo>(),
            4 * 4 + 3 * 8 + size_of::<Creds>() + size_of::<Namespaces>() + TTY_LEN + COMM_LEN
        );
        assert_eq!(size_of::<SockAddr>(), 16 + 2 + 2 + 4);
        assert_eq!(
            size_of::<ExecEvent>(),
            16 + size_of::<TaskInfo>() + 8 + 4 * 4 + 2 * 8 + 8
        );
        assert_eq!(size_of::<ForkEvent>(), 16 + size_of::<TaskInfo>() + 16);
        assert_eq!(size_of::<ExitEvent>(), 16 + size_of::<TaskInfo>() + 8);
        assert_eq!(
            size_of::<CredChangeEvent>(),
            16 + size_of::<TaskInfo>() + size_of::<Creds>() + 8
        );
        assert_eq!(
            size_of::<FileOpenEvent>(),
            16 + size_of::<TaskInfo>() + 8 + 3 * 8 + 6 * 4
        );
        assert_eq!(
            size_of::<FileCloseEvent>(),
            16 + size_of::<TaskInfo>() + 8 + 4 * 8
        );
        assert_eq!(size_of::<FdState>(), 6 * 8);
        assert_eq!(size_of::<OpenArgs>(), 16);
        assert_eq!(size_of::<UdpFlowKey>(), 8 + size_of::<SockAddr>());
        assert_eq!(
            size_of::<NetUnixEvent>(),
            16 + size_of::<TaskInfo>() + UNIX_PATH_LEN + 8
        );
        assert_eq!(size_of::<UnixConnectArgs>(), UNIX_PATH_LEN + 8);
        assert_eq!(
            size_of::<NetConnectEvent>(),
            16 + size_of::<TaskInfo>() + 8 + size_of::<SockAddr>() + 8
        );
        assert_eq!(
            size_of::<NetResultEvent>(),
            16 + 8 + 2 * size_of::<SockAddr>() + 8
        );
        assert_eq!(
            size_of::<NetAcceptEvent>(),
            16 + size_of::<TaskInfo>() + 2 * size_of::<SockAddr>() + 8
        );
        assert_eq!(
            size_of::<NetDnsEvent>(),
            16 + 8 + 2 * size_of::<SockAddr>() + 8 + DNS_PAYLOAD_LEN
        );
        assert_eq!(size_of::<KernelOffsets>() % 4, 0);
    }

    #[test]
    fn every_event_kind_round_trips() {
        for kind in [
            EventKind::ProcessExec,
            EventKind::ProcessFork,
            EventKind::ProcessExit,
            EventKind::CredChange,
            EventKind::FileOpen,
            EventKind::FileClose,
            EventKind::NetConnect,
            EventKind::NetConnectResult,
            EventKind::NetUdpSend,
            EventKind::NetAccept,
            EventKind::NetUnixConnect,
            EventKind::NetDns,
        ] {
            assert_eq!(EventKind::from_u32(kind as u32), Some(kind));
        }
        assert_eq!(EventKind::from_u32(0), None);
    }

    #[test]
    fn counters_are_in_range_and_named_once() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert!((*c as u32) < Counter::LEN);
            for other in &Counter::ALL[i + 1..] {
                assert_ne!(c.name(), other.name());
            }
        }
    }
}
