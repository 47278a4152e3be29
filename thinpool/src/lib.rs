//! Loop-backed device-mapper thin pools and their thin devices.
//!
//! A [`Pool`] is a `thin-pool` target over two linear devices, one for
//! metadata and one for data, each over a sparse file bound to a loop
//! device (or over a block device the user gives). Blocks of the data
//! device are handed to thin devices on first write; a snapshot shares all
//! of its origin's blocks and copies one block on the first write to it.
//!
//! This crate knows nothing about layers, images or the command line. It
//! owns:
//! * the pool's lifecycle: create, open, activate after a reboot,
//!   deactivate, grow online, destroy ([`Pool`]);
//! * thin devices: create, snapshot, activate, deactivate, delete, each
//!   recorded as pending in the pool's change log before the kernel makes
//!   it ([`recovery`]);
//! * the names of every dm device it makes ([`names`]), the crash-safe
//!   record of the pool ([`record`]) and the lock that serializes
//!   processes ([`lock`]).
//!
//! Every mutating operation either completes or leaves a state the next
//! [`Pool::open`] repairs; see the crash-safety notes on [`pool`].
//!
//! Errors ([`Error`]) say what is wrong and carry the data a front end
//! needs to say what to do about it; they name no command of any front
//! end.

#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod helper;
pub mod kernel;
pub mod killpoint;
pub mod lock;
pub mod loopback;
pub mod monitor;
pub mod names;
pub mod phase;
pub mod pool;
pub mod record;
pub mod recovery;
pub mod units;

pub use config::{
    Autoextend, BackingRequest, CreateOptions, MinFree, OnFull, QueueTimeout, Threshold,
};
pub use error::{Error, Result};
pub use names::PoolId;
pub use pool::{
    Backing, BackingKind, Pool, PoolMode, PoolOpenOptions, PoolRecord, PoolState, PoolStatus,
    SpaceStatus, ThinRecord,
};
pub use units::{BlockSize, Bytes, SizeChange, ThinId, TransactionId};

#[cfg(feature = "testing")]
pub mod testing;
