//! `ferry bench`: figures beside baselines measured in the same run.

use anyhow::Result;

use crate::args::Output;

pub async fn run(_quick: bool, _out: Output) -> Result<()> {
    anyhow::bail!("bench: not written yet")
}
