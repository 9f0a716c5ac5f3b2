//! QMP, QEMU's control socket: the ACPI power button (`system_powerdown`). It
//! only talks to a running QEMU; it never starts or kills one.

use std::time::Duration;

use super::Qemu;

impl Qemu {
    /// Press the guest's ACPI power button through QMP (`system_powerdown`); the
    /// entrypoint treats it like SIGTERM. True when QEMU accepted the command.
    pub(super) async fn powerdown(&self, name: &str) -> bool {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let sock = self.dir(name).join("qmp.sock");
        let talk = async {
            let stream = tokio::net::UnixStream::connect(&sock).await.ok()?;
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            lines.next_line().await.ok()??; // greeting
            w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
                .await
                .ok()?;
            lines.next_line().await.ok()??;
            w.write_all(b"{\"execute\":\"system_powerdown\"}\n")
                .await
                .ok()?;
            // Events may come before the answer.
            loop {
                let l = lines.next_line().await.ok()??;
                if l.contains("\"return\"") {
                    return Some(true);
                }
                if l.contains("\"error\"") {
                    return Some(false);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), talk)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }
}
