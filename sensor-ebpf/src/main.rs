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

mod emit;
mod file;
mod kread;
mod maps;
mod net;
mod path;
mod process;
mod scratch;

use aya_ebpf::{
    macros::{btf_tracepoint, cgroup_sock_addr, fentry, lsm, raw_tracepoint, tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, LsmContext, RawTracePointContext, SockAddrContext,
        TracePointContext,
    },
};

// ---- process lifecycle (raw tracepoints: since 4.17, no BTF needed) ----

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let _ = process::exec(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let _ = process::fork(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let _ = process::exit(&ctx);
    0
}

// ---- credential changes (one enter/exit pair attached to every set*id syscall) ----

#[tracepoint]
pub fn cred_enter(ctx: TracePointContext) -> u32 {
    let _ = process::cred_enter(&ctx);
    0
}

#[tracepoint]
pub fn cred_exit(ctx: TracePointContext) -> u32 {
    let _ = process::cred_exit(&ctx);
    0
}

// ---- files ----

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn file_open_enter(ctx: TracePointContext) -> u32 {
    let _ = file::open_enter(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn file_openat_enter(ctx: TracePointContext) -> u32 {
    let _ = file::openat_enter(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn file_openat2_enter(ctx: TracePointContext) -> u32 {
    let _ = file::openat2_enter(&ctx);
    0
}

/// Attached to `sys_exit_open`, `sys_exit_openat` and `sys_exit_openat2`: successful opens.
#[tracepoint]
pub fn file_open_exit(ctx: TracePointContext) -> u32 {
    let _ = file::open_exit(&ctx);
    0
}

/// Attached to the same tracepoints: failed opens.
#[tracepoint]
pub fn file_open_failed_exit(ctx: TracePointContext) -> u32 {
    let _ = file::open_failed_exit(&ctx);
    0
}

/// Attached to the enter tracepoints of the syscalls whose first argument is the fd read from:
/// `read`, `readv`, `pread64`, `preadv`, `preadv2`, `splice`, `copy_file_range`.
#[tracepoint]
pub fn file_read_enter(ctx: TracePointContext) -> u32 {
    let _ = file::read_enter(&ctx, file::TP_ARG0);
    0
}

/// `sendfile64(out_fd, in_fd, ...)`: the fd read from is the second argument.
#[tracepoint(category = "syscalls", name = "sys_enter_sendfile64")]
pub fn file_sendfile_enter(ctx: TracePointContext) -> u32 {
    let _ = file::read_enter(&ctx, file::TP_ARG1);
    0
}

#[tracepoint]
pub fn file_read_exit(ctx: TracePointContext) -> u32 {
    let _ = file::read_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn file_close_enter(ctx: TracePointContext) -> u32 {
    let _ = file::close_enter(&ctx);
    0
}

// ---- network ----

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    net::connect(&ctx, false);
    1
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    net::connect(&ctx, true);
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    net::sendmsg(&ctx, false);
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    net::sendmsg(&ctx, true);
    1
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn net_connect_exit(ctx: TracePointContext) -> u32 {
    let _ = net::connect_exit(&ctx);
    0
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn net_tcp_state(ctx: TracePointContext) -> u32 {
    let _ = net::tcp_state(&ctx);
    0
}

/// Attached to `sys_exit_accept` and `sys_exit_accept4`.
#[tracepoint]
pub fn net_accept_exit(ctx: TracePointContext) -> u32 {
    let _ = net::accept_exit(&ctx);
    0
}

// ---- capability probes: `nhi-sensor check` loads these to learn whether this kernel allows a
// program type. They do nothing and are never attached. ----

#[lsm(hook = "file_open")]
pub fn probe_lsm(_ctx: LsmContext) -> i32 {
    0
}

#[fentry(function = "security_file_open")]
pub fn probe_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn probe_tp_btf(_ctx: BtfTracePointContext) -> u32 {
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
