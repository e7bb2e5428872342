//! Plain values shared by every part of ferry: resource names, sequence numbers, generations,
//! byte sizes, durations and instants. No I/O happens here, except [`failpoint`]: the named
//! crash points tests arm through the environment, shared by every crate; and [`blocking`] runs
//! the other crates' blocking work off the async runtime's workers.

pub mod blocking;
pub mod failpoint;
pub mod histogram;
mod names;
mod sizes;
mod stream;
mod time;

pub use names::{NameError, QualifiedName, ResourceName};
pub use sizes::{ByteSize, SizeError, parse_duration};
pub use stream::{Generation, Seq, StreamId};
pub use time::Timestamp;
