//! Low-level filesystem access, the room at the bottom: system calls on
//! descriptors ([`sys`]) and resolving paths beneath a root without leaving
//! it ([`walk`]).
//!
//! Layer apply and export ([`crate::changeset`]), container mount points
//! ([`crate::container`]) and directory image sources ([`crate::image`])
//! stand on it; it stands on nothing of thinlayer's.

pub mod sys;
pub mod walk;
