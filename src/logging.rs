//! Log routing. The library logs through the `log` crate and never installs a logger by
//! itself; a host asks for one: env_logger on stderr (`RCLUSTER_LOG=debug`), or a callback that
//! hands records to Python's `logging`, Node's `console`, or a C program.

use std::sync::RwLock;

use crate::error::{fail, Code, Result};
use crate::sync;

/// A host's log sink: level (1 = error .. 5 = trace), target, message.
pub type LogFn = Box<dyn Fn(log::Level, &str, &str) + Send + Sync>;

enum Sink {
    None,
    Env(env_logger::Logger),
    Callback(LogFn),
}

struct Router {
    sink: RwLock<Sink>,
}

static ROUTER: Router = Router { sink: RwLock::new(Sink::None) };

thread_local! {
    /// This thread is inside the host's log callback, which holds the sink (read-locked):
    /// replacing the sink from there would wait for itself, and a record logged from there
    /// would read-lock it again (which waits behind a thread that wants to write).
    static IN_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Refuses a change of the sink from inside the log callback (`State`, not a deadlock).
fn not_in_callback(what: &str) -> Result<()> {
    if IN_CALLBACK.with(std::cell::Cell::get) {
        return fail(
            Code::State,
            format!("{what} was called from inside the log callback, which must not change where logs go"),
        );
    }
    Ok(())
}

impl log::Log for Router {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        match &*sync::read(&self.sink) {
            Sink::None => false,
            Sink::Env(l) => l.enabled(metadata),
            Sink::Callback(_) => true,
        }
    }

    fn log(&self, record: &log::Record<'_>) {
        match &*sync::read(&self.sink) {
            Sink::None => {}
            Sink::Env(l) => l.log(record),
            Sink::Callback(f) => {
                // A record the callback itself causes (through a call into rcluster) is dropped.
                if IN_CALLBACK.with(|c| c.replace(true)) {
                    return;
                }
                struct Leave;
                impl Drop for Leave {
                    fn drop(&mut self) {
                        IN_CALLBACK.with(|c| c.set(false));
                    }
                }
                let _leave = Leave;
                f(record.level(), record.target(), &record.args().to_string());
            }
        }
    }

    fn flush(&self) {
        if let Sink::Env(l) = &*sync::read(&self.sink) {
            l.flush();
        }
    }
}

fn install() -> Result<()> {
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *INSTALLED.get_or_init(|| log::set_logger(&ROUTER).is_ok());
    if ok {
        Ok(())
    } else {
        fail(Code::State, "another logger is already installed in this process (log::set_logger failed)")
    }
}

/// Logs to stderr with env_logger, filtered by `RCLUSTER_LOG` (default `info`).
pub fn init_env_logger() -> Result<()> {
    not_in_callback("cluster_log_init")?;
    install()?;
    let env = env_logger::Env::new().filter_or("RCLUSTER_LOG", "info").write_style("RCLUSTER_LOG_STYLE");
    let logger = env_logger::Builder::from_env(env).build();
    log::set_max_level(logger.filter());
    *sync::write(&ROUTER.sink) = Sink::Env(logger);
    Ok(())
}

/// Sends every record up to `max` to `f` (None removes the sink).
pub fn set_callback(f: Option<LogFn>, max: log::LevelFilter) -> Result<()> {
    not_in_callback("cluster_set_log_callback")?;
    install()?;
    match f {
        Some(f) => {
            *sync::write(&ROUTER.sink) = Sink::Callback(f);
            log::set_max_level(max);
        }
        None => {
            *sync::write(&ROUTER.sink) = Sink::None;
            log::set_max_level(log::LevelFilter::Off);
        }
    }
    Ok(())
}

/// The level named by `RCLUSTER_LOG` when it is a plain level, else `info`.
pub fn level_from_env() -> log::LevelFilter {
    std::env::var("RCLUSTER_LOG").ok().and_then(|v| v.parse().ok()).unwrap_or(log::LevelFilter::Info)
}
