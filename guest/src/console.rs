//! What the guest writes on its console that the host reads: the mark of the
//! entrypoint's lines. Owns the bytes of that mark; never the lines' wording.

/// Every line the entrypoint logs starts with this (then a space). The host takes
/// its first appearance on the console as the sign that the boot reached `/init`.
pub const MARKER: &str = "entrypoint:";

/// Does this console output show a line of the entrypoint (the boot reached it)?
pub fn shows_entrypoint(console: &[u8]) -> bool {
    console
        .windows(MARKER.len())
        .any(|w| w == MARKER.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_marker() {
        assert!(shows_entrypoint(
            b"[    0.5] Run /init as init process\nentrypoint: init: 7 modules loaded\n"
        ));
        assert!(!shows_entrypoint(
            b"[    0.5] tsc: Unable to calibrate against PIT\n"
        ));
        assert!(!shows_entrypoint(b"entrypoint"));
        assert!(!shows_entrypoint(b""));
    }
}
