//! `[log]`: level and format.

use super::*;

/// Default `log.level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `portcullis=debug`. Defaults to `info`.
    pub level: String,
    /// `text` or `json`. Defaults to `text`.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogConfig {
    pub(crate) fn from_raw(raw: RawLog) -> Result<Self, ConfigError> {
        let level = raw.level.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string());
        if tracing_subscriber::EnvFilter::builder().parse(&level).is_err() {
            return Err(ConfigError::new(
                "log.level",
                format!("not a valid filter {level:?} (try \"info\" or \"portcullis=debug\")"),
            ));
        }
        let format = match raw.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::new(
                    "log.format",
                    format!("expected \"text\" or \"json\", got {other:?}"),
                ))
            }
        };
        Ok(LogConfig { level, format })
    }
}
