//! The peers the host is measured against, one module each: each says how to start it against
//! a canned endpoint. They consume the same messages and delete each one, as the host does.

pub(crate) mod aiobotocore;
pub(crate) mod boto3;
pub(crate) mod node;
mod python;

pub(crate) use node::node_env;
pub(crate) use python::python_env;
