//! The bottom floor: plain values every other room shares (runtime kind, mounts,
//! the VM spec, names and ids, where things live). No I/O beyond path lookups,
//! and no import of any other room of this crate.

pub mod invalid;
pub mod mount;
pub mod names;
pub mod paths;
pub mod runtime;
pub mod secret;
pub mod status;
pub mod text;
pub mod vm;
