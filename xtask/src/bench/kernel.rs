//! The kernel side of the measurements: an *empty* BPF program attached to the sensor's own
//! tracepoints (the floor no program logic can go below), the kernel's per-program run-time
//! statistics (`kernel.bpf_stats_enabled`, read with bpftool), and which tracepoints a process
//! has programs on.

use std::{
    collections::BTreeMap,
    os::fd::{FromRawFd as _, OwnedFd},
    path::PathBuf,
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::procs::output;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `_IO('$', 0)` and `_IOW('$', 8, __u32)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`; the rest must be zero.
#[repr(C, align(8))]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    rest: [u8; 64],
}

/// `r0 = 0; exit`: a program that does nothing.
const EMPTY_PROGRAM: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];

/// An empty program attached to tracepoints; detached on drop.
pub struct EmptyPrograms {
    perf_fds: Vec<OwnedFd>,
    _prog: OwnedFd,
}

impl Drop for EmptyPrograms {
    fn drop(&mut self) {
        // Each close waits for RCU grace periods (tracepoint unregistration), ~70 ms here;
        // closed in parallel they share them.
        let fds = std::mem::take(&mut self.perf_fds);
        std::thread::scope(|s| {
            for fd in fds {
                s.spawn(move || drop(fd));
            }
        });
    }
}

/// Attaches one empty program to each tracepoint (`category/name`, as under
/// `/sys/kernel/tracing/events/`).
pub fn attach_empty(tracepoints: &[String]) -> anyhow::Result<EmptyPrograms> {
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..15].copy_from_slice(b"nhi_bench_floor");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_TRACEPOINT,
        insn_cnt: EMPTY_PROGRAM.len() as u32,
        insns: EMPTY_PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        rest: [0; 64],
    };
    // SAFETY: `attr` is a valid, zero-padded BPF_PROG_LOAD attribute pointing at live memory.
    let prog = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            size_of::<ProgLoadAttr>(),
        )
    };
    if prog < 0 {
        return Err(std::io::Error::last_os_error()).context("loading an empty BPF program");
    }
    // SAFETY: a new fd we own.
    let prog = unsafe { OwnedFd::from_raw_fd(prog as i32) };
    let mut fds = vec![];
    for tp in tracepoints {
        let id_file = tracefs()?.join("events").join(tp).join("id");
        let id: u64 = std::fs::read_to_string(&id_file)
            .with_context(|| format!("reading {}", id_file.display()))?
            .trim()
            .parse()
            .with_context(|| format!("parsing {}", id_file.display()))?;
        // `struct perf_event_attr`: type, size, config; everything else zero (128 bytes is
        // PERF_ATTR_SIZE_VER7, which every kernel since 5.x accepts).
        let mut pattr = [0u64; 16];
        pattr[0] = PERF_TYPE_TRACEPOINT as u64 | (128u64 << 32);
        pattr[1] = id;
        // SAFETY: a valid perf_event_attr; pid -1 with cpu 0 is how tracepoint programs are
        // attached (the program then runs on every CPU).
        let pfd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                pattr.as_ptr(),
                -1 as libc::pid_t,
                0 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if pfd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("perf_event_open on tracepoint {tp}"));
        }
        // SAFETY: a new fd we own.
        let pfd = unsafe { OwnedFd::from_raw_fd(pfd as i32) };
        use std::os::fd::AsRawFd as _;
        // SAFETY: ioctls on our perf event fd with the documented argument types.
        unsafe {
            if libc::ioctl(pfd.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("attaching the empty program to {tp}"));
            }
            if libc::ioctl(pfd.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("enabling tracepoint {tp}"));
            }
        }
        fds.push(pfd);
    }
    Ok(EmptyPrograms {
        perf_fds: fds,
        _prog: prog,
    })
}

fn tracefs() -> anyhow::Result<PathBuf> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if std::path::Path::new(p).join("events").is_dir() {
            return Ok(p.into());
        }
    }
    bail!("tracefs is not mounted (/sys/kernel/tracing)")
}

/// The tracepoints (`category/name`) that process `pid` has BPF programs on: its BPF links of
/// type `perf` on a tracepoint, from `/proc/PID/fdinfo` (bpftool 7.1 does not name them).
pub fn tracepoints_of(pid: u32) -> anyhow::Result<Vec<String>> {
    let root = tracefs()?;
    let dir = format!("/proc/{pid}/fdinfo");
    let mut tps = vec![];
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':').map(str::trim))
        };
        if field("link_type") != Some("perf") || field("event_type") != Some("tracepoint") {
            continue;
        }
        let Some(name) = field("tp_name") else {
            continue;
        };
        // fdinfo gives the event name only; find its category.
        let category = std::fs::read_dir(root.join("events"))?
            .flatten()
            .find(|c| c.path().join(name).join("id").exists())
            .map(|c| c.file_name().to_string_lossy().into_owned());
        if let Some(c) = category {
            tps.push(format!("{c}/{name}"));
        }
    }
    tps.sort();
    tps.dedup();
    Ok(tps)
}

/// One BPF program's cumulative statistics.
#[derive(Debug, Clone, Default)]
pub struct ProgStats {
    pub name: String,
    pub prog_type: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub pids: Vec<u64>,
}

/// Every loaded program by id (`bpftool prog show --json`).
pub fn prog_stats() -> anyhow::Result<BTreeMap<u64, ProgStats>> {
    let out = output(Command::new("bpftool").args(["prog", "show", "--json"]))?;
    let v: Value = serde_json::from_str(&out).context("parsing `bpftool prog show --json`")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                ProgStats {
                    name: p["name"].as_str().unwrap_or("?").to_string(),
                    prog_type: p["type"].as_str().unwrap_or("?").to_string(),
                    run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                    run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
                    pids: p["pids"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x["pid"].as_u64())
                        .collect(),
                },
            ))
        })
        .collect())
}

/// `kernel.bpf_stats_enabled` set to 1 for this value's lifetime; the previous value is
/// restored on drop.
pub struct BpfStatsEnabled {
    previous: String,
}

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsEnabled {
    pub fn enable() -> anyhow::Result<BpfStatsEnabled> {
        let previous = std::fs::read_to_string(BPF_STATS_SYSCTL)
            .with_context(|| format!("reading {BPF_STATS_SYSCTL}"))?
            .trim()
            .to_string();
        std::fs::write(BPF_STATS_SYSCTL, "1")
            .with_context(|| format!("writing 1 to {BPF_STATS_SYSCTL}"))?;
        Ok(BpfStatsEnabled { previous })
    }
}

impl Drop for BpfStatsEnabled {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS_SYSCTL, &self.previous) {
            say!(
                "could not restore {BPF_STATS_SYSCTL} to {}: {e}",
                self.previous
            );
        }
    }
}
