//! The `[detections]` table of the config file: thresholds, rotation policy and allow-lists.
//! Reloaded on SIGHUP with the watch rules. Every key is optional; the defaults are the values
//! below, each explained where it is set.
//!
//! ```toml
//! [detections]
//! enabled = true
//! disable = ["NHI-D008"]                 # rule ids to switch off
//! learning_period_s = 86400              # baselines (D005, D010) learn this long first
//! repeat_after_s = 3600                  # the same finding is not repeated sooner
//! node_daemons = ["/usr/bin/kubelet"]    # host executables exempt from D001/D007/D009
//! imds_allowed = ["ns:kube-system"]      # workloads allowed to reach instance metadata (D003)
//! max_age_days = { default = 90, ssh_private_key = 365 }   # rotation policy by kind (D004)
//! cert_expiry_warning_days = 7           # certificates this close to notAfter (D004)
//! egress_window_s = 60                   # a connect this soon after a credential read (D005)
//! hunting_threshold = 10                 # distinct credential paths by one process (D008)
//! hunting_window_s = 60
//! search_tools = ["grep", "rg"]          # executable names that sweep for keys (D008)
//! environments = { "prod-payments" = "prod", "dev-payments" = "dev" }  # namespace → env (D006)
//!
//! [[detections.allow]]                   # every field set must match; `rule` absent = all
//! rule = "NHI-D002"
//! exe = "/usr/local/bin/break-glass"
//! workload = "unit:backup.service"       # workload key: pod:<uid>, container:<id>,
//!                                        # unit:<name>, session:<n>, host:uid:<uid>
//! credential_kind = "ssh_private_key"
//! path_prefix = "/etc/ssh/"
//! destination = "10.0.0.7:443"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    pub enabled: bool,
    pub disable: Vec<String>,
    pub learning_period_s: u64,
    pub repeat_after_s: u64,
    pub node_daemons: Vec<String>,
    pub imds_allowed: Vec<String>,
    pub max_age_days: BTreeMap<String, u64>,
    pub cert_expiry_warning_days: u64,
    pub egress_window_s: u64,
    pub hunting_threshold: usize,
    pub hunting_window_s: u64,
    pub search_tools: Vec<String>,
    pub environments: BTreeMap<String, String>,
    pub allow: Vec<Allow>,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            disable: Vec::new(),
            // One day covers daily jobs (backups, rotations) before a baseline is trusted.
            learning_period_s: 86_400,
            // An hour: a misuse that continues is still visible hourly without flooding.
            repeat_after_s: 3_600,
            // The node's own agents read every pod's volumes by design. Matched on the exact
            // executable path and only outside containers: a pod can name itself `kubelet`.
            node_daemons: [
                "/usr/bin/kubelet",
                "/usr/local/bin/kubelet",
                "/usr/bin/containerd",
                "/usr/local/bin/containerd",
                "/usr/bin/containerd-shim-runc-v2",
                "/usr/bin/crio",
                "/usr/bin/dockerd",
                "/usr/sbin/runc",
                "/usr/bin/runc",
            ]
            .map(str::to_string)
            .to_vec(),
            imds_allowed: Vec::new(),
            // 90 days: the common rotation policy for static keys (CIS, AWS IAM guidance).
            max_age_days: BTreeMap::from([("default".to_string(), 90)]),
            // A week: enough time to rotate before an outage.
            cert_expiry_warning_days: 7,
            // A minute: exfiltration follows the read quickly; longer windows blame routine
            // traffic of long-lived processes.
            egress_window_s: 60,
            // Ten distinct credential files in a minute: more than any single tool reads (an
            // SDK reads a handful), fewer than a sweep of home directories.
            hunting_threshold: 10,
            hunting_window_s: 60,
            search_tools: [
                "grep",
                "egrep",
                "fgrep",
                "rg",
                "ag",
                "ack",
                "trufflehog",
                "gitleaks",
                "detect-secrets",
                "noseyparker",
                "lazagne",
            ]
            .map(str::to_string)
            .to_vec(),
            environments: BTreeMap::new(),
            allow: Vec::new(),
        }
    }
}

/// One allow-list entry: a finding it matches is not reported.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    pub rule: Option<String>,
    pub exe: Option<String>,
    pub workload: Option<String>,
    pub credential_kind: Option<String>,
    pub path_prefix: Option<String>,
    pub destination: Option<String>,
}

/// What an allow entry is compared with.
#[derive(Debug, Default)]
pub struct Subject<'a> {
    pub exe: Option<&'a str>,
    pub workload: &'a str,
    pub credential_kind: Option<&'a str>,
    pub path: Option<&'a str>,
    pub destination: Option<&'a str>,
}

impl DetectConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        for id in &self.disable {
            if super::rules::by_id(id).is_none() {
                anyhow::bail!("detections.disable: unknown rule id {id:?}");
            }
        }
        for (i, a) in self.allow.iter().enumerate() {
            if let Some(id) = &a.rule
                && super::rules::by_id(id).is_none()
            {
                anyhow::bail!(
                    "[[detections.allow]] number {}: unknown rule id {id:?}",
                    i + 1
                );
            }
            if a.exe.is_none()
                && a.workload.is_none()
                && a.credential_kind.is_none()
                && a.path_prefix.is_none()
                && a.destination.is_none()
            {
                anyhow::bail!(
                    "[[detections.allow]] number {}: set at least one of exe, workload, \
                     credential_kind, path_prefix, destination (an empty entry would allow \
                     everything)",
                    i + 1
                );
            }
        }
        if self.hunting_threshold < 2 {
            anyhow::bail!("detections.hunting_threshold must be at least 2");
        }
        Ok(())
    }

    pub fn rule_enabled(&self, id: &str) -> bool {
        self.enabled && !self.disable.iter().any(|d| d == id)
    }

    /// The rotation policy for `kind`, in seconds.
    pub fn max_age_s(&self, kind: &str) -> u64 {
        let days = self
            .max_age_days
            .get(kind)
            .or_else(|| self.max_age_days.get("default"))
            .copied()
            .unwrap_or(90);
        days.saturating_mul(86_400)
    }

    pub fn allowed(&self, rule: &str, s: &Subject<'_>) -> bool {
        self.allow.iter().any(|a| {
            a.rule.as_deref().is_none_or(|r| r == rule)
                && a.exe.as_deref().is_none_or(|e| s.exe == Some(e))
                && a.workload.as_deref().is_none_or(|w| s.workload == w)
                && a.credential_kind
                    .as_deref()
                    .is_none_or(|k| s.credential_kind == Some(k))
                && a.path_prefix
                    .as_deref()
                    .is_none_or(|p| s.path.is_some_and(|path| path.starts_with(p)))
                && a.destination
                    .as_deref()
                    .is_none_or(|d| s.destination == Some(d))
        })
    }

    pub fn is_node_daemon(&self, exe: Option<&str>) -> bool {
        exe.is_some_and(|e| self.node_daemons.iter().any(|d| d == e))
    }

    /// The environment a Kubernetes namespace belongs to, when the user mapped it.
    pub fn environment(&self, namespace: Option<&str>) -> Option<&str> {
        namespace.and_then(|ns| self.environments.get(ns).map(String::as_str))
    }
}
