//! The hypervisor hosts: each runs a `ferry agent` that dials out to the server. Who an agent
//! is (join tokens, credentials, revocation) lives in [`identity`].

pub(crate) mod identity;

pub use identity::{AgentIdentity, AgentRecord, CreateJoinToken, JoinRequest, JoinToken, Joined};
