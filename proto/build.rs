//! Generates the rllr.v1 stubs with the vendored protoc (no system protoc needed), plus the file
//! descriptor set that gRPC reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("rllr_descriptor.bin"))
        // JSON for the HTTP front: proto3 semantics (every field optional, defaults when absent),
        // the proto's snake_case names, unknown fields refused so typos are errors.
        .message_attribute(
            ".",
            "#[cfg_attr(feature = \"json\", derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema))]\n#[cfg_attr(feature = \"json\", serde(default, deny_unknown_fields))]",
        )
        .enum_attribute(
            ".",
            "#[cfg_attr(feature = \"json\", derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema))]\n#[cfg_attr(feature = \"json\", serde(rename_all = \"snake_case\"))]",
        )
        .compile_protos(&["rllr/v1/rllr.proto"], &["."])?;
    println!("cargo:rerun-if-changed=rllr/v1/rllr.proto");
    Ok(())
}
