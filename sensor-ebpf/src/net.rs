//! Connections: outbound connects and UDP flows from the cgroup `sock_addr` hooks (process
//! context, exact attribution), TCP outcomes from `sock:inet_sock_set_state`, synchronous connect
//! failures from `sys_exit_connect`, and inbound accepts from `sys_exit_accept{,4}`.

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::bpf_get_socket_cookie,
    helpers::{
        bpf_probe_read_user,
        generated::{self, bpf_probe_read_user_str},
    },
    programs::{SockAddrContext, TracePointContext},
};
use sensor_common::{
    Counter, EventKind, NetAcceptEvent, NetConnectEvent, NetResultEvent, NetUnixEvent,
    RESULT_ESTABLISHED, RESULT_FAILED, Setting, SockAddr, UdpFlowKey, UnixConnectArgs,
};

use crate::{
    emit::{count, header, output_value},
    kread::{
        at_most, current_task, fd_to_file, fill_current, off, read, read_into, read_ptr,
        sensor_tgid, zero_in_place, zero_words,
    },
    maps::{
        CONNECT_SYSCALLS, EVENT_SCRATCH, PENDING_CONNECTS, RESULT_SCRATCH, SETTINGS, UDP_FLOWS,
        UNIX_CONNECTS, UNIX_SCRATCH, WATCH_SOCKETS,
    },
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u32 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const EINPROGRESS: i64 = 115;

/// Reads one `u32` field of the `bpf_sock_addr` context. The verifier only accepts loads at a
/// constant offset from the unmodified context pointer, so every field is one volatile load.
macro_rules! ctx_u32 {
    ($ctx:expr, $($field:tt)+) => {
        unsafe { core::ptr::read_volatile(&raw const (*$ctx.sock_addr).$($field)+) }
    };
}

/// The destination a `connect`/`sendmsg` is about to use.
#[inline(always)]
fn user_dst(ctx: &SockAddrContext, v6: bool, dst: &mut SockAddr) {
    zero_words(dst);
    dst.port = u16::from_be(ctx_u32!(ctx, user_port) as u16);
    // The address as four 32-bit words in memory order (network order), stored as such.
    let words = dst.addr.as_mut_ptr().cast::<u32>();
    if v6 {
        dst.family = AF_INET6;
        let w = [
            ctx_u32!(ctx, user_ip6[0]),
            ctx_u32!(ctx, user_ip6[1]),
            ctx_u32!(ctx, user_ip6[2]),
            ctx_u32!(ctx, user_ip6[3]),
        ];
        for (i, word) in w.iter().enumerate() {
            unsafe { core::ptr::write_unaligned(words.add(i), *word) };
        }
    } else {
        dst.family = AF_INET;
        let w = ctx_u32!(ctx, user_ip4);
        unsafe { core::ptr::write_unaligned(words, w) };
    }
}

#[inline(always)]
fn emit_connect(ctx: &SockAddrContext, kind: EventKind, cookie: u64, v6: bool) {
    let Some(buf) = EVENT_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return;
    };
    let protocol = ctx_u32!(ctx, protocol);
    let sock_type = ctx_u32!(ctx, type_);
    let ev = unsafe { &mut *(buf as *mut NetConnectEvent) };
    ev.header = header(kind, core::mem::size_of::<NetConnectEvent>());
    fill_current(&mut ev.task);
    ev.cookie = cookie;
    user_dst(ctx, v6, &mut ev.dst);
    ev.protocol = protocol;
    ev.sock_type = sock_type;
    output_value(ev);
}

/// `cgroup/connect4` and `cgroup/connect6`. Always allows the connect (returns 1).
#[inline(always)]
pub fn connect(ctx: &SockAddrContext, v6: bool) {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == sensor_tgid() {
        return;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    emit_connect(ctx, EventKind::NetConnect, cookie, v6);
    if ctx_u32!(ctx, protocol) == IPPROTO_TCP {
        if PENDING_CONNECTS.insert(&cookie, &0, 0).is_err() {
            count(Counter::DropMapFull);
        }
        if CONNECT_SYSCALLS
            .insert(&(pid_tgid as u32), &cookie, 0)
            .is_err()
        {
            count(Counter::DropMapFull);
        }
    }
}

/// `cgroup/sendmsg4` and `cgroup/sendmsg6`: UDP datagrams with an explicit destination, reported
/// once per (socket, destination).
#[inline(always)]
pub fn sendmsg(ctx: &SockAddrContext, v6: bool) {
    if (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32 == sensor_tgid() {
        return;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let mut slot = core::mem::MaybeUninit::<UdpFlowKey>::uninit();
    let key = zero_in_place(&mut slot);
    key.cookie = cookie;
    user_dst(ctx, v6, &mut key.dst);
    if unsafe { UDP_FLOWS.get(&*key) }.is_some() {
        count(Counter::UdpDeduped);
        return;
    }
    if UDP_FLOWS.insert(&*key, &0, 0).is_err() {
        count(Counter::DropMapFull);
    }
    emit_connect(ctx, EventKind::NetUdpSend, cookie, v6);
}

/// `syscalls:sys_exit_connect`: a TCP connect that failed before it sent a SYN (no route,
/// refused by policy, ...) never reaches `inet_sock_set_state`.
#[inline(always)]
pub fn connect_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let ret: i64 = unsafe { ctx.read_at(16) }?;
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    if let Some(args) = UNIX_CONNECTS.get_ptr(&tid) {
        if (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32 != sensor_tgid() {
            emit_unix(args, ret);
        }
        let _ = UNIX_CONNECTS.remove(&tid);
    }
    connect_returned(ret)
}

/// `sys_enter_connect(fd, uservaddr, addrlen)`: remember a connect to a watched Unix socket
/// until it returns.
#[inline(always)]
pub fn connect_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let uservaddr: u64 = unsafe { ctx.read_at(24) }?;
    let addrlen: u64 = unsafe { ctx.read_at(32) }?;
    let Some(args) = watched_unix_path(uservaddr, addrlen) else {
        return Ok(());
    };
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    if UNIX_CONNECTS.insert(&tid, unsafe { &*args }, 0).is_err() {
        count(Counter::DropMapFull);
    }
    Ok(())
}

/// The `sockaddr` a process passes to connect, when it names a watched Unix socket (in
/// `UNIX_SCRATCH`). Pathname sockets are read up to their NUL (callers often pass the whole
/// `sizeof(sockaddr_un)`), abstract ones (leading NUL) by their length.
#[inline(always)]
fn watched_unix_path(uservaddr: u64, addrlen: u64) -> Option<*mut UnixConnectArgs> {
    if SETTINGS
        .get(Setting::UnixSockets as u32)
        .copied()
        .unwrap_or(0)
        == 0
        || addrlen < 3
    {
        return None;
    }
    let family = unsafe { bpf_probe_read_user(uservaddr as *const u16) }.ok()?;
    if family != AF_UNIX {
        return None;
    }
    let args = UNIX_SCRATCH.get_ptr_mut(0)?;
    zero_words(args);
    let path = unsafe { &raw mut (*args).path };
    let src = (uservaddr + 2) as *const core::ffi::c_void;
    let first = unsafe { bpf_probe_read_user((uservaddr + 2) as *const u8) }.ok()?;
    let len = if first != 0 {
        let n = unsafe { bpf_probe_read_user_str(path.cast(), UNIX_SUN_PATH, src) };
        if n <= 1 {
            return None;
        }
        n as u32 - 1
    } else {
        let n = at_most(addrlen as u32 - 2, UNIX_SUN_PATH);
        if unsafe { generated::bpf_probe_read_user(path.cast(), n, src) } < 0 {
            return None;
        }
        n
    };
    unsafe { (*args).path_len = len };
    unsafe { WATCH_SOCKETS.get(&*path) }?;
    Some(args)
}

/// `sizeof(((struct sockaddr_un *)0)->sun_path)`.
const UNIX_SUN_PATH: u32 = 108;
const AF_UNIX: u16 = 1;

/// Reports a finished connect to a watched Unix socket.
#[inline(always)]
fn emit_unix(args: *const UnixConnectArgs, ret: i64) {
    let Some(buf) = EVENT_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return;
    };
    let ev = unsafe { &mut *(buf as *mut NetUnixEvent) };
    ev.header = header(
        EventKind::NetUnixConnect,
        core::mem::size_of::<NetUnixEvent>(),
    );
    fill_current(&mut ev.task);
    read_into(
        &raw mut ev.path,
        unsafe { &raw const (*args).path } as u64,
        0,
    );
    ev.path_len = unsafe { (*args).path_len };
    ev.ret = ret as i32;
    output_value(ev);
}

/// fexit `__sys_connect(fd, uservaddr, addrlen)`: the address is still in user memory.
#[inline(always)]
pub fn unix_connect_returned(uservaddr: u64, addrlen: u64, ret: i64) {
    if (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32 == sensor_tgid() {
        return;
    }
    if let Some(args) = watched_unix_path(uservaddr, addrlen) {
        emit_unix(args, ret);
    }
}

/// The connect syscall returned `ret` (from any hook: `sys_exit_connect`, fexit `__sys_connect`).
#[inline(always)]
pub fn connect_returned(ret: i64) -> Result<(), i64> {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    let Some(cookie) = (unsafe { CONNECT_SYSCALLS.get(&tid) }).copied() else {
        return Ok(());
    };
    let _ = CONNECT_SYSCALLS.remove(&tid);
    if ret >= 0 || ret == -EINPROGRESS {
        return Ok(());
    }
    // Still pending means the state machine never reported on it.
    if unsafe { PENDING_CONNECTS.get(&cookie) }.is_none() {
        return Ok(());
    }
    let _ = PENDING_CONNECTS.remove(&cookie);
    let Some(ev) = result_record(cookie) else {
        return Ok(());
    };
    ev.result = RESULT_FAILED;
    ev.error = (-ret) as u32;
    output_value(ev);
    Ok(())
}

/// A zeroed connect-outcome record for `cookie`, in its own per-CPU scratch: outcomes are
/// produced in softirq context too, on top of a program that may be building a record in
/// `EVENT_SCRATCH` on the same CPU.
#[inline(always)]
fn result_record(cookie: u64) -> Option<&'static mut NetResultEvent> {
    let Some(ev) = RESULT_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return None;
    };
    zero_words(ev);
    let ev = unsafe { &mut *ev };
    ev.header = header(
        EventKind::NetConnectResult,
        core::mem::size_of::<NetResultEvent>(),
    );
    ev.cookie = cookie;
    Some(ev)
}

/// Tracepoint record layout of `sock:inet_sock_set_state` (stable since 4.16).
mod set_state {
    pub const SKADDR: usize = 8;
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;
}

/// `sock:inet_sock_set_state`: SYN_SENT → ESTABLISHED or CLOSE is the outcome of a connect we
/// reported. Runs in softirq context, so it carries no process: userspace joins by cookie.
#[inline(always)]
pub fn tcp_state(ctx: &TracePointContext) -> Result<(), i64> {
    let old: i32 = unsafe { ctx.read_at(set_state::OLDSTATE) }?;
    if old != TCP_SYN_SENT {
        return Ok(());
    }
    let new: i32 = unsafe { ctx.read_at(set_state::NEWSTATE) }?;
    if new != TCP_ESTABLISHED && new != TCP_CLOSE {
        return Ok(());
    }
    let protocol: u16 = unsafe { ctx.read_at(set_state::PROTOCOL) }?;
    if protocol as u32 != IPPROTO_TCP {
        return Ok(());
    }
    let sk: u64 = unsafe { ctx.read_at(set_state::SKADDR) }?;
    let cookie = read::<u64>(sk, off!(sk_cookie)).unwrap_or(0);
    if cookie == 0 || unsafe { PENDING_CONNECTS.get(&cookie) }.is_none() {
        return Ok(());
    }
    let _ = PENDING_CONNECTS.remove(&cookie);
    let family: u16 = unsafe { ctx.read_at(set_state::FAMILY) }?;
    let Some(ev) = result_record(cookie) else {
        return Ok(());
    };
    ev.src.family = family;
    ev.dst.family = family;
    ev.src.port = unsafe { ctx.read_at::<u16>(set_state::SPORT) }?;
    ev.dst.port = unsafe { ctx.read_at::<u16>(set_state::DPORT) }?;
    let rec = ctx.as_ptr() as u64;
    if family == AF_INET6 {
        read_into(&raw mut ev.src.addr, rec, set_state::SADDR_V6 as u64);
        read_into(&raw mut ev.dst.addr, rec, set_state::DADDR_V6 as u64);
    } else {
        read_into(
            ev.src.addr.as_mut_ptr().cast::<u32>(),
            rec,
            set_state::SADDR as u64,
        );
        read_into(
            ev.dst.addr.as_mut_ptr().cast::<u32>(),
            rec,
            set_state::DADDR as u64,
        );
    }
    if new == TCP_ESTABLISHED {
        ev.result = RESULT_ESTABLISHED;
    } else {
        ev.result = RESULT_FAILED;
        ev.error = read::<i32>(sk, off!(sk_err)).unwrap_or(0) as u32;
    }
    output_value(ev);
    Ok(())
}

/// `syscalls:sys_exit_accept{,4}`: an inbound connection handed to a process.
#[inline(always)]
pub fn accept_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let ret: i64 = unsafe { ctx.read_at(16) }?;
    accepted(ret)
}

/// An accept returned `ret`, the new fd or `-errno` (from any hook).
#[inline(always)]
pub fn accepted(ret: i64) -> Result<(), i64> {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == sensor_tgid() {
        return Ok(());
    }
    if ret < 0 {
        return Ok(());
    }
    let file = fd_to_file(current_task(), ret as u64);
    let socket = read_ptr(file, off!(file_private_data))?;
    if read_ptr(socket, off!(socket_file))? != file {
        return Ok(());
    }
    let sk = read_ptr(socket, off!(socket_sk))?;
    let family = read::<u16>(sk, off!(sk_family))?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let Some(buf) = EVENT_SCRATCH.get_ptr_mut(0) else {
        count(Counter::DropNoScratch);
        return Ok(());
    };
    let ev = unsafe { &mut *(buf as *mut NetAcceptEvent) };
    ev.header = header(EventKind::NetAccept, core::mem::size_of::<NetAcceptEvent>());
    zero_words(&raw mut ev.local);
    zero_words(&raw mut ev.remote);
    ev.local.family = family;
    ev.local.port = read::<u16>(sk, off!(sk_num)).unwrap_or(0);
    ev.remote.family = family;
    ev.remote.port = u16::from_be(read::<u16>(sk, off!(sk_dport)).unwrap_or(0));
    if family == AF_INET6 {
        read_into(&raw mut ev.local.addr, sk, off!(sk_v6_rcv_saddr));
        read_into(&raw mut ev.remote.addr, sk, off!(sk_v6_daddr));
    } else {
        read_into(
            ev.local.addr.as_mut_ptr().cast::<u32>(),
            sk,
            off!(sk_rcv_saddr),
        );
        read_into(
            ev.remote.addr.as_mut_ptr().cast::<u32>(),
            sk,
            off!(sk_daddr),
        );
    }
    ev.fd = ret as i32;
    ev.protocol = if off!(sk_protocol_size) == 1 {
        read::<u8>(sk, off!(sk_protocol)).unwrap_or(0) as u32
    } else {
        read::<u16>(sk, off!(sk_protocol)).unwrap_or(0) as u32
    };
    fill_current(&mut ev.task);
    output_value(ev);
    Ok(())
}
