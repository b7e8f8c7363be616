//! AWS error codes: which say a later try may succeed, which say a receipt handle is stale.
//! Both SQS clients (the SDK's and the lean one) read the same codes.

/// Whether an AWS error code says a later try may succeed (throttling, a server-side fault).
pub fn is_retryable_code(code: &str) -> bool {
    code.contains("Throttl")
        || matches!(
            code,
            "RequestThrottled" | "ServiceUnavailable" | "InternalError" | "InternalFailure"
        )
}

/// Whether SQS refused a receipt handle because it no longer names a message in flight: it
/// was deleted, redelivered to someone else (a newer receipt exists), or its visibility
/// already ended. Retrying such a request cannot succeed.
pub fn is_stale_receipt(code: Option<&str>, message: Option<&str>) -> bool {
    let code = code.unwrap_or("");
    let message = message.unwrap_or("").to_ascii_lowercase();
    code.ends_with("ReceiptHandleIsInvalid")
        || code.ends_with("MessageNotInflight")
        || (code.ends_with("InvalidParameterValue")
            && message.contains("receipthandle")
            && (message.contains("expired")
                || message.contains("does not exist")
                || message.contains("not available")))
}
