//! Dispatch of the client commands.

mod agent;
mod item_view;
mod replication;
mod resources;

use anyhow::{Context, Result, anyhow};
use ferry_types::QualifiedName;

use crate::args::{Cli, Cmd};
use crate::client::Client;

pub async fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Demo => return crate::demo::run(cli.data.clone()).await,
        Cmd::Server(args) => return crate::server::run(cli.data.clone(), args).await,
        Cmd::Bench { quick, only } => return crate::bench::run(*quick, only, cli.output).await,
        Cmd::Agent(args) if args.cmd.is_none() => {
            let run = crate::args::AgentRunArgs {
                data: cli.data.clone(),
                ..args.run.clone()
            };
            return crate::agent::run(run).await;
        }
        Cmd::Completions { shell } => {
            let mut cmd = crate::examples::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "ferry", &mut script);
            // A reader that stops early (`| head`) is not an error.
            return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(anyhow!("write the completion script: {e}"))
                }
                _ => Ok(()),
            };
        }
        _ => {}
    }
    let client = Client::new(&cli)?;
    let out = cli.output;
    match cli.cmd {
        Cmd::Region(c) => resources::region(&client, out, c).await,
        Cmd::Host(c) => resources::host(&client, out, c).await,
        Cmd::Lease(c) => resources::lease(&client, out, c).await,
        Cmd::Group(c) => resources::group(&client, out, c).await,
        Cmd::Network(c) => resources::network(&client, out, c).await,
        Cmd::Storage(c) => resources::storage(&client, out, c).await,
        Cmd::AvailabilitySet(c) => resources::availability_set(&client, out, c).await,
        Cmd::Policy(c) => resources::policy(&client, out, c).await,
        Cmd::Vm(c) => resources::vm(&client, out, c).await,
        Cmd::Replication(c) => replication::replication(&client, out, c).await,
        Cmd::RecoveryPoint(c) => replication::points(&client, out, c).await,
        Cmd::Disk(c) => replication::disk(&client, out, c).await,
        Cmd::Job(c) => replication::job(&client, out, c).await,
        Cmd::Event(c) => replication::events(&client, out, c).await,
        Cmd::Orphan(crate::args::OrphanCmd::List) => {
            let orphans = client.get("/v1/orphans").await?;
            crate::output::print(
                out,
                &orphans,
                &["kind", "name", "reason", "first_seen", "delete_after"],
            );
            Ok(())
        }
        Cmd::Alert(c) => replication::alerts(&client, out, c).await,
        Cmd::Failover(c) => replication::failover(&client, out, c).await,
        Cmd::Reprotect { name, wait } => replication::reprotect(&client, out, &name, wait).await,
        Cmd::Agent(crate::args::AgentArgs { cmd: Some(c), .. }) => {
            agent::agent(&client, out, c).await
        }
        Cmd::Agent(crate::args::AgentArgs { cmd: None, .. })
        | Cmd::Demo
        | Cmd::Server(_)
        | Cmd::Bench { .. }
        | Cmd::Completions { .. } => {
            unreachable!("handled above")
        }
    }
}

/// Parse `GROUP/NAME`.
pub(crate) fn qualified(s: &str) -> Result<QualifiedName> {
    s.parse::<QualifiedName>().map_err(|e| anyhow!("{e}"))
}

/// Parse a duration flag into seconds.
pub(crate) fn seconds(flag: &str, v: &Option<String>) -> Result<Option<f64>> {
    v.as_deref()
        .map(|s| {
            ferry_types::parse_duration(s)
                .map(|d| d.as_secs_f64())
                .with_context(|| format!("--{flag}"))
        })
        .transpose()
}
