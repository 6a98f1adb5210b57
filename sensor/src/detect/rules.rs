//! The detection rules: ids, titles, severities and their mappings to the OWASP Non-Human
//! Identities Top 10 (2025) and MITRE ATT&CK. Ids are a stable interface (allow-lists and
//! SIEM content refer to them): add rules, never renumber.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Medium,
    High,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Rule {
    pub id: &'static str,
    pub title: &'static str,
    pub severity: Severity,
    /// OWASP NHI Top 10 (2025) risk ids, e.g. `NHI10`.
    pub owasp: &'static [&'static str],
    /// MITRE ATT&CK technique id and name.
    pub mitre: (&'static str, &'static str),
    pub description: &'static str,
}

pub const CROSS_WORKLOAD_READ: &str = "NHI-D001";
pub const HUMAN_USE: &str = "NHI-D002";
pub const CLOUD_METADATA: &str = "NHI-D003";
pub const STALE_CREDENTIAL: &str = "NHI-D004";
pub const NEW_EGRESS_AFTER_READ: &str = "NHI-D005";
pub const SHARED_CREDENTIAL: &str = "NHI-D006";
pub const TOKEN_REPLAY: &str = "NHI-D007";
pub const CREDENTIAL_HUNTING: &str = "NHI-D008";
pub const ENVIRON_READ: &str = "NHI-D009";
pub const UNEXPECTED_BINARY: &str = "NHI-D010";

pub static RULES: &[Rule] = &[
    Rule {
        id: CROSS_WORKLOAD_READ,
        title: "Credential of another workload read",
        severity: Severity::High,
        owasp: &["NHI2"],
        mitre: ("T1552.001", "Unsecured Credentials: Credentials In Files"),
        description: "A credential that belongs to one workload (a pod's volume under the \
            kubelet directory) was read by a process of another workload. Node daemons are \
            exempt by executable path, and only outside containers.",
    },
    Rule {
        id: HUMAN_USE,
        title: "Workload credential used from an interactive session",
        severity: Severity::Medium,
        owasp: &["NHI10"],
        mitre: ("T1078", "Valid Accounts"),
        description: "A non-human credential (a pod's token, a service's key, a file owned by \
            a system account other than the reader's login) was read by a process with a \
            terminal or a login uid: a person is acting as the workload.",
    },
    Rule {
        id: CLOUD_METADATA,
        title: "Cloud metadata credentials requested from a workload",
        severity: Severity::High,
        owasp: &["NHI5", "NHI6"],
        mitre: (
            "T1552.005",
            "Unsecured Credentials: Cloud Instance Metadata API",
        ),
        description: "A container or pod connected to the instance-metadata or \
            container-credential endpoint although it has a federated identity (IRSA, Pod \
            Identity, workload identity) or is not in detections.imds_allowed: it can obtain \
            the node's role.",
    },
    Rule {
        id: STALE_CREDENTIAL,
        title: "Stale or never-expiring credential in use",
        severity: Severity::Medium,
        owasp: &["NHI7"],
        mitre: ("T1078", "Valid Accounts"),
        description: "A credential was used whose age exceeds the rotation policy for its kind, \
            a token without expiry (legacy service-account token, JWT without exp), or a \
            certificate past or near its notAfter.",
    },
    Rule {
        id: NEW_EGRESS_AFTER_READ,
        title: "First-seen destination after a credential read",
        severity: Severity::Medium,
        owasp: &["NHI2", "NHI5"],
        mitre: ("T1041", "Exfiltration Over C2 Channel"),
        description: "Within detections.egress_window_s after a process read a credential, it \
            or a child connected to a destination never seen for that workload and credential \
            once the learning period was over.",
    },
    Rule {
        id: SHARED_CREDENTIAL,
        title: "Credential shared by several workloads",
        severity: Severity::Medium,
        owasp: &["NHI9", "NHI8"],
        mitre: ("T1078", "Valid Accounts"),
        description: "The same credential (keyed fingerprint) was read by more than one \
            workload; across environments (detections.environments) the severity is high.",
    },
    Rule {
        id: TOKEN_REPLAY,
        title: "Projected token used outside its pod",
        severity: Severity::High,
        owasp: &["NHI9", "NHI2"],
        mitre: (
            "T1550.001",
            "Use Alternate Authentication Material: Application Access Token",
        ),
        description: "A projected service-account token whose claims name one pod was read by \
            a process of a different workload.",
    },
    Rule {
        id: CREDENTIAL_HUNTING,
        title: "Credential hunting",
        severity: Severity::High,
        owasp: &["NHI2"],
        mitre: ("T1552.001", "Unsecured Credentials: Credentials In Files"),
        description: "One process opened many distinct catalogued credential files in a short \
            window, or a search tool (by executable name) opened credential files.",
    },
    Rule {
        id: ENVIRON_READ,
        title: "Another workload's environment read",
        severity: Severity::High,
        owasp: &["NHI2"],
        mitre: ("T1552.007", "Unsecured Credentials: Container API"),
        description: "A process opened /proc/<pid>/environ of a process in a different \
            workload (environment variables carry tokens and keys).",
    },
    Rule {
        id: UNEXPECTED_BINARY,
        title: "Unexpected executable read a workload's credential",
        severity: Severity::Medium,
        owasp: &["NHI2", "NHI3"],
        mitre: ("T1552.001", "Unsecured Credentials: Credentials In Files"),
        description: "After the learning period, a credential was read by an executable (path \
            and sha256) not in that workload's baseline for it.",
    },
];

pub fn by_id(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}
