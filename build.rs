//! Generates `rcluster.h` from the C ABI in `src/ffi/` with cbindgen.
//!
//! The header is always written to `$OUT_DIR/rcluster.h`; `tests/header.rs` fails when the
//! checked-in `include/rcluster.h` differs from it. Set `RCLUSTER_UPDATE_HEADER=1` to rewrite the
//! checked-in copy (`make header`).

use std::env;
use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=RCLUSTER_UPDATE_HEADER");

    let mut config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml is readable and valid");
    // The version macros come from Cargo.toml, so the header can never disagree with it.
    let version = |part: &str| env::var(format!("CARGO_PKG_VERSION_{part}")).expect("cargo sets the version");
    let (major, minor, patch) = (version("MAJOR"), version("MINOR"), version("PATCH"));
    config.after_includes = Some(format!(
        "{}\n/** The rcluster version this header belongs to (cluster_version() gives the library's). */\n\
         #define RCLUSTER_VERSION_MAJOR {major}\n#define RCLUSTER_VERSION_MINOR {minor}\n\
         #define RCLUSTER_VERSION_PATCH {patch}\n#define RCLUSTER_VERSION_STRING \"{major}.{minor}.{patch}\"\n",
        config.after_includes.clone().unwrap_or_default().trim_end()
    ));
    // The soname follows the ABI version (RCLUSTER_ABI_VERSION): it changes exactly when a
    // contract name or signature does.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librcluster.so.{ABI_VERSION}");
    // Programs linked against the build tree (tests, examples, the Node addon) look for the
    // soname at run time: give target/<profile>/ the link an installed library has.
    if let Some(profile_dir) = out_dir.ancestors().nth(3) {
        let link = profile_dir.join(format!("librcluster.so.{ABI_VERSION}"));
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("librcluster.so", &link).ok();
        }
    }
    // Only the C ABI layer is parsed (cbindgen follows its `mod` declarations): the core's
    // own `pub` items are not part of the header.
    let builder = cbindgen::Builder::new().with_config(config).with_src(crate_dir.join("src/ffi/mod.rs"));
    let bindings = builder.generate().expect("cbindgen generates the header");
    let mut text = Vec::new();
    bindings.write(&mut text);
    let header = untypedef_worker_info(&String::from_utf8(text).expect("UTF-8 header"));
    std::fs::write(out_dir.join("rcluster.h"), &header).expect("write $OUT_DIR/rcluster.h");

    if env::var_os("RCLUSTER_UPDATE_HEADER").is_some_and(|v| v == "1") {
        std::fs::write(crate_dir.join("include/rcluster.h"), &header).expect("write include/rcluster.h");
    }
}

/// Bumped with `RCLUSTER_ABI_VERSION` in cbindgen.toml (see docs/ABI.md).
const ABI_VERSION: u32 = 1;

/// `cluster_worker_info` names both a function and a struct in the contract. C gives typedefs
/// and functions one namespace, so the struct can only be a tag: `struct cluster_worker_info`.
fn untypedef_worker_info(header: &str) -> String {
    let out = header
        .replace("typedef struct cluster_worker_info {", "struct cluster_worker_info {")
        .replace("} cluster_worker_info;", "};");
    assert!(out != header, "the cluster_worker_info typedef was not found to rewrite");
    out
}
