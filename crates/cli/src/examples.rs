//! Examples shown at the end of every command's `--help`, and the command tree they are
//! attached to (also used to generate shell completions).

use clap::CommandFactory;

use crate::args::Cli;

/// `(command path, examples)`: one entry per command that runs something.
const EXAMPLES: &[(&str, &str)] = &[
    (
        "demo",
        "  ferry demo                                   # the whole story in a temporary directory",
    ),
    (
        "server",
        "  ferry server --data ./ferry-data             # embedded default: regions east and west\n  ferry server --data /var/lib/ferry --listen 127.0.0.1:7480 --config ferry.json\n  FERRY_DATABASE=postgres://ferry@db.example/ferry ferry server --data /var/lib/ferry   # state on PostgreSQL",
    ),
    (
        "bench",
        "  ferry bench                                  # every figure beside its baseline\n  ferry bench --quick --only nbd,repair -o json",
    ),
    ("region list", "  ferry region list"),
    ("group create", "  ferry group create rg1 --region east"),
    ("group list", "  ferry group list -o json"),
    ("group show", "  ferry group show rg1"),
    (
        "network create",
        "  ferry network create rg1/vnet1 --address-space 10.1.0.0/16 --subnet default=10.1.0.0/24 --subnet db=10.1.1.0/24",
    ),
    ("network list", "  ferry network list"),
    ("network show", "  ferry network show rg1/vnet1 -o yaml"),
    (
        "storage create",
        "  ferry storage create rg1/sa1                          # a local directory\n  ferry storage create rg1/blob --url az://disks        # Azure Blob (AZURE_STORAGE_* variables)\n  ferry storage create rg1/s3 --url s3://disks          # S3 (AWS_* variables)",
    ),
    ("storage list", "  ferry storage list"),
    ("storage show", "  ferry storage show rg1/sa1"),
    (
        "availability-set create",
        "  ferry availability-set create rg1/web-set",
    ),
    ("availability-set list", "  ferry availability-set list"),
    (
        "availability-set show",
        "  ferry availability-set show rg1/web-set",
    ),
    (
        "vm create",
        "  ferry vm create rg1/web1 --network vnet1 --subnet default --disk 64MiB@sa1 --disk 32MiB@sa2\n  ferry vm create rg1/app1 --network vnet1 --subnet default --disk 1GiB@sa1 --compute qemu \\\n      --kernel vmlinuz --initrd initrd.img --append 'quiet'",
    ),
    ("vm list", "  ferry vm list"),
    ("host list", "  ferry host list\n  ferry host list -o json"),
    (
        "lease list",
        "  ferry lease list                             # which server works on each item",
    ),
    (
        "vm show",
        "  ferry vm show rg1/web1 -o json                # disks[].nbd_uri, hydration after a failover",
    ),
    ("vm delete", "  ferry vm delete rg1/web1"),
    ("vm start", "  ferry vm start rg1/web1"),
    ("vm stop", "  ferry vm stop rg1/web1"),
    ("vm console", "  ferry vm console rg1/app1"),
    (
        "policy create",
        "  ferry policy create fast --crash-consistent-every 5s --retention 1h --thin 10m:5m\n  ferry policy create days --retention 7d --journal 24h --app-consistent-every 1h\n  ferry policy create strict --rpo-warning 30s --rpo-critical 2m --no-point-warning 15m",
    ),
    ("policy list", "  ferry policy list"),
    ("policy show", "  ferry policy show fast"),
    (
        "replication enable",
        "  ferry replication enable rg1/web1 --target-region west --policy fast --wait",
    ),
    (
        "replication list",
        "  ferry replication list                       # health and RPO of every item",
    ),
    (
        "replication show",
        "  ferry replication show rg1/web1\n  ferry replication show rg1/web1 -o json",
    ),
    (
        "replication disable",
        "  ferry replication disable rg1/web1 --dry-run  # the plan\n  ferry replication disable rg1/web1 --wait",
    ),
    (
        "replication verify",
        "  ferry replication verify rg1/web1\n  ferry replication verify rg1/web1 --repair",
    ),
    (
        "replication repair",
        "  ferry replication repair rg1/web1 --wait",
    ),
    (
        "replication rpo-history",
        "  ferry replication rpo-history rg1/web1 --since 1h\n  ferry replication rpo-history rg1/web1 --since 7d -o json",
    ),
    (
        "recovery-point list",
        "  ferry recovery-point list rg1/web1",
    ),
    (
        "disk export",
        "  ferry disk export rg1/web1 --disk 0 --recovery-point latest --out web1-disk0.raw\n  ferry disk export rg1/web1 --disk 0 --recovery-point 2026-11-27T10:15:03Z --out then.raw",
    ),
    (
        "failover test",
        "  ferry failover test rg1/web1 --wait\n  ferry failover test rg1/web1 --recovery-point latest-app-consistent --network drill --wait",
    ),
    (
        "failover test-cleanup",
        "  ferry failover test-cleanup rg1/web1 --wait",
    ),
    (
        "failover run",
        "  ferry failover run rg1/web1 --shutdown-source --wait     # planned: nothing lost\n  ferry failover run rg1/web1 --recovery-point latest-processed --wait",
    ),
    ("failover commit", "  ferry failover commit rg1/web1 --wait"),
    ("reprotect", "  ferry reprotect rg1/web1 --wait"),
    (
        "job list",
        "  ferry job list\n  ferry job list --state running\n  ferry job list --limit 50 --after 1200   # the next page",
    ),
    ("job show", "  ferry job show 7 --wait"),
    (
        "event list",
        "  ferry event list --target rg1/web1 --severity warning\n  ferry event list --kind resync-required -o json",
    ),
    (
        "alert create",
        "  ferry alert create oncall --url http://127.0.0.1:9000/hook --severity critical",
    ),
    ("alert list", "  ferry alert list"),
    (
        "orphan list",
        "  ferry orphan list\n  ferry orphan list -o json",
    ),
    ("alert delete", "  ferry alert delete oncall"),
    (
        "agent",
        "  ferry agent --data /var/lib/ferry-agent --server http://dr.example:7480 --region east --name east-1 --join-token ferry-join-TOKEN",
    ),
    (
        "agent token create",
        "  ferry agent token create --region east            # one use, 15 minutes\n  ferry agent token create --region east --ttl 1h -o json",
    ),
    ("agent list", "  ferry agent list"),
    (
        "agent revoke",
        "  ferry agent revoke east-1                         # its credential is refused from now on",
    ),
    (
        "completions",
        "  ferry completions bash > /etc/bash_completion.d/ferry\n  ferry completions zsh > \"${fpath[1]}/_ferry\"",
    ),
];

/// The full command, every command with its examples.
pub fn command() -> clap::Command {
    attach(Cli::command(), "")
}

fn attach(mut cmd: clap::Command, path: &str) -> clap::Command {
    let here = if path.is_empty() {
        String::new()
    } else {
        path.to_string()
    };
    if let Some((_, ex)) = EXAMPLES.iter().find(|(p, _)| *p == here) {
        cmd = cmd.after_help(format!("Examples:\n{ex}"));
    }
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for name in names {
        let sub = if here.is_empty() {
            name.clone()
        } else {
            format!("{here} {name}")
        };
        cmd = cmd.mut_subcommand(&name, |c| attach(c, &sub));
    }
    cmd
}

/// Every command path that runs something (a command without subcommands).
#[cfg(test)]
fn leaves() -> Vec<String> {
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        let subs: Vec<&clap::Command> = cmd
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
            .collect();
        if subs.is_empty() {
            out.push(path.to_string());
        }
        for c in subs {
            let p = if path.is_empty() {
                c.get_name().to_string()
            } else {
                format!("{path} {}", c.get_name())
            };
            walk(c, &p, out);
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_examples() {
        let missing: Vec<String> = leaves()
            .into_iter()
            .filter(|l| !EXAMPLES.iter().any(|(p, _)| p == l))
            .collect();
        assert!(
            missing.is_empty(),
            "commands without examples: {missing:#?}"
        );
        for (path, ex) in EXAMPLES {
            assert!(
                ex.contains(&format!("ferry {path}")),
                "{path}: an example runs it"
            );
        }
    }

    #[test]
    fn every_example_parses() {
        for (path, ex) in EXAMPLES {
            for line in ex.replace("\\\n", " ").lines() {
                let line = line.split('#').next().unwrap_or_default();
                let line = line.split('>').next().unwrap_or_default();
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.first() != Some(&"ferry") {
                    continue;
                }
                if let Err(e) = command().try_get_matches_from(&words) {
                    panic!("{path}: example {line:?} does not parse: {e}");
                }
            }
        }
    }
}
