//! Canonical absolute paths, resolved in the kernel from a `struct path` (dentry + vfsmount): the
//! walk follows `d_parent` up to the process's root (`task->fs->root`), crossing mounts through
//! `struct mount`, so relative opens, `..` and symlinks all give the real path as the process's
//! own root sees it (a container's view inside a container).
//!
//! Verifier cost: every piece of walk state lives in the per-CPU scratch value and is accessed
//! with volatile reads and writes. To the verifier those are "some scalar", so the states of one
//! iteration's branches are equivalent at the loop head and the cost grows linearly with the
//! depth bound (KERNEL-NOTES: a register-held position made states explode).

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;
use sensor_common::{PATH_BUF, PATH_DETACHED, PATH_MAX_DEPTH, PATH_READ_ERROR, PATH_TRUNCATED};

use crate::{
    kread::{bounded, off, read, read_ptr},
    scratch::PathScratch,
};

/// Mask for a position in the path buffer (`PATH_BUF` is a power of two).
const POS_MASK: u32 = PATH_BUF as u32 - 1;
/// Mask for a name length: `NAME_MAX` is 255.
const NAME_MASK: u32 = 0xff;

macro_rules! get {
    ($s:expr, $f:ident) => {
        unsafe { core::ptr::read_volatile(&raw const (*$s).$f) }
    };
}
macro_rules! set {
    ($s:expr, $f:ident, $v:expr) => {{
        let v = $v;
        unsafe { core::ptr::write_volatile(&raw mut (*$s).$f, v) }
    }};
}

#[inline(always)]
fn add_flags(s: *mut PathScratch, f: u32) {
    set!(s, flags, get!(s, flags) | f);
}

/// Prepends `/name` to the path. Returns false when it does not fit (the path is truncated).
#[inline(always)]
fn prepend(s: *mut PathScratch, name: u64, len: u32) -> bool {
    let len = bounded(len, NAME_MASK);
    let cur = get!(s, pos);
    // Strictly greater: keep at least one byte for the leading '/' and never reach position 0,
    // so a path is at most PATH_BUF - 1 bytes and its length fits the POS_MASK everywhere.
    if cur <= len + 1 {
        add_flags(s, PATH_TRUNCATED);
        return false;
    }
    let start = bounded(cur - len, POS_MASK);
    let len = bounded(len, NAME_MASK);
    let ret = unsafe {
        bpf_probe_read_kernel(
            (&raw mut (*s).buf).cast::<u8>().add(start as usize).cast(),
            len,
            name as *const core::ffi::c_void,
        )
    };
    if ret < 0 {
        add_flags(s, PATH_READ_ERROR);
        return false;
    }
    let slash = bounded(cur - len - 1, POS_MASK);
    unsafe { (*s).buf[slash as usize] = b'/' };
    set!(s, pos, cur - len - 1);
    true
}

/// One step up the tree. Returns true when the walk is over.
#[inline(always)]
fn step(s: *mut PathScratch) -> bool {
    let dentry = get!(s, dentry);
    let vfsmnt = get!(s, vfsmnt);
    if dentry == get!(s, root_dentry) && vfsmnt == get!(s, root_mnt) {
        return true;
    }
    if dentry == get!(s, mnt_root) {
        // At the root of this mount: continue from where it is mounted, in the parent mount.
        let mnt = vfsmnt - off!(mount_mnt);
        let Ok(parent) = read_ptr(mnt, off!(mount_mnt_parent)) else {
            add_flags(s, PATH_READ_ERROR);
            return true;
        };
        if parent == mnt {
            // The global root, and not the process's root: the file is outside it.
            add_flags(s, PATH_DETACHED);
            return true;
        }
        let parent_vfsmnt = parent + off!(mount_mnt);
        set!(
            s,
            dentry,
            read_ptr(mnt, off!(mount_mnt_mountpoint)).unwrap_or(0)
        );
        set!(s, vfsmnt, parent_vfsmnt);
        set!(
            s,
            mnt_root,
            read_ptr(parent_vfsmnt, off!(vfsmount_mnt_root)).unwrap_or(0)
        );
        return false;
    }
    let Ok(parent) = read_ptr(dentry, off!(dentry_d_parent)) else {
        add_flags(s, PATH_READ_ERROR);
        return true;
    };
    if parent == dentry {
        // A filesystem root that is not a mount root we know (internal or detached mount).
        add_flags(s, PATH_DETACHED);
        return true;
    }
    let len = read::<u32>(dentry, off!(dentry_d_name_len)).unwrap_or(0);
    let name = read_ptr(dentry, off!(dentry_d_name_name)).unwrap_or(0);
    if len != 0 && !prepend(s, name, len) {
        return true;
    }
    set!(s, dentry, parent);
    false
}

/// Resolves `dentry`/`vfsmnt` into `s.buf[s.pos..PATH_BUF]`, relative to the root
/// `root_dentry`/`root_mnt`. Sets `PATH_*` flags in `s.flags`.
#[inline(always)]
pub fn resolve(s: *mut PathScratch, dentry: u64, vfsmnt: u64, root_dentry: u64, root_mnt: u64) {
    set!(s, pos, PATH_BUF as u32);
    set!(s, flags, 0);
    walk(s, dentry, vfsmnt, root_dentry, root_mnt);
}

/// Prepends the path of `dentry`/`vfsmnt` to what `s` already holds.
#[inline(always)]
pub fn walk(s: *mut PathScratch, dentry: u64, vfsmnt: u64, root_dentry: u64, root_mnt: u64) {
    set!(s, dentry, dentry);
    set!(s, vfsmnt, vfsmnt);
    set!(s, root_dentry, root_dentry);
    set!(s, root_mnt, root_mnt);
    set!(
        s,
        mnt_root,
        read_ptr(vfsmnt, off!(vfsmount_mnt_root)).unwrap_or(0)
    );
    let mut finished = false;
    for _ in 0..PATH_MAX_DEPTH {
        if step(s) {
            finished = true;
            break;
        }
    }
    if !finished {
        add_flags(s, PATH_TRUNCATED);
    }
    if get!(s, pos) == PATH_BUF as u32 {
        // The root itself.
        unsafe { (*s).buf[PATH_BUF - 1] = b'/' };
        set!(s, pos, PATH_BUF as u32 - 1);
    }
}

/// Starts a path from `len` raw bytes at `src` (kernel or map memory): the string a process
/// passed to a syscall. Returns false if it cannot be copied.
#[inline(always)]
pub fn start_raw(s: *mut PathScratch, src: *const u8, len: u32) -> bool {
    let len = bounded(len, POS_MASK);
    if len == 0 {
        return false;
    }
    let pos = bounded(PATH_BUF as u32 - len, POS_MASK);
    let len = bounded(len, POS_MASK);
    let ret = unsafe {
        bpf_probe_read_kernel(
            (&raw mut (*s).buf).cast::<u8>().add(pos as usize).cast(),
            len,
            src.cast(),
        )
    };
    if ret < 0 {
        return false;
    }
    set!(s, pos, pos);
    set!(s, flags, 0);
    true
}

/// Prepends a `/` (joining a relative path to the directory walked next).
#[inline(always)]
pub fn prepend_slash(s: *mut PathScratch) -> bool {
    let cur = get!(s, pos);
    if cur <= 1 {
        add_flags(s, PATH_TRUNCATED);
        return false;
    }
    let at = bounded(cur - 1, POS_MASK);
    unsafe { (*s).buf[at as usize] = b'/' };
    set!(s, pos, at);
    true
}

/// Adds `PATH_*` flags.
#[inline(always)]
pub fn flag(s: *mut PathScratch, f: u32) {
    add_flags(s, f);
}

/// The working directory of `task` (`task->fs->pwd`), as (dentry, vfsmount).
#[inline(always)]
pub fn task_pwd(task: u64) -> (u64, u64) {
    let Ok(fs) = read_ptr(task, off!(task_fs)) else {
        return (0, 0);
    };
    (
        read_ptr(fs, off!(fs_pwd_dentry)).unwrap_or(0),
        read_ptr(fs, off!(fs_pwd_mnt)).unwrap_or(0),
    )
}

/// Length of the resolved path.
#[inline(always)]
pub fn len(s: *mut PathScratch) -> u32 {
    bounded(PATH_BUF as u32 - get!(s, pos), POS_MASK)
}

/// Start of the resolved path in `s.buf`, masked for the verifier.
#[inline(always)]
pub fn start(s: *mut PathScratch) -> u32 {
    bounded(get!(s, pos), POS_MASK)
}

/// The root of the current process (`task->fs->root`), as (dentry, vfsmount).
#[inline(always)]
pub fn task_root(task: u64) -> (u64, u64) {
    let Ok(fs) = read_ptr(task, off!(task_fs)) else {
        return (0, 0);
    };
    (
        read_ptr(fs, off!(fs_root_dentry)).unwrap_or(0),
        read_ptr(fs, off!(fs_root_mnt)).unwrap_or(0),
    )
}
