//! Watched-file hooks: opens for reading (matched against the watch rules, path resolved in the
//! kernel), bytes read through the resulting fds, and their close.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{
        bpf_probe_read_user,
        generated::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_user_str},
    },
    programs::TracePointContext,
};
use sensor_common::{
    CLOSE_EXIT, CLOSE_SYSCALL, Counter, EventKind, FdKey, FdState, FileCloseEvent, FileOpenEvent,
    NAME_KEY_LEN, OpenArgs, OpenDedupeKey, OpenDedupeState, PATH_BUF, PATH_TRUNCATED,
    PATH_UNRESOLVED, PREFIX_KEY_LEN, PathInfo, Setting, WATCH_NAME, WATCH_NAME_PREFIX,
    WATCH_NAME_SUFFIX, WATCH_PREFIX, WATCH_TRUNCATED,
};

use crate::{
    emit::{count, header, output},
    kread::{
        at_most, bounded, current_task, fd_to_file, fill_current, off, read, read_ptr, sensor_tgid,
        zero_in_place, zero_words,
    },
    maps::{
        EVENT_SCRATCH, INFLIGHT_READS, NAME_SCRATCH, OPEN_ARGS, OPEN_DEDUPE, PATH_SCRATCH,
        SETTINGS, WATCH_NAME_PREFIXES, WATCH_NAME_SUFFIXES, WATCH_NAMES, WATCH_PREFIXES,
        WATCHED_FDS, WATCHED_FILES,
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
const TP_ARG2: usize = 32;
const TP_RET: usize = 16;
const AT_FDCWD: i32 = -100;

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

/// Matches a file name (`len` bytes at `name`, kernel or map memory) against the name rules,
/// without walking the path: the cheap test, done first. The result is left in `ns.matched`.
#[inline(always)]
fn match_name(ns: *mut NameScratch, name: u64, len: u32) {
    let m = name_rules(ns, name, len);
    unsafe { core::ptr::write_volatile(&raw mut (*ns).matched, m) };
}

#[inline(always)]
fn matched(ns: *mut NameScratch) -> u32 {
    unsafe { core::ptr::read_volatile(&raw const (*ns).matched) }
}

#[inline(always)]
fn name_rules(ns: *mut NameScratch, name: u64, len: u32) -> u32 {
    let exact = setting(Setting::NameRules);
    let prefixes = setting(Setting::NamePrefixRules);
    let suffixes = setting(Setting::NameSuffixRules);
    if exact == 0 && prefixes == 0 && suffixes == 0 {
        return 0;
    }
    let ns = unsafe { &mut *ns };
    if len == 0 || name == 0 {
        return 0;
    }
    let n = if len > NAME_KEY_LEN as u32 {
        NAME_KEY_LEN as u32
    } else {
        len
    };
    zero_words(&raw mut ns.name);
    let ret = unsafe {
        bpf_probe_read_kernel(
            ns.name.as_mut_ptr().cast(),
            at_most(n, NAME_KEY_LEN as u32),
            name as *const _,
        )
    };
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
            bpf_probe_read_kernel(
                ns.tail.as_mut_ptr().cast(),
                at_most(n, NAME_KEY_LEN as u32),
                tail as *const _,
            )
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
            at_most(n, PREFIX_KEY_LEN as u32),
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

/// `syscalls:sys_enter_open`: `open(filename, flags, mode)`.
#[inline(always)]
pub fn open_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let filename: u64 = unsafe { ctx.read_at(TP_ARG0) }?;
    let flags: u64 = unsafe { ctx.read_at(TP_ARG1) }?;
    remember_open(filename, flags as u32, AT_FDCWD)
}

/// `syscalls:sys_enter_openat`: `openat(dfd, filename, flags, mode)`.
#[inline(always)]
pub fn openat_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let dfd: i64 = unsafe { ctx.read_at(TP_ARG0) }?;
    let filename: u64 = unsafe { ctx.read_at(TP_ARG1) }?;
    let flags: u64 = unsafe { ctx.read_at(TP_ARG2) }?;
    remember_open(filename, flags as u32, dfd as i32)
}

/// `syscalls:sys_enter_openat2`: `openat2(dfd, filename, how, size)`; the flags are the first
/// field of the user's `struct open_how`.
#[inline(always)]
pub fn openat2_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let dfd: i64 = unsafe { ctx.read_at(TP_ARG0) }?;
    let filename: u64 = unsafe { ctx.read_at(TP_ARG1) }?;
    let how: u64 = unsafe { ctx.read_at(TP_ARG2) }?;
    let flags = unsafe { bpf_probe_read_user(how as *const u64) }.unwrap_or(0);
    remember_open(filename, flags as u32, dfd as i32)
}

#[inline(always)]
pub fn is_read_open(flags: u32) -> bool {
    flags & O_ACCMODE != O_WRONLY && flags & O_PATH == 0
}

#[inline(always)]
fn remember_open(filename: u64, flags: u32, dfd: i32) -> Result<(), i64> {
    if !is_read_open(flags) {
        return Ok(());
    }
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == sensor_tgid() {
        return Ok(());
    }
    let args = OpenArgs {
        filename,
        flags,
        dfd,
    };
    if OPEN_ARGS.insert(&(pid_tgid as u32), &args, 0).is_err() {
        count(Counter::DropMapFull);
    }
    Ok(())
}

/// `syscalls:sys_exit_{open,openat,openat2}`, successful opens: the new fd's `struct file`
/// gives the canonical path. (Failed opens are [`open_failed_exit`]'s, a separate program so each
/// stays well inside the verifier's budget.)
#[inline(always)]
pub fn open_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let ret: i64 = unsafe { ctx.read_at(TP_RET) }?;
    open_ok(ret, syscall_nr(ctx))
}

#[inline(always)]
fn syscall_nr(ctx: &TracePointContext) -> u32 {
    unsafe { ctx.read_at::<i32>(TP_SYSCALL_NR) }.unwrap_or(-1) as u32
}

/// A finished open (from any hook): `ret` is the fd or `-errno`.
#[inline(always)]
pub fn open_ok(ret: i64, syscall_nr: u32) -> Result<(), i64> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == sensor_tgid() {
        return Ok(());
    }
    count(Counter::OpensSeen);
    if ret < 0 {
        return Ok(());
    }
    let Some((ns, ps)) = open_scratch() else {
        return Ok(());
    };
    let task = current_task();
    let file = fd_to_file(task, ret as u64);
    if file == 0 {
        return Ok(());
    }
    let f_flags = read::<u32>(file, off!(file_f_flags))?;
    if !is_read_open(f_flags) {
        return Ok(());
    }
    let dentry = read_ptr(file, off!(file_f_path_dentry))?;
    let vfsmnt = read_ptr(file, off!(file_f_path_mnt))?;
    let name_len = read::<u32>(dentry, off!(dentry_d_name_len)).unwrap_or(0);
    let name = read_ptr(dentry, off!(dentry_d_name_name)).unwrap_or(0);
    match_name(ns, name, name_len);
    let by_name = matched(ns) != 0;
    if !by_name && setting(Setting::PrefixRules) == 0 {
        return Ok(());
    }
    let window_ns = setting(Setting::OpenDedupeMs) as u64 * 1_000_000;
    // A file watched by name: a repeat inside the window costs one lookup, not the path
    // walk (the inode decides, whatever the path it was opened by). Unwatched opens pay
    // nothing for dedupe: they never get past the walk.
    if by_name && window_ns != 0 {
        let (dev, ino, _) = inode_ids(file);
        if counted_repeat(&dedupe_key(tgid, f_flags, dev, ino), window_ns) {
            return Ok(());
        }
    }
    let (root_dentry, root_mnt) = path::task_root(task);
    path::resolve(ps, dentry, vfsmnt, root_dentry, root_mnt);
    if !decide(ns, ps) {
        return Ok(());
    }
    let (dev, ino, mode) = inode_ids(file);
    let key = dedupe_key(tgid, f_flags, dev, ino);
    // Watched by prefix: known only now.
    if !by_name && window_ns != 0 && counted_repeat(&key, window_ns) {
        return Ok(());
    }
    let repeats = if window_ns != 0 {
        dedupe_window(&key)
    } else {
        0
    };
    // Zeroed first, then filled: a literal with adjacent zero fields becomes a `memset` call.
    let mut slot = core::mem::MaybeUninit::<FdState>::uninit();
    let state = zero_in_place(&mut slot);
    state.file = file;
    state.dev = dev;
    state.ino = ino;
    state.open_boot_ns = header(EventKind::FileOpen, 0).boot_ns;
    let fd_key = FdKey {
        tgid,
        fd: ret as u32,
    };
    if WATCHED_FDS.insert(&fd_key, &*state, 0).is_err()
        || WATCHED_FILES.insert(&file, &fd_key, 0).is_err()
    {
        count(Counter::DropMapFull);
    }
    emit_open(
        syscall_nr,
        ns,
        ps,
        ret,
        f_flags,
        (dev, ino, mode),
        0,
        repeats,
    );
    Ok(())
}

#[inline(always)]
fn dedupe_key(tgid: u32, flags: u32, dev: u64, ino: u64) -> OpenDedupeKey {
    OpenDedupeKey {
        tgid,
        flags,
        dev,
        ino,
    }
}

/// Open dedupe: whether this open repeats `key` less than `window_ns` after its reported
/// open. Then it is only counted: no event, and its fd is not tracked (no close event, no
/// bytes read).
#[inline(always)]
fn counted_repeat(key: &OpenDedupeKey, window_ns: u64) -> bool {
    let Some(state) = OPEN_DEDUPE.get_ptr_mut(key) else {
        return false;
    };
    let start = unsafe { core::ptr::read_volatile(&raw const (*state).window_start_ns) };
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if now.wrapping_sub(start) >= window_ns {
        return false;
    }
    // Threads of one process may open the same file on several CPUs at once.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*state).repeats, 1) };
    count(Counter::OpensDeduped);
    true
}

/// Open dedupe of a watched open that is reported: starts the key's window and returns its
/// running total of counted opens (low 32 bits) for the event; 0 for a new key.
#[inline(always)]
fn dedupe_window(key: &OpenDedupeKey) -> u32 {
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if let Some(state) = OPEN_DEDUPE.get_ptr_mut(key) {
        unsafe { core::ptr::write_volatile(&raw mut (*state).window_start_ns, now) };
        return unsafe { core::ptr::read_volatile(&raw const (*state).repeats) } as u32;
    }
    let state = OpenDedupeState {
        window_start_ns: now,
        repeats: 0,
    };
    // A failed insert only means the next open is reported again.
    let _ = OPEN_DEDUPE.insert(key, &state, 0);
    0
}

/// The name and path scratch buffers of the open handlers.
#[inline(always)]
fn open_scratch() -> Option<(*mut NameScratch, *mut PathScratch)> {
    let (Some(ns), Some(ps)) = (NAME_SCRATCH.get_ptr_mut(0), PATH_SCRATCH.get_ptr_mut(0)) else {
        count(Counter::DropNoScratch);
        return None;
    };
    Some((ns, ps))
}

/// Where the raw path of a failed open is staged in the record scratch: past any open record's
/// fixed part and path, so building the record cannot overwrite it before it is copied.
const RAW_AT: usize = PATH_BUF;
const POS_MASK: u32 = PATH_BUF as u32 - 1;

/// `syscalls:sys_exit_{open,openat,openat2}`, failed opens of watched paths (permission
/// denied on a credential is a signal in itself). The path is the string the process passed; a
/// relative one is joined to the directory it was relative to (working directory or `dfd`),
/// which is resolved in the kernel like any path.
#[inline(always)]
pub fn open_failed_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    let Some(args) = (unsafe { OPEN_ARGS.get(&tid) }).copied() else {
        return Ok(());
    };
    let _ = OPEN_ARGS.remove(&tid);
    let ret: i64 = unsafe { ctx.read_at(TP_RET) }?;
    open_failed(&args, ret, syscall_nr(ctx))
}

/// A failed open (from any hook), with the arguments the process passed.
#[inline(always)]
pub fn open_failed(args: &OpenArgs, ret: i64, syscall_nr: u32) -> Result<(), i64> {
    if ret >= 0 || !is_read_open(args.flags) {
        return Ok(());
    }
    if (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32 == sensor_tgid() {
        return Ok(());
    }
    let Some((ns, ps)) = open_scratch() else {
        return Ok(());
    };
    let task = current_task();
    let Some(es) = EVENT_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return Ok(());
    };
    let raw = unsafe { (es as *mut u8).add(RAW_AT) };
    let n =
        unsafe { bpf_probe_read_user_str(raw.cast(), PATH_BUF as u32, args.filename as *const _) };
    if n <= 1 {
        return Ok(());
    }
    unsafe { core::ptr::write_volatile(&raw mut (*ns).raw_len, (n as u32 - 1) & POS_MASK) };
    // The file name: what follows the last '/' (a name is at most 255 bytes).
    // The scan's result goes through memory: a register would carry one exact value per exit
    // iteration into everything below, and the verifier would walk the path 256 times.
    unsafe { core::ptr::write_volatile(&raw mut (*ns).name_start, 0) };
    for i in 0..256u32 {
        // `len` re-read from memory each time, so LLVM cannot fold the two bounds into one
        // derived counter the verifier would have to step through thousands of times.
        let len = unsafe { core::ptr::read_volatile(&raw const (*ns).raw_len) } & POS_MASK;
        if i >= len {
            break;
        }
        let at = bounded(len - 1 - i, POS_MASK);
        if unsafe { *raw.add(at as usize) } == b'/' {
            unsafe { core::ptr::write_volatile(&raw mut (*ns).name_start, at + 1) };
            break;
        }
    }
    let name_start = unsafe { core::ptr::read_volatile(&raw const (*ns).name_start) } & POS_MASK;
    let len = unsafe { core::ptr::read_volatile(&raw const (*ns).raw_len) } & POS_MASK;
    let name_len = len.saturating_sub(name_start);
    match_name(ns, unsafe { raw.add(name_start as usize) } as u64, name_len);
    if matched(ns) == 0 && setting(Setting::PrefixRules) == 0 {
        return Ok(());
    }
    if !path::start_raw(ps, raw, len) {
        return Ok(());
    }
    if unsafe { *raw } != b'/' && path::prepend_slash(ps) {
        let (dentry, vfsmnt) = if args.dfd == AT_FDCWD {
            path::task_pwd(task)
        } else {
            let dir = fd_to_file(task, args.dfd as u64);
            (
                read_ptr(dir, off!(file_f_path_dentry)).unwrap_or(0),
                read_ptr(dir, off!(file_f_path_mnt)).unwrap_or(0),
            )
        };
        let (root_dentry, root_mnt) = path::task_root(task);
        path::walk(ps, dentry, vfsmnt, root_dentry, root_mnt);
    }
    path::flag(ps, PATH_UNRESOLVED);
    if !decide(ns, ps) {
        return Ok(());
    }
    let requested = unsafe { core::ptr::read_volatile(&raw const (*ns).raw_len) } & POS_MASK;
    emit_open(syscall_nr, ns, ps, ret, args.flags, (0, 0, 0), requested, 0);
    Ok(())
}

/// Final decision for a resolved path: name matches, else prefix rules, else a truncated path
/// (whose head, and so its prefix, is unknown). Leaves the verdict in `ns.matched`.
#[inline(always)]
fn decide(ns: *mut NameScratch, ps: *mut PathScratch) -> bool {
    let path_flags = unsafe { (*ps).flags };
    let mut m = matched(ns);
    if m == 0 {
        m = match_prefix(ps);
        if m == 0 && path_flags & PATH_TRUNCATED != 0 {
            m = WATCH_TRUNCATED;
        }
    }
    unsafe { core::ptr::write_volatile(&raw mut (*ns).matched, m) };
    if m == 0 {
        return false;
    }
    count(Counter::OpensMatched);
    if path_flags & PATH_TRUNCATED != 0 {
        count(Counter::PathsTruncated);
    }
    true
}

/// Builds and sends a `FileOpenEvent` for the path in `ps`. `inode` is (dev, ino, mode), zeros
/// when the open failed.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "every field of the event; a struct would be one more copy on the BPF stack"
)]
fn emit_open(
    syscall_nr: u32,
    ns: *mut NameScratch,
    ps: *mut PathScratch,
    ret: i64,
    open_flags: u32,
    inode: (u64, u64, u32),
    requested_len: u32,
    repeats: u32,
) {
    let Some(buf) = EVENT_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return;
    };
    let len = path::len(ps);
    let fixed = core::mem::size_of::<FileOpenEvent>();
    let ev = unsafe { &mut *(buf as *mut FileOpenEvent) };
    ev.header = header(EventKind::FileOpen, fixed + len as usize);
    fill_current(&mut ev.task);
    ev.path = PathInfo {
        len,
        flags: unsafe { (*ps).flags },
    };
    ev.ret = ret;
    unsafe {
        core::ptr::write_volatile(&raw mut ev.dev, inode.0);
        core::ptr::write_volatile(&raw mut ev.ino, inode.1);
        core::ptr::write_volatile(&raw mut ev.mode, inode.2);
    }
    ev.open_flags = open_flags;
    ev.syscall_nr = syscall_nr;
    ev.requested_len = requested_len;
    ev.repeats = repeats;
    ev.matched = matched(ns);
    let dst = unsafe { (buf as *mut u8).add(fixed) };
    let src = unsafe {
        (&raw const (*ps).buf)
            .cast::<u8>()
            .add(path::start(ps) as usize)
    };
    let copied = unsafe { bpf_probe_read_kernel(dst.cast(), bounded(len, POS_MASK), src.cast()) };
    if copied < 0 {
        count(Counter::DropReadError);
        return;
    }
    output(
        buf as *const u8,
        (fixed as u32 + bounded(len, POS_MASK)) as u64,
    );
}

/// `syscalls:sys_enter_*` of the syscalls that read from an fd: remember reads on watched fds.
/// `fd_arg` is the record offset of the source fd argument.
#[inline(always)]
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
#[inline(always)]
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
    add_bytes(&key, ret as u64);
    Ok(())
}

/// A read of `ret` bytes through `file`, seen by a hook that has the `struct file` but not the
/// fd (`fexit` on the VFS read functions).
#[inline(always)]
pub fn file_read(file: u64, ret: i64) {
    if ret <= 0 {
        return;
    }
    if let Some(key) = unsafe { WATCHED_FILES.get(&file) }.copied() {
        add_bytes(&key, ret as u64);
    }
}

#[inline(always)]
fn add_bytes(key: &FdKey, ret: u64) {
    if let Some(state) = WATCHED_FDS.get_ptr_mut(key) {
        // Threads of one process may read the same fd on several CPUs at once.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*state).bytes_read, ret);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*state).reads, 1);
        }
    }
}

/// `syscalls:sys_enter_close`: report a watched fd's totals and forget it.
#[inline(always)]
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
    let _ = WATCHED_FILES.remove(&state.file);
    if state.file != fd_to_file(current_task(), fd) {
        return Ok(());
    }
    emit_close(&key, &state, CLOSE_SYSCALL);
    Ok(())
}

/// `filp_close(file, owner)` (fentry): an fd of `file` is being closed, by `close` or because
/// the process exits (`PF_EXITING`).
#[inline(always)]
pub fn file_closing(file: u64) {
    let Some(key) = unsafe { WATCHED_FILES.get(&file) }.copied() else {
        return;
    };
    let _ = WATCHED_FILES.remove(&file);
    let Some(state) = (unsafe { WATCHED_FDS.get(&key) }).copied() else {
        return;
    };
    let _ = WATCHED_FDS.remove(&key);
    let flags = read::<u32>(current_task(), off!(task_flags)).unwrap_or(0);
    let reason = if flags & PF_EXITING != 0 {
        CLOSE_EXIT
    } else {
        CLOSE_SYSCALL
    };
    emit_close(&key, &state, reason);
}

/// `task_struct.flags`: the task is exiting.
const PF_EXITING: u32 = 0x4;

#[inline(always)]
fn emit_close(key: &FdKey, state: &FdState, reason: u32) {
    let Some(buf) = EVENT_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return;
    };
    let ev = unsafe { &mut *(buf as *mut FileCloseEvent) };
    ev.header = header(EventKind::FileClose, core::mem::size_of::<FileCloseEvent>());
    fill_current(&mut ev.task);
    ev.fd = key.fd as i32;
    ev.reason = reason;
    ev.bytes_read = state.bytes_read;
    ev.reads = state.reads;
    ev.dev = state.dev;
    ev.ino = state.ino;
    output(
        buf as *const u8,
        core::mem::size_of::<FileCloseEvent>() as u64,
    );
}
