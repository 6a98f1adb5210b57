//! Detections on the sensor: each enriched event is shown to the rules (`rules.rs`) after it is
//! emitted; a rule that fires yields a `finding` event carrying the triggering event's process,
//! workload, identity and credential, the rule's mappings and the evidence. One host's view:
//! the collector's store sees the fleet (see the README for what is evaluated where).
//!
//! Cost: the rules look at `file.open` of catalogued credentials, `/proc/<pid>/environ` opens,
//! connects and execs only, with hash lookups; disk writes happen only when a baseline learns
//! something new.

pub mod baseline;
pub mod config;
pub mod rules;

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use serde::Serialize;

use self::{
    baseline::{Baselines, Seen, User},
    config::{DetectConfig, Subject},
    rules::{Rule, Severity},
};
use crate::event::{Event, Process};

/// Environment variables that give a workload a federated cloud identity (rule D003).
const FEDERATED_VARS: &[&str] = &[
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AZURE_FEDERATED_TOKEN_FILE",
];

/// Where in-container token mounts live: credentials there belong to the reader's workload.
const WORKLOAD_SECRET_DIRS: &[&str] = &["/var/run/secrets/", "/run/secrets/"];

/// Executables larger than this are identified by path only (hashing them would stall the
/// pipeline; no real program is this big).
const MAX_HASHED_EXE: u64 = 512 << 20;

/// Per-process state is dropped when the process exits, and also when it has been idle this
/// long (a missed exit must not leak memory).
const PROCESS_STATE_TTL_S: u64 = 3_600;

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub rule_id: &'static str,
    pub title: &'static str,
    pub severity: &'static str,
    pub owasp: Vec<&'static str>,
    pub mitre_technique_id: &'static str,
    pub mitre_technique: &'static str,
    /// One sentence on what happened, with the specifics.
    pub summary: String,
    /// The workload key the finding is about (allow-list `workload`).
    pub workload_key: String,
    pub evidence: Vec<Evidence>,
}

/// An event that made the rule fire (or an earlier one it relied on), summarised.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub kind: String,
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Evidence {
    fn of(ev: &Event) -> Self {
        let p = ev.process.as_ref();
        Self {
            kind: ev.kind.to_string(),
            time: ev.time.clone(),
            pid: p.map(|p| p.pid),
            process_key: p.map(|p| p.key.clone()),
            exe: p.and_then(|p| p.exe.clone()),
            path: ev.file.as_ref().and_then(|f| f.path.clone()),
            destination: ev.network.as_ref().map(|n| endpoint(&n.dst.ip, n.dst.port)),
            credential_kind: ev.credential.as_ref().map(|c| c.kind.clone()),
            fingerprint: ev.credential.as_ref().and_then(|c| c.fingerprint.clone()),
            workload_key: None,
            detail: None,
        }
    }
}

fn endpoint(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// A credential read remembered for rule D005.
#[derive(Debug, Clone)]
struct Read {
    at_s: u64,
    workload: String,
    credential: String,
    evidence: Evidence,
}

#[derive(Default)]
struct ProcessState {
    last_s: u64,
    reads: Vec<Read>,
    /// Distinct credential paths and when each was first opened (rule D008).
    hunted: Vec<(u64, String)>,
}

/// Counters for `sensor.stats` and `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct DetectStats {
    pub findings: std::collections::BTreeMap<&'static str, u64>,
    pub suppressed: u64,
    pub allowed: u64,
}

pub struct Detector {
    cfg: DetectConfig,
    kubelet_pods: PathBuf,
    baselines: Baselines,
    processes: HashMap<String, ProcessState>,
    /// Workload key → the federated-identity variable seen in one of its execs.
    federated: HashMap<String, String>,
    /// (rule, subject) → when it last fired (Unix s), for `repeat_after_s`.
    fired: HashMap<(&'static str, String), u64>,
    exe_ids: HashMap<(String, u64), String>,
    pub stats: DetectStats,
}

/// What a rule returns before the common checks (enabled, allow-list, repeat suppression).
struct Hit {
    rule: &'static Rule,
    severity: Severity,
    summary: String,
    /// Suppression key within the rule.
    subject: String,
    evidence: Vec<Evidence>,
    destination: Option<String>,
}

impl Detector {
    /// `state_dir`: where baselines persist (`None`: memory only).
    pub fn new(
        cfg: DetectConfig,
        kubelet_root: &Path,
        state_dir: Option<&Path>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            cfg,
            // Paths from the kernel are canonical: so must the prefix be.
            kubelet_pods: std::fs::canonicalize(kubelet_root)
                .unwrap_or_else(|_| kubelet_root.to_path_buf())
                .join("pods"),
            baselines: Baselines::open(state_dir)?,
            processes: HashMap::new(),
            federated: HashMap::new(),
            fired: HashMap::new(),
            exe_ids: HashMap::new(),
            stats: DetectStats::default(),
        })
    }

    /// SIGHUP: new thresholds and allow-lists; what was learned stays.
    pub fn set_config(&mut self, cfg: DetectConfig) {
        self.cfg = cfg;
    }

    /// The findings `ev` triggers (`ev` already carries workload and identity).
    pub fn observe(&mut self, ev: &Event) -> Vec<Finding> {
        let mut hits = Vec::new();
        if !self.cfg.enabled || ev.kind == "finding" {
            return Vec::new();
        }
        let Some(p) = &ev.process else {
            return Vec::new();
        };
        // Only these kinds feed a rule: the others (most of the stream) cost one comparison.
        if !matches!(
            ev.kind,
            "process.exec" | "process.exit" | "file.open" | "network.connect" | "network.udp_send"
        ) {
            return Vec::new();
        }
        let now_s = unix_now();
        let wkey = workload_key(ev, p);
        match ev.kind {
            "process.exec" => self.exec(ev, &wkey),
            "process.exit" => {
                self.processes.remove(&p.key);
            }
            "file.open" if ev.file.as_ref().is_some_and(|f| f.error.is_none()) => {
                self.file_open(ev, p, &wkey, now_s, &mut hits);
            }
            "network.connect" | "network.udp_send" => {
                self.connect(ev, p, &wkey, now_s, &mut hits);
            }
            _ => {}
        }
        if self.processes.len() > 10_000 {
            self.processes
                .retain(|_, s| now_s.saturating_sub(s.last_s) < PROCESS_STATE_TTL_S);
        }
        let mut out = Vec::new();
        for hit in hits {
            if let Some(f) = self.finish(hit, ev, p, &wkey, now_s) {
                out.push(f);
            }
        }
        out
    }

    fn finish(
        &mut self,
        hit: Hit,
        ev: &Event,
        p: &Process,
        wkey: &str,
        now_s: u64,
    ) -> Option<Finding> {
        let id = hit.rule.id;
        if !self.cfg.rule_enabled(id) {
            return None;
        }
        let subject = Subject {
            exe: p.exe.as_deref(),
            workload: wkey,
            credential_kind: ev.credential.as_ref().map(|c| c.kind.as_str()),
            path: ev.file.as_ref().and_then(|f| f.path.as_deref()),
            destination: hit.destination.as_deref(),
        };
        if self.cfg.allowed(id, &subject) {
            self.stats.allowed += 1;
            return None;
        }
        let key = (id, hit.subject.clone());
        if let Some(last) = self.fired.get(&key)
            && now_s.saturating_sub(*last) < self.cfg.repeat_after_s
        {
            self.stats.suppressed += 1;
            return None;
        }
        self.fired.insert(key, now_s);
        if self.fired.len() > 100_000 {
            let keep = self.cfg.repeat_after_s;
            self.fired.retain(|_, t| now_s.saturating_sub(*t) < keep);
        }
        *self.stats.findings.entry(id).or_default() += 1;
        Some(Finding {
            rule_id: id,
            title: hit.rule.title,
            severity: hit.severity.name(),
            owasp: hit.rule.owasp.to_vec(),
            mitre_technique_id: hit.rule.mitre.0,
            mitre_technique: hit.rule.mitre.1,
            summary: hit.summary,
            workload_key: wkey.to_string(),
            evidence: hit.evidence,
        })
    }

    fn exec(&mut self, ev: &Event, wkey: &str) {
        if let Some(x) = &ev.exec
            && let Some(v) = x
                .credential_env
                .iter()
                .find(|v| FEDERATED_VARS.contains(&v.name.as_str()))
        {
            self.federated.insert(wkey.to_string(), v.name.clone());
        }
    }

    fn host_daemon(&self, ev: &Event, p: &Process) -> bool {
        let host = ev
            .workload
            .as_ref()
            .is_some_and(|w| matches!(w.kind, "host" | "systemd"));
        host && self.cfg.is_node_daemon(p.exe.as_deref())
    }

    fn file_open(&mut self, ev: &Event, p: &Process, wkey: &str, now_s: u64, hits: &mut Vec<Hit>) {
        let Some(path) = ev.file.as_ref().and_then(|f| f.path.as_deref()) else {
            return;
        };
        if let Some(target) = environ_pid(path) {
            self.environ(ev, p, wkey, target, hits);
            return;
        }
        let Some(cred) = &ev.credential else { return };
        let daemon = self.host_daemon(ev, p);
        let cred_id = cred
            .fingerprint
            .clone()
            .unwrap_or_else(|| format!("path:{path}"));
        let evidence = Evidence::of(ev);

        // D001: a pod's volume read from another workload.
        if let Some(owner) = self.pod_of_path(path)
            && wkey != format!("pod:{owner}")
            && !daemon
        {
            hits.push(Hit {
                rule: rule(rules::CROSS_WORKLOAD_READ),
                severity: Severity::High,
                summary: format!(
                    "{} ({wkey}) read {path}, a credential of pod {owner}",
                    exe_name(p)
                ),
                subject: format!("{wkey}|{cred_id}"),
                evidence: vec![evidence.clone()],
                destination: None,
            });
        }

        // D007: a projected token's pod claim names another pod.
        if let Some(claimed) = identifier(&cred.identifiers, &["kubernetes", "pod_uid"])
            && wkey != format!("pod:{claimed}")
            && !daemon
        {
            hits.push(Hit {
                rule: rule(rules::TOKEN_REPLAY),
                severity: Severity::High,
                summary: format!(
                    "{} ({wkey}) read a service-account token issued to pod {claimed}",
                    exe_name(p)
                ),
                subject: format!("{wkey}|{cred_id}"),
                evidence: vec![Evidence {
                    detail: Some(match identifier(&cred.identifiers, &["jti"]) {
                        Some(jti) => format!("token jti {jti}, issued to pod {claimed}"),
                        None => format!("token issued to pod {claimed}"),
                    }),
                    ..evidence.clone()
                }],
                destination: None,
            });
        }

        // D002: a non-human credential read interactively.
        let interactive = p.tty.is_some() || p.loginuid.is_some();
        if interactive && self.non_human(path, cred, p) {
            let how = match (&p.tty, p.loginuid) {
                (Some(t), _) => format!("terminal {t}"),
                (None, Some(l)) => format!("login uid {l}"),
                (None, None) => unreachable!("interactive"),
            };
            hits.push(Hit {
                rule: rule(rules::HUMAN_USE),
                severity: Severity::Medium,
                summary: format!(
                    "{} read the non-human credential {path} ({}) from an interactive session \
                     ({how})",
                    exe_name(p),
                    cred.kind
                ),
                subject: format!("{}|{}|{cred_id}", p.loginuid.unwrap_or(u32::MAX), wkey),
                evidence: vec![evidence.clone()],
                destination: None,
            });
        }

        // D004: stale or never-expiring.
        if let Some(why) = self.stale(cred, now_s) {
            hits.push(Hit {
                rule: rule(rules::STALE_CREDENTIAL),
                severity: Severity::Medium,
                summary: format!("{path} ({}) in use: {why}", cred.kind),
                subject: format!("{wkey}|{cred_id}"),
                evidence: vec![Evidence {
                    detail: Some(why),
                    ..evidence.clone()
                }],
                destination: None,
            });
        }

        // D006: the same credential used by several workloads.
        if let Some(fp) = &cred.fingerprint
            && !daemon
        {
            let env = self.cfg.environment(namespace_of(ev)).map(str::to_string);
            let others = self.baselines.add_user(
                fp,
                User {
                    workload: wkey.to_string(),
                    env: env.clone(),
                },
                now_s,
            );
            if !others.is_empty() {
                let cross_env = env.as_ref().is_some_and(|e| {
                    others
                        .iter()
                        .any(|o| o.env.as_ref().is_some_and(|oe| oe != e))
                });
                let mut evidence = vec![evidence.clone()];
                evidence.extend(others.iter().map(|o| Evidence {
                    kind: "credential.user".into(),
                    time: String::new(),
                    pid: None,
                    process_key: None,
                    exe: None,
                    path: None,
                    destination: None,
                    credential_kind: Some(cred.kind.clone()),
                    fingerprint: Some(fp.clone()),
                    workload_key: Some(o.workload.clone()),
                    detail: o.env.as_ref().map(|e| format!("environment {e}")),
                }));
                let names: Vec<&str> = others.iter().map(|o| o.workload.as_str()).collect();
                hits.push(Hit {
                    rule: rule(rules::SHARED_CREDENTIAL),
                    severity: if cross_env {
                        Severity::High
                    } else {
                        Severity::Medium
                    },
                    summary: format!(
                        "{path} ({}) read by {wkey}, also used by {}{}",
                        cred.kind,
                        names.join(", "),
                        if cross_env {
                            " in another environment"
                        } else {
                            ""
                        }
                    ),
                    subject: format!("{wkey}|{fp}"),
                    evidence,
                    destination: None,
                });
            }
        }

        // D008: many distinct credential files, or a search tool.
        let window = self.cfg.hunting_window_s;
        let threshold = self.cfg.hunting_threshold;
        let state = self.processes.entry(p.key.clone()).or_default();
        state.last_s = now_s;
        state
            .hunted
            .retain(|(t, _)| now_s.saturating_sub(*t) < window);
        if !state.hunted.iter().any(|(_, h)| h == path) {
            state.hunted.push((now_s, path.to_string()));
        }
        let tool = exe_name(p);
        let is_tool = self.cfg.search_tools.contains(&tool);
        if state.hunted.len() >= threshold || is_tool {
            let distinct: BTreeSet<&str> = state.hunted.iter().map(|(_, h)| h.as_str()).collect();
            hits.push(Hit {
                rule: rule(rules::CREDENTIAL_HUNTING),
                severity: Severity::High,
                summary: if is_tool {
                    format!("search tool {tool} opened credential file {path}")
                } else {
                    format!(
                        "{tool} opened {} distinct credential files within {window} s",
                        distinct.len()
                    )
                },
                subject: p.key.clone(),
                evidence: vec![Evidence {
                    detail: Some(format!(
                        "paths: {}",
                        distinct.into_iter().collect::<Vec<_>>().join(", ")
                    )),
                    ..evidence.clone()
                }],
                destination: None,
            });
        }

        // D005 needs the read later, when the process connects.
        let egress = self.cfg.egress_window_s;
        state
            .reads
            .retain(|r| now_s.saturating_sub(r.at_s) <= egress);
        state.reads.push(Read {
            at_s: now_s,
            workload: wkey.to_string(),
            credential: cred_id.clone(),
            evidence: evidence.clone(),
        });

        // D010: the executable is new for this workload's credential.
        if !daemon {
            let exe_id = self.exe_identity(p);
            let scope = format!("{wkey}|{cred_id}");
            if let Seen::New { learning_since_s } = self.baselines.check(
                rules::UNEXPECTED_BINARY,
                &scope,
                &exe_id,
                now_s,
                self.cfg.learning_period_s,
            ) {
                hits.push(Hit {
                    rule: rule(rules::UNEXPECTED_BINARY),
                    severity: Severity::Medium,
                    summary: format!(
                        "{path} ({}) of {wkey} read by {exe_id}, not in its baseline (learned \
                         since {learning_since_s})",
                        cred.kind
                    ),
                    subject: format!("{scope}|{exe_id}"),
                    evidence: vec![Evidence {
                        detail: Some(exe_id),
                        ..evidence
                    }],
                    destination: None,
                });
            }
        }
    }

    fn connect(&mut self, ev: &Event, p: &Process, wkey: &str, now_s: u64, hits: &mut Vec<Hit>) {
        let Some(net) = &ev.network else { return };
        let dest = endpoint(&net.dst.ip, net.dst.port);

        // D003: instance metadata / container credentials from a container.
        let in_container = ev
            .workload
            .as_ref()
            .is_some_and(|w| matches!(w.kind, "kubernetes" | "container"));
        if in_container
            && let Some(e) = &net.endpoint
            && matches!(e.kind, "cloud_metadata" | "container_credentials")
        {
            let ns = namespace_of(ev).map(|n| format!("ns:{n}"));
            let allowed = self
                .cfg
                .imds_allowed
                .iter()
                .any(|a| a == wkey || Some(a) == ns.as_ref());
            let federated = self.federated.get(wkey);
            if federated.is_some() || !allowed {
                hits.push(Hit {
                    rule: rule(rules::CLOUD_METADATA),
                    severity: Severity::High,
                    summary: match federated {
                        Some(var) => format!(
                            "{} ({wkey}) connected to {} ({dest}) although the workload has a \
                             federated identity ({var})",
                            exe_name(p),
                            e.service
                        ),
                        None => format!(
                            "{} ({wkey}) connected to {} ({dest}); the workload is not in \
                             detections.imds_allowed",
                            exe_name(p),
                            e.service
                        ),
                    },
                    subject: format!("{wkey}|{dest}"),
                    evidence: vec![Evidence::of(ev)],
                    destination: Some(dest.clone()),
                });
            }
        }

        // D005: a destination new for (workload, credential) soon after a read by this
        // process or an ancestor.
        let window = self.cfg.egress_window_s;
        let mut recent: Vec<Read> = Vec::new();
        for key in std::iter::once(&p.key).chain(p.ancestry.iter().map(|a| &a.key)) {
            if let Some(s) = self.processes.get(key) {
                recent.extend(
                    s.reads
                        .iter()
                        .filter(|r| now_s.saturating_sub(r.at_s) <= window)
                        .cloned(),
                );
            }
        }
        let mut seen_scopes = BTreeSet::new();
        for read in recent {
            let scope = format!("{}|{}", read.workload, read.credential);
            if !seen_scopes.insert(scope.clone()) {
                continue;
            }
            if let Seen::New { learning_since_s } = self.baselines.check(
                rules::NEW_EGRESS_AFTER_READ,
                &scope,
                &dest,
                now_s,
                self.cfg.learning_period_s,
            ) {
                hits.push(Hit {
                    rule: rule(rules::NEW_EGRESS_AFTER_READ),
                    severity: Severity::Medium,
                    summary: format!(
                        "{} ({wkey}) connected to {dest} {} s after reading {}; not in the \
                         baseline of that workload and credential (learned since {learning_since_s})",
                        exe_name(p),
                        now_s.saturating_sub(read.at_s),
                        read.evidence.path.as_deref().unwrap_or("a credential"),
                    ),
                    subject: format!("{scope}|{dest}"),
                    evidence: vec![read.evidence, Evidence::of(ev)],
                    destination: Some(dest.clone()),
                });
            }
        }
    }

    fn environ(&mut self, ev: &Event, p: &Process, wkey: &str, target: u32, hits: &mut Vec<Hit>) {
        if target == p.pid || self.host_daemon(ev, p) {
            return;
        }
        let Some(target_key) = target_workload(p.pid, target) else {
            return;
        };
        if target_key == wkey {
            return;
        }
        hits.push(Hit {
            rule: rule(rules::ENVIRON_READ),
            severity: Severity::High,
            summary: format!(
                "{} ({wkey}) opened the environment of pid {target} ({target_key})",
                exe_name(p)
            ),
            subject: format!("{wkey}|{target_key}"),
            evidence: vec![Evidence {
                workload_key: Some(target_key),
                ..Evidence::of(ev)
            }],
            destination: None,
        });
    }

    /// The pod UID a kubelet pod-volume path belongs to.
    fn pod_of_path(&self, path: &str) -> Option<String> {
        let rest = Path::new(path).strip_prefix(&self.kubelet_pods).ok()?;
        let uid = rest.components().next()?.as_os_str().to_str()?;
        (rest.components().count() > 1).then(|| uid.to_string())
    }

    /// A credential that belongs to a workload rather than to the person reading it.
    fn non_human(
        &self,
        path: &str,
        cred: &crate::credentials::classify::Credential,
        p: &Process,
    ) -> bool {
        if self.pod_of_path(path).is_some()
            || WORKLOAD_SECRET_DIRS.iter().any(|d| path.starts_with(d))
            || cred.kind.starts_with("kubernetes")
        {
            return true;
        }
        // Owned by a system account that is not the person's own login.
        cred.owner_uid
            .is_some_and(|o| (1..1000).contains(&o) && Some(o) != p.loginuid)
    }

    fn stale(&self, cred: &crate::credentials::classify::Credential, now_s: u64) -> Option<String> {
        let ids = &cred.identifiers;
        if identifier_value(ids, &["kubernetes", "legacy"]).and_then(|v| v.as_bool()) == Some(true)
        {
            return Some("legacy service-account token (never expires)".into());
        }
        if identifier_value(ids, &["expires"]).and_then(|v| v.as_bool()) == Some(false) {
            return Some("token without an expiry (no exp claim)".into());
        }
        if let Some(serde_json::Value::Array(certs)) = ids.get("certificates") {
            let warn = self.cfg.cert_expiry_warning_days * 86_400;
            for c in certs {
                if let Some(na) = c.get("not_after_unix").and_then(|v| v.as_i64()) {
                    let left = na - now_s as i64;
                    if left < 0 {
                        return Some(format!("certificate expired {} days ago", -left / 86_400));
                    }
                    if (left as u64) < warn {
                        return Some(format!("certificate expires in {} days", left / 86_400));
                    }
                }
            }
        }
        let max = self.cfg.max_age_s(&cred.kind);
        match cred.age_s {
            Some(age) if age > 0 && age as u64 > max => Some(format!(
                "last changed {} days ago; the rotation policy for {} is {} days",
                age / 86_400,
                cred.kind,
                max / 86_400
            )),
            _ => None,
        }
    }

    /// `path sha256:<hex>` of the process's executable (path only when it cannot be read).
    fn exe_identity(&mut self, p: &Process) -> String {
        let path = p.exe.clone().unwrap_or_else(|| "?".into());
        // The running image; once the process is gone, the file at its path, but only when
        // that path means the same file here (same mount namespace).
        let mut file = PathBuf::from(format!("/proc/{}/exe", p.pid));
        let mut meta = std::fs::metadata(&file).ok();
        if meta.is_none() && p.exe.is_some() && Some(u64::from(p.ns.mnt)) == own_mnt_ns() {
            file = PathBuf::from(&path);
            meta = std::fs::metadata(&file).ok();
        }
        let Some(meta) = meta else { return path };
        use std::os::unix::fs::MetadataExt as _;
        let key = (
            path.clone(),
            meta.ino() ^ (meta.mtime() as u64) ^ meta.size(),
        );
        if let Some(id) = self.exe_ids.get(&key) {
            return id.clone();
        }
        let id = match sha256_file(&file, meta.size()) {
            Some(h) => format!("{path} sha256:{h}"),
            None => path,
        };
        if self.exe_ids.len() > 4_096 {
            self.exe_ids.clear();
        }
        self.exe_ids.insert(key, id.clone());
        id
    }
}

/// The inode of our mount namespace.
fn own_mnt_ns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/mnt").ok().map(|m| m.ino())
}

fn sha256_file(path: &Path, size: u64) -> Option<String> {
    use sha2::Digest as _;
    use std::io::Read as _;
    if size > MAX_HASHED_EXE {
        return None;
    }
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn rule(id: &str) -> &'static Rule {
    rules::by_id(id).expect("rule ids are constants of rules.rs")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn exe_name(p: &Process) -> String {
    p.exe
        .as_deref()
        .and_then(|e| e.rsplit('/').next())
        .map_or_else(|| p.comm.clone(), str::to_string)
}

fn namespace_of(ev: &Event) -> Option<&str> {
    ev.identity
        .as_ref()
        .and_then(|i| i.kubernetes.as_ref())
        .and_then(|k| k.namespace.as_deref())
}

fn identifier_value<'a>(
    ids: &'a serde_json::Map<String, serde_json::Value>,
    path: &[&str],
) -> Option<&'a serde_json::Value> {
    let mut v = ids.get(path[0])?;
    for k in &path[1..] {
        v = v.get(k)?;
    }
    Some(v)
}

fn identifier(ids: &serde_json::Map<String, serde_json::Value>, path: &[&str]) -> Option<String> {
    identifier_value(ids, path)
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// The stable key of the workload an event's process belongs to (allow-lists, baselines):
/// `pod:<uid>`, `container:<id>`, `unit:<name>`, `session:<n>` or `host:uid:<uid>`.
pub fn workload_key(ev: &Event, p: &Process) -> String {
    let Some(w) = &ev.workload else {
        return format!("host:uid:{}", p.ids.uid);
    };
    key_of(w, p.ids.uid)
}

fn key_of(w: &crate::workload::Workload, uid: u32) -> String {
    if let Some(pod) = &w.pod_uid {
        return format!("pod:{pod}");
    }
    if let Some(c) = &w.container_id {
        return format!("container:{c}");
    }
    if let Some(s) = &w.session {
        return format!("session:{s}");
    }
    if let Some(u) = &w.unit {
        return format!("unit:{u}");
    }
    format!("host:uid:{uid}")
}

/// `/proc/<pid>/environ` → pid.
fn environ_pid(path: &str) -> Option<u32> {
    path.strip_prefix("/proc/")?
        .strip_suffix("/environ")?
        .parse()
        .ok()
}

/// The workload key of `target` as the reader (`reader` pid, host view) sees it: its cgroup,
/// read through the reader's root so a pid of the reader's pid namespace names the right
/// process.
fn target_workload(reader: u32, target: u32) -> Option<String> {
    let via_reader = format!("/proc/{reader}/root/proc/{target}");
    let base = if Path::new(&via_reader).exists() {
        via_reader
    } else {
        format!("/proc/{target}")
    };
    let cgroup = std::fs::read_to_string(format!("{base}/cgroup")).ok()?;
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/");
    let uid = std::fs::read_to_string(format!("{base}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().and_then(|u| u.parse().ok()))?;
    Some(key_of(&crate::workload::parse_cgroup_path(path), uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_paths() {
        assert_eq!(environ_pid("/proc/42/environ"), Some(42));
        assert_eq!(environ_pid("/proc/self/environ"), None);
        assert_eq!(environ_pid("/proc/42/task/42/environ"), None);
    }

    #[test]
    fn rules_are_unique_and_mapped() {
        let mut ids: Vec<_> = rules::RULES.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), rules::RULES.len());
        for r in rules::RULES {
            assert!(
                !r.owasp.is_empty() && r.mitre.0.starts_with('T'),
                "{}",
                r.id
            );
        }
    }

    #[test]
    fn allow_lists_match_every_field_set() {
        let cfg: DetectConfig = toml::from_str(
            r#"
            [[allow]]
            rule = "NHI-D002"
            exe = "/usr/bin/break-glass"
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        let s = |exe| Subject {
            exe: Some(exe),
            workload: "host:uid:0",
            ..Default::default()
        };
        assert!(cfg.allowed("NHI-D002", &s("/usr/bin/break-glass")));
        assert!(!cfg.allowed("NHI-D001", &s("/usr/bin/break-glass")));
        assert!(!cfg.allowed("NHI-D002", &s("/tmp/break-glass")));
        let empty: DetectConfig = toml::from_str("[[allow]]\nrule = \"NHI-D002\"").unwrap();
        assert!(empty.validate().is_err());
        let unknown: DetectConfig = toml::from_str("disable = [\"NHI-X\"]").unwrap();
        assert!(unknown.validate().is_err());
    }
}
