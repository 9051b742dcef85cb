//! Generates the gRPC client from the crate's own copy of the proto at build time.
//!
//! The proto is read from `proto/` inside the crate, never from the repository
//! around it, so the packaged crate (`cargo package`, crates.io, a git or path
//! dependency) builds on its own. The copy is kept equal to the repository's
//! `proto/` by `make proto` (which refreshes it) and `make check` (which fails
//! when they differ).
//!
//! protoc comes from the `protoc-bin-vendored` crate (Google's release binaries),
//! so a fresh machine needs no system package; `PROTOC` in the environment
//! overrides it (e.g. on a platform the crate has no binary for).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest.join("proto");
    let proto = proto_root.join("turnstore/v1/turnstore.proto");
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-env-changed=PROTOC");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&[proto], &[proto_root])?;
    Ok(())
}
