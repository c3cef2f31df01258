//! The README's demo works: `examples/c/demo.sh` runs `examples/c/http_server.c` (built here
//! against the debug library), sends 8 requests and every worker answers in turn.

mod common;

use std::process::Command;

#[test]
fn the_demo_serves_http_from_every_worker() {
    let root = common::manifest();
    let out = common::c_out_dir("examples").join("http_server");
    common::compile_c(&[root.join("examples/c/http_server.c")], &out);
    // A port that is free now (the demo needs a fixed one to print its URL).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut demo = Command::new("bash");
    let sanitizer = common::Sanitizer::attach(&mut demo, "demo");
    let output = demo
        .arg(root.join("examples/c/demo.sh"))
        .arg(&out)
        .env("PORT", port.to_string())
        .env("DEMO_STAY", "0")
        .env("DEMO_REQUESTS", "8")
        .output()
        .expect("run demo.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "demo.sh failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let mut workers: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("request "))
        .map(|l| {
            l.split(" -> Hello from worker ").nth(1).expect("an answer names its worker").split(' ').next().unwrap()
        })
        .collect();
    assert_eq!(workers.len(), 8, "8 answers in: {stdout}");
    workers.sort();
    workers.dedup();
    assert_eq!(workers, ["1", "2", "3", "4"], "all four workers answered, round-robin");
    assert!(stdout.contains("exited (code 0, signal 0)"), "graceful stop: {stdout}");
    let reports = sanitizer.map(|s| s.reports()).unwrap_or_default();
    assert!(reports.is_empty(), "the sanitizers reported errors:\n{reports}");
}
