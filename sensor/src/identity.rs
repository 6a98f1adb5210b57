//! Who a process acts as: its workload (from the cgroup path, cached per cgroup id) and the
//! non-human identity of that workload, named the SPIFFE way with SPIRE-style selectors.
//!
//! Kubernetes pods are identified without the API server: the pod UID in the cgroup path leads
//! to the pod's projected service-account token under the kubelet root
//! (`<kubelet-root>/pods/<uid>/volumes/kubernetes.io~projected/*/token`), whose claims name the
//! namespace, service account, pod and node. The token is read (bounded), decoded and dropped;
//! it is never logged or shipped.
//!
//! Identity naming (`identity.name`, `identity.spiffe_id`):
//!
//! | workload | kind | SPIFFE ID |
//! |---|---|---|
//! | pod with a readable token | `kubernetes_service_account` | `spiffe://<td>/ns/<ns>/sa/<sa>` |
//! | pod, token not found | `kubernetes_pod` | none |
//! | plain container | `container` | `spiffe://<td>/node/<host>/container/<runtime>/<id>` |
//! | systemd system service | `systemd_unit` | `spiffe://<td>/node/<host>/systemd/<unit>` |
//! | systemd user service | `systemd_user_unit` | `spiffe://<td>/node/<host>/user/<user>/systemd/<unit>` |
//! | login session, host process | `unix_user` | `spiffe://<td>/node/<host>/user/<user>` |
//!
//! Characters SPIFFE does not allow in a path segment (anything but `A-Za-z0-9.-_`) become `_`.
//! With `--host-identity user`, systemd services are named by their user like any host process
//! (for fleets where every service runs as its own dedicated user); the unit stays a selector.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    credentials::{classify::read_host_file, parse_jwt},
    event,
    workload::{Workload, parse_cgroup_path},
};

/// The kubelet's default `--root-dir`.
pub const DEFAULT_KUBELET_ROOT: &str = "/var/lib/kubelet";
/// Kubernetes' default cluster domain, also the usual SPIRE trust domain of a cluster.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// How long a pod's token claims are reused before the token is read again. The kubelet
/// rotates tokens at 80% of their TTL (48 min for the default hour): a minute keeps `iat`/`exp`
/// current at one small read per pod per minute.
const POD_REFRESH: Duration = Duration::from_secs(60);
/// Pod token directories tried, most usual first.
const TOKEN_VOLUME_KINDS: &[&str] = &["kubernetes.io~projected", "kubernetes.io~secret"];

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Identity {
    pub kind: &'static str,
    pub name: String,
    pub spiffe_id: Option<String>,
    pub selectors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesIdentity>,
    /// Why the identity is less specific than it could be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KubernetesIdentity {
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub service_account_uid: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub node_name: Option<String>,
    pub issuer: Option<String>,
    pub iat: Option<i64>,
    pub exp: Option<i64>,
    pub warnafter: Option<i64>,
    /// A legacy secret-based token that never expires.
    pub legacy: bool,
    /// The node-side token file the claims came from.
    pub token_path: String,
}

#[derive(Clone)]
struct PodInfo {
    read_at: Instant,
    found: Result<KubernetesIdentity, String>,
}

/// How processes outside containers are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HostNaming {
    /// systemd services by their unit, everything else by its user.
    Unit,
    /// Every host process by its user.
    User,
}

pub struct Resolver {
    host_naming: HostNaming,
    kubelet_root: PathBuf,
    trust_domain: String,
    hostname: String,
    cgroup_root: PathBuf,
    workloads: HashMap<u64, (Arc<Workload>, String)>,
    pods: HashMap<String, PodInfo>,
}

/// A SPIFFE path segment: allowed characters kept, anything else `_`.
fn seg(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out == "." || out == ".." {
        "_".into()
    } else {
        out
    }
}

/// Finds and decodes a pod's service-account token under the kubelet root.
pub fn pod_identity(kubelet_root: &Path, pod_uid: &str) -> Result<KubernetesIdentity, String> {
    let volumes = kubelet_root.join("pods").join(pod_uid).join("volumes");
    let mut candidates = Vec::new();
    for kind in TOKEN_VOLUME_KINDS {
        let Ok(dir) = std::fs::read_dir(volumes.join(kind)) else {
            continue;
        };
        let mut names: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        // `kube-api-access-*` is the default projected SA volume: try it first.
        names.sort_by_key(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("kube-api-access-"))
        });
        candidates.extend(names.into_iter().map(|p| p.join("token")));
    }
    if candidates.is_empty() {
        return Err(format!(
            "no service-account token volume under {}",
            volumes.display()
        ));
    }
    let mut last_err = String::new();
    for path in candidates {
        let content = match read_host_file(&path) {
            Ok(c) => c,
            Err(e) => {
                last_err = format!("{}: {e}", path.display());
                continue;
            }
        };
        match parse_jwt::parse(content.expose()) {
            Ok(c) => {
                let k = c.kubernetes.clone().unwrap_or_default();
                if k.service_account.is_none() {
                    last_err = format!("{}: not a service-account token", path.display());
                    continue;
                }
                return Ok(KubernetesIdentity {
                    namespace: k.namespace,
                    service_account: k.service_account,
                    service_account_uid: k.service_account_uid,
                    pod_name: k.pod_name,
                    pod_uid: k.pod_uid.or_else(|| Some(pod_uid.to_string())),
                    node_name: k.node_name,
                    issuer: c.iss,
                    iat: c.iat,
                    exp: c.exp,
                    warnafter: k.warnafter,
                    legacy: k.legacy,
                    token_path: path.to_string_lossy().into_owned(),
                });
            }
            Err(e) => last_err = format!("{}: {e}", path.display()),
        }
    }
    Err(last_err)
}

impl Resolver {
    /// Names host identities after `node` (the sensor's node name: `NODE_NAME` in a pod,
    /// where the host name is the pod's) instead of the host name.
    pub fn with_node_name(mut self, node: &str) -> Self {
        if !node.is_empty() {
            self.hostname = node.to_string();
        }
        self
    }

    pub fn new(kubelet_root: PathBuf, trust_domain: String, cgroup_root: PathBuf) -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        Self {
            kubelet_root,
            trust_domain,
            hostname,
            cgroup_root,
            host_naming: HostNaming::Unit,
            workloads: HashMap::new(),
            pods: HashMap::new(),
        }
    }

    pub fn with_host_naming(mut self, naming: HostNaming) -> Self {
        self.host_naming = naming;
        self
    }

    /// The workload of a cgroup (for events without a process, e.g. `network.dns`).
    pub fn workload_of_cgroup(&mut self, cgroup_id: u64, cgroup: Option<&str>) -> Workload {
        (*self.workload(cgroup_id, cgroup)).clone()
    }

    fn workload(&mut self, cgroup_id: u64, cgroup: Option<&str>) -> Arc<Workload> {
        if let Some((w, _)) = self.workloads.get(&cgroup_id) {
            return w.clone();
        }
        let Some(path) = cgroup else {
            // Not cached: a cgroup that disappeared before it could be mapped.
            return Arc::new(Workload {
                kind: "unknown",
                ..Default::default()
            });
        };
        let w = Arc::new(parse_cgroup_path(path));
        self.workloads
            .insert(cgroup_id, (w.clone(), path.to_string()));
        w
    }

    fn pod(&mut self, uid: &str) -> Result<KubernetesIdentity, String> {
        if let Some(p) = self.pods.get(uid)
            && p.read_at.elapsed() < POD_REFRESH
        {
            return p.found.clone();
        }
        let found = pod_identity(&self.kubelet_root, uid);
        self.pods.insert(
            uid.to_string(),
            PodInfo {
                read_at: Instant::now(),
                found: found.clone(),
            },
        );
        found
    }

    /// The cgroup v2 `(id, path)` of a live process from `/proc/<pid>/cgroup`, for events that
    /// have no kernel context (periodic read progress).
    pub fn cgroup_of_pid(&self, pid: u32) -> Option<(u64, String)> {
        use std::os::unix::fs::MetadataExt as _;
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))?
            .to_string();
        let ino = std::fs::metadata(self.cgroup_root.join(path.trim_start_matches('/')))
            .ok()?
            .ino();
        Some((ino, path))
    }

    /// Drops cached workloads whose cgroup is gone, and pods with them.
    pub fn prune(&mut self) {
        let root = self.cgroup_root.clone();
        self.workloads
            .retain(|_, (_, path)| root.join(path.trim_start_matches('/')).exists());
        let live: std::collections::HashSet<String> = self
            .workloads
            .values()
            .filter_map(|(w, _)| w.pod_uid.clone())
            .collect();
        self.pods.retain(|uid, _| live.contains(uid));
    }

    /// The workload and identity of the process described by `p`.
    pub fn resolve(&mut self, p: &event::Process) -> (Workload, Identity) {
        let w = self.workload(p.cgroup_id, p.cgroup.as_deref());
        let id = self.identity(&w, p);
        ((*w).clone(), id)
    }

    fn identity(&mut self, w: &Workload, p: &event::Process) -> Identity {
        let td = seg(&self.trust_domain);
        let host = seg(&self.hostname);
        let user = p.user.clone().unwrap_or_else(|| p.ids.uid.to_string());
        let mut unix = vec![
            format!("unix:uid:{}", p.ids.uid),
            format!("unix:gid:{}", p.ids.gid),
        ];
        if let Some(u) = &p.user {
            unix.push(format!("unix:user:{u}"));
        }
        if let Some(exe) = &p.exe {
            unix.push(format!("unix:path:{exe}"));
        }
        let mut id = match w.kind {
            "kubernetes" => {
                let uid = w.pod_uid.clone().unwrap_or_default();
                let mut sel = vec![format!("k8s:pod-uid:{uid}")];
                if let Some(c) = &w.container_id {
                    sel.push(format!("k8s:container-id:{c}"));
                }
                match self.pod(&uid) {
                    Ok(k) => {
                        let ns = k.namespace.clone().unwrap_or_default();
                        let sa = k.service_account.clone().unwrap_or_default();
                        sel.insert(0, format!("k8s:ns:{ns}"));
                        sel.insert(1, format!("k8s:sa:{sa}"));
                        if let Some(n) = &k.pod_name {
                            sel.push(format!("k8s:pod-name:{n}"));
                        }
                        if let Some(n) = &k.node_name {
                            sel.push(format!("k8s:node-name:{n}"));
                        }
                        Identity {
                            kind: "kubernetes_service_account",
                            name: format!("system:serviceaccount:{ns}:{sa}"),
                            spiffe_id: Some(format!(
                                "spiffe://{td}/ns/{}/sa/{}",
                                seg(&ns),
                                seg(&sa)
                            )),
                            selectors: sel,
                            kubernetes: Some(k),
                            error: None,
                        }
                    }
                    Err(e) => Identity {
                        kind: "kubernetes_pod",
                        name: format!("pod:{uid}"),
                        spiffe_id: None,
                        selectors: sel,
                        kubernetes: None,
                        error: Some(e),
                    },
                }
            }
            "container" => {
                let rt = w.runtime.unwrap_or("unknown");
                let cid = w.container_id.clone().unwrap_or_default();
                Identity {
                    kind: "container",
                    name: format!("{rt}:{}", &cid[..cid.len().min(12)]),
                    spiffe_id: Some(format!("spiffe://{td}/node/{host}/container/{rt}/{cid}")),
                    selectors: vec![
                        format!("container:runtime:{rt}"),
                        format!("container:id:{cid}"),
                    ],
                    kubernetes: None,
                    error: None,
                }
            }
            "systemd" if w.session.is_none() && self.host_naming == HostNaming::Unit => {
                let unit = w.unit.clone().unwrap_or_default();
                let sel = vec![format!("systemd:id:{unit}")];
                if w.unit_scope == Some("user") {
                    Identity {
                        kind: "systemd_user_unit",
                        name: format!("{user}/{unit}"),
                        spiffe_id: Some(format!(
                            "spiffe://{td}/node/{host}/user/{}/systemd/{}",
                            seg(&user),
                            seg(&unit)
                        )),
                        selectors: sel,
                        kubernetes: None,
                        error: None,
                    }
                } else {
                    Identity {
                        kind: "systemd_unit",
                        name: unit.clone(),
                        spiffe_id: Some(format!(
                            "spiffe://{td}/node/{host}/systemd/{}",
                            seg(&unit)
                        )),
                        selectors: sel,
                        kubernetes: None,
                        error: None,
                    }
                }
            }
            _ => {
                let mut sel = Vec::new();
                if let Some(unit) = &w.unit {
                    sel.push(format!("systemd:id:{unit}"));
                }
                Identity {
                    kind: "unix_user",
                    name: user.clone(),
                    spiffe_id: Some(format!("spiffe://{td}/node/{host}/user/{}", seg(&user))),
                    selectors: sel,
                    kubernetes: None,
                    error: None,
                }
            }
        };
        id.selectors.extend(unix);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UID: &str = "9b1c8e2a-1d2e-4f5a-8b6c-7d8e9f0a1b2c";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn process(cgroup: &str, id: u64) -> event::Process {
        serde_json::from_value::<serde_json::Value>(json!({})).ok();
        event::Process::for_tests(cgroup, id, 1000, Some("ci"), Some("/usr/bin/app"))
    }

    #[test]
    fn pod_token_names_the_service_account() {
        let root = std::env::temp_dir().join(format!("nhi-kubelet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let vol = root.join(format!(
            "pods/{UID}/volumes/kubernetes.io~projected/kube-api-access-abcde"
        ));
        std::fs::create_dir_all(&vol).unwrap();
        let token = parse_jwt::mint(&json!({
            "iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:payments:api",
            "iat": 1700000000, "exp": 1700003600,
            "kubernetes.io": {"namespace": "payments", "pod": {"name": "api-0", "uid": UID},
                              "serviceaccount": {"name": "api", "uid": "sa-1"},
                              "node": {"name": "n1", "uid": "x"}, "warnafter": 1700002000}
        }));
        std::fs::write(vol.join("token"), &token).unwrap();
        let mut r = Resolver::new(root.clone(), "example.org".into(), "/nonexistent".into());
        let p = process(&format!("/kubepods/burstable/pod{UID}/{CID}"), 5);
        let (w, id) = r.resolve(&p);
        assert_eq!(w.kind, "kubernetes");
        assert_eq!(id.kind, "kubernetes_service_account");
        assert_eq!(
            id.spiffe_id.as_deref(),
            Some("spiffe://example.org/ns/payments/sa/api")
        );
        assert!(id.selectors.contains(&"k8s:ns:payments".to_string()));
        assert!(id.selectors.contains(&format!("k8s:container-id:{CID}")));
        assert!(id.selectors.contains(&"k8s:pod-name:api-0".to_string()));
        assert!(id.selectors.contains(&"unix:path:/usr/bin/app".to_string()));
        let k = id.kubernetes.unwrap();
        assert_eq!(k.warnafter, Some(1700002000));
        let out = serde_json::to_string(&r.resolve(&p).1).unwrap();
        assert!(!out.contains(&token) && !out.contains(token.rsplit('.').next().unwrap()));
        // Missing token: a less specific identity with the reason.
        let (_, id) = r.resolve(&process(
            "/kubepods/pod11111111-2222-3333-4444-555555555555/x",
            6,
        ));
        assert_eq!(id.kind, "kubernetes_pod");
        assert!(id.error.unwrap().contains("no service-account token"));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn host_identities() {
        let mut r = Resolver::new("/x".into(), "td".into(), "/nonexistent".into());
        r.hostname = "node1".into();
        let (_, s) = r.resolve(&process("/system.slice/nginx.service", 1));
        assert_eq!(s.kind, "systemd_unit");
        assert_eq!(
            s.spiffe_id.as_deref(),
            Some("spiffe://td/node/node1/systemd/nginx.service")
        );
        assert_eq!(s.selectors[0], "systemd:id:nginx.service");
        let (_, u) = r.resolve(&process("/user.slice/user-1000.slice/session-2.scope", 2));
        assert_eq!((u.kind, u.name.as_str()), ("unix_user", "ci"));
        let (_, h) = r.resolve(&process("/", 3));
        assert_eq!(
            h.spiffe_id.as_deref(),
            Some("spiffe://td/node/node1/user/ci")
        );
        let (_, us) = r.resolve(&process(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/a@b.service",
            4,
        ));
        assert_eq!(
            us.spiffe_id.as_deref(),
            Some("spiffe://td/node/node1/user/ci/systemd/a_b.service")
        );
        let (_, c) = r.resolve(&process(&format!("/system.slice/docker-{CID}.scope"), 7));
        assert_eq!(c.kind, "container");
        let mut r2 = Resolver::new("/x".into(), "td".into(), "/nonexistent".into())
            .with_host_naming(HostNaming::User);
        r2.hostname = "node1".into();
        let (_, by_user) = r2.resolve(&process("/system.slice/nginx.service", 1));
        assert_eq!(by_user.kind, "unix_user");
        assert_eq!(by_user.selectors[0], "systemd:id:nginx.service");
        r.prune();
        assert!(
            r.workloads.is_empty(),
            "cgroups under a missing root are gone"
        );
    }
}
