//! An aiobotocore asyncio loop (Python): the async client insanic-iniesta uses
//! (bench/peers/python/aiobotocore_loop.py).

use std::process::Command;

use bench::canned::Canned;

use crate::{Ctx, QUEUE};

/// The command that consumes `canned`'s queue.
pub(crate) fn command(ctx: &Ctx, canned: &Canned) -> Command {
    super::python::script(ctx, "aiobotocore_loop.py", canned, QUEUE)
}
