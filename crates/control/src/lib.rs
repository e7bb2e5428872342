//! The control plane: the resource model (regions, groups, networks, storage accounts,
//! availability sets, VMs, policies, replicated items), its SQLite state, the jobs that change
//! it, the reconciler that makes the world match it (agents serving disks, write streams,
//! processors), and the REST API in front of it.
//!
//! Desired state lives in the database; observed state (stream and processor status) is read
//! from the running parts; [`Control::reconcile`] closes the gap and is safe to re-run after
//! any crash.

mod alerts;
pub mod api;
mod compute;
mod confine;
mod control;
mod db;
mod error;
mod events;
pub mod failover;
mod failpoint;
mod history;
mod hosts;
mod image;
mod ipam;
mod jobs;
mod leases;
pub mod model;
mod operations;
mod orphans;
mod replication;
pub mod requests;
mod resources;
mod stores;
mod vms;

pub use alerts::{AlertRule, CreateAlert};
pub use confine::Confinement;
pub use control::{Control, ControlConfig};
pub use db::{Database, JobQuery};
pub use error::ControlError;
pub use events::EventFilter;
pub use hosts::{AgentIdentity, AgentRecord, CreateJoinToken, JoinRequest, JoinToken, Joined};
pub use leases::LeaseView;
pub use orphans::{Orphan, OrphanKind};
pub use replication::ReplicationFilter;
