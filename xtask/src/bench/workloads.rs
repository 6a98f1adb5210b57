//! The side-by-side workloads, their goals from the overhead budget, and the interleaved rounds:
//! baseline, floor (an empty program on the sensor's tracepoints) and sensor.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::{
    Ctx, SETTLE_TIMEOUT,
    footprint::Probe,
    kernel, measure,
    procs::{self, CpuMeter, status_kib},
    sensor::{Sensor, round3},
};

/// What one workload is compared against.
#[derive(Clone, Copy)]
pub enum Goal {
    None,
    /// Time per operation at most this much longer (`0.03` = 3%).
    SlowdownAtMost(f64),
    /// Throughput at most this much lower.
    FewerAtMost(f64),
    /// The exec storm at 1,000/s: ≥ 97% of the baseline rate, zero loss, sensor < 5% of a core.
    ExecStorm,
}

pub struct Spec {
    pub id: &'static str,
    title: &'static str,
    unit: &'static str,
    /// Also measured with empty programs on the sensor's tracepoints.
    floor: bool,
    goal: Goal,
    goal_text: &'static str,
}

pub const SPECS: &[Spec] = &[
    Spec {
        id: "unwatched_opens",
        title: "Unwatched opens: open+close of a file no rule watches, one task",
        unit: "opens/s",
        floor: true,
        goal: Goal::SlowdownAtMost(0.03),
        goal_text: "≤ 3% slower",
    },
    Spec {
        id: "watched_reads_task",
        title: "Watched reads, one task: open+read+close of a watched id_ed25519",
        unit: "reads/s",
        floor: true,
        goal: Goal::SlowdownAtMost(0.10),
        goal_text: "≤ 10% slower",
    },
    Spec {
        id: "watched_reads_processes",
        title: "Watched reads, short-lived processes: /bin/cat id_ed25519, one after another",
        unit: "processes/s",
        floor: false,
        goal: Goal::None,
        goal_text: "—",
    },
    Spec {
        id: "exec_100",
        title: "Exec storm: fork+exec /bin/true paced at 100/s",
        unit: "execs/s",
        floor: false,
        goal: Goal::None,
        goal_text: "—",
    },
    Spec {
        id: "exec_1000",
        title: "Exec storm: fork+exec /bin/true paced at 1,000/s",
        unit: "execs/s",
        floor: false,
        goal: Goal::ExecStorm,
        goal_text: "≥ 97% of baseline rate, zero loss, sensor < 5% of one core",
    },
    Spec {
        id: "exec_5000",
        title: "Exec storm: fork+exec /bin/true paced at 5,000/s",
        unit: "execs/s",
        floor: false,
        goal: Goal::None,
        goal_text: "—",
    },
    Spec {
        id: "exec_max",
        title: "Exec storm: fork+exec /bin/true flat out",
        unit: "execs/s",
        floor: false,
        goal: Goal::None,
        goal_text: "—",
    },
    Spec {
        id: "connect_storm",
        title: "Connect storm: loopback TCP connect, 1-byte request/response, close; one client",
        unit: "conn/s",
        floor: true,
        goal: Goal::FewerAtMost(0.02),
        goal_text: "≤ 2% fewer",
    },
    Spec {
        id: "redis_set",
        title: "redis-benchmark SET (50 clients, loopback)",
        unit: "req/s",
        floor: true,
        goal: Goal::FewerAtMost(0.02),
        goal_text: "≤ 2% fewer",
    },
    Spec {
        id: "redis_get",
        title: "redis-benchmark GET (50 clients, loopback)",
        unit: "req/s",
        floor: true,
        goal: Goal::FewerAtMost(0.02),
        goal_text: "≤ 2% fewer",
    },
];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Baseline,
    Floor,
    Sensor,
}

#[derive(Default)]
pub struct Rounds {
    /// Per workload and mode: the rate of each round.
    samples: BTreeMap<(&'static str, Mode), Vec<f64>>,
    /// Per workload: what the sensor pass measured besides the rate, one object per round.
    detail: BTreeMap<&'static str, Vec<Value>>,
    /// Per sensor pass: start-up, memory, the store's streams.
    pub passes: Vec<Value>,
    /// Rounds measured again because another sensor started during them.
    pub repeated_rounds: usize,
    /// Per floor workload: with / without the empty programs, one ratio per round.
    floor_ratios: BTreeMap<&'static str, Vec<f64>>,
}

impl Rounds {
    fn merge(&mut self, other: Rounds) {
        for (k, v) in other.samples {
            self.samples.entry(k).or_default().extend(v);
        }
        for (k, v) in other.detail {
            self.detail.entry(k).or_default().extend(v);
        }
        self.passes.extend(other.passes);
        for (k, v) in other.floor_ratios {
            self.floor_ratios.entry(k).or_default().extend(v);
        }
    }
}

/// `plan.rounds` rounds of: baseline pass, floor pass, sensor pass (a fresh sensor each round).
///
/// Another sensor running on the machine (a test suite's) would put its hooks into the
/// baseline: each round first waits a while for none to run, and a round during which one
/// started is measured again (a bounded number of times; otherwise kept and marked).
pub fn rounds(ctx: &Ctx, floor_tps: &[String]) -> anyhow::Result<Rounds> {
    let mut r = Rounds::default();
    let wait = super::quiet_wait(&ctx.plan);
    let mut round = 1;
    while round <= ctx.plan.rounds {
        say!("round {round}/{}", ctx.plan.rounds);
        let at_start = procs::wait_for_no_foreign_sensors(wait);
        let mut this = Rounds::default();
        let seen = one_round(ctx, floor_tps, round, &mut this)?;
        if at_start.is_empty() && !seen.is_empty() && r.repeated_rounds < ctx.plan.rounds {
            say!("another sensor ran during round {round} (pids {seen:?}): measuring it again");
            r.repeated_rounds += 1;
            continue;
        }
        let mut others: Vec<u32> = at_start.iter().chain(&seen).copied().collect();
        others.sort_unstable();
        others.dedup();
        if let Some(p) = this.passes.last_mut() {
            p["other_sensors_running"] = json!(others);
        }
        r.merge(this);
        round += 1;
    }
    Ok(r)
}

/// One round; returns the pids of other sensors seen running during it.
fn one_round(
    ctx: &Ctx,
    floor_tps: &[String],
    round: usize,
    r: &mut Rounds,
) -> anyhow::Result<Vec<u32>> {
    let mut seen = vec![];
    let t = procs::cpu_steal();
    pass(ctx, Mode::Baseline, None, r)?;
    let steal_baseline = procs::steal_pct(t);
    seen.extend(procs::foreign_sensors(&[]));
    let t = procs::cpu_steal();
    if floor_tps.is_empty() {
        say!("no sensor tracepoints found: floor pass skipped");
    } else {
        floor_pass(ctx, floor_tps, r)?;
        seen.extend(procs::foreign_sensors(&[]));
    }
    let steal_floor = procs::steal_pct(t);
    let mut s = Sensor::start(&ctx.bin, ctx.watched.path(), None, &[])?;
    let startup = s.startup.as_secs_f64();
    let t = procs::cpu_steal();
    pass(ctx, Mode::Sensor, Some(&mut s), r)?;
    let steal_sensor = procs::steal_pct(t);
    seen.extend(procs::foreign_sensors(&[s.pid()]));
    let rss = status_kib(s.pid(), "VmRSS")?;
    let hwm = status_kib(s.pid(), "VmHWM")?;
    let warnings = s.warnings();
    let stopped = s.stop()?;
    let streams = &stopped.streams;
    r.passes.push(json!({
        "round": round,
        "startup_secs": round3(startup),
        "rss_kib_after": rss,
        "peak_rss_kib": hwm,
        "streams": streams.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
        "store_complete": !streams.is_empty() && streams.iter().all(|s| s.complete()),
        "warnings": warnings,
        "stop": stopped.to_json(),
        "cpu_steal_pct": {
            "baseline": round3(steal_baseline),
            "floor": round3(steal_floor),
            "sensor": round3(steal_sensor),
        },
    }));
    seen.sort_unstable();
    seen.dedup();
    Ok(seen)
}

/// The floor workloads, each measured without, with, with, and without the empty programs
/// (half windows; attached once for the middle half), so the machine's drift over those few
/// seconds cancels out: the floor is the ratio of the two halves.
fn floor_pass(ctx: &Ctx, floor_tps: &[String], r: &mut Rounds) -> anyhow::Result<()> {
    for spec in SPECS.iter().filter(|s| s.floor) {
        let half = ctx.plan.window(spec.id) / 2;
        let (mut without, mut with) = ((0u64, 0f64), (0u64, 0f64));
        let run = |acc: &mut (u64, f64), dur: Duration| -> anyhow::Result<bool> {
            let Some(out) = measure(ctx, spec.id, dur)
                .with_context(|| format!("workload {} (floor)", spec.id))?
            else {
                return Ok(false);
            };
            acc.0 += out.ops;
            acc.1 += out.secs;
            Ok(true)
        };
        if !run(&mut without, half / 2)? {
            continue;
        }
        let t = Instant::now();
        let empty = match kernel::attach_empty(floor_tps) {
            Ok(e) => e,
            Err(e) => {
                say!("floor pass skipped: {e:#}");
                return Ok(());
            }
        };
        let attach_secs = t.elapsed().as_secs_f64();
        run(&mut with, half)?;
        let t = Instant::now();
        drop(empty);
        let detach_secs = t.elapsed().as_secs_f64();
        run(&mut without, half / 2)?;
        if with.1 == 0.0 || without.1 == 0.0 {
            continue;
        }
        let (rate_with, rate_without) = (with.0 as f64 / with.1, without.0 as f64 / without.1);
        r.samples
            .entry((spec.id, Mode::Floor))
            .or_default()
            .push(rate_with);
        r.floor_ratios
            .entry(spec.id)
            .or_default()
            .push(rate_with / rate_without);
        say!(
            "Floor {}: {rate_with:.0} {} with empty programs, {rate_without:.0} without ({:+.1}% per op; attach {attach_secs:.2} s, detach {detach_secs:.2} s)",
            spec.id,
            spec.unit,
            100.0 * (rate_without / rate_with - 1.0)
        );
    }
    Ok(())
}

fn pass(
    ctx: &Ctx,
    mode: Mode,
    mut sensor: Option<&mut Sensor>,
    r: &mut Rounds,
) -> anyhow::Result<()> {
    // Let the sensor's start-up burst (the /proc scan's events) drain first.
    let mut before = match sensor.as_deref_mut() {
        Some(s) => Some(s.settle(SETTLE_TIMEOUT)?),
        None => None,
    };
    for spec in SPECS {
        let cpu = match sensor.as_deref() {
            Some(s) => Some(CpuMeter::start(s.pid())?),
            None => None,
        };
        let Some(out) = measure(ctx, spec.id, ctx.plan.window(spec.id))
            .with_context(|| format!("workload {} ({mode:?})", spec.id))?
        else {
            continue;
        };
        r.samples
            .entry((spec.id, mode))
            .or_default()
            .push(out.rate());
        say!("{mode:?} {}: {:.0} {}", spec.id, out.rate(), spec.unit);
        if let (Some(s), Some(cpu), Some(b)) = (sensor.as_deref_mut(), cpu, before.as_ref()) {
            let (window_cpu, _) = cpu.read()?;
            let after = s.settle(SETTLE_TIMEOUT)?;
            let (total_cpu, _) = cpu.read()?;
            let acc = after.delta(b);
            r.detail.entry(spec.id).or_default().push(json!({
                "rate": round3(out.rate()),
                "ops": out.ops,
                "window_secs": round3(out.secs),
                "sensor_cpu_pct_of_one_core": round3(100.0 * window_cpu / out.secs),
                "sensor_catch_up_cpu_secs": round3(total_cpu - window_cpu),
                "events_per_op": if out.ops > 0 { round3(acc.spooled / out.ops as f64) } else { 0.0 },
                "loss": acc.to_json(),
            }));
            before = Some(after);
        }
    }
    Ok(())
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| round3(*x)).collect()
}

/// One object per workload: medians, ratios, the goal and whether it was met, and why not.
pub fn results(r: &Rounds, probe: &Probe, skipped_note: Option<&str>) -> Vec<Value> {
    SPECS
        .iter()
        .map(|spec| {
            let get = |m: Mode| r.samples.get(&(spec.id, m)).cloned().unwrap_or_default();
            let (b, f, s) = (get(Mode::Baseline), get(Mode::Floor), get(Mode::Sensor));
            let detail = r.detail.get(spec.id).cloned().unwrap_or_default();
            let (Some(bm), Some(sm)) = (median(&b), median(&s)) else {
                return json!({
                    "id": spec.id, "title": spec.title, "unit": spec.unit,
                    "goal": spec.goal_text, "met": null,
                    "skipped": skipped_note.unwrap_or("not measured"),
                });
            };
            let nums =
                |k: &str| -> Vec<f64> { detail.iter().filter_map(|d| d[k].as_f64()).collect() };
            let floor_ratios = r.floor_ratios.get(spec.id).cloned().unwrap_or_default();
            let m = Measured {
                base: bm,
                sensor: sm,
                floor_ratio: median(&floor_ratios),
                cpu_pct: median(&nums("sensor_cpu_pct_of_one_core")),
                events_per_op: median(&nums("events_per_op")),
                zero_loss: !detail.is_empty()
                    && detail.iter().all(|d| d["loss"]["zero_loss"] == true),
                drops: detail
                    .iter()
                    .filter_map(|d| d["loss"]["kernel_drops"].as_f64())
                    .sum(),
                bpf: probe.bpf_per_op.get(spec.id),
            };
            let (ratio, slowdown, fewer) = (sm / bm, bm / sm - 1.0, 1.0 - sm / bm);
            let met = match spec.goal {
                Goal::None => None,
                Goal::SlowdownAtMost(x) => Some(slowdown <= x),
                Goal::FewerAtMost(x) => Some(fewer <= x),
                Goal::ExecStorm => {
                    Some(ratio >= 0.97 && m.zero_loss && m.cpu_pct.is_some_and(|c| c < 5.0))
                }
            };
            let explanation = if met == Some(false) {
                explain(spec, &m, probe)
            } else {
                String::new()
            };
            json!({
                "id": spec.id,
                "title": spec.title,
                "unit": spec.unit,
                "baseline": {"median": round3(bm), "rounds": rounded(&b)},
                "floor": m.floor_ratio.map(|fr| json!({
                    "median_with_empty_programs": median(&f).map(round3),
                    "rounds": rounded(&f),
                    "ratio": round3(fr),
                    "paired_ratios": rounded(&floor_ratios),
                })),
                "sensor": {"median": round3(sm), "rounds": rounded(&s)},
                "ratio": round3(ratio),
                "slowdown_pct": round3(100.0 * slowdown),
                "fewer_pct": round3(100.0 * fewer),
                "paired_ratios": b.iter().zip(&s).map(|(b, s)| round3(s / b)).collect::<Vec<_>>(),
                "goal": spec.goal_text,
                "met": met,
                "explanation": explanation,
                "sensor_cpu_pct_of_one_core": m.cpu_pct.map(round3),
                "events_per_op": m.events_per_op,
                "zero_loss": m.zero_loss,
                "kernel_drops": m.drops,
                "bpf_ns_per_op": m.bpf.map(|b| b["bpf_ns_per_op"].clone()),
                "sensor_rounds": detail,
            })
        })
        .collect()
}

/// The medians an explanation quotes.
struct Measured<'a> {
    base: f64,
    sensor: f64,
    /// Throughput with the empty programs / without, from paired sub-windows.
    floor_ratio: Option<f64>,
    cpu_pct: Option<f64>,
    events_per_op: Option<f64>,
    zero_loss: bool,
    drops: f64,
    bpf: Option<&'a Value>,
}

/// Why a goal is missed, from the numbers: the hook's floor, the time inside the programs, the
/// events sent to userspace, the sensor's CPU, loss.
fn explain(spec: &Spec, m: &Measured, probe: &Probe) -> String {
    let file_hook = probe
        .hooks
        .iter()
        .find(|(job, _)| job == "file-open")
        .map_or("?", |(_, h)| h.as_str());
    let slowdown = 100.0 * (m.base / m.sensor - 1.0);
    let mut parts = vec![];
    if let Some(fr) = m.floor_ratio {
        let floor_pct = 100.0 * (1.0 / fr - 1.0);
        parts.push(format!(
            "Floor: with only an empty program on each of the sensor's {} tracepoints (no \
             sensor running) this workload is already {floor_pct:.1}% slower per operation, \
             of the {slowdown:.1}% measured with the sensor: an enabled syscall tracepoint \
             sends every syscall of every task through the tracing slow path, whatever the \
             program does.{}",
            probe.floor_tracepoints.len(),
            if spec.id.contains("opens") || spec.id.contains("reads") {
                format!(
                    " On this kernel file opens are hooked by `{file_hook}` (the fentry family \
                     is refused), so this floor is the hook's, not the sensor's."
                )
            } else {
                String::new()
            }
        ));
    }
    // The per-operation comparison only means something for loops that run flat out.
    let flat_out = !matches!(spec.id, "exec_100" | "exec_1000" | "exec_5000");
    if flat_out
        && let Some(b) = m.bpf
        && let Some(ns) = b["bpf_ns_per_op"].as_f64()
    {
        let base_ns = 1e9 / m.base;
        parts.push(format!(
            "Inside the sensor's programs: {ns:.0} ns per operation ({} program runs; kernel \
             BPF stats) against {base_ns:.0} ns per operation without the sensor, i.e. \
             {:.1}%{}.",
            b["runs_per_op"]
                .as_f64()
                .map_or("?".into(), |r| format!("{r:.1}")),
            100.0 * ns / base_ns,
            if spec.id == "unwatched_opens" {
                " — mostly resolving the opened file's path in the kernel, which every open \
                 pays once any prefix rule exists (the default catalogue has them), before the \
                 rules can say it is not watched"
            } else {
                ""
            }
        ));
    }
    if let Some(e) = m.events_per_op
        && e >= 0.05
        && spec.id == "watched_reads_task"
    {
        parts.push(format!(
            "{e:.2} events per operation reach the store (file.open and file.close for every \
             read: there is no in-kernel dedupe of repeated reads by the same task yet), so the \
             sensor's userspace competes with the workload for the two vCPUs."
        ));
    }
    if m.drops > 0.0 {
        parts.push(format!(
            "The kernel dropped {:.0} events (ring buffer full): userspace did not keep up.",
            m.drops
        ));
    }
    if let Some(c) = m.cpu_pct {
        parts.push(format!(
            "Sensor CPU during the window: {c:.1}% of one core."
        ));
        if matches!(spec.goal, Goal::ExecStorm) && c >= 5.0 {
            parts.push(format!(
                "That is about {:.0} µs of sensor CPU per exec: fork, exec and exit events \
                 decoded, enriched from /proc and the process table, spooled, shipped and \
                 stored (the embedded collector runs in the same process).",
                c / 100.0 / m.base * 1e6
            ));
        }
    }
    if matches!(spec.goal, Goal::ExecStorm) && !m.zero_loss && m.drops == 0.0 {
        parts.push(
            "Not every window was acknowledged within the settle timeout or the store saw a \
             gap: see `sensor_rounds[].loss`."
                .to_string(),
        );
    }
    parts.join(" ")
}
