//! A plain boto3 loop (Python): receive ten, handle, `delete_message_batch`, repeat — what most
//! Python services on SQS do (bench/peers/python/boto3_loop.py).

use std::process::Command;

use bench::canned::Canned;

use crate::{Ctx, QUEUE};

/// The command that consumes `canned`'s queue.
pub(crate) fn command(ctx: &Ctx, canned: &Canned) -> Command {
    super::python::script(ctx, "boto3_loop.py", canned, QUEUE)
}
