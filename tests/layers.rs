//! The crate's layers have no circles: a module may name (`crate::x`) only modules of its own
//! layer or of a lower one. From the top:
//!
//! ffi -> runtime -> primary (and fuzzing, which drives it) -> worker -> ipc/net/loop -> sys
//!
//! with `config` (plain data), `error`, `sync`, `logging` and `requests` in the bottom layer
//! beside `sys`. `primary` sits over `worker` because the primary prepares what a worker
//! starts with (`worker::env`); the worker never reaches the supervisor. A new top-level
//! module fails this test until it is given a layer below.

use std::path::Path;

/// Each top-level module of src/ and its layer (higher imports lower).
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("sync", 0),
    ("config", 0),
    ("sys", 0),
    ("logging", 0),
    ("requests", 0),
    ("ipc", 1),
    ("net", 1),
    ("event_loop", 1),
    ("event", 1),
    ("signals", 1),
    ("shared", 1),
    ("threads", 1),
    ("worker", 2),
    ("child", 2),
    ("sideloop", 3),
    ("primary", 3),
    ("fuzzing", 3),
    ("runtime", 4),
    ("ffi", 5),
];

/// Modules of the bottom layer that may name no other module but these (plain data).
const CONFIG_MAY_USE: &[&str] = &["error"];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, l)| l)
}

/// The top-level module a file under src/ belongs to (None: lib.rs, the root).
fn owner(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_string())
}

/// Every module named by `crate::NAME` or inside `use crate::{A, B::..}` in `code`, skipping
/// comment lines.
fn named_modules(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_group = false;
    for (i, line) in code.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                in_group = !group.contains('}');
                out.extend(group_heads(group).into_iter().map(|m| (i + 1, m)));
            } else {
                out.push((i + 1, ident(rest)));
            }
        }
        if in_group && !line.contains("crate::") {
            out.extend(group_heads(line).into_iter().map(|m| (i + 1, m)));
            if line.contains('}') {
                in_group = false;
            }
        }
    }
    out
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// The first path segment of each item of a `{a::b, c}` group (nested groups skipped).
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut at_item = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item = true,
            c if at_item && depth == 0 && (c.is_ascii_alphabetic() || c == '_') => {
                heads.push(ident(&s[i..]));
                at_item = false;
            }
            _ => {}
        }
    }
    heads
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The items lib.rs re-exports at the crate root (`pub use error::{Error, Result}`), each with
/// the module it comes from: `crate::Result` names `error`.
fn root_reexports(src: &Path) -> Vec<(String, String)> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let mut out = Vec::new();
    for line in lib.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else { continue };
        let module = ident(rest);
        let items = rest.rsplit_once('{').map_or(rest.rsplit("::").next().unwrap_or(""), |(_, g)| g);
        for item in items.trim_end_matches([';', '}']).split(',') {
            let name = item.rsplit(" as ").next().unwrap_or("").trim();
            let name = name.rsplit("::").next().unwrap_or("").trim_end_matches(';');
            out.push((name.to_string(), module.clone()));
        }
    }
    out
}

/// The violations in the tree: (file:line, what).
fn violations(src: &Path) -> Vec<String> {
    let roots = root_reexports(src);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let Some(from) = owner(rel) else { continue };
        let Some(from_layer) = layer(&from) else {
            bad.push(format!("src/{}: module `{from}` has no layer in tests/layers.rs", rel.display()));
            continue;
        };
        let code = std::fs::read_to_string(&file).unwrap();
        for (line, to) in named_modules(&code) {
            let to = roots.iter().find(|(item, _)| *item == to).map_or(to, |(_, m)| m.clone());
            if to == from || to.is_empty() {
                continue;
            }
            let at = format!("src/{}:{line}", rel.display());
            match layer(&to) {
                None => bad.push(format!("{at}: `crate::{to}` names a module with no layer in tests/layers.rs")),
                Some(l) if l > from_layer => {
                    bad.push(format!("{at}: `{from}` (layer {from_layer}) imports `{to}` (layer {l}), a higher layer"))
                }
                Some(_) if from == "config" && !CONFIG_MAY_USE.contains(&to.as_str()) => {
                    bad.push(format!("{at}: `config` is plain data and imports only {CONFIG_MAY_USE:?}, not `{to}`"))
                }
                _ => {}
            }
        }
    }
    bad
}

#[test]
fn no_lower_layer_imports_a_higher_one() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

#[test]
fn every_module_of_src_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let rel = entry.unwrap().file_name();
        let Some(module) = owner(Path::new(&rel)) else { continue };
        assert!(layer(&module).is_some(), "src/{module} has no layer in tests/layers.rs");
    }
}

/// The check finds what it must: a lower module naming a higher one in each of the forms
/// (path, `use` line, group on one line and over several).
#[test]
fn the_check_catches_each_form() {
    let dir = std::env::temp_dir().join(format!("rcluster-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("net")).unwrap();
    std::fs::write(dir.join("config.rs"), "use crate::error::Result;\nfn f() { crate::net::x(); }\n").unwrap();
    std::fs::write(dir.join("sys.rs"), "use crate::{error::Error, worker::env};\n").unwrap();
    std::fs::write(dir.join("net/mod.rs"), "use crate::{\n    error::Error,\n    primary::X,\n};\n// crate::runtime\n")
        .unwrap();
    std::fs::write(dir.join("ipc.rs"), "use crate::sys;\nuse crate::config::Limits;\n").unwrap();
    std::fs::write(dir.join("mystery.rs"), "").unwrap();
    std::fs::write(dir.join("lib.rs"), "pub use primary::workers::{WorkerInfo, WorkerState};\n").unwrap();
    std::fs::write(dir.join("event.rs"), "use crate::WorkerInfo;\n").unwrap();
    let bad = violations(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let has = |s: &str| bad.iter().any(|b| b.contains(s));
    assert!(has("src/config.rs:2: `config` (layer 0) imports `net`"), "{bad:?}");
    assert!(has("src/sys.rs:1: `sys` (layer 0) imports `worker`"), "{bad:?}");
    assert!(has("src/net/mod.rs:3: `net` (layer 1) imports `primary`"), "{bad:?}");
    assert!(has("module `mystery` has no layer"), "{bad:?}");
    assert!(has("src/event.rs:1: `event` (layer 1) imports `primary`"), "{bad:?}");
    assert!(!has("runtime"), "a comment is not an import: {bad:?}");
    assert!(!has("ipc.rs"), "{bad:?}");
    assert_eq!(bad.len(), 5, "{bad:?}");
}
