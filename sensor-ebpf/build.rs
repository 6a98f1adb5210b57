//! The eBPF object is linked by `bpf-linker`, a binary cargo does not know about: rebuild when it
//! changes (the same approach as aya-template).
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
