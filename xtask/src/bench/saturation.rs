//! Saturation: sensor → gRPC → a separate collector → its store, with watched opens stepped up
//! until something is lost. Also the idle footprint of the shipping sensor and the collector.

use std::{ffi::CString, path::PathBuf, time::Duration};

use serde_json::{Value, json};

use super::{
    Ctx, SETTLE_TIMEOUT, load,
    procs::{self, CpuMeter, status_kib},
    sensor::{Collector, Sensor, round3},
};

pub fn saturation(ctx: &Ctx) -> anyhow::Result<Value> {
    say!("saturation");
    let others = procs::wait_for_no_foreign_sensors(super::quiet_wait(&ctx.plan));
    let collector = Collector::start(&ctx.bin)?;
    // Without open dedupe: the generator's repeated opens of one file are the event stream
    // whose throughput this measures (with dedupe they would be about one event a second).
    let mut s = Sensor::start(
        &ctx.bin,
        ctx.watched.path(),
        Some(&collector),
        &["--open-dedupe-ms", "0"],
    )?;
    let (spid, cpid) = (s.pid(), collector.pid());
    s.settle(SETTLE_TIMEOUT)?;

    let (cs, cc) = (CpuMeter::start(spid)?, CpuMeter::start(cpid)?);
    std::thread::sleep(ctx.plan.idle);
    let ((s_idle, wall), (c_idle, _)) = (cs.read()?, cc.read()?);
    let idle = json!({
        "secs": round3(wall),
        "sensor_cpu_pct_of_one_core": round3(100.0 * s_idle / wall),
        "collector_cpu_pct_of_one_core": round3(100.0 * c_idle / wall),
        "sensor_rss_kib": status_kib(spid, "VmRSS")?,
        "collector_rss_kib": status_kib(cpid, "VmRSS")?,
    });

    // One watched file per worker: a prefix-rule match, not a catalogued credential, so this
    // measures the event pipeline rather than the credential parser.
    let workers = ctx.cpus;
    let files: Vec<PathBuf> = (0..workers)
        .map(|i| {
            let p = ctx.watched.join(format!("sat-{i}.dat"));
            std::fs::write(&p, "x").map(|()| p)
        })
        .collect::<Result<_, _>>()?;
    let cfiles: Vec<CString> = files
        .iter()
        .map(|p| CString::new(p.as_os_str().as_encoded_bytes()))
        .collect::<Result<_, _>>()?;

    let mut steps: Vec<Value> = vec![];
    let mut before = s.settle(SETTLE_TIMEOUT)?;
    let (mut peak_s_cpu, mut peak_c_cpu) = (0f64, 0f64);
    let mut rss_load = (0, 0);
    for rate in &ctx.plan.sat_rates {
        let (cs, cc) = (CpuMeter::start(spid)?, CpuMeter::start(cpid)?);
        let out = load::paced(workers, *rate, ctx.plan.sat_step, &|w| {
            // SAFETY: a valid NUL-terminated path; the fd is closed right away.
            let fd = unsafe { libc::open(cfiles[w].as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: our own fd.
            unsafe { libc::close(fd) };
            Ok(())
        })?;
        let ((s_win, _), (c_win, _)) = (cs.read()?, cc.read()?);
        // The sensor publishes its kernel counters every 250 ms.
        std::thread::sleep(Duration::from_millis(300));
        let window = s.scrape()?;
        rss_load.0 = rss_load.0.max(status_kib(spid, "VmRSS")?);
        rss_load.1 = rss_load.1.max(status_kib(cpid, "VmRSS")?);
        let records_in_window =
            window.series("nhi_sensor_kernel_total", "counter=\"emitted\"") - before.kernel_records;
        let after = s.settle(SETTLE_TIMEOUT)?;
        let ((s_cpu, _), (c_cpu, _)) = (cs.read()?, cc.read()?);
        peak_s_cpu = peak_s_cpu.max(100.0 * s_win / out.secs);
        peak_c_cpu = peak_c_cpu.max(100.0 * c_win / out.secs);
        let acc = after.delta(&before);
        before = after;
        let total_secs = out.secs + acc.drain_secs;
        let per100k = |cpu: f64| (acc.stored > 0.0).then(|| round3(cpu / acc.stored * 1e5));
        let loss_at = if acc.zero_loss() {
            "none"
        } else if acc.kernel_drops > 0.0 {
            "kernel: ring buffer full (records the programs could not submit)"
        } else if acc.gaps > 0.0 || acc.lost > 0.0 {
            "pipeline: sequence gaps or declared loss at the collector"
        } else if acc.decode_errors > 0.0 {
            "sensor: undecodable records"
        } else {
            "pipeline backlog: not acknowledged within the settle timeout"
        };
        let e2e = acc.stored / total_secs;
        say!(
            "saturation step {}: {:.0} opens/s, {:.0} kernel records/s, end to end {e2e:.0} events/s, {}",
            rate.map_or("flat out".to_string(), |r| format!("{r:.0}/s")),
            out.rate(),
            records_in_window / out.secs,
            if acc.zero_loss() {
                "zero loss".to_string()
            } else {
                format!("LOSS: {loss_at}")
            }
        );
        steps.push(json!({
            "target_opens_per_sec": rate,
            "opens_per_sec": round3(out.rate()),
            "window_secs": round3(out.secs),
            "kernel_records_per_sec": round3(records_in_window / out.secs),
            "end_to_end_events_per_sec": round3(e2e),
            "drain_secs": round3(acc.drain_secs),
            "sensor_cpu_pct_of_one_core_in_window": round3(100.0 * s_win / out.secs),
            "collector_cpu_pct_of_one_core_in_window": round3(100.0 * c_win / out.secs),
            "sensor_cpu_secs": round3(s_cpu),
            "collector_cpu_secs": round3(c_cpu),
            "sensor_cpu_secs_per_100k_events": per100k(s_cpu),
            "collector_cpu_secs_per_100k_events": per100k(c_cpu),
            "loss": acc.to_json(),
            "loss_at": loss_at,
        }));
        if !acc.zero_loss() {
            break;
        }
    }
    let rate_of = |st: &Value| st["end_to_end_events_per_sec"].as_f64().unwrap_or(0.0);
    let best = steps
        .iter()
        .filter(|st| st["loss"]["zero_loss"] == true)
        .max_by(|a, b| rate_of(a).total_cmp(&rate_of(b)))
        .cloned();
    let first_loss = steps
        .iter()
        .find(|st| st["loss"]["zero_loss"] != true)
        .cloned();
    let sensor_hwm = status_kib(spid, "VmHWM")?;
    let collector_hwm = status_kib(cpid, "VmHWM")?;
    let warnings = s.warnings();
    let stopped = s.stop()?;
    let streams = collector.stop()?;
    let zero_loss_rate = best.as_ref().map(rate_of);
    let cpu_per_100k = best.as_ref().and_then(|b| {
        Some(
            b["sensor_cpu_secs_per_100k_events"].as_f64()?
                + b["collector_cpu_secs_per_100k_events"].as_f64()?,
        )
    });
    let met = zero_loss_rate.map(|r| r >= 200_000.0 && cpu_per_100k.is_some_and(|c| c <= 0.3));
    let explanation = explain(best.as_ref(), first_loss.as_ref(), cpu_per_100k, ctx.cpus);
    Ok(json!({
        "generator": format!(
            "{workers} threads opening+closing one watched file each (prefix rule; file.open + \
             file.close events), paced, then flat out; {:.1} s per step",
            ctx.plan.sat_step.as_secs_f64()
        ),
        "idle": idle,
        "under_load": {
            "sensor_rss_kib": rss_load.0,
            "collector_rss_kib": rss_load.1,
            "sensor_peak_rss_kib": sensor_hwm,
            "collector_peak_rss_kib": collector_hwm,
            "sensor_cpu_pct_of_one_core_peak": round3(peak_s_cpu),
            "collector_cpu_pct_of_one_core_peak": round3(peak_c_cpu),
        },
        "steps": steps,
        "best_zero_loss": best,
        "first_loss": first_loss,
        "zero_loss_events_per_sec": zero_loss_rate.map(round3),
        "cpu_secs_per_100k_events": cpu_per_100k.map(round3),
        "goal": "≥ 200,000 events/s end to end with zero loss; ≤ 0.3 CPU-seconds per 100k events",
        "met": met,
        "explanation": if met == Some(true) { None } else { Some(explanation) },
        "collector_streams": streams.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
        "collector_store_complete": !streams.is_empty() && streams.iter().all(|s| s.complete()),
        "sensor_warnings": warnings,
        "other_sensors_running": others,
        "sensor_stop": stopped.to_json(),
    }))
}

fn explain(
    best: Option<&Value>,
    first_loss: Option<&Value>,
    cpu_per_100k: Option<f64>,
    cpus: usize,
) -> String {
    let mut parts = vec![];
    if let Some(c) = cpu_per_100k {
        parts.push(format!(
            "At the best zero-loss step the pipeline spent {c:.2} CPU-seconds per 100k events \
             (sensor + collector), i.e. at most ≈{:.0} events/s per CPU-second; with {cpus} \
             vCPUs shared with the load generator that bounds the end-to-end rate.",
            1e5 / c
        ));
    }
    if let Some(l) = first_loss {
        parts.push(format!(
            "Loss first appeared at {} opens/s ({:.0} kernel records/s offered), in the {}.",
            l["opens_per_sec"]
                .as_f64()
                .map_or("?".into(), |r| format!("{r:.0}")),
            l["kernel_records_per_sec"].as_f64().unwrap_or(0.0),
            l["loss_at"].as_str().unwrap_or("?")
        ));
    } else if let Some(b) = best {
        parts.push(if b["target_opens_per_sec"].is_null() {
            "No step lost anything: even flat out, the generator (sharing the CPUs with the \
             sensor) could not produce events faster than the pipeline stored them."
                .to_string()
        } else {
            "No step lost anything; the steps stopped before flat out.".to_string()
        });
    }
    parts.join(" ")
}
