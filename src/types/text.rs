//! Guest bytes on their way to a person's terminal: a guest controls what it
//! prints, so escape sequences (which can retitle, recolour, clear or rewrite a
//! terminal) and carriage returns (which forge log lines) are shown, not obeyed.

/// `s` with every control character but newline and tab made visible: C0 and DEL
/// in caret notation (`^[`, `^M`, `^?`), C1 and the bidirectional and invisible
/// format characters (which reorder or hide what follows them) as U+FFFD.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '\u{0}'..='\u{1f}' => {
                out.push('^');
                out.push(char::from(c as u8 + 0x40));
            }
            '\u{7f}' => out.push_str("^?"),
            '\u{80}'..='\u{9f}' => out.push('\u{fffd}'),
            // Bidirectional and invisible format characters reorder or hide text.
            '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}' => out.push('\u{fffd}'),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_shown_not_obeyed() {
        assert_eq!(
            printable("ok\x1b]0;owned\x07\x1b[2J\rINFO forged\n\tx\u{9b}31m\x7f"),
            "ok^[]0;owned^G^[[2J^MINFO forged\n\tx\u{fffd}31m^?"
        );
        assert_eq!(printable("plain ünïcode"), "plain ünïcode");
        // A right-to-left override would show `exe.txt` as `txt.exe`.
        assert_eq!(
            printable("a\u{202e}txt.exe\u{2066}\u{200b}"),
            "a\u{fffd}txt.exe\u{fffd}\u{fffd}"
        );
    }
}
