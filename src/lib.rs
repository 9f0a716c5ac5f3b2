//! gh-runner-microvm, host side: ephemeral self-hosted GitHub Actions runners,
//! one fresh microVM per job.
//!
//! - [`cli`]: the command lines of `orchestrator` and `runner`;
//! - [`orchestrator`]: N runner loops, their environment directories and lifetimes;
//! - [`runner`]: one loop: mint a credential, boot a VM, wait, clean up;
//! - [`backend`]: krunvm and podman+krun behind one interface;
//! - [`forge`]: the GitHub client (octocrab), on the host only;
//! - [`guestnet`]: the guest's default network: private namespace, filter, forwards;
//! - [`localforge`]: the embedded GitHub-compatible forge for the demo and tests;
//! - [`types`]: the plain values every room shares (the bottom floor).
//!
//! The guest side and the file protocol between them live in the `guest` crate
//! (library `protocol`).

pub mod backend;
pub mod cli;
pub mod demo;
pub mod doctor;
pub mod forge;
pub mod guestnet;
pub mod hosttool;
pub mod image;
pub mod localforge;
pub mod logging;
pub mod orchestrator;
pub mod runner;
pub mod types;
