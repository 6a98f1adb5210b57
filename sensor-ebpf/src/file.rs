//! Watched-file hooks: opens for reading (matched against the watch rules, path resolved in the
//! kernel), bytes read through the resulting fds, and their close.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{helpers::generated::bpf_probe_read_kernel, programs::TracePointContext};
use sensor_common::{
    CLOSE_SYSCALL, Counter, EventKind, FdKey, FdState, FileCloseEvent, FileOpenEvent, NAME_KEY_LEN,
    PATH_TRUNCATED, PREFIX_KEY_LEN, PathInfo, Setting, WATCH_NAME, WATCH_NAME_PREFIX,
    WATCH_NAME_SUFFIX, WATCH_PREFIX, WATCH_TRUNCATED,
};

use crate::{
    emit::{count, header, output},
    kread::{current_task, fd_to_file, fill_current, off, read, read_ptr, sensor_tgid},
    maps::{
        EVENT_SCRATCH, INFLIGHT_READS, NAME_SCRATCH, PATH_SCRATCH, SETTINGS, WATCH_NAME_PREFIXES,
        WATCH_NAME_SUFFIXES, WATCH_NAMES, WATCH_PREFIXES, WATCHED_FDS,
    },
    path,
    scratch::{NameScratch, PathScratch},
};

const O_ACCMODE: u32 = 0o3;
const O_WRONLY: u32 = 0o1;
const O_PATH: u32 = 0o10000000;
/// Offsets in the `syscalls:sys_{enter,exit}_*` tracepoint records.
const TP_SYSCALL_NR: usize = 8;
pub const TP_ARG0: usize = 16;
pub const TP_ARG1: usize = 24;
const TP_RET: usize = 16;

#[inline(always)]
fn setting(s: Setting) -> u32 {
    SETTINGS.get(s as u32).copied().unwrap_or(0)
}

#[inline(always)]
fn inode_ids(file: u64) -> (u64, u64, u32) {
    let inode = read_ptr(file, off!(file_f_inode)).unwrap_or(0);
    let ino = read::<u64>(inode, off!(inode_i_ino)).unwrap_or(0);
    let mode = read::<u16>(inode, off!(inode_i_mode)).unwrap_or(0) as u32;
    let sb = read_ptr(inode, off!(inode_i_sb)).unwrap_or(0);
    let dev = read::<u32>(sb, off!(sb_s_dev)).unwrap_or(0) as u64;
    (dev, ino, mode)
}

/// Matches the opened file's name (its last path component) against the name rules, without
/// walking the path: the cheap test, done first. The result is left in `ns.matched`.
#[inline(always)]
fn match_name(ns: *mut NameScratch, dentry: u64) {
    let m = name_rules(ns, dentry);
    unsafe { core::ptr::write_volatile(&raw mut (*ns).matched, m) };
}

#[inline(always)]
fn name_rules(ns: *mut NameScratch, dentry: u64) -> u32 {
    let exact = setting(Setting::NameRules);
    let prefixes = setting(Setting::NamePrefixRules);
    let suffixes = setting(Setting::NameSuffixRules);
    if exact == 0 && prefixes == 0 && suffixes == 0 {
        return 0;
    }
    let ns = unsafe { &mut *ns };
    let len = read::<u32>(dentry, off!(dentry_d_name_len)).unwrap_or(0);
    let Ok(name) = read_ptr(dentry, off!(dentry_d_name_name)) else {
        return 0;
    };
    if len == 0 {
        return 0;
    }
    let n = if len > NAME_KEY_LEN as u32 {
        NAME_KEY_LEN as u32
    } else {
        len
    };
    ns.name = [0; NAME_KEY_LEN];
    let ret =
        unsafe { bpf_probe_read_kernel(ns.name.as_mut_ptr().cast(), n & 0x7f, name as *const _) };
    if ret < 0 {
        return 0;
    }
    let mut matched = 0;
    if exact != 0 && len < NAME_KEY_LEN as u32 && unsafe { WATCH_NAMES.get(&ns.name) }.is_some() {
        matched |= WATCH_NAME;
    }
    if prefixes != 0 {
        ns.prefix_key.prefix_len = n * 8;
        ns.prefix_key.data = ns.name;
        if WATCH_NAME_PREFIXES.get(&ns.prefix_key).is_some() {
            matched |= WATCH_NAME_PREFIX;
        }
    }
    if suffixes != 0 {
        // The last `n` bytes, reversed, so a suffix rule becomes a prefix match.
        let tail = name + (len - n) as u64;
        let ret = unsafe {
            bpf_probe_read_kernel(ns.tail.as_mut_ptr().cast(), n & 0x7f, tail as *const _)
        };
        if ret == 0 {
            for i in 0..NAME_KEY_LEN as u32 {
                if i >= n {
                    break;
                }
                ns.suffix_key.data[(i & 0x3f) as usize] = ns.tail[((n - 1 - i) & 0x3f) as usize];
            }
            ns.suffix_key.prefix_len = n * 8;
            if WATCH_NAME_SUFFIXES.get(&ns.suffix_key).is_some() {
                matched |= WATCH_NAME_SUFFIX;
            }
        }
    }
    matched
}

/// Matches the resolved path against the prefix rules.
#[inline(always)]
fn match_prefix(ps: *mut PathScratch) -> u32 {
    let len = path::len(ps);
    let n = if len > PREFIX_KEY_LEN as u32 {
        PREFIX_KEY_LEN as u32
    } else {
        len
    };
    let start = path::start(ps);
    let ret = unsafe {
        bpf_probe_read_kernel(
            (&raw mut (*ps).prefix_key.data).cast(),
            n & 0x1ff,
            (&raw const (*ps).buf)
                .cast::<u8>()
                .add(start as usize)
                .cast(),
        )
    };
    if ret < 0 {
        return 0;
    }
    unsafe { (*ps).prefix_key.prefix_len = n * 8 };
    if WATCH_PREFIXES.get(unsafe { &(*ps).prefix_key }).is_some() {
        WATCH_PREFIX
    } else {
        0
    }
}

/// `syscalls:sys_exit_{open,openat,openat2}`: the open has succeeded or failed; on success the
/// new fd's `struct file` is in the fd table.
pub fn open_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == sensor_tgid() {
        return Ok(());
    }
    count(Counter::OpensSeen);
    let ret: i64 = unsafe { ctx.read_at(TP_RET) }?;
    if ret < 0 {
        return Ok(());
    }
    let task = current_task();
    let file = fd_to_file(task, ret as u64);
    if file == 0 {
        return Ok(());
    }
    let f_flags = read::<u32>(file, off!(file_f_flags))?;
    if f_flags & O_ACCMODE == O_WRONLY || f_flags & O_PATH != 0 {
        return Ok(());
    }
    let dentry = read_ptr(file, off!(file_f_path_dentry))?;
    let vfsmnt = read_ptr(file, off!(file_f_path_mnt))?;
    let Some(ns) = NAME_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return Ok(());
    };
    let Some(ps) = PATH_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return Ok(());
    };
    match_name(ns, dentry);
    if unsafe { core::ptr::read_volatile(&raw const (*ns).matched) } == 0
        && setting(Setting::PrefixRules) == 0
    {
        return Ok(());
    }
    let (root_dentry, root_mnt) = path::task_root(task);
    path::resolve(ps, dentry, vfsmnt, root_dentry, root_mnt);
    let path_flags = unsafe { (*ps).flags };
    let mut matched = unsafe { core::ptr::read_volatile(&raw const (*ns).matched) };
    if matched == 0 {
        matched = match_prefix(ps);
        if matched == 0 && path_flags & PATH_TRUNCATED != 0 {
            // The head of the path is gone, so prefix rules cannot be decided: report it.
            matched = WATCH_TRUNCATED;
        }
    }
    if matched == 0 {
        return Ok(());
    }
    count(Counter::OpensMatched);
    if path_flags & PATH_TRUNCATED != 0 {
        count(Counter::PathsTruncated);
    }
    let (dev, ino, mode) = inode_ids(file);
    let boot_ns = header(EventKind::FileOpen, 0).boot_ns;
    let key = FdKey {
        tgid,
        fd: ret as u32,
    };
    let state = FdState {
        file,
        bytes_read: 0,
        reads: 0,
        dev,
        ino,
        open_boot_ns: boot_ns,
    };
    if WATCHED_FDS.insert(&key, &state, 0).is_err() {
        count(Counter::DropMapFull);
    }

    let Some(buf) = EVENT_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return Ok(());
    };
    let len = path::len(ps);
    let fixed = core::mem::size_of::<FileOpenEvent>();
    let ev = unsafe { &mut *(buf as *mut FileOpenEvent) };
    ev.header = header(EventKind::FileOpen, fixed + len as usize);
    fill_current(&mut ev.task);
    ev.path = PathInfo {
        len,
        flags: path_flags,
    };
    ev.ret = ret;
    ev.dev = dev;
    ev.ino = ino;
    ev.open_flags = f_flags;
    ev.mode = mode;
    ev.syscall_nr = unsafe { ctx.read_at::<i32>(TP_SYSCALL_NR) }.unwrap_or(-1) as u32;
    ev.matched = matched;
    let dst = unsafe { (buf as *mut u8).add(fixed) };
    let src = unsafe {
        (&raw const (*ps).buf)
            .cast::<u8>()
            .add(path::start(ps) as usize)
    };
    let copied = unsafe { bpf_probe_read_kernel(dst.cast(), len & 0xfff, src.cast()) };
    if copied < 0 {
        count(Counter::DropReadError);
        return Ok(());
    }
    output(buf as *const u8, (fixed as u32 + (len & 0xfff)) as u64);
    Ok(())
}

/// `syscalls:sys_enter_*` of the syscalls that read from an fd: remember reads on watched fds.
/// `fd_arg` is the record offset of the source fd argument.
pub fn read_enter(ctx: &TracePointContext, fd_arg: usize) -> Result<(), i64> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let fd: u64 = unsafe { ctx.read_at(fd_arg) }?;
    let key = FdKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: fd as u32,
    };
    let Some(state) = WATCHED_FDS.get_ptr(&key) else {
        return Ok(());
    };
    // The fd number may have been reused for another file (closed by exec or close_range).
    if unsafe { (*state).file } != fd_to_file(current_task(), fd) {
        return Ok(());
    }
    if INFLIGHT_READS
        .insert(&(pid_tgid as u32), &(fd as u32), 0)
        .is_err()
    {
        count(Counter::DropMapFull);
    }
    Ok(())
}

/// `syscalls:sys_exit_{read,...}`: add the bytes read to the fd's counters.
pub fn read_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let Some(fd) = (unsafe { INFLIGHT_READS.get(&tid) }).copied() else {
        return Ok(());
    };
    let _ = INFLIGHT_READS.remove(&tid);
    let ret: i64 = unsafe { ctx.read_at(TP_RET) }?;
    if ret <= 0 {
        return Ok(());
    }
    let key = FdKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    };
    if let Some(state) = WATCHED_FDS.get_ptr_mut(&key) {
        // Threads of one process may read the same fd on several CPUs at once.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                &raw mut (*state).bytes_read,
                ret as u64,
            );
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*state).reads, 1);
        }
    }
    Ok(())
}

/// `syscalls:sys_enter_close`: report a watched fd's totals and forget it.
pub fn close_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let fd: u64 = unsafe { ctx.read_at(TP_ARG0) }?;
    let key = FdKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: fd as u32,
    };
    let Some(state) = (unsafe { WATCHED_FDS.get(&key) }).copied() else {
        return Ok(());
    };
    let _ = WATCHED_FDS.remove(&key);
    if state.file != fd_to_file(current_task(), fd) {
        return Ok(());
    }
    let Some(buf) = EVENT_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return Ok(());
    };
    let ev = unsafe { &mut *(buf as *mut FileCloseEvent) };
    ev.header = header(EventKind::FileClose, core::mem::size_of::<FileCloseEvent>());
    fill_current(&mut ev.task);
    ev.fd = fd as i32;
    ev.reason = CLOSE_SYSCALL;
    ev.bytes_read = state.bytes_read;
    ev.reads = state.reads;
    ev.dev = state.dev;
    ev.ino = state.ino;
    output(
        buf as *const u8,
        core::mem::size_of::<FileCloseEvent>() as u64,
    );
    Ok(())
}
