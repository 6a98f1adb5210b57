//! One sensor (default configuration, embedded collector) measured on its own: start-up, idle
//! CPU and RSS, the kernel's per-program run times under each workload, and RSS with thousands
//! of live processes in its process table. Also finds the tracepoints the floor mirrors.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    Ctx, SETTLE_TIMEOUT, kernel, load, measure,
    procs::{self, CpuMeter, status_kib},
    sensor::{Sensor, round3},
};

pub struct Probe {
    pub hooks: Vec<(String, String)>,
    pub floor_tracepoints: Vec<String>,
    pub footprint: Value,
    pub bpf: Value,
    /// Per workload id: `{bpf_ns_per_op, runs_per_op}`.
    pub bpf_per_op: BTreeMap<&'static str, Value>,
}

/// The workloads whose per-program costs are measured (one window each).
const BPF_WORKLOADS: &[&str] = &[
    "unwatched_opens",
    "watched_reads_task",
    "watched_reads_processes",
    "exec_1000",
    "connect_storm",
    "redis_get",
];

pub fn probe(ctx: &Ctx) -> anyhow::Result<Probe> {
    say!("footprint and per-program costs");
    let others = procs::wait_for_no_foreign_sensors(super::quiet_wait(&ctx.plan));
    let before: Vec<u64> = kernel::prog_stats()?.into_keys().collect();
    let mut s = Sensor::start(&ctx.bin, ctx.watched.path(), None, &[])?;
    let pid = s.pid();
    let hooks = s.hooks();
    let floor_tracepoints = kernel::tracepoints_of(pid)?;
    let rss_start = status_kib(pid, "VmRSS")?;
    s.settle(SETTLE_TIMEOUT)?;
    // Idle means after the start-up work (the /proc scan's events are stored by now).
    if !ctx.plan.smoke {
        std::thread::sleep(Duration::from_secs(2));
    }
    let cpu = CpuMeter::start(pid)?;
    std::thread::sleep(ctx.plan.idle);
    let (idle_cpu, idle_wall) = cpu.read()?;
    let rss_idle = status_kib(pid, "VmRSS")?;

    let ours: Vec<u64> = kernel::prog_stats()?
        .into_iter()
        .filter(|(id, p)| {
            !before.contains(id) && (p.pids.is_empty() || p.pids.contains(&(pid as u64)))
        })
        .map(|(id, _)| id)
        .collect();
    say!(
        "idle: {:.1}% of one core, RSS {} KiB",
        100.0 * idle_cpu / idle_wall,
        rss_idle
    );

    // Many live processes (first: a backlog from the workloads below would slow the count).
    let tracked_before = s.scrape()?.sum("nhi_sensor_processes_tracked");
    let n = sleeper_budget(ctx.plan.sleepers);
    let rss_before = status_kib(pid, "VmRSS")?;
    let t = Instant::now();
    let sleepers = load::Sleepers::fork(n)?;
    let fork_secs = t.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    let reached = loop {
        let tracked = s.scrape()?.sum("nhi_sensor_processes_tracked");
        if tracked >= tracked_before + 0.99 * n as f64 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Let the table's caches settle, then read.
    std::thread::sleep(Duration::from_millis(500));
    let rss_sleepers = status_kib(pid, "VmRSS")?;
    say!("{n} live processes: sensor RSS {rss_sleepers} KiB (before: {rss_before} KiB)");
    let tracked = s.scrape()?.sum("nhi_sensor_processes_tracked");
    let live = sleepers.len();
    drop(sleepers);
    let after_exit = s.settle(SETTLE_TIMEOUT)?;

    let (bpf, bpf_per_op) = bpf_costs(ctx, &ours)?;
    let rss_after_load = status_kib(pid, "VmRSS")?;
    s.settle(SETTLE_TIMEOUT)?;
    let hwm = status_kib(pid, "VmHWM")?;
    let startup = s.startup.as_secs_f64();
    let stopped = s.stop()?;
    let streams = &stopped.streams;

    let added = tracked - tracked_before;
    let footprint = json!({
        "sensor_startup_secs": round3(startup),
        "sensor_rss_kib_at_start": rss_start,
        "idle": {
            "secs": round3(idle_wall),
            "sensor_cpu_pct_of_one_core": round3(100.0 * idle_cpu / idle_wall),
            "sensor_rss_kib": rss_idle,
        },
        "sensor_rss_kib_after_workloads": rss_after_load,
        "live_processes": {
            "requested": ctx.plan.sleepers,
            "spawned": live,
            "fork_secs": round3(fork_secs),
            "processes_tracked_before": tracked_before,
            "processes_tracked": tracked,
            "sensor_rss_kib_before": rss_before,
            "sensor_rss_kib": rss_sleepers,
            "kib_per_tracked_process": (added > 0.0)
                .then(|| round3((rss_sleepers as f64 - rss_before as f64) / added)),
            "reached": reached,
            "goal": "sensor RSS ≤ 64 MiB with 10,000 live processes tracked",
            "met": (live >= 10_000).then_some(rss_sleepers <= 64 * 1024),
            "zero_loss_through_exits": after_exit.zero_loss(),
        },
        "sensor_peak_rss_kib": hwm,
        "other_sensors_running": others,
        "sensor_stop": stopped.to_json(),
        "store_streams": streams.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
    });
    Ok(Probe {
        hooks,
        floor_tracepoints,
        footprint,
        bpf,
        bpf_per_op,
    })
}

/// Runs each workload once with `kernel.bpf_stats_enabled=1` and attributes the run time of the
/// programs `ours` to it.
fn bpf_costs(ctx: &Ctx, ours: &[u64]) -> anyhow::Result<(Value, BTreeMap<&'static str, Value>)> {
    let _stats = kernel::BpfStatsEnabled::enable()?;
    let mut per_op = BTreeMap::new();
    let mut per_workload = vec![];
    // By program name: (run time, runs, type).
    let mut per_prog: BTreeMap<String, (u64, u64, String)> = BTreeMap::new();
    for id in BPF_WORKLOADS {
        let s0 = kernel::prog_stats()?;
        // Enough runs for stable averages; longer windows only queue more events.
        let dur = ctx.plan.window(id).min(Duration::from_millis(500));
        let Some(out) = measure(ctx, id, dur)? else {
            continue;
        };
        let s1 = kernel::prog_stats()?;
        // By program name (one program may be attached to several hooks).
        let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for prog in ours {
            let (Some(a), Some(b)) = (s0.get(prog), s1.get(prog)) else {
                continue;
            };
            let (dn, dr) = (b.run_time_ns - a.run_time_ns, b.run_cnt - a.run_cnt);
            let e = by_name.entry(b.name.clone()).or_default();
            e.0 += dn;
            e.1 += dr;
            let e = per_prog
                .entry(b.name.clone())
                .or_insert((0, 0, b.prog_type.clone()));
            e.0 += dn;
            e.1 += dr;
        }
        let ops = out.ops.max(1) as f64;
        let (ns, runs) = by_name
            .values()
            .fold((0, 0), |(n, r), (dn, dr)| (n + dn, r + dr));
        let v = json!({
            "bpf_ns_per_op": round3(ns as f64 / ops),
            "runs_per_op": round3(runs as f64 / ops),
        });
        per_op.insert(*id, v.clone());
        per_workload.push(json!({
            "workload": id,
            "ops": out.ops,
            "rate": round3(out.rate()),
            "bpf_ns_per_op": v["bpf_ns_per_op"],
            "runs_per_op": v["runs_per_op"],
            "programs": by_name
                .iter()
                // Programs that ran at least once per 100 operations.
                .filter(|(_, (_, r))| *r as f64 / ops >= 0.01)
                .map(|(name, (n, r))| json!({
                    "program": name,
                    "runs_per_op": round3(*r as f64 / ops),
                    "ns_per_run": round3(*n as f64 / *r as f64),
                }))
                .collect::<Vec<_>>(),
        }));
    }
    let programs: Vec<Value> = per_prog
        .iter()
        .map(|(name, (ns, runs, ty))| {
            json!({
                "program": name,
                "type": ty,
                "runs": runs,
                "run_time_ns": ns,
                "ns_per_run": (*runs > 0).then(|| round3(*ns as f64 / *runs as f64)),
            })
        })
        .collect();
    let bpf = json!({
        "note": "Measured with kernel.bpf_stats_enabled=1 during this phase only (restored \
                 after): run_time_ns / run_cnt per program as bpftool reports them, one window \
                 per workload. This is the time inside the programs; the cost of the hook \
                 itself (for syscall tracepoints, every syscall of every task taking the tracing \
                 slow path) is not in it: that is what the floor measures.",
        "per_workload": per_workload,
        "programs": programs,
    });
    Ok((bpf, per_op))
}

/// `wanted` live processes, fewer if the pid space or memory cannot take them.
fn sleeper_budget(wanted: usize) -> usize {
    let pid_max: usize = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let threads: usize = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok())
        .unwrap_or(1000);
    // Leave room for everyone else on the machine.
    let free_pids = pid_max.saturating_sub(threads + 4096);
    // About 200 KiB of kernel memory per idle forked process; use at most half the free memory.
    let avail_kib: usize = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let n = wanted.min(free_pids).min(avail_kib / 2 / 200);
    if n < wanted {
        say!("only {n} live processes fit (pids/memory), not {wanted}");
    }
    n
}
