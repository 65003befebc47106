//! Live state transfer (issue 10, respawn): after a failover the surviving
//! Primary starts a new Secondary on another host by pre-copy live migration
//! while its guest runs, then a short stop to send the last dirty pages and
//! the vCPU + device state; lockstep logging starts from that exit.
//!
//! - [`message`]: the transfer messages and their strict binary codec.
//! - [`sender`]: the Primary's side (rounds, when to stop the guest), pure.
//! - [`receiver`]: the new Secondary's side (offer check, pages into a
//!   [`receiver::GuestMemoryImage`], digest check on Switch), pure.
//! - [`memory`]: a memory image in a `Vec` for tests and the simulation.
//! - [`backoff`]: when to retry a failed transfer.
//!
//! Deliberately not here (the integration): the threads that own a sender or
//! receiver, carrying messages over the logging channel, KVM (dirty log,
//! pausing vCPUs, `snapshot.rs` state), and starting lockstep at the Switch.
//!
//! Invariants checked in code: `sender` (rounds increase by one; Switch only
//! after every page was sent once; Done and Failed are final), `receiver`
//! (pages only of the current round, in range, of the page size; Switch only
//! with the memory digest the sender computed).

pub mod backoff;
pub mod memory;
pub mod message;
mod message_decode;
pub mod receiver;
pub mod sender;
mod sender_io;

#[cfg(test)]
mod backoff_tests;
#[cfg(test)]
mod message_tests;
#[cfg(test)]
mod receiver_tests;
#[cfg(test)]
mod sender_tests;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod sim_world_tests;
