//! Reading kernel structs through offsets that userspace resolved from this kernel's BTF.

use aya_ebpf::helpers::generated::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_task, bpf_probe_read_kernel,
};
use sensor_common::{
    COMM_LEN, Creds, KernelOffsets, Namespaces, TASK_CREDS_MISSING, TASK_KTHREAD, TASK_NS_MISSING,
    TaskInfo, offsets::MISSING,
};

/// Field offsets for this kernel, set by the loader (`EbpfLoader::override_global`) before the
/// verifier sees the programs. Read one field at a time with [`off!`]: copying the whole struct
/// would not fit the stack.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets::UNSET;

/// The sensor's own process id, so the sensor never reports (or feeds back on) itself.
#[unsafe(no_mangle)]
pub static SENSOR_TGID: u32 = 0;

/// One offset from [`OFFSETS`]. The volatile read keeps LLVM from folding the placeholder value.
macro_rules! off {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::kread::OFFSETS.$field) } as u64
    };
}
pub(crate) use off;

#[inline(always)]
pub fn sensor_tgid() -> u32 {
    unsafe { core::ptr::read_volatile(&raw const SENSOR_TGID) }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T: Copy>(base: u64, offset: u64) -> Result<T, i64> {
    if base == 0 || offset == MISSING as u64 {
        return Err(-1);
    }
    let mut out = core::mem::MaybeUninit::<T>::uninit();
    let ret = unsafe {
        bpf_probe_read_kernel(
            out.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            (base + offset) as *const core::ffi::c_void,
        )
    };
    if ret < 0 {
        Err(ret)
    } else {
        Ok(unsafe { out.assume_init() })
    }
}

/// Zeroes a value whose size is a multiple of 8 and that is 8-byte aligned, with plain stores.
/// LLVM's BPF back end turns aggregate zeroing into `memset` calls, and a call to `memset` is a
/// BPF global function taking a pointer, which kernels before ~6.6 refuse to load.
#[inline(always)]
pub fn zero_words<T>(p: *mut T) {
    let words = core::mem::size_of::<T>() / 8;
    for i in 0..words {
        unsafe { core::ptr::write_volatile(p.cast::<u64>().add(i), 0) };
    }
}

/// Zeroes `slot` in place and returns it initialized. (Returning a zeroed value instead would
/// copy it, and LLVM turns the known-zero bytes of the copy back into a `memset` call.)
#[inline(always)]
pub fn zero_in_place<T>(slot: &mut core::mem::MaybeUninit<T>) -> &mut T {
    zero_words(slot.as_mut_ptr());
    unsafe { slot.assume_init_mut() }
}

/// Reads a `T` at `base + offset` straight into `dst`; on failure `dst` is zeroed (by the
/// helper, or here when the field is missing).
#[inline(always)]
pub fn read_into<T>(dst: *mut T, base: u64, offset: u64) {
    if base == 0 || offset == MISSING as u64 {
        zero_words(dst);
        return;
    }
    unsafe {
        bpf_probe_read_kernel(
            dst.cast(),
            core::mem::size_of::<T>() as u32,
            (base + offset) as *const core::ffi::c_void,
        )
    };
}

/// Reads a pointer member.
#[inline(always)]
pub fn read_ptr(base: u64, offset: u64) -> Result<u64, i64> {
    read::<u64>(base, offset)
}

#[inline(always)]
pub fn current_task() -> u64 {
    unsafe { bpf_get_current_task() }
}

/// `start_boottime` of the task's thread-group leader: with pid and boot id, the process key.
#[inline(always)]
pub fn leader_start_ns(task: u64) -> u64 {
    let leader = read_ptr(task, off!(task_group_leader)).unwrap_or(task);
    read::<u64>(leader, off!(task_start_boottime)).unwrap_or(0)
}

/// The struct file behind `fd` in `task`'s fd table, or 0.
#[inline(always)]
pub fn fd_to_file(task: u64, fd: u64) -> u64 {
    let Ok(files) = read_ptr(task, off!(task_files)) else {
        return 0;
    };
    let Ok(fdt) = read_ptr(files, off!(files_fdt)) else {
        return 0;
    };
    let Ok(max_fds) = read::<u32>(fdt, off!(fdtable_max_fds)) else {
        return 0;
    };
    if fd >= max_fds as u64 {
        return 0;
    }
    let Ok(array) = read_ptr(fdt, off!(fdtable_fd)) else {
        return 0;
    };
    read_ptr(array, fd * 8).unwrap_or(0)
}

/// Reads the credentials of `task` (`real_cred`, as `/proc/<pid>/status` shows them).
#[inline(always)]
pub fn read_creds(task: u64, creds: &mut Creds) -> Result<(), i64> {
    let cred = read_ptr(task, off!(task_real_cred))?;
    read_cred_struct(cred, creds)?;
    creds.loginuid = read::<u32>(task, off!(task_loginuid)).unwrap_or(u32::MAX);
    creds.sessionid = read::<u32>(task, off!(task_sessionid)).unwrap_or(u32::MAX);
    Ok(())
}

/// The ids and capabilities of one `struct cred` (login identity left as is).
#[inline(always)]
pub fn read_cred_struct(cred: u64, creds: &mut Creds) -> Result<(), i64> {
    creds.uid = read::<u32>(cred, off!(cred_uid))?;
    creds.gid = read::<u32>(cred, off!(cred_gid))?;
    creds.euid = read::<u32>(cred, off!(cred_euid))?;
    creds.egid = read::<u32>(cred, off!(cred_egid))?;
    creds.suid = read::<u32>(cred, off!(cred_suid))?;
    creds.sgid = read::<u32>(cred, off!(cred_sgid))?;
    creds.fsuid = read::<u32>(cred, off!(cred_fsuid))?;
    creds.fsgid = read::<u32>(cred, off!(cred_fsgid))?;
    creds.cap_effective = read::<u64>(cred, off!(cred_cap_effective))?;
    creds.cap_permitted = read::<u64>(cred, off!(cred_cap_permitted))?;
    Ok(())
}

/// `ns_common.inum` of the namespace at `nsproxy + member`.
#[inline(always)]
fn ns_inum(holder: u64, member: u64, inum: u64) -> Result<u32, i64> {
    let ns = read_ptr(holder, member)?;
    read::<u32>(ns, inum)
}

#[inline(always)]
fn read_namespaces(task: u64, ns: &mut Namespaces) -> Result<(), i64> {
    let nsproxy = read_ptr(task, off!(task_nsproxy))?;
    ns.mnt = ns_inum(nsproxy, off!(nsproxy_mnt_ns), off!(mnt_ns_inum))?;
    ns.net = ns_inum(nsproxy, off!(nsproxy_net_ns), off!(net_ns_inum))?;
    ns.uts = ns_inum(nsproxy, off!(nsproxy_uts_ns), off!(uts_ns_inum))?;
    ns.ipc = ns_inum(nsproxy, off!(nsproxy_ipc_ns), off!(ipc_ns_inum))?;
    ns.cgroup = ns_inum(nsproxy, off!(nsproxy_cgroup_ns), off!(cgroup_ns_inum)).unwrap_or(0);
    let cred = read_ptr(task, off!(task_real_cred))?;
    ns.user = ns_inum(cred, off!(cred_user_ns), off!(user_ns_inum))?;
    // The task's active pid namespace: thread_pid->numbers[thread_pid->level].ns.
    let pid = read_ptr(task, off!(task_thread_pid))?;
    let level = read::<u32>(pid, off!(pid_level))? as u64 & 0x3f;
    let upid = pid + off!(pid_numbers) + level * off!(upid_size);
    ns.pid = ns_inum(upid, off!(upid_ns), off!(pid_ns_inum))?;
    Ok(())
}

/// Fills `info` for the current task (the one in whose context the hook runs).
#[inline(always)]
pub fn fill_current(info: &mut TaskInfo) {
    let task = current_task();
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    info.tgid = (pid_tgid >> 32) as u32;
    info.tid = pid_tgid as u32;
    info.flags = 0;
    info.start_ns = leader_start_ns(task);
    let parent = read_ptr(task, off!(task_real_parent)).unwrap_or(0);
    info.ppid = read::<u32>(parent, off!(task_tgid)).unwrap_or(0);
    info.parent_start_ns = if parent != 0 {
        leader_start_ns(parent)
    } else {
        0
    };
    info.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if read_creds(task, &mut info.creds).is_err() {
        info.flags |= TASK_CREDS_MISSING;
    }
    if read_namespaces(task, &mut info.ns).is_err() {
        info.flags |= TASK_NS_MISSING;
    }
    if read_ptr(task, off!(task_mm)).unwrap_or(0) == 0 {
        info.flags |= TASK_KTHREAD;
    }
    let signal = read_ptr(task, off!(task_signal)).unwrap_or(0);
    let tty = read_ptr(signal, off!(signal_tty)).unwrap_or(0);
    read_into(&raw mut info.tty, tty, off!(tty_name));
    let comm = &raw mut info.comm;
    if unsafe { bpf_get_current_comm(comm.cast(), COMM_LEN as u32) } < 0 {
        zero_words(comm);
    }
}
