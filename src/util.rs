//! Small shared helpers: clocks, random ids, hashing and terminal text.

use rand::Rng;
use sha2::{Digest, Sha256};

/// Milliseconds since the Unix epoch: the unit of every `*_at` column.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `len` random lowercase hex characters.
pub fn random_hex(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len).map(|_| std::char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0')).collect()
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Terminal output as plain text, for a message (a task's `status_reason`): ANSI
/// escape sequences (CSI such as colours, OSC such as titles and links, DCS and
/// the other string sequences, two- and three-byte ESC sequences) and other
/// control characters removed. A carriage return keeps what was written after
/// it, as a terminal shows it; newlines and tabs stay.
pub fn terminal_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    // Skips a string sequence's body up to its terminator: ST (ESC \ or U+009C), or BEL for OSC.
    fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
        while let Some(c) = chars.next() {
            match c {
                '\u{7}' | '\u{9c}' => return,
                '\u{1b}' => {
                    if chars.peek() == Some(&'\\') {
                        chars.next();
                    }
                    return;
                }
                _ => {}
            }
        }
    }
    fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
        // Parameters and intermediates, then one final byte in @..~.
        for c in chars.by_ref() {
            if ('@'..='~').contains(&c) {
                return;
            }
            if !(' '..='?').contains(&c) {
                return; // malformed: drop what was read
            }
        }
    }
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => skip_csi(&mut chars),
                Some(']' | 'P' | 'X' | '^' | '_') => skip_string(&mut chars),
                Some(c) if (' '..='/').contains(&c) => {
                    // Intermediates, then a final byte (ESC ( B and the like).
                    while chars.peek().is_some_and(|c| (' '..='/').contains(c)) {
                        chars.next();
                    }
                    chars.next();
                }
                _ => {} // ESC and one final byte (ESC 7, ESC =, ESC M…)
            },
            '\u{9b}' => skip_csi(&mut chars),
            '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    // Overwrites the line so far.
                    let start = out.rfind('\n').map(|i| i + 1).unwrap_or(0);
                    out.truncate(start);
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::terminal_text;

    #[test]
    fn terminal_text_drops_escape_sequences_and_controls() {
        // npm's colours and bold, a cleared line, a window title and a hyperlink.
        let raw = "\u{1b}[1m\u{1b}[31mnpm\u{1b}[39m \u{1b}[31mERR!\u{1b}[39m\u{1b}[22m code E404\u{1b}[K\r\n\
                   \u{1b}]0;npm ci\u{7}\u{1b}]8;;https://x.test\u{1b}\\link\u{1b}]8;;\u{1b}\\ done\r\n";
        assert_eq!(terminal_text(raw), "npm ERR! code E404\nlink done\n");
        // Charset switches, keypad mode, 8-bit CSI, a DCS string, bell and backspace.
        assert_eq!(terminal_text("\u{1b}(Ba\u{1b}=b\u{9b}2Jc\u{1b}Pq#0\u{1b}\\d\u{7}\u{8}e\tf"), "abcde\tf");
        // A spinner overwrites its line; the last state stays.
        assert_eq!(terminal_text("x\n| installing\r/ installing\rfailed\n"), "x\nfailed\n");
        // An unterminated sequence at the end is dropped, not shown.
        assert_eq!(terminal_text("ok\u{1b}[3"), "ok");
        assert_eq!(terminal_text("plain ünïcode ✓"), "plain ünïcode ✓");
    }
}
