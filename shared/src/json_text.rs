//! JSON string literals written straight into a buffer, escaped exactly as serde_json escapes
//! them (`"`, `\` and control characters; `\b \f \n \r \t` by name, the others as `\u00xx`).
//!
//! On the request path every response body, log line and audit hash writes strings that are long
//! (tokens, base64) and almost never need an escape; serde_json checks them a byte at a time. This
//! checks 8 bytes at once and copies clean runs whole. The tests hold it to serde_json's output.
//! Numbers those texts carry are written with `itoa` (what serde_json uses), not `format!`.

/// Appends `value` as a JSON string literal (quotes included).
pub fn push_str(out: &mut String, value: &str) {
    // Room for a few escapes too: growing the buffer would copy all of it.
    out.reserve(value.len() + value.len() / 8 + 2);
    out.push('"');
    push_contents(out, value);
    out.push('"');
}

/// Appends `value` escaped as inside a JSON string literal, without its quotes: a literal written
/// in pieces (`Escaping`).
fn push_contents(out: &mut String, value: &str) {
    let bytes = value.as_bytes();
    // `copied`: the bytes before it are in `out`. Each step reads the 8 bytes from `at` and
    // jumps to the first that needs an escape, or past all 8: a byte at a time never.
    let (mut copied, mut at) = (0, 0);
    while at < bytes.len() {
        match first_escape(word_at(bytes, at)) {
            None => at += 8,
            Some(offset) => {
                let index = at + offset;
                // Only the padding lies past the end, and it needs no escape.
                let Some(&byte) = bytes.get(index) else { break };
                // `index` is an ASCII byte, so both slices end on character boundaries.
                out.push_str(&value[copied..index]);
                push_escape(out, byte);
                copied = index + 1;
                at = index + 1;
            }
        }
    }
    out.push_str(&value[copied..]);
}

/// A `fmt::Write` that escapes what is written into it as JSON string contents: a `Debug` or
/// `Display` value written as a JSON string in one pass (what serde_json's `collect_str` makes, without
/// its byte-at-a-time escaping and UTF-8 re-check).
pub struct Escaping<'a>(pub &'a mut String);

impl std::fmt::Write for Escaping<'_> {
    fn write_str(&mut self, piece: &str) -> std::fmt::Result {
        push_contents(self.0, piece);
        Ok(())
    }
}

/// Appends `n` in decimal, zero-padded to `width` digits, as `{n:0width$}` writes it, without the
/// formatting machinery (keys and log timestamps on the request path).
pub fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n);
    out.extend(std::iter::repeat_n('0', width.saturating_sub(digits.len())));
    out.push_str(digits);
}

/// The 8 bytes of `bytes` from `at` (< its length), as a little-endian word; past the end, spaces
/// (which need no escape).
fn word_at(bytes: &[u8], at: usize) -> u64 {
    let rest = bytes.get(at..).unwrap_or_default();
    // A fixed 8-byte read; only the tail takes the padded copy (of a variable length).
    if let Some(word) = rest.first_chunk::<8>() {
        return u64::from_le_bytes(*word);
    }
    // Under 8 bytes: copied byte by byte, which `"s"` keeps inline (a copy of a variable length
    // is a `memcpy` call).
    let mut word = [b' '; 8];
    for (slot, &byte) in word.iter_mut().zip(rest) {
        *slot = byte;
    }
    u64::from_le_bytes(word)
}

/// The position of the first of the eight bytes of `word` (little-endian) that needs an escape,
/// in a few integer operations: the classic tests for a byte below a value and for a zero byte.
/// They can also flag a byte above a flagged one (a borrow runs upwards), never one below it, so
/// the lowest flag is exact. Portable, and fast under the release profile's `opt-level = "s"`,
/// which does not vectorize loops.
fn first_escape(word: u64) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte_in = |x: u64| x.wrapping_sub(ONES) & !x;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = zero_byte_in(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte_in(word ^ (ONES * u64::from(b'\\')));
    let flags = (below_space | quote | backslash) & HIGH;
    (flags != 0).then(|| flags.trailing_zeros() as usize / 8)
}

#[cfg(test)]
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let named = match byte {
        b'"' => "\\\"",
        b'\\' => "\\\\",
        0x08 => "\\b",
        0x0c => "\\f",
        b'\n' => "\\n",
        b'\r' => "\\r",
        b'\t' => "\\t",
        _ => {
            out.push_str("\\u00");
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xf)] as char);
            return;
        }
    };
    out.push_str(named);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn literal(value: &str) -> String {
        let mut out = String::from("prefix");
        push_str(&mut out, value);
        out.strip_prefix("prefix").unwrap().to_string()
    }

    #[test]
    fn every_ascii_character_alone_and_inside_long_runs_is_written_as_serde_json_writes_it() {
        for byte in 0u8..=127 {
            let c = char::from(byte);
            for value in [
                c.to_string(),
                format!("{}{c}", "a".repeat(16)),
                format!("{c}{}", "b".repeat(40)),
                format!("{}{c}{}", "x".repeat(15), "y".repeat(17)),
                format!("{c}{c}{}{c}", "z".repeat(31)),
            ] {
                assert_eq!(literal(&value), serde_json::to_string(&value).unwrap(), "{byte:#04x}");
            }
        }
    }

    proptest! {
        #[test]
        fn any_text_is_written_as_serde_json_writes_it(value in any::<String>(), padding in 0usize..40) {
            let value = format!("{}{value}", "p".repeat(padding));
            prop_assert_eq!(literal(&value), serde_json::to_string(&value).unwrap());
        }

        #[test]
        fn text_written_in_pieces_is_escaped_as_one_literal(pieces in proptest::collection::vec(any::<String>(), 0..5)) {
            use std::fmt::Write;
            let mut out = String::from("\"");
            for piece in &pieces {
                write!(Escaping(&mut out), "{piece}").unwrap();
            }
            out.push('"');
            prop_assert_eq!(out, serde_json::to_string(&pieces.concat()).unwrap());
        }

        #[test]
        fn padded_numbers_are_what_format_writes(n in any::<u64>(), width in 0usize..24) {
            let mut out = String::from("x");
            push_padded(&mut out, n, width);
            prop_assert_eq!(out, format!("x{n:0width$}"));
        }

        #[test]
        fn mostly_clean_text_is_written_as_serde_json_writes_it(value in "[a-zA-Z0-9._\"\\\\\n\u{1}\u{7f}é-]{0,80}") {
            prop_assert_eq!(literal(&value), serde_json::to_string(&value).unwrap());
        }
    }

    #[test]
    fn the_first_byte_of_a_word_that_needs_an_escape_is_found_exactly() {
        // Every pair of bytes at every pair of positions, among neighbours that borrow or carry
        // (0x00, 0x80, 0xff...): a flag above a flagged byte must not hide or move the first.
        let expected = |word: &[u8; 8]| word.iter().position(|&b| needs_escape(b));
        for neighbour in [b'a', 0x00, 0x1f, 0x20, 0x21, 0x23, 0x5d, 0x7f, 0x80, 0xff] {
            for low in 0..8 {
                for high in low + 1..8 {
                    for first in 0u8..=255 {
                        for second in [0x00, 0x01, 0x1f, 0x20, b'"', b'#', b'\\', b']', 0x7f, 0x80, 0xff, first] {
                            let mut word = [neighbour; 8];
                            word[low] = first;
                            word[high] = second;
                            assert_eq!(first_escape(u64::from_le_bytes(word)), expected(&word), "{word:02x?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn text_shorter_than_a_word_and_escapes_at_its_end_are_written_as_serde_json_writes_them() {
        for value in [
            "",
            "a",
            "\"",
            "ab\\",
            "abcdefg\n",
            "abcdefgh\u{1}",
            "é\"",
            "\"\"\"\"\"\"\"\"\"",
        ] {
            assert_eq!(literal(value), serde_json::to_string(value).unwrap(), "{value:?}");
        }
    }
}
