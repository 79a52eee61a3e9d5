//! Compiles the protobuf schemas in `proto/` with protox (a pure-Rust `.proto` compiler) and
//! prost-build, so that no `protoc` is needed on any build machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["smeltwatch/v1/smeltwatch.proto", "sparkplug_b.proto"];
    for f in files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
