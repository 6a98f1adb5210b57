//! Every map the programs use, in one place. Sizes are defaults; userspace may resize the ring
//! buffer at load time (`EbpfLoader::map_max_entries`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use sensor_common::{
    Counter, Creds, FdKey, FdState, NameKeyData, NetDnsEvent, NetResultEvent, OpenArgs,
    OpenDedupeKey, OpenDedupeState, PrefixKeyData, SETTINGS_LEN, UdpFlowKey, UnixConnectArgs,
    UnixPathKey,
};

use crate::scratch::{EventScratch, NameScratch, PathScratch};

/// Every record for userspace. 8 MiB holds ~30,000 typical events (or ~2,000 with long paths)
/// while userspace is busy; userspace drains it continuously from a dedicated task.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Per-CPU counters indexed by [`Counter`]; summed and reported by userspace.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::LEN, 0);

/// Rule counts by kind (`Setting`), written by userspace.
#[map]
pub static SETTINGS: Array<u32> = Array::with_max_entries(SETTINGS_LEN, 0);

/// Watched path prefixes (absolute, as the process sees them) → rule id.
#[map]
pub static WATCH_PREFIXES: LpmTrie<PrefixKeyData, u32> = LpmTrie::with_max_entries(4096, 0);

/// Watched exact file names (NUL-padded) → rule id.
#[map]
pub static WATCH_NAMES: HashMap<NameKeyData, u32> = HashMap::with_max_entries(4096, 0);

/// Watched file-name prefixes (`id_` for `id_*`) → rule id.
#[map]
pub static WATCH_NAME_PREFIXES: LpmTrie<NameKeyData, u32> = LpmTrie::with_max_entries(1024, 0);

/// Watched file-name suffixes, stored reversed (`mep.` for `*.pem`) → rule id.
#[map]
pub static WATCH_NAME_SUFFIXES: LpmTrie<NameKeyData, u32> = LpmTrie::with_max_entries(1024, 0);

/// Open watched file descriptors and the bytes read through them. Entries leave on `close`, or
/// are collected by userspace when the process exits. 16,384 concurrent open watched fds is far
/// beyond what credential files see; a full map is counted as `map_full`.
#[map]
pub static WATCHED_FDS: HashMap<FdKey, FdState> = HashMap::with_max_entries(16384, 0);

/// Open dedupe: (process, inode, flags) of reported watched opens → window and count of the
/// opens counted instead of reported. LRU: a process re-reading many files pushes out the
/// oldest keys, whose next open is then simply reported again. 16,384 keys is far more than
/// the credential files processes hold in a window; userspace removes a process's keys when it
/// exits or execs.
#[map]
pub static OPEN_DEDUPE: LruHashMap<OpenDedupeKey, OpenDedupeState> =
    LruHashMap::with_max_entries(16384, 0);

/// Thread id → arguments of an open syscall in flight (for reporting failed opens).
#[map]
pub static OPEN_ARGS: LruHashMap<u32, OpenArgs> = LruHashMap::with_max_entries(8192, 0);

/// `struct file *` → its watched fd: lets hooks that see the file but not the fd (fexit on the
/// VFS read functions, fentry on `filp_close`) find the fd's counters.
#[map]
pub static WATCHED_FILES: HashMap<u64, FdKey> = HashMap::with_max_entries(16384, 0);

/// Thread id → fd of a read syscall in flight on a watched fd.
#[map]
pub static INFLIGHT_READS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(8192, 0);

/// Thread id → credentials before a set*id/capset/setgroups syscall.
#[map]
pub static CRED_SNAPSHOTS: LruHashMap<u32, Creds> = LruHashMap::with_max_entries(4096, 0);

/// Socket cookies of TCP connects whose outcome is still unknown.
#[map]
pub static PENDING_CONNECTS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

/// Thread id → socket cookie of a `connect` syscall in flight (synchronous failures).
#[map]
pub static CONNECT_SYSCALLS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(8192, 0);

/// Watched Unix socket paths (exact `sun_path`, NUL-padded) → rule id.
#[map]
pub static WATCH_SOCKETS: HashMap<UnixPathKey, u32> = HashMap::with_max_entries(1024, 0);

/// Thread id → a connect to a watched Unix socket in flight (tracepoint path).
#[map]
pub static UNIX_CONNECTS: LruHashMap<u32, UnixConnectArgs> = LruHashMap::with_max_entries(4096, 0);

/// Per-CPU buffer for reading a connect's socket address.
#[map]
pub static UNIX_SCRATCH: PerCpuArray<UnixConnectArgs> = PerCpuArray::with_max_entries(1, 0);

/// UDP flows already reported. LRU: a flow evicted and seen again is reported again.
#[map]
pub static UDP_FLOWS: LruHashMap<UdpFlowKey, u32> = LruHashMap::with_max_entries(65536, 0);

/// Per-CPU scratch space: records are assembled here, not on the 512-byte stack.
#[map]
pub static EVENT_SCRATCH: PerCpuArray<EventScratch> = PerCpuArray::with_max_entries(1, 0);

/// Scratch for connect outcomes, which may be produced in softirq context on top of a program
/// that is using `EVENT_SCRATCH` on the same CPU.
#[map]
pub static RESULT_SCRATCH: PerCpuArray<NetResultEvent> = PerCpuArray::with_max_entries(1, 0);

/// Scratch for DNS responses: built in softirq context, possibly on top of a program using
/// another scratch on the same CPU, and too large for the stack.
#[map]
pub static DNS_SCRATCH: PerCpuArray<NetDnsEvent> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static PATH_SCRATCH: PerCpuArray<PathScratch> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static NAME_SCRATCH: PerCpuArray<NameScratch> = PerCpuArray::with_max_entries(1, 0);
