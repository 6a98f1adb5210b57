//! The sensor's JSON event model (`crate::event`) → the gRPC contract (`nhisensor.v1.Event`).
//!
//! The two carry the same information: `proto/nhisensor/v1/events.proto` names, for every
//! field, the JSON key it mirrors. Strings the JSON model keeps as text (`"0x..."` capability
//! masks, `"major:minor"` devices, octal modes, dotted kinds) become numbers and enums here.

use base64::Engine as _;
use nhi_proto::v1 as pb;
use serde_json::Value;

use crate::event;

/// The protobuf event for one JSON event. `sensor` and `sequence` are left for the exporter.
pub fn to_proto(ev: &event::Event) -> pb::Event {
    let mut out = pb::Event {
        kind: kind(ev.kind) as i32,
        time: timestamp(&ev.time),
        boot_ns: ev.boot_ns,
        process: ev.process.as_ref().map(process),
        workload: ev
            .workload
            .as_ref()
            .map(|w| workload(w, ev.identity.as_ref())),
        identity: ev.identity.as_ref().map(identity),
        credential: ev.credential.as_ref().map(credential),
        ..Default::default()
    };
    out.payload = payload(ev);
    out
}

pub fn kind(kind: &str) -> pb::EventKind {
    use pb::EventKind as K;
    match kind {
        "process.exec" => K::ProcessExec,
        "process.fork" => K::ProcessFork,
        "process.exit" => K::ProcessExit,
        "process.cred_change" => K::ProcessCredChange,
        "file.open" => K::FileOpen,
        "file.close" => K::FileClose,
        "file.read" => K::FileRead,
        "network.connect" => K::NetworkConnect,
        "network.connect_result" => K::NetworkConnectResult,
        "network.udp_send" => K::NetworkUdpSend,
        "network.accept" => K::NetworkAccept,
        "network.unix_connect" => K::NetworkUnixConnect,
        "sensor.stats" => K::SensorStats,
        "sensor.loss" => K::SensorLoss,
        "finding" => K::Finding,
        "network.dns" => K::NetworkDns,
        _ => K::Unspecified,
    }
}

fn finding(f: &crate::detect::Finding) -> pb::Finding {
    pb::Finding {
        rule_id: f.rule_id.to_string(),
        title: f.title.to_string(),
        severity: f.severity.to_string(),
        owasp: f.owasp.iter().map(|s| s.to_string()).collect(),
        mitre_technique_id: f.mitre_technique_id.to_string(),
        mitre_technique: f.mitre_technique.to_string(),
        summary: f.summary.clone(),
        workload_key: f.workload_key.clone(),
        evidence: f
            .evidence
            .iter()
            .map(|e| pb::FindingEvidence {
                kind: e.kind.clone(),
                time: e.time.clone(),
                pid: e.pid,
                process_key: e.process_key.clone(),
                exe: e.exe.clone(),
                path: e.path.clone(),
                destination: e.destination.clone(),
                credential_kind: e.credential_kind.clone(),
                fingerprint: e.fingerprint.clone(),
                workload_key: e.workload_key.clone(),
                detail: e.detail.clone(),
            })
            .collect(),
    }
}

fn timestamp(rfc3339: &str) -> Option<prost_types::Timestamp> {
    let t = humantime::parse_rfc3339(rfc3339).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

fn path(text: &str, b64: Option<&str>) -> pb::FilePath {
    pb::FilePath {
        text: text.to_string(),
        raw: b64
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default(),
    }
}

fn hex_u64(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0)
}

fn octal(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 8).ok()
}

fn device(s: &str) -> pb::Device {
    let (major, minor) = s.split_once(':').unwrap_or(("0", "0"));
    pb::Device {
        major: major.parse().unwrap_or(0),
        minor: minor.parse().unwrap_or(0),
    }
}

fn errno(e: &event::Errno) -> pb::Errno {
    pb::Errno {
        errno: e.errno,
        name: if e.name == "UNKNOWN" { "" } else { e.name }.to_string(),
    }
}

fn process(p: &event::Process) -> pb::Process {
    pb::Process {
        key: p.key.clone(),
        pid: p.pid,
        tid: p.tid,
        ppid: p.ppid,
        parent_key: p.parent_key.clone(),
        start_ns: p.start_ns,
        comm: p.comm.clone(),
        exe: p.exe.as_deref().map(|e| path(e, p.exe_b64.as_deref())),
        argv: p
            .argv
            .as_ref()
            .map(|a| pb::StringList { values: a.clone() }),
        uid: p.ids.uid,
        gid: p.ids.gid,
        euid: p.ids.euid,
        egid: p.ids.egid,
        suid: p.ids.suid,
        sgid: p.ids.sgid,
        fsuid: p.ids.fsuid,
        fsgid: p.ids.fsgid,
        user: p.user.clone(),
        cap_effective: hex_u64(&p.cap_effective),
        cap_permitted: hex_u64(&p.cap_permitted),
        loginuid: p.loginuid,
        sessionid: p.sessionid,
        tty: p.tty.clone(),
        cgroup_id: p.cgroup_id,
        cgroup: p.cgroup.clone(),
        ns: Some(pb::Namespaces {
            pid: p.ns.pid,
            mnt: p.ns.mnt,
            net: p.ns.net,
            user: p.ns.user,
            uts: p.ns.uts,
            ipc: p.ns.ipc,
            cgroup: p.ns.cgroup,
        }),
        ancestry: p
            .ancestry
            .iter()
            .map(|a| pb::Ancestor {
                pid: a.pid,
                key: a.key.clone(),
                exe: a.exe.as_deref().map(|e| path(e, None)),
            })
            .collect(),
    }
}

fn workload(w: &crate::workload::Workload, id: Option<&crate::identity::Identity>) -> pb::Workload {
    use pb::WorkloadKind as K;
    let k8s = id.and_then(|i| i.kubernetes.as_ref());
    pb::Workload {
        kind: match w.kind {
            "kubernetes" => K::KubernetesPod,
            "container" => K::Container,
            "systemd" => K::SystemdUnit,
            "host" => K::Host,
            _ => K::Unspecified,
        } as i32,
        container_id: w.container_id.clone().unwrap_or_default(),
        pod_uid: w.pod_uid.clone().unwrap_or_default(),
        pod_name: k8s.and_then(|k| k.pod_name.clone()).unwrap_or_default(),
        namespace: k8s.and_then(|k| k.namespace.clone()).unwrap_or_default(),
        unit: w.unit.clone().unwrap_or_default(),
        runtime: w.runtime.unwrap_or_default().to_string(),
        qos: w.qos.unwrap_or_default().to_string(),
        outer_container_id: w
            .outer_container
            .as_ref()
            .map(|o| o.container_id.clone())
            .unwrap_or_default(),
        outer_container_runtime: w
            .outer_container
            .as_ref()
            .and_then(|o| o.runtime)
            .unwrap_or_default()
            .to_string(),
        rootless: w.rootless,
        unit_scope: w.unit_scope.unwrap_or_default().to_string(),
        session: w.session.clone().unwrap_or_default(),
        slice_uid: w.slice_uid,
        ..Default::default()
    }
}

fn identity(i: &crate::identity::Identity) -> pb::Identity {
    use pb::IdentityKind as K;
    let k8s = i.kubernetes.as_ref();
    pb::Identity {
        kind: match i.kind {
            "unix_user" => K::UnixUser,
            "kubernetes_service_account" => K::KubernetesServiceAccount,
            "systemd_unit" => K::SystemdUnit,
            "systemd_user_unit" => K::SystemdUserUnit,
            "kubernetes_pod" => K::KubernetesPod,
            "container" => K::Container,
            _ => K::Unspecified,
        } as i32,
        id: i.name.clone(),
        namespace: k8s.and_then(|k| k.namespace.clone()).unwrap_or_default(),
        service_account: k8s
            .and_then(|k| k.service_account.clone())
            .unwrap_or_default(),
        spiffe_id: i.spiffe_id.clone().unwrap_or_default(),
        selectors: i.selectors.clone(),
        kubernetes: k8s.map(|k| pb::KubernetesToken {
            service_account_uid: k.service_account_uid.clone().unwrap_or_default(),
            pod_name: k.pod_name.clone().unwrap_or_default(),
            pod_uid: k.pod_uid.clone().unwrap_or_default(),
            node_name: k.node_name.clone().unwrap_or_default(),
            issuer: k.issuer.clone().unwrap_or_default(),
            iat: k.iat,
            exp: k.exp,
            warnafter: k.warnafter,
            legacy: k.legacy,
            token_path: k.token_path.clone(),
        }),
        error: i.error.clone(),
        ..Default::default()
    }
}

fn credential(c: &crate::credentials::classify::Credential) -> pb::Credential {
    pb::Credential {
        kind: c.kind.clone(),
        format: c.format.to_string(),
        fingerprint: c.fingerprint.clone(),
        identifiers: c
            .identifiers
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        size: c.size,
        mtime: c.mtime.clone(),
        age_s: c.age_s,
        issued_at: c.issued_at,
        issued_age_s: c.issued_age_s,
        owner_uid: c.owner_uid,
        owner_gid: c.owner_gid,
        mode: c.mode.clone(),
        world_readable: c.world_readable,
        file_type: c.file_type.map(str::to_string),
        error: c.error.clone(),
    }
}

fn endpoint(e: &crate::endpoints::CredentialEndpoint) -> pb::CredentialEndpoint {
    pb::CredentialEndpoint {
        kind: e.kind.to_string(),
        service: e.service.to_string(),
    }
}

fn payload(ev: &event::Event) -> Option<pb::event::Payload> {
    use pb::event::Payload;
    if let Some(f) = &ev.finding {
        return Some(Payload::Finding(finding(f)));
    }
    if let Some(d) = &ev.dns {
        let addr = |e: &event::Endpoint| pb::SocketAddress {
            ip: e.ip.clone(),
            port: u32::from(e.port),
        };
        return Some(Payload::Dns(pb::Dns {
            query: d.query.clone(),
            query_type: d.query_type.clone(),
            rcode: d.rcode.clone(),
            id: u32::from(d.id),
            answers: d
                .answers
                .iter()
                .map(|a| pb::DnsAnswer {
                    name: a.name.clone(),
                    r#type: a.rtype.clone(),
                    data: a.data.clone(),
                    ttl: a.ttl,
                })
                .collect(),
            resolver: Some(addr(&d.resolver)),
            client: Some(addr(&d.client)),
            cgroup_id: d.cgroup_id,
            truncated: d.truncated,
        }));
    }
    if let Some(x) = &ev.exec {
        return Some(Payload::Exec(pb::Exec {
            filename: Some(path(&x.filename, None)),
            argv: x.argv.clone(),
            argv_truncated: x.argv_truncated,
            old_pid: x.old_pid,
            credential_env: x
                .credential_env
                .iter()
                .map(|v| pb::CredentialVar {
                    name: v.name.clone(),
                    fingerprint: v.fingerprint.clone(),
                    value: v.value.clone(),
                })
                .collect(),
            env_truncated: x.env_truncated,
        }));
    }
    if let Some(f) = &ev.fork {
        return Some(Payload::Fork(pb::Fork {
            child_pid: f.child_pid,
            child_key: f.child_key.clone(),
        }));
    }
    if let Some(x) = &ev.exit {
        return Some(Payload::Exit(pb::Exit {
            status: x.status,
            code: x.code,
            signal: x.signal,
        }));
    }
    if let Some(c) = &ev.cred_change {
        let creds = |c: &event::CredSet| pb::Credentials {
            uid: c.ids.uid,
            gid: c.ids.gid,
            euid: c.ids.euid,
            egid: c.ids.egid,
            suid: c.ids.suid,
            sgid: c.ids.sgid,
            fsuid: c.ids.fsuid,
            fsgid: c.ids.fsgid,
            cap_effective: hex_u64(&c.cap_effective),
        };
        return Some(Payload::CredChange(pb::CredChange {
            syscall: cred_syscall(&c.syscall) as i32,
            old: Some(creds(&c.old)),
            new: Some(creds(&c.new)),
        }));
    }
    if let Some(f) = &ev.file {
        let fpath = f.path.as_deref().map(|p| path(p, f.path_b64.as_deref()));
        if ev.kind == "file.open" {
            return Some(Payload::FileOpen(pb::FileOpen {
                path: fpath,
                path_truncated: f.path_truncated.unwrap_or(false),
                path_resolved: f.path_resolved.unwrap_or(true),
                dev: f.dev.as_deref().map(device),
                ino: f.ino.unwrap_or(0),
                mode: f.mode.as_deref().and_then(octal),
                flags: f.flags.unwrap_or(0),
                access: match f.access {
                    Some("read") => pb::FileAccess::Read,
                    Some("read_write") => pb::FileAccess::ReadWrite,
                    _ => pb::FileAccess::Unspecified,
                } as i32,
                fd: f.fd.map(|fd| fd as i32),
                error: f.error.as_ref().map(errno),
                matched: f
                    .matched
                    .iter()
                    .flatten()
                    .map(|m| file_match(m) as i32)
                    .collect(),
                path_requested: f.path_requested.clone(),
                repeats: f.repeats,
            }));
        }
        return Some(Payload::FileClose(pb::FileClose {
            path: fpath,
            fd: f.fd.unwrap_or(-1) as i32,
            dev: f.dev.as_deref().map(device),
            ino: f.ino.unwrap_or(0),
            bytes_read: f.bytes_read.unwrap_or(0),
            reads: f.reads.unwrap_or(0),
            reason: match f.reason {
                Some("close") => pb::CloseReason::Close,
                Some("exit") => pb::CloseReason::Exit,
                Some("progress") => pb::CloseReason::Progress,
                _ => pb::CloseReason::Unspecified,
            } as i32,
        }));
    }
    if let Some(n) = &ev.network {
        return Some(Payload::Network(network(n)));
    }
    if let Some(u) = &ev.unix {
        return Some(Payload::Unix(pb::UnixConnect {
            path: Some(path(&u.path, u.path_b64.as_deref())),
            r#abstract: u.is_abstract,
            result: u.result.to_string(),
            error: u.error.as_ref().map(errno),
            endpoint: u.endpoint.as_ref().map(endpoint),
        }));
    }
    if let Some(s) = &ev.stats {
        let k = |name: &str| s.kernel.get(name).copied().unwrap_or(0);
        return Some(Payload::Stats(pb::SensorStats {
            kernel: Some(pb::KernelStats {
                ringbuf_full: k("ringbuf_full"),
                no_scratch: k("no_scratch"),
                map_full: k("map_full"),
                read_error: k("read_error"),
                emitted: k("emitted"),
                opens_seen: k("opens_seen"),
                opens_matched: k("opens_matched"),
                paths_truncated: k("paths_truncated"),
                udp_deduped: k("udp_deduped"),
                opens_deduped: k("opens_deduped"),
            }),
            kernel_drops: s.kernel_drops,
            decoded: s.decoded,
            decode_errors: s.decode_errors,
            r#final: s.is_final,
            filtered_in_userspace: s.filtered_in_userspace,
            orphan_results: s.orphan_results,
            processes_tracked: s.processes_tracked as u64,
            dns_malformed: s.dns_malformed,
            dns_cache_evicted: s.dns_cache_evicted,
            spool: s.spool.as_ref().map(|x| pb::SpoolStats {
                bytes: x.bytes,
                unacked: x.unacked,
                acked: x.acked,
                evicted: x.evicted,
                corrupt: x.corrupt,
            }),
        }));
    }
    None
}

fn network(n: &event::Network) -> pb::Network {
    let addr = |e: &event::Endpoint| pb::SocketAddress {
        ip: e.ip.clone(),
        port: e.port as u32,
    };
    pb::Network {
        protocol: match n.protocol {
            "tcp" => pb::NetworkProtocol::Tcp,
            "udp" => pb::NetworkProtocol::Udp,
            _ => pb::NetworkProtocol::Unspecified,
        } as i32,
        family: match n.family {
            "ipv4" => pb::AddressFamily::Ipv4,
            "ipv6" => pb::AddressFamily::Ipv6,
            _ => pb::AddressFamily::Unspecified,
        } as i32,
        direction: match n.direction {
            "outbound" => pb::Direction::Outbound,
            "inbound" => pb::Direction::Inbound,
            _ => pb::Direction::Unspecified,
        } as i32,
        src: n.src.as_ref().map(addr),
        dst: Some(addr(&n.dst)),
        v4_mapped: n.v4_mapped,
        cookie: n.cookie,
        result: network_result(n.result) as i32,
        error: n.error.as_ref().map(errno),
        endpoint: n.endpoint.as_ref().map(endpoint),
        dst_dns_names: n.dst_dns_names.clone(),
    }
}

fn network_result(r: &str) -> pb::NetworkResult {
    use pb::NetworkResult as R;
    match r {
        "established" => R::Established,
        "refused" => R::Refused,
        "timed_out" => R::TimedOut,
        "failed" => R::Failed,
        "pending" => R::Pending,
        "connected" => R::Connected,
        "sent" => R::Sent,
        "accepted" => R::Accepted,
        _ => R::Unspecified,
    }
}

fn file_match(m: &str) -> pb::FileMatch {
    use pb::FileMatch as M;
    match m {
        "prefix" => M::Prefix,
        "name" => M::Name,
        "name_prefix" => M::NamePrefix,
        "name_suffix" => M::NameSuffix,
        "truncated" => M::Truncated,
        _ => M::Unspecified,
    }
}

fn cred_syscall(s: &str) -> pb::CredSyscall {
    use pb::CredSyscall as S;
    match s {
        "setuid" => S::Setuid,
        "setgid" => S::Setgid,
        "setreuid" => S::Setreuid,
        "setregid" => S::Setregid,
        "setresuid" => S::Setresuid,
        "setresgid" => S::Setresgid,
        "setfsuid" => S::Setfsuid,
        "setfsgid" => S::Setfsgid,
        "setgroups" => S::Setgroups,
        "capset" => S::Capset,
        _ => S::Unspecified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_open_with_identity_and_credential() {
        let mut ev = event::Event::new("file.open", "2026-11-22T10:00:00.5Z".into(), 42);
        let mut p =
            event::Process::for_tests("/kubepods/podx", 7, 1000, Some("app"), Some("/bin/cat"));
        p.cap_effective = "0x0000000000000400".into();
        p.exe_b64 = Some("L2Jpbi9jYXQ=".into());
        ev.process = Some(p);
        ev.file = Some(event::File {
            path: Some("/run/secrets/tok\u{fffd}".into()),
            path_b64: Some("L3J1bi9zZWNyZXRzL3Rva/8=".into()),
            dev: Some("0:42".into()),
            ino: Some(9),
            mode: Some("0100600".into()),
            access: Some("read"),
            fd: Some(3),
            matched: Some(vec!["prefix", "name"]),
            ..Default::default()
        });
        let pe = to_proto(&ev);
        assert_eq!(pe.kind(), pb::EventKind::FileOpen);
        assert_eq!(pe.time.unwrap().nanos, 500_000_000);
        let proc_ = pe.process.unwrap();
        assert_eq!(proc_.cap_effective, 0x400);
        assert_eq!(proc_.exe.unwrap().raw, b"/bin/cat");
        let Some(pb::event::Payload::FileOpen(f)) = pe.payload else {
            panic!("file_open payload")
        };
        assert_eq!(f.path.unwrap().raw, b"/run/secrets/tok\xff");
        assert_eq!(f.mode, Some(0o100600));
        assert_eq!(f.dev.unwrap().minor, 42);
        assert_eq!(f.fd, Some(3));
        assert!(f.path_resolved);
        assert_eq!(f.matched, vec![1, 2]);
    }

    #[test]
    fn every_documented_kind_has_an_enum_value() {
        for k in [
            "process.exec",
            "process.fork",
            "process.exit",
            "process.cred_change",
            "file.open",
            "file.close",
            "file.read",
            "network.connect",
            "network.connect_result",
            "network.udp_send",
            "network.accept",
            "network.unix_connect",
            "sensor.stats",
            "sensor.loss",
        ] {
            assert_ne!(kind(k), pb::EventKind::Unspecified, "{k}");
        }
    }
}
