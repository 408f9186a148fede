//! Generates the tonic/prost code for `proto/interop_router/v1/*.proto` and a
//! file descriptor set for gRPC server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["provider.proto", "admin.proto", "peer.proto", "media.proto", "federation.proto"]
        .map(|p| format!("../../proto/interop_router/v1/{p}"));
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .bytes(".")
        .file_descriptor_set_path(out_dir.join("interop_router_v1_descriptor.bin"))
        .compile_protos(&protos, &["../../proto".to_string()])?;
    Ok(())
}
