//! Low-level filesystem access, the room at the bottom: system calls on
//! descriptors ([`sys`]).
//!
//! Layer apply and export ([`crate::changeset`]), container mount points
//! ([`crate::container`]) and directory image sources ([`crate::image`])
//! stand on it; it stands on nothing of thinlayer's.

pub mod sys;
