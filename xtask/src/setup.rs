//! `cargo xtask setup`: installs what building the eBPF object needs on a fresh Debian machine,
//! and the Python environment of the test scripts (`target/pyenv`). Idempotent and quiet: each step checks first and only acts (and prints) when something is
//! missing.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{cmd_ok, run};

/// The toolchain the eBPF crate builds with (aya-build runs `rustup run nightly`).
const EBPF_TOOLCHAIN: &str = "nightly";
/// LLVM major version bpf-linker is built against: the one Debian ships as `llvm-22-dev`.
const LLVM_MAJOR: u32 = 22;
/// Pinned so a newcomer gets the linker CI was green with.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> anyhow::Result<()> {
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_apt_packages()?;
    ensure_bpf_linker()?;
    ensure_python_env(&crate::workspace_root())?;
    Ok(())
}

fn ensure_nightly() -> anyhow::Result<()> {
    if cmd_ok(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "--version"])) {
        return Ok(());
    }
    eprintln!("setup: installing the {EBPF_TOOLCHAIN} toolchain");
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
    ]))
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .exists()
    {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to {EBPF_TOOLCHAIN} (the eBPF crate builds core itself)");
    run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
}

/// Debian packages: LLVM for bpf-linker, and the tools the test suite uses (`bpftool` to
/// cross-check struct offsets, `iproute2` for network namespaces, `ssh-keygen` and `openssl` for
/// credential fixtures).
fn ensure_apt_packages() -> anyhow::Result<()> {
    ensure_debian_packages(&[
        format!("llvm-{LLVM_MAJOR}-dev"),
        format!("libpolly-{LLVM_MAJOR}-dev"),
        "zlib1g-dev".to_string(),
        "libzstd-dev".to_string(),
        "bpftool".to_string(),
        "iproute2".to_string(),
        // Credential fixtures in the identity tests: SSH key pairs and X.509 certificates.
        "openssh-client".to_string(),
        "openssl".to_string(),
        // The collector's Kafka sink: TLS/SASL to the brokers through librdkafka.
        "libssl-dev".to_string(),
    ])
}

/// Installs the Debian packages of `wanted` that are not installed yet (nothing, silently, when
/// all are).
pub fn ensure_debian_packages(wanted: &[String]) -> anyhow::Result<()> {
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages {missing:?}");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(missing))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if let Ok(out) = Command::new("bpf-linker").arg("--version").output()
        && out.status.success()
    {
        return Ok(());
    }
    let llvm_prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    if !Path::new(&llvm_prefix).join("bin/llvm-config").exists() {
        bail!("{llvm_prefix}/bin/llvm-config is missing after installing llvm-{LLVM_MAJOR}-dev");
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about a minute)"
    );
    run(Command::new("cargo")
        .env("LLVM_PREFIX", &llvm_prefix)
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
        ]))?;
    if !cmd_ok(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but is not on PATH (is ~/.cargo/bin on PATH?)");
    }
    Ok(())
}

/// The Kafka-compatible broker of the Kafka sink's test (`tests/tests/kafka.rs`), pinned.
const TANSU_VERSION: &str = "0.6.0";

/// Installs tansu with its SQLite storage engine (`libsql`; the default features have none)
/// unless `tansu --version` already says [`TANSU_VERSION`]. A long build, once: about 40
/// CPU-minutes (20 minutes on two idle cores).
pub fn ensure_tansu() -> anyhow::Result<()> {
    if let Ok(out) = Command::new("tansu").arg("--version").output()
        && out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains(TANSU_VERSION)
    {
        return Ok(());
    }
    eprintln!(
        "setup: building the tansu {TANSU_VERSION} Kafka broker for the Kafka sink's test (about 20 minutes)"
    );
    run(Command::new("cargo").args([
        "install",
        "tansu",
        "--version",
        TANSU_VERSION,
        "--locked",
        "--features",
        "libsql",
    ]))?;
    if !cmd_ok(Command::new("tansu").arg("--version")) {
        bail!("tansu was installed but is not on PATH (is ~/.cargo/bin on PATH?)");
    }
    Ok(())
}

/// The tools only the last stages of `cargo xtask test` need: cargo-deb (package test) and
/// tansu (Kafka test). Built on a fresh machine only (about 25 minutes of CPU together).
pub fn test_tools() -> anyhow::Result<()> {
    crate::deploy::ensure_cargo_deb()?;
    ensure_tansu()
}

/// Starts [`test_tools`] in a child `cargo xtask test-tools` at the lowest CPU priority, output
/// to `log`: it builds while the kernel tests run (they leave most of a core idle) without
/// slowing them down. Wait for it with [`finish_test_tools`] before the stages that need them.
pub fn start_test_tools(log: &Path) -> anyhow::Result<std::process::Child> {
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    Command::new("nice")
        .args(["-n", "19"])
        .arg(exe)
        .arg("test-tools")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting the background build of the test tools")
}

/// Waits for [`start_test_tools`]; on failure, shows the end of its log.
pub fn finish_test_tools(mut child: std::process::Child, log: &Path) -> anyhow::Result<()> {
    let status = child.wait().context("waiting for the test tools' build")?;
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for line in tail.into_iter().rev() {
            eprintln!("  | {line}");
        }
        bail!(
            "building the test tools failed ({status}); full log: {}",
            log.display()
        );
    }
    Ok(())
}

/// The pinned Python packages of the test scripts (`tests/py/`), relative to the workspace root.
const PY_REQUIREMENTS: &str = "tests/py/requirements.txt";
/// Inside the venv: the hash of the requirements it was installed from.
const PY_MARKER: &str = ".requirements-hash";

/// The virtual environment of the test scripts, `target/pyenv` ([`xtask::venv_python`]), with
/// the packages of `tests/py/requirements.txt`. pip only runs when that file changed since the
/// last install (a hash in the venv says which was installed).
fn ensure_python_env(root: &Path) -> anyhow::Result<()> {
    let venv = root.join(xtask::VENV_DIR);
    let python = xtask::venv_python(root);
    if !cmd_ok(Command::new(&python).args(["-c", "import sys"])) {
        create_venv(&venv)?;
    }
    let requirements = root.join(PY_REQUIREMENTS);
    let text =
        fs::read(&requirements).with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = format!("{:016x}\n", fnv1a(&text));
    let marker = venv.join(PY_MARKER);
    if fs::read_to_string(&marker).is_ok_and(|m| m == stamp) {
        return Ok(());
    }
    eprintln!(
        "setup: installing the test scripts' Python packages into {}",
        venv.display()
    );
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "-r",
        ])
        .arg(&requirements))?;
    fs::write(&marker, stamp).with_context(|| format!("writing {}", marker.display()))
}

/// `python3 -m venv` with whichever `python3` is on PATH (pyenv's, or Debian's, which needs
/// `python3-venv` for ensurepip; installed when the first attempt fails).
fn create_venv(venv: &Path) -> anyhow::Result<()> {
    eprintln!("setup: creating the Python environment {}", venv.display());
    // A venv whose interpreter is gone (e.g. its base Python was removed) cannot be repaired.
    if venv.exists() {
        fs::remove_dir_all(venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    if !cmd_ok(Command::new("python3").arg("--version")) {
        ensure_debian_packages(&["python3".to_string(), "python3-venv".to_string()])?;
    }
    if cmd_ok(Command::new("python3").args(["-m", "venv"]).arg(venv)) {
        return Ok(());
    }
    let _ = fs::remove_dir_all(venv);
    ensure_debian_packages(&["python3-venv".to_string()])?;
    run(Command::new("python3").args(["-m", "venv"]).arg(venv))
}

/// 64-bit FNV-1a: a hash that is the same on every machine and Rust version, for the marker.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
