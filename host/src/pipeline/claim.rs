//! A received S3 claim check fetched before its message is routed ([`crate::claim_check`]),
//! and its object deleted once the message is, when configured.

use crate::broker::Received;
use crate::claim_check::FetchError;
use crate::lock::Held;
use crate::ops::errors::FailureKind;
use crate::ops::metrics as m;
use crate::wire::Envelope;

use super::keepalive::Keeper;
use super::state::{AfterDelete, Shared};

impl Shared {
    /// The envelope with its stored body, for a message that is an S3 claim check (an
    /// ordinary one comes back as it is), and the keeper, which kept the message invisible and
    /// locked meanwhile. A pointer that can never be read (a bucket not trusted, an object
    /// gone or too large, a body that does not decode) is dead-lettered with the reason; an S3
    /// failure leaves the message for redelivery. Either way the keeper is stopped, the lock
    /// released, and `Err` says whether the message is gone from the queue.
    ///
    /// `handled_before`: a binding already completed this message (a completion record). A
    /// claim check whose object is gone is then a duplicate of a message handled and deleted
    /// (its object deleted after handling): it is deleted, not dead-lettered.
    pub(super) async fn fetch_claim(
        &self,
        message: &Received,
        envelope: Envelope,
        keeper: Keeper,
        held: &mut Option<Held>,
        handled_before: bool,
    ) -> Result<(Envelope, Keeper), bool> {
        let (Some(pointer), Some(claim_check)) =
            (envelope.pointer.clone(), self.parts.claim_check.as_ref())
        else {
            return Ok((envelope, keeper));
        };
        if envelope.fetched {
            return Ok((envelope, keeper));
        }
        let fetched = match claim_check.fetch(&pointer).await {
            Ok(stored) => envelope.clone().resolved(stored).map_err(|e| {
                FetchError::Refused(format!(
                    "the claim check's body at s3://{}/{} does not decode: {e}",
                    pointer.bucket, pointer.key
                ))
            }),
            Err(e) => Err(e),
        };
        let error = match fetched {
            Ok(resolved) => return Ok((resolved, keeper)),
            Err(error) => error,
        };
        keeper.stop().await;
        let gone = match error {
            FetchError::Gone(_) if handled_before => {
                tracing::info!(message_id = %envelope.message_id, event = %envelope.event, receive_count = message.receive_count,
                    "a duplicate of a handled claim check whose object was deleted after handling; deleting it without running anything");
                self.delete(message, &envelope, held).await
            }
            FetchError::Refused(reason) | FetchError::Gone(reason) => {
                self.report(FailureKind::ClaimCheck, None, message, &envelope, &reason);
                self.dead_letter_unhandled(message, &envelope.event, &reason)
                    .await
            }
            FetchError::Unavailable(reason) => {
                metrics::counter!(m::RETRIED, "reason" => "claim_check").increment(1);
                tracing::warn!(message_id = %envelope.message_id, event = %envelope.event, receive_count = message.receive_count, error = %reason,
                    "cannot read the message's S3 claim check; left on the queue for redelivery");
                false
            }
        };
        if let Some(held) = held.take() {
            self.release(&envelope, held).await;
        }
        Err(gone)
    }

    /// Dead-letter a message no handler ran for, as it was received (a claim check keeps its
    /// pointer, and its object stays); without a dead-letter queue it stays on the queue,
    /// logged. `true` when it is gone from the queue.
    pub(super) async fn dead_letter_unhandled(
        &self,
        message: &Received,
        event: &str,
        reason: &str,
    ) -> bool {
        match self.parts.broker.dead_letter(message, reason).await {
            Ok(()) => {
                metrics::counter!(m::DEAD_LETTERED).increment(1);
                tracing::warn!(message_id = %message.message_id, event = %event, reason = %reason,
                    "refused before any handler: moved to the dead-letter queue");
                true
            }
            Err(e) => {
                metrics::counter!(m::RETRIED, "reason" => "undecodable").increment(1);
                tracing::error!(message_id = %message.message_id, event = %event, reason = %reason, error = %e,
                    "refused before any handler, but cannot dead-letter it; it stays on the queue for redelivery");
                false
            }
        }
    }

    /// What to do once a message is deleted: delete the S3 object of a fetched claim check,
    /// with `payloads.delete_after_handling`.
    pub(super) fn after_delete(&self, envelope: &Envelope) -> Option<AfterDelete> {
        let claim_check = self.parts.claim_check.as_ref()?;
        match &envelope.pointer {
            Some(pointer) if envelope.fetched && claim_check.deletes_after_handling() => {
                Some(AfterDelete {
                    claim_check: claim_check.clone(),
                    pointer: pointer.clone(),
                })
            }
            _ => None,
        }
    }
}
