//! `make install` into a temporary prefix gives a library a C program builds against with
//! `pkg-config --cflags --libs rcluster` only, and whose version matches the header's.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn make_install_and_pkg_config_build_a_program() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let prefix = std::env::temp_dir().join(format!("rcluster-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    let status = Command::new("make")
        .current_dir(&root)
        .args(["-s", "install", "PROFILE=debug"])
        .arg(format!("PREFIX={}", prefix.display()))
        .status()
        .expect("run make");
    assert!(status.success(), "make install failed");
    let lib = prefix.join("lib");
    for name in ["librcluster.so", "librcluster.so.1", "librcluster.a", "pkgconfig/rcluster.pc"] {
        assert!(lib.join(name).exists(), "{name} installed");
    }
    assert!(prefix.join("include/rcluster.h").exists());

    let src = prefix.join("version.c");
    std::fs::write(
        &src,
        r#"#include <rcluster.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    printf("%s %s\n", cluster_version(), RCLUSTER_VERSION_STRING);
    return strcmp(cluster_version(), RCLUSTER_VERSION_STRING) == 0 && cluster_is_primary() ? 0 : 1;
}
"#,
    )
    .unwrap();
    let pkg = Command::new("pkg-config")
        .args(["--cflags", "--libs", "rcluster"])
        .env("PKG_CONFIG_PATH", lib.join("pkgconfig"))
        .output()
        .expect("run pkg-config");
    assert!(pkg.status.success(), "pkg-config finds rcluster.pc");
    let flags = String::from_utf8(pkg.stdout).unwrap();
    let exe = prefix.join("version");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(cc)
        .args(["-Wall", "-Wextra", "-Werror"])
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .args(flags.split_whitespace())
        .status()
        .expect("run cc");
    assert!(status.success(), "builds with pkg-config's flags only ({flags})");
    let out = Command::new(&exe).env("LD_LIBRARY_PATH", &lib).output().expect("run the program");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cluster_version() matches RCLUSTER_VERSION_STRING: {text}");
    assert_eq!(text.trim(), format!("{0} {0}", env!("CARGO_PKG_VERSION")));
    std::fs::remove_dir_all(&prefix).ok();
}
