//! The scenarios: one module each, each adding its rows to the table.

pub(crate) mod handlers;
pub(crate) mod latency;
pub(crate) mod local;
pub(crate) mod peers;
pub(crate) mod plugin;
pub(crate) mod redis;
pub(crate) mod reload;
pub(crate) mod sqs;
pub(crate) mod startup;
