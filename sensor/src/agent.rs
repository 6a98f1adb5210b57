//! Start-up (privileges, tracefs, BTF offsets, load, rules, attach, /proc scan), the ring-buffer
//! drain thread, the event loop and an orderly shutdown.

use std::{
    io::{BufWriter, Write as _},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::{
    Btf, Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    btf_offsets,
    cli::{CheckArgs, KernelArgs, OutputFormat, RunArgs},
    config::ConfigFile,
    credentials::{catalogue, classify::Classifier},
    decode::{self, DecodeError, KernelEvent},
    detect::config::DetectConfig,
    ebpf,
    endpoints::{self, Endpoints},
    fingerprint::FingerprintKey,
    hooks, identity,
    pipeline::{Pipeline, PipelineParts},
    process_table::ProcessTable,
    procfs,
    rules::RuleSet,
};

/// A loaded and attached sensor. Dropping it detaches every program.
pub struct Attached {
    pub ebpf: Ebpf,
    pub reports: Vec<hooks::JobReport>,
}

/// Why each capability the sensor requires is needed (README, "Least privilege").
const REQUIRED_CAPS: &[(&str, &str)] = &[
    ("CAP_BPF", "to load its eBPF programs and maps"),
    (
        "CAP_PERFMON",
        "to attach tracing programs and read kernel memory from them",
    ),
    ("CAP_NET_ADMIN", "to attach its cgroup socket hooks"),
    (
        "CAP_DAC_READ_SEARCH",
        "to read tracefs and the credential files other users own, to classify them",
    ),
    (
        "CAP_SYS_PTRACE",
        "to read other processes' executable, command line and environment in /proc",
    ),
];

/// Fails early, naming each missing capability and why it is needed.
fn check_privileges() -> anyhow::Result<()> {
    let privs = procfs::own_privileges().context("reading our own capabilities")?;
    let missing = privs.missing_for_sensor();
    if !missing.is_empty() {
        let why: Vec<String> = REQUIRED_CAPS
            .iter()
            .filter(|(cap, _)| missing.contains(cap))
            .map(|(cap, why)| format!("{cap} ({why})"))
            .collect();
        bail!(
            "nhi-sensor needs {} (running as uid {} without them); run it as root or grant \
             these capabilities",
            why.join(", "),
            privs.euid
        );
    }
    Ok(())
}

/// Loads the object, installs the rules and attaches the best hook for every job.
pub fn attach(kernel: &KernelArgs, rules: &RuleSet) -> anyhow::Result<Attached> {
    check_privileges()?;
    let tracefs = procfs::ensure_tracefs().context("tracefs is needed for tracepoints")?;
    tracing::debug!(tracefs = %tracefs.display(), "tracefs");
    let cgroup_root = procfs::cgroup2_root()?;
    let resolved = btf_offsets::resolve_kernel_btf(&kernel.btf)?;
    if !resolved.missing_optional.is_empty() {
        tracing::info!(
            missing = ?resolved.missing_optional,
            "this kernel lacks some optional fields; the events will not carry them"
        );
    }
    let btf = Btf::parse_file(&kernel.btf, aya::Endianness::default())
        .with_context(|| format!("parsing kernel BTF {}", kernel.btf.display()))?;
    let ring_bytes = kernel
        .ring_mib
        .checked_mul(1 << 20)
        .context("--ring-mib is too large")?;
    let mut ebpf = ebpf::load(&ebpf::LoadOptions {
        offsets: &resolved.offsets,
        ring_bytes,
    })?;
    rules.install(&mut ebpf)?;
    let reports = hooks::attach_all(&mut ebpf, &btf, &cgroup_root, &kernel.disable_hooks)?;
    Ok(Attached { ebpf, reports })
}

pub fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let attached = attach(&args.kernel, &RuleSet::default())?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let privs = procfs::own_privileges()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "kernel {}", kernel.trim())?;
    writeln!(
        out,
        "privileges: euid {}, effective capabilities {}",
        privs.euid,
        procfs::cap_names(privs.effective).join(",")
    )?;
    write!(out, "{}", hooks::render(&attached.reports))?;
    writeln!(out, "ok: this kernel can run nhi-sensor")?;
    Ok(())
}

type Batch = Vec<Result<KernelEvent, DecodeError>>;

/// After the ring signals data, the drain thread waits this long before reading, so records
/// are handled (and spooled, shipped, committed) in batches rather than one wake-up, one
/// spool write and one collector transaction per event. 5 ms adds at most 5 ms of latency,
/// caps wake-ups at 200/s, and holds far less than the ring at any sustainable rate (1 MB at
/// 200k records/s of ~1 KiB with the default 8 MiB ring).
const DRAIN_LINGER: Duration = Duration::from_millis(5);

/// Drains the ring buffer on a dedicated thread, so a slow consumer never delays the poll that
/// frees ring space. Decoded batches go to the event loop; when the loop falls behind the
/// bounded channel pushes back, the ring fills, and the kernel counts what it could not write.
fn spawn_drain(
    mut ring: RingBuf<MapData>,
    tx: mpsc::Sender<Batch>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("ringbuf-drain".into())
        .spawn(move || {
            let fd = ring.as_raw_fd();
            loop {
                let stopping = stop.load(Ordering::Acquire);
                let mut batch = Vec::new();
                while let Some(item) = ring.next() {
                    batch.push(decode::decode(&item));
                    if batch.len() >= 1024 && tx.blocking_send(std::mem::take(&mut batch)).is_err()
                    {
                        return;
                    }
                }
                if !batch.is_empty() && tx.blocking_send(batch).is_err() {
                    return;
                }
                if stopping {
                    return;
                }
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd. 100 ms bounds how long a stop request waits.
                let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
                if ready > 0 && !stop.load(Ordering::Acquire) {
                    // Let records gather: one drain per linger instead of one per record.
                    std::thread::sleep(DRAIN_LINGER);
                }
            }
        })
        .expect("spawning the ring-buffer thread")
}

/// Sets the open dedupe window in the kernel and takes its map for the pipeline.
fn open_dedupe(ebpf: &mut Ebpf, window_ms: u32) -> anyhow::Result<crate::open_dedupe::OpenDedupe> {
    let mut settings: aya::maps::Array<&mut aya::maps::MapData, u32> =
        aya::maps::Array::try_from(ebpf.map_mut("SETTINGS").context("SETTINGS map")?)?;
    settings
        .set(sensor_common::Setting::OpenDedupeMs as u32, window_ms, 0)
        .context("setting the open dedupe window")?;
    let map = BpfHashMap::try_from(ebpf.take_map("OPEN_DEDUPE").context("OPEN_DEDUPE map")?)?;
    tracing::info!(window_ms, "open dedupe");
    Ok(crate::open_dedupe::OpenDedupe::new(
        Duration::from_millis(window_ms.into()),
        map,
    ))
}

/// The watch rules of `args` and the config file's credential patterns.
fn build_rules(
    args: &RunArgs,
    file_patterns: &[crate::credentials::catalogue::Pattern],
) -> anyhow::Result<RuleSet> {
    let mut patterns = if args.no_default_rules {
        Vec::new()
    } else {
        let mut p = catalogue::builtin();
        p.extend(catalogue::kubelet_root_patterns(&args.kubelet_root));
        p
    };
    patterns.extend(file_patterns.iter().cloned());
    tracing::info!(patterns = patterns.len(), "credential catalogue");
    let mut rules = RuleSet::from_args(&args.watch, &args.watch_name, patterns)?;
    rules.sockets = crate::unix_sockets::UnixSockets::new(
        &args.watch_socket,
        &args.spiffe_socket,
        !args.no_default_rules,
    )?;
    Ok(rules)
}

/// The `run` settings: flags and environment over the config file over defaults. Also
/// returns the file's credential patterns and its `[detections]` table.
fn resolve(
    matches: &clap::ArgMatches,
) -> anyhow::Result<(
    RunArgs,
    Vec<crate::credentials::catalogue::Pattern>,
    DetectConfig,
)> {
    use clap::FromArgMatches as _;
    let mut args = RunArgs::from_arg_matches(matches)?;
    let Some(path) = args.config.clone() else {
        return Ok((args, Vec::new(), DetectConfig::default()));
    };
    let file = ConfigFile::load(&path)?;
    file.apply(&mut args, matches)?;
    Ok((args, file.credential, file.detections.unwrap_or_default()))
}

/// SIGHUP: re-reads the config file and swaps the watch rules in the kernel and the pipeline.
fn reload<W: std::io::Write>(
    matches: &clap::ArgMatches,
    ebpf: &mut Ebpf,
    pipeline: &mut Pipeline<W>,
) -> anyhow::Result<()> {
    let (args, patterns, detections) = resolve(matches)?;
    let rules = build_rules(&args, &patterns)?;
    rules.replace(pipeline.rules(), ebpf)?;
    pipeline.set_rules(rules);
    pipeline.set_detect_config(detections);
    Ok(())
}

pub async fn run(matches: clap::ArgMatches) -> anyhow::Result<()> {
    let (args, file_patterns, detections) = resolve(&matches)?;
    let rules = build_rules(&args, &file_patterns)?;
    let RunArgs {
        format,
        export,
        store,
        ocsf_out,
        drain_timeout,
        metrics_addr,
        watch: _,
        watch_name: _,
        no_default_rules: _,
        watch_socket: _,
        spiffe_socket: _,
        config: _,
        kubelet_root,
        trust_domain,
        host_identity,
        fingerprint_key_file,
        mut kube_apiserver,
        vault_addr,
        kernel,
        stats_interval,
        connect_wait_ms,
        open_dedupe_ms,
    } = args;
    kube_apiserver.extend(endpoints::kube_apiserver_from_node());
    let endpoints = Endpoints::new(&kube_apiserver, &vault_addr)?;
    let boot_id = procfs::boot_id()?;
    let mut attached = attach(&kernel, &rules)?;
    // After attach: its privilege check explains a missing root better than the key file would.
    let key = Arc::new(FingerprintKey::load_or_create(&fingerprint_key_file)?);

    // Processes that started before us: known before the first event is processed.
    let mut table = ProcessTable::new(boot_id.clone());
    table.load_snapshots(procfs::scan_processes());
    tracing::info!(processes = table.len(), "initial /proc scan done");

    let ring = RingBuf::try_from(attached.ebpf.take_map("EVENTS").context("EVENTS map")?)?;
    let watched_fds: BpfHashMap<MapData, _, _> = BpfHashMap::try_from(
        attached
            .ebpf
            .take_map("WATCHED_FDS")
            .context("WATCHED_FDS map")?,
    )?;
    let counters_map: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(attached.ebpf.take_map("COUNTERS").context("COUNTERS map")?)?;
    let cgroups = procfs::CgroupPaths::new(procfs::cgroup2_root()?);
    let dedupe = open_dedupe(&mut attached.ebpf, open_dedupe_ms)?;

    // Where events go: a remote collector, or one started here on the local store.
    let mut embedded_metrics = None;
    let endpoint = match &export.collector {
        Some(url) => crate::transport::client_endpoint(url, &export.tls)?,
        None => {
            let running = crate::collector::start(crate::collector::CollectorArgs::embedded(
                store.clone(),
                ocsf_out.clone(),
            ))
            .await
            .context("starting the embedded collector")?;
            embedded_metrics = Some(running.metrics.clone());
            crate::transport::client_endpoint(
                &format!("http://{}", running.addr),
                &Default::default(),
            )?
        }
    };
    // Baselines persist next to the events: in the embedded collector's store, or in the
    // spool when events are shipped elsewhere.
    let detector = detections
        .enabled
        .then(|| {
            let state = match &export.collector {
                None => &store,
                Some(_) => &export.spool,
            };
            crate::detect::Detector::new(detections, &kubelet_root, Some(state))
        })
        .transpose()
        .context("starting the detection rules")?;
    let exporter = crate::export::Exporter::open(&export, &boot_id)?;
    let node_name = exporter.sensor().node_name.clone();
    let shipper = crate::export::spawn(
        endpoint,
        exporter.spool(),
        exporter.notifier(),
        exporter.sensor().clone(),
        exporter.metrics.clone(),
    );
    let pipeline_metrics = Arc::new(crate::status::PipelineMetrics::default());
    let status = Arc::new(crate::status::SensorStatus {
        pipeline: pipeline_metrics.clone(),
        export: exporter.metrics.clone(),
        spool: exporter.spool(),
        embedded_collector: embedded_metrics,
        ready: AtomicBool::new(false),
    });
    if let Some(addr) = metrics_addr {
        crate::http::serve(addr, status.clone()).await?;
    }
    let print = match format {
        Some(f) => f == OutputFormat::Json,
        None => export.collector.is_none(),
    };

    let stdout = std::io::stdout();
    let mut pipeline = Pipeline::new(
        BufWriter::with_capacity(1 << 16, stdout.lock()),
        PipelineParts {
            table,
            cgroups,
            rules,
            watched_fds,
            counters_map,
            connect_wait: Duration::from_millis(connect_wait_ms),
            resolver: identity::Resolver::new(kubelet_root, trust_domain, procfs::cgroup2_root()?)
                .with_host_naming(host_identity)
                .with_node_name(&node_name),
            classifier: Classifier::new(key),
            endpoints,
            kernel_reports_exit_closes: attached.reports.iter().any(|j| {
                j.name == "file-read"
                    && j.chosen()
                        .is_some_and(|c| c.kind == hooks::HookKind::FEntry)
            }),
            exporter: Some(exporter),
            print,
            metrics: pipeline_metrics,
            detector,
            dedupe,
        },
    );

    let (tx, mut rx) = mpsc::channel::<Batch>(64);
    let stop = Arc::new(AtomicBool::new(false));
    let drain = spawn_drain(ring, tx, stop.clone());

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // 250 ms: connect outcomes are checked for lateness at this granularity.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let stats_every = Duration::from_secs(stats_interval);
    let mut last_stats = tokio::time::Instant::now();
    status.ready.store(true, Ordering::Release);
    tracing::info!("sensor ready");

    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(batch) = batch else { break };
                    handle_batch(&mut pipeline, batch)?;
                    pipeline.flush()?;
                }
                _ = tick.tick() => {
                    let periodic = stats_interval > 0 && last_stats.elapsed() >= stats_every;
                    pipeline.tick(periodic)?;
                    if periodic {
                        last_stats = tokio::time::Instant::now();
                        pipeline.stats(false)?;
                    }
                    pipeline.flush()?;
                }
                _ = sighup.recv() => {
                    // A bad file leaves the running rules in place: say why and keep going.
                    match reload(&matches, &mut attached.ebpf, &mut pipeline) {
                        Ok(()) => tracing::info!("SIGHUP: watch rules reloaded"),
                        Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: reload failed; the previous rules stay"),
                    }
                }
                _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break }
                _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break }
            }
        }
        Ok(())
    }
    .await;

    // Detach first, so nothing is written after the last drain: the final counters then
    // account for every record (emitted = decoded + dropped). The maps we took stay alive.
    drop(attached);
    tracing::info!("programs detached");
    stop.store(true, Ordering::Release);
    while let Some(batch) = rx.recv().await {
        handle_batch(&mut pipeline, batch)?;
    }
    let _ = drain.join();
    pipeline.flush_pending()?;
    pipeline.stats(true)?;
    shipper.shutdown(Duration::from_secs(drain_timeout)).await;
    result
}

fn handle_batch<W: std::io::Write>(pipeline: &mut Pipeline<W>, batch: Batch) -> anyhow::Result<()> {
    for item in batch {
        match item {
            Ok(ev) => pipeline.handle(ev).context("writing events to stdout")?,
            Err(e) => pipeline.decode_error(&e),
        }
    }
    Ok(())
}
