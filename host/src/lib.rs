//! # iniesta
//!
//! A host for event messaging over AWS SNS/SQS (or an embedded local broker) that runs the
//! business logic from handler plugins. One module per concern: [`config`], [`wire`],
//! [`filter`], [`route`] (with [`media_type`]), [`broker`], [`lock`], [`plugins`], [`pipeline`], [`egress`] (with
//! [`acct`] credential profiles), [`ingress`], [`provision`], [`dlq`] (list, redrive, purge
//! dead letters), [`isolate`] (plugins in worker processes), [`ops`] (metrics, health, error
//! reports, the operator console), [`scaffold`], [`cli`].

pub mod acct;
pub mod app;
pub mod broker;
pub mod cli;
pub mod config;
pub mod dlq;
pub mod egress;
pub mod filter;
pub mod ingress;
pub mod isolate;
pub mod lock;
pub mod media_type;
pub mod ops;
pub mod pipeline;
pub mod plugins;
pub mod provision;
pub mod route;
pub mod scaffold;
pub mod sqlite;
pub mod tasks;
pub mod validate;
pub mod wire;
