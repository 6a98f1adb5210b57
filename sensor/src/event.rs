//! The JSON event model printed on stdout, one object per line. Field names are a stable,
//! documented interface (README, "Event schema"): add fields, never rename or repurpose them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Event {
    pub kind: &'static str,
    /// RFC 3339, UTC, nanoseconds.
    pub time: String,
    /// Kernel boot-clock timestamp (ns since boot, suspend included).
    pub boot_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<Exec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fork: Option<Fork>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cred_change: Option<CredChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix: Option<Unix>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// The workload of `process` (present whenever `process` is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<crate::workload::Workload>,
    /// The non-human identity `process` acts as (present whenever `process` is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::identity::Identity>,
    /// On `file.open` of a catalogued credential: what it is, without its secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<crate::credentials::classify::Credential>,
    /// On `finding`: the rule that fired and its evidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding: Option<crate::detect::Finding>,
}

impl Event {
    pub fn new(kind: &'static str, time: String, boot_ns: u64) -> Self {
        Self {
            kind,
            time,
            boot_ns,
            process: None,
            exec: None,
            fork: None,
            exit: None,
            cred_change: None,
            file: None,
            network: None,
            stats: None,
            unix: None,
            dns: None,
            workload: None,
            identity: None,
            credential: None,
            finding: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub key: String,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub parent_key: String,
    pub start_ns: u64,
    pub comm: String,
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(flatten)]
    pub ids: Ids,
    pub user: Option<String>,
    pub cap_effective: String,
    pub cap_permitted: String,
    pub loginuid: Option<u32>,
    pub sessionid: Option<u32>,
    pub tty: Option<String>,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub ns: Namespaces,
    pub ancestry: Vec<Ancestor>,
}

#[cfg(test)]
impl Process {
    pub fn for_tests(
        cgroup: &str,
        cgroup_id: u64,
        uid: u32,
        user: Option<&str>,
        exe: Option<&str>,
    ) -> Self {
        Self {
            key: String::new(),
            pid: 1,
            tid: 1,
            ppid: 0,
            parent_key: String::new(),
            start_ns: 0,
            comm: String::new(),
            exe: exe.map(str::to_string),
            exe_b64: None,
            argv: None,
            ids: Ids {
                uid,
                gid: uid,
                euid: uid,
                egid: uid,
                suid: uid,
                sgid: uid,
                fsuid: uid,
                fsgid: uid,
            },
            user: user.map(str::to_string),
            cap_effective: String::new(),
            cap_permitted: String::new(),
            loginuid: None,
            sessionid: None,
            tty: None,
            cgroup_id,
            cgroup: Some(cgroup.to_string()),
            ns: Namespaces {
                pid: 0,
                mnt: 0,
                net: 0,
                user: 0,
                uts: 0,
                ipc: 0,
                cgroup: 0,
            },
            ancestry: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub suid: u32,
    pub sgid: u32,
    pub fsuid: u32,
    pub fsgid: u32,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Namespaces {
    pub pid: u32,
    pub mnt: u32,
    pub net: u32,
    pub user: u32,
    pub uts: u32,
    pub ipc: u32,
    pub cgroup: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ancestor {
    pub pid: u32,
    pub key: String,
    pub exe: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Exec {
    pub filename: String,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    pub old_pid: u32,
    /// Credential variables in the new environment: names, keyed fingerprints of the values,
    /// and the value only for paths, addresses and public identifiers.
    pub credential_env: Vec<crate::env_vars::CredentialVar>,
    /// The kernel captured only the first part of the environment (`ENV_MAX` bytes).
    pub env_truncated: bool,
}

#[derive(Debug, Serialize)]
pub struct Fork {
    pub child_pid: u32,
    pub child_key: String,
}

#[derive(Debug, Serialize)]
pub struct Exit {
    /// Raw wait status.
    pub status: u32,
    pub code: u32,
    pub signal: u32,
}

#[derive(Debug, Serialize)]
pub struct CredChange {
    pub syscall: String,
    pub old: CredSet,
    pub new: CredSet,
}

#[derive(Debug, Serialize)]
pub struct CredSet {
    #[serde(flatten)]
    pub ids: Ids,
    pub cap_effective: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct File {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_resolved: Option<bool>,
    /// The string the process passed, when `path` is not kernel-resolved (failed opens): `path`
    /// is then this string joined to its directory and normalized lexically.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_requested: Option<String>,
    pub dev: Option<String>,
    pub ino: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<&'static str>,
    pub fd: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Errno>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Open dedupe: opens of this file with these flags by this process that the kernel
    /// counted instead of reporting since the previous report of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeats: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Errno {
    pub errno: u32,
    pub name: &'static str,
}

impl Errno {
    pub fn new(errno: u32) -> Self {
        Self {
            errno,
            name: errno_name(errno),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub ip: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct Network {
    pub protocol: &'static str,
    pub family: &'static str,
    pub direction: &'static str,
    pub src: Option<Endpoint>,
    pub dst: Endpoint,
    pub v4_mapped: bool,
    pub cookie: u64,
    pub result: &'static str,
    pub error: Option<Errno>,
    /// The destination is a credential service (metadata, container credentials, API server,
    /// Vault).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<crate::endpoints::CredentialEndpoint>,
    /// Names `dst.ip` was a DNS answer for, seen by the same cgroup before (README, "DNS").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dst_dns_names: Vec<String>,
}

/// A DNS response received by a local socket (`network.dns`).
#[derive(Debug, Clone, Serialize)]
pub struct Dns {
    pub query: String,
    pub query_type: String,
    pub rcode: String,
    pub id: u16,
    pub answers: Vec<DnsAnswer>,
    pub resolver: Endpoint,
    pub client: Endpoint,
    pub cgroup_id: u64,
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DnsAnswer {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub data: String,
    pub ttl: u32,
}

/// A connect to a watched Unix socket.
#[derive(Debug, Serialize)]
pub struct Unix {
    /// As passed to connect; abstract sockets as `@name`.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    #[serde(rename = "abstract")]
    pub is_abstract: bool,
    /// `connected`, `refused`, `failed`.
    pub result: &'static str,
    pub error: Option<Errno>,
    pub endpoint: Option<crate::endpoints::CredentialEndpoint>,
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub kernel: std::collections::BTreeMap<&'static str, u64>,
    /// Sum of the kernel's loss counters: events the kernel could not deliver.
    pub kernel_drops: u64,
    pub decoded: u64,
    pub decode_errors: u64,
    /// File opens the kernel's coarse keys matched but no rule matched exactly.
    pub filtered_in_userspace: u64,
    /// Connect outcomes whose connect was never seen (e.g. reported before the sensor started).
    pub orphan_results: u64,
    pub processes_tracked: usize,
    /// DNS responses that did not parse (skipped).
    pub dns_malformed: u64,
    /// DNS answers evicted from the full names cache.
    pub dns_cache_evicted: u64,
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The exporter's spool (when shipping to a collector).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool: Option<SpoolStats>,
}

/// Events waiting in the exporter's spool and what it had to discard.
#[derive(Debug, Serialize)]
pub struct SpoolStats {
    pub bytes: u64,
    /// Events not yet acknowledged by the collector.
    pub unacked: u64,
    /// Highest sequence number the collector acknowledged.
    pub acked: u64,
    /// Events discarded because the spool was full (each range also sent as a loss record).
    pub evicted: u64,
    /// Spool records that could not be read back.
    pub corrupt: u64,
}

/// Renders bytes as a string field: exact when valid UTF-8; otherwise lossy, with the exact bytes
/// in a `*_b64` companion.
pub fn text_and_b64(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => {
            use base64::Engine as _;
            (
                String::from_utf8_lossy(bytes).into_owned(),
                Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            )
        }
    }
}

/// Collapses `.` and `..` components and repeated slashes without touching the filesystem (for
/// paths the kernel could not resolve: symlinks stay as written).
pub fn normalize_lexically(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for comp in path.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// A NUL-padded C string from the kernel.
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// argv as the kernel stores it: NUL-separated strings.
pub fn split_args(raw: &[u8]) -> Vec<Vec<u8>> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|b| *b == 0).map(<[u8]>::to_vec).collect()
}

pub fn caps_hex(caps: u64) -> String {
    format!("0x{caps:016x}")
}

/// `dev_t` as the kernel encodes it internally (`MAJOR << 20 | MINOR`).
pub fn dev_string(dev: u64) -> String {
    format!("{}:{}", dev >> 20, dev & 0xfffff)
}

pub fn ip_of(family: u16, addr: &[u8; 16]) -> (IpAddr, bool) {
    if family == libc::AF_INET as u16 {
        (
            IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
            false,
        )
    } else {
        let v6 = Ipv6Addr::from(*addr);
        (IpAddr::V6(v6), v6.to_ipv4_mapped().is_some())
    }
}

pub fn errno_name(errno: u32) -> &'static str {
    match errno as i32 {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ELOOP => "ELOOP",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::EISCONN => "EISCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => "UNKNOWN",
    }
}

/// x86_64 syscall numbers of the credential-changing syscalls.
pub fn cred_syscall_name(nr: u32) -> String {
    match nr {
        105 => "setuid",
        106 => "setgid",
        113 => "setreuid",
        114 => "setregid",
        116 => "setgroups",
        117 => "setresuid",
        119 => "setresgid",
        122 => "setfsuid",
        123 => "setfsgid",
        126 => "capset",
        59 => "execve",
        322 => "execveat",
        u32::MAX => "commit_creds",
        _ => return format!("syscall_{nr}"),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(text_and_b64(b"/ok"), ("/ok".to_string(), None));
        let (lossy, b64) = text_and_b64(b"/a\xff");
        assert_eq!(lossy, "/a\u{fffd}");
        assert_eq!(b64.as_deref(), Some("L2H/"));
        assert_eq!(
            split_args(b"a\0b c\0\0d\0"),
            vec![b"a".to_vec(), b"b c".to_vec(), vec![], b"d".to_vec()]
        );
        assert!(split_args(b"").is_empty());
        assert_eq!(c_str(b"pts3\0\0"), "pts3");
        assert_eq!(normalize_lexically(b"/a/./b/../c//d"), b"/a/c/d");
        assert_eq!(normalize_lexically(b"/../.."), b"/");
        assert_eq!(dev_string((8 << 20) | 1), "8:1");
        let mapped = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x7f00, 1).octets();
        assert!(ip_of(10, &mapped).1);
        assert_eq!(errno_name(111), "ECONNREFUSED");
        assert_eq!(cred_syscall_name(105), "setuid");
    }
}
