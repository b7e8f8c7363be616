//! # iniesta
//!
//! A host for event messaging over AWS SNS/SQS (or an embedded local broker) that runs the
//! business logic from handler plugins. One module per concern, and no import cycle between
//! them: plain data and pure logic ([`config`], [`wire`], [`filter`], [`media_type`],
//! [`tasks`], [`sqlite`]) at the bottom; the runtime modules ([`route`], [`broker`], [`lock`],
//! [`plugins`], [`pipeline`] (whose `invoke` is the one place handlers run), [`egress`] (with
//! [`acct`] credential profiles), [`ingress`], [`provision`], [`dlq`], [`isolate`] (plugins in
//! worker processes), [`ops`] (metrics, health, error reports, the operator console),
//! [`scaffold`]) above them, each checking its own config section; [`validate`] collects those
//! checks; [`app`] composes a running host; [`cli`] has one file per command.

pub mod acct;
pub mod app;
pub mod backoff;
pub mod broker;
pub mod claim_check;
pub mod cli;
pub mod config;
pub mod dlq;
pub mod egress;
pub mod filter;
pub mod ingress;
pub mod isolate;
pub mod lock;
pub mod media_type;
pub mod mutex;
pub mod ops;
pub mod pipeline;
pub mod plugins;
pub mod policy;
pub mod provision;
pub mod route;
pub mod scaffold;
pub mod sqlite;
pub mod state_file;
pub mod tasks;
pub mod telemetry;
pub mod validate;
pub mod web;
pub mod wire;
