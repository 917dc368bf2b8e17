//! Logs: JSON in Lambda, pretty locally. Secrets and tokens are never fields of any span.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// `LOG_LEVEL`: a level (`info`), or targets with levels (`info,sqlx=warn,seance=debug`).
/// `Targets`, not `EnvFilter`: the same syntax for targets, without the regex engine
/// `EnvFilter` links into every Lambda for span and field filters nobody sets here.
pub fn parse_filter(level: &str) -> Option<Targets> {
    if level.trim().is_empty() {
        return None;
    }
    level.parse().ok()
}

/// Installs the global subscriber once; later calls (tests) are harmless no-ops.
pub fn init(level: &str, format: LogFormat) {
    let filter =
        parse_filter(level).unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    let _already_set = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_targets_parse_and_nonsense_does_not() {
        for good in [
            "info",
            "debug",
            "warn,seance=debug",
            "info,sqlx=warn,aws_smithy_runtime=info",
        ] {
            assert!(parse_filter(good).is_some(), "{good}");
        }
        for bad in ["", "  ", "seance=loud", "info,seance=debug=trace"] {
            assert!(parse_filter(bad).is_none(), "{bad}");
        }
        let filter = parse_filter("warn,seance=debug").unwrap_or_default();
        assert!(filter.would_enable("seance::ws", &tracing::Level::DEBUG));
        assert!(!filter.would_enable("sqlx::query", &tracing::Level::INFO));
    }
}
