//! QMP, QEMU's control socket: a small client (connect, one command at a time,
//! events skipped) and the ACPI power button (`system_powerdown`). It only talks
//! to a running QEMU; it never starts or kills one.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::Qemu;

/// One QMP connection, past its greeting and `qmp_capabilities`.
pub(super) struct Qmp {
    lines: Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
}

impl Qmp {
    /// Connect to `sock` and negotiate.
    pub(super) async fn connect(sock: &Path) -> Result<Qmp, String> {
        let stream = tokio::net::UnixStream::connect(sock)
            .await
            .map_err(|e| format!("connect to {}: {e}", sock.display()))?;
        let (r, w) = stream.into_split();
        let mut q = Qmp {
            lines: BufReader::new(r).lines(),
            w,
        };
        q.line().await?; // greeting
        q.execute("qmp_capabilities", serde_json::json!({})).await?;
        Ok(q)
    }

    async fn line(&mut self) -> Result<String, String> {
        match self.lines.next_line().await {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err("QMP closed the connection".into()),
            Err(e) => Err(format!("QMP: {e}")),
        }
    }

    /// Run `command` with `arguments`; its `return` value, or its error's text.
    pub(super) async fn execute(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let req = serde_json::json!({"execute": command, "arguments": arguments});
        self.w
            .write_all(format!("{req}\n").as_bytes())
            .await
            .map_err(|e| format!("QMP {command}: {e}"))?;
        loop {
            let l = self.line().await?;
            let v: serde_json::Value =
                serde_json::from_str(&l).map_err(|e| format!("QMP {command}: {e}"))?;
            // Events may come before the answer.
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let desc = e.get("desc").and_then(|d| d.as_str()).unwrap_or("error");
                return Err(format!("QMP {command}: {desc}"));
            }
        }
    }
}

impl Qemu {
    /// Press the guest's ACPI power button through QMP (`system_powerdown`); the
    /// entrypoint treats it like SIGTERM. True when QEMU accepted the command.
    pub(super) async fn powerdown(&self, name: &str) -> bool {
        let sock = self.dir(name).join("qmp.sock");
        let talk = async {
            let mut q = Qmp::connect(&sock).await?;
            q.execute("system_powerdown", serde_json::json!({})).await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(5), talk).await,
            Ok(Ok(_))
        )
    }
}
