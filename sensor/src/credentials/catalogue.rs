//! The credential catalogue: where non-human-identity credentials live on a Linux node, what
//! each is called (`kind`) and how to parse it. Each pattern is loaded into the kernel as one
//! coarse watch rule (path prefix, exact name, name prefix or name suffix) and then matched
//! exactly in userspace: every field a pattern sets must match.
//!
//! Home-directory patterns are path *suffixes* (`/.aws/credentials`), so they match wherever
//! the home is (`/root`, `/home/x`, `/var/lib/jenkins`, inside containers).

use std::path::Path;

use anyhow::bail;
use serde::Deserialize;

use super::Format;
use crate::rules::WatchRule;

/// One catalogue entry. All set fields must match; at least one must be set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pattern {
    /// Stable name of the credential kind (`aws_shared_credentials`, ...).
    pub kind: String,
    pub format: Format,
    /// The canonical path starts with this.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The canonical path ends with this (it must start with `/`: whole components).
    #[serde(default)]
    pub path_suffix: Option<String>,
    /// The file name is exactly this.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub name_prefix: Option<String>,
    #[serde(default)]
    pub name_suffix: Option<String>,
    /// `/proc/<pid>/environ` of a process other than the reader (built-in only).
    #[serde(skip)]
    pub proc_environ: bool,
}

impl Pattern {
    fn new(kind: &str, format: Format) -> Self {
        Self {
            kind: kind.to_string(),
            format,
            path_prefix: None,
            path_suffix: None,
            name: None,
            name_prefix: None,
            name_suffix: None,
            proc_environ: false,
        }
    }
    fn prefix(mut self, p: &str) -> Self {
        self.path_prefix = Some(p.into());
        self
    }
    fn suffix(mut self, s: &str) -> Self {
        self.path_suffix = Some(s.into());
        self
    }
    fn name(mut self, n: &str) -> Self {
        self.name = Some(n.into());
        self
    }
    fn name_prefix(mut self, n: &str) -> Self {
        self.name_prefix = Some(n.into());
        self
    }
    fn name_suffix(mut self, n: &str) -> Self {
        self.name_suffix = Some(n.into());
        self
    }

    /// Checks a pattern from the config file.
    pub fn validate(&self) -> anyhow::Result<()> {
        let Pattern {
            kind,
            format: _,
            path_prefix,
            path_suffix,
            name,
            name_prefix,
            name_suffix,
            proc_environ: _,
        } = self;
        if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("credential kind {kind:?} must be non-empty [A-Za-z0-9_]");
        }
        if path_prefix.is_none()
            && path_suffix.is_none()
            && name.is_none()
            && name_prefix.is_none()
            && name_suffix.is_none()
        {
            bail!(
                "credential {kind}: set at least one of path_prefix, path_suffix, name, name_prefix, name_suffix"
            );
        }
        if path_prefix.as_ref().is_some_and(|p| !p.starts_with('/')) {
            bail!("credential {kind}: path_prefix must be absolute");
        }
        if path_suffix
            .as_ref()
            .is_some_and(|p| !p.starts_with('/') || p.ends_with('/') || p.len() < 2)
        {
            bail!("credential {kind}: path_suffix must look like `/dir/file`");
        }
        for n in [name, name_prefix, name_suffix].into_iter().flatten() {
            if n.is_empty() || n.contains('/') || n.contains('\0') {
                bail!("credential {kind}: file-name patterns must be non-empty without '/'");
            }
        }
        Ok(())
    }

    /// The one kernel rule that lets candidate opens reach userspace: the most selective field.
    pub fn kernel_rule(&self) -> WatchRule {
        if let Some(p) = &self.path_prefix {
            WatchRule::Prefix(p.as_bytes().to_vec())
        } else if let Some(n) = &self.name {
            WatchRule::Name(n.as_bytes().to_vec())
        } else if let Some(s) = &self.path_suffix {
            let last = s.rsplit('/').next().unwrap_or(s);
            WatchRule::Name(last.as_bytes().to_vec())
        } else if let Some(n) = &self.name_prefix {
            WatchRule::NamePrefix(n.as_bytes().to_vec())
        } else if let Some(n) = &self.name_suffix {
            WatchRule::NameSuffix(n.as_bytes().to_vec())
        } else {
            // Only the built-in environ pattern has no field; validate() refuses the rest.
            WatchRule::Name(b"environ".to_vec())
        }
    }

    /// Exact match of a canonical absolute path opened by process `reader_pid`.
    pub fn matches(&self, path: &[u8], reader_pid: u32) -> bool {
        let name = path.rsplit(|b| *b == b'/').next().unwrap_or(path);
        if self.proc_environ {
            let Some(rest) = path.strip_prefix(b"/proc/") else {
                return false;
            };
            let Some(pid) = rest.strip_suffix(b"/environ") else {
                return false;
            };
            let Some(pid) = std::str::from_utf8(pid)
                .ok()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                return false;
            };
            return pid != reader_pid && !is_own_pid_in_its_namespace(reader_pid, pid);
        }
        self.path_prefix
            .as_ref()
            .is_none_or(|p| path.starts_with(p.as_bytes()))
            && self
                .path_suffix
                .as_ref()
                .is_none_or(|s| path.ends_with(s.as_bytes()))
            && self.name.as_ref().is_none_or(|n| name == n.as_bytes())
            && self
                .name_prefix
                .as_ref()
                .is_none_or(|n| name.starts_with(n.as_bytes()))
            && self
                .name_suffix
                .as_ref()
                .is_none_or(|n| name.ends_with(n.as_bytes()))
    }
}

/// Whether `pid` is `reader`'s own pid as its innermost pid namespace numbers it (a container
/// process reading its own `/proc/<pid>/environ`). Read from `/proc/<reader>/status` `NSpid:`;
/// only reached for `environ` opens whose pid differs from the reader's host pid.
fn is_own_pid_in_its_namespace(reader: u32, pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{reader}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|ids| ids.split_whitespace().last())
        .and_then(|last| last.parse::<u32>().ok())
        == Some(pid)
}

/// The built-in catalogue, most specific first (the first matching pattern names the kind).
pub fn builtin() -> Vec<Pattern> {
    use Format::*;
    let p = Pattern::new;
    let mut v = Vec::new();
    // Kubernetes service-account tokens: in the pod (canonical `/run/...` and the lexical
    // `/var/run/...` a failed open reports), and on the node under the kubelet root.
    for root in ["/run/secrets/", "/var/run/secrets/"] {
        v.push(
            p("kubernetes_sa_token", Jwt)
                .prefix(&format!("{root}kubernetes.io/serviceaccount/"))
                .name("token"),
        );
        v.push(
            p("aws_web_identity_token", Jwt)
                .prefix(&format!("{root}eks.amazonaws.com/serviceaccount/")),
        );
        v.push(
            p("aws_pod_identity_token", Jwt)
                .prefix(&format!("{root}pods.eks.amazonaws.com/serviceaccount/")),
        );
        v.push(p("azure_federated_token", Jwt).prefix(&format!("{root}azure/tokens/")));
        // Docker/compose secrets and anything else mounted as a secret.
        v.push(p("container_secret", Auto).prefix(root));
    }
    v.push(
        p("kubernetes_sa_token_node", Jwt)
            .prefix("/var/lib/kubelet/pods/")
            .name("token"),
    );
    v.push(p("kubelet_pki", Pem).prefix("/var/lib/kubelet/pki/"));
    v.push(
        p("kubernetes_pki_key", Pem)
            .prefix("/etc/kubernetes/pki/")
            .name_suffix(".key"),
    );
    v.push(
        p("kubernetes_node_kubeconfig", Kubeconfig)
            .prefix("/etc/kubernetes/")
            .name_suffix(".conf"),
    );
    v.push(p("kubernetes_node_file", Auto).prefix("/etc/kubernetes/"));
    v.push(p("kubeconfig", Kubeconfig).suffix("/.kube/config"));
    // Cloud.
    v.push(p("aws_shared_credentials", AwsIni).suffix("/.aws/credentials"));
    v.push(p("aws_config", AwsIni).suffix("/.aws/config"));
    // Any other file named `credentials` (gcloud legacy, tool-specific stores, copies of AWS's).
    v.push(p("credentials_file", Auto).name("credentials"));
    v.push(p("gcp_adc", GcpJson).name("application_default_credentials.json"));
    v.push(p("gcp_credentials_db", Opaque).suffix("/gcloud/credentials.db"));
    v.push(p("gcp_access_tokens_db", Opaque).suffix("/gcloud/access_tokens.db"));
    v.push(p("azure_msal_cache", Json).name("msal_token_cache.json"));
    v.push(p("azure_service_principal", Json).name("service_principal_entries.json"));
    // Registries.
    v.push(p("docker_config", DockerConfig).suffix("/.docker/config.json"));
    v.push(p("docker_config_legacy", DockerConfig).name(".dockercfg"));
    v.push(p("containers_auth", DockerConfig).suffix("/containers/auth.json"));
    // SSH.
    for n in [
        "id_rsa",
        "id_ecdsa",
        "id_ed25519",
        "id_dsa",
        "id_ecdsa_sk",
        "id_ed25519_sk",
    ] {
        v.push(p("ssh_private_key", SshKey).name(n));
    }
    v.push(
        p("ssh_host_key", SshKey)
            .prefix("/etc/ssh/ssh_host_")
            .name_suffix("_key"),
    );
    // Git and package tooling.
    v.push(p("git_credentials", GitCredentials).name(".git-credentials"));
    v.push(p("gh_hosts", GhHosts).suffix("/gh/hosts.yml"));
    v.push(p("netrc", Netrc).name(".netrc"));
    v.push(p("npmrc", Npmrc).name(".npmrc"));
    v.push(p("pypirc", Ini).name(".pypirc"));
    v.push(p("pgpass", Pgpass).name(".pgpass"));
    v.push(p("s3cfg", Ini).name(".s3cfg"));
    v.push(p("boto", Ini).name(".boto"));
    v.push(p("mysql_client_config", Ini).name(".my.cnf"));
    v.push(p("cargo_credentials", Ini).suffix("/.cargo/credentials.toml"));
    v.push(p("terraform_credentials", Json).name("credentials.tfrc.json"));
    // Vault.
    v.push(p("vault_token", VaultToken).name(".vault-token"));
    v.push(p("vault_injector_secret", Auto).prefix("/vault/secrets/"));
    v.push(p("vault_approle_secret_id", Opaque).name("secret_id"));
    // SPIFFE / TLS.
    v.push(p("spiffe_svid_key", Pem).name("svid_key.pem"));
    v.push(p("spiffe_svid", Pem).name("svid.pem"));
    v.push(p("tls_private_key", Pem).name("privkey.pem"));
    v.push(p("tls_private_key", Pem).name("key.pem"));
    v.push(p("tls_private_key", Pem).name_suffix("-key.pem"));
    v.push(p("tls_private_key", Pem).name_suffix("_key.pem"));
    v.push(p("tls_private_key", Pem).name_suffix(".key"));
    // Generic.
    v.push(p("env_file", EnvFile).name(".env"));
    v.push(p("env_file", EnvFile).name_prefix(".env."));
    let mut environ = p("process_environ", Environ);
    environ.proc_environ = true;
    v.push(environ);
    v
}

/// Patterns added by `--kubelet-root` when it is not the default `/var/lib/kubelet`.
pub fn kubelet_root_patterns(root: &Path) -> Vec<Pattern> {
    let mut base = root.to_string_lossy().trim_end_matches('/').to_string();
    if base == "/var/lib/kubelet" {
        return Vec::new();
    }
    if let Ok(c) = std::fs::canonicalize(root) {
        base = c.to_string_lossy().trim_end_matches('/').to_string();
    }
    vec![
        Pattern::new("kubernetes_sa_token_node", Format::Jwt)
            .prefix(&format!("{base}/pods/"))
            .name("token"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(path: &str, reader: u32) -> Option<String> {
        builtin()
            .into_iter()
            .find(|p| p.matches(path.as_bytes(), reader))
            .map(|p| p.kind)
    }

    #[test]
    fn at_least_thirty_kinds_and_valid() {
        let all = builtin();
        let mut kinds: Vec<&str> = all.iter().map(|p| p.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert!(kinds.len() >= 30, "{} kinds", kinds.len());
        for p in all.iter().filter(|p| !p.proc_environ) {
            p.validate().unwrap();
        }
    }

    #[test]
    fn home_patterns_match_anywhere() {
        for (path, kind) in [
            ("/root/.aws/credentials", "aws_shared_credentials"),
            ("/home/ci/.aws/credentials", "aws_shared_credentials"),
            ("/var/lib/jenkins/.aws/config", "aws_config"),
            ("/home/a/.kube/config", "kubeconfig"),
            ("/home/a/.ssh/id_ed25519", "ssh_private_key"),
            ("/home/a/.docker/config.json", "docker_config"),
            ("/run/user/1000/containers/auth.json", "containers_auth"),
            (
                "/run/secrets/kubernetes.io/serviceaccount/token",
                "kubernetes_sa_token",
            ),
            ("/run/secrets/db_password", "container_secret"),
            (
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~projected/kube-api-access-x/token",
                "kubernetes_sa_token_node",
            ),
            ("/etc/kubernetes/pki/apiserver.key", "kubernetes_pki_key"),
            ("/etc/kubernetes/admin.conf", "kubernetes_node_kubeconfig"),
            ("/etc/ssh/ssh_host_ed25519_key", "ssh_host_key"),
            ("/srv/app/.env", "env_file"),
            ("/srv/app/.env.production", "env_file"),
            ("/proc/42/environ", "process_environ"),
            ("/home/a/x.aws/credentials", "credentials_file"),
            ("/spire/svid_key.pem", "spiffe_svid_key"),
        ] {
            assert_eq!(kind_of(path, 7).as_deref(), Some(kind), "{path}");
        }
        for path in [
            "/home/a/.ssh/id_ed25519.pub",
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "/proc/7/environ",
            "/proc/self/environ",
            "/etc/passwd",
        ] {
            assert_eq!(kind_of(path, 7), None, "{path}");
        }
    }

    #[test]
    fn kernel_rules_are_coarse_supersets() {
        for p in builtin() {
            let rule = p.kernel_rule();
            let sample = match (&p.path_prefix, &p.path_suffix, &p.name) {
                (Some(pre), _, Some(n)) => format!("{pre}x/{n}"),
                (_, Some(s), _) => format!("/home/u{s}"),
                _ => continue,
            };
            assert!(
                crate::rules::RuleSet {
                    rules: vec![rule],
                    ..Default::default()
                }
                .matches(sample.as_bytes(), false, 1)
                .len()
                    == 1,
                "{sample}"
            );
        }
    }
}
