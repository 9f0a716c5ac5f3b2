//! Integration tests: the real binaries against the local forge, with stand-in
//! backends (krunvm, podman) that run the real entrypoint as a host process.
//! Run `scripts/build.sh` first (the README's test command does).

mod chaos;
mod chaos_qemu;
mod cli;
mod common;
mod doctor;
mod forge_faults;
mod guestnet;
mod handshake;
mod help;
mod image;
mod lifecycle;
mod logs;
mod loop_e2e;
mod operations;
mod qemu;
mod snapshot;
mod systemd;
mod users;
