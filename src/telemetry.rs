//! Logging setup.
//!
//! With `LOG_YAML` the file decides levels per module, text or JSON lines, and stdout or a
//! rotating file; without it `RUST_LOG` is read, and failing that everything logs at `info`.
//! Both come from [`LogSettings`], read with the rest of the configuration.
//! Example `LOG_YAML` file:
//! ```yaml
//! level: info            # default for every module
//! format: json           # text (default) | json
//! output: file           # stdout (default) | file
//! file:
//!   directory: /var/log/wxlogin
//!   prefix: wxlogin.log
//!   rotation: daily      # minutely | hourly | daily (default) | never
//! modules:
//!   wxlogin::http: debug
//!   tower_http: warn
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::config::LogSettings;

/// The `LOG_YAML` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Default level (`error`, `warn`, `info`, `debug`, `trace`).
    #[serde(default)]
    pub level: Option<String>,
    /// Line format.
    #[serde(default)]
    pub format: LogFormat,
    /// Where lines go.
    #[serde(default)]
    pub output: LogOutput,
    /// The rotating file, for `output: file`.
    #[serde(default)]
    pub file: Option<LogFile>,
    /// Levels per module path (`wxlogin::wechat: debug`).
    #[serde(default)]
    pub modules: BTreeMap<String, String>,
}

/// Text or JSON lines.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where log lines go.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogOutput {
    /// Standard output.
    #[default]
    Stdout,
    /// A rotating file (see [`LogFile`]).
    File,
}

/// A rotating log file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// The directory of the files.
    pub directory: PathBuf,
    /// The file name (a date suffix is added when rotating).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// `minutely`, `hourly`, `daily` or `never`.
    #[serde(default = "default_rotation")]
    pub rotation: String,
}

fn default_prefix() -> String {
    "wxlogin.log".to_owned()
}

fn default_rotation() -> String {
    "daily".to_owned()
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The `LOG_YAML` file could not be read.
    #[error("configuration: LOG_YAML cannot be read: {0}")]
    Read(#[source] std::io::Error),
    /// The `LOG_YAML` file is not valid.
    #[error("configuration: LOG_YAML is not valid: {0}")]
    Parse(String),
}

impl LogConfig {
    /// Reads and checks a `LOG_YAML` file.
    pub fn from_file(path: &Path) -> Result<Self, TelemetryError> {
        let text = std::fs::read_to_string(path).map_err(TelemetryError::Read)?;
        Self::parse(&text)
    }

    /// Parses the YAML text of a logging configuration.
    pub fn parse(text: &str) -> Result<Self, TelemetryError> {
        let config: Self =
            serde_yaml_ng::from_str(text).map_err(|e| TelemetryError::Parse(e.to_string()))?;
        if config.output == LogOutput::File && config.file.is_none() {
            return Err(TelemetryError::Parse(
                "output: file needs a file: section with a directory".into(),
            ));
        }
        config.filter()?;
        Ok(config)
    }

    fn filter(&self) -> Result<EnvFilter, TelemetryError> {
        let mut directives = vec![self.level.clone().unwrap_or_else(|| "info".into())];
        directives.extend(self.modules.iter().map(|(m, l)| format!("{m}={l}")));
        EnvFilter::try_new(directives.join(","))
            .map_err(|e| TelemetryError::Parse(format!("bad level: {e}")))
    }
}

/// Installs the global subscriber. Keep the returned guard alive: dropping it flushes and
/// stops the background log writer.
pub fn init(settings: &LogSettings) -> Result<Option<WorkerGuard>, TelemetryError> {
    let config = match &settings.yaml {
        Some(path) => Some(LogConfig::from_file(path)?),
        None => None,
    };
    let (filter, format, output) = match &config {
        Some(c) => (c.filter()?, c.format, c.output),
        None => (
            // A `RUST_LOG` that does not parse is not worth refusing to start over.
            settings
                .filter
                .as_deref()
                .and_then(|f| EnvFilter::try_new(f).ok())
                .unwrap_or_else(|| EnvFilter::new("info")),
            LogFormat::Text,
            LogOutput::Stdout,
        ),
    };
    let (writer, guard) = match (output, config.as_ref().and_then(|c| c.file.as_ref())) {
        (LogOutput::File, Some(file)) => {
            let rotation = match file.rotation.as_str() {
                "minutely" => tracing_appender::rolling::Rotation::MINUTELY,
                "hourly" => tracing_appender::rolling::Rotation::HOURLY,
                "never" => tracing_appender::rolling::Rotation::NEVER,
                _ => tracing_appender::rolling::Rotation::DAILY,
            };
            let appender = tracing_appender::rolling::RollingFileAppender::new(
                rotation,
                &file.directory,
                &file.prefix,
            );
            let (nb, guard) = tracing_appender::non_blocking(appender);
            (BoxMakeWriter::new(nb), Some(guard))
        }
        _ => {
            // Off the request path: a slow terminal must not slow down requests.
            let (nb, guard) = tracing_appender::non_blocking(std::io::stdout());
            (BoxMakeWriter::new(nb), Some(guard))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A second init (tests) is not an error worth stopping for.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_log_yaml_parses() {
        let c = LogConfig::parse(
            "level: warn\nformat: json\noutput: file\nfile:\n  directory: /tmp/x\n  rotation: hourly\nmodules:\n  wxlogin::http: debug\n",
        )
        .unwrap();
        assert_eq!(c.format, LogFormat::Json);
        assert_eq!(
            c.modules.get("wxlogin::http").map(String::as_str),
            Some("debug")
        );
    }

    #[test]
    fn bad_log_yaml_is_refused() {
        assert!(LogConfig::parse("format: xml\n").is_err());
        assert!(LogConfig::parse("output: file\n").is_err());
        assert!(LogConfig::parse("levle: info\n").is_err());
        assert!(LogConfig::parse("level: \"info,=\"\n").is_err());
    }
}
