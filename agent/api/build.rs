//! Compiles the protobufs with protox (pure Rust, no system protoc) and
//! writes the descriptor set that the agent serves through reflection.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/debvisor/node/v1/node.proto",
        "proto/debvisor/units/v1/units.proto",
        "proto/debvisor/audit/v1/audit.proto",
        "proto/debvisor/health/v1/health.proto",
        "proto/debvisor/config/v1/config.proto",
        "proto/debvisor/update/v1/update.proto",
        "proto/debvisor/provision/v1/provision.proto",
        "proto/debvisor/vm/v1/vm.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("debvisor_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Clients print answers as JSON (`debvisorctl --json`).
        .type_attribute(".debvisor", "#[derive(serde::Serialize)]")
        .type_attribute(".debvisor", "#[serde(rename_all = \"snake_case\")]")
        .compile_fds(fds)?;
    Ok(())
}
