//! Who runs the runner: a user from `/etc/passwd` and `/etc/group` (static glibc has
//! no NSS). Resolves only; the drop itself happens in the child (`setup::runner_command`).

use nix::unistd::Uid;

/// A user from `/etc/passwd` (static glibc has no NSS, so we read it ourselves).
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// The primary group and the groups listing the user as a member.
    pub groups: Vec<u32>,
}

fn lookup_user(name: &str) -> Result<User, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    let mut user = None;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 7 && f[0] == name {
            let uid = f[2]
                .parse()
                .map_err(|_| format!("bad uid for {name} in /etc/passwd"))?;
            let gid = f[3]
                .parse()
                .map_err(|_| format!("bad gid for {name} in /etc/passwd"))?;
            user = Some(User {
                name: name.into(),
                uid,
                gid,
                home: f[5].into(),
                groups: vec![gid],
            });
            break;
        }
    }
    let mut user = user.ok_or(format!("user {name:?} is not in /etc/passwd (check -u)"))?;
    if let Ok(group) = std::fs::read_to_string("/etc/group") {
        for line in group.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if !user.groups.contains(&g) {
                        user.groups.push(g);
                    }
                }
            }
        }
    }
    Ok(user)
}

/// Who runs the runner: `None` means "as ourselves, no drop".
pub fn resolve_user(wanted: &str) -> Result<Option<User>, String> {
    let me = Uid::effective();
    if me.is_root() {
        if wanted == "root" {
            return Ok(None);
        }
        return lookup_user(wanted).map(Some);
    }
    // Not root: we can only run the runner as ourselves.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let my_name = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2] == me.as_raw().to_string()).then(|| f[0].to_string())
    });
    if my_name.as_deref() == Some(wanted) {
        Ok(None)
    } else {
        Err(format!(
            "the entrypoint runs as uid {me} ({}), so it cannot run the runner as {wanted:?}: \
             start the VM as root or pass -u {}",
            my_name.as_deref().unwrap_or("?"),
            my_name.as_deref().unwrap_or("<this user>")
        ))
    }
}
