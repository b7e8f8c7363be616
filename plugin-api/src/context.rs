//! What a handler can ask of the host while it runs: publish events and log.

use abi_stable::std_types::{RResult, RSlice, RStr, RString};

use crate::ffi::{AttributeFfi, HostContextBox};

/// The host, as a handler sees it during one call.
pub struct Context<'a> {
    raw: &'a HostContextBox,
}

/// Publishing through the host failed; the text says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishError(pub String);

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "publish failed: {}", self.0)
    }
}

impl std::error::Error for PublishError {}

impl<'a> Context<'a> {
    #[doc(hidden)]
    pub fn from_ffi(raw: &'a HostContextBox) -> Self {
        Self { raw }
    }

    /// Publish `event` with a body and no extra attributes to the host's topic (the host's
    /// config needs `SNS_PRODUCER`). The host appends its service name (`{event}.{service}`)
    /// and adds the `version` attribute. Returns the message id.
    pub fn publish(&self, event: &str, body: impl AsRef<[u8]>) -> Result<String, PublishError> {
        self.publish_with(event, body, &[])
    }

    /// Publish a JSON value as the body.
    pub fn publish_json(
        &self,
        event: &str,
        body: &serde_json::Value,
    ) -> Result<String, PublishError> {
        self.publish_with(event, body.to_string(), &[])
    }

    /// Publish with extra `String` attributes.
    pub fn publish_with(
        &self,
        event: &str,
        body: impl AsRef<[u8]>,
        attributes: &[(&str, &str)],
    ) -> Result<String, PublishError> {
        let attrs = string_attributes(attributes);
        answer(self.raw.publish(
            RStr::from_str(event),
            RSlice::from_slice(body.as_ref()),
            RSlice::from_slice(&attrs),
        ))
    }

    /// [`publish`](Self::publish) for an [`AsyncHandler`](crate::AsyncHandler): resolves
    /// once the host has published, without blocking a thread meanwhile.
    pub async fn publish_async(
        &self,
        event: &str,
        body: impl AsRef<[u8]>,
    ) -> Result<String, PublishError> {
        self.publish_with_async(event, body, &[]).await
    }

    /// [`publish_json`](Self::publish_json) for an [`AsyncHandler`](crate::AsyncHandler).
    pub async fn publish_json_async(
        &self,
        event: &str,
        body: &serde_json::Value,
    ) -> Result<String, PublishError> {
        self.publish_with_async(event, body.to_string(), &[]).await
    }

    /// [`publish_with`](Self::publish_with) for an [`AsyncHandler`](crate::AsyncHandler).
    pub async fn publish_with_async(
        &self,
        event: &str,
        body: impl AsRef<[u8]>,
        attributes: &[(&str, &str)],
    ) -> Result<String, PublishError> {
        let attrs = string_attributes(attributes);
        let body = body.as_ref();
        answer(
            self.raw
                .publish_async(
                    RStr::from_str(event),
                    RSlice::from_slice(body),
                    RSlice::from_slice(&attrs),
                )
                .await,
        )
    }

    /// Log an error line through the host's logger (tagged with plugin, binding and message).
    pub fn error(&self, message: &str) {
        self.raw.log(1, RStr::from_str(message));
    }

    /// Log a warning line.
    pub fn warn(&self, message: &str) {
        self.raw.log(2, RStr::from_str(message));
    }

    /// Log an info line.
    pub fn info(&self, message: &str) {
        self.raw.log(3, RStr::from_str(message));
    }

    /// Log a debug line.
    pub fn debug(&self, message: &str) {
        self.raw.log(4, RStr::from_str(message));
    }
}

fn string_attributes(attributes: &[(&str, &str)]) -> Vec<AttributeFfi> {
    attributes
        .iter()
        .map(|(name, value)| AttributeFfi {
            name: RString::from(*name),
            data_type: RString::from("String"),
            value: RString::from(*value),
        })
        .collect()
}

fn answer(result: RResult<RString, RString>) -> Result<String, PublishError> {
    result
        .into_result()
        .map(|id| id.into_string())
        .map_err(|e| PublishError(e.into_string()))
}
