//! The config file (`run --config FILE`, TOML): every `run` setting, plus extra credential
//! patterns. Precedence: built-in default < file < environment variable < command-line flag.
//! A key is the flag's long name with `_` for `-`; the meaning and the default of each are
//! those of the flag (`nhi-sensor run --help`). The whole schema:
//!
//! ```toml
//! # What to watch (the flags replace these lists; `credential` patterns add to the catalogue).
//! watch = ["/srv/secrets/"]          # --watch: canonical path prefixes
//! watch_name = ["*.pem", "id_*"]     # --watch-name: file names, name prefixes/suffixes
//! watch_socket = ["/run/app.sock"]   # --watch-socket: Unix sockets whose connects are reported
//! spiffe_socket = []                 # --spiffe-socket: SPIFFE workload API sockets
//! no_default_rules = false           # --no-default-rules: drop the built-in catalogue
//!
//! # Addresses (IP or IP:port) classified as credential endpoints on network events. The kernel
//! # sees IP addresses, so give addresses, not host names. Added to the flags' addresses.
//! kube_apiserver = ["10.0.0.1:6443"]
//! vault = ["10.0.0.5:8200"]
//!
//! # Identity and fingerprints.
//! kubelet_root = "/var/lib/kubelet"
//! trust_domain = "cluster.local"
//! host_identity = "unit"             # unit | user
//! fingerprint_key_file = "/var/lib/nhi-sensor/fingerprint.key"
//!
//! # Where events go.
//! collector = "https://collector.example:50051"   # absent: the embedded collector on `store`
//! collector_ca = "/etc/nhi-sensor/tls/ca.pem"
//! tls_cert = "/etc/nhi-sensor/tls/sensor.pem"
//! tls_key = "/etc/nhi-sensor/tls/sensor.key"
//! collector_server_name = "collector.example"
//! allow_plaintext = false
//! spool = "/var/lib/nhi-sensor/spool"
//! spool_max_bytes = 268435456
//! sensor_id = "node-17"
//! node_name = "node-17"
//! store = "/var/lib/nhi-sensor/store"
//! ocsf_out = "/var/log/nhi-sensor/ocsf.jsonl"
//! drain_timeout = 5
//!
//! # Operations.
//! format = "none"                    # json | none (stdout)
//! metrics_addr = "127.0.0.1:9464"
//! stats_interval = 10
//! connect_wait_ms = 2000
//! open_dedupe_ms = 1000              # 0: report every watched open (no in-kernel dedupe)
//! ring_mib = 8
//! disable_hooks = []                 # e.g. ["fentry"]
//!
//! # Extra credential patterns, added to the built-in catalogue. Every field set must match;
//! # set at least one of path_prefix, path_suffix, name, name_prefix, name_suffix.
//! [[credential]]
//! kind = "acme_api_key"        # [A-Za-z0-9_]+, reported as credential.kind
//! format = "opaque"            # how to parse it: jwt, aws_ini, ini, gcp_json, json, kubeconfig,
//!                              # docker_config, ssh_key, pem, git_credentials, gh_hosts, netrc,
//!                              # npmrc, pgpass, vault_token, env_file, opaque, auto
//! path_suffix = "/.acme/key"   # a home-directory file, wherever the home is
//! ```
//!
//! ```toml
//! # Detection thresholds and allow-lists: see `detect/config.rs` for every key.
//! [detections]
//! learning_period_s = 86400
//! [[detections.allow]]
//! rule = "NHI-D002"
//! exe = "/usr/local/bin/break-glass"
//! ```
//!
//! SIGHUP re-reads the file and reloads the watch rules (`watch`, `watch_name`, `watch_socket`,
//! `spiffe_socket`, `no_default_rules`, `credential`) into the running kernel programs without
//! detaching them, and the `[detections]` table; other settings need a restart.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::{ArgMatches, ValueEnum as _, parser::ValueSource};
use serde::Deserialize;

use crate::{cli::RunArgs, credentials::catalogue::Pattern};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub watch: Option<Vec<PathBuf>>,
    pub watch_name: Option<Vec<String>>,
    pub watch_socket: Option<Vec<PathBuf>>,
    pub spiffe_socket: Option<Vec<PathBuf>>,
    pub no_default_rules: Option<bool>,
    #[serde(default)]
    pub kube_apiserver: Vec<String>,
    #[serde(default)]
    pub vault: Vec<String>,
    pub kubelet_root: Option<PathBuf>,
    pub trust_domain: Option<String>,
    pub host_identity: Option<String>,
    pub fingerprint_key_file: Option<PathBuf>,
    pub collector: Option<String>,
    pub collector_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub collector_server_name: Option<String>,
    pub allow_plaintext: Option<bool>,
    pub spool: Option<PathBuf>,
    pub spool_max_bytes: Option<u64>,
    pub sensor_id: Option<String>,
    pub node_name: Option<String>,
    pub store: Option<PathBuf>,
    pub ocsf_out: Option<PathBuf>,
    pub drain_timeout: Option<u64>,
    pub format: Option<String>,
    pub metrics_addr: Option<String>,
    pub stats_interval: Option<u64>,
    pub connect_wait_ms: Option<u64>,
    pub open_dedupe_ms: Option<u32>,
    pub ring_mib: Option<u32>,
    pub disable_hooks: Option<Vec<String>>,
    #[serde(default)]
    pub credential: Vec<Pattern>,
    /// Detection thresholds and allow-lists (`detect/config.rs` documents the table).
    pub detections: Option<crate::detect::config::DetectConfig>,
}

/// The 1-based line on which `key = ...` is set, for error messages.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses and checks every value. Errors name the line (TOML syntax, unknown keys and
    /// wrong types come with line and column from the parser; invalid values with the line of
    /// their key).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let f: ConfigFile = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let at = |key: &str| match line_of(text, key) {
            Some(n) => format!("line {n}: `{key}`"),
            None => format!("`{key}`"),
        };
        for (i, p) in f.credential.iter().enumerate() {
            p.validate()
                .with_context(|| format!("[[credential]] number {} ({})", i + 1, p.kind))?;
        }
        if let Some(w) = &f.watch {
            for p in w {
                crate::rules::WatchRule::parse_prefix(p).with_context(|| at("watch"))?;
            }
        }
        if let Some(w) = &f.watch_name {
            for n in w {
                crate::rules::WatchRule::parse_name(n).with_context(|| at("watch_name"))?;
            }
        }
        crate::unix_sockets::UnixSockets::new(
            f.watch_socket.as_deref().unwrap_or_default(),
            f.spiffe_socket.as_deref().unwrap_or_default(),
            false,
        )
        .with_context(|| at("watch_socket/spiffe_socket"))?;
        crate::endpoints::Endpoints::new(&f.kube_apiserver, &f.vault)
            .with_context(|| at("kube_apiserver/vault"))?;
        if let Some(h) = &f.host_identity {
            crate::identity::HostNaming::from_str(h, false)
                .map_err(|e| anyhow::anyhow!("{}: {e}", at("host_identity")))?;
        }
        if let Some(v) = &f.format {
            crate::cli::OutputFormat::from_str(v, false)
                .map_err(|e| anyhow::anyhow!("{}: {e}", at("format")))?;
        }
        for h in f.disable_hooks.iter().flatten() {
            crate::hooks::HookKind::from_str(h, false)
                .map_err(|e| anyhow::anyhow!("{}: {e}", at("disable_hooks")))?;
        }
        if let Some(a) = &f.metrics_addr {
            a.parse::<SocketAddr>()
                .with_context(|| format!("{}: {a:?} is not ADDR:PORT", at("metrics_addr")))?;
        }
        if let Some(url) = &f.collector {
            let tls = crate::transport::ClientTlsArgs {
                collector_ca: f.collector_ca.clone(),
                allow_plaintext: f.allow_plaintext.unwrap_or(false),
                ..Default::default()
            };
            // Checks the URL and the plaintext rule (certificate files are read at start).
            if !url.starts_with("https://") || f.collector_ca.is_some() {
                crate::transport::client_endpoint(url, &tls).with_context(|| at("collector"))?;
            }
        }
        if let Some(d) = &f.detections {
            d.validate().with_context(|| at("[detections]"))?;
        }
        if f.tls_cert.is_some() != f.tls_key.is_some() {
            bail!("{}: tls_cert and tls_key go together", at("tls_cert"));
        }
        Ok(f)
    }

    /// Applies the file to `args` wherever neither a flag nor an environment variable set the
    /// value (`matches`: the `run` subcommand's).
    pub fn apply(&self, args: &mut RunArgs, matches: &ArgMatches) -> anyhow::Result<()> {
        let unset = |id: &str| {
            !matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        macro_rules! take {
            ($id:literal, $field:expr, $value:expr) => {
                if let Some(v) = $value
                    && unset($id)
                {
                    $field = v;
                }
            };
        }
        take!("watch", args.watch, self.watch.clone());
        take!("watch_name", args.watch_name, self.watch_name.clone());
        take!("watch_socket", args.watch_socket, self.watch_socket.clone());
        take!(
            "spiffe_socket",
            args.spiffe_socket,
            self.spiffe_socket.clone()
        );
        take!(
            "no_default_rules",
            args.no_default_rules,
            self.no_default_rules
        );
        take!("kubelet_root", args.kubelet_root, self.kubelet_root.clone());
        take!("trust_domain", args.trust_domain, self.trust_domain.clone());
        take!(
            "host_identity",
            args.host_identity,
            self.host_identity
                .as_deref()
                .map(|h| crate::identity::HostNaming::from_str(h, false).expect("checked"))
        );
        take!(
            "fingerprint_key_file",
            args.fingerprint_key_file,
            self.fingerprint_key_file.clone()
        );
        take!(
            "collector",
            args.export.collector,
            self.collector.clone().map(Some)
        );
        take!(
            "collector_ca",
            args.export.tls.collector_ca,
            self.collector_ca.clone().map(Some)
        );
        take!(
            "tls_cert",
            args.export.tls.tls_cert,
            self.tls_cert.clone().map(Some)
        );
        take!(
            "tls_key",
            args.export.tls.tls_key,
            self.tls_key.clone().map(Some)
        );
        take!(
            "collector_server_name",
            args.export.tls.collector_server_name,
            self.collector_server_name.clone().map(Some)
        );
        take!(
            "allow_plaintext",
            args.export.tls.allow_plaintext,
            self.allow_plaintext
        );
        take!("spool", args.export.spool, self.spool.clone());
        take!(
            "spool_max_bytes",
            args.export.spool_max_bytes,
            self.spool_max_bytes
        );
        take!(
            "sensor_id",
            args.export.sensor_id,
            self.sensor_id.clone().map(Some)
        );
        take!(
            "node_name",
            args.export.node_name,
            self.node_name.clone().map(Some)
        );
        take!("store", args.store, self.store.clone());
        take!("ocsf_out", args.ocsf_out, self.ocsf_out.clone().map(Some));
        take!("drain_timeout", args.drain_timeout, self.drain_timeout);
        take!(
            "format",
            args.format,
            self.format
                .as_deref()
                .map(|f| Some(crate::cli::OutputFormat::from_str(f, false).expect("checked")))
        );
        take!(
            "metrics_addr",
            args.metrics_addr,
            self.metrics_addr
                .as_deref()
                .map(|a| Some(a.parse().expect("checked")))
        );
        take!("stats_interval", args.stats_interval, self.stats_interval);
        take!(
            "connect_wait_ms",
            args.connect_wait_ms,
            self.connect_wait_ms
        );
        take!("open_dedupe_ms", args.open_dedupe_ms, self.open_dedupe_ms);
        take!("ring_mib", args.kernel.ring_mib, self.ring_mib);
        take!(
            "disable_hooks",
            args.kernel.disable_hooks,
            self.disable_hooks.as_ref().map(|v| {
                v.iter()
                    .map(|h| crate::hooks::HookKind::from_str(h, false).expect("checked"))
                    .collect()
            })
        );
        // Additive lists: the file's addresses and patterns join the flags'.
        args.kube_apiserver
            .extend(self.kube_apiserver.iter().cloned());
        args.vault_addr.extend(self.vault.iter().cloned());
        Ok(())
    }
}

/// `nhi-sensor config check FILE`: validates a config file and says what it sets.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let f = ConfigFile::load(path)?;
    println!(
        "ok: {} is valid ({} watch prefixes, {} watch names, {} credential patterns, collector: {})",
        path.display(),
        f.watch.as_ref().map_or(0, Vec::len),
        f.watch_name.as_ref().map_or(0, Vec::len),
        f.credential.len(),
        f.collector.as_deref().unwrap_or("embedded")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::WatchRule;
    use clap::{CommandFactory as _, FromArgMatches as _};

    #[test]
    fn schema() {
        let f = ConfigFile::parse(
            "kube_apiserver = [\"10.0.0.1:6443\"]\nvault = [\"10.0.0.5\"]\n\
             [[credential]]\nkind = \"acme_api_key\"\nformat = \"opaque\"\npath_suffix = \"/.acme/key\"\n",
        )
        .unwrap();
        assert_eq!(f.kube_apiserver, ["10.0.0.1:6443"]);
        assert_eq!(
            f.credential[0].kernel_rule(),
            WatchRule::Name(b"key".to_vec())
        );
        assert!(f.credential[0].matches(b"/home/x/.acme/key", 1));
        for bad in [
            "[[credential]]\nkind = \"x\"\nformat = \"opaque\"\n",
            "[[credential]]\nkind = \"x y\"\nformat = \"opaque\"\nname = \"a\"\n",
            "[[credential]]\nkind = \"x\"\nformat = \"nope\"\nname = \"a\"\n",
            "[[credential]]\nkind = \"x\"\nformat = \"opaque\"\nname = \"a/b\"\n",
            "[[credential]]\nkind = \"x\"\nformat = \"opaque\"\npath_prefix = \"rel\"\n",
            "[[credential]]\nkind = \"x\"\nformat = \"opaque\"\nname = \"a\"\nextra = 1\n",
            "unknown = 1\n",
            "watch = [\"relative/\"]\n",
            "host_identity = \"nobody\"\n",
            "metrics_addr = \"localhost\"\n",
            "collector = \"http://10.1.2.3:50051\"\n",
            "tls_cert = \"/a\"\n",
        ] {
            assert!(ConfigFile::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_line() {
        let e = ConfigFile::parse("stats_interval = 5\nwatch = [\"/ok/\"]\nwatch = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
        let e = ConfigFile::parse("stats_interval = 5\nunknown_key = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("unknown_key"), "{e}");
        let e = format!(
            "{:#}",
            ConfigFile::parse("# c\n\nwatch_name = [\"a/b\"]\n").unwrap_err()
        );
        assert!(e.contains("line 3: `watch_name`"), "{e}");
    }

    /// file < environment < flag.
    #[test]
    fn precedence() {
        let f = ConfigFile::parse(
            "stats_interval = 3\nspool = \"/from/file\"\nstore = \"/store/file\"\n\
             watch = [\"/file/\"]\nring_mib = 16\n",
        )
        .unwrap();
        let parse = |argv: &[&str]| {
            let m = crate::cli::Cli::command().get_matches_from(argv);
            let cli = crate::cli::Cli::from_arg_matches(&m).unwrap();
            let crate::cli::Command::Run(mut args) = cli.command else {
                panic!("run")
            };
            f.apply(&mut args, m.subcommand_matches("run").unwrap())
                .unwrap();
            args
        };
        let a = parse(&["nhi-sensor", "run"]);
        assert_eq!(a.stats_interval, 3);
        assert_eq!(a.export.spool, PathBuf::from("/from/file"));
        assert_eq!(a.watch, [PathBuf::from("/file/")]);
        assert_eq!(a.kernel.ring_mib, 16);
        let a = parse(&[
            "nhi-sensor",
            "run",
            "--stats-interval",
            "7",
            "--watch",
            "/flag/",
        ]);
        assert_eq!(a.stats_interval, 7);
        assert_eq!(a.watch, [PathBuf::from("/flag/")]);
        assert_eq!(a.store, PathBuf::from("/store/file"));
        // SAFETY: this test is the only user of the variable.
        unsafe { std::env::set_var("NHI_SENSOR_ID", "from-env") };
        let f2 = ConfigFile::parse("sensor_id = \"from-file\"\n").unwrap();
        let m = crate::cli::Cli::command().get_matches_from(["nhi-sensor", "run"]);
        let crate::cli::Command::Run(mut args) =
            crate::cli::Cli::from_arg_matches(&m).unwrap().command
        else {
            panic!("run")
        };
        f2.apply(&mut args, m.subcommand_matches("run").unwrap())
            .unwrap();
        unsafe { std::env::remove_var("NHI_SENSOR_ID") };
        assert_eq!(args.export.sensor_id.as_deref(), Some("from-env"));
    }
}
