//! Logging with a level that can change at run time (`/logging?level=`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogControl")
    }
}

impl LogControl {
    /// Set the filter, e.g. `debug` or `info,trellis_proxy::http=trace`.
    pub fn set(&self, directive: &str) -> Result<(), String> {
        let filter =
            parse_filter(directive).map_err(|e| format!("invalid log level {directive:?}: {e}"))?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }

    pub fn current(&self) -> String {
        self.handle
            .with_current(|f| f.to_string())
            .unwrap_or_default()
    }
}

/// A filter from a level or directives (`debug`, `info,trellis_proxy::http=trace`).
///
/// `EnvFilter` reads a bare word as a target (`loud` means "everything from
/// target `loud`"), so a misspelt level would silently turn all logging off.
/// Here a directive without `=` must be a level; a target takes `target=level`.
pub fn parse_filter(directive: &str) -> Result<EnvFilter, String> {
    if directive.trim().is_empty() {
        return Err("empty; use a level: off, error, warn, info, debug or trace".into());
    }
    for d in directive.split(',').map(str::trim) {
        if !d.contains('=') && !d.contains('[') && d.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "{d:?} is not a level (off, error, warn, info, debug, trace); \
                 for one module write target=level"
            ));
        }
    }
    EnvFilter::try_new(directive).map_err(|e| e.to_string())
}

/// Install the process's subscriber (logs go to stderr). Called once by main.
pub fn init(level: &str, json: bool) -> Result<LogControl, String> {
    let filter = parse_filter(level).map_err(|e| format!("invalid --log-level {level:?}: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry.with(fmt.json()).try_init()
    } else {
        registry.with(fmt).try_init()
    };
    result.map_err(|e| e.to_string())?;
    Ok(LogControl { handle })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "info,trellis_proxy::http=trace",
            "warn,hyper=off",
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok}");
        }
        // A typo must not become a target filter that silences everything.
        for bad in ["loud", "degub", "info,verbose", "", " ", "info,=["] {
            assert!(parse_filter(bad).is_err(), "{bad:?}");
        }
    }
}
