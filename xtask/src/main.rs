//! Project automation: `cargo xtask <command>`. Every command that needs the eBPF toolchain runs
//! `setup` first, so the README's two commands work on a fresh machine.

mod bench;
mod deploy;
mod kernels;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "nhi-sensor project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain (nightly rust-src, LLVM 22, bpf-linker) and the test scripts'
    /// Python environment (`target/pyenv`). Idempotent.
    Setup,
    /// Build the release `nhi-sensor` binary (eBPF object embedded).
    Build,
    /// Build, then run the sensor as root, printing events as JSON lines. Extra arguments go to
    /// `nhi-sensor run` (default: `--format json`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Everything CI checks: formatting, clippy (host and eBPF crates), unit tests, the
    /// integration tests that load the real programs into the running kernel and into QEMU
    /// kernels, the deploy checks and the .deb install test, the Kafka test, and a benchmark
    /// smoke run (needs root). With --filter, only the matching integration tests.
    Test {
        /// Only run the integration tests whose name contains this string.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Formatting and clippy only.
    Lint,
    /// Write a TEST PKI (a CA; collector, sensor and subscriber certificates; an unrelated CA and
    /// a client certificate it signed) for local use and the tests. Idempotent. Not for
    /// production: bring your own PKI (e.g. cert-manager, SPIRE).
    Certs {
        /// Directory to write to (default: `target/certs` in the workspace).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The integration suite on the host kernel and, under QEMU, on every kernel of the matrix
    /// (each with the preferred hooks and with the fallbacks). One line per kernel; exits 0 only
    /// if every kernel passed.
    TestKernels {
        /// Only run the integration tests whose name contains this string.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Overhead benchmark: each workload without and with the sensor, interleaved; saturation,
    /// footprint and per-program costs. Writes `report.json` and `REPORT.md`. Never fails on a
    /// number, only when the harness breaks. Needs root.
    Bench {
        /// One short round per workload (seconds, not minutes): checks the harness (CI).
        #[arg(long)]
        smoke: bool,
        /// Report directory (default: `bench/` in the workspace).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Build the tools only the last test stages need (cargo-deb, tansu) when absent; `test`
    /// runs this in the background.
    #[command(hide = true)]
    TestTools,
    /// The Kafka sink's test against a real Kafka-protocol broker (builds tansu once, ~20 min).
    TestKafka,
    /// deploy-check, then the .deb built and installed (`dpkg -i`) and checked here.
    DeployCi,
    /// `deploy-check` and `deb` (deploy/: manifests, units, Debian package).
    #[command(flatten)]
    Deploy(deploy::Cmd),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let root = workspace_root();
    std::env::set_current_dir(&root).context("entering the workspace root")?;
    match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Build => {
            setup::setup()?;
            build_release()
        }
        Cmd::Run { args } => {
            setup::setup()?;
            build_release()?;
            let args = if args.is_empty() {
                vec!["--format".to_string(), "json".to_string()]
            } else {
                args
            };
            let bin = root.join("target/release/nhi-sensor");
            eprintln!("xtask: running {} run {}", bin.display(), args.join(" "));
            run(Command::new(bin).arg("run").args(args))
        }
        Cmd::Test { filter } => {
            setup::setup()?;
            let tools_log = root.join("target/test-tools.log");
            // Only a full run needs them (a filtered run is a developer's quick loop).
            let tools = match filter {
                None => Some(setup::start_test_tools(&tools_log)?),
                Some(_) => None,
            };
            lint()?;
            unit_tests()?;
            build_release()?;
            // A failing stage does not stop the later ones: one run reports everything.
            let mut failed = Vec::new();
            let mut stage = |name: &str, result: anyhow::Result<()>| {
                if let Err(e) = result {
                    eprintln!("xtask: {name} FAILED: {e:#}");
                    failed.push(name.to_string());
                }
            };
            stage("kernel matrix", matrix(&root, filter.as_deref()));
            if let Some(tools) = tools {
                match setup::finish_test_tools(tools, &tools_log) {
                    Ok(()) => {
                        stage("deploy", deploy::ci(&root));
                        stage("kafka", kafka_test());
                    }
                    Err(e) => stage("test tools", Err(e)),
                }
                stage(
                    "bench smoke",
                    bench::run(&root, &root.join("target/bench-smoke"), true),
                );
            }
            if !failed.is_empty() {
                bail!("failed stages: {}", failed.join(", "));
            }
            println!("xtask: every stage passed");
            Ok(())
        }
        Cmd::TestTools => setup::test_tools(),
        Cmd::TestKafka => {
            setup::setup()?;
            setup::ensure_tansu()?;
            build_release()?;
            kafka_test()
        }
        Cmd::DeployCi => {
            setup::setup()?;
            build_release()?;
            deploy::ci(&root)
        }
        Cmd::TestKernels { filter } => {
            setup::setup()?;
            build_release()?;
            matrix(&root, filter.as_deref())
        }
        Cmd::Lint => {
            setup::setup()?;
            lint()
        }
        Cmd::Bench { smoke, out } => {
            setup::setup()?;
            build_release()?;
            bench::run(
                &root,
                &out.map_or_else(|| root.join("bench"), |dir| cwd.join(dir)),
                smoke,
            )
        }
        Cmd::Certs { out } => xtask::certs::generate(
            &out.map_or_else(|| root.join("target/certs"), |dir| cwd.join(dir)),
        ),
        Cmd::Deploy(cmd) => deploy::main(&root, cmd),
    }
}

/// The Kafka sink's test (needs tansu, see [`setup::ensure_tansu`]).
fn kafka_test() -> anyhow::Result<()> {
    run(cargo_test().args([
        "test",
        "-p",
        "nhi-sensor-tests",
        "--test",
        "kafka",
        "--",
        "--test-threads=1",
    ]))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn build_release() -> anyhow::Result<()> {
    run(Command::new("cargo").args(["build", "--release", "-p", "nhi-sensor"]))
}

fn lint() -> anyhow::Result<()> {
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate only builds for the BPF target, with nightly and core from source.
    run(Command::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "-p",
            "sensor-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            "target/ebpf-lint",
            "--",
            "-D",
            "warnings",
        ])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
        ))
}

/// A `cargo` command for the test suites: the tests find the Python of the test scripts
/// (`tests/py/`, installed by `setup`) in `NHI_PYTHON`.
fn cargo_test() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.env("NHI_PYTHON", xtask::venv_python(&workspace_root()));
    cmd
}

fn unit_tests() -> anyhow::Result<()> {
    run(cargo_test().args([
        "test",
        "--workspace",
        "--exclude",
        "sensor-ebpf",
        "--exclude",
        "nhi-sensor-tests",
    ]))?;
    // The Python consumers (subscriber, OCSF validator) against stand-ins.
    run(Command::new(xtask::venv_python(&workspace_root())).arg("tests/py/selftest.py"))?;
    // Actor and harness self-tests need no kernel programs.
    run(cargo_test().args([
        "test",
        "-p",
        "nhi-sensor-tests",
        "--test",
        "actor",
        "--test",
        "harness",
    ]))
}

/// The host kernel's integration run, then the QEMU matrix; prints one line per kernel.
fn matrix(root: &Path, filter: Option<&str>) -> anyhow::Result<()> {
    let host = integration_tests(filter, None)?;
    let host_fallback = integration_tests(filter, Some(kernels::FALLBACK_DISABLE))?;
    let vms = kernels::test_kernels(root, filter)?;
    println!("\nkernel matrix:");
    let mut all_ok = true;
    for r in [&host, &host_fallback].into_iter().chain(&vms) {
        all_ok &= r.ok;
        println!(
            "  {:<28} {:<16} {} passed, {} failed{}",
            r.kernel,
            r.variant,
            r.passed,
            r.failed,
            if r.ok { "" } else { "  <- FAILED" }
        );
        for w in &r.wrong_hooks {
            println!("      wrong hook: {w}");
        }
    }
    let (passed, failed) = [&host, &host_fallback]
        .into_iter()
        .chain(&vms)
        .fold((0, 0), |(p, f), r| (p + r.passed, f + r.failed));
    // The plain closing line CI reads.
    println!("matrix: {passed} passed, {failed} failed");
    if !all_ok {
        bail!("the integration suite failed on at least one kernel");
    }
    Ok(())
}

/// The kernel tests share kernel state (attached programs, cgroup hooks): one at a time.
/// `disable` forces the fallback hooks (`NHI_SENSOR_DISABLE_HOOKS`).
fn integration_tests(
    filter: Option<&str>,
    disable: Option<&str>,
) -> anyhow::Result<kernels::KernelResult> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the integration tests load eBPF programs: run `cargo xtask test` as root");
    }
    let mut cmd = cargo_test();
    cmd.args([
        "test",
        "-p",
        "nhi-sensor-tests",
        "--test",
        "kernel",
        "--test",
        "identity",
    ]);
    // The pipeline (gRPC, spool, collector, its Kafka sink) and the inventory (store
    // aggregates, DNS on cgroup ingress, which has no fallback family) do not depend on the
    // hook family: once.
    if disable.is_none() {
        cmd.args([
            "--test",
            "pipeline",
            "--test",
            "operations",
            "--test",
            "detections",
            "--test",
            "inventory",
        ]);
    }
    cmd.arg("--").arg("--test-threads=1");
    match disable {
        Some(kinds) => cmd.env("NHI_SENSOR_DISABLE_HOOKS", kinds),
        None => cmd.env_remove("NHI_SENSOR_DISABLE_HOOKS"),
    };
    if let Some(f) = filter {
        cmd.arg(f);
    }
    let (status, passed, failed) = run_counting(&mut cmd)?;
    if !status {
        eprintln!("xtask: host integration tests failed (hooks disabled: {disable:?})");
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(kernels::KernelResult {
        kernel: format!("{kernel} (host)"),
        variant: if disable.is_some() {
            "fallback hooks"
        } else {
            "preferred hooks"
        },
        passed,
        failed,
        ok: status && failed == 0 && passed > 0,
        wrong_hooks: Vec::new(),
    })
}

/// Runs a libtest command, passing its output through, and returns (success, passed, failed)
/// summed over its summary lines.
fn run_counting(cmd: &mut Command) -> anyhow::Result<(bool, u32, u32)> {
    use std::io::BufRead as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    let stdout = child.stdout.take().expect("piped");
    let (mut passed, mut failed) = (0, 0);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        // One summary line per test binary: add them up.
        if let Some((p, f)) = kernels::parse_summary(&line) {
            passed += p;
            failed += f;
        }
    }
    Ok((child.wait()?.success(), passed, failed))
}

pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub(crate) fn cmd_ok(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
