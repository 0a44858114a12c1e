//! Compiles the .proto files with the pure-Rust `protox` (no system protoc) and generates the
//! prost messages and tonic services.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/registry.proto", "proto/node.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    // The messages that carry an MPC step's megabytes hold them as `Bytes`: decoding slices
    // the received buffer instead of copying it.
    let mut config = tonic_prost_build::configure();
    for message in [
        "SessionRequest",
        "MpcInput",
        "MpcAhead",
        "PairFrame",
        "PairStep",
    ] {
        config = config.bytes(format!(".unfed.node.v1.{message}"));
    }
    config.compile_fds(fds)?;
    Ok(())
}
