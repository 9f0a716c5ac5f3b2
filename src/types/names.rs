//! Names and ids of design.md §3: iteration ids, VM/runner names, loop
//! directories and environment roots, and which of them belong to a prefix.
//! Pure functions of strings (and the random source for ids); no file system.

/// `<loop>-<8 random alphanumerics>`: one iteration's id.
pub fn iteration_id(loop_id: u32) -> std::io::Result<String> {
    let r = protocol::secret::random_alnum(8).map_err(std::io::Error::from)?;
    Ok(format!("{loop_id}-{r}"))
}

/// `<prefix>-<id>`: the VM and its GitHub runner.
pub fn vm_name(prefix: &str, id: &str) -> String {
    format!("{prefix}-{id}")
}

/// `<prefix>-<iii>`: loop `i`'s directory in the environment root.
pub fn loop_dir(prefix: &str, index: u32) -> String {
    format!("{prefix}-{index:03}")
}

/// Name of the environment root for `prefix` (`<prefix>.root-<random>`, in this
/// user's private temporary directory, `types::paths::private_tmp`).
pub fn root_prefix(prefix: &str) -> String {
    format!("{prefix}.root-")
}

/// Is `name` an environment root of exactly `prefix` (not of a longer prefix)?
pub fn is_root_of(name: &str, prefix: &str) -> bool {
    name.strip_prefix(&root_prefix(prefix))
        .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Is `name` a VM/runner name of exactly `prefix` (`<prefix>-<loop>-<random>`)?
pub fn is_vm_of(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(protocol::valid_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_vm_names_match_only_their_prefix() {
        assert!(is_root_of("GH-runner.root-abc123", "GH-runner"));
        assert!(!is_root_of("GH-runner.root-abc123", "GH"));
        assert!(!is_root_of("a.root-x.root-abc", "a"));
        assert!(!is_root_of("GH-runner.root-", "GH-runner"));
        assert!(!is_root_of("GH-runner.lock", "GH-runner"));
        assert!(!is_root_of("GH-runner.control", "GH-runner"));
        assert!(is_vm_of("GH-runner-1-abcdefg", "GH-runner"));
        assert!(!is_vm_of("GH-runner-1-abcdefg", "GH"));
        assert!(!is_vm_of("GH-runnerX-1-abc", "GH-runner"));
        assert!(!is_vm_of("other-1-abc", "GH-runner"));
    }
}
