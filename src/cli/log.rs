//! Logging to stderr in the form its reader wants: under systemd's journal, one line per
//! event with a syslog priority prefix (`<3>` error … `<7>` debug) and no timestamp or
//! colour, since journald adds both; a daemon elsewhere gets UTC timestamps; a command
//! gets bare lines.

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Sets up logging: `daemon` for `serve`, which runs unattended. `level` is for backstop's
/// own lines; the libraries below it speak only of errors, at every level: their debug and
/// trace lines carry URLs with credentials (hyper prints a webhook's `user:password`), and
/// their warnings are raw text a user cannot act on (the S3 SDK's checksum notices).
pub fn init(level: Level, daemon: bool) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    let only = Targets::new()
        .with_target("backstop", level)
        .with_default(LevelFilter::ERROR);
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(Level::TRACE)
        .with_target(false);
    let installed = if stderr_is_journal() {
        let s = builder.with_ansi(false).event_format(Journald).finish();
        tracing::subscriber::set_global_default(s.with(only))
    } else if daemon {
        let s = builder.with_ansi(std::io::stderr().is_terminal()).finish();
        tracing::subscriber::set_global_default(s.with(only))
    } else {
        let s = builder
            .with_ansi(std::io::stderr().is_terminal())
            .without_time()
            .finish();
        tracing::subscriber::set_global_default(s.with(only))
    };
    installed.expect("logging is set up once");
}

/// True when stderr is the journal stream systemd connected (`JOURNAL_STREAM` names its
/// device and inode); a child whose stderr was redirected elsewhere is not fooled.
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// `<6>message`: the priority prefix journald reads (SyslogLevelPrefix=, on by default).
struct Journald;

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
