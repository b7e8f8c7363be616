//! JSON logs that stay one JSON object per line.
//!
//! The host's own lines come from `tracing`'s JSON formatter. Plugins are separate libraries
//! with their own copy of the standard library, so what they write to stderr — above all the
//! message of a panic, printed by their panic hook before the host catches the panic at the
//! boundary — bypasses `tracing`. With `--log-format json`, [`capture_stderr`] moves the real
//! stderr aside for `tracing` and turns file descriptor 2 into a pipe whose lines are wrapped
//! as `{"timestamp", "level": "WARN", "message": <the line>, "source": "stderr"}`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;

/// Redirect file descriptor 2 into a wrapper that re-emits every line as a JSON object on the
/// original stderr; returns the original stderr for `tracing` to write to.
#[cfg(unix)]
pub fn capture_stderr() -> std::io::Result<Arc<File>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: dup returns a new descriptor we own (or -1); nothing else owns it.
    let original = unsafe { libc::dup(libc::STDERR_FILENO) };
    if original < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `original` is a freshly duplicated, open descriptor owned by nobody else.
    let original = unsafe { File::from_raw_fd(original) };
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe succeeded: both descriptors are open and ours alone.
    let (read, write) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: both descriptors are open; dup2 atomically replaces descriptor 2.
    if unsafe { libc::dup2(write.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(write);
    let out = Arc::new(original);
    let sink = out.clone();
    std::thread::Builder::new()
        .name("stderr-json".into())
        .spawn(move || forward(read, &sink))?;
    Ok(out)
}

/// Without file descriptors to juggle, stderr is used as it is.
#[cfg(not(unix))]
pub fn capture_stderr() -> std::io::Result<Arc<File>> {
    Err(std::io::Error::other(
        "capturing stderr is only supported on unix",
    ))
}

fn forward(read: File, sink: &File) {
    for line in BufReader::new(read).lines() {
        let Ok(line) = line else {
            break;
        };
        if line.trim().is_empty() {
            continue;
        }
        let mut text = wrap(&line);
        text.push('\n');
        // One write per line, so lines from tracing and from here do not interleave.
        let mut sink = sink;
        let _ = sink.write_all(text.as_bytes());
    }
}

/// One foreign stderr line as a JSON log line.
pub fn wrap(line: &str) -> String {
    let timestamp = aws_smithy_types::DateTime::from(std::time::SystemTime::now())
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default();
    serde_json::json!({
        "timestamp": timestamp,
        "level": "WARN",
        "message": line,
        "source": "stderr",
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn foreign_lines_become_json() {
        let line = super::wrap("thread '<unnamed>' panicked at \"x\"");
        let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(value["message"], "thread '<unnamed>' panicked at \"x\"");
        assert_eq!(value["source"], "stderr");
    }
}
