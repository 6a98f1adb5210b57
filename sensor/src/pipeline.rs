//! Kernel events → enriched JSON events: process table upkeep, exact rule matching, joining
//! connects with their outcome, bytes read on exit, counters.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use sensor_common::{
    Counter, FdKey, FdState, PATH_TRUNCATED, PATH_UNRESOLVED, RESULT_ESTABLISHED, TaskInfo,
    WATCH_TRUNCATED,
};

use crate::{
    credentials::classify::Classifier,
    decode::KernelEvent,
    endpoints::Endpoints,
    env_vars,
    event::{self, Endpoint, Errno, Event, Ids, Network},
    identity::Resolver,
    open_dedupe::{OpenDedupe, Reported, Summary},
    process_table::ProcessTable,
    procfs::{self, CgroupPaths, Users},
    rules::RuleSet,
};

/// How long a connect reported as `pending` is remembered, so its late outcome can still be
/// attributed. 5 minutes outlasts the default SYN retry budget (~2 minutes).
const LATE_RESULT_MEMORY: Duration = Duration::from_secs(300);

/// Converts kernel boot-clock timestamps to wall-clock time.
struct Clock {
    /// `CLOCK_REALTIME - CLOCK_BOOTTIME` in ns.
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    fn new() -> Self {
        let mut c = Self { offset_ns: 0 };
        c.refresh();
        c
    }

    /// Re-reads the offset: wall-clock adjustments (NTP steps) move it.
    fn refresh(&mut self) {
        self.offset_ns = clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME);
    }

    fn format(&self, boot_ns: u64) -> String {
        let wall = (self.offset_ns + boot_ns as i128).max(0) as u128;
        let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(wall as u64);
        humantime::format_rfc3339_nanos(t).to_string()
    }
}

struct OpenFile {
    path: Vec<u8>,
    dev: u64,
    ino: u64,
    reported_bytes: u64,
}

struct PendingConnect {
    event: Event,
    since: Instant,
}

#[derive(Default)]
struct LocalCounters {
    decoded: u64,
    decode_errors: u64,
    filtered: u64,
    orphan_results: u64,
    dns_malformed: u64,
}

pub struct Pipeline<W: Write> {
    out: W,
    table: ProcessTable,
    users: Users,
    cgroups: CgroupPaths,
    rules: RuleSet,
    clock: Clock,
    open_fds: HashMap<u32, HashMap<u32, OpenFile>>,
    pending: HashMap<u64, PendingConnect>,
    late: HashMap<u64, (event::Process, Instant)>,
    watched_fds: BpfHashMap<MapData, FdKey, FdState>,
    counters_map: PerCpuArray<MapData, u64>,
    counters: LocalCounters,
    connect_wait: Duration,
    last_kernel_drops: u64,
    resolver: Resolver,
    classifier: Classifier,
    endpoints: Endpoints,
    /// Our own pid: the sensor's reads of credentials (to classify them) are not events.
    own_pid: u32,
    kernel_reports_exit_closes: bool,
    /// Ships events to a collector (or the embedded one); `None` only prints them.
    exporter: Option<crate::export::Exporter>,
    /// Print the JSON events on `out`.
    print: bool,
    /// Events emitted by kind, published to `metrics` on each tick.
    by_kind: BTreeMap<&'static str, u64>,
    metrics: std::sync::Arc<crate::status::PipelineMetrics>,
    /// The detection rules, shown every emitted event; `None`: detections off.
    detector: Option<crate::detect::Detector>,
    dedupe: OpenDedupe,
    /// DNS answers per (cgroup, address), to name later connects.
    dns: crate::dns::Cache,
}

pub struct PipelineParts {
    pub table: ProcessTable,
    pub cgroups: CgroupPaths,
    pub rules: RuleSet,
    pub watched_fds: BpfHashMap<MapData, FdKey, FdState>,
    pub counters_map: PerCpuArray<MapData, u64>,
    pub connect_wait: Duration,
    pub resolver: Resolver,
    pub classifier: Classifier,
    pub endpoints: Endpoints,
    /// The chosen file-read hook (fentry `filp_close`) reports fds closed by process exit
    /// itself; otherwise userspace reports them from the kernel's counters.
    pub kernel_reports_exit_closes: bool,
    pub exporter: Option<crate::export::Exporter>,
    pub print: bool,
    pub metrics: std::sync::Arc<crate::status::PipelineMetrics>,
    pub detector: Option<crate::detect::Detector>,
    pub dedupe: OpenDedupe,
}

impl<W: Write> Pipeline<W> {
    pub fn new(out: W, parts: PipelineParts) -> Self {
        let PipelineParts {
            table,
            cgroups,
            rules,
            watched_fds,
            counters_map,
            connect_wait,
            resolver,
            classifier,
            endpoints,
            kernel_reports_exit_closes,
            exporter,
            print,
            metrics,
            detector,
            dedupe,
        } = parts;
        Self {
            out,
            table,
            users: Users::load(),
            cgroups,
            rules,
            clock: Clock::new(),
            open_fds: HashMap::new(),
            pending: HashMap::new(),
            late: HashMap::new(),
            watched_fds,
            counters_map,
            counters: LocalCounters::default(),
            connect_wait,
            last_kernel_drops: 0,
            resolver,
            classifier,
            endpoints,
            own_pid: std::process::id(),
            kernel_reports_exit_closes,
            exporter,
            print,
            by_kind: BTreeMap::new(),
            metrics,
            detector,
            dedupe,
            dns: crate::dns::Cache::default(),
        }
    }

    /// Prints one event, adding `workload` and `identity` to every event with a process.
    fn emit(&mut self, ev: &mut Event) -> std::io::Result<()> {
        if let Some(p) = &ev.process
            && ev.identity.is_none()
        {
            let (w, id) = self.resolver.resolve(p);
            ev.workload = Some(w);
            ev.identity = Some(id);
        }
        self.write(ev)?;
        let findings = match &mut self.detector {
            Some(d) => d.observe(ev),
            None => return Ok(()),
        };
        for f in findings {
            let mut out = Event::new("finding", ev.time.clone(), ev.boot_ns);
            out.process = ev.process.clone();
            out.workload = ev.workload.clone();
            out.identity = ev.identity.clone();
            out.credential = ev.credential.clone();
            out.finding = Some(f);
            self.write(&out)?;
        }
        Ok(())
    }

    /// SIGHUP: new detection thresholds and allow-lists (baselines stay).
    pub fn set_detect_config(&mut self, cfg: crate::detect::config::DetectConfig) {
        if let Some(d) = &mut self.detector {
            d.set_config(cfg);
        }
    }

    /// Ships and prints one event.
    fn write(&mut self, ev: &Event) -> std::io::Result<()> {
        *self.by_kind.entry(ev.kind).or_default() += 1;
        if let Some(x) = &mut self.exporter {
            x.push(crate::export::convert::to_proto(ev));
        }
        if !self.print {
            return Ok(());
        }
        serde_json::to_writer(&mut self.out, ev)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        if let Some(x) = &mut self.exporter {
            x.flush().map_err(std::io::Error::other)?;
        }
        self.out.flush()
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Swaps the watch rules (SIGHUP); events already decoded are judged by the new ones.
    pub fn set_rules(&mut self, rules: RuleSet) {
        self.rules = rules;
    }

    /// Publishes the counters for `/metrics`.
    fn publish_metrics(&self) {
        let mut kernel = BTreeMap::new();
        for c in Counter::ALL {
            let v: u64 = self
                .counters_map
                .get(&(c as u32), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0);
            kernel.insert(c.name(), (v, c.is_drop()));
        }
        *self.metrics.kernel.lock().expect("metrics") = kernel;
        self.metrics
            .events
            .lock()
            .expect("metrics")
            .clone_from(&self.by_kind);
        self.metrics
            .decode_errors
            .set(self.counters.decode_errors as i64);
        self.metrics.processes.set(self.table.len() as i64);
        if let Some(d) = &self.detector {
            self.metrics
                .findings
                .lock()
                .expect("metrics")
                .clone_from(&d.stats.findings);
            self.metrics.findings_allowed.set(d.stats.allowed as i64);
            self.metrics
                .findings_suppressed
                .set(d.stats.suppressed as i64);
        }
    }

    pub fn decode_error(&mut self, err: &crate::decode::DecodeError) {
        self.counters.decode_errors += 1;
        // The first few say what is wrong; the count in `sensor.stats` says how often.
        if self.counters.decode_errors <= 10 {
            tracing::warn!(error = %err, "dropping a malformed kernel record");
        }
    }

    fn process(&mut self, t: &TaskInfo) -> event::Process {
        let start = procfs::start_ticks_from_ns(t.start_ns);
        let parent_start = procfs::start_ticks_from_ns(t.parent_start_ns);
        self.table.observe(t.tgid, start, t.ppid, parent_start);
        let (exe, argv) = match self.table.get_or_load(t.tgid, start) {
            Some(e) => (e.exe.clone(), e.argv.clone()),
            None => (None, None),
        };
        let ancestry = self
            .table
            .ancestry(t.ppid, parent_start)
            .into_iter()
            .map(|a| event::Ancestor {
                pid: a.pid,
                key: a.key,
                exe: a.exe.map(|e| String::from_utf8_lossy(&e).into_owned()),
            })
            .collect();
        let (exe, exe_b64) = match exe {
            Some(e) => {
                let (s, b) = event::text_and_b64(&e);
                (Some(s), b)
            }
            None => (None, None),
        };
        // A way into this mount namespace while a member is surely alive (credential reads).
        self.classifier.roots.note(t.tgid, t.ns.mnt);
        let c = &t.creds;
        let tty = event::c_str(&t.tty);
        event::Process {
            key: self.table.key(t.tgid, start),
            pid: t.tgid,
            tid: t.tid,
            ppid: t.ppid,
            parent_key: self.table.key(t.ppid, parent_start),
            start_ns: t.start_ns,
            comm: event::c_str(&t.comm),
            exe,
            exe_b64,
            argv: argv.map(|a| {
                a.iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            }),
            ids: ids(c),
            user: self.users.name(c.uid).map(str::to_string),
            cap_effective: event::caps_hex(c.cap_effective),
            cap_permitted: event::caps_hex(c.cap_permitted),
            loginuid: (c.loginuid != u32::MAX).then_some(c.loginuid),
            sessionid: (c.sessionid != u32::MAX).then_some(c.sessionid),
            tty: (!tty.is_empty()).then(|| procfs::kernel_tty_name(&tty)),
            cgroup_id: t.cgroup_id,
            cgroup: self
                .cgroups
                .lookup(t.cgroup_id)
                .map(|p| p.to_string_lossy().into_owned()),
            ns: event::Namespaces {
                pid: t.ns.pid,
                mnt: t.ns.mnt,
                net: t.ns.net,
                user: t.ns.user,
                uts: t.ns.uts,
                ipc: t.ns.ipc,
                cgroup: t.ns.cgroup,
            },
            ancestry,
        }
    }

    fn new_event(&self, kind: &'static str, boot_ns: u64) -> Event {
        Event::new(kind, self.clock.format(boot_ns), boot_ns)
    }

    pub fn handle(&mut self, ev: KernelEvent) -> std::io::Result<()> {
        self.counters.decoded += 1;
        match ev {
            KernelEvent::Exec {
                ev,
                exe,
                filename,
                args,
                env,
            } => {
                let start = procfs::start_ticks_from_ns(ev.task.start_ns);
                let argv = event::split_args(&args);
                let exe = (!exe.is_empty()).then_some(exe);
                // The old program's counted opens are its own; the new one starts afresh.
                self.end_dedupe(ev.task.tgid, ev.header.boot_ns)?;
                self.table.on_exec(ev.task.tgid, start, exe, argv.clone());
                let mut out = self.new_event("process.exec", ev.header.boot_ns);
                out.process = Some(self.process(&ev.task));
                out.exec = Some(event::Exec {
                    filename: String::from_utf8_lossy(&filename).into_owned(),
                    argv: argv
                        .iter()
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect(),
                    argv_truncated: ev.flags & sensor_common::ARGS_TRUNCATED != 0,
                    old_pid: ev.old_pid,
                    credential_env: env_vars::from_environment(&env.0, self.classifier.key()),
                    env_truncated: ev.flags & sensor_common::ENV_TRUNCATED != 0,
                });
                self.emit(&mut out)?;
            }
            KernelEvent::Fork(ev) => {
                let parent = (ev.task.tgid, procfs::start_ticks_from_ns(ev.task.start_ns));
                let child_start = procfs::start_ticks_from_ns(ev.child_start_ns);
                self.table.on_fork(parent, (ev.child_tgid, child_start));
                let mut out = self.new_event("process.fork", ev.header.boot_ns);
                out.process = Some(self.process(&ev.task));
                out.fork = Some(event::Fork {
                    child_pid: ev.child_tgid,
                    child_key: self.table.key(ev.child_tgid, child_start),
                });
                self.emit(&mut out)?;
            }
            KernelEvent::Exit(ev) => {
                let process = self.process(&ev.task);
                self.end_dedupe(ev.task.tgid, ev.header.boot_ns)?;
                self.close_on_exit(ev.task.tgid, ev.header.boot_ns, &process)?;
                let mut out = self.new_event("process.exit", ev.header.boot_ns);
                out.process = Some(process);
                out.exit = Some(event::Exit {
                    status: ev.exit_code,
                    code: (ev.exit_code >> 8) & 0xff,
                    signal: ev.exit_code & 0x7f,
                });
                self.emit(&mut out)?;
                self.table
                    .on_exit(ev.task.tgid, procfs::start_ticks_from_ns(ev.task.start_ns));
            }
            KernelEvent::CredChange(ev) => {
                let mut out = self.new_event("process.cred_change", ev.header.boot_ns);
                out.process = Some(self.process(&ev.task));
                out.cred_change = Some(event::CredChange {
                    syscall: event::cred_syscall_name(ev.syscall_nr),
                    old: event::CredSet {
                        ids: ids(&ev.old),
                        cap_effective: event::caps_hex(ev.old.cap_effective),
                    },
                    new: event::CredSet {
                        ids: ids(&ev.task.creds),
                        cap_effective: event::caps_hex(ev.task.creds.cap_effective),
                    },
                });
                self.emit(&mut out)?;
            }
            KernelEvent::FileOpen { ev, path } => self.file_open(ev, path)?,
            KernelEvent::FileClose(ev) if ev.task.tgid == self.own_pid => {
                self.counters.filtered += 1;
            }
            KernelEvent::FileClose(ev) => {
                let path = self
                    .open_fds
                    .get_mut(&ev.task.tgid)
                    .and_then(|fds| fds.remove(&(ev.fd as u32)))
                    .map(|f| f.path);
                let mut out = self.new_event("file.close", ev.header.boot_ns);
                out.process = Some(self.process(&ev.task));
                out.file = Some(close_file(
                    path.as_deref(),
                    ev.fd,
                    ev.dev,
                    ev.ino,
                    ev.bytes_read,
                    ev.reads,
                    if ev.reason == sensor_common::CLOSE_EXIT {
                        "exit"
                    } else {
                        "close"
                    },
                ));
                self.emit(&mut out)?;
            }
            KernelEvent::Connect(ev) => {
                let (ip, v4_mapped) = event::ip_of(ev.dst.family, &ev.dst.addr);
                let tcp = ev.protocol == libc::IPPROTO_TCP as u32;
                let mut out = self.new_event("network.connect", ev.header.boot_ns);
                out.process = Some(self.process(&ev.task));
                out.network = Some(Network {
                    protocol: if tcp { "tcp" } else { "udp" },
                    family: family_name(ev.dst.family),
                    direction: "outbound",
                    src: None,
                    dst: Endpoint {
                        ip: ip.to_string(),
                        port: ev.dst.port,
                    },
                    v4_mapped,
                    cookie: ev.cookie,
                    result: if tcp { "pending" } else { "connected" },
                    error: None,
                    endpoint: self.endpoints.classify(ip, ev.dst.port),
                    dst_dns_names: self.dns.names(ev.task.cgroup_id, ip),
                });
                if tcp {
                    self.pending.insert(
                        ev.cookie,
                        PendingConnect {
                            event: out,
                            since: Instant::now(),
                        },
                    );
                } else {
                    self.emit(&mut out)?;
                }
            }
            KernelEvent::UdpSend(ev) => {
                let (ip, v4_mapped) = event::ip_of(ev.dst.family, &ev.dst.addr);
                let mut out = self.new_event("network.udp_send", ev.header.boot_ns);
                out.process = Some(self.process(&ev.task));
                out.network = Some(Network {
                    protocol: "udp",
                    family: family_name(ev.dst.family),
                    direction: "outbound",
                    src: None,
                    dst: Endpoint {
                        ip: ip.to_string(),
                        port: ev.dst.port,
                    },
                    v4_mapped,
                    cookie: ev.cookie,
                    result: "sent",
                    error: None,
                    endpoint: self.endpoints.classify(ip, ev.dst.port),
                    dst_dns_names: self.dns.names(ev.task.cgroup_id, ip),
                });
                self.emit(&mut out)?;
            }
            KernelEvent::ConnectResult(r) => self.connect_result(r)?,
            KernelEvent::Dns(ev) => self.dns_response(&ev)?,
            KernelEvent::UnixConnect(ev) => {
                let raw = &ev.path[..(ev.path_len as usize).min(ev.path.len())];
                let (shown, is_abstract) = crate::unix_sockets::display_path(raw);
                let (path, path_b64) = event::text_and_b64(&shown);
                let (result, error) = match -ev.ret {
                    0 => ("connected", None),
                    e if e == libc::ECONNREFUSED => ("refused", Some(Errno::new(e as u32))),
                    e => ("failed", Some(Errno::new(e as u32))),
                };
                let mut out = self.new_event("network.unix_connect", ev.header.boot_ns);
                out.process = Some(self.process(&ev.task));
                out.unix = Some(event::Unix {
                    path,
                    path_b64,
                    is_abstract,
                    result,
                    error,
                    endpoint: self.rules.sockets.classify(raw),
                });
                self.emit(&mut out)?;
            }
            KernelEvent::Accept(ev) => {
                let (rip, v4_mapped) = event::ip_of(ev.remote.family, &ev.remote.addr);
                let (lip, _) = event::ip_of(ev.local.family, &ev.local.addr);
                let mut out = self.new_event("network.accept", ev.header.boot_ns);
                out.process = Some(self.process(&ev.task));
                out.network = Some(Network {
                    protocol: if ev.protocol == libc::IPPROTO_TCP as u32 {
                        "tcp"
                    } else {
                        "other"
                    },
                    family: family_name(ev.local.family),
                    direction: "inbound",
                    src: Some(Endpoint {
                        ip: rip.to_string(),
                        port: ev.remote.port,
                    }),
                    dst: Endpoint {
                        ip: lip.to_string(),
                        port: ev.local.port,
                    },
                    v4_mapped,
                    cookie: 0,
                    result: "accepted",
                    error: None,
                    endpoint: None,
                    dst_dns_names: Vec::new(),
                });
                self.emit(&mut out)?;
            }
        }
        Ok(())
    }

    fn file_open(
        &mut self,
        ev: sensor_common::FileOpenEvent,
        path: Vec<u8>,
    ) -> std::io::Result<()> {
        let truncated = ev.path.flags & PATH_TRUNCATED != 0;
        let tgid = ev.task.tgid;
        if tgid == self.own_pid {
            // The sensor reading a credential to classify it.
            self.counters.filtered += 1;
            if ev.ret >= 0 {
                let _ = self.watched_fds.remove(&FdKey {
                    tgid,
                    fd: ev.ret as u32,
                });
            }
            return Ok(());
        }
        let mut matched = if ev.path.flags & PATH_UNRESOLVED == 0 {
            self.rules.matches(&path, truncated, tgid)
        } else {
            // The kernel matched the path as written; either form matching a rule counts.
            let mut m = self.rules.matches(&path, truncated, tgid);
            m.extend(
                self.rules
                    .matches(&event::normalize_lexically(&path), truncated, tgid),
            );
            m.sort_unstable();
            m.dedup();
            m
        };
        if ev.matched & WATCH_TRUNCATED != 0 {
            matched.push("truncated");
        }
        if matched.is_empty() {
            // The kernel's bounded keys matched coarsely; no rule matches the whole path.
            self.counters.filtered += 1;
            if ev.ret >= 0 {
                let _ = self.watched_fds.remove(&FdKey {
                    tgid: ev.task.tgid,
                    fd: ev.ret as u32,
                });
            }
            return Ok(());
        }
        if ev.ret >= 0 {
            self.open_fds.entry(ev.task.tgid).or_default().insert(
                ev.ret as u32,
                OpenFile {
                    path: path.clone(),
                    dev: ev.dev,
                    ino: ev.ino,
                    reported_bytes: 0,
                },
            );
        }
        let resolved = ev.path.flags & PATH_UNRESOLVED == 0;
        let (shown, requested) = if resolved {
            (path, None)
        } else {
            let raw_at = path.len().saturating_sub(ev.requested_len as usize);
            let requested = path[raw_at..].to_vec();
            (event::normalize_lexically(&path), Some(requested))
        };
        let (text, b64) = event::text_and_b64(&shown);
        let mut out = self.new_event("file.open", ev.header.boot_ns);
        out.process = Some(self.process(&ev.task));
        let pattern = self
            .rules
            .credential(&shown, truncated, tgid)
            .or_else(|| {
                requested
                    .as_deref()
                    .and_then(|r| self.rules.credential(r, truncated, tgid))
            })
            .cloned();
        out.credential = pattern.map(|p| {
            if ev.ret < 0 {
                Classifier::failed_open(&p, (-ev.ret) as u32)
            } else {
                self.classifier.classify(&p, &shown, tgid, ev.task.ns.mnt)
            }
        });
        out.file = Some(event::File {
            path: Some(text),
            path_b64: b64,
            path_truncated: Some(truncated),
            path_resolved: Some(resolved),
            path_requested: requested.map(|r| String::from_utf8_lossy(&r).into_owned()),
            dev: (ev.ret >= 0).then(|| event::dev_string(ev.dev)),
            ino: (ev.ret >= 0).then_some(ev.ino),
            mode: (ev.mode != 0).then(|| format!("0{:o}", ev.mode)),
            flags: Some(ev.open_flags),
            access: Some(
                if ev.open_flags & libc::O_ACCMODE as u32 == libc::O_RDWR as u32 {
                    "read_write"
                } else {
                    "read"
                },
            ),
            fd: (ev.ret >= 0).then_some(ev.ret),
            error: (ev.ret < 0).then(|| Errno::new((-ev.ret) as u32)),
            matched: Some(matched),
            ..Default::default()
        });
        if ev.ret < 0 || !self.dedupe.enabled() {
            return self.emit(&mut out);
        }
        let key = (ev.open_flags, ev.dev, ev.ino);
        let repeats = self.dedupe.repeats_before(tgid, key, ev.repeats);
        if let Some(f) = out.file.as_mut() {
            f.repeats = (repeats > 0).then_some(repeats);
        }
        self.emit(&mut out)?;
        let (Some(process), Some(file)) = (out.process, out.file) else {
            return Ok(());
        };
        let last = Reported {
            process,
            workload: out.workload,
            identity: out.identity,
            credential: out.credential,
            file,
        };
        self.dedupe.reported(tgid, key, ev.repeats, last);
        Ok(())
    }

    /// A summary `file.open`: opens counted in the kernel after the last reported one.
    fn emit_summary(&mut self, s: Summary, boot_ns: u64) -> std::io::Result<()> {
        let Summary { repeats, last } = s;
        let mut out = self.new_event("file.open", boot_ns);
        out.process = Some(last.process);
        out.workload = last.workload;
        out.identity = last.identity;
        out.credential = last.credential;
        out.file = Some(event::File {
            fd: None,
            repeats: Some(repeats),
            ..last.file
        });
        self.emit(&mut out)
    }

    /// Reports what a process that exits or execs still has counted, and forgets its keys.
    fn end_dedupe(&mut self, tgid: u32, boot_ns: u64) -> std::io::Result<()> {
        for s in self.dedupe.end(tgid) {
            self.emit_summary(s, boot_ns)?;
        }
        Ok(())
    }

    fn connect_result(&mut self, r: sensor_common::NetResultEvent) -> std::io::Result<()> {
        let (result, error) = if r.result == RESULT_ESTABLISHED {
            ("established", None)
        } else {
            let name = match r.error as i32 {
                libc::ECONNREFUSED => "refused",
                libc::ETIMEDOUT => "timed_out",
                _ => "failed",
            };
            (name, Some(Errno::new(r.error)))
        };
        let src = (r.src.port != 0).then(|| Endpoint {
            ip: event::ip_of(r.src.family, &r.src.addr).0.to_string(),
            port: r.src.port,
        });
        if let Some(mut p) = self.pending.remove(&r.cookie) {
            if let Some(net) = p.event.network.as_mut() {
                net.result = result;
                net.error = error;
                if src.is_some() {
                    net.src = src;
                }
            }
            return self.emit(&mut p.event);
        }
        // The outcome of a connect reported earlier as pending, or never seen.
        let late = self.late.remove(&r.cookie);
        if late.is_none() {
            self.counters.orphan_results += 1;
        }
        let mut out = self.new_event("network.connect_result", r.header.boot_ns);
        out.process = late.map(|(p, _)| p);
        let (dst_ip, v4_mapped) = event::ip_of(r.dst.family, &r.dst.addr);
        out.network = Some(Network {
            protocol: "tcp",
            family: family_name(r.dst.family),
            direction: "outbound",
            src,
            dst: Endpoint {
                ip: dst_ip.to_string(),
                port: r.dst.port,
            },
            v4_mapped,
            cookie: r.cookie,
            result,
            error,
            endpoint: self.endpoints.classify(dst_ip, r.dst.port),
            dst_dns_names: out
                .process
                .as_ref()
                .map(|p| self.dns.names(p.cgroup_id, dst_ip))
                .unwrap_or_default(),
        });
        self.emit(&mut out)
    }

    /// A DNS response received in some cgroup: remembered to name that cgroup's later
    /// connects, and reported. A message that does not parse is counted and skipped.
    fn dns_response(&mut self, ev: &sensor_common::NetDnsEvent) -> std::io::Result<()> {
        let captured = &ev.payload[..(ev.captured as usize).min(ev.payload.len())];
        let msg = match crate::dns::parse(captured) {
            Ok(m) => m,
            Err(e) => {
                self.counters.dns_malformed += 1;
                tracing::debug!(error = %e, cgroup_id = ev.cgroup_id, "unparsable DNS response skipped");
                return Ok(());
            }
        };
        self.dns.insert(ev.cgroup_id, &msg, Instant::now());
        let endpoint = |a: &sensor_common::SockAddr| Endpoint {
            ip: event::ip_of(a.family, &a.addr).0.to_string(),
            port: a.port,
        };
        let answers = msg
            .answers
            .iter()
            .map(|a| event::DnsAnswer {
                name: a.name.clone(),
                rtype: crate::dns::type_name(a.rtype),
                data: match &a.data {
                    crate::dns::AnswerData::Addr(ip) => ip.to_string(),
                    crate::dns::AnswerData::Cname(n) => n.clone(),
                },
                ttl: a.ttl,
            })
            .collect();
        let mut out = self.new_event("network.dns", ev.header.boot_ns);
        out.dns = Some(event::Dns {
            query: msg.query,
            query_type: crate::dns::type_name(msg.qtype),
            rcode: crate::dns::rcode_name(msg.rcode),
            id: msg.id,
            answers,
            resolver: endpoint(&ev.src),
            client: endpoint(&ev.dst),
            cgroup_id: ev.cgroup_id,
            truncated: msg.truncated || ev.msg_len > ev.captured,
        });
        let path = self
            .cgroups
            .lookup(ev.cgroup_id)
            .map(|p| p.to_string_lossy().into_owned());
        out.workload = Some(
            self.resolver
                .workload_of_cgroup(ev.cgroup_id, path.as_deref()),
        );
        self.emit(&mut out)
    }

    /// Reports the bytes read through watched fds still open when their process exited.
    fn close_on_exit(
        &mut self,
        tgid: u32,
        boot_ns: u64,
        process: &event::Process,
    ) -> std::io::Result<()> {
        if self.kernel_reports_exit_closes {
            // Their close events follow the exit event (the kernel closes fds after it).
            return Ok(());
        }
        let Some(fds) = self.open_fds.remove(&tgid) else {
            return Ok(());
        };
        for (fd, f) in fds {
            let key = FdKey { tgid, fd };
            let Ok(state) = self.watched_fds.get(&key, 0) else {
                continue;
            };
            let _ = self.watched_fds.remove(&key);
            let mut out = self.new_event("file.close", boot_ns);
            out.process = Some(process.clone());
            out.file = Some(close_file(
                Some(&f.path),
                fd as i32,
                f.dev,
                f.ino,
                state.bytes_read,
                state.reads,
                "exit",
            ));
            self.emit(&mut out)?;
        }
        Ok(())
    }

    /// Periodic work: connects whose outcome is overdue, read progress on long-lived fds,
    /// table upkeep.
    pub fn tick(&mut self, progress: bool) -> std::io::Result<()> {
        self.publish_metrics();
        let now = Instant::now();
        let overdue: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) >= self.connect_wait)
            .map(|(c, _)| *c)
            .collect();
        for cookie in overdue {
            if let Some(mut p) = self.pending.remove(&cookie) {
                if let Some(proc_) = p.event.process.clone() {
                    self.late.insert(cookie, (proc_, now));
                }
                self.emit(&mut p.event)?;
            }
        }
        self.late
            .retain(|_, (_, t)| now.duration_since(*t) < LATE_RESULT_MEMORY);
        if self.dedupe.enabled() {
            let boot_ns = clock_ns(libc::CLOCK_BOOTTIME).max(0) as u64;
            for s in self.dedupe.due() {
                self.emit_summary(s, boot_ns)?;
            }
        }
        if progress {
            self.read_progress()?;
            self.table.reap();
            self.clock.refresh();
            self.resolver.prune();
            self.classifier.roots.prune();
        }
        Ok(())
    }

    fn read_progress(&mut self) -> std::io::Result<()> {
        let mut updates = Vec::new();
        for (tgid, fds) in &mut self.open_fds {
            for (fd, f) in fds.iter_mut() {
                if let Ok(state) = self.watched_fds.get(
                    &FdKey {
                        tgid: *tgid,
                        fd: *fd,
                    },
                    0,
                ) && state.bytes_read != f.reported_bytes
                {
                    f.reported_bytes = state.bytes_read;
                    updates.push((*tgid, *fd, f.path.clone(), f.dev, f.ino, state));
                }
            }
        }
        for (tgid, fd, path, dev, ino, state) in updates {
            let boot_ns = (clock_ns(libc::CLOCK_BOOTTIME)).max(0) as u64;
            let mut out = self.new_event("file.read", boot_ns);
            if let Some(e) = self.table_entry_process(tgid) {
                out.process = Some(e);
            }
            out.file = Some(close_file(
                Some(&path),
                fd as i32,
                dev,
                ino,
                state.bytes_read,
                state.reads,
                "progress",
            ));
            self.emit(&mut out)?;
        }
        Ok(())
    }

    /// A minimal process object for periodic events that have no kernel context.
    fn table_entry_process(&mut self, tgid: u32) -> Option<event::Process> {
        let snap = procfs::read_process(tgid).ok()?;
        let task = TaskInfo {
            tgid,
            tid: tgid,
            ppid: snap.ppid,
            start_ns: snap.start_ticks * (1_000_000_000 / procfs::USER_HZ),
            ..TaskInfo::default()
        };
        let mut p = self.process(&task);
        if let Some((id, path)) = self.resolver.cgroup_of_pid(tgid) {
            p.cgroup_id = id;
            p.cgroup = Some(path);
        }
        p.ids = Ids {
            uid: snap.uid[0],
            euid: snap.uid[1],
            suid: snap.uid[2],
            fsuid: snap.uid[3],
            gid: snap.gid[0],
            egid: snap.gid[1],
            sgid: snap.gid[2],
            fsgid: snap.gid[3],
        };
        Some(p)
    }

    /// Flushes connects still waiting for an outcome (at shutdown).
    pub fn flush_pending(&mut self) -> std::io::Result<()> {
        let pending: Vec<PendingConnect> = self.pending.drain().map(|(_, p)| p).collect();
        for mut p in pending {
            self.emit(&mut p.event)?;
        }
        Ok(())
    }

    pub fn stats(&mut self, is_final: bool) -> std::io::Result<()> {
        let mut kernel = BTreeMap::new();
        let mut drops = 0;
        for c in Counter::ALL {
            let v: u64 = self
                .counters_map
                .get(&(c as u32), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0);
            if c.is_drop() {
                drops += v;
            }
            kernel.insert(c.name(), v);
        }
        if drops > self.last_kernel_drops {
            tracing::warn!(
                new = drops - self.last_kernel_drops,
                total = drops,
                ?kernel,
                "the kernel could not deliver some events"
            );
            self.last_kernel_drops = drops;
        }
        let boot_ns = clock_ns(libc::CLOCK_BOOTTIME).max(0) as u64;
        let mut out = self.new_event("sensor.stats", boot_ns);
        out.stats = Some(event::Stats {
            kernel,
            kernel_drops: drops,
            decoded: self.counters.decoded,
            decode_errors: self.counters.decode_errors,
            filtered_in_userspace: self.counters.filtered,
            orphan_results: self.counters.orphan_results,
            processes_tracked: self.table.len(),
            dns_malformed: self.counters.dns_malformed,
            dns_cache_evicted: self.dns.evicted,
            is_final,
            spool: self.exporter.as_mut().map(|x| {
                let s = x.spool_stats();
                event::SpoolStats {
                    bytes: s.bytes,
                    unacked: s.unacked,
                    acked: s.acked,
                    evicted: s.evicted,
                    corrupt: s.corrupt,
                }
            }),
        });
        self.emit(&mut out)?;
        self.flush()
    }
}

fn ids(c: &sensor_common::Creds) -> Ids {
    Ids {
        uid: c.uid,
        gid: c.gid,
        euid: c.euid,
        egid: c.egid,
        suid: c.suid,
        sgid: c.sgid,
        fsuid: c.fsuid,
        fsgid: c.fsgid,
    }
}

fn family_name(family: u16) -> &'static str {
    if family == libc::AF_INET6 as u16 {
        "ipv6"
    } else {
        "ipv4"
    }
}

fn close_file(
    path: Option<&[u8]>,
    fd: i32,
    dev: u64,
    ino: u64,
    bytes_read: u64,
    reads: u64,
    reason: &'static str,
) -> event::File {
    let (path, path_b64) = match path {
        Some(p) => {
            let (t, b) = event::text_and_b64(p);
            (Some(t), b)
        }
        None => (None, None),
    };
    event::File {
        path,
        path_b64,
        dev: Some(event::dev_string(dev)),
        ino: Some(ino),
        fd: Some(fd as i64),
        bytes_read: Some(bytes_read),
        reads: Some(reads),
        reason: Some(reason),
        ..Default::default()
    }
}
