//! The `rendezvous` binary's log output, for programs that want the same:
//! lines like the demo's, `2025-09-21 14:05:47,378 [INFO] [target] message`,
//! or JSON for log collectors. Everything here logs through `tracing`; this
//! only installs a subscriber, showing this project's targets.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// How log lines look (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2025-09-21 14:05:47,378 [INFO] [rendezvous::server] ...`, as the demo.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

struct DemoFormat;

impl<S, N> FormatEvent<S, N> for DemoFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S,%3f");
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARNING",
            Level::INFO => "INFO",
            Level::DEBUG => "DEBUG",
            Level::TRACE => "TRACE",
        };
        write!(writer, "{now} [{level}] [{}] ", event.metadata().target())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Installs the subscriber: INFO, or DEBUG with `verbose`, on standard
/// error. Does nothing if one is installed already.
pub fn init(verbose: bool, format: LogFormat) {
    let level = if verbose { Level::DEBUG } else { Level::INFO };
    let ours = Targets::new()
        .with_target("rendezvous", level)
        .with_target("rendezvous_libp2p", level)
        .with_target("rendezvous_async_std", level);
    let layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .event_format(DemoFormat)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => {
            tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed()
        }
    };
    let _ = tracing_subscriber::registry().with(layer.with_filter(ours)).try_init();
}
