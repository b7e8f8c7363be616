//! The claim-check format of the Amazon SQS/SNS Extended Client Libraries (Java, Python): a
//! body too large for the queue is stored as an S3 object and the message carries a pointer.
//!
//! On the wire such a message has
//! - the body `["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"…","s3Key":"…"}]`
//!   (the Java library's first versions wrote `com.amazon.sqs.javamessaging.MessageS3Pointer`,
//!   which every reader still accepts), and
//! - the Number attribute `ExtendedPayloadSize` (legacy: `SQSLargePayloadSize`) holding the
//!   stored body's size in bytes.
//!
//! The attribute is what marks a pointer: a body that merely looks like one, without it, is an
//! ordinary body, as the extended clients read it. The S3 object holds exactly the body the
//! message would have carried (for a binary body, its base64 text with the content-type
//! attribute on the message), so the rest of the wire format is undone after the fetch.
//!
//! This module is pure: parsing and writing pointers. Fetching and storing objects is
//! [`crate::claim_check`]'s business.

use serde::Deserialize;

use super::{Attribute, Attributes};

/// The attribute that marks a pointer and gives the stored size.
pub const SIZE_ATTRIBUTE: &str = "ExtendedPayloadSize";
/// The attribute older extended clients write instead.
pub const LEGACY_SIZE_ATTRIBUTE: &str = "SQSLargePayloadSize";
/// The pointer class current extended clients write.
pub const POINTER_CLASS: &str = "software.amazon.payloadoffloading.PayloadS3Pointer";
/// The pointer class older Java clients wrote.
pub const LEGACY_POINTER_CLASS: &str = "com.amazon.sqs.javamessaging.MessageS3Pointer";

/// The longest S3 object key (S3's own limit, in bytes of UTF-8).
pub const MAX_KEY_BYTES: usize = 1024;

/// Where a message's body is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// The S3 bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
    /// The size the sender declared (the attribute's value), in bytes.
    pub declared_size: u64,
}

/// Why a message marked as a pointer cannot be read as one. No redelivery changes that: the
/// message is dead-lettered with this as its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    /// The size attribute is not a whole number of bytes.
    #[error("attribute `{attribute}` should be the stored payload's size in bytes, not `{value}`")]
    BadSize {
        /// The attribute's name.
        attribute: &'static str,
        /// Its value.
        value: String,
    },
    /// The body is not a pointer.
    #[error("the message carries `{attribute}` (an S3 claim check) but its body is not an S3 pointer: {problem}")]
    BadBody {
        /// The attribute's name.
        attribute: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// The size attribute a message carries, if any (the current name wins over the legacy one).
fn size_attribute(attributes: &Attributes) -> Option<(&'static str, &Attribute)> {
    [SIZE_ATTRIBUTE, LEGACY_SIZE_ATTRIBUTE]
        .into_iter()
        .find_map(|name| attributes.get(name).map(|a| (name, a)))
}

/// Whether `name` is a claim-check attribute (a publisher may not set it).
pub fn is_reserved(name: &str) -> bool {
    name == SIZE_ATTRIBUTE || name == LEGACY_SIZE_ATTRIBUTE
}

/// Whether a message is marked as a claim check (carries a size attribute).
pub fn is_marked(attributes: &Attributes) -> bool {
    size_attribute(attributes).is_some()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Location {
    #[serde(rename = "s3BucketName")]
    bucket: String,
    #[serde(rename = "s3Key")]
    key: String,
}

/// The pointer a message carries: `Ok(None)` for an ordinary message (no size attribute), an
/// error for a marked message whose body or size is not a pointer's.
pub fn parse(body: &[u8], attributes: &Attributes) -> Result<Option<Pointer>, PointerError> {
    let Some((attribute, size)) = size_attribute(attributes) else {
        return Ok(None);
    };
    let declared_size = size
        .value
        .trim()
        .parse::<u64>()
        .map_err(|_| PointerError::BadSize {
            attribute,
            value: size.value.chars().take(64).collect(),
        })?;
    let bad = |problem: String| PointerError::BadBody { attribute, problem };
    let (class, location): (String, Location) = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "expected [\"{POINTER_CLASS}\", {{\"s3BucketName\": …, \"s3Key\": …}}] ({e})"
        ))
    })?;
    if class != POINTER_CLASS && class != LEGACY_POINTER_CLASS {
        return Err(bad(format!(
            "unknown pointer class `{}`",
            class.chars().take(120).collect::<String>()
        )));
    }
    if !valid_bucket_name(&location.bucket) {
        return Err(bad(format!(
            "`{}` is not an S3 bucket name",
            location.bucket.chars().take(80).collect::<String>()
        )));
    }
    if location.key.is_empty() || location.key.len() > MAX_KEY_BYTES {
        return Err(bad(format!(
            "the object key must be 1 to {MAX_KEY_BYTES} bytes, not {}",
            location.key.len()
        )));
    }
    Ok(Some(Pointer {
        bucket: location.bucket,
        key: location.key,
        declared_size,
    }))
}

/// The body and attributes of a pointer to `bucket`/`key` for a stored body of `size` bytes:
/// `attributes` gain the size attribute (the current name).
pub fn write(bucket: &str, key: &str, size: usize, attributes: &mut Attributes) -> Vec<u8> {
    attributes.insert(SIZE_ATTRIBUTE.to_string(), Attribute::number(size));
    serde_json::json!([POINTER_CLASS, {"s3BucketName": bucket, "s3Key": key}])
        .to_string()
        .into_bytes()
}

/// Remove the claim-check attribute(s) from a resolved message's attributes.
pub fn strip(attributes: &mut Attributes) {
    attributes.remove(SIZE_ATTRIBUTE);
    attributes.remove(LEGACY_SIZE_ATTRIBUTE);
}

/// S3's bucket naming rules (general purpose buckets): 3–63 characters of lowercase letters,
/// digits, dots and hyphens, starting and ending with a letter or digit. Older buckets in
/// us-east-1 may have upper case and underscores; those are accepted too, nothing else (no
/// slashes, no `..`, nothing that could turn a bucket into a path).
pub fn valid_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=255).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(size: &str) -> Attributes {
        let mut a = Attributes::new();
        a.insert(SIZE_ATTRIBUTE.into(), Attribute::number(size));
        a
    }

    #[test]
    fn what_we_write_is_what_the_python_client_writes_and_reads_back() {
        let mut attributes = Attributes::new();
        let body = write("payloads", "a/b-1", 300_000, &mut attributes);
        assert_eq!(
            String::from_utf8(body.clone()).expect("utf-8"),
            r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"payloads","s3Key":"a/b-1"}]"#
        );
        assert_eq!(attributes[SIZE_ATTRIBUTE], Attribute::number(300_000));
        let pointer = parse(&body, &attributes).expect("parses").expect("pointer");
        assert_eq!(
            pointer,
            Pointer {
                bucket: "payloads".into(),
                key: "a/b-1".into(),
                declared_size: 300_000
            }
        );
        // Python's json.dumps puts spaces after separators; the legacy names are read too.
        let mut legacy = Attributes::new();
        legacy.insert(LEGACY_SIZE_ATTRIBUTE.into(), Attribute::number(5));
        let python = br#"["com.amazon.sqs.javamessaging.MessageS3Pointer", {"s3BucketName": "b-1", "s3Key": "k"}]"#;
        assert_eq!(
            parse(python, &legacy)
                .expect("parses")
                .map(|p| (p.bucket, p.key, p.declared_size)),
            Some(("b-1".into(), "k".into(), 5))
        );
        strip(&mut legacy);
        strip(&mut attributes);
        assert!(legacy.is_empty() && attributes.is_empty());
    }

    #[test]
    fn only_the_attribute_makes_a_pointer() {
        let body = br#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"b-1","s3Key":"k"}]"#;
        assert_eq!(parse(body, &Attributes::new()), Ok(None));
        assert!(!is_marked(&Attributes::new()));
        assert!(is_marked(&marked("1")));
    }

    #[test]
    fn marked_messages_that_are_not_pointers_are_refused_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"hello", "not an S3 pointer"),
            (b"[\"x\", {\"s3BucketName\": \"b-1\", \"s3Key\": \"k\"}]", "unknown pointer class"),
            (br#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"../etc","s3Key":"k"}]"#, "not an S3 bucket name"),
            (br#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"a/b","s3Key":"k"}]"#, "not an S3 bucket name"),
            (br#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"b-1","s3Key":""}]"#, "1 to 1024 bytes"),
            (br#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"b-1","s3Key":"k","x":1}]"#, "not an S3 pointer"),
            (br#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"b-1"}]"#, "not an S3 pointer"),
        ];
        for (body, expected) in cases {
            let error = parse(body, &marked("10")).expect_err("refused");
            assert!(error.to_string().contains(expected), "{error} for {body:?}");
        }
        let ok = br#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"b-1","s3Key":"k"}]"#;
        let error = parse(ok, &marked("ten")).expect_err("bad size");
        assert!(matches!(error, PointerError::BadSize { .. }), "{error}");
        assert!(parse(ok, &marked("-1")).is_err());
    }

    #[test]
    fn bucket_names() {
        for good in ["abc", "my.bucket-1", "Old_Bucket"] {
            assert!(valid_bucket_name(good), "{good}");
        }
        for bad in ["ab", "-abc", "abc-", "a..b", "a/b", "a b", "", "ä-bucket"] {
            assert!(!valid_bucket_name(bad), "{bad}");
        }
    }
}
