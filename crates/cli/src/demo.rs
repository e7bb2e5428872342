//! `ferry demo`: the whole story on the embedded default, verified byte for byte.

use std::path::PathBuf;

use anyhow::Result;

pub async fn run(_data: Option<PathBuf>) -> Result<()> {
    anyhow::bail!("demo: not written yet")
}
