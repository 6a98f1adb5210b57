//! Events as OCSF: one [`nhi_proto::v1::Event`] → one OCSF 1.8.0 event (JSON), for the
//! collector's SIEM-facing output.
//!
//! | nhi kind                | OCSF class (uid)            | activity (id)                       |
//! |-------------------------|-----------------------------|-------------------------------------|
//! | `process.exec`          | Process Activity (1007)     | Launch (1), `launch_type_id` Exec 3 |
//! | `process.fork`          | Process Activity (1007)     | Launch (1), `launch_type_id` Fork 2 |
//! | `process.exit`          | Process Activity (1007)     | Terminate (2)                       |
//! | `process.cred_change`   | Process Activity (1007)     | Set User ID (5); others Other (99)  |
//! | `file.open`             | File System Activity (1001) | Open (14)                           |
//! | `file.read`             | File System Activity (1001) | Read (2)                            |
//! | `file.close`            | File System Activity (1001) | Other (99) "Close": OCSF has none   |
//! | `network.connect`, `.connect_result`, `.accept` | Network Activity (4001) | Open (1)    |
//! | `network.udp_send`      | Network Activity (4001)     | Traffic (6)                         |
//! | `network.unix_connect`  | Network Activity (4001)     | Open (1), `dst_endpoint.name` = path |
//! | `network.dns`           | DNS Activity (4003)         | Response (2), `query`, `answers`, `rcode_id`; no actor |
//! | `sensor.stats`          | Event Log Activity (1008)   | Other (99) "Stats"; final: Stop (7) |
//! | `sensor.loss`           | Event Log Activity (1008)   | Other (99) "Events Lost"            |
//! | unknown kind            | Base Event (0)              | Other (99)                          |
//!
//! Status: Success, except failed opens and connects (Failure; `status_code` = errno number,
//! `status_detail` = its name, or the result: "refused", "timed_out"), pending connects (Other,
//! "Pending"; the `connect_result` with the same `connection_info.uid`, the socket cookie,
//! follows) and loss records (Failure, Medium severity). A connect keeps activity Open whatever
//! its outcome, so that one connection's events share their activity.
//!
//! Who did what to what:
//!
//! * `process` is the target of a Process Activity: the new program (exec), the child (fork: a
//!   copy of the parent, same image, command line and credentials), the exiting process, the
//!   process with its new credentials. `actor.process` is the parent for a fork, a reference
//!   (pid before the exec, key) to the process itself for exec, exit and cred_change. For file
//!   and network events the acting process is `actor.process`, in full.
//! * A process: `uid` = the nhi process key, `pid`, `name` = comm, `file`/`path` = exe,
//!   `cmd_line` = argv joined by spaces, `created_time`, `parent_process`, `ancestry`, `user` =
//!   its Unix account (real uid), `group`, `euid`, `egid`, `auid` (loginuid), `session`
//!   (sessionid, tty; also `actor.session`). tid, saved and fs ids, capabilities, cgroup and
//!   namespaces have no OCSF attribute: `process.xattributes`.
//! * Workload → `process.container`: `uid`, `name`, `image`, `runtime`, `pod_uuid`,
//!   `orchestrator` "Kubernetes", and `tags` for the pod name, namespace, QoS class and the
//!   outer (kind) container. systemd units and sessions have no OCSF home: `unmapped.workload`.
//! * Identity, the non-human identity the process acts as → `actor.user`: `name` = canonical
//!   id ("system:serviceaccount:NS:SA", "unit:NAME", "unix:USER"), `uid` = the service account
//!   UID if known (else the name), `uid_alt` = SPIFFE id, `domain` = namespace, `type_id` =
//!   Service (4), `account.type` = the identity kind; token issuer → `actor.idp.issuer`;
//!   selectors, token claims and errors → `unmapped.identity`. The Unix account stays in
//!   `process.user`: both "which identity" and "which uid" are answered.
//! * Credentials → `actor.user.programmatic_credentials`: the credential opened in this event
//!   (`uid` = keyed fingerprint, `type` = catalogue kind), the key ids among its identifiers
//!   (`uid` = access key id, `kid`, `jti`, serial, ...; `type` = the identifier's name), and on
//!   exec the credential-carrying environment variables (`uid` = fingerprint, `type` =
//!   "env:NAME"). No secret material: the event has none. The full description (kind,
//!   format, identifiers, ages, ...) → `unmapped.credential`; size, owner, mtime → `file`.
//! * Paths that are not UTF-8: lossy text in `path`/`name`, the exact bytes base64-coded in
//!   the same file object's `xattributes.path_b64` (`unmapped.unix.path_b64` for sockets).
//! * `unmapped.<key>`, named after the sensor's JSON keys (`file`, `network`, `unix`, `exec`,
//!   `exit`, `cred_change`, `stats`, `loss`), holds what has no OCSF attribute: bytes read
//!   (`unmapped.file.bytes_read`, `reads`), fds, watch-rule matches, the sensor's counters and
//!   the lost sequence range (`unmapped.loss`, also spelled out in `message`).
//!
//! Sensor records are Event Log Activity: the sensor is the event source (`log_provider`
//! "nhi-sensor", `log_name` = its stream id) reporting on its own health and losses.
//!
//! Common to all: `metadata.uid` = "SENSOR_ID:STREAM_ID:SEQUENCE" (stable across redelivery:
//! the dedup key), `metadata.sequence`, `metadata.event_code` = the nhi kind, `metadata.product`
//! (nhi-sensor and its version), `time` (epoch ms; 0 when the event has none) and `time_dt`
//! (RFC 3339, ns), `device` (`hostname` = node name, `uid` = sensor id, `boot_uid` = boot id).
//! Empty and unknown values are left out rather than sent as "" or null. The events declare,
//! and validate against, the profiles `container`, `datetime`, `host` (for `actor` and
//! `device` in Network Activity) and `linux/linux_users` (`euid`, `egid`, `auid`, `group`).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use nhi_proto::v1::{self as pb, EventKind as K, event::Payload};
use serde_json::{Map, Value, json};

/// OCSF schema version the output targets.
pub const OCSF_VERSION: &str = "1.8.0";

/// Profiles whose attributes the output uses (`metadata.profiles`).
const PROFILES: [&str; 4] = ["container", "datetime", "host", "linux/linux_users"];

/// "SENSOR_ID:STREAM_ID:SEQUENCE"
pub fn event_uid(ev: &pb::Event) -> String {
    let s = ev.sensor.as_ref();
    let (sensor, stream) = s.map_or(("", ""), |s| (&*s.sensor_id, &*s.stream_id));
    format!("{sensor}:{stream}:{}", ev.sequence)
}

/// An OCSF class: uid, caption, category uid and caption.
type Class = (u32, &'static str, u32, &'static str);
const PROCESS_ACTIVITY: Class = (1007, "Process Activity", 1, "System Activity");
const FILE_ACTIVITY: Class = (1001, "File System Activity", 1, "System Activity");
const NETWORK_ACTIVITY: Class = (4001, "Network Activity", 4, "Network Activity");
const DNS_ACTIVITY: Class = (4003, "DNS Activity", 4, "Network Activity");
const EVENT_LOG_ACTIVITY: Class = (1008, "Event Log Activity", 1, "System Activity");
const BASE_EVENT: Class = (0, "Base Event", 0, "Uncategorized");
const DETECTION_FINDING: Class = (2004, "Detection Finding", 2, "Findings");

/// The `activity_id` (and `status_id`) "Other": `activity_name` (`status`) says what it is.
const OTHER: u32 = 99;

/// A kind-specific mapping: class, `activity_id`, `activity_name` and the class-specific
/// attributes (an object; its `status*`, `severity*` and `message` override the defaults).
type Mapped = (Class, u32, &'static str, Value);

/// `status_id`, `status`, `status_code`, `status_detail`.
type Status = (u32, &'static str, Option<String>, Option<String>);
const SUCCESS: Status = (1, "Success", None, None);

/// Sets the `status*` attributes of a mapping's attributes.
fn with_status(mut o: Value, (id, name, code, detail): Status) -> Value {
    (o["status_id"], o["status"]) = (json!(id), json!(name));
    (o["status_code"], o["status_detail"]) = (json!(code), json!(detail));
    o
}

/// A failed syscall: the errno number as the code, its name as the detail.
fn errno_status(e: &pb::Errno) -> Status {
    let name = Some(e.name.clone()).filter(|n| !n.is_empty());
    let detail = name.unwrap_or_else(|| format!("errno {}", e.errno));
    (2, "Failure", Some(e.errno.to_string()), Some(detail))
}

/// Maps one event to an OCSF event of the class its kind selects (see the module docs).
pub fn to_ocsf(ev: &pb::Event) -> Value {
    let kind = ev.kind();
    let p = ev.process.as_ref();
    let (class, activity_id, activity_name, mut o) = match (&ev.payload, p) {
        (Some(Payload::Exec(x)), Some(p)) if kind == K::ProcessExec => exec(ev, p, x),
        (Some(Payload::Fork(x)), Some(p)) if kind == K::ProcessFork => fork(ev, p, x),
        (Some(Payload::Exit(x)), Some(p)) if kind == K::ProcessExit => exit(ev, p, x),
        (Some(Payload::CredChange(x)), Some(p)) if kind == K::ProcessCredChange => {
            cred_change(ev, p, x)
        }
        (Some(Payload::FileOpen(x)), Some(p)) if kind == K::FileOpen => file_open(ev, p, x),
        (Some(Payload::FileClose(x)), Some(p)) if matches!(kind, K::FileClose | K::FileRead) => {
            file_close(p, x, kind)
        }
        (Some(Payload::Network(x)), Some(p)) if kind_str(ev).starts_with("network.") => {
            network(p, x, kind)
        }
        (Some(Payload::Unix(x)), Some(p)) if kind == K::NetworkUnixConnect => unix(p, x),
        (Some(Payload::Stats(x)), _) if kind == K::SensorStats => stats(ev, x),
        (Some(Payload::Loss(x)), _) if kind == K::SensorLoss => loss(ev, x),
        (Some(Payload::Finding(x)), _) if kind == K::Finding => finding(ev, x),
        (Some(Payload::Dns(x)), _) if kind == K::NetworkDns => dns(ev, x),
        _ => (
            BASE_EVENT,
            OTHER,
            "Other",
            json!({"message": "unknown kind"}),
        ),
    };
    if let Some(p) = p {
        let token = ev.identity.as_ref().and_then(|i| i.kubernetes.as_ref());
        if o["actor"].get("process").is_none() {
            o["actor"]["process"] = process(ev, p);
        }
        o["actor"]["user"] = actor_user(ev, p);
        o["actor"]["session"] = session(p);
        o["actor"]["idp"] = json!(token.map(|k| json!({"name": "kubernetes", "issuer": k.issuer})));
        o["unmapped"]["workload"] = json!(ev.workload.as_ref().map(workload_unmapped));
        o["unmapped"]["identity"] = json!(ev.identity.as_ref().map(identity_unmapped));
    }
    o["unmapped"]["credential"] = json!(ev.credential.as_ref().map(credential_unmapped));

    let (class_uid, class_name, category_uid, category_name) = class;
    let caption = if activity_id == OTHER {
        "Other"
    } else {
        activity_name
    };
    let sensor = ev.sensor.clone().unwrap_or_default();
    let version = &sensor.sensor_version;
    let product =
        json!({"name": "nhi-sensor", "vendor_name": "nhi-sensor project", "version": version});
    let wall = wall_ns(ev);
    let common = json!({
        "metadata": {
            "uid": event_uid(ev), "version": OCSF_VERSION, "product": product,
            "sequence": (ev.sequence != 0).then_some(ev.sequence), "event_code": kind_str(ev),
            "profiles": PROFILES,
        },
        "class_uid": class_uid, "class_name": class_name,
        "category_uid": category_uid, "category_name": category_name,
        "activity_id": activity_id, "activity_name": activity_name,
        "type_uid": u64::from(class_uid) * 100 + u64::from(activity_id),
        "type_name": format!("{class_name}: {caption}"),
        "severity_id": 1, "severity": "Informational", "status_id": 1, "status": "Success",
        "time": wall.map_or(0, ms), "time_dt": wall.and_then(rfc3339), "timezone_offset": 0,
        "device": device(&sensor),
    });
    if let (Some(o), Value::Object(common)) = (o.as_object_mut(), common) {
        for (k, v) in common {
            o.entry(k).or_insert(v);
        }
    }
    prune(&mut o);
    o
}

// ----- kind-specific mappers ---------------------------------------------------------------

fn exec(ev: &pb::Event, p: &pb::Process, x: &pb::Exec) -> Mapped {
    let mut target = process(ev, p);
    if !x.argv.is_empty() {
        target["cmd_line"] = json!(x.argv.join(" "));
    }
    let env = x
        .credential_env
        .iter()
        .map(|v| json!({"name": v.name, "value": v.value.as_ref().unwrap_or(&v.fingerprint)}));
    target["environment_variables"] = env.collect();
    let (filename, filename_b64) = path_parts(x.filename.as_ref());
    let o = json!({
        "launch_type_id": 3, "launch_type": "Exec", "process": target,
        // Reflexive: the caller is this process, before its image was replaced.
        "actor": {"process": {"pid": if x.old_pid != 0 { x.old_pid } else { p.pid }, "uid": p.key}},
        "message": format!("{} executed {}", label(p), path_parts(p.exe.as_ref()).0),
        "unmapped": {"exec": {
            "filename": filename, "filename_b64": filename_b64, "argv_truncated": x.argv_truncated,
            "old_pid": x.old_pid, "env_truncated": x.env_truncated,
        }},
    });
    (PROCESS_ACTIVITY, 1, "Launch", o)
}

fn fork(ev: &pb::Event, p: &pb::Process, x: &pb::Fork) -> Mapped {
    // The child starts as a copy of the parent: same image, command line and credentials.
    let parent = process(ev, p);
    let mut child = parent.clone();
    let ancestry = std::iter::once(process_ref(p.pid, &p.key, None));
    let wall = wall_ns(ev);
    child["pid"] = json!(x.child_pid);
    child["uid"] = json!(x.child_key);
    child["parent_process"] = process_ref(p.pid, &p.key, p.exe.as_ref());
    child["ancestry"] = ancestry.chain(p.ancestry.iter().map(ancestor)).collect();
    child["created_time"] = json!(wall.map(ms));
    child["created_time_dt"] = json!(wall.and_then(rfc3339));
    child["xattributes"]["tid"] = json!(x.child_pid);
    child["xattributes"]["start_ns"] = json!(ev.boot_ns);
    let o = json!({
        "launch_type_id": 2, "launch_type": "Fork", "process": child, "actor": {"process": parent},
        "message": format!("{} forked pid {}", label(p), x.child_pid),
    });
    (PROCESS_ACTIVITY, 1, "Launch", o)
}

fn exit(ev: &pb::Event, p: &pb::Process, x: &pb::Exit) -> Mapped {
    let how = match x.signal {
        0 => format!("exit code {}", x.code),
        s => format!("killed by signal {s}"),
    };
    let o = json!({
        "process": process(ev, p),
        "actor": {"process": process_ref(p.pid, &p.key, p.exe.as_ref())},
        "exit_code": (x.signal == 0).then_some(x.code),
        "status_detail": how,
        "message": format!("{} exited: {how}", label(p)),
        "unmapped": {"exit": {"status": x.status, "code": x.code, "signal": x.signal}},
    });
    (PROCESS_ACTIVITY, 2, "Terminate", o)
}

fn cred_change(ev: &pb::Event, p: &pb::Process, x: &pb::CredChange) -> Mapped {
    use pb::CredSyscall as S;
    let (id, name) = match x.syscall() {
        S::Setuid | S::Setreuid | S::Setresuid | S::Setfsuid => (5, "Set User ID"),
        S::Setgid | S::Setregid | S::Setresgid | S::Setfsgid => (OTHER, "Set Group ID"),
        S::Setgroups => (OTHER, "Set Groups"),
        S::Capset => (OTHER, "Set Capabilities"),
        S::Unspecified => (OTHER, "Change Credentials"),
    };
    let syscall = enum_str(x.syscall, "CRED_SYSCALL_", pb::CredSyscall::as_str_name);
    let creds = |c: &pb::Credentials| {
        json!({
            "uid": c.uid, "gid": c.gid, "euid": c.euid, "egid": c.egid, "suid": c.suid,
            "sgid": c.sgid, "fsuid": c.fsuid, "fsgid": c.fsgid,
            "cap_effective": hex(c.cap_effective),
        })
    };
    let (old, new) = (x.old.as_ref().map(creds), x.new.as_ref().map(creds));
    let o = json!({
        "process": process(ev, p),
        "actor": {"process": process_ref(p.pid, &p.key, p.exe.as_ref())},
        "message": format!("{} changed credentials ({syscall})", label(p)),
        "unmapped": {"cred_change": {"syscall": syscall, "old": old, "new": new}},
    });
    (PROCESS_ACTIVITY, id, name, o)
}

fn file_open(ev: &pb::Event, p: &pb::Process, x: &pb::FileOpen) -> Mapped {
    let cred = ev.credential.clone().unwrap_or_default();
    let mut f = file(x.path.as_ref(), x.dev.as_ref(), x.ino);
    let (type_id, type_name) = file_type(x.mode, cred.file_type.as_deref().unwrap_or_default());
    let mtime = cred
        .mtime
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok());
    let mtime = mtime.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
    let mtime = mtime.map(|d| i128::try_from(d.as_nanos()).unwrap_or_default());
    (f["type_id"], f["type"]) = (json!(type_id), json!(type_name));
    f["xattributes"]["mode"] = json!(x.mode.map(|m| format!("{m:07o}")));
    f["size"] = json!(cred.size);
    f["owner"] = json!(cred.owner_uid.map(|u| json!({"uid": u.to_string()})));
    f["modified_time"] = json!(mtime.map(ms));
    f["modified_time_dt"] = json!(mtime.and_then(rfc3339));
    let matched = x.matched.iter();
    let matched: Vec<_> = matched
        .map(|m| enum_str(*m, "FILE_MATCH_", pb::FileMatch::as_str_name))
        .collect();
    let (path, _) = path_parts(x.path.as_ref());
    let status = x.error.as_ref().map_or(SUCCESS, errno_status);
    let message = match &status.3 {
        None => format!("{} opened {path}", label(p)),
        Some(why) => format!("{} failed to open {path}: {why}", label(p)),
    };
    let mut o = json!({
        "file": f, "access_mask": x.flags, "message": message,
        "unmapped": {"file": {
            "fd": x.fd, "flags": x.flags, "matched": matched,
            "access": enum_str(x.access, "FILE_ACCESS_", pb::FileAccess::as_str_name),
            "path_truncated": x.path_truncated, "path_resolved": x.path_resolved,
            "path_requested": x.path_requested,
        }},
    });
    if let Some(n) = x.repeats {
        o["unmapped"]["file"]["repeats"] = json!(n);
    }
    (FILE_ACTIVITY, 14, "Open", with_status(o, status))
}

fn file_close(p: &pb::Process, x: &pb::FileClose, kind: K) -> Mapped {
    let (path, _) = path_parts(x.path.as_ref());
    let (n, reads) = (x.bytes_read, x.reads);
    let o = json!({
        "file": file(x.path.as_ref(), x.dev.as_ref(), x.ino),
        "message": format!("{} read {n} bytes of {path} in {reads} reads", label(p)),
        "unmapped": {"file": {
            "fd": x.fd, "bytes_read": n, "reads": reads,
            "reason": enum_str(x.reason, "CLOSE_REASON_", pb::CloseReason::as_str_name),
        }},
    });
    match kind {
        K::FileRead => (FILE_ACTIVITY, 2, "Read", o),
        _ => (FILE_ACTIVITY, OTHER, "Close", o),
    }
}

/// A DNS response a local socket received: `src_endpoint` is the local client (the side that
/// asked), `dst_endpoint` the resolver. No actor: it was captured in softirq context; the
/// receiving cgroup's workload is in `unmapped.workload`.
fn dns(ev: &pb::Event, x: &pb::Dns) -> Mapped {
    let rcode_id = match x.rcode.as_str() {
        "NOERROR" => 0,
        "FORMERR" => 1,
        "SERVFAIL" => 2,
        "NXDOMAIN" => 3,
        "NOTIMP" => 4,
        "REFUSED" => 5,
        _ => OTHER,
    };
    let v6 = x.resolver.as_ref().is_some_and(|r| ip(&r.ip).contains(':'));
    let answers: Vec<Value> = x
        .answers
        .iter()
        .map(|a| json!({"rdata": a.data, "type": a.r#type, "ttl": a.ttl, "class": "IN", "packet_uid": x.id}))
        .collect();
    let o = json!({
        "query": {"hostname": x.query, "type": x.query_type, "class": "IN", "packet_uid": x.id},
        "answers": answers,
        "rcode_id": rcode_id, "rcode": x.rcode,
        "src_endpoint": endpoint(x.client.as_ref()),
        "dst_endpoint": endpoint(x.resolver.as_ref()),
        "connection_info": {
            "direction_id": 2, "direction": "Outbound", "protocol_name": "udp",
            "protocol_num": 17, "protocol_ver_id": if v6 { 6 } else { 4 },
        },
        "message": format!("DNS {} {}: {} ({} answers)", x.query_type, x.query, x.rcode, x.answers.len()),
        "unmapped": {
            "dns": {"cgroup_id": x.cgroup_id, "truncated": x.truncated},
            "workload": ev.workload.as_ref().map(workload_unmapped),
        },
    });
    (DNS_ACTIVITY, 2, "Response", o)
}

fn network(p: &pb::Process, x: &pb::Network, kind: K) -> Mapped {
    use pb::{AddressFamily as F, Direction as D, NetworkProtocol as P, NetworkResult as R};
    let result = enum_str(x.result, "NETWORK_RESULT_", pb::NetworkResult::as_str_name);
    let status = match (x.result(), &x.error) {
        (R::Established | R::Connected | R::Sent | R::Accepted, _) => SUCCESS,
        (R::Pending, _) => (OTHER, "Pending", None, None),
        (R::Unspecified, None) => (0, "Unknown", None, None),
        (_, Some(e)) => errno_status(e),
        (_, None) => (2, "Failure", None, Some(result.clone())),
    };
    let (dir_id, dir) = match x.direction() {
        D::Outbound => (2, "Outbound"),
        D::Inbound => (1, "Inbound"),
        D::Unspecified => (0, "Unknown"),
    };
    let (proto, proto_num) = match x.protocol() {
        P::Tcp => ("tcp", Some(6)),
        P::Udp => ("udp", Some(17)),
        P::Unspecified => ("", None),
    };
    let ip_version = match x.family() {
        _ if x.v4_mapped => 4,
        F::Ipv4 => 4,
        F::Ipv6 => 6,
        F::Unspecified => 0,
    };
    let mut dst = endpoint(x.dst.as_ref());
    if dst.is_object() {
        dst["svc_name"] = json!(x.endpoint.as_ref().map(service_name));
        dst["hostname"] = json!(x.dst_dns_names.first());
    }
    let peer = |a: &Option<pb::SocketAddress>| {
        a.as_ref()
            .map_or("?".into(), |a| format!("{}:{}", ip(&a.ip), a.port))
    };
    let message = match x.direction() {
        D::Inbound => format!("{} accepted {proto} from {}", label(p), peer(&x.src)),
        _ => format!("{} {proto} to {}", label(p), peer(&x.dst)),
    };
    let o = json!({
        "src_endpoint": endpoint(x.src.as_ref()),
        "dst_endpoint": dst,
        "connection_info": {
            "uid": (x.cookie != 0).then(|| x.cookie.to_string()),
            "direction_id": dir_id, "direction": dir, "protocol_name": proto,
            "protocol_num": proto_num, "protocol_ver_id": ip_version,
        },
        "is_src_dst_assignment_known": dir_id != 0,
        "message": format!("{message}: {result}"),
        "unmapped": {"network": {
            "result": result, "v4_mapped": x.v4_mapped, "cookie": x.cookie,
            "family": enum_str(x.family, "ADDRESS_FAMILY_", pb::AddressFamily::as_str_name),
            "error": x.error.as_ref().map(|e| json!({"errno": e.errno, "name": e.name})),
            "endpoint": x.endpoint.as_ref().map(|e| json!({"kind": e.kind, "service": e.service})),
            "dst_dns_names": x.dst_dns_names,
        }},
    });
    match kind {
        K::NetworkUdpSend => (NETWORK_ACTIVITY, 6, "Traffic", with_status(o, status)),
        _ => (NETWORK_ACTIVITY, 1, "Open", with_status(o, status)),
    }
}

fn unix(p: &pb::Process, x: &pb::UnixConnect) -> Mapped {
    let status = match (x.result.as_str(), &x.error) {
        ("connected", _) => SUCCESS,
        (_, Some(e)) => errno_status(e),
        ("refused" | "failed", None) => (2, "Failure", None, Some(x.result.clone())),
        _ => (0, "Unknown", None, None),
    };
    let (path, path_b64) = path_parts(x.path.as_ref());
    let o = json!({
        "dst_endpoint": {
            "name": or_unknown(&path), "svc_name": x.endpoint.as_ref().map(service_name),
        },
        "connection_info": {
            "direction_id": 4, "direction": "Local", "boundary_id": 1, "boundary": "Localhost",
            "protocol_name": "unix",
        },
        "message": format!("{} connected to unix socket {path}: {}", label(p), x.result),
        "unmapped": {"unix": {
            "path": path, "path_b64": path_b64, "abstract": x.r#abstract, "result": x.result,
            "error": x.error.as_ref().map(|e| json!({"errno": e.errno, "name": e.name})),
            "endpoint": x.endpoint.as_ref().map(|e| json!({"kind": e.kind, "service": e.service})),
        }},
    });
    (NETWORK_ACTIVITY, 1, "Open", with_status(o, status))
}

fn stats(ev: &pb::Event, x: &pb::SensorStats) -> Mapped {
    let (k, s) = (x.kernel.unwrap_or_default(), x.spool);
    let spool = s.map(|s| {
        json!({
            "bytes": s.bytes, "unacked": s.unacked, "acked": s.acked, "evicted": s.evicted,
            "corrupt": s.corrupt,
        })
    });
    let lost = x.kernel_drops + x.decode_errors;
    let mut o = log_source(ev);
    let message = format!("sensor stats: {} events decoded, {lost} lost", x.decoded);
    o["message"] = json!(message);
    o["unmapped"] = json!({"stats": {
        "kernel": {
            "ringbuf_full": k.ringbuf_full, "no_scratch": k.no_scratch, "map_full": k.map_full,
            "read_error": k.read_error, "emitted": k.emitted, "opens_seen": k.opens_seen,
            "opens_matched": k.opens_matched, "paths_truncated": k.paths_truncated,
            "udp_deduped": k.udp_deduped, "opens_deduped": k.opens_deduped,
        },
        "kernel_drops": x.kernel_drops, "decoded": x.decoded, "decode_errors": x.decode_errors,
        "final": x.r#final, "filtered_in_userspace": x.filtered_in_userspace,
        "orphan_results": x.orphan_results, "processes_tracked": x.processes_tracked,
        "dns_malformed": x.dns_malformed, "dns_cache_evicted": x.dns_cache_evicted,
        "spool": spool,
    }});
    match x.r#final {
        true => (EVENT_LOG_ACTIVITY, 7, "Stop", o),
        false => (EVENT_LOG_ACTIVITY, OTHER, "Stats", o),
    }
}

fn loss(ev: &pb::Event, x: &pb::Loss) -> Mapped {
    let reason = enum_str(x.reason, "LOSS_REASON_", pb::LossReason::as_str_name);
    let stream = ev.sensor.as_ref().map_or("", |s| &*s.stream_id);
    let (n, first, last) = (x.count, x.first_sequence, x.last_sequence);
    let message = match x.reason() {
        pb::LossReason::SubscriberLagged => {
            format!("{n} events skipped for this subscriber (still stored by the collector)")
        }
        _ => format!("{n} events lost: sequence {first} to {last} of stream {stream}"),
    };
    let mut o = log_source(ev);
    (o["severity_id"], o["severity"], o["message"]) = (json!(3), json!("Medium"), json!(message));
    o["unmapped"] = json!({"loss": {
        "reason": reason, "first_sequence": first, "last_sequence": last, "count": n,
    }});
    let detail = format!("{message} ({reason})");
    let o = with_status(o, (2, "Failure", Some(reason), Some(detail)));
    (EVENT_LOG_ACTIVITY, OTHER, "Events Lost", o)
}

/// A detection rule fired: Detection Finding (2004), activity Create. The rule is the
/// analytic; its MITRE technique the attack; OWASP NHI ids go to `finding_info.types`; each
/// piece of evidence becomes an `evidences` entry (its summary in `data`, plus the file or
/// destination it names).
fn finding(ev: &pb::Event, f: &pb::Finding) -> Mapped {
    let (severity_id, severity) = match f.severity.as_str() {
        "low" => (2, "Low"),
        "medium" => (3, "Medium"),
        "high" => (4, "High"),
        "critical" => (5, "Critical"),
        _ => (0, "Unknown"),
    };
    let (technique, sub) = match f.mitre_technique_id.split_once('.') {
        Some((t, _)) => (t, Some(&f.mitre_technique_id)),
        None => (f.mitre_technique_id.as_str(), None),
    };
    let (technique_name, sub_name) = match f.mitre_technique.split_once(": ") {
        Some((t, s)) if sub.is_some() => (t, Some(s)),
        _ => (f.mitre_technique.as_str(), None),
    };
    let mut attack = json!({"technique": {"uid": technique, "name": technique_name}});
    if let (Some(uid), Some(name)) = (sub, sub_name) {
        attack["sub_technique"] = json!({"uid": uid, "name": name});
    }
    let evidences: Vec<Value> = f
        .evidence
        .iter()
        .map(|e| {
            let mut x = json!({"data": {
                "kind": e.kind, "time": (!e.time.is_empty()).then_some(&e.time), "pid": e.pid,
                "process_key": e.process_key, "exe": e.exe, "credential_kind": e.credential_kind,
                "fingerprint": e.fingerprint, "workload_key": e.workload_key, "detail": e.detail,
            }});
            if let Some(path) = &e.path {
                let name = path.rsplit('/').next().unwrap_or(path);
                x["file"] =
                    json!({"name": name, "path": path, "type_id": 1, "type": "Regular File"});
            }
            if let Some((ip, port)) = e.destination.as_deref().and_then(split_endpoint) {
                x["dst_endpoint"] = json!({"ip": ip, "port": port});
            }
            x
        })
        .collect();
    let o = json!({
        "message": f.summary,
        "severity_id": severity_id, "severity": severity,
        "status_id": 1, "status": "New",
        "is_alert": true,
        "finding_info": {
            "uid": event_uid(ev), "title": f.title, "desc": f.summary,
            "types": f.owasp,
            "analytic": {"uid": f.rule_id, "name": f.title, "type_id": 1, "type": "Rule"},
            "attacks": [attack],
        },
        "evidences": evidences,
        "unmapped": {"finding": {"rule_id": f.rule_id, "owasp_nhi": f.owasp, "workload_key": f.workload_key}},
    });
    (DETECTION_FINDING, 1, "Create", o)
}

/// `ip:port` or `[v6]:port` → (ip, port).
fn split_endpoint(s: &str) -> Option<(String, u16)> {
    let (ip, port) = s.rsplit_once(':')?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    Some((ip.to_string(), port.parse().ok()?))
}

/// Event Log Activity's "which log": the sensor's event stream.
fn log_source(ev: &pb::Event) -> Value {
    let stream = ev.sensor.as_ref().map(|s| &s.stream_id);
    json!({
        "log_provider": "nhi-sensor", "log_name": stream,
        "log_type": "Application", "log_type_id": 2,
    })
}

// ----- objects -----------------------------------------------------------------------------

fn device(s: &pb::SensorIdentity) -> Value {
    let unnamed = s.node_name.is_empty() && s.sensor_id.is_empty();
    json!({
        "hostname": s.node_name, "uid": s.sensor_id, "boot_uid": s.boot_id,
        "name": unnamed.then_some("unknown"), "type_id": 0, "type": "Unknown",
        "os": {"name": "Linux", "type_id": 200, "type": "Linux"},
    })
}

/// The OCSF process object of an nhi process, in full.
fn process(ev: &pb::Event, p: &pb::Process) -> Value {
    let start = boot_to_wall(ev, p.start_ns);
    let parent = p.ancestry.first().filter(|a| a.key == p.parent_key);
    let ns = p.ns.unwrap_or_default();
    json!({
        "pid": p.pid, "uid": p.key, "name": p.comm,
        "cmd_line": p.argv.as_ref().map(|a| a.values.join(" ")),
        "file": p.exe.as_ref().map(|e| executable(Some(e))),
        "path": path_parts(p.exe.as_ref()).0,
        "created_time": start.map(ms), "created_time_dt": start.and_then(rfc3339),
        "user": unix_user(p.uid, p.user.as_deref()),
        "group": {"uid": p.gid.to_string()},
        "euid": p.euid, "egid": p.egid, "auid": p.loginuid,
        "session": session(p),
        "parent_process": process_ref(p.ppid, &p.parent_key, parent.and_then(|a| a.exe.as_ref())),
        "ancestry": p.ancestry.iter().map(ancestor).collect::<Vec<_>>(),
        "container": ev.workload.as_ref().and_then(container),
        "xattributes": {
            "tid": p.tid, "start_ns": p.start_ns,
            "suid": p.suid, "sgid": p.sgid, "fsuid": p.fsuid, "fsgid": p.fsgid,
            "cap_effective": hex(p.cap_effective), "cap_permitted": hex(p.cap_permitted),
            "cgroup": p.cgroup, "cgroup_id": p.cgroup_id,
            "ns": {
                "pid": ns.pid, "mnt": ns.mnt, "net": ns.net, "user": ns.user, "uts": ns.uts,
                "ipc": ns.ipc, "cgroup": ns.cgroup,
            },
        },
    })
}

/// A process known by its pid, key and perhaps its executable.
fn process_ref(pid: u32, key: &str, exe: Option<&pb::FilePath>) -> Value {
    let file = exe.map(|e| executable(Some(e)));
    json!({"pid": pid, "uid": key, "file": file, "path": path_parts(exe).0})
}

fn ancestor(a: &pb::Ancestor) -> Value {
    json!({"pid": a.pid, "uid": a.key, "path": path_parts(a.exe.as_ref()).0})
}

fn unix_user(uid: u32, name: Option<&str>) -> Value {
    json!({"uid": uid.to_string(), "name": name})
}

fn session(p: &pb::Process) -> Value {
    json!({"uid": p.sessionid.map(|s| s.to_string()), "terminal": p.tty})
}

/// `actor.user`: the non-human identity (else the Unix account), with the credentials this
/// event shows it holding.
fn actor_user(ev: &pb::Event, p: &pb::Process) -> Value {
    use pb::IdentityKind as I;
    let mut user = match ev.identity.as_ref().filter(|i| !i.id.is_empty()) {
        None => unix_user(p.uid, p.user.as_deref()),
        Some(id) => {
            let (account_type_id, account_type) = match id.kind() {
                I::UnixUser => (9, "Linux Account"),
                I::KubernetesServiceAccount => (OTHER, "Kubernetes Service Account"),
                I::Spiffe => (OTHER, "SPIFFE ID"),
                I::SystemdUnit => (OTHER, "systemd Unit"),
                I::SystemdUserUnit => (OTHER, "systemd User Unit"),
                I::KubernetesPod => (OTHER, "Kubernetes Pod"),
                I::Container => (OTHER, "Container"),
                I::Unspecified => (0, "Unknown"),
            };
            let k8s = id.kubernetes.as_ref();
            let sa_uid = k8s.map_or("", |k| &*k.service_account_uid);
            let (sa, known) = (&id.service_account, account_type_id != 0);
            json!({
                "name": id.id, "uid": if sa_uid.is_empty() { &*id.id } else { sa_uid },
                "uid_alt": id.spiffe_id, "domain": id.namespace,
                "type_id": if known { 4 } else { 0 },
                "type": if known { "Service" } else { "Unknown" },
                "account": {
                    "type_id": account_type_id, "type": account_type, "uid": sa_uid,
                    "name": if sa.is_empty() { &id.id } else { sa },
                },
            })
        }
    };
    let mut creds = Vec::new();
    if let Some(c) = &ev.credential {
        creds.push(json!({"uid": c.fingerprint, "type": c.kind}));
        key_ids(&Value::Object(identifiers(c)), 0, &mut creds);
    }
    if let Some(Payload::Exec(x)) = &ev.payload {
        let env = x.credential_env.iter();
        creds.extend(env.map(|v| json!({"uid": v.fingerprint, "type": format!("env:{}", v.name)})));
    }
    creds.retain(|c| c["uid"].as_str().is_some_and(|u| !u.is_empty()));
    creds.sort_by(|a, b| a["uid"].as_str().cmp(&b["uid"].as_str()));
    creds.dedup_by(|a, b| a["uid"] == b["uid"]);
    user["programmatic_credentials"] = json!(creds);
    user
}

/// Identifier names whose values identify a credential without being secret.
const KEY_ID_NAMES: &str =
    "access_key_id private_key_id kid jti serial public_key_fingerprint client_id";

/// Collects the key ids found (at depth < 4) in a credential's identifiers.
fn key_ids(v: &Value, depth: usize, out: &mut Vec<Value>) {
    match v {
        Value::Object(m) if depth < 4 => m.iter().for_each(|(k, v)| match v.as_str() {
            Some(s) if KEY_ID_NAMES.split(' ').any(|n| n == k) => {
                out.push(json!({"uid": s, "type": k}))
            }
            _ => key_ids(v, depth + 1, out),
        }),
        Value::Array(a) if depth < 4 => a.iter().for_each(|v| key_ids(v, depth + 1, out)),
        _ => {}
    }
}

fn container(w: &pb::Workload) -> Option<Value> {
    if w.container_id.is_empty() && w.container_name.is_empty() {
        return None;
    }
    let tags: [(&str, &str); 6] = [
        ("kubernetes.pod_name", &w.pod_name),
        ("kubernetes.namespace", &w.namespace),
        ("kubernetes.qos_class", &w.qos),
        ("outer_container.uid", &w.outer_container_id),
        ("outer_container.runtime", &w.outer_container_runtime),
        ("rootless", if w.rootless { "true" } else { "" }),
    ];
    let tags = tags.into_iter().filter(|(_, v)| !v.is_empty());
    let k8s = w.kind() == pb::WorkloadKind::KubernetesPod;
    Some(json!({
        "uid": w.container_id, "name": w.container_name,
        // OCSF requires an image uid; the reference (which may pin a digest) is all we have.
        "image": (!w.image.is_empty()).then(|| json!({"name": w.image, "uid": w.image})),
        "runtime": w.runtime, "orchestrator": k8s.then_some("Kubernetes"), "pod_uuid": w.pod_uid,
        "tags": tags.map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
    }))
}

/// What `process.container` does not hold: the workload kind, systemd unit and session, and
/// the pod of a process without a container id.
fn workload_unmapped(w: &pb::Workload) -> Value {
    use pb::WorkloadKind as W;
    let kind = match w.kind() {
        W::Unspecified => "unknown",
        W::Host => "host",
        W::SystemdUnit => "systemd",
        W::Container => "container",
        W::KubernetesPod => "kubernetes",
    };
    let pod = container(w).is_none();
    json!({
        "kind": kind, "unit": w.unit, "unit_scope": w.unit_scope, "session": w.session,
        "slice_uid": w.slice_uid, "pod_uid": pod.then_some(&w.pod_uid),
        "pod_name": pod.then_some(&w.pod_name), "namespace": pod.then_some(&w.namespace),
    })
}

fn identity_unmapped(i: &pb::Identity) -> Value {
    let k8s = i.kubernetes.as_ref().map(|k| {
        json!({
            "service_account_uid": k.service_account_uid, "pod_name": k.pod_name,
            "pod_uid": k.pod_uid, "node_name": k.node_name, "issuer": k.issuer, "iat": k.iat,
            "exp": k.exp, "warnafter": k.warnafter, "legacy": k.legacy, "token_path": k.token_path,
        })
    });
    json!({
        "kind": enum_str(i.kind, "IDENTITY_KIND_", pb::IdentityKind::as_str_name),
        "selectors": i.selectors, "error": i.error, "kubernetes": k8s,
    })
}

fn credential_unmapped(c: &pb::Credential) -> Value {
    json!({
        "kind": c.kind, "format": c.format, "fingerprint": c.fingerprint,
        "identifiers": identifiers(c), "size": c.size, "mtime": c.mtime, "age_s": c.age_s,
        "issued_at": c.issued_at, "issued_age_s": c.issued_age_s, "owner_uid": c.owner_uid,
        "owner_gid": c.owner_gid, "mode": c.mode, "world_readable": c.world_readable,
        "file_type": c.file_type, "error": c.error,
    })
}

/// A credential's identifiers as JSON (their values are JSON text; one that is not stays a
/// string).
pub(super) fn identifiers(c: &pb::Credential) -> Map<String, Value> {
    let parse = |v: &str| serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.into()));
    let ids = c.identifiers.iter();
    ids.map(|(k, v)| (k.clone(), parse(v))).collect()
}

/// A file object; `uid` is "major:minor:inode", the file's identity on this host.
fn file(path: Option<&pb::FilePath>, dev: Option<&pb::Device>, ino: u64) -> Value {
    let (text, b64) = path_parts(path);
    json!({
        "name": or_unknown(text.rsplit('/').next().unwrap_or_default()), "path": text,
        "uid": dev.map(|d| format!("{}:{}:{ino}", d.major, d.minor)),
        "type_id": 0, "type": "Unknown", "xattributes": {"path_b64": b64},
    })
}

fn executable(path: Option<&pb::FilePath>) -> Value {
    let mut f = file(path, None, 0);
    (f["type_id"], f["type"]) = (json!(1), json!("Regular File"));
    f
}

/// st_mode type bits, the sensor's `file_type` name, OCSF `type_id` and its caption.
const FILE_TYPES: [(u32, &str, u32, &str); 7] = [
    (0o100_000, "regular", 1, "Regular File"),
    (0o040_000, "directory", 2, "Folder"),
    (0o020_000, "char_device", 3, "Character Device"),
    (0o060_000, "block_device", 4, "Block Device"),
    (0o140_000, "socket", 5, "Local Socket"),
    (0o010_000, "fifo", 6, "Named Pipe"),
    (0o120_000, "symlink", 7, "Symbolic Link"),
];

fn file_type(mode: Option<u32>, name: &str) -> (u32, &'static str) {
    let t = FILE_TYPES
        .iter()
        .find(|t| mode.map_or(t.1 == name, |m| m & 0o170_000 == t.0));
    t.map_or((0, "Unknown"), |&(_, _, id, caption)| (id, caption))
}

/// Who answers at a credential endpoint: the service, else the kind of endpoint.
fn service_name(e: &pb::CredentialEndpoint) -> &str {
    if e.service.is_empty() {
        &e.kind
    } else {
        &e.service
    }
}

fn endpoint(a: Option<&pb::SocketAddress>) -> Value {
    a.map_or(
        Value::Null,
        |a| json!({"ip": ip(&a.ip), "port": (a.port <= 65535).then_some(a.port)}),
    )
}

/// IPv4-mapped IPv6 addresses ("::ffff:192.0.2.10") become the IPv4 address they carry.
fn ip(text: &str) -> String {
    match text
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .and_then(|a| a.to_ipv4_mapped())
    {
        Some(v4) => v4.to_string(),
        None => text.to_string(),
    }
}

// ----- small helpers -----------------------------------------------------------------------

/// The path as text (lossy when not UTF-8) and, only then, its exact bytes in base64.
fn path_parts(p: Option<&pb::FilePath>) -> (String, Option<String>) {
    match p {
        None => (String::new(), None),
        Some(p) if p.raw.is_empty() => (p.text.clone(), None),
        Some(p) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&p.raw);
            (String::from_utf8_lossy(&p.raw).into_owned(), Some(b64))
        }
    }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "(unknown)" } else { s }
}

fn label(p: &pb::Process) -> String {
    format!("{}[{}]", p.comm, p.pid)
}

fn hex(v: u64) -> String {
    format!("0x{v:016x}")
}

/// The sensor's JSON name of a proto enum value ("NETWORK_RESULT_TIMED_OUT" → "timed_out");
/// values this build does not know are shown as their number.
pub(super) fn enum_str<E: TryFrom<i32>>(
    v: i32,
    prefix: &str,
    as_str: fn(&E) -> &'static str,
) -> String {
    match E::try_from(v) {
        Ok(e) => as_str(&e)
            .strip_prefix(prefix)
            .unwrap_or_default()
            .to_ascii_lowercase(),
        Err(_) => v.to_string(),
    }
}

/// The sensor's dotted kind ("file.open", "network.connect_result").
fn kind_str(ev: &pb::Event) -> String {
    match ev.kind() {
        K::Unspecified => ev.kind.to_string(),
        k => enum_str(k as i32, "EVENT_KIND_", K::as_str_name).replacen('_', ".", 1),
    }
}

/// Wall-clock time of the event, in nanoseconds since the epoch.
fn wall_ns(ev: &pb::Event) -> Option<i128> {
    ev.time
        .as_ref()
        .map(|t| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos))
}

/// Wall-clock time of a boot-clock instant, through the event's own pair of clocks.
fn boot_to_wall(ev: &pb::Event, boot_ns: u64) -> Option<i128> {
    if ev.boot_ns == 0 || boot_ns == 0 || boot_ns > ev.boot_ns {
        return None;
    }
    wall_ns(ev).map(|w| w - i128::from(ev.boot_ns - boot_ns))
}

fn ms(ns: i128) -> i64 {
    i64::try_from(ns.div_euclid(1_000_000)).unwrap_or_default()
}

pub(crate) fn rfc3339(ns: i128) -> Option<String> {
    let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).ok()?);
    Some(humantime::format_rfc3339_nanos(t).to_string())
}

/// Drops null, "", [] and {} members of objects, recursively: absent stays absent.
fn prune(v: &mut Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => {
            a.iter_mut().for_each(|x| _ = prune(x));
            !a.is_empty()
        }
        Value::Object(m) => {
            m.retain(|_, x| prune(x));
            !m.is_empty()
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use pb::{CloseReason as C, Direction as D, LossReason as L, NetworkResult as R};

    use super::*;

    const TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

    fn path(text: &str) -> Option<pb::FilePath> {
        Some(pb::FilePath {
            text: text.into(),
            raw: Vec::new(),
        })
    }

    fn addr(ip: &str, port: u32) -> Option<pb::SocketAddress> {
        Some(pb::SocketAddress {
            ip: ip.into(),
            port,
        })
    }

    /// Event `seq` of a process of a Kubernetes pod running as service account prod/backup.
    fn ev(seq: u64, kind: K, payload: Payload) -> pb::Event {
        let mut p = pb::Process::default();
        (p.key, p.pid, p.tid, p.comm) = ("9a3f00c1d2e4b5a6".into(), 4242, 4243, "backup".into());
        (p.ppid, p.parent_key, p.start_ns) = (4200, "77aa00c1d2e4b5a6".into(), 5_000_000_000);
        p.exe = path("/usr/bin/backup");
        p.argv = Some(pb::StringList {
            values: vec!["backup".into(), "--all".into()],
        });
        (p.uid, p.cap_permitted, p.cgroup) = (1000, 0x1ff_ffff_ffff, Some("/kubepods/pod1".into()));
        p.ns = Some(pb::Namespaces {
            net: 4026532002,
            ..Default::default()
        });
        let sh = path("/bin/sh");
        p.ancestry = vec![pb::Ancestor {
            pid: 4200,
            key: p.parent_key.clone(),
            exe: sh,
        }];
        let mut w = pb::Workload {
            kind: 4,
            ..Default::default()
        };
        (w.container_id, w.runtime) = ("ab".repeat(32), "containerd".into());
        w.pod_uid = "1c0b7a8e-5d3f-4e21-9a6b-2f4d8c9e0a11".into();
        (w.pod_name, w.namespace) = ("backup-7d9f".into(), "prod".into());
        let mut i = pb::Identity {
            kind: 2,
            ..Default::default()
        };
        i.id = "system:serviceaccount:prod:backup".into();
        (i.namespace, i.service_account) = ("prod".into(), "backup".into());
        i.spiffe_id = "spiffe://cluster.local/ns/prod/sa/backup".into();
        i.selectors = vec!["k8s:ns:prod".into(), "k8s:sa:backup".into()];
        i.kubernetes = Some(pb::KubernetesToken {
            service_account_uid: "5e0f3a9c-1b2d-4c8e-9f7a-6b5c4d3e2f10".into(),
            issuer: "https://kubernetes.default.svc.cluster.local".into(),
            ..Default::default()
        });
        let mut s = pb::SensorIdentity::default();
        (s.sensor_id, s.node_name, s.sensor_version) =
            ("s-1".into(), "node-a".into(), "0.1.0".into());
        s.boot_id = "6f1d0c2e-7b7a-4f0e-9d57-1c3c8e9b2a10".into();
        s.stream_id = "0b8f6a52-2d0e-4f43-a1f4-8f6f3e1c9d77".into();
        let sensor_kind = matches!(kind, K::SensorStats | K::SensorLoss);
        let mut ev = pb::Event {
            sensor: Some(s),
            sequence: seq,
            kind: kind as i32,
            time: Some(Default::default()),
            boot_ns: 9_000_000_000,
            process: (!sensor_kind).then_some(p),
            workload: (!sensor_kind).then_some(w),
            identity: (!sensor_kind).then_some(i),
            credential: None,
            payload: Some(payload),
        };
        // 2025-06-15T15:06:40.123456789Z (`prost_types` is not a dependency of ours).
        let t = ev.time.as_mut().unwrap();
        (t.seconds, t.nanos) = (1_750_000_000, 123_456_789);
        ev
    }

    /// One realistic event of every kind, and the variants that matter; sequence = index + 1.
    fn samples() -> Vec<pb::Event> {
        let mut exec = pb::Exec {
            argv: vec!["backup".into(), "--all".into()],
            ..Default::default()
        };
        let fp = "hmac-sha256:5d41402abc4b2a76".to_string();
        let env = pb::CredentialVar {
            name: "AWS_SECRET_ACCESS_KEY".into(),
            fingerprint: fp,
            value: None,
        };
        exec.credential_env = vec![env];
        let fork = pb::Fork {
            child_pid: 4300,
            child_key: "00ff00c1d2e4b5a6".into(),
        };
        // A systemd service's process, killed by SIGKILL.
        let mut exit = ev(
            3,
            K::ProcessExit,
            Payload::Exit(pb::Exit {
                status: 9,
                code: 0,
                signal: 9,
            }),
        );
        exit.workload = Some(pb::Workload {
            kind: 2,
            unit: "backup.service".into(),
            ..Default::default()
        });
        exit.identity = Some(pb::Identity {
            kind: 4,
            id: "unit:backup.service".into(),
            ..Default::default()
        });
        // setresuid to root from a login session.
        let creds = |uid| {
            Some(pb::Credentials {
                uid,
                euid: uid,
                ..Default::default()
            })
        };
        let setuid = pb::CredChange {
            syscall: 5,
            old: creds(1000),
            new: creds(0),
        };
        let mut setuid = ev(4, K::ProcessCredChange, Payload::CredChange(setuid));
        let p = setuid.process.as_mut().unwrap();
        (p.uid, p.euid, p.loginuid, p.sessionid, p.tty) =
            (0, 0, Some(1001), Some(7), Some("pts/3".into()));
        // The pod's service-account token, with what the credential catalogue says about it.
        let dev = Some(pb::Device {
            major: 0,
            minor: 52,
        });
        let mut open = pb::FileOpen {
            path: path(TOKEN),
            dev,
            ino: 131_074,
            ..Default::default()
        };
        (open.mode, open.fd, open.matched) = (Some(0o100_640), Some(5), vec![1]);
        let mut token = ev(5, K::FileOpen, Payload::FileOpen(open));
        let mut c = pb::Credential {
            kind: "kubernetes_service_account_token".into(),
            ..Default::default()
        };
        (c.format, c.fingerprint) = ("jwt".into(), Some("hmac-sha256:9f86d081884c7d65".into()));
        let ids = [
            ("kid", "\"Xk3qP0abc\""),
            ("sub", "\"system:serviceaccount:prod:backup\""),
            ("exp", "1767225600"),
        ];
        c.identifiers = ids.map(|(k, v)| (k.to_string(), v.to_string())).into();
        (c.size, c.mtime, c.owner_uid) = (Some(1024), Some("2025-06-15T12:00:00Z".into()), Some(0));
        token.credential = Some(c);
        // A denied open of an SSH key, and a path that is not UTF-8.
        let mut denied = pb::FileOpen {
            path: path("/root/.ssh/id_ed25519"),
            ..Default::default()
        };
        denied.error = Some(pb::Errno {
            errno: 13,
            name: "EACCES".into(),
        });
        (denied.flags, denied.path_requested) = (0o2_000_000, Some("../.ssh/id_ed25519".into()));
        let raw = b"/home/svc/.aws/cr\xffds".to_vec();
        let odd = pb::FilePath {
            text: String::from_utf8_lossy(&raw).into(),
            raw,
        };
        let odd = pb::FileOpen {
            path: Some(odd),
            ..Default::default()
        };
        let close = |reason: C| {
            let (fd, bytes_read, reads, reason) = (5, 1024, 2, reason as i32);
            Payload::FileClose(pb::FileClose {
                path: path(TOKEN),
                fd,
                bytes_read,
                reads,
                reason,
                dev: None,
                ino: 0,
            })
        };
        // A v4-mapped connect to the cloud metadata service (pending), then its refusal.
        let mut imds = pb::Network {
            protocol: 1,
            family: 2,
            direction: 1,
            ..Default::default()
        };
        (imds.dst, imds.v4_mapped, imds.cookie) = (addr("::ffff:169.254.169.254", 80), true, 8123);
        imds.result = R::Pending as i32;
        let svc = |kind: &str, service: &str| pb::CredentialEndpoint {
            kind: kind.into(),
            service: service.into(),
        };
        imds.endpoint = Some(svc("cloud_metadata", "aws_imds"));
        let mut refused = imds.clone();
        refused.result = R::Refused as i32;
        refused.error = Some(pb::Errno {
            errno: 111,
            name: "ECONNREFUSED".into(),
        });
        let flow = |protocol, direction: D, result: R| pb::Network {
            protocol,
            family: 1,
            direction: direction as i32,
            src: addr("10.0.0.7", 40000),
            dst: addr("10.96.0.10", 53),
            result: result as i32,
            ..Default::default()
        };
        let mut unix = pb::UnixConnect {
            path: path("/run/spire/sockets/agent.sock"),
            ..Default::default()
        };
        (unix.result, unix.endpoint) = (
            "connected".into(),
            Some(svc("spiffe_workload_api", "spire_agent")),
        );
        let stats = |r#final| {
            let kernel = Some(pb::KernelStats {
                ringbuf_full: 3,
                emitted: 10_000,
                ..Default::default()
            });
            let spool = Some(pb::SpoolStats {
                acked: 9_985,
                ..Default::default()
            });
            let (kernel_drops, decoded) = (3, 9_997);
            Payload::Stats(pb::SensorStats {
                kernel,
                kernel_drops,
                decoded,
                r#final,
                spool,
                ..Default::default()
            })
        };
        let loss = |reason: L, first_sequence, last_sequence, count| {
            let reason = reason as i32;
            Payload::Loss(pb::Loss {
                reason,
                first_sequence,
                last_sequence,
                count,
            })
        };
        let mut unknown = ev(19, K::Unspecified, Payload::Fork(fork.clone()));
        unknown.kind = 42;
        vec![
            ev(1, K::ProcessExec, Payload::Exec(exec)),
            ev(2, K::ProcessFork, Payload::Fork(fork)),
            exit,
            setuid,
            token,
            ev(6, K::FileOpen, Payload::FileOpen(denied)),
            ev(7, K::FileOpen, Payload::FileOpen(odd)),
            ev(8, K::FileRead, close(C::Progress)),
            ev(9, K::FileClose, close(C::Close)),
            ev(10, K::NetworkConnect, Payload::Network(imds)),
            ev(11, K::NetworkConnectResult, Payload::Network(refused)),
            ev(
                12,
                K::NetworkAccept,
                Payload::Network(flow(1, D::Inbound, R::Accepted)),
            ),
            ev(
                13,
                K::NetworkUdpSend,
                Payload::Network(flow(2, D::Outbound, R::Sent)),
            ),
            ev(14, K::NetworkUnixConnect, Payload::Unix(unix)),
            ev(15, K::SensorStats, stats(false)),
            ev(16, K::SensorStats, stats(true)),
            ev(17, K::SensorLoss, loss(L::SpoolFull, 17, 28, 12)),
            ev(18, K::SensorLoss, loss(L::SubscriberLagged, 0, 0, 40)),
            unknown,
        ]
    }

    /// Maps the samples and checks, for each sequence number in `expected`, the values at the
    /// JSON pointers it lists (null: absent).
    fn check(expected: Value) {
        let samples = samples();
        for (seq, pointers) in expected.as_object().unwrap() {
            let o = to_ocsf(&samples[seq.parse::<usize>().unwrap() - 1]);
            for (ptr, want) in pointers.as_object().unwrap() {
                assert_eq!(
                    o.pointer(ptr).unwrap_or(&Value::Null),
                    want,
                    "{seq}: {ptr} in {o:#}"
                );
            }
        }
    }

    #[test]
    fn common_attributes() {
        for ev in samples() {
            let (o, seq) = (to_ocsf(&ev), ev.sequence);
            let (class, activity) = (o["class_uid"].as_u64(), o["activity_id"].as_u64());
            assert_eq!(
                o["type_uid"],
                class.unwrap() * 100 + activity.unwrap(),
                "{seq}"
            );
            let uid = format!("s-1:0b8f6a52-2d0e-4f43-a1f4-8f6f3e1c9d77:{seq}");
            assert_eq!(
                (o["metadata"]["uid"].as_str(), o["time"].as_i64()),
                (Some(&*uid), Some(1_750_000_000_123))
            );
            assert_eq!(o["time_dt"], "2025-06-15T15:06:40.123456789Z", "{seq}");
            assert!(
                o["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{seq}"
            );
            assert!(
                !o.to_string().contains("null") && !o.to_string().contains("\"\""),
                "{o}"
            );
        }
        check(json!({"1": {
            "/metadata/version": "1.8.0", "/metadata/sequence": 1,
            "/metadata/event_code": "process.exec", "/metadata/product/version": "0.1.0",
            "/device/hostname": "node-a", "/device/uid": "s-1",
            "/device/boot_uid": "6f1d0c2e-7b7a-4f0e-9d57-1c3c8e9b2a10", "/timezone_offset": 0,
            "/metadata/profiles": ["container", "datetime", "host", "linux/linux_users"],
        }}));
    }

    #[test]
    fn process_activity() {
        check(json!({
            "1": {
                "/class_uid": 1007, "/launch_type_id": 3, "/process/pid": 4242,
                "/process/uid": "9a3f00c1d2e4b5a6", "/process/cmd_line": "backup --all",
                "/process/file/path": "/usr/bin/backup", "/process/user/uid": "1000",
                "/process/parent_process/file/path": "/bin/sh",
                // Started at boot clock 5 s, the event is at 9 s.
                "/process/created_time": 1_750_000_000_123_i64 - 4_000,
                "/process/xattributes/cap_permitted": "0x000001ffffffffff",
                "/process/xattributes/ns/net": 4026532002_u32,
                "/process/environment_variables/0/value": "hmac-sha256:5d41402abc4b2a76",
                "/process/container/uid": "ab".repeat(32),
                "/process/container/orchestrator": "Kubernetes",
                "/process/container/pod_uuid": "1c0b7a8e-5d3f-4e21-9a6b-2f4d8c9e0a11",
                "/process/container/tags/1": {"name": "kubernetes.namespace", "value": "prod"},
                "/actor/process": {"pid": 4242, "uid": "9a3f00c1d2e4b5a6"},
                "/actor/user/programmatic_credentials/0/type": "env:AWS_SECRET_ACCESS_KEY",
            },
            "2": {
                "/launch_type_id": 2, "/process/pid": 4300, "/process/uid": "00ff00c1d2e4b5a6",
                "/process/parent_process/uid": "9a3f00c1d2e4b5a6", "/process/ancestry/1/pid": 4200,
                "/actor/process/pid": 4242,
            },
            "3": {
                "/type_uid": 100702, "/status_detail": "killed by signal 9", "/exit_code": null,
                "/process/container": null, "/actor/user/name": "unit:backup.service",
                "/unmapped/workload": {"kind": "systemd", "unit": "backup.service"},
                "/actor/user/account/type": "systemd Unit",
            },
            "4": {
                "/type_uid": 100705, "/process/euid": 0, "/process/auid": 1001,
                "/actor/session": {"uid": "7", "terminal": "pts/3"},
                "/unmapped/cred_change/old/euid": 1000,
                "/unmapped/cred_change/syscall": "setresuid",
            },
        }));
    }

    #[test]
    fn identity_credential_and_files() {
        check(json!({
            "5": {
                "/type_uid": 100114, "/status_id": 1,
                "/actor/user/name": "system:serviceaccount:prod:backup",
                "/actor/user/uid": "5e0f3a9c-1b2d-4c8e-9f7a-6b5c4d3e2f10",
                "/actor/user/uid_alt": "spiffe://cluster.local/ns/prod/sa/backup",
                "/actor/user/type_id": 4, "/actor/user/domain": "prod",
                "/actor/user/account/name": "backup",
                "/actor/user/programmatic_credentials": [
                    {"uid": "Xk3qP0abc", "type": "kid"},
                    {"uid": "hmac-sha256:9f86d081884c7d65",
                     "type": "kubernetes_service_account_token"},
                ],
                "/actor/idp/issuer": "https://kubernetes.default.svc.cluster.local",
                "/actor/process/user/uid": "1000",
                "/file/name": "token", "/file/uid": "0:52:131074", "/file/type_id": 1,
                "/file/xattributes/mode": "0100640", "/file/size": 1024, "/file/owner/uid": "0",
                "/file/modified_time": 1_749_988_800_000_i64,
                "/unmapped/credential/identifiers/exp": 1767225600,
                "/unmapped/identity/selectors/1": "k8s:sa:backup",
                "/unmapped/file/matched/0": "prefix",
            },
            "6": {
                "/status_id": 2, "/status_code": "13", "/status_detail": "EACCES",
                "/file/name": "id_ed25519", "/access_mask": 0o2_000_000,
                "/unmapped/file/path_requested": "../.ssh/id_ed25519",
            },
            "7": {
                "/file/path": "/home/svc/.aws/cr\u{fffd}ds",
                "/file/xattributes/path_b64": "L2hvbWUvc3ZjLy5hd3MvY3L/ZHM=",
            },
            "8": {
                "/type_uid": 100102,
                "/unmapped/file": {"fd": 5, "bytes_read": 1024, "reads": 2, "reason": "progress"},
            },
            "9": {
                "/activity_id": 99, "/activity_name": "Close",
                "/type_name": "File System Activity: Other",
            },
        }));
    }

    #[test]
    fn networks() {
        check(json!({
            "10": {
                "/type_uid": 400101, "/src_endpoint": null, "/status_id": 99, "/status": "Pending",
                "/dst_endpoint": {"ip": "169.254.169.254", "port": 80, "svc_name": "aws_imds"},
                "/connection_info/protocol_ver_id": 4, "/connection_info/uid": "8123",
                "/connection_info/direction_id": 2, "/unmapped/network/v4_mapped": true,
                "/actor/user/name": "system:serviceaccount:prod:backup",
            },
            "11": {
                "/status_id": 2, "/status_detail": "ECONNREFUSED",
                "/metadata/event_code": "network.connect_result",
            },
            "12": {"/connection_info/direction_id": 1, "/src_endpoint/ip": "10.0.0.7"},
            "13": {"/type_uid": 400106, "/connection_info/protocol_num": 17},
            "14": {
                "/dst_endpoint": {
                    "name": "/run/spire/sockets/agent.sock", "svc_name": "spire_agent",
                },
                "/connection_info/protocol_name": "unix", "/connection_info/direction_id": 4,
            },
        }));
    }

    #[test]
    fn sensor_and_unknown_events() {
        let stream = "0b8f6a52-2d0e-4f43-a1f4-8f6f3e1c9d77";
        check(json!({
            "15": {
                "/type_uid": 100899, "/log_name": stream, "/actor": null,
                "/unmapped/stats/kernel/ringbuf_full": 3, "/unmapped/stats/spool/acked": 9_985,
            },
            "16": {"/type_uid": 100807},
            "17": {
                "/type_uid": 100899, "/status_id": 2, "/severity_id": 3, "/metadata/sequence": 17,
                "/message": format!("12 events lost: sequence 17 to 28 of stream {stream}"),
                "/unmapped/loss": {
                    "reason": "spool_full", "first_sequence": 17, "last_sequence": 28, "count": 12,
                },
            },
            "18": {
                "/message": "40 events skipped for this subscriber (still stored by the collector)",
            },
            "19": {"/type_uid": 99, "/metadata/event_code": "42"},
        }));
    }

    #[test]
    fn event_without_sensor() {
        let mut ev = samples().remove(0);
        ev.sensor = None;
        assert_eq!(event_uid(&ev), "::1");
        assert_eq!(to_ocsf(&ev)["device"]["name"], "unknown");
    }
}
