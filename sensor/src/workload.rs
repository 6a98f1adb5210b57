//! Which workload a process belongs to, from its cgroup v2 path alone (pure parsing, no I/O):
//! a Kubernetes pod's container, a plain container, a systemd unit, or the host.
//!
//! The path is walked segment by segment. A `pod<uid>` segment (cgroupfs driver) or a
//! `…-pod<uid_with_underscores>.slice` segment (systemd driver) names the pod; a 64-hex segment,
//! bare or wrapped as `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` or
//! `libpod-<id>.scope`, names a container. A container segment *before* the pod segment is the
//! outer container of a nested (kind-style) node. Without a container, the deepest systemd
//! `.service`/`.scope` segment names the unit. See NHI-REFERENCE.md, "cgroup path formats".

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// `kubernetes`, `container`, `systemd` or `host`.
    pub kind: &'static str,
    /// Container runtime: `containerd`, `crio`, `docker`, `podman`; null when the path does not
    /// say (cgroupfs driver with a bare id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Pod UID in its canonical dashed form (the systemd driver writes `_`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// `guaranteed`, `burstable` or `besteffort`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<&'static str>,
    /// The node itself runs in a container (kind): that outer container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer_container: Option<OuterContainer>,
    /// Container run by an unprivileged user's podman (under `user@<uid>.service`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rootless: bool,
    /// systemd unit (`nginx.service`, `session-3.scope`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// `system` (PID 1's units) or `user` (a `user@<uid>.service` manager's units).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_scope: Option<&'static str>,
    /// Login session number for `session-<n>.scope`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Owner of a `user-<uid>.slice` (sessions, user services, rootless containers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slice_uid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OuterContainer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'static str>,
    pub container_id: String,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod UID as written in a cgroup segment: 32 hex digits in 8-4-4-4-12 groups separated by
/// `-` (cgroupfs) or `_` (systemd). Returns the dashed, lower-case form.
fn pod_uid(s: &str) -> Option<String> {
    let groups: Vec<&str> = s.split(['-', '_']).collect();
    let lens = [8, 4, 4, 4, 12];
    if groups.len() != 5
        || groups
            .iter()
            .zip(lens)
            .any(|(g, n)| g.len() != n || !g.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(groups.join("-").to_ascii_lowercase())
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_>.slice` (systemd).
fn pod_segment(seg: &str) -> Option<(String, Option<&'static str>)> {
    if let Some(rest) = seg.strip_suffix(".slice") {
        let (head, last) = rest.rsplit_once('-')?;
        let uid = pod_uid(last.strip_prefix("pod")?)?;
        let qos = qos_of(head.rsplit('-').next().unwrap_or(""));
        return Some((uid, qos.or(Some("guaranteed"))));
    }
    seg.strip_prefix("pod").and_then(pod_uid).map(|u| (u, None))
}

fn qos_of(seg: &str) -> Option<&'static str> {
    match seg {
        "burstable" => Some("burstable"),
        "besteffort" => Some("besteffort"),
        _ => None,
    }
}

/// A container segment: `(runtime, id)`. `runtime` is None for a bare id.
fn container_segment(seg: &str) -> Option<(Option<&'static str>, String)> {
    if is_hex64(seg) {
        return Some((None, seg.to_ascii_lowercase()));
    }
    let body = seg.strip_suffix(".scope").unwrap_or(seg);
    for (prefix, runtime) in [
        ("cri-containerd-", "containerd"),
        ("crio-", "crio"),
        ("docker-", "docker"),
        ("libpod-", "podman"),
    ] {
        if let Some(id) = body.strip_prefix(prefix)
            && is_hex64(id)
        {
            return Some((Some(runtime), id.to_ascii_lowercase()));
        }
    }
    None
}

/// The runtime a cgroupfs parent directory implies for a bare container id.
fn runtime_of_parent(seg: &str) -> Option<&'static str> {
    match seg {
        "docker" => Some("docker"),
        "libpod_parent" | "machine" => Some("podman"),
        _ => None,
    }
}

/// Parses a cgroup v2 path (`/a/b/c`, relative to the cgroup2 root) into a workload.
pub fn parse_cgroup_path(path: &str) -> Workload {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut w = Workload {
        kind: "host",
        ..Default::default()
    };
    let pod_at = segs.iter().position(|s| pod_segment(s).is_some());
    let mut containers: Vec<(usize, Option<&'static str>, String)> = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        if let Some((rt, id)) = container_segment(seg) {
            let rt = rt.or_else(|| i.checked_sub(1).and_then(|p| runtime_of_parent(segs[p])));
            containers.push((i, rt, id));
        }
    }
    for (i, seg) in segs.iter().enumerate() {
        if let Some(rest) = seg
            .strip_prefix("user-")
            .and_then(|s| s.strip_suffix(".slice"))
            && let Ok(uid) = rest.parse()
        {
            w.slice_uid = Some(uid);
        }
        if let Some(rest) = seg
            .strip_prefix("user@")
            .and_then(|s| s.strip_suffix(".service"))
            && let Ok(uid) = rest.parse::<u32>()
        {
            // Everything below a user manager belongs to that user.
            w.slice_uid = Some(uid);
            if containers.iter().any(|(at, _, _)| *at > i) {
                w.rootless = true;
            }
        }
    }

    if let Some(p) = pod_at {
        let (uid, qos) = pod_segment(segs[p]).expect("position found it");
        w.kind = "kubernetes";
        w.pod_uid = Some(uid);
        w.qos = qos.or_else(|| {
            // cgroupfs: `/kubepods/<qos>/pod<uid>`, or directly under kubepods (guaranteed).
            p.checked_sub(1)
                .and_then(|q| qos_of(segs[q]))
                .or(Some("guaranteed"))
        });
        if let Some((_, rt, id)) = containers.iter().rfind(|(at, _, _)| *at > p) {
            w.runtime = *rt;
            w.container_id = Some(id.clone());
        }
        if let Some((_, rt, id)) = containers.iter().rfind(|(at, _, _)| *at < p) {
            w.outer_container = Some(OuterContainer {
                runtime: *rt,
                container_id: id.clone(),
            });
        }
        w.slice_uid = None;
        w.rootless = false;
        return w;
    }
    if let Some((_, rt, id)) = containers.last() {
        w.kind = "container";
        w.runtime = *rt;
        w.container_id = Some(id.clone());
        return w;
    }
    // systemd: the deepest unit. A user manager's own `user@<uid>.service` counts only when
    // nothing below it is a unit.
    let unit_at = segs
        .iter()
        .rposition(|s| s.ends_with(".service") || s.ends_with(".scope"));
    if let Some(u) = unit_at {
        let unit = segs[u];
        w.kind = "systemd";
        w.unit = Some(unit.to_string());
        let under_user_manager = segs[..u]
            .iter()
            .any(|s| s.starts_with("user@") && s.ends_with(".service"));
        w.unit_scope = Some(if under_user_manager { "user" } else { "system" });
        if let Some(n) = unit
            .strip_prefix("session-")
            .and_then(|s| s.strip_suffix(".scope"))
        {
            w.session = Some(n.to_string());
        }
        return w;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const CID2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const UID: &str = "9b1c8e2a-1d2e-4f5a-8b6c-7d8e9f0a1b2c";
    const UID_: &str = "9b1c8e2a_1d2e_4f5a_8b6c_7d8e9f0a1b2c";

    #[test]
    fn kubernetes_cgroupfs() {
        let w = parse_cgroup_path(&format!("/kubepods/burstable/pod{UID}/{CID}"));
        assert_eq!(w.kind, "kubernetes");
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert_eq!(w.container_id.as_deref(), Some(CID));
        assert_eq!(w.qos, Some("burstable"));
        assert_eq!(w.runtime, None);
        let g = parse_cgroup_path(&format!("/kubepods/pod{UID}/{CID}"));
        assert_eq!(g.qos, Some("guaranteed"));
        // The pod sandbox level itself (no container yet).
        let p = parse_cgroup_path(&format!("/kubepods/besteffort/pod{UID}"));
        assert_eq!((p.kind, p.container_id), ("kubernetes", None));
    }

    #[test]
    fn kubernetes_systemd_runtimes() {
        for (leaf, rt) in [
            (format!("cri-containerd-{CID}.scope"), "containerd"),
            (format!("crio-{CID}.scope"), "crio"),
            (format!("docker-{CID}.scope"), "docker"),
        ] {
            let p = format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/{leaf}"
            );
            let w = parse_cgroup_path(&p);
            assert_eq!(w.kind, "kubernetes", "{p}");
            assert_eq!(w.pod_uid.as_deref(), Some(UID), "{p}");
            assert_eq!(w.container_id.as_deref(), Some(CID), "{p}");
            assert_eq!(w.runtime, Some(rt), "{p}");
            assert_eq!(w.qos, Some("burstable"));
        }
        let w = parse_cgroup_path(&format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
             kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
        ));
        assert_eq!(
            (w.kind, w.qos, w.pod_uid.as_deref()),
            ("kubernetes", Some("besteffort"), Some(UID))
        );
        let g = parse_cgroup_path(&format!(
            "/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope"
        ));
        assert_eq!(g.qos, Some("guaranteed"));
        // CRI-O's conmon is not the container.
        let c = parse_cgroup_path(&format!(
            "/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope"
        ));
        assert_eq!((c.kind, c.container_id), ("kubernetes", None));
    }

    #[test]
    fn kubernetes_nested_kind() {
        let w = parse_cgroup_path(&format!(
            "/docker/{CID2}/kubepods/besteffort/pod{UID}/{CID}"
        ));
        assert_eq!(w.kind, "kubernetes");
        assert_eq!(w.container_id.as_deref(), Some(CID));
        assert_eq!(
            w.outer_container,
            Some(OuterContainer {
                runtime: Some("docker"),
                container_id: CID2.into()
            })
        );
        let s = parse_cgroup_path(&format!(
            "/system.slice/docker-{CID2}.scope/kubelet.slice/kubelet-kubepods.slice/\
             kubelet-kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"
        ));
        assert_eq!(s.outer_container.unwrap().container_id, CID2);
        assert_eq!(s.runtime, Some("containerd"));
    }

    #[test]
    fn plain_containers() {
        let d = parse_cgroup_path(&format!("/system.slice/docker-{CID}.scope"));
        assert_eq!(
            (d.kind, d.runtime, d.container_id.as_deref()),
            ("container", Some("docker"), Some(CID))
        );
        let d2 = parse_cgroup_path(&format!("/docker/{CID}"));
        assert_eq!((d2.kind, d2.runtime), ("container", Some("docker")));
        let p = parse_cgroup_path(&format!("/machine.slice/libpod-{CID}.scope"));
        assert_eq!(
            (p.kind, p.runtime, p.rootless),
            ("container", Some("podman"), false)
        );
        // podman --cgroups=split puts the process one level deeper.
        let p2 = parse_cgroup_path(&format!("/machine.slice/libpod-{CID}.scope/container"));
        assert_eq!(p2.container_id.as_deref(), Some(CID));
        let r = parse_cgroup_path(&format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope"
        ));
        assert_eq!(
            (r.kind, r.runtime, r.rootless, r.slice_uid),
            ("container", Some("podman"), true, Some(1000))
        );
    }

    #[test]
    fn systemd_units_and_host() {
        let s = parse_cgroup_path("/system.slice/nginx.service");
        assert_eq!(
            (s.kind, s.unit.as_deref(), s.unit_scope),
            ("systemd", Some("nginx.service"), Some("system"))
        );
        let u = parse_cgroup_path(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/syncthing.service",
        );
        assert_eq!(
            (u.unit.as_deref(), u.unit_scope, u.slice_uid),
            (Some("syncthing.service"), Some("user"), Some(1000))
        );
        let m = parse_cgroup_path("/user.slice/user-1000.slice/user@1000.service/init.scope");
        assert_eq!(m.unit.as_deref(), Some("init.scope"));
        let sess = parse_cgroup_path("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(
            (
                sess.kind,
                sess.session.as_deref(),
                sess.slice_uid,
                sess.unit_scope
            ),
            ("systemd", Some("3"), Some(1000), Some("system"))
        );
        assert_eq!(parse_cgroup_path("/").kind, "host");
        assert_eq!(parse_cgroup_path("").kind, "host");
        assert_eq!(parse_cgroup_path("/user.slice").kind, "host");
    }

    #[test]
    fn hostile_paths() {
        for p in [
            "/pod/xyz",
            "/podnot-a-uid/abc",
            "/kubepods-pod.slice",
            "/kubepods-podZZZZZZZZ_1d2e_4f5a_8b6c_7d8e9f0a1b2c.slice",
            "/docker-123.scope",
            &format!("/{}", "a/".repeat(10_000)),
            "/\u{0}/\u{ffff}/..",
            &format!("/crio-{}.scope", &CID[..63]),
        ] {
            let w = parse_cgroup_path(p);
            assert!(matches!(w.kind, "host" | "systemd"), "{p:.60}: {w:?}");
        }
    }
}
