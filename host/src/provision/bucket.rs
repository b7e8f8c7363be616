//! The claim check's S3 buckets (`[payloads]`): `check` sees that each can be reached,
//! `setup` creates `payloads.s3_bucket` when it is missing.

use aws_sdk_s3::error::ProvideErrorMetadata as _;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};

use super::Report;
use crate::broker::BrokerError;
use crate::claim_check::ClaimCheck;
use crate::config::Config;

/// Report on `payloads.s3_bucket` and every `payloads.read_buckets` entry.
pub async fn check(config: &Config, report: &mut Report) {
    let Some(claim_check) = ClaimCheck::connect(config).await else {
        return;
    };
    let own = config.payloads.s3_bucket.iter().map(|b| (b, true));
    let others = config
        .payloads
        .read_buckets
        .iter()
        .filter(|b| config.payloads.s3_bucket.as_ref() != Some(*b))
        .map(|b| (b, false));
    for (bucket, ours) in own.chain(others) {
        let found = claim_check.s3().head_bucket().bucket(bucket).send().await;
        let (ok, detail) = match &found {
            Ok(_) => (true, "exists".to_string()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => {
                (false, "does not exist".to_string())
            }
            Err(e) => (
                false,
                format!(
                    "cannot be reached: {}",
                    e.code().map_or_else(|| e.to_string(), str::to_string)
                ),
            ),
        };
        let role = if ours {
            "claim-check bucket"
        } else {
            "claim-check bucket (read only)"
        };
        report.push(
            format!("{role} {bucket}"),
            ok,
            detail,
            // Another service's bucket is theirs to create.
            ours.then_some(super::FIX),
        );
    }
}

/// Create `payloads.s3_bucket` unless it exists (in the configured region).
pub async fn setup(config: &Config) -> Result<(), BrokerError> {
    let (Some(claim_check), Some(bucket)) = (
        ClaimCheck::connect(config).await,
        config.payloads.s3_bucket.as_deref(),
    ) else {
        return Ok(());
    };
    let s3 = claim_check.s3();
    if s3.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(());
    }
    let mut create = s3.create_bucket().bucket(bucket);
    // us-east-1 takes no location constraint; every other region needs its own.
    if let Some(region) = s3.config().region().map(|r| r.as_ref().to_string()) {
        if region != "us-east-1" {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
    }
    match create.send().await {
        Ok(_) => {
            tracing::info!(bucket, "claim-check bucket created");
            Ok(())
        }
        Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
        Err(e) => Err(BrokerError::Aws {
            operation: "CreateBucket",
            message: format!(
                "{bucket}: {}",
                e.code().map_or_else(|| e.to_string(), str::to_string)
            ),
            retryable: false,
        }),
    }
}
