//! `media_type = "…"` on an `[[egress]]` entry: that egress gets the media type written into
//! every JSON object body (`mediaType`) and the `media_type` attribute, so microcosm-pubsub
//! consumers behind it accept the events ([`crate::media_type::stamp`]). Bodies that are not
//! JSON objects, and messages that already name a media type, go out unchanged.

use std::sync::Arc;

use async_trait::async_trait;

use super::fanout::Egress;
use crate::wire::Outgoing;

/// An egress whose events carry a media type.
pub struct MediaTypeEgress {
    inner: Arc<dyn Egress>,
    media_type: String,
}

impl MediaTypeEgress {
    /// Wrap `inner` so its events carry `media_type`.
    pub fn new(inner: Arc<dyn Egress>, media_type: String) -> MediaTypeEgress {
        MediaTypeEgress { inner, media_type }
    }
}

#[async_trait]
impl Egress for MediaTypeEgress {
    async fn deliver(&self, event_id: &str, message: &Outgoing) -> Result<String, String> {
        let mut attributes = message.attributes.clone();
        match crate::media_type::stamp(&message.body, &mut attributes, &self.media_type) {
            Ok(body) => {
                let stamped = Outgoing {
                    event: message.event.clone(),
                    body,
                    attributes,
                };
                self.inner.deliver(event_id, &stamped).await
            }
            Err(reason) => {
                tracing::debug!(event_id, media_type = %self.media_type, %reason, "media type not written; the event goes out as published");
                self.inner.deliver(event_id, message).await
            }
        }
    }

    fn describe(&self) -> String {
        format!("{} (media type {})", self.inner.describe(), self.media_type)
    }
}
