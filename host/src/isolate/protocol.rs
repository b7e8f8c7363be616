//! What crosses the pipe between the host and a plugin worker.
//!
//! Every message is one frame: a length prefix from `tokio-util`'s [`LengthDelimitedCodec`]
//! (used synchronously here: both sides run plain threads) around a `postcard` encoding of
//! [`ToWorker`] or [`FromWorker`]. Requests carry an id; everything the worker says about a
//! request (log lines, publish requests, the outcome) carries the same id, so one worker serves
//! many calls at once and the host routes each frame to the call it belongs to.

use std::io::{Read, Write};

use bytes::{Bytes, BytesMut};
use iniesta_plugin_api::ffi::{AttributeFfi, MessageFfi, OutcomeFfi};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// The largest frame either side accepts (a message body plus its attributes).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Host → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Construct handler `handler` with the binding's config (JSON text), known as `id` from now.
    Construct {
        /// Request id, then the handler's id.
        id: u64,
        /// The plugin's handler name.
        handler: String,
        /// The binding's config as JSON text.
        config: String,
    },
    /// Forget a constructed handler.
    Forget {
        /// The handler's id.
        id: u64,
    },
    /// Call a handler.
    Call {
        /// The call's id.
        id: u64,
        /// The handler's id (from `Construct`).
        handler: u64,
        /// The message.
        message: WireMessage,
    },
    /// The answer to a [`FromWorker::Publish`].
    Published {
        /// The call's id.
        id: u64,
        /// The published message id, or the error's text.
        result: Result<String, String>,
    },
}

/// Worker → host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// The worker loaded the plugin file and is ready.
    Ready {
        /// The plugin's name.
        name: String,
        /// Its version.
        version: String,
        /// Its handlers.
        handlers: Vec<String>,
    },
    /// The worker could not load the plugin file; it exits after this.
    LoadFailed {
        /// Why.
        reason: String,
    },
    /// The answer to [`ToWorker::Construct`].
    Constructed {
        /// The request id.
        id: u64,
        /// `Err` holds the constructor's error text.
        result: Result<(), String>,
    },
    /// A handler logged through its context.
    Log {
        /// The call's id.
        id: u64,
        /// 1 error, 2 warn, 3 info, 4 debug, 5 trace.
        level: u8,
        /// The line.
        text: String,
    },
    /// A handler publishes through its context; the host answers with [`ToWorker::Published`].
    Publish {
        /// The call's id.
        id: u64,
        /// The event name.
        event: String,
        /// The body.
        body: Vec<u8>,
        /// Attributes: (name, data type, value).
        attributes: Vec<(String, String, String)>,
    },
    /// A call finished.
    Outcome {
        /// The call's id.
        id: u64,
        /// What it came to.
        outcome: WireOutcome,
    },
}

/// [`MessageFfi`] as it crosses the pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMessage {
    /// Message id.
    pub id: String,
    /// Event name.
    pub event: String,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Attributes: (name, data type, value).
    pub attributes: Vec<(String, String, String)>,
    /// Deliveries so far, this one included.
    pub receive_count: u32,
    /// When first sent (ms since the Unix epoch).
    pub sent_timestamp_ms: u64,
}

impl WireMessage {
    /// Copy an FFI message for the pipe.
    pub fn from_ffi(message: &MessageFfi) -> WireMessage {
        WireMessage {
            id: message.id.to_string(),
            event: message.event.to_string(),
            body: message.body.to_vec(),
            attributes: attributes_from_ffi(&message.attributes),
            receive_count: message.receive_count,
            sent_timestamp_ms: message.sent_timestamp_ms,
        }
    }

    /// The FFI message a handler in the worker gets.
    pub fn into_ffi(self) -> MessageFfi {
        MessageFfi {
            id: self.id.into(),
            event: self.event.into(),
            body: self.body.into(),
            attributes: attributes_into_ffi(self.attributes).into(),
            receive_count: self.receive_count,
            sent_timestamp_ms: self.sent_timestamp_ms,
        }
    }
}

/// Attributes as (name, data type, value) triples.
pub fn attributes_from_ffi(attributes: &[AttributeFfi]) -> Vec<(String, String, String)> {
    attributes
        .iter()
        .map(|a| {
            (
                a.name.to_string(),
                a.data_type.to_string(),
                a.value.to_string(),
            )
        })
        .collect()
}

/// Attributes back into FFI form.
pub fn attributes_into_ffi(attributes: Vec<(String, String, String)>) -> Vec<AttributeFfi> {
    attributes
        .into_iter()
        .map(|(name, data_type, value)| AttributeFfi {
            name: name.into(),
            data_type: data_type.into(),
            value: value.into(),
        })
        .collect()
}

/// [`OutcomeFfi`] as it crosses the pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireOutcome {
    /// Ack.
    Ack,
    /// Retry after this many seconds.
    Retry(u32),
    /// Dead-letter with this reason.
    DeadLetter(String),
    /// The handler returned an error.
    Failed(String),
    /// The handler panicked (caught inside the plugin).
    Panicked(String),
}

impl From<OutcomeFfi> for WireOutcome {
    fn from(outcome: OutcomeFfi) -> Self {
        match outcome {
            OutcomeFfi::Ack => WireOutcome::Ack,
            OutcomeFfi::Retry { after_secs } => WireOutcome::Retry(after_secs),
            OutcomeFfi::DeadLetter { reason } => WireOutcome::DeadLetter(reason.into_string()),
            OutcomeFfi::Failed { reason } => WireOutcome::Failed(reason.into_string()),
            OutcomeFfi::Panicked { message } => WireOutcome::Panicked(message.into_string()),
        }
    }
}

impl From<WireOutcome> for OutcomeFfi {
    fn from(outcome: WireOutcome) -> Self {
        match outcome {
            WireOutcome::Ack => OutcomeFfi::Ack,
            WireOutcome::Retry(after_secs) => OutcomeFfi::Retry { after_secs },
            WireOutcome::DeadLetter(reason) => OutcomeFfi::DeadLetter {
                reason: reason.into(),
            },
            WireOutcome::Failed(reason) => OutcomeFfi::Failed {
                reason: reason.into(),
            },
            WireOutcome::Panicked(message) => OutcomeFfi::Panicked {
                message: message.into(),
            },
        }
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The pipe failed (or the frame was too long).
    #[error("pipe: {0}")]
    Io(#[from] std::io::Error),
    /// The frame did not decode.
    #[error("undecodable frame: {0}")]
    Decode(#[from] postcard::Error),
    /// The pipe closed in the middle of a frame.
    #[error("the pipe closed in the middle of a frame")]
    Truncated,
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Writes frames to a blocking writer.
pub struct FrameWriter<W> {
    inner: W,
    codec: LengthDelimitedCodec,
    buf: BytesMut,
}

impl<W: Write> FrameWriter<W> {
    /// Frames over `inner`.
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            codec: codec(),
            buf: BytesMut::new(),
        }
    }

    /// Encode, frame, write and flush one message.
    pub fn send<T: Serialize>(&mut self, message: &T) -> Result<(), FrameError> {
        let payload = postcard::to_stdvec(message)?;
        self.buf.clear();
        self.codec.encode(Bytes::from(payload), &mut self.buf)?;
        self.inner.write_all(&self.buf)?;
        self.inner.flush()?;
        Ok(())
    }
}

/// Reads frames from a blocking reader.
pub struct FrameReader<R> {
    inner: R,
    codec: LengthDelimitedCodec,
    buf: BytesMut,
}

impl<R: Read> FrameReader<R> {
    /// Frames from `inner`.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            codec: codec(),
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next message; `None` when the pipe closed cleanly between frames.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(postcard::from_bytes(&frame)?));
            }
            let n = match self.inner.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_truncation_is_an_error() {
        let mut out = Vec::new();
        let messages = vec![
            ToWorker::Construct {
                id: 1,
                handler: "h".into(),
                config: "{}".into(),
            },
            ToWorker::Call {
                id: 2,
                handler: 1,
                message: WireMessage {
                    id: "m".into(),
                    event: "E.s".into(),
                    body: vec![0, 1, 2, 255],
                    attributes: vec![("a".into(), "String".into(), "v".into())],
                    receive_count: 3,
                    sent_timestamp_ms: 9,
                },
            },
            ToWorker::Published {
                id: 2,
                result: Err("no".into()),
            },
        ];
        {
            let mut writer = FrameWriter::new(&mut out);
            for m in &messages {
                writer.send(m).expect("send");
            }
        }
        let mut reader = FrameReader::new(out.as_slice());
        for m in &messages {
            assert_eq!(reader.recv::<ToWorker>().expect("recv").as_ref(), Some(m));
        }
        assert_eq!(reader.recv::<ToWorker>().expect("eof"), None);
        let cut = &out[..out.len() - 2];
        let mut reader = FrameReader::new(cut);
        reader.recv::<ToWorker>().expect("first");
        reader.recv::<ToWorker>().expect("second");
        assert!(matches!(
            reader.recv::<ToWorker>(),
            Err(FrameError::Truncated)
        ));
        // Garbage inside a well-formed frame is a decode error, not a panic.
        let mut bad = Vec::new();
        FrameWriter::new(&mut bad)
            .send(&vec![250u8; 3])
            .expect("send");
        assert!(matches!(
            FrameReader::new(bad.as_slice()).recv::<FromWorker>(),
            Err(FrameError::Decode(_))
        ));
    }
}
