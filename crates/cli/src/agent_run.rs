pub async fn run(_: crate::args::AgentRunArgs) -> anyhow::Result<()> {
    anyhow::bail!("running an agent is not built yet")
}
