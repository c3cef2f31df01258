//! The README's demo works: `examples/c/demo.sh` runs `examples/c/http_server.c` (built here
//! against the debug library), sends 8 requests and every worker answers in turn. And the
//! example survives the clients people copy it for meet: ones that close before the answer,
//! ones that never send a request.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Builds `examples/c/http_server.c` once per run (the tests run it at the same time, and
/// rewriting a binary being executed fails with ETXTBSY).
fn http_server() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = common::c_out_dir("examples").join("http_server");
            common::compile_c(&[common::manifest().join("examples/c/http_server.c")], &out);
            out
        })
        .clone()
}

#[test]
fn the_demo_serves_http_from_every_worker() {
    let root = common::manifest();
    let out = http_server();
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

/// The example server with one FORK-mode worker on a free port, in its own process group;
/// its stdout lines arrive on a channel.
struct Server {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    port: u16,
    sanitizer: Option<common::Sanitizer>,
}

impl Server {
    fn start(name: &str) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new(http_server());
        cmd.args([&port.to_string(), "1", "fork", "rr"]).stdin(Stdio::null()).stdout(Stdio::piped());
        let sanitizer = common::Sanitizer::attach(&mut cmd, name);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("start http_server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server { child, lines, seen: Vec::new(), port, sanitizer };
        server.wait_for("is ready", Duration::from_secs(20));
        server
    }

    /// Waits for a stdout line containing `what`; panics after `limit`.
    fn wait_for(&mut self, what: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            if let Some(l) = self.seen.iter().find(|l| l.contains(what)) {
                return l.clone();
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line with '{what}' within {limit:?}; output:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// SIGTERM; the server must stop with exit code 0 within 20 s. Returns its whole output.
    fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < end, "http_server did not stop within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        let out = self.seen.join("\n");
        assert!(status.success(), "http_server ended with {status}; output:\n{out}");
        let reports = self.sanitizer.take().map(|s| s.reports()).unwrap_or_default();
        assert!(reports.is_empty(), "the sanitizers reported errors:\n{reports}");
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Whatever happened, nothing of the test survives it.
        // SAFETY: kill(2) on the server's own process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 request; the body of the answer, within `limit`.
fn get(port: u16, limit: Duration) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(limit)).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap_or_else(|e| panic!("no answer within {limit:?}: {e}"));
    answer.split("\r\n\r\n").nth(1).unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}")).to_string()
}

/// The worker's exits the primary reported ("primary: worker N exited (code C, signal S)").
fn exits(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.contains(" exited (")).collect()
}

#[test]
fn clients_that_close_before_the_answer_do_not_kill_the_example_s_worker() {
    let server = Server::start("examples-early-close");
    let first = get(server.port, Duration::from_secs(10));
    assert!(first.starts_with("Hello from worker 1 (pid"), "{first}");
    // Each asks and leaves at once: the worker's answer meets a closed socket (EPIPE), which
    // kills a process that does not ignore SIGPIPE.
    for _ in 0..50 {
        let mut c = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        c.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    }
    let later = get(server.port, Duration::from_secs(20));
    assert_eq!(later, first, "the same worker (id and pid) answers after 50 early closes");
    let out = server.stop();
    assert!(!out.contains("signal 13"), "a worker died of SIGPIPE:\n{out}");
    assert_eq!(exits(&out), ["primary: worker 1 exited (code 0, signal 0)"], "only the final, clean exit:\n{out}");
}

#[test]
fn an_idle_client_holds_the_example_s_worker_only_until_its_timeout() {
    let server = Server::start("examples-idle");
    let first = get(server.port, Duration::from_secs(10));
    // Connects and sends nothing: the only worker reads it first.
    let mut idle = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    let t0 = Instant::now();
    let later = get(server.port, Duration::from_secs(30));
    let waited = t0.elapsed();
    assert_eq!(later, first, "the same worker answers once the idle client timed out");
    // The idle connection was closed by the worker, unanswered.
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).expect("EOF on the idle connection"), 0, "no answer: {rest:?}");
    let out = server.stop();
    assert_eq!(exits(&out), ["primary: worker 1 exited (code 0, signal 0)"], "only the final, clean exit:\n{out}");
    eprintln!("the request behind an idle client was answered after {waited:?}");
}

#[test]
fn a_client_that_trickles_its_request_holds_the_example_s_worker_only_until_its_deadline() {
    let server = Server::start("examples-trickle");
    let first = get(server.port, Duration::from_secs(10));
    // A byte every 500 ms, never the end of the head: a per-read timeout would wait for ever.
    let mut slow = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let trickler = std::thread::spawn(move || {
        let mut sent = 0;
        while stop_rx.recv_timeout(Duration::from_millis(500)).is_err() && sent < 60 {
            if slow.write_all(b"G").is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let t0 = Instant::now();
    let later = get(server.port, Duration::from_secs(30));
    let waited = t0.elapsed();
    stop_tx.send(()).ok();
    let sent = trickler.join().unwrap();
    assert_eq!(later, first, "the same worker answers once the slow client's deadline passed");
    let out = server.stop();
    assert_eq!(exits(&out), ["primary: worker 1 exited (code 0, signal 0)"], "only the final, clean exit:\n{out}");
    eprintln!("the request behind a trickling client ({sent} bytes sent) was answered after {waited:?}");
}
