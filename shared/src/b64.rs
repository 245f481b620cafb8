//! Base64 on the request path: the subject token's segments (base64url, RFC 7515 2), the form
//! body API Gateway hands over base64-encoded (standard alphabet, padded), the broker token's
//! segments. Vectorised (`base64-simd`, the SDK's own base64, already linked): a token request
//! decodes some 3 kB of base64, which cost `base64`'s scalar decoder about 4 µs of every request.
//!
//! Strict, as `base64`'s engines are: the padding the alphabet's form requires (none for
//! base64url, `=` for standard), no whitespace, and zero trailing bits, so each byte string has
//! exactly one encoding (a token cannot be re-encoded into another string with the same bytes).

use base64_simd::{STANDARD, URL_SAFE_NO_PAD};

/// base64url without padding (JWS, RFC 7515 2), decoded; `None` if it is not exactly that.
pub fn url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode_to_vec(text).ok()
}

/// Appends `bytes` as base64url without padding.
pub fn url_encode_into(bytes: &[u8], out: &mut String) {
    URL_SAFE_NO_PAD.encode_append(bytes, out);
}

/// Standard base64 with padding (RFC 4648 4), decoded; `None` if it is not exactly that.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode_to_vec(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD as REFERENCE, URL_SAFE_NO_PAD as URL_REFERENCE};
    use proptest::prelude::*;

    #[test]
    fn refuses_what_the_strict_engines_refuse() {
        // Padding where none belongs, missing padding, trailing bits, a length no encoding has,
        // whitespace, the other alphabet.
        for text in ["QQ==", "QQ=", "QR", "Q", "Q Q", "+/8", "a\n"] {
            assert_eq!(url_decode(text), None, "{text}");
            assert!(URL_REFERENCE.decode(text).is_err(), "{text}");
        }
        for text in ["QQ", "QR==", "Q===", "QQ=\n", "-_8=", "QQ== "] {
            assert_eq!(decode(text), None, "{text}");
            assert!(REFERENCE.decode(text).is_err(), "{text}");
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_base64_crate(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                        noise in proptest::collection::vec(any::<u8>(), 0..12)) {
            let mut encoded = String::from("prefix.");
            url_encode_into(&bytes, &mut encoded);
            prop_assert_eq!(&encoded["prefix.".len()..], URL_REFERENCE.encode(&bytes));
            prop_assert_eq!(url_decode(&encoded["prefix.".len()..]), Some(bytes.clone()));
            prop_assert_eq!(decode(&REFERENCE.encode(&bytes)), Some(bytes.clone()));
            // Any text at all: accepted exactly when the reference accepts it, with its bytes.
            let text: String = noise.iter().map(|b| char::from(b"AQgw_-+/=. \n"[*b as usize % 12])).collect();
            prop_assert_eq!(url_decode(&text), URL_REFERENCE.decode(&text).ok(), "{:?}", text);
            prop_assert_eq!(decode(&text), REFERENCE.decode(&text).ok(), "{:?}", text);
        }
    }
}
