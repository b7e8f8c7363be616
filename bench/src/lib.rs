//! The iniesta benchmark suite (issue 9): the host on the SQS path against a canned-response
//! endpoint, the peer consumers (boto3, aiobotocore, sqs-consumer) on the same endpoint, Redis
//! locks, the local broker, and the plugin boundary. `cargo run --release -p bench -- all`
//! runs everything and prints the table; see docs/src/benchmarks.md.

pub mod canned;
pub mod procfs;
pub mod proxy;
pub mod setup;
