//! Drift test: the checked-in generated code equals what the .proto files generate.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn generated_code_is_current() -> Result<(), Box<dyn std::error::Error>> {
    let root = workspace_root();
    let protos = [
        root.join("proto/portolan/v1/ingest.proto"),
        root.join("proto/portolan/v1/query.proto"),
        root.join("proto/portolan/v1/enroll.proto"),
    ];
    let out = tempfile::tempdir()?;
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // The encoded descriptors serve gRPC reflection (grpcurl works without .proto files).
    config.file_descriptor_set_path(out.path().join("portolan.v1.bin"));
    tonic_prost_build::configure()
        .codec_path("crate::codec::SmallBufferCodec")
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_with_config(config, &protos, &[root.join("proto")])?;

    let descriptors = std::fs::read(out.path().join("portolan.v1.bin"))?;
    let descriptors_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/generated/portolan.v1.bin");
    if std::fs::read(&descriptors_path).unwrap_or_default() != descriptors {
        if std::env::var_os("PORTOLAN_BLESS").is_some() {
            std::fs::write(&descriptors_path, &descriptors)?;
        } else {
            return Err(format!(
                "{} is out of date with proto/: run `PORTOLAN_BLESS=1 cargo test -p portolan-proto --test generated` and commit the result",
                descriptors_path.display()
            )
            .into());
        }
    }
    let generated = std::fs::read_to_string(out.path().join("portolan.v1.rs"))?;
    let checked_in_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/generated/portolan.v1.rs");
    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
    if generated != checked_in {
        if std::env::var_os("PORTOLAN_BLESS").is_some() {
            std::fs::write(&checked_in_path, generated)?;
            return Ok(());
        }
        return Err(format!(
            "{} is out of date with proto/: run `PORTOLAN_BLESS=1 cargo test -p portolan-proto --test generated` and commit the result",
            checked_in_path.display()
        )
        .into());
    }
    Ok(())
}
