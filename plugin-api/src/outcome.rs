//! What a handler decides about a message.

/// The result of handling one message.
///
/// Returning `Err(..)` from [`crate::Handler::handle`] is also allowed: the message is then left
/// on the queue and redelivered after its visibility timeout, and the error text is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled. The message is deleted once every binding that took it has acked.
    Ack,
    /// Not now: make the message visible again after `after_secs` seconds.
    Retry {
        /// Seconds until the message is delivered again (0 = at once).
        after_secs: u32,
    },
    /// This message will never succeed: move it to the dead-letter queue with a reason.
    DeadLetter {
        /// Why; kept with the dead letter for operators.
        reason: String,
    },
}

impl Outcome {
    /// Shorthand for `Outcome::Retry { after_secs }`.
    pub fn retry(after_secs: u32) -> Self {
        Outcome::Retry { after_secs }
    }

    /// Shorthand for `Outcome::DeadLetter { reason }`.
    pub fn dead_letter(reason: impl Into<String>) -> Self {
        Outcome::DeadLetter {
            reason: reason.into(),
        }
    }
}
