//! Per-CPU scratch buffers. The BPF stack is 512 bytes; records with paths are kilobytes.

use aya_ebpf::maps::lpm_trie::Key;
use sensor_common::{NAME_KEY_LEN, PATH_BUF, PREFIX_KEY_LEN};

/// Size of the record buffer: the largest record is an exec (fixed part + path + file name +
/// argv, each bounded by a mask), well under this.
pub const EVENT_SCRATCH_LEN: usize = 16384;

#[repr(C)]
pub struct EventScratch {
    pub buf: [u8; EVENT_SCRATCH_LEN],
}

/// The path is written backwards from `buf[PATH_BUF]`. `pos` lives here rather than in a register:
/// the verifier tracks a register's exact value on every path and the walk's states would never
/// merge (see KERNEL-NOTES); a value re-read from map memory each step is just "some scalar".
#[repr(C)]
pub struct PathScratch {
    pub pos: u32,
    pub flags: u32,
    /// The walk's cursor, also kept here (read and written volatile) so that the registers at
    /// the loop head hold nothing but the iteration count and every iteration's states merge.
    pub dentry: u64,
    pub vfsmnt: u64,
    pub mnt_root: u64,
    pub root_dentry: u64,
    pub root_mnt: u64,
    /// Twice `PATH_BUF` plus slack: a component (≤255 bytes) or a raw path (≤4095 bytes)
    /// written at a masked position (≤4095) always stays inside, as the verifier must see.
    pub buf: [u8; 2 * PATH_BUF + 256],
    /// LPM key for the prefix rules, filled from the path.
    pub prefix_key: Key<[u8; PREFIX_KEY_LEN]>,
}

#[repr(C)]
pub struct NameScratch {
    /// `WATCH_*` bits found so far for the current open, kept in memory (not a register) so the
    /// path walk that follows is verified once, not once per combination of rule matches.
    pub matched: u32,
    /// Where the file name starts in a raw path (failed opens); in memory for the same reason.
    pub name_start: u32,
    /// Length of that raw path: re-read after the scan, whose `i < len` tests would otherwise
    /// leave a differently-bounded `len` behind on each exit iteration.
    pub raw_len: u32,
    pub _pad: u32,
    /// The file name, NUL-padded (exact rules), and the LPM keys for prefix/suffix rules.
    pub name: [u8; NAME_KEY_LEN],
    pub prefix_key: Key<[u8; NAME_KEY_LEN]>,
    pub suffix_key: Key<[u8; NAME_KEY_LEN]>,
    /// The last `NAME_KEY_LEN` bytes of the name, before reversal.
    pub tail: [u8; NAME_KEY_LEN],
}
