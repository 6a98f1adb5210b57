//! `cargo xtask bench [--smoke] [--out DIR]`: what the sensor costs the node.
//!
//! Each workload runs without the sensor (baseline), with an *empty* BPF program on the
//! sensor's own tracepoints (the floor of the hook itself, for the workloads where it matters)
//! and with the sensor, interleaved round by round in one run; the report gives the medians of
//! the rounds and their ratios next to the goals of the overhead budget. Then: saturation (the
//! highest event rate with zero loss from the kernel to a separate collector's store), the
//! footprint (RSS and CPU at idle, under load and with 10,000 live processes) and the kernel's
//! per-program run times. A benchmark, not a test: it fails only when the harness itself
//! breaks, never on a number.

/// A progress line on stderr, stamped with the seconds since the run started.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("bench [{:6.1}s] {}", $crate::bench::elapsed(), format!($($arg)*))
    };
}

mod footprint;
mod kernel;
mod load;
mod procs;
mod redis;
mod report;
mod saturation;
mod sensor;
mod workloads;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;

use load::Outcome;
use procs::TempDir;
use redis::Redis;
use sensor::round3;
use workloads::SPECS;

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// How long a phase waits for other sensors on the machine (a test suite's) to exit before it
/// measures anyway and says so in the report.
fn quiet_wait(plan: &Plan) -> Duration {
    if plan.smoke {
        Duration::ZERO
    } else {
        Duration::from_secs(180)
    }
}

/// How long the pipeline may take to store everything after a window (a backlog, not a loss).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The run's shape: full (the committed report) or smoke (CI: the harness still works).
struct Plan {
    smoke: bool,
    rounds: usize,
    /// Length of one measurement window.
    measure: Duration,
    /// Idle footprint window.
    idle: Duration,
    /// Live processes for the footprint.
    sleepers: usize,
    /// Saturation: window per step, and the paced rates (opens/s; `None` = flat out).
    sat_step: Duration,
    sat_rates: Vec<Option<f64>>,
}

impl Plan {
    fn new(smoke: bool) -> Plan {
        if smoke {
            Plan {
                smoke,
                rounds: 1,
                measure: Duration::from_millis(200),
                idle: Duration::from_millis(300),
                sleepers: 200,
                // Not flat out: a full ring buffer takes many seconds to drain.
                sat_step: Duration::from_millis(250),
                sat_rates: vec![Some(2_000.0)],
            }
        } else {
            Plan {
                smoke,
                rounds: 5,
                measure: Duration::from_secs(2),
                idle: Duration::from_secs(10),
                sleepers: 10_000,
                sat_step: Duration::from_secs(3),
                sat_rates: [2_500.0, 5_000.0, 10_000.0, 20_000.0, 40_000.0, 80_000.0]
                    .into_iter()
                    .map(Some)
                    .chain([None])
                    .collect(),
            }
        }
    }
}

impl Plan {
    /// The measurement window of workload `id`.
    fn window(&self, id: &str) -> Duration {
        if self.smoke && id == "watched_reads_task" {
            // At ~100k reads/s every read queues two events for userspace; a longer smoke
            // window would spend most of the smoke run draining them.
            Duration::from_millis(40)
        } else {
            self.measure
        }
    }
}

/// Files, helpers and long-lived processes shared by every measurement.
struct Ctx {
    plan: Plan,
    bin: PathBuf,
    /// Watched by the sensor (`--watch DIR/`), holds `id_ed25519`.
    watched: TempDir,
    key: PathBuf,
    /// A file no rule watches.
    plain: PathBuf,
    _plain_dir: TempDir,
    cpus: usize,
    /// redis-server and the requests per redis-benchmark run (about one window's worth, sized
    /// before any sensor runs); or why the redis workloads are skipped.
    redis: Result<(Redis, u64), String>,
}

/// Entry point of `cargo xtask bench`.
pub fn run(root: &Path, out: &Path, smoke: bool) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs: run `cargo xtask bench` as root");
    }
    let t0 = *START.get_or_init(Instant::now);
    TempDir::remove_stale();
    let plan = Plan::new(smoke);
    let bin = root.join("target/release/nhi-sensor");
    if !bin.exists() {
        bail!("{} is missing: run `cargo xtask build`", bin.display());
    }
    let ctx = prepare(plan, bin)?;
    say!(
        "{} run: {} round(s) of {:?} per measurement",
        if smoke { "smoke" } else { "full" },
        ctx.plan.rounds,
        ctx.plan.measure
    );

    let mut phases = serde_json::Map::new();
    let mut phase = |name: &str, since: Instant| {
        let secs = since.elapsed().as_secs_f64();
        say!("{name} took {secs:.1} s");
        phases.insert(name.to_string(), json!(round3(secs)));
        Instant::now()
    };
    let t = phase("preparation", t0);
    let probe = footprint::probe(&ctx).context("footprint and per-program costs")?;
    let t = phase("footprint", t);
    let rounds = workloads::rounds(&ctx, &probe.floor_tracepoints).context("interleaved rounds")?;
    let t = phase("rounds", t);
    let saturation = saturation::saturation(&ctx).context("saturation")?;
    phase("saturation", t);

    let mut doc = json!({
        "schema_version": 1,
        "generated_at": report::utc_now(),
        "mode": if smoke { "smoke" } else { "full" },
        "git": report::git_info(root),
        "machine": report::machine(),
        "config": {
            "rounds": ctx.plan.rounds,
            "measure_secs": ctx.plan.measure.as_secs_f64(),
            "order": "each round: baseline pass, floor pass (empty program on the sensor's tracepoints), sensor pass",
            "sensor_command": "nhi-sensor --log-format json run --format none --spool TMP --store TMP --fingerprint-key-file TMP --watch BENCHDIR/ --stats-interval 1 --metrics-addr 127.0.0.1:PORT (embedded collector; default rules)",
            "hooks": probe.hooks.iter().map(|(j, h)| json!({"job": j, "hook": h})).collect::<Vec<_>>(),
            "floor_tracepoints": probe.floor_tracepoints,
            "cpus_used_by_generators": ctx.cpus,
        },
        "workloads": workloads::results(&rounds, &probe, ctx.redis.as_ref().err().map(String::as_str)),
        "sensor_passes": rounds.passes,
        "repeated_rounds": rounds.repeated_rounds,
        "saturation": saturation,
        "footprint": probe.footprint,
        "bpf_programs": probe.bpf,
    });
    doc["duration_secs"] = json!(round3(t0.elapsed().as_secs_f64()));
    doc["phase_secs"] = phases.into();
    report::write(out, &doc)?;
    report::verify(out, SPECS.iter().map(|s| s.id))?;
    say!(
        "report written to {} ({:.0} s)",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn prepare(plan: Plan, bin: PathBuf) -> anyhow::Result<Ctx> {
    let watched = TempDir::new("watched")?;
    let key = watched.join("id_ed25519");
    // A real key, so the sensor's credential parser does its usual work; any content will do
    // where ssh-keygen is missing.
    let generated = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "nhi-bench", "-f"])
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !generated {
        std::fs::write(
            &key,
            "-----BEGIN OPENSSH PRIVATE KEY-----\nbmhpLWJlbmNoIGR1bW15IGtleQ==\n-----END OPENSSH PRIVATE KEY-----\n",
        )?;
    }
    let plain_dir = TempDir::new("plain")?;
    let plain = plain_dir.join("data.txt");
    std::fs::write(&plain, "not a credential\n")?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let redis = Redis::start(!plan.smoke)
        .and_then(|r| {
            let probe = r.benchmark("get", 5_000)?;
            let n = ((probe.rate() * plan.measure.as_secs_f64()) as u64).clamp(2_000, 1_000_000);
            Ok((r, n))
        })
        .map_err(|e| {
            say!("redis workloads skipped: {e:#}");
            format!("{e:#}")
        });
    Ok(Ctx {
        plan,
        bin,
        watched,
        key,
        plain,
        _plain_dir: plain_dir,
        cpus,
        redis,
    })
}

/// Runs one workload once for about `dur`; `None` when it is skipped on this machine.
fn measure(ctx: &Ctx, id: &str, dur: Duration) -> anyhow::Result<Option<Outcome>> {
    let exec = |rate: Option<f64>, workers: usize| {
        load::paced(workers, rate, dur, &|_| {
            load::spawn_wait(Path::new("/bin/true"), &[])
        })
    };
    // Enough spawners that a paced rate is not limited by one process's lifetime.
    let paced_workers = 16;
    let out = match id {
        "unwatched_opens" => load::open_close(&ctx.plain, dur)?,
        "watched_reads_task" => load::open_read_close(&ctx.key, dur)?,
        "watched_reads_processes" => {
            let key = ctx.key.as_os_str();
            load::paced(1, None, dur, &|_| {
                load::spawn_wait(Path::new("/bin/cat"), &[key])
            })?
        }
        "exec_100" => exec(Some(100.0), paced_workers)?,
        "exec_1000" => exec(Some(1_000.0), paced_workers)?,
        "exec_5000" => exec(Some(5_000.0), paced_workers)?,
        "exec_max" => exec(None, 2 * ctx.cpus)?,
        "connect_storm" => load::connect_loop(dur)?,
        "redis_set" | "redis_get" => {
            let Ok((r, n)) = &ctx.redis else {
                return Ok(None);
            };
            // `n` requests take about one measurement window.
            let n =
                ((*n as f64 * dur.as_secs_f64() / ctx.plan.measure.as_secs_f64()) as u64).max(500);
            r.benchmark(if id == "redis_set" { "set" } else { "get" }, n)?
        }
        other => bail!("unknown workload {other}"),
    };
    Ok(Some(out))
}
