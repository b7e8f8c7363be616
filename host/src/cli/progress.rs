//! Progress bars on stderr that log lines do not tear (`publish --file`, `dlq redrive`).
//!
//! While a bar is shown, the human log writer prints each line above it (indicatif's
//! `suspend`), so a warning in the middle of a redrive reads whole and the bar is redrawn
//! under it. Bars are hidden when stderr is not a terminal (indicatif's default), and only
//! one is shown at a time.

use std::io::Write;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// The bar on screen, if any.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// A bar on stderr, cleared and forgotten when dropped.
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar of `len` steps drawn with `template` (indicatif's template language; `{msg}`
    /// names the work).
    pub fn new(len: u64, template: &str, msg: &str) -> Bar {
        let bar = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(msg.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        *SHOWN.lock().unwrap_or_else(PoisonError::into_inner) = Some(bar.clone());
        Bar(bar)
    }

    /// The underlying bar.
    pub fn bar(&self) -> &ProgressBar {
        &self.0
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        SHOWN.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.0.finish_and_clear();
    }
}

/// The human log format's writer: stderr, above the bar when one is shown.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let shown = SHOWN.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match shown {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
