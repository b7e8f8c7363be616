//! iniesta's integration tests, in one test binary.
//!
//! Each module was once its own file under `host/tests/` and so its own binary, each linking
//! the whole host; gathered here they link once. Run one area with a filter on the module
//! path, e.g. `cargo test -p iniesta --test it -- locks::` (or `-- aws::` for the AWS tests).
//! Fixtures and the Python conformance peers stay where they were (`host/tests/fixtures`,
//! `host/tests/conformance`); `common` is the shared support (external servers, the host as a
//! subprocess, scratch directories).

mod common;

mod authoring;
mod aws;
mod claim_check;
mod cli_output;
mod completions;
mod config_env;
mod config_errors;
mod conformance;
mod console;
mod credentials;
mod dlq;
mod docs_book;
mod egress;
mod examples;
mod filter_parity;
mod inprocess;
mod isolate;
mod local_broker;
mod lock_tls;
mod locks;
mod operate;
mod plugins;
mod policies;
mod python_fleet;
mod receiving;
mod reload;
mod routing;
mod run;
mod sentry;
mod shapes;
mod sqs_clients;
mod traces;
