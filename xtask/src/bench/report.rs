//! The report: `report.json` (everything measured) and `REPORT.md` (the same, readable), both
//! rendered from one JSON document; and the check that a report is complete.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

pub fn utc_now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub fn git_info(root: &Path) -> Value {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    json!({
        "commit": git(&["rev-parse", "--short=12", "HEAD"]),
        "uncommitted_changes": git(&["status", "--porcelain"]).map(|s| !s.is_empty()),
    })
}

/// CPU model, CPUs, kernel, memory.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let flags = field("flags").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    json!({
        "cpu_model": field("model name"),
        "cpu_mhz": field("cpu MHz"),
        "logical_cpus": cpuinfo.lines().filter(|l| l.starts_with("processor")).count(),
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "virtualized": flags.split_whitespace().any(|f| f == "hypervisor"),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "kernel_version": read("/proc/version"),
        "memory_mib": mem_kib / 1024,
    })
}

pub fn write(out: &Path, doc: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json_path = out.join("report.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(doc)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = out.join("REPORT.md");
    std::fs::write(&md_path, markdown(doc))
        .with_context(|| format!("writing {}", md_path.display()))
}

/// The report exists, parses, and has every workload with numbers (or a reason it was
/// skipped), saturation steps, the footprint and per-program costs.
pub fn verify<'a>(out: &Path, ids: impl Iterator<Item = &'a str>) -> anyhow::Result<()> {
    let path = out.join("report.json");
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    let workloads = doc["workloads"].as_array().context("no workloads")?;
    for id in ids {
        let w = workloads
            .iter()
            .find(|w| w["id"] == id)
            .with_context(|| format!("workload {id} missing from the report"))?;
        let measured = w["baseline"]["median"].as_f64().is_some_and(|x| x > 0.0)
            && w["sensor"]["median"].as_f64().is_some_and(|x| x > 0.0);
        if !measured && w["skipped"].as_str().is_none() {
            bail!("workload {id} has neither numbers nor a reason it was skipped");
        }
    }
    if doc["saturation"]["steps"]
        .as_array()
        .is_none_or(|s| s.is_empty())
    {
        bail!("no saturation steps in the report");
    }
    if doc["footprint"]["idle"]["sensor_rss_kib"]
        .as_u64()
        .is_none()
    {
        bail!("no idle footprint in the report");
    }
    if doc["bpf_programs"]["programs"]
        .as_array()
        .is_none_or(|p| p.is_empty())
    {
        bail!("no per-program BPF statistics in the report");
    }
    if !out.join("REPORT.md").exists() {
        bail!("REPORT.md missing");
    }
    Ok(())
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        None => "—".into(),
        Some(x) if x.abs() >= 100.0 => group(x.round() as i64),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn group(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn mib(v: &Value) -> String {
    v.as_f64()
        .map_or("—".into(), |k| format!("{:.1} MiB", k / 1024.0))
}

fn pct(v: &Value) -> String {
    v.as_f64().map_or("—".into(), |x| format!("{x:.1}%"))
}

fn met(v: &Value) -> &'static str {
    match v.as_bool() {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "—",
    }
}

fn markdown(d: &Value) -> String {
    let mut o = String::new();
    let m = &d["machine"];
    let c = &d["config"];
    let _ = writeln!(o, "# nhi-sensor overhead benchmark\n");
    let _ = writeln!(
        o,
        "Generated by `cargo xtask bench{}` on {} (commit {}{}), in {:.0} s. The JSON \
         version with every round is [`report.json`](report.json).\n",
        if d["mode"] == "smoke" { " --smoke" } else { "" },
        d["generated_at"].as_str().unwrap_or("?"),
        d["git"]["commit"].as_str().unwrap_or("?"),
        if d["git"]["uncommitted_changes"] == true {
            ", with uncommitted changes"
        } else {
            ""
        },
        d["duration_secs"].as_f64().unwrap_or(0.0),
    );
    if d["mode"] == "smoke" {
        let _ = writeln!(
            o,
            "> **Smoke run**: one short round per workload, to check the harness. The numbers \
             are noise.\n"
        );
    }
    summary_md(&mut o, d);
    let _ = writeln!(o, "## Machine\n");
    let _ = writeln!(
        o,
        "- CPU: {} ({} logical CPUs, nproc {}){}",
        m["cpu_model"].as_str().unwrap_or("?"),
        m["logical_cpus"],
        m["nproc"],
        if m["virtualized"] == true {
            ", virtual machine"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "- Memory: {} MiB", m["memory_mib"]);
    let _ = writeln!(o, "- Kernel: {}", m["kernel"].as_str().unwrap_or("?"));
    let hooks: Vec<String> = c["hooks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            format!(
                "{} → `{}`",
                h["job"].as_str().unwrap_or("?"),
                h["hook"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let _ = writeln!(o, "- Hooks the sensor chose: {}\n", hooks.join("; "));

    let _ = writeln!(o, "## Method\n");
    let _ = writeln!(
        o,
        "{} round(s); in each round every workload runs for {} s **without the sensor** \
         (baseline); then, for the workloads with a floor (†), alternating sub-windows without \
         and with an **empty BPF program** (`r0 = 0; exit`) attached to each of the {} \
         tracepoints the sensor uses (the floor: the cost of the hooks themselves, which no \
         filtering inside a program can remove); then **with the sensor** (started fresh each \
         round, default rules plus `--watch` on the benchmark directory, embedded collector \
         storing every event). The tables give the \
         median of the rounds; *ratio* is sensor / baseline throughput. Load generators are \
         Rust threads in `cargo xtask` (open/read/close and connect loops) and spawned \
         processes (`/bin/true`, `/bin/cat`, `redis-benchmark`). Loss is checked end to end \
         for every sensor window: the kernel's drop counters, and that the store holds \
         exactly what the sensor emitted with no sequence gap.\n",
        c["rounds"],
        c["measure_secs"],
        c["floor_tracepoints"].as_array().map_or(0, Vec::len),
    );

    if d["repeated_rounds"].as_u64().is_some_and(|n| n > 0) {
        let _ = writeln!(
            o,
            "{} round(s) were measured again because another sensor (a test suite's) started \
             during them; its hooks would have been in the baseline.\n",
            d["repeated_rounds"]
        );
    }
    let _ = writeln!(o, "## Workloads\n");
    let _ = writeln!(
        o,
        "| workload | unit | baseline | with sensor | ratio (rounds: min–max) | floor † | goal | |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|---|---|");
    let workloads = d["workloads"].as_array().cloned().unwrap_or_default();
    for w in &workloads {
        if let Some(why) = w["skipped"].as_str() {
            let _ = writeln!(
                o,
                "| {} | {} | skipped: {} | | | | {} | |",
                w["title"].as_str().unwrap_or("?"),
                w["unit"].as_str().unwrap_or(""),
                why.replace('|', "/"),
                w["goal"].as_str().unwrap_or("—"),
            );
            continue;
        }
        let paired: Vec<f64> = w["paired_ratios"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect();
        let range = match (
            paired.iter().copied().reduce(f64::min),
            paired.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) if paired.len() > 1 => format!(" ({lo:.2}–{hi:.2})"),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {}{range} | {} | {} | {} |",
            w["title"].as_str().unwrap_or("?"),
            w["unit"].as_str().unwrap_or(""),
            num(&w["baseline"]["median"]),
            num(&w["sensor"]["median"]),
            num(&w["ratio"]),
            match w["floor"]["ratio"].as_f64() {
                Some(r) => format!("{r:.2} ({:+.1}% per op)", 100.0 * (1.0 / r - 1.0)),
                None => String::new(),
            },
            w["goal"].as_str().unwrap_or("—"),
            met(&w["met"]),
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "† Throughput with an empty program on each of the sensor's tracepoints divided by \
         throughput without, measured in alternating sub-windows (median over the rounds): \
         the cost of the hooks themselves.\n"
    );
    let _ = writeln!(
        o,
        "Sensor side of each workload (medians over the rounds):\n"
    );
    let _ = writeln!(
        o,
        "| workload | slower per op | sensor CPU (% of one core) | events per op | BPF ns per op | zero loss (kernel → store) |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---|");
    for w in workloads.iter().filter(|w| w["skipped"].is_null()) {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            w["id"].as_str().unwrap_or("?"),
            pct(&w["slowdown_pct"]),
            pct(&w["sensor_cpu_pct_of_one_core"]),
            num(&w["events_per_op"]),
            num(&w["bpf_ns_per_op"]),
            if w["zero_loss"] == true {
                "yes".to_string()
            } else {
                format!("**no** ({} kernel drops)", num(&w["kernel_drops"]))
            },
        );
    }
    let _ = writeln!(o);
    let misses: Vec<&Value> = workloads.iter().filter(|w| w["met"] == false).collect();
    if !misses.is_empty() {
        let _ = writeln!(o, "### Where a goal is not met\n");
        for w in misses {
            let _ = writeln!(
                o,
                "- **{}** ({:.1}% slower per operation, ratio {}): {}",
                w["id"].as_str().unwrap_or("?"),
                w["slowdown_pct"].as_f64().unwrap_or(0.0),
                num(&w["ratio"]),
                w["explanation"].as_str().unwrap_or("")
            );
        }
        let _ = writeln!(o);
    }

    saturation_md(&mut o, &d["saturation"]);
    footprint_md(&mut o, d);
    bpf_md(&mut o, &d["bpf_programs"]);

    let _ = writeln!(o, "## Sensor runs\n");
    let _ = writeln!(
        o,
        "| round | start-up | SIGTERM to exit | RSS after | peak RSS | store complete (no gap, no loss) | other sensors running | CPU steal (baseline / floor / sensor pass) |"
    );
    let _ = writeln!(o, "|---:|---:|---:|---:|---:|---|---|---|");
    for p in d["sensor_passes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "| {} | {:.1} s | {} | {} | {} | {} | {} | {} / {} / {} |",
            p["round"],
            p["startup_secs"].as_f64().unwrap_or(0.0),
            stop_text(&p["stop"]),
            mib(&p["rss_kib_after"]),
            mib(&p["peak_rss_kib"]),
            if p["store_complete"] == true {
                "yes"
            } else {
                "**no**"
            },
            match p["other_sensors_running"].as_array() {
                Some(a) if !a.is_empty() => format!("**yes** (pids {a:?})"),
                _ => "none".to_string(),
            },
            pct(&p["cpu_steal_pct"]["baseline"]),
            pct(&p["cpu_steal_pct"]["floor"]),
            pct(&p["cpu_steal_pct"]["sensor"])
        );
    }
    o
}

/// The overhead budget of the issue, row by row, against what was measured.
fn summary_md(o: &mut String, d: &Value) {
    let w = |id: &str| {
        d["workloads"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["id"] == id))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let measured = |w: &Value| -> String {
        if let Some(why) = w["skipped"].as_str() {
            return format!("skipped ({})", why.replace('|', "/"));
        }
        let floor = w["floor"]["ratio"]
            .as_f64()
            .map(|r| format!("; floor (empty programs) {:.1}%", 100.0 * (1.0 / r - 1.0)))
            .unwrap_or_default();
        format!(
            "{:.1}% slower per op (ratio {}){floor}",
            w["slowdown_pct"].as_f64().unwrap_or(0.0),
            num(&w["ratio"])
        )
    };
    let _ = writeln!(o, "## Summary against the overhead budget\n");
    let _ = writeln!(o, "| budget row | goal | measured | |");
    let _ = writeln!(o, "|---|---|---|---|");
    for (row, id) in [
        ("unwatched opens", "unwatched_opens"),
        ("watched reads, repeated by one task", "watched_reads_task"),
    ] {
        let w = w(id);
        let _ = writeln!(
            o,
            "| {row} | {} | {} | {} |",
            w["goal"].as_str().unwrap_or("—"),
            measured(&w),
            met(&w["met"])
        );
    }
    let e = w("exec_1000");
    let _ = writeln!(
        o,
        "| exec storm at 1,000/s | {} | {} of the baseline rate; sensor {} of one core; {} | {} |",
        e["goal"].as_str().unwrap_or("—"),
        e["ratio"]
            .as_f64()
            .map_or("—".into(), |r| format!("{:.1}%", 100.0 * r)),
        pct(&e["sensor_cpu_pct_of_one_core"]),
        if e["zero_loss"] == true {
            "zero loss"
        } else {
            "**loss**"
        },
        met(&e["met"])
    );
    for (row, id) in [
        ("connect storm", "connect_storm"),
        ("redis-benchmark SET", "redis_set"),
        ("redis-benchmark GET", "redis_get"),
    ] {
        let w = w(id);
        let _ = writeln!(
            o,
            "| {row} | {} | {} | {} |",
            w["goal"].as_str().unwrap_or("—"),
            if w["skipped"].is_null() {
                format!(
                    "{:.1}% fewer (ratio {})",
                    w["fewer_pct"].as_f64().unwrap_or(0.0),
                    num(&w["ratio"])
                )
            } else {
                measured(&w)
            },
            met(&w["met"])
        );
    }
    let s = &d["saturation"];
    let _ = writeln!(
        o,
        "| saturation | ≥ 200,000 events/s end to end, zero loss; ≤ 0.3 CPU-s per 100k events | {} events/s with zero loss; {} CPU-s per 100k events | {} |",
        num(&s["zero_loss_events_per_sec"]),
        num(&s["cpu_secs_per_100k_events"]),
        met(&s["met"])
    );
    let l = &d["footprint"]["live_processes"];
    let _ = writeln!(
        o,
        "| footprint | sensor RSS ≤ 64 MiB with 10,000 live processes | {} with {} live processes | {} |",
        mib(&l["sensor_rss_kib"]),
        l["spawned"],
        met(&l["met"])
    );
    let _ = writeln!(o);
}

fn stop_text(s: &Value) -> String {
    let secs = s["secs"].as_f64().unwrap_or(0.0);
    if s["clean"] == true {
        format!("{secs:.1} s")
    } else {
        format!("**{secs:.1} s, {}**", s["status"].as_str().unwrap_or("?"))
    }
}

fn saturation_md(o: &mut String, s: &Value) {
    let _ = writeln!(
        o,
        "## Saturation (sensor → gRPC → separate collector → store)\n"
    );
    let _ = writeln!(
        o,
        "Generator: {}. Each step: the window, then the time the pipeline needs to store \
         everything (*drain*); end-to-end rate = stored events / (window + drain). A step has \
         zero loss when the kernel dropped nothing and the collector stored exactly the \
         sensor's emitted events with no sequence gap and no declared loss.\n",
        s["generator"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        o,
        "| target opens/s | opens/s | kernel records/s | end to end events/s | drain | sensor CPU-s/100k | collector CPU-s/100k | loss |"
    );
    let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|---|");
    for st in s["steps"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.1} s | {} | {} | {} |",
            if st["target_opens_per_sec"].is_null() {
                "flat out".to_string()
            } else {
                num(&st["target_opens_per_sec"])
            },
            num(&st["opens_per_sec"]),
            num(&st["kernel_records_per_sec"]),
            num(&st["end_to_end_events_per_sec"]),
            st["drain_secs"].as_f64().unwrap_or(0.0),
            num(&st["sensor_cpu_secs_per_100k_events"]),
            num(&st["collector_cpu_secs_per_100k_events"]),
            if st["loss"]["zero_loss"] == true {
                "none".to_string()
            } else {
                format!(
                    "**{}**: {} kernel drops, {} emitted / {} stored, {} gaps, {} declared lost",
                    st["loss_at"].as_str().unwrap_or("?"),
                    num(&st["loss"]["kernel_drops"]),
                    num(&st["loss"]["emitted"]),
                    num(&st["loss"]["stored"]),
                    num(&st["loss"]["sequence_gaps"]),
                    num(&st["loss"]["lost_declared"]),
                )
            }
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "- Highest end-to-end rate with zero loss: **{} events/s**; CPU per 100k events at \
         that step (sensor + collector): **{} CPU-seconds**. Goal: {} — **{}**.",
        num(&s["zero_loss_events_per_sec"]),
        num(&s["cpu_secs_per_100k_events"]),
        s["goal"].as_str().unwrap_or("?"),
        met(&s["met"]).trim_matches('*')
    );
    if let Some(e) = s["explanation"].as_str() {
        let _ = writeln!(o, "- {e}");
    }
    let _ = writeln!(o);
}

fn footprint_md(o: &mut String, d: &Value) {
    let f = &d["footprint"];
    let s = &d["saturation"];
    let l = &f["live_processes"];
    let _ = writeln!(o, "## Footprint\n");
    let _ = writeln!(o, "| | RSS | CPU (% of one core) |");
    let _ = writeln!(o, "|---|---:|---:|");
    let _ = writeln!(
        o,
        "| sensor (embedded collector), idle {:.1} s | {} | {} |",
        f["idle"]["secs"].as_f64().unwrap_or(0.0),
        mib(&f["idle"]["sensor_rss_kib"]),
        pct(&f["idle"]["sensor_cpu_pct_of_one_core"])
    );
    let _ = writeln!(
        o,
        "| sensor (shipping), idle | {} | {} |",
        mib(&s["idle"]["sensor_rss_kib"]),
        pct(&s["idle"]["sensor_cpu_pct_of_one_core"])
    );
    let _ = writeln!(
        o,
        "| collector, idle | {} | {} |",
        mib(&s["idle"]["collector_rss_kib"]),
        pct(&s["idle"]["collector_cpu_pct_of_one_core"])
    );
    let _ = writeln!(
        o,
        "| sensor (shipping), saturation (peak) | {} | {} |",
        mib(&s["under_load"]["sensor_peak_rss_kib"]),
        pct(&s["under_load"]["sensor_cpu_pct_of_one_core_peak"])
    );
    let _ = writeln!(
        o,
        "| collector, saturation (peak) | {} | {} |",
        mib(&s["under_load"]["collector_peak_rss_kib"]),
        pct(&s["under_load"]["collector_cpu_pct_of_one_core_peak"])
    );
    let _ = writeln!(
        o,
        "| sensor with {} live processes ({} tracked) | {} | |",
        l["spawned"],
        num(&l["processes_tracked"]),
        mib(&l["sensor_rss_kib"])
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "- Sensor start-up (load, verify, attach, /proc scan): {:.1} s; SIGTERM to exit after \
         the per-program measurements: {}.",
        f["sensor_startup_secs"].as_f64().unwrap_or(0.0),
        stop_text(&f["sensor_stop"])
    );
    let _ = writeln!(
        o,
        "- Live processes: RSS {} before, {} with {} more processes tracked ({} KiB each). \
         Goal: {} — **{}**.{}",
        mib(&l["sensor_rss_kib_before"]),
        mib(&l["sensor_rss_kib"]),
        num(&serde_json::json!(
            l["processes_tracked"].as_f64().unwrap_or(0.0)
                - l["processes_tracked_before"].as_f64().unwrap_or(0.0)
        )),
        num(&l["kib_per_tracked_process"]),
        l["goal"].as_str().unwrap_or("?"),
        met(&l["met"]).trim_matches('*'),
        if l["reached"] == true {
            ""
        } else {
            " (the process table did not reach the expected size in time)"
        }
    );
    let _ = writeln!(o);
}

fn bpf_md(o: &mut String, b: &Value) {
    let _ = writeln!(o, "## Per-program run time (kernel BPF stats)\n");
    let _ = writeln!(o, "{}\n", b["note"].as_str().unwrap_or(""));
    let _ = writeln!(
        o,
        "| workload | BPF ns per op | program runs per op | programs (ns per run × runs per op) |"
    );
    let _ = writeln!(o, "|---|---:|---:|---|");
    for w in b["per_workload"].as_array().into_iter().flatten() {
        let progs: Vec<String> = w["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "`{}` {} × {}",
                    p["program"].as_str().unwrap_or("?"),
                    num(&p["ns_per_run"]),
                    num(&p["runs_per_op"])
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            w["workload"].as_str().unwrap_or("?"),
            num(&w["bpf_ns_per_op"]),
            num(&w["runs_per_op"]),
            progs.join(", ")
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "| program | type | runs | ns per run |");
    let _ = writeln!(o, "|---|---|---:|---:|");
    for p in b["programs"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "| `{}` | {} | {} | {} |",
            p["program"].as_str().unwrap_or("?"),
            p["type"].as_str().unwrap_or("?"),
            num(&p["runs"]),
            num(&p["ns_per_run"])
        );
    }
    let _ = writeln!(o);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_and_rounded() {
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(-1_000), "-1,000");
        assert_eq!(num(&json!(123_456.7)), "123,457");
        assert_eq!(num(&json!(12.34)), "12.3");
        assert_eq!(num(&json!(1.234)), "1.23");
        assert_eq!(num(&Value::Null), "—");
    }

    #[test]
    fn an_empty_report_renders_and_fails_verification() {
        let md = markdown(&json!({}));
        assert!(md.contains("## Summary against the overhead budget"));
        let dir =
            std::env::temp_dir().join(format!("nhi-bench-report-test-{}", std::process::id()));
        write(&dir, &json!({"workloads": []})).unwrap();
        let err = verify(&dir, ["unwatched_opens"].into_iter()).unwrap_err();
        assert!(err.to_string().contains("unwatched_opens"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
