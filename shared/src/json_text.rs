//! JSON string literals written straight into a buffer, escaped exactly as serde_json escapes
//! them (`"`, `\` and control characters; `\b \f \n \r \t` by name, the others as `\u00xx`).
//!
//! On the request path every response body, log line and audit hash writes strings that are long
//! (tokens, base64) and almost never need an escape; serde_json checks them a byte at a time. This
//! checks 8 bytes at once and copies clean runs whole. The tests hold it to serde_json's output.

/// Appends `value` as a JSON string literal (quotes included).
pub fn push_str(out: &mut String, value: &str) {
    let bytes = value.as_bytes();
    // Room for a few escapes too: growing the buffer would copy all of it.
    out.reserve(bytes.len() + bytes.len() / 8 + 2);
    out.push('"');
    let (mut copied, mut at) = (0, 0);
    while at < bytes.len() {
        let end = (at + 8).min(bytes.len());
        if let Ok(word) = <[u8; 8]>::try_from(&bytes[at..end])
            && !word_needs_escape(u64::from_le_bytes(word))
        {
            at = end;
            continue;
        }
        for (index, &byte) in bytes.iter().enumerate().take(end).skip(at) {
            if needs_escape(byte) {
                // `index` is an ASCII byte, so both slices end on character boundaries.
                out.push_str(&value[copied..index]);
                push_escape(out, byte);
                copied = index + 1;
            }
        }
        at = end;
    }
    out.push_str(&value[copied..]);
    out.push('"');
}

/// Whether any of the eight bytes of `word` needs an escape, in a few integer operations
/// (exact: the classic tests for a byte below a value and for a zero byte). Portable, and fast
/// under the release profile's `opt-level = "s"`, which does not vectorize loops.
fn word_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte_in = |x: u64| x.wrapping_sub(ONES) & !x;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = zero_byte_in(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte_in(word ^ (ONES * u64::from(b'\\')));
    (below_space | quote | backslash) & HIGH != 0
}

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
        fn mostly_clean_text_is_written_as_serde_json_writes_it(value in "[a-zA-Z0-9._\"\\\\\n\u{1}\u{7f}é-]{0,80}") {
            prop_assert_eq!(literal(&value), serde_json::to_string(&value).unwrap());
        }
    }

    #[test]
    fn a_word_needs_an_escape_exactly_when_one_of_its_bytes_does() {
        for byte in 0u8..=255 {
            for position in 0..8 {
                let mut word = [b'a'; 8];
                word[position] = byte;
                assert_eq!(
                    word_needs_escape(u64::from_le_bytes(word)),
                    needs_escape(byte),
                    "{byte:#04x} at {position}"
                );
                // Next to bytes that borrow or carry (0x00, 0x80, 0xff) too.
                for neighbour in [0x00, 0x1f, 0x20, 0x7f, 0x80, 0xff] {
                    let mut word = [neighbour; 8];
                    word[position] = byte;
                    let expected = word.iter().any(|&b| needs_escape(b));
                    assert_eq!(
                        word_needs_escape(u64::from_le_bytes(word)),
                        expected,
                        "{byte:#04x} among {neighbour:#04x}"
                    );
                }
            }
        }
    }
}
