//! Compiles `proto/` with protox (no protoc) into prost/tonic code and an
//! encoded descriptor set for reflection, transcoding and OpenAPI.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", root.display());

    let files = [
        "somastack/v1/common.proto",
        "somastack/v1/options.proto",
        "somastack/v1/gateway.proto",
        "somastack/v1/tool_registry.proto",
        "somastack/v1/capsule_repo.proto",
        "somastack/v1/analytics.proto",
        "spiffe/workload.proto",
        "grpc/health/v1/health.proto",
    ];
    let mut compiler = protox::Compiler::new([&root])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(files)?;
    // The encoded set keeps custom options (google.api.http, the policy) as
    // extension fields; prost-types' structs would drop them.
    std::fs::write(
        out.join("descriptor_set.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // RPCs that later work builds answer UNIMPLEMENTED until then.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
