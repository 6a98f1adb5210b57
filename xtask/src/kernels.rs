//! `cargo xtask test-kernels`: the real integration suite on other kernels, each booted under
//! QEMU (software emulation: KVM is not available everywhere CI runs) from an initramfs that
//! holds busybox, the release sensor, the integration-test binary, the test workload and their
//! shared libraries. Results come back over the serial console.
//!
//! Each kernel runs the suite twice: with the sensor's preferred hooks, and with the preferred
//! families disabled (`NHI_SENSOR_DISABLE_HOOKS`), so every path stays tested.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::run;

/// Kernels the matrix boots: Debian's cloud kernel (6.1 LTS on bookworm), which has BTF,
/// kprobes, fentry and the BPF LSM.
const KERNEL_PACKAGES: &[&str] = &["linux-image-cloud-amd64"];
const QEMU_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "cpio"];
/// Timeouts in the test harness are multiplied by this inside the VM: TCG emulation on a
/// 2-core machine runs the suite several times slower than the host.
const TIME_SCALE: u32 = 8;
/// The hook families disabled for the "fallback" variant.
pub const FALLBACK_DISABLE: &str = "lsm,fentry,btf-tracepoint";
/// The hook each job must choose on the matrix kernels (fentry, BTF tracepoints and the BPF LSM
/// all work there) when nothing is disabled: a preferred hook that silently fails to load would
/// otherwise pass unnoticed on the fallback.
const EXPECTED_PREFERRED: &[(&str, &str)] = &[
    ("process", "btf-tracepoint"),
    ("file-open", "fentry"),
    ("file-read", "fentry"),
    ("credentials", "fentry"),
    ("connect", "cgroup-sock-addr"),
    ("dns", "cgroup-skb"),
    ("connect-return", "fentry"),
    ("tcp-outcome", "tracepoint"),
    ("accept", "fentry"),
];
/// The same with [`FALLBACK_DISABLE`].
const EXPECTED_FALLBACK: &[(&str, &str)] = &[
    ("process", "raw-tracepoint"),
    ("file-open", "tracepoint"),
    ("file-read", "tracepoint"),
    ("credentials", "tracepoint"),
    ("connect", "cgroup-sock-addr"),
    ("dns", "cgroup-skb"),
    ("connect-return", "tracepoint"),
    ("tcp-outcome", "tracepoint"),
    ("accept", "tracepoint"),
];
/// Hard limit for one boot + suite run.
const VM_TIMEOUT: Duration = Duration::from_secs(900);

pub struct Binaries {
    pub sensor: PathBuf,
    pub kernel_tests: PathBuf,
    pub actor: PathBuf,
}

/// One line of the matrix.
pub struct KernelResult {
    pub kernel: String,
    pub variant: &'static str,
    pub passed: u32,
    pub failed: u32,
    pub ok: bool,
    /// Jobs whose chosen hook was not the expected one, as "job: chose X, expected Y".
    pub wrong_hooks: Vec<String>,
}

/// Compares `nhi-sensor check` output (job header lines, then `[x] <kind> ...` for the chosen
/// candidate) with the expected (job, kind) pairs.
fn wrong_hooks(check_output: &[String], expected: &[(&str, &str)]) -> Vec<String> {
    let mut chosen: Vec<(String, String)> = Vec::new();
    let mut job = String::new();
    for line in check_output {
        if !line.starts_with(' ') {
            if let Some((name, _)) = line.split_once(" — ") {
                job = name.trim().to_string();
            }
        } else if let Some(rest) = line.trim_start().strip_prefix("[x]") {
            let kind = rest.split_whitespace().next().unwrap_or("").to_string();
            chosen.push((job.clone(), kind));
        }
    }
    expected
        .iter()
        .filter_map(|(job, kind)| {
            let got = chosen
                .iter()
                .find(|(j, _)| j == job)
                .map(|(_, k)| k.as_str());
            (got != Some(*kind))
                .then(|| format!("{job}: chose {}, expected {kind}", got.unwrap_or("nothing")))
        })
        .collect()
}

pub fn ensure_packages() -> anyhow::Result<()> {
    crate::setup::ensure_debian_packages(
        &QEMU_PACKAGES
            .iter()
            .chain(KERNEL_PACKAGES)
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )
}

/// The kernel images installed under /boot by [`KERNEL_PACKAGES`].
fn kernels() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/boot").context("listing /boot")? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("vmlinuz-")
            && version.ends_with("-cloud-amd64")
        {
            out.push((version.to_string(), entry.path()));
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("no /boot/vmlinuz-*-cloud-amd64 found after installing {KERNEL_PACKAGES:?}");
    }
    Ok(out)
}

/// Builds the binaries the VM runs and returns their paths.
pub fn build_binaries(root: &Path) -> anyhow::Result<Binaries> {
    run(Command::new("cargo").args(["build", "--release", "-p", "nhi-sensor"]))?;
    let out = Command::new("cargo")
        .args([
            "test",
            "-p",
            "nhi-sensor-tests",
            "--test",
            "kernel",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("building the integration tests")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    let mut kernel_tests = None;
    for line in out.stdout.split(|b| *b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "kernel"
            && let Some(exe) = msg["executable"].as_str()
        {
            kernel_tests = Some(PathBuf::from(exe));
        }
    }
    let kernel_tests = kernel_tests.context("cargo did not report the `kernel` test executable")?;
    let actor = root.join("target/debug/nhi-actor");
    if !actor.exists() {
        bail!("{} is missing after building the tests", actor.display());
    }
    Ok(Binaries {
        sensor: root.join("target/release/nhi-sensor"),
        kernel_tests,
        actor,
    })
}

/// The shared libraries `bin` loads, from `ldd`.
fn shared_libs(bin: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    let mut libs = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .nth(1)
            .unwrap_or(line)
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') {
            libs.insert(PathBuf::from(path));
        }
    }
    Ok(libs)
}

fn copy_into(root: &Path, src: &Path, dst_abs: &Path) -> anyhow::Result<()> {
    let dst = root.join(dst_abs.strip_prefix("/").unwrap_or(dst_abs));
    fs::create_dir_all(dst.parent().expect("absolute path has a parent"))?;
    fs::copy(src, &dst).with_context(|| format!("copying {} into the initramfs", src.display()))?;
    Ok(())
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
ip link set lo up
echo "NHI-KERNEL $(uname -r)"
echo "NHI-LSM $(cat /sys/kernel/security/lsm 2>/dev/null)"
cd /nhi
for variant in preferred fallback; do
  if [ "$variant" = fallback ]; then
    export NHI_SENSOR_DISABLE_HOOKS=@FALLBACK@
  else
    unset NHI_SENSOR_DISABLE_HOOKS
  fi
  echo "NHI-VARIANT-BEGIN $variant"
  /nhi/nhi-sensor check --log error
  NHI_SENSOR_BIN=/nhi/nhi-sensor NHI_ACTOR_BIN=/nhi/nhi-actor NHI_TIME_SCALE=@SCALE@ \
    /nhi/kernel-tests --test-threads=1 @FILTER@ 2>&1
  echo "NHI-VARIANT-END $variant $?"
done
echo "NHI-DONE"
poweroff -f
"#;

fn build_initramfs(bins: &Binaries, work: &Path, filter: Option<&str>) -> anyhow::Result<PathBuf> {
    let root = work.join("root");
    let _ = fs::remove_dir_all(&root);
    for d in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "nhi", "usr/bin",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying busybox (busybox-static)")?;
    copy_into(&root, &bins.sensor, Path::new("/nhi/nhi-sensor"))?;
    copy_into(&root, &bins.kernel_tests, Path::new("/nhi/kernel-tests"))?;
    copy_into(&root, &bins.actor, Path::new("/nhi/nhi-actor"))?;
    let mut libs = BTreeSet::new();
    for b in [&bins.sensor, &bins.kernel_tests, &bins.actor] {
        libs.extend(shared_libs(b)?);
    }
    for lib in &libs {
        let real = fs::canonicalize(lib)?;
        copy_into(&root, &real, lib)?;
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    let init = INIT
        .replace("@SCALE@", &TIME_SCALE.to_string())
        .replace("@FALLBACK@", FALLBACK_DISABLE)
        .replace("@FILTER@", filter.unwrap_or(""));
    let init_path = root.join("init");
    fs::write(&init_path, init)?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;

    let image = work.join("initramfs.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            root.display(),
            image.display()
        ))
        .status()?;
    if !status.success() {
        bail!("packing the initramfs failed");
    }
    Ok(image)
}

/// Boots `kernel` with the initramfs and parses the suite's results from the serial console.
fn boot(
    version: &str,
    kernel: &Path,
    image: &Path,
    log: &Path,
) -> anyhow::Result<Vec<KernelResult>> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(image)
        .args([
            "-append",
            // The BPF LSM must be in the active list for LSM programs to run.
            "console=ttyS0 rdinit=/init panic=-1 quiet lsm=lockdown,capability,landlock,yama,apparmor,bpf",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let mut log_file = fs::File::create(log)?;
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut results = Vec::new();
    let (mut passed, mut failed) = (0u32, 0u32);
    let mut check_lines: Vec<String> = Vec::new();
    let mut done = false;
    loop {
        let left = VM_TIMEOUT.saturating_sub(started.elapsed());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                bail!(
                    "kernel {version}: no result within {VM_TIMEOUT:?} (log: {})",
                    log.display()
                );
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        writeln!(log_file, "{line}")?;
        let line = line.trim_end_matches('\r');
        if line.starts_with("NHI-") || line.contains("CHOSEN") || line.contains("[x]") {
            eprintln!("  [{version}] {line}");
        }
        if line.starts_with("NHI-VARIANT-BEGIN") {
            check_lines.clear();
        } else if !line.starts_with("test ") && !line.starts_with('[') {
            check_lines.push(line.to_string());
        }
        if let Some((p, f)) = parse_summary(line) {
            (passed, failed) = (p, f);
        }
        if let Some(rest) = line.strip_prefix("NHI-VARIANT-END ") {
            let mut parts = rest.split_whitespace();
            let variant = match parts.next() {
                Some("preferred") => "preferred hooks",
                _ => "fallback hooks",
            };
            let code: i32 = parts.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
            let expected = if variant == "preferred hooks" {
                EXPECTED_PREFERRED
            } else {
                EXPECTED_FALLBACK
            };
            let wrong = wrong_hooks(&check_lines, expected);
            for w in &wrong {
                eprintln!("  [{version}] WRONG HOOK ({variant}): {w}");
            }
            results.push(KernelResult {
                kernel: version.to_string(),
                variant,
                passed,
                failed,
                ok: code == 0 && failed == 0 && passed > 0 && wrong.is_empty(),
                wrong_hooks: wrong,
            });
            (passed, failed) = (0, 0);
        }
        if line.starts_with("NHI-DONE") {
            done = true;
        }
    }
    let _ = child.wait();
    if !done {
        bail!(
            "kernel {version}: the VM stopped before the suite finished (log: {})",
            log.display()
        );
    }
    Ok(results)
}

/// (passed, failed) from libtest's `test result: ok. 11 passed; 0 failed; ...` line.
pub fn parse_summary(line: &str) -> Option<(u32, u32)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let num = |key: &str| -> u32 {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(key).map(str::trim))
            .and_then(|n| n.rsplit(' ').next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    };
    Some((num("passed"), num("failed")))
}

pub fn test_kernels(root: &Path, filter: Option<&str>) -> anyhow::Result<Vec<KernelResult>> {
    ensure_packages()?;
    let bins = build_binaries(root)?;
    let work = root.join("target/kernel-matrix");
    fs::create_dir_all(&work)?;
    let image = build_initramfs(&bins, &work, filter)?;
    let mut all = Vec::new();
    for (version, kernel) in kernels()? {
        eprintln!("xtask: booting {version} under QEMU (TCG)");
        let log = work.join(format!("{version}.log"));
        all.extend(boot(&version, &kernel, &image, &log)?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines_parse() {
        assert_eq!(
            parse_summary("test result: ok. 11 passed; 2 failed; 0 ignored; 0 measured"),
            Some((11, 2))
        );
        assert_eq!(parse_summary("running 3 tests"), None);
    }

    #[test]
    fn wrong_hooks_are_named() {
        let out: Vec<String> = [
            "kernel 6.1.0",
            "process — exec (required)",
            "  [x] btf-tracepoint   tp_btf ... — chosen",
            "  [ ] raw-tracepoint   raw_tp ... — not tried",
            "file-open — opens (required)",
            "  [ ] fentry           fexit do_sys_openat2 — unavailable: EPERM",
            "  [x] tracepoint       tracepoint ... — chosen",
        ]
        .map(String::from)
        .to_vec();
        let wrong = wrong_hooks(
            &out,
            &[("process", "btf-tracepoint"), ("file-open", "fentry")],
        );
        assert_eq!(
            wrong,
            vec!["file-open: chose tracepoint, expected fentry".to_string()]
        );
        assert!(wrong_hooks(&out, &[("process", "btf-tracepoint")]).is_empty());
    }
}
