//! Generates the etcd client (crates/bench/proto/etcd_kv.proto) with the same
//! tonic/prost build as the router's own API, so the comparison adds no second
//! gRPC stack.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/etcd_kv.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure().build_server(false).compile_protos(&[proto], &["proto"])?;
    Ok(())
}
