//! Generates the Rust code of the `nhisensor.v1` protobuf package and its file descriptor set.
//!
//! `protoc` and the well-known types (`google/protobuf/*.proto`) come from
//! `protoc-bin-vendored`, so building needs no system protobuf installation.

use std::{env, error::Error, path::PathBuf};

/// Root of the proto tree: files are named `nhisensor/v1/*.proto` relative to it, as their
/// `import` statements expect.
const PROTO_ROOT: &str = "nhisensor";

const PROTOS: &[&str] = &["nhisensor/v1/events.proto", "nhisensor/v1/collector.proto"];

/// Written to `OUT_DIR`; `tonic::include_file_descriptor_set!` appends the `.bin`.
const DESCRIPTOR_SET: &str = "nhisensor_v1_descriptor.bin";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?);
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;

    // Point prost-build at the vendored protoc through its config rather than the PROTOC
    // environment variable: same effect, without mutating the build script's environment.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);

    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| manifest_dir.join(p)).collect();
    let includes = [manifest_dir.clone(), well_known];

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(out_dir.join(DESCRIPTOR_SET))
        // Lints of the generated code are silenced where it is included, in `src/lib.rs`.
        .compile_with_config(config, &protos, &includes)?;
    Ok(())
}
