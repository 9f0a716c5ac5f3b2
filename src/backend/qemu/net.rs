//! Guest networking of the QEMU backend: `--net` and what a running VM's network
//! holds on the host (its namespace's connector and its forward proxies), set up
//! around the VM's spawn. The policy, namespace and proxies are `guestnet`'s; the
//! QEMU options are `cmdline`'s.

use std::path::PathBuf;

pub use crate::guestnet::forward::{net_connect, Forward};
use crate::guestnet::{forward, sandbox};

use super::{BackendError, Qemu};

/// `--net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetMode {
    /// The internet, and nothing of the host: user networking inside a private
    /// namespace whose filter refuses the host's own addresses, loopback,
    /// link-local (metadata) and private ranges (open some with --net-allow).
    Internet,
    /// User networking with `restrict=on`: only the `--net-forward` targets.
    Restricted,
    /// Plain QEMU user networking, no isolation: 10.0.2.2 is the host's loopback
    /// and the guest reaches everything the host reaches.
    User,
}

/// What a VM's network holds on the host while it runs; dropped with the VM.
#[derive(Debug, Default)]
pub(super) struct VmNet {
    _proxies: Vec<forward::Proxy>,
    _attached: Option<sandbox::Attached>,
}

impl Qemu {
    /// The Unix socket of forward `i` of VM `name`, in its private state directory.
    pub(super) fn forward_socket(&self, name: &str, i: usize) -> PathBuf {
        self.dir(name).join(format!("fwd-{i}.sock"))
    }

    /// The filter of a VM's namespace, with the host's addresses as they are now.
    fn rules(&self) -> Result<String, BackendError> {
        let host = crate::guestnet::host_nets()
            .map_err(|e| BackendError::Spawn("list the host's addresses".into(), e))?;
        Ok(self.cfg.policy.ruleset(
            &host.addresses,
            &sandbox::connector_addresses(),
            &host.onlink,
        ))
    }

    /// Once per loop: can this host give VMs the network asked for?
    pub(super) async fn check_net(&self) -> Result<(), BackendError> {
        match (&self.tools, self.cfg.net) {
            (Some(tools), _) => sandbox::probe(tools, &self.rules()?).await?,
            (None, NetMode::User) => tracing::warn!(
                "--net user: jobs can reach this host's loopback services through 10.0.2.2, \
                 its other addresses, its LAN and cloud metadata services; the default (--net internet) closes those"
            ),
            (None, _) => {}
        }
        Ok(())
    }

    /// Start the VM process `cmd` with its network: the forward proxies listen
    /// first; with `--net internet` the process enters its own namespace, which is
    /// filtered and then joined to the internet before the guest can send anything
    /// out (until then the namespace has no route).
    pub(super) fn spawn_with_net(
        &self,
        name: &str,
        mut cmd: std::process::Command,
    ) -> Result<tokio::process::Child, BackendError> {
        let mut net = VmNet::default();
        for (i, f) in self.cfg.forwards.iter().enumerate() {
            let sock = self.forward_socket(name, i);
            net._proxies
                .push(forward::Proxy::listen(&sock, f.host).map_err(|e| {
                    BackendError::Spawn(format!("listen on {}", sock.display()), e)
                })?);
        }
        if self.tools.is_some() {
            sandbox::Entry::new().apply(&mut cmd);
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child =
            crate::hosttool::spawn_async(cmd).map_err(|e| BackendError::Spawn(program, e))?;
        if let Some(tools) = &self.tools {
            let log = self.dir(name).join("slirp4netns.log");
            let attached = self.rules().and_then(|rules| {
                let pid = child.id().unwrap_or(0);
                sandbox::attach(tools, pid, &rules, &log).map_err(BackendError::from)
            });
            match attached {
                Ok(a) => net._attached = Some(a),
                Err(e) => {
                    let _ = child.start_kill();
                    return Err(e);
                }
            }
        }
        if let Ok(mut nets) = self.nets.lock() {
            nets.insert(name.to_string(), net);
        }
        Ok(child)
    }

    /// The VM is gone: its connector and proxies go too.
    pub(super) fn drop_net(&self, name: &str) {
        if let Ok(mut nets) = self.nets.lock() {
            nets.remove(name);
        }
    }
}
