//! QEMU's argv for one VM: machine and accelerator, memory, kernel and
//! initramfs, 9p shares, disks, network, console, QMP and the guest's kernel
//! command line (`ghrm.*` keys). It builds the command; it does not run it.

use std::path::{Path, PathBuf};

use protocol::cmdline::{self, Cmdline, Share};
use protocol::exit;

use super::accel::host_tsc_khz;
use super::net::NetMode;
use super::{BackendError, Qemu};
use crate::types::vm::VmSpec;

/// How a VM's QEMU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Boot {
    /// Booted from its kernel, with its own command line.
    Cold,
    /// A snapshot template: booted to wait (`ghrm.wait=1`) with no network
    /// (`restrict=on`), nothing per-VM on its command line, and the resume port.
    Template,
    /// Restored from a template (`-incoming`), with the template's devices and
    /// command line; its own comes over the resume port.
    Restore,
    /// `--warm` without a template: booted cold with the template's devices and
    /// command line, to wait for its own over the resume port.
    Warm,
}

/// The file descriptor a restored QEMU reads its template from (`-incoming fd:`).
pub(super) const INCOMING_FD: i32 = 64;

/// The two kernel command lines of a VM.
pub(super) struct Lines {
    /// What it is cold-booted with (and what a restore sends it).
    pub cold: String,
    /// What its template is booted with: the same less everything per-VM.
    pub template: String,
}

impl Qemu {
    /// The VM's process: QEMU with its argv, its own messages in `qemu.log` (the
    /// guest's console goes to `console.log` beside it).
    pub(super) fn qemu_command(
        &self,
        spec: &VmSpec,
        boot: Boot,
    ) -> Result<std::process::Command, BackendError> {
        let (program, args) = self.argv(spec, boot)?;
        let mut cmd = crate::hosttool::command(program);
        cmd.args(args);
        let log = self.console_path(&spec.name).with_file_name("qemu.log");
        let f = std::fs::File::create(&log)
            .map_err(|e| BackendError::Spawn(log.display().to_string(), e))?;
        cmd.stdout(std::process::Stdio::null()).stderr(f);
        Ok(cmd)
    }

    /// The argv of the VM.
    pub(super) fn argv(
        &self,
        spec: &VmSpec,
        boot: Boot,
    ) -> Result<(PathBuf, Vec<String>), BackendError> {
        let (kernel, initrd, root) = self.bundle(Path::new(&spec.image))?;
        let d = self.dir(&spec.name);
        let mut a: Vec<String> = vec![];
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        if self.uses_kvm() {
            push(&[
                "-M",
                "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on",
                "-accel",
                "kvm",
                "-cpu",
                "host",
            ]);
        } else {
            // Under TCG pit=off or pic=off hang the guest at TSC calibration.
            push(&[
                "-M",
                "microvm,x-option-roms=off,isa-serial=on,rtc=on",
                "-accel",
                "tcg",
                "-cpu",
                "max",
            ]);
        }
        push(&[
            "-m",
            &spec.memory.to_string(),
            "-smp",
            &spec.cpus.to_string(),
        ]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        push(&[
            "-kernel",
            &kernel.display().to_string(),
            "-initrd",
            &initrd.display().to_string(),
        ]);
        // cryptomgr.notests: the crypto API's boot-time self-tests cost ~0.4 s of CPU
        // under TCG (DEVELOPMENT.md, "QEMU microVMs": what was measured, what was not kept).
        let mut cmdline = format!(
            "console=ttyS0 panic=-1 {} cryptomgr.notests",
            console_level()
        );
        // Under TCG the guest's TSC runs at the host's rate, and the kernel's calibration
        // against the emulated PIT fails often on a loaded (or nested) host, after which the
        // boot hangs ("tsc: Unable to calibrate against PIT"). Tell it the rate instead.
        if !self.uses_kvm() {
            if let Some(khz) = host_tsc_khz() {
                cmdline.push_str(&format!(" tsc_early_khz={khz}"));
            }
        }
        // The ghrm.* words the guest reads (protocol::cmdline, written and parsed by
        // the same code).
        let mut ghrm = Cmdline {
            net: true,
            dns: Some(spec.dns.clone()),
            ..Cmdline::default()
        };
        let mut shares = vec![];
        if let Some(env) = &spec.env_dir {
            shares.push((
                "env".to_string(),
                env.clone(),
                protocol::GUEST_ENV_DIR.to_string(),
                false,
            ));
        }
        for (i, m) in spec.mounts.iter().enumerate() {
            let ro = m
                .options
                .as_deref()
                .is_some_and(|o| o.split(',').any(|x| x == "ro"));
            shares.push((format!("m{i}"), m.host.clone(), m.guest.clone(), ro));
        }
        for (tag, host, guest, ro) in &shares {
            ghrm.mounts.push(Share {
                tag: tag.clone(),
                path: guest.clone(),
            });
            let ro = if *ro { ",readonly=on" } else { "" };
            push(&[
                "-fsdev",
                &format!(
                    "local,id={tag},path={},security_model=mapped-xattr{ro}",
                    qemu_escape(&host.display().to_string())
                ),
            ]);
            push(&[
                "-device",
                &format!("virtio-9p-device,fsdev={tag},mount_tag={tag}"),
            ]);
        }
        if let Some(r) = &root {
            // The image's disk, read-only, behind a per-VM copy-on-write overlay that
            // QEMU creates in its TMPDIR (/var/tmp) and unlinks at once: nothing of
            // it outlives the VM, even a SIGKILLed one.
            ghrm.root = Some(protocol::bundle::ROOT_LABEL.into());
            ghrm.init = Some(r.init.clone());
            push(&[
                "-drive",
                &format!(
                    "file={},format=raw,if=none,id=root,snapshot=on,discard=unmap",
                    qemu_escape(&r.disk.display().to_string())
                ),
                "-device",
                "virtio-blk-device,drive=root",
            ]);
            if self.cfg.scratch > 0 {
                push(&[
                    "-drive",
                    &format!(
                        "file={},format=raw,if=none,id=scratch,discard=unmap",
                        qemu_escape(&self.scratch_path(&spec.name).display().to_string())
                    ),
                    "-device",
                    "virtio-blk-device,drive=scratch",
                ]);
            }
        }
        // -D: PID 1 (the bundle's /init, or the image's entrypoint after stage 1)
        // sets up, then executes the dev entrypoint.
        let image_init = root
            .as_ref()
            .map(|r| r.init.as_str())
            .unwrap_or(protocol::IMAGE_ENTRYPOINT);
        if spec.entrypoint != image_init && spec.entrypoint != protocol::IMAGE_ENTRYPOINT {
            ghrm.exec = Some(spec.entrypoint.clone());
        }
        // Every value and init argument one word: none can add another.
        let cmdline = self.lines(spec, &cmdline, &ghrm)?;
        let cmdline = match boot {
            Boot::Cold => cmdline.cold,
            Boot::Template | Boot::Restore | Boot::Warm => cmdline.template,
        };
        // x86 kernels cut the command line at 2048 bytes; in -I mode the guest's
        // configuration (JIT config included) travels on it.
        if cmdline.len() >= 2048 {
            return Err(BackendError::Image(
                spec.image.clone().into(),
                format!(
                    "the guest's kernel command line would be {} bytes (x86 allows 2047); without isolation (-I) \
                     the configuration travels on it: run with isolation",
                    cmdline.len()
                ),
            ));
        }
        let mut netdev = "user,id=n0".to_string();
        if self.cfg.net == NetMode::Restricted || boot == Boot::Template {
            netdev.push_str(",restrict=on");
        }
        for (i, f) in self.cfg.forwards.iter().enumerate() {
            let helper = crate::guestnet::forward::helper_command(
                &self.helper,
                &self.forward_socket(&spec.name, i),
            )
            .map_err(|e| BackendError::Image(spec.image.clone().into(), e))?;
            netdev.push_str(&format!(
                ",guestfwd=tcp:{}:{}-cmd:{helper}",
                f.guest.0, f.guest.1
            ));
        }
        push(&["-netdev", &netdev, "-device", "virtio-net-device,netdev=n0"]);
        push(&["-device", exit::DEBUG_EXIT_DEVICE]);
        if boot != Boot::Cold {
            push(&[
                "-device",
                "virtio-serial-device",
                "-chardev",
                &format!(
                    "socket,id=ctl,path={},server=on,wait=off",
                    qemu_escape(&d.join("ctl.sock").display().to_string())
                ),
                "-device",
                &format!(
                    "virtserialport,chardev=ctl,name={}",
                    protocol::resume::PORT_NAME
                ),
            ]);
        }
        if boot == Boot::Restore {
            push(&["-incoming", &format!("fd:{INCOMING_FD}")]);
        }
        push(&[
            "-serial",
            &format!(
                "file:{}",
                qemu_escape(&d.join("console.log").display().to_string())
            ),
        ]);
        push(&[
            "-qmp",
            &format!(
                "unix:{},server=on,wait=off",
                qemu_escape(&d.join("qmp.sock").display().to_string())
            ),
        ]);
        push(&["-append", &cmdline]);
        Ok((self.binary.clone(), a))
    }
}

impl Qemu {
    /// The VM's kernel command lines: `head` (the kernel's own words), then the
    /// `ghrm.*` words of `ghrm` and the init arguments when cold; only those
    /// every VM of the loop shares, and `ghrm.wait=1`, for its template.
    fn lines(&self, spec: &VmSpec, head: &str, ghrm: &Cmdline) -> Result<Lines, BackendError> {
        let bad = |e| BackendError::Cmdline(spec.image.clone().into(), e);
        let cold = cmdline::kernel_line(head, ghrm, &spec.args).map_err(bad)?;
        let shared = Cmdline {
            net: ghrm.net,
            dns: ghrm.dns.clone(),
            root: ghrm.root.clone(),
            init: ghrm.init.clone(),
            wait: true,
            ..Cmdline::default()
        };
        let template = cmdline::kernel_line(head, &shared, &[]).map_err(bad)?;
        Ok(Lines { cold, template })
    }

    /// The command line a VM restored from its template is sent (its cold one).
    pub(super) fn resume_line(&self, spec: &VmSpec) -> Result<String, BackendError> {
        let (_, args) = self.argv(spec, Boot::Cold)?;
        args.iter()
            .position(|a| a == "-append")
            .and_then(|i| args.get(i + 1))
            .cloned()
            .ok_or_else(|| BackendError::Image(spec.image.clone().into(), "no -append".into()))
    }
}

/// The kernel's console verbosity. `quiet` (only errors: a panic, a module that
/// fails; printing each line over the emulated UART costs boot time) unless the
/// loop runs with `-v`, then every line. The guest's own messages are not affected.
fn console_level() -> &'static str {
    if tracing::enabled!(tracing::Level::DEBUG) {
        "loglevel=7"
    } else {
        "quiet"
    }
}

/// A value inside a QEMU `-drive` option list: commas are doubled.
fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// QEMU's reading of an option list (`key=value,key=value`, `,,` a comma).
    fn qemu_opts(s: &str) -> Vec<String> {
        let (mut out, mut cur, mut it) = (vec![], String::new(), s.chars().peekable());
        while let Some(c) = it.next() {
            match (c, it.peek()) {
                (',', Some(',')) => {
                    it.next();
                    cur.push(',');
                }
                (',', _) => out.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        out.push(cur);
        out
    }

    proptest! {
        /// Any host path stays one option of a `-fsdev`/`-drive` list: commas in it
        /// cannot add an option (`,readonly=off`, `,file=…`).
        #[test]
        fn a_path_is_one_option(path in "[a-z/,=. ]{0,16}|\\PC{0,16}") {
            let opts = qemu_opts(&format!("local,id=env,path={},security_model=mapped-xattr", qemu_escape(&path)));
            prop_assert_eq!(opts.len(), 4);
            prop_assert_eq!(&opts[2], &format!("path={path}"));
        }
    }

    #[test]
    fn the_kernel_is_quiet_unless_the_loop_is_verbose() {
        let at = |level| {
            let sub = tracing_subscriber::fmt().with_max_level(level).finish();
            tracing::subscriber::with_default(sub, console_level)
        };
        assert_eq!(at(tracing::Level::INFO), "quiet");
        assert_eq!(at(tracing::Level::DEBUG), "loglevel=7");
    }
}
