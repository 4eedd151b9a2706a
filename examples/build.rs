//! Generates the gRPC example's code from `proto/payments.proto`, with
//! protox (a protobuf compiler in Rust: no `protoc` on the machine) feeding
//! its file descriptors to tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/payments.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
