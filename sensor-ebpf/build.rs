//! The eBPF object is linked by `bpf-linker`, a binary cargo does not know about: rebuild when it
//! changes (the same approach as aya-template), and sets the linker options the programs need.
use which::which;

fn main() {
    // Keep memset/memcpy/... internal to the object instead of exporting them: exported, they
    // are BPF *global* functions, and kernels before ~6.6 refuse global functions that take
    // pointers ("reg type unsupported for arg#0 function memset"). Internal, LLVM inlines them
    // or emits static subprograms, which every kernel accepts.
    println!("cargo:rustc-link-arg-bins=--disable-memory-builtins");
    match which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
