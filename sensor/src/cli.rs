//! The command line. Every default is explained where it is defined.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "nhi-sensor",
    version,
    about = "eBPF runtime sensor for non-human identities: which process, as whom, read which \
             credential and connected where."
)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info`, `nhi_sensor=debug`.
    /// `info` shows start-up, hook choices, drops and shutdown without per-event noise.
    #[arg(long, global = true, env = "NHI_SENSOR_LOG", default_value = "info")]
    pub log: String,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the programs, attach them and print events until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// Print which hooks this kernel offers for each job and which ones the sensor chooses.
    Check(CheckArgs),
    /// Receive events from sensors over gRPC, store them, write OCSF and serve subscribers.
    Collector(Box<crate::collector::CollectorArgs>),
    /// Query a store (the collector's, or `run`'s embedded one).
    Events(crate::collector::query::EventsArgs),
    /// The identity inventory of a store: identities, their credentials, workloads, binaries,
    /// users, hosts and destinations, with lifecycle flags (orphan, never rotated, shared).
    Inventory(crate::collector::inventory::InventoryArgs),
    /// Config file tools.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file: exit 0 and a summary when valid; otherwise the error, with its
    /// line number, and exit 1.
    Check {
        /// The TOML file (schema: README, "Config file").
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One JSON object per line (the documented event schema).
    Json,
    /// Nothing on stdout (events are only shipped).
    None,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Event output format on stdout. Default: `json` when events stay on this host (no
    /// `--collector`), `none` when they are shipped.
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,

    #[command(flatten)]
    pub export: crate::export::ExportArgs,

    /// Store directory of the embedded collector (used when no `--collector` is given):
    /// query it with `nhi-sensor events --store DIR`.
    #[arg(long, value_name = "DIR", default_value = crate::collector::DEFAULT_STORE)]
    pub store: PathBuf,

    /// Embedded collector: also write OCSF JSON lines to this file.
    #[arg(long, value_name = "FILE")]
    pub ocsf_out: Option<PathBuf>,

    /// Serve Prometheus `/metrics`, `/healthz` and `/readyz` on this address (e.g.
    /// `127.0.0.1:9464`; 9464 is the customary port of a Prometheus exporter sidecar).
    #[arg(long, value_name = "ADDR:PORT", env = "NHI_SENSOR_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// At shutdown, wait up to this many seconds for the collector to acknowledge what is
    /// spooled (the rest is shipped at the next start). 5 s covers a healthy collector's
    /// backlog without holding up a node drain.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub drain_timeout: u64,

    /// Watch files under this path prefix (repeatable). A byte prefix of the canonical absolute
    /// path: end it with `/` to mean "inside this directory".
    #[arg(long = "watch", value_name = "PATH_PREFIX")]
    pub watch: Vec<PathBuf>,

    /// Watch files by name (repeatable): an exact name (`credentials`), a name prefix (`id_*`)
    /// or a name suffix (`*.pem`).
    #[arg(long = "watch-name", value_name = "PATTERN")]
    pub watch_name: Vec<String>,

    /// Do not load the built-in credential catalogue (only `--watch`/`--watch-name` and the
    /// config file's `[[credential]]` patterns apply).
    #[arg(long)]
    pub no_default_rules: bool,

    /// Report connects to this Unix socket (repeatable), as passed to connect (no symlink
    /// resolution). Container-runtime and SPIRE agent sockets are watched by default.
    #[arg(long = "watch-socket", value_name = "PATH")]
    pub watch_socket: Vec<PathBuf>,

    /// A SPIFFE workload API socket (repeatable), e.g. the path of `SPIFFE_ENDPOINT_SOCKET`:
    /// connects to it are reported as `spiffe_workload_api` endpoints.
    #[arg(long = "spiffe-socket", value_name = "PATH")]
    pub spiffe_socket: Vec<PathBuf>,

    /// Config file (TOML) with any `run` setting and extra credential patterns; flags and
    /// environment variables override it. Schema: README, "Config file". SIGHUP reloads its
    /// watch rules.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The kubelet's root directory, where pod service-account tokens are found
    /// (`<dir>/pods/<uid>/volumes/kubernetes.io~projected/*/token`). The kubelet's own default.
    #[arg(long, value_name = "DIR", default_value = crate::identity::DEFAULT_KUBELET_ROOT)]
    pub kubelet_root: PathBuf,

    /// SPIFFE trust domain of the identities the sensor names. Kubernetes' default cluster
    /// domain, which is also what SPIRE deployments on a cluster usually use.
    #[arg(long, value_name = "TD", default_value = crate::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// How host processes are named: `unit` (systemd services by unit, others by user) or
    /// `user` (all by user). `unit` because a service is usually the unit of deployment.
    #[arg(long, value_enum, default_value_t = crate::identity::HostNaming::Unit)]
    pub host_identity: crate::identity::HostNaming,

    /// Key for the HMAC-SHA256 fingerprints of secrets; created (0600, 32 random bytes) if
    /// absent. Share one key file across the hosts of a deployment so fingerprints match.
    #[arg(long, value_name = "FILE", default_value = crate::fingerprint::DEFAULT_KEY_FILE)]
    pub fingerprint_key_file: PathBuf,

    /// Kubernetes API server address (`IP:PORT`, repeatable) classified on network events, in
    /// addition to the config file's and the node kubelet kubeconfig's.
    #[arg(long = "kube-apiserver", value_name = "IP:PORT")]
    pub kube_apiserver: Vec<String>,

    /// Vault server address (`IP:PORT` or `IP`, repeatable) classified on network events.
    #[arg(long = "vault-addr", value_name = "IP:PORT")]
    pub vault_addr: Vec<String>,

    #[command(flatten)]
    pub kernel: KernelArgs,

    /// Seconds between `sensor.stats` events on stdout; 0 prints only the final one at exit.
    /// 10 s is frequent enough to notice drops while a test or an operator watches.
    #[arg(long, default_value_t = 10)]
    pub stats_interval: u64,

    /// How long a TCP connect may wait for its outcome before it is reported as `pending`
    /// (its outcome then follows as `network.connect_result`). 2 s covers loopback and LAN
    /// handshakes; a SYN that times out takes minutes.
    #[arg(long, default_value_t = 2000)]
    pub connect_wait_ms: u64,

    /// Open dedupe window (ms): a watched file opened again by the same process, with the same
    /// flags, within this long of its last reported open is counted in the kernel instead of
    /// reported; the count follows as `file.repeats` on the next report (a summary `file.open`
    /// without `fd` once the window has passed, or when the process exits or execs). 0 reports
    /// every open. 1 s turns a process re-reading a credential in a loop into about one event
    /// a second; first opens, other processes, other flags or inodes and failed opens are
    /// always reported.
    #[arg(long, default_value_t = 1000)]
    pub open_dedupe_ms: u32,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub kernel: KernelArgs,
}

#[derive(Debug, Args, Clone)]
pub struct KernelArgs {
    /// Kernel BTF used to resolve struct offsets (the running kernel's own, by default).
    #[arg(long, default_value = crate::btf_offsets::VMLINUX_BTF)]
    pub btf: PathBuf,

    /// Hook families not to use, even where the kernel allows them (comma-separated: lsm,
    /// fentry, btf-tracepoint, raw-tracepoint, tracepoint, cgroup-sock-addr). Forces the
    /// fallbacks, e.g. to test them or to work around a kernel bug.
    #[arg(long, value_delimiter = ',', env = "NHI_SENSOR_DISABLE_HOOKS")]
    pub disable_hooks: Vec<crate::hooks::HookKind>,

    /// Ring buffer size in MiB (a power of two). 8 MiB holds ~30,000 typical events while
    /// userspace catches up.
    #[arg(long, default_value_t = 8)]
    pub ring_mib: u32,
}
