//! Compiles the .proto files with the pure-Rust `protox` (no system protoc) and generates the
//! prost messages and tonic services.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/registry.proto", "proto/node.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
