//! Shared by the integration tests that build C against the library: where `librcluster.so`
//! is (built here if `cargo test` has not built it: it only builds the rlib), and how C is
//! compiled (`-Wall -Wextra -Werror`, against `include/` only).
//!
//! `RCLUSTER_SANITIZE=1` compiles the C programs with AddressSanitizer, LeakSanitizer and
//! UndefinedBehaviorSanitizer (into `*-sanitize` directories beside the plain builds), and
//! `Sanitizer` collects the reports of every process of a run (workers, EXEC-mode workers,
//! forked clients): any report fails the test. The library itself is not instrumented, but its
//! allocations go through ASan's malloc, so LeakSanitizer sees its leaks too.

use std::os::unix::fs::PermissionsExt;
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

/// True when `RCLUSTER_SANITIZE` asks for sanitized C programs.
pub fn sanitize() -> bool {
    std::env::var("RCLUSTER_SANITIZE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Where C programs of kind `what` ("ffi-tests", "examples") are built: beside the library,
/// in a separate directory when sanitized so the two builds never overwrite each other.
pub fn c_out_dir(what: &str) -> PathBuf {
    lib_dir().join(if sanitize() { format!("{what}-sanitize") } else { what.to_string() })
}

const SANITIZE_FLAGS: [&str; 3] =
    ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"];

/// What a sanitized run leaves behind: `target/<profile>/sanitizer-logs/<name>/` holds one
/// `asan.<pid>` file per process with an ASan or LSan report, and `stderr`, the stderr of every
/// process of the run, where UBSan writes (gcc's shared libubsan ignores `log_path` when ASan
/// is linked too).
pub struct Sanitizer {
    dir: PathBuf,
}

/// Text in stderr that means a sanitizer reported something (or could not write its report).
const STDERR_MARKERS: [&str; 4] = [": runtime error: ", "Sanitizer", "ERROR: Can't open file", "==ERROR"];

impl Sanitizer {
    /// When sanitizing: sets ASAN_OPTIONS and UBSAN_OPTIONS on `cmd` (every process it starts
    /// inherits them: workers, EXEC-mode workers, forked clients) and sends its stderr to a file,
    /// after emptying the run's directory. A caller's own *_OPTIONS come after ours and win.
    /// None (and `cmd` untouched) otherwise.
    pub fn attach(cmd: &mut Command, name: &str) -> Option<Sanitizer> {
        if !sanitize() {
            return None;
        }
        let dir = lib_dir().join("sanitizer-logs").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the sanitizer log dir");
        // Workers that drop privileges (cluster_config_set_user) write their reports here too.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).expect("chmod the log dir");
        let opts = [
            (
                "ASAN_OPTIONS",
                format!("detect_leaks=1:halt_on_error=1:abort_on_error=0:log_path={}/asan", dir.display()),
            ),
            ("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1".to_string()),
        ];
        for (var, ours) in opts {
            let value = match std::env::var(var) {
                Ok(theirs) if !theirs.is_empty() => format!("{ours}:{theirs}"),
                _ => ours,
            };
            cmd.env(var, value);
        }
        // RSS bounds mean nothing under ASan (quarantine, shadow memory): the programs skip them.
        cmd.env("RCLUSTER_TEST_SANITIZED", "1");
        let stderr = std::fs::File::create(dir.join("stderr")).expect("create the stderr file");
        cmd.stderr(stderr);
        Some(Sanitizer { dir })
    }

    /// The run's stderr (printed, so that the test harness shows it when the test fails) and
    /// every report: the ASan/LSan files, and the stderr lines that come from a sanitizer.
    /// Empty when there are none.
    pub fn reports(&self) -> String {
        let stderr = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
        eprintln!("---- stderr of the sanitized run ({}) ----\n{stderr}", self.dir.join("stderr").display());
        let mut out = String::new();
        let flagged: Vec<&str> = stderr.lines().filter(|l| STDERR_MARKERS.iter().any(|m| l.contains(m))).collect();
        if !flagged.is_empty() {
            out += &format!("==== sanitizer lines in stderr (the whole of it is above) ====\n{}\n", flagged.join("\n"));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|f| f.file_name().is_some_and(|n| n != "stderr"));
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            out += &format!("==== {} ====\n{text}\n", f.display());
        }
        out
    }
}

/// Compiles C sources into `out`, linked to librcluster with an rpath; panics on failure.
pub fn compile_c(sources: &[PathBuf], out: &Path) {
    let lib = lib_dir();
    std::fs::create_dir_all(out.parent().expect("output dir")).expect("create the output dir");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror"])
        .args(if sanitize() { &SANITIZE_FLAGS[..] } else { &[] })
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
