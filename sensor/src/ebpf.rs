//! The embedded eBPF object and how it is loaded: offsets and our pid as load-time globals,
//! map sizes from the command line.

use anyhow::{Context as _, bail};
use aya::{Ebpf, EbpfLoader};
use sensor_common::KernelOffsets;

/// The object built by `build.rs` from `sensor-ebpf`, embedded so the binary is self-contained.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nhi-sensor-ebpf"));

pub struct LoadOptions<'a> {
    pub offsets: &'a KernelOffsets,
    pub ring_bytes: u32,
}

/// Creates the maps and parses the programs; programs are loaded (verified) one by one by
/// [`crate::hooks`].
pub fn load(opts: &LoadOptions<'_>) -> anyhow::Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!(
            "this nhi-sensor binary carries no eBPF object (it was built with AYA_BUILD_SKIP=1); \
             rebuild it with `cargo xtask build`"
        );
    }
    if !opts.ring_bytes.is_power_of_two() || opts.ring_bytes < 4096 {
        bail!(
            "ring buffer size {} bytes is not a power of two of at least one page",
            opts.ring_bytes
        );
    }
    raise_memlock();
    let tgid = std::process::id();
    EbpfLoader::new()
        .override_global("OFFSETS", opts.offsets, true)
        .override_global("SENSOR_TGID", &tgid, true)
        .map_max_entries("EVENTS", opts.ring_bytes)
        .load(OBJECT)
        .context("creating the eBPF maps (is this process root or does it hold CAP_BPF?)")
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK. Newer ones charge the cgroup, and
/// raising the limit needs CAP_SYS_RESOURCE, which a least-privilege deployment does not hold:
/// failing here is a warning, never fatal.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11 (BPF memory is charged to the cgroup)"
        );
    }
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

    /// Calls to `memset`/`memcpy`/... are BPF global functions taking pointers, which kernels
    /// before ~6.6 refuse to load ("reg type unsupported for arg#0 function memset"): the
    /// programs must not contain any (see `zero_words` in sensor-ebpf).
    #[test]
    fn programs_call_no_memory_builtins() {
        if super::OBJECT.is_empty() {
            panic!("no eBPF object embedded (built with AYA_BUILD_SKIP=1?)");
        }
        let file = object::File::parse(super::OBJECT).expect("parsing the eBPF object");
        let mut calls = Vec::new();
        let mut seen = 0;
        for section in file.sections() {
            for (_, reloc) in section.relocations() {
                seen += 1;
                if let RelocationTarget::Symbol(idx) = reloc.target()
                    && let Ok(sym) = file.symbol_by_index(idx)
                    && let Ok(name) = sym.name()
                    && ["memset", "memcpy", "memmove", "memcmp", "bcmp"].contains(&name)
                {
                    calls.push(format!("{} -> {name}", section.name().unwrap_or("?")));
                }
            }
        }
        // Map references are relocations too: none seen would mean the scan itself is broken.
        assert!(
            seen > 100,
            "only {seen} relocations found: is this the programs' object?"
        );
        assert!(calls.is_empty(), "calls to memory builtins: {calls:?}");
    }
}
