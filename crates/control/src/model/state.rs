//! The states of items and VMs, an item's health and an event's severity. Their serde names
//! are the strings the API, the CLI and the state database have always used.

use serde::{Deserialize, Serialize};

/// Where a replicated item is in its life (the state machine is drawn in [`crate::failover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ItemState {
    /// Replication was asked for; the stream is not started yet.
    Enabling,
    /// The stream runs; the processor has not applied the end of the initial copy yet.
    InitialReplication,
    Protected,
    /// Replication is being removed, with its cache and replica.
    Disabling,
    FailingOver,
    FailedOver,
    FailoverCommitted,
    /// Replicating back after a committed failover.
    Reprotecting,
    /// The stream cannot be trusted (a disk changed while nothing tracked it): replication is
    /// stopped until `ferry replication repair`.
    ResyncRequired,
    /// A repair is comparing every block with the replica and sending the ones that differ.
    Resynchronizing,
}

wire_names!(ItemState, "item state", {
    Enabling => "enabling",
    InitialReplication => "initial-replication",
    Protected => "protected",
    Disabling => "disabling",
    FailingOver => "failing-over",
    FailedOver => "failed-over",
    FailoverCommitted => "failover-committed",
    Reprotecting => "reprotecting",
    ResyncRequired => "resync-required",
    Resynchronizing => "resynchronizing",
});

/// A move the state machine does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("there is no move from {from} to {to}")]
pub struct IllegalMove {
    pub from: ItemState,
    pub to: ItemState,
}

impl ItemState {
    /// States in which the item's stream and processor run.
    pub fn is_replicating(self) -> bool {
        use ItemState::*;
        matches!(
            self,
            Enabling | InitialReplication | Protected | Reprotecting | Resynchronizing
        )
    }

    /// Whether an item in this state may move to `to`. Staying is always allowed (a job that
    /// runs again after a restart writes the state it already wrote).
    pub fn can_move_to(self, to: ItemState) -> bool {
        use ItemState::*;
        match (self, to) {
            _ if self == to => true,
            // Disabling stops whatever the item was doing.
            (_, Disabling) => true,
            (Enabling, InitialReplication) => true,
            // The initial copy, a reprotect's delta copy or a repair is applied.
            (InitialReplication | Reprotecting | Resynchronizing, Protected) => true,
            (from, ResyncRequired) => from.is_replicating(),
            (Protected | ResyncRequired | InitialReplication, Resynchronizing) => true,
            // Failed over again: to another point.
            (Protected | FailedOver, FailingOver) => true,
            // Done, or rolled back to where it came from.
            (FailingOver, FailedOver | Protected) => true,
            (FailedOver, FailoverCommitted) => true,
            (FailoverCommitted, Reprotecting) => true,
            // A reprotect that failed before it turned the item around.
            (Reprotecting, FailoverCommitted) => true,
            _ => false,
        }
    }

    /// `to`, if the state machine moves this state there; a refusal naming both otherwise.
    pub fn move_to(self, to: ItemState) -> Result<ItemState, IllegalMove> {
        if self.can_move_to(to) {
            Ok(to)
        } else {
            Err(IllegalMove { from: self, to })
        }
    }
}

/// Whether a VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    Running,
    Stopped,
}

wire_names!(VmState, "VM state", {
    Running => "running",
    Stopped => "stopped",
});

/// How an item is doing, worst last.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Healthy,
    Warning,
    Critical,
}

wire_names!(Health, "health", {
    Healthy => "healthy",
    Warning => "warning",
    Critical => "critical",
});

impl Health {
    /// The severity of an event that reports this health (`healthy` is `info`).
    pub fn severity(self) -> Severity {
        match self {
            Health::Healthy => Severity::Info,
            Health::Warning => Severity::Warning,
            Health::Critical => Severity::Critical,
        }
    }
}

/// How much an event (or an alert rule's threshold) matters, least first.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

wire_names!(Severity, "severity", {
    Info => "info",
    Warning => "warning",
    Critical => "critical",
});

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant's serde name is its `as_str`, and reads back.
    fn round_trips<T>(all: &[T], name: fn(&T) -> &'static str)
    where
        T: Serialize
            + serde::de::DeserializeOwned
            + std::str::FromStr
            + PartialEq
            + std::fmt::Debug,
        <T as std::str::FromStr>::Err: std::fmt::Debug,
    {
        for v in all {
            let json = serde_json::to_value(v).unwrap();
            assert_eq!(json, name(v), "{v:?}");
            assert_eq!(&serde_json::from_value::<T>(json).unwrap(), v);
            assert_eq!(&name(v).parse::<T>().unwrap(), v);
        }
    }

    #[test]
    fn wire_names_are_the_old_strings() {
        let items: Vec<&str> = ItemState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            items,
            [
                "enabling",
                "initial-replication",
                "protected",
                "disabling",
                "failing-over",
                "failed-over",
                "failover-committed",
                "reprotecting",
                "resync-required",
                "resynchronizing",
            ]
        );
        round_trips(ItemState::ALL, |s| s.as_str());
        let vms: Vec<&str> = VmState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(vms, ["running", "stopped"]);
        round_trips(VmState::ALL, |s| s.as_str());
        let health: Vec<&str> = Health::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(health, ["healthy", "warning", "critical"]);
        round_trips(Health::ALL, |s| s.as_str());
        let severity: Vec<&str> = Severity::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(severity, ["info", "warning", "critical"]);
        round_trips(Severity::ALL, |s| s.as_str());
        assert_eq!(ItemState::FailingOver.to_string(), "failing-over");
        assert!("loud".parse::<Severity>().is_err());
    }

    #[test]
    fn health_and_severity_rank_alike() {
        assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Critical);
        for h in Health::ALL {
            assert_eq!(h.severity().as_str() == h.as_str(), *h != Health::Healthy);
        }
        assert_eq!(Health::Healthy.severity(), Severity::Info);
    }

    #[test]
    fn the_state_machine_refuses_moves_it_does_not_have() {
        use ItemState::*;
        for s in ItemState::ALL {
            assert!(s.can_move_to(*s));
            assert!(s.can_move_to(Disabling));
        }
        assert_eq!(Protected.move_to(FailingOver), Ok(FailingOver));
        assert_eq!(FailedOver.move_to(FailingOver), Ok(FailingOver));
        assert_eq!(FailingOver.move_to(FailedOver), Ok(FailedOver));
        assert_eq!(FailedOver.move_to(FailoverCommitted), Ok(FailoverCommitted));
        assert_eq!(FailoverCommitted.move_to(Reprotecting), Ok(Reprotecting));
        assert_eq!(Reprotecting.move_to(Protected), Ok(Protected));
        assert_eq!(
            Protected.move_to(FailedOver),
            Err(IllegalMove {
                from: Protected,
                to: FailedOver
            })
        );
        assert!(!FailoverCommitted.can_move_to(FailingOver));
        assert!(!Disabling.can_move_to(Protected));
        assert!(!FailedOver.can_move_to(ResyncRequired));
        assert!(ResyncRequired.can_move_to(Resynchronizing));
        assert!(Resynchronizing.can_move_to(ResyncRequired));
        assert_eq!(
            Protected.move_to(FailedOver).unwrap_err().to_string(),
            "there is no move from protected to failed-over"
        );
    }
}
