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

/// Fails early, naming what is missing, when this process cannot load programs.
fn check_privileges() -> anyhow::Result<()> {
    let privs = procfs::own_privileges().context("reading our own capabilities")?;
    let missing = privs.missing_for_sensor();
    let fatal: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|c| matches!(*c, "CAP_BPF" | "CAP_PERFMON" | "CAP_NET_ADMIN"))
        .collect();
    if !fatal.is_empty() {
        bail!(
            "nhi-sensor needs {} to load and attach its eBPF programs (running as uid {} without \
             them); run it as root or grant these capabilities",
            fatal.join(", "),
            privs.euid
        );
    }
    if !missing.is_empty() {
        tracing::warn!(
            missing = %missing.join(", "),
            "some capabilities are missing: processes of other users may not be fully described"
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
                unsafe { libc::poll(&mut pfd, 1, 100) };
            }
        })
        .expect("spawning the ring-buffer thread")
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        format,
        export,
        store,
        ocsf_out,
        drain_timeout,
        metrics_addr,
        watch,
        watch_name,
        no_default_rules,
        watch_socket,
        spiffe_socket,
        config,
        kubelet_root,
        trust_domain,
        host_identity,
        fingerprint_key_file,
        mut kube_apiserver,
        mut vault_addr,
        kernel,
        stats_interval,
        connect_wait_ms,
    } = args;
    let config = match &config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let ConfigFile {
        kube_apiserver: cfg_kube,
        vault: cfg_vault,
        credential: cfg_patterns,
    } = config;
    let mut patterns = if no_default_rules {
        Vec::new()
    } else {
        let mut p = catalogue::builtin();
        p.extend(catalogue::kubelet_root_patterns(&kubelet_root));
        p
    };
    patterns.extend(cfg_patterns);
    tracing::info!(patterns = patterns.len(), "credential catalogue");
    let mut rules = RuleSet::from_args(&watch, &watch_name, patterns)?;
    rules.sockets =
        crate::unix_sockets::UnixSockets::new(&watch_socket, &spiffe_socket, !no_default_rules)?;
    kube_apiserver.extend(cfg_kube);
    kube_apiserver.extend(endpoints::kube_apiserver_from_node());
    vault_addr.extend(cfg_vault);
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
    let exporter = crate::export::Exporter::open(&export, &boot_id)?;
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
                .with_host_naming(host_identity),
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
        },
    );

    let (tx, mut rx) = mpsc::channel::<Batch>(64);
    let stop = Arc::new(AtomicBool::new(false));
    let drain = spawn_drain(ring, tx, stop.clone());

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
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
