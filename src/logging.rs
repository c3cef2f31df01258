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
            Sink::Callback(f) => f(record.level(), record.target(), &record.args().to_string()),
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
    install()?;
    let env = env_logger::Env::new().filter_or("RCLUSTER_LOG", "info").write_style("RCLUSTER_LOG_STYLE");
    let logger = env_logger::Builder::from_env(env).build();
    log::set_max_level(logger.filter());
    *sync::write(&ROUTER.sink) = Sink::Env(logger);
    Ok(())
}

/// Sends every record up to `max` to `f` (None removes the sink).
pub fn set_callback(f: Option<LogFn>, max: log::LevelFilter) -> Result<()> {
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
