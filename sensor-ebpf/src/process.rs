//! Process lifecycle (exec, fork, exit) and credential changes.

use aya_ebpf::{
    helpers::generated::{bpf_probe_read_kernel, bpf_probe_read_kernel_str, bpf_probe_read_user},
    programs::TracePointContext,
};
use sensor_common::{
    ARGS_MAX, ARGS_READ_ERROR, ARGS_TRUNCATED, Counter, CredChangeEvent, Creds, ENV_MAX,
    ENV_READ_ERROR, ENV_TRUNCATED, EXEC_FILENAME_MAX, EventKind, ExecEvent, ExitEvent, ForkEvent,
    PathInfo,
};

use crate::{
    emit::{count, header, output, output_value},
    kread::{
        current_task, fill_current, off, read, read_cred_struct, read_creds, read_ptr, sensor_tgid,
        zero_in_place, zero_words,
    },
    maps::{CRED_SNAPSHOTS, EVENT_SCRATCH, PATH_SCRATCH},
    path,
};

const ARGS_MASK: u32 = ARGS_MAX as u32 - 1;
const FILENAME_MASK: u32 = EXEC_FILENAME_MAX as u32 - 1;
const ENV_MASK: u32 = ENV_MAX as u32 - 1;

/// `sched_process_exec(task, old_pid, bprm)`: the new program image is in place, so
/// `mm->exe_file` and the argv on the new stack are the new program's.
/// Takes the tracepoint's arguments (the same for raw and BTF tracepoints).
#[inline(always)]
pub fn exec(old_pid: u64, bprm: u64) -> Result<(), i64> {
    let task = current_task();
    let Some(buf) = EVENT_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return Ok(());
    };
    let Some(ps) = PATH_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return Ok(());
    };
    let fixed = core::mem::size_of::<ExecEvent>();
    let ev = unsafe { &mut *(buf as *mut ExecEvent) };
    fill_current(&mut ev.task);
    ev.old_pid = old_pid as u32;
    ev.flags = 0;

    // The executable, resolved like any opened file.
    let mm = read_ptr(task, off!(task_mm)).unwrap_or(0);
    let exe_file = read_ptr(mm, off!(mm_exe_file)).unwrap_or(0);
    let mut plen = 0;
    // Volatile: adjacent zero stores would be merged into a `memset` call (see `zero_words`).
    unsafe {
        core::ptr::write_volatile(&raw mut ev.exe_dev, 0);
        core::ptr::write_volatile(&raw mut ev.exe_ino, 0);
    }
    zero_words(&raw mut ev.exe);
    if exe_file != 0 {
        let dentry = read_ptr(exe_file, off!(file_f_path_dentry)).unwrap_or(0);
        let vfsmnt = read_ptr(exe_file, off!(file_f_path_mnt)).unwrap_or(0);
        let (root_dentry, root_mnt) = path::task_root(task);
        path::resolve(ps, dentry, vfsmnt, root_dentry, root_mnt);
        plen = path::len(ps) & 0xfff;
        let src = unsafe {
            (&raw const (*ps).buf)
                .cast::<u8>()
                .add(path::start(ps) as usize)
        };
        let dst = unsafe { (buf as *mut u8).add(fixed) };
        if unsafe { bpf_probe_read_kernel(dst.cast(), plen, src.cast()) } < 0 {
            plen = 0;
        }
        ev.exe = PathInfo {
            len: plen,
            flags: unsafe { (*ps).flags },
        };
        let inode = read_ptr(exe_file, off!(file_f_inode)).unwrap_or(0);
        ev.exe_ino = read::<u64>(inode, off!(inode_i_ino)).unwrap_or(0);
        let sb = read_ptr(inode, off!(inode_i_sb)).unwrap_or(0);
        ev.exe_dev = read::<u32>(sb, off!(sb_s_dev)).unwrap_or(0) as u64;
    }

    // The name passed to exec (for a script: the script, while exe is its interpreter).
    let mut flen = 0;
    if let Ok(filename) = read_ptr(bprm, off!(binprm_filename)) {
        let dst = unsafe { (buf as *mut u8).add(fixed + plen as usize) };
        let n = unsafe {
            bpf_probe_read_kernel_str(dst.cast(), EXEC_FILENAME_MAX as u32, filename as *const _)
        };
        if n > 1 {
            flen = (n as u32 - 1) & FILENAME_MASK;
        }
    }
    ev.filename_len = flen;

    // argv: the NUL-separated strings between mm->arg_start and mm->arg_end.
    let mut alen = 0;
    let arg_start = read::<u64>(mm, off!(mm_arg_start)).unwrap_or(0);
    let arg_end = read::<u64>(mm, off!(mm_arg_end)).unwrap_or(0);
    if arg_end > arg_start {
        let mut want = arg_end - arg_start;
        if want > ARGS_MASK as u64 {
            want = ARGS_MASK as u64;
            ev.flags |= ARGS_TRUNCATED;
        }
        let dst = unsafe { (buf as *mut u8).add(fixed + plen as usize + flen as usize) };
        let n = want as u32 & ARGS_MASK;
        if unsafe { bpf_probe_read_user(dst.cast(), n, arg_start as *const _) } < 0 {
            ev.flags |= ARGS_READ_ERROR;
        } else {
            alen = n;
        }
    }
    ev.args_len = alen;

    // The environment, the same way (names and fingerprints are all userspace keeps of it).
    let mut elen = 0;
    let env_start = read::<u64>(mm, off!(mm_env_start)).unwrap_or(0);
    let env_end = read::<u64>(mm, off!(mm_env_end)).unwrap_or(0);
    if env_end > env_start {
        let mut want = env_end - env_start;
        if want > ENV_MASK as u64 {
            want = ENV_MASK as u64;
            ev.flags |= ENV_TRUNCATED;
        }
        let at = fixed + plen as usize + flen as usize + alen as usize;
        let dst = unsafe { (buf as *mut u8).add(at) };
        let n = want as u32 & ENV_MASK;
        if unsafe { bpf_probe_read_user(dst.cast(), n, env_start as *const _) } < 0 {
            ev.flags |= ENV_READ_ERROR;
        } else {
            elen = n;
        }
    }
    ev.env_len = elen;
    ev._pad = 0;
    let size = fixed as u32 + plen + flen + alen + elen;
    ev.header = header(EventKind::ProcessExec, size as usize);
    output(buf as *const u8, size as u64 & 0x3fff);
    Ok(())
}

/// `sched_process_fork(parent, child)`: a new process (threads are skipped). Runs in the parent.
#[inline(always)]
pub fn fork(child: u64) -> Result<(), i64> {
    let child_pid = read::<u32>(child, off!(task_pid))?;
    let child_tgid = read::<u32>(child, off!(task_tgid))?;
    if child_pid != child_tgid {
        return Ok(());
    }
    if (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32 == sensor_tgid() {
        return Ok(());
    }
    let Some(buf) = EVENT_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return Ok(());
    };
    let ev = unsafe { &mut *(buf as *mut ForkEvent) };
    ev.header = header(EventKind::ProcessFork, core::mem::size_of::<ForkEvent>());
    fill_current(&mut ev.task);
    ev.child_tgid = child_tgid;
    ev._pad = 0;
    ev.child_start_ns = read::<u64>(child, off!(task_start_boottime)).unwrap_or(0);
    output_value(ev);
    Ok(())
}

/// `sched_process_exit(task[, group_dead])`: report when the last thread of a process exits.
/// `signal->live` has been decremented before the tracepoint fires, so 0 means the group is dead
/// (the `group_dead` argument only exists on recent kernels).
#[inline(always)]
pub fn exit() -> Result<(), i64> {
    let task = current_task();
    let signal = read_ptr(task, off!(task_signal))?;
    let live = read::<i32>(signal, off!(signal_live))?;
    if live != 0 {
        return Ok(());
    }
    let Some(buf) = EVENT_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return Ok(());
    };
    let ev = unsafe { &mut *(buf as *mut ExitEvent) };
    ev.header = header(EventKind::ProcessExit, core::mem::size_of::<ExitEvent>());
    fill_current(&mut ev.task);
    ev.exit_code = read::<u32>(task, off!(task_exit_code)).unwrap_or(0);
    ev._pad = 0;
    output_value(ev);
    Ok(())
}

/// `syscalls:sys_enter_set*id/setgroups/capset`: snapshot the credentials before the change.
#[inline(always)]
pub fn cred_enter(_ctx: &TracePointContext) -> Result<(), i64> {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    let mut slot = core::mem::MaybeUninit::<Creds>::uninit();
    let creds = zero_in_place(&mut slot);
    read_creds(current_task(), creds)?;
    if CRED_SNAPSHOTS.insert(&tid, &*creds, 0).is_err() {
        count(Counter::DropMapFull);
    }
    Ok(())
}

/// `syscalls:sys_exit_set*id/setgroups/capset`: report a change with the old and new ids.
#[inline(always)]
pub fn cred_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    let Some(old) = (unsafe { CRED_SNAPSHOTS.get(&tid) }).copied() else {
        return Ok(());
    };
    let _ = CRED_SNAPSHOTS.remove(&tid);
    let nr = unsafe { ctx.read_at::<i32>(8) }.unwrap_or(-1) as u32;
    emit_cred_change(&old, None, nr)
}

/// `commit_creds(new)` (fentry): every credential change, whatever caused it (set*id, capset,
/// setgroups, a setuid exec, keyctl, ...). The task still has its old credentials.
#[inline(always)]
pub fn commit_creds(new: u64, syscall_nr: u32) -> Result<(), i64> {
    let mut slot = core::mem::MaybeUninit::<Creds>::uninit();
    let old = zero_in_place(&mut slot);
    read_creds(current_task(), old)?;
    emit_cred_change(old, Some(new), syscall_nr)
}

/// Emits a change from `old` to the task's current credentials, or to `new` (a `struct cred *`
/// about to be installed) when given. Nothing when nothing changed.
#[inline(always)]
fn emit_cred_change(old: &Creds, new: Option<u64>, syscall_nr: u32) -> Result<(), i64> {
    let Some(buf) = EVENT_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return Ok(());
    };
    let ev = unsafe { &mut *(buf as *mut CredChangeEvent) };
    fill_current(&mut ev.task);
    if let Some(new) = new {
        let login = (ev.task.creds.loginuid, ev.task.creds.sessionid);
        read_cred_struct(new, &mut ev.task.creds)?;
        (ev.task.creds.loginuid, ev.task.creds.sessionid) = login;
    }
    if ev.task.creds == *old {
        return Ok(());
    }
    ev.header = header(
        EventKind::CredChange,
        core::mem::size_of::<CredChangeEvent>(),
    );
    ev.old = *old;
    ev.syscall_nr = syscall_nr;
    ev._pad = 0;
    output_value(ev);
    Ok(())
}
