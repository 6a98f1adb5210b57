//! nhi-sensor's kernel programs. Each entry point is a thin wrapper that calls the logic in its
//! module and turns the result into the hook's return value; the loader in `sensor/src/ebpf.rs`
//! chooses which of them to attach on this kernel.
#![no_std]
#![no_main]
// `atomic_xadd`: core's atomic types offer no fetch_add on the BPF target, the instruction exists.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Map keys and values are passed by reference on purpose: several live in per-CPU scratch memory
// and copying them by value would spend the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod dns;
mod emit;
mod file;
mod kread;
mod maps;
mod net;
mod path;
mod process;
mod scratch;

use aya_ebpf::{
    macros::{
        btf_tracepoint, cgroup_skb, cgroup_sock_addr, fentry, fexit, lsm, raw_tracepoint,
        tracepoint,
    },
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, LsmContext, RawTracePointContext,
        SkBuffContext, SockAddrContext, TracePointContext,
    },
};
use sensor_common::{OpenArgs, SYSCALL_NONE};

// Every entry point below is `#[inline(always)]`: the program macros wrap it in the real entry
// function, and an out-of-line copy would be a BPF global function taking the context pointer,
// which kernels before ~6.6 reject ("reg type unsupported for arg#0").

// ---- process lifecycle (raw tracepoints: since 4.17, no BTF needed) ----

#[raw_tracepoint(tracepoint = "sched_process_exec")]
#[inline(always)]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let _ = process::exec(ctx.arg(1), ctx.arg(2));
    0
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
#[inline(always)]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let _ = process::fork(ctx.arg(1));
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
#[inline(always)]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    let _ = process::exit();
    0
}

// The same as BTF tracepoints (5.5+): typed arguments, no per-event argument copy.

#[btf_tracepoint(function = "sched_process_exec")]
#[inline(always)]
pub fn btf_sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    let _ = process::exec(ctx.arg(1), ctx.arg(2));
    0
}

#[btf_tracepoint(function = "sched_process_fork")]
#[inline(always)]
pub fn btf_sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let _ = process::fork(ctx.arg(1));
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
#[inline(always)]
pub fn btf_sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    let _ = process::exit();
    0
}

// ---- credential changes (one enter/exit pair attached to every set*id syscall) ----

#[tracepoint]
#[inline(always)]
pub fn cred_enter(ctx: TracePointContext) -> u32 {
    let _ = process::cred_enter(&ctx);
    0
}

#[tracepoint]
#[inline(always)]
pub fn cred_exit(ctx: TracePointContext) -> u32 {
    let _ = process::cred_exit(&ctx);
    0
}

// ---- files ----

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
#[inline(always)]
pub fn file_open_enter(ctx: TracePointContext) -> u32 {
    let _ = file::open_enter(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
#[inline(always)]
pub fn file_openat_enter(ctx: TracePointContext) -> u32 {
    let _ = file::openat_enter(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
#[inline(always)]
pub fn file_openat2_enter(ctx: TracePointContext) -> u32 {
    let _ = file::openat2_enter(&ctx);
    0
}

/// Attached to `sys_exit_open`, `sys_exit_openat` and `sys_exit_openat2`: successful opens.
#[tracepoint]
#[inline(always)]
pub fn file_open_exit(ctx: TracePointContext) -> u32 {
    let _ = file::open_exit(&ctx);
    0
}

/// Attached to the same tracepoints: failed opens.
#[tracepoint]
#[inline(always)]
pub fn file_open_failed_exit(ctx: TracePointContext) -> u32 {
    let _ = file::open_failed_exit(&ctx);
    0
}

/// Attached to the enter tracepoints of the syscalls whose first argument is the fd read from:
/// `read`, `readv`, `pread64`, `preadv`, `preadv2`, `splice`, `copy_file_range`.
#[tracepoint]
#[inline(always)]
pub fn file_read_enter(ctx: TracePointContext) -> u32 {
    let _ = file::read_enter(&ctx, file::TP_ARG0);
    0
}

/// `sendfile64(out_fd, in_fd, ...)`: the fd read from is the second argument.
#[tracepoint(category = "syscalls", name = "sys_enter_sendfile64")]
#[inline(always)]
pub fn file_sendfile_enter(ctx: TracePointContext) -> u32 {
    let _ = file::read_enter(&ctx, file::TP_ARG1);
    0
}

#[tracepoint]
#[inline(always)]
pub fn file_read_exit(ctx: TracePointContext) -> u32 {
    let _ = file::read_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_close")]
#[inline(always)]
pub fn file_close_enter(ctx: TracePointContext) -> u32 {
    let _ = file::close_enter(&ctx);
    0
}

// ---- network ----

/// DNS responses received by local sockets. Returns 1 (pass) for every packet: the sensor
/// observes, it never filters traffic.
#[cgroup_skb(ingress)]
#[inline(always)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    dns::ingress(&ctx);
    1
}

#[cgroup_sock_addr(connect4)]
#[inline(always)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    net::connect(&ctx, false);
    1
}

#[cgroup_sock_addr(connect6)]
#[inline(always)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    net::connect(&ctx, true);
    1
}

#[cgroup_sock_addr(sendmsg4)]
#[inline(always)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    net::sendmsg(&ctx, false);
    1
}

#[cgroup_sock_addr(sendmsg6)]
#[inline(always)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    net::sendmsg(&ctx, true);
    1
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
#[inline(always)]
pub fn net_connect_exit(ctx: TracePointContext) -> u32 {
    let _ = net::connect_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
#[inline(always)]
pub fn net_connect_enter(ctx: TracePointContext) -> u32 {
    let _ = net::connect_enter(&ctx);
    0
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
#[inline(always)]
pub fn net_tcp_state(ctx: TracePointContext) -> u32 {
    let _ = net::tcp_state(&ctx);
    0
}

/// Attached to `sys_exit_accept` and `sys_exit_accept4`.
#[tracepoint]
#[inline(always)]
pub fn net_accept_exit(ctx: TracePointContext) -> u32 {
    let _ = net::accept_exit(&ctx);
    0
}

// ---- fentry/fexit: where the kernel allows them, these replace every syscall tracepoint.
// A syscall tracepoint, once enabled, sends every syscall of every task through the tracing slow
// path; a trampoline costs only the functions it is attached to. ----

/// `long do_sys_openat2(int dfd, const char __user *filename, struct open_how *how)`: every
/// open/openat/openat2/creat, successful ones here.
#[fexit(function = "do_sys_openat2")]
#[inline(always)]
pub fn fexit_open(ctx: FExitContext) -> i32 {
    let _ = file::open_ok(ctx.arg(3), SYSCALL_NONE);
    0
}

/// The same function, failed opens (a separate program keeps each inside the verifier budget).
#[fexit(function = "do_sys_openat2")]
#[inline(always)]
pub fn fexit_open_failed(ctx: FExitContext) -> i32 {
    let ret: i64 = ctx.arg(3);
    if ret < 0 {
        let how: u64 = ctx.arg(2);
        let args = OpenArgs {
            filename: ctx.arg(1),
            flags: kread::read::<u64>(how, 0).unwrap_or(0) as u32,
            dfd: ctx.arg::<i64>(0) as i32,
        };
        let _ = file::open_failed(&args, ret, SYSCALL_NONE);
    }
    0
}

/// `ssize_t vfs_read(struct file *, char __user *, size_t, loff_t *)`.
#[fexit(function = "vfs_read")]
#[inline(always)]
pub fn fexit_vfs_read(ctx: FExitContext) -> i32 {
    file::file_read(ctx.arg(0), ctx.arg(4));
    0
}

/// `ssize_t vfs_readv(struct file *, const struct iovec __user *, unsigned long, loff_t *, rwf_t)`.
#[fexit(function = "vfs_readv")]
#[inline(always)]
pub fn fexit_vfs_readv(ctx: FExitContext) -> i32 {
    file::file_read(ctx.arg(0), ctx.arg(5));
    0
}

/// `long do_splice_direct(struct file *in, loff_t *, struct file *out, loff_t *, size_t, unsigned)`:
/// sendfile and copy_file_range.
#[fexit(function = "do_splice_direct")]
#[inline(always)]
pub fn fexit_splice_direct(ctx: FExitContext) -> i32 {
    file::file_read(ctx.arg(0), ctx.arg(6));
    0
}

/// `long do_splice(struct file *in, loff_t *, struct file *out, loff_t *, size_t, unsigned)`.
#[fexit(function = "do_splice")]
#[inline(always)]
pub fn fexit_splice(ctx: FExitContext) -> i32 {
    file::file_read(ctx.arg(0), ctx.arg(6));
    0
}

/// `int filp_close(struct file *, fl_owner_t)`: close(2), and every fd at process exit.
#[fentry(function = "filp_close")]
#[inline(always)]
pub fn fentry_filp_close(ctx: FEntryContext) -> i32 {
    file::file_closing(ctx.arg(0));
    0
}

/// `int commit_creds(struct cred *new)`.
#[fentry(function = "commit_creds")]
#[inline(always)]
pub fn fentry_commit_creds(ctx: FEntryContext) -> i32 {
    // The syscall in progress, from the task's saved user registers (`orig_ax` on x86_64), so
    // the event names it like the tracepoint path does.
    let regs = unsafe {
        aya_ebpf::helpers::generated::bpf_task_pt_regs(
            aya_ebpf::helpers::generated::bpf_get_current_task_btf(),
        )
    } as u64;
    let nr = kread::read::<u64>(regs, PT_REGS_ORIG_AX).map_or(SYSCALL_NONE, |n| n as u32);
    let _ = process::commit_creds(ctx.arg(0), nr);
    0
}

/// Offset of `orig_ax` in x86_64's `struct pt_regs` (user ABI, stable).
const PT_REGS_ORIG_AX: u64 = 15 * 8;

/// `int __sys_connect(int fd, struct sockaddr __user *, int addrlen)`.
#[fexit(function = "__sys_connect")]
#[inline(always)]
pub fn fexit_sys_connect(ctx: FExitContext) -> i32 {
    let ret = ctx.arg::<i64>(3) as i32 as i64;
    net::unix_connect_returned(ctx.arg(1), ctx.arg::<u64>(2) & 0xffff_ffff, ret);
    let _ = net::connect_returned(ret);
    0
}

/// `int __sys_accept4(int fd, struct sockaddr __user *, int __user *, int flags)`.
#[fexit(function = "__sys_accept4")]
#[inline(always)]
pub fn fexit_sys_accept4(ctx: FExitContext) -> i32 {
    let _ = net::accepted(ctx.arg::<i64>(4) as i32 as i64);
    0
}

// ---- capability probe: `nhi-sensor check` loads it to learn whether this kernel allows BPF
// LSM programs. It does nothing and is never attached. ----

#[lsm(hook = "file_open")]
#[inline(always)]
pub fn probe_lsm(_ctx: LsmContext) -> i32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
