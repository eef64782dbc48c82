//! A [`log`] logger that writes to syslog, for the detached daemon (as
//! xenconsoled logs).

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::sys;

/// Sends log records to syslog (`daemon` facility, `rxconsoled` ident).
#[derive(Debug)]
pub struct SyslogLogger {
    level: LevelFilter,
}

impl SyslogLogger {
    /// Opens syslog and makes this the process's logger, recording
    /// `level` and above.
    pub fn install(level: LevelFilter) -> Result<(), log::SetLoggerError> {
        sys::open_syslog();
        log::set_boxed_logger(Box::new(SyslogLogger { level }))?;
        log::set_max_level(level);
        Ok(())
    }
}

impl Log for SyslogLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let priority = match record.level() {
            Level::Error => libc::LOG_ERR,
            Level::Warn => libc::LOG_WARNING,
            Level::Info => libc::LOG_INFO,
            Level::Debug | Level::Trace => libc::LOG_DEBUG,
        };
        sys::syslog(priority, &record.args().to_string());
    }

    fn flush(&self) {}
}
