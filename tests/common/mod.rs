//! Shared by the integration tests that build C against the library: where `librcluster.so`
//! is (built here if `cargo test` has not built it: it only builds the rlib), and how C is
//! compiled (`-Wall -Wextra -Werror`, against `include/` only).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The crate root.
pub fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile> with a fresh `librcluster.so` in it.
pub fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf();
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--lib", "--quiet"]).current_dir(manifest());
        if dir.ends_with("release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo build --lib");
        assert!(status.success(), "cargo build --lib failed");
        assert!(dir.join("librcluster.so").exists(), "librcluster.so not in {}", dir.display());
        dir
    })
}

/// Compiles C sources into `out`, linked to librcluster with an rpath; panics on failure.
pub fn compile_c(sources: &[PathBuf], out: &Path) {
    let lib = lib_dir();
    std::fs::create_dir_all(out.parent().expect("output dir")).expect("create the output dir");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(manifest().join("include"))
        .arg("-I")
        .arg(manifest().join("ffi-tests"))
        .args(sources)
        .arg("-o")
        .arg(out)
        .arg("-L")
        .arg(lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lrcluster", "-lpthread"])
        .status()
        .unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(status.success(), "compiling {sources:?} failed");
}
