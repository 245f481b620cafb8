//! Form bodies (`application/x-www-form-urlencoded`, RFC 6749 conventions).
//!
//! Decoded as the WHATWG URL standard's urlencoded parser does (what `form_urlencoded` and
//! `serde_urlencoded` implement): split on `&`, empty pieces skipped, name and value split at the
//! first `=`, `+` as a space, `%XX` as its byte, any other `%` kept, invalid UTF-8 replaced by
//! U+FFFD. A component with no `+` or `%` (a JWT: base64url and dots) is copied as it is, never
//! decoded byte by byte: the subject token is most of every token request. Names and values are
//! lent from the body when they need no decoding (a copy is made only of what is kept).

use crate::error::{BrokerError, RequestRejection, Result};
use crate::redact::SecretString;
use http::header;
use lambda_http::{Body, Request};
use std::borrow::Cow;

use super::MAX_BODY_BYTES;

fn body_bytes(body: &Body) -> &[u8] {
    match body {
        Body::Empty => &[],
        Body::Text(text) => text.as_bytes(),
        Body::Binary(bytes) => bytes,
        _ => &[],
    }
}

/// The name-value pairs of a form body, in order. Scans use `memchr` (vectorised): a byte-by-byte
/// scan of a kilobyte subject token cost a few microseconds of every token request.
fn pairs(body: &[u8]) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> + '_ {
    split_at_ampersands(body)
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (name, value) = match memchr::memchr(b'=', piece) {
                Some(at) => (&piece[..at], &piece[at + 1..]),
                None => (piece, &[][..]),
            };
            (decode(name), decode(value))
        })
}

/// `body.split(|b| *b == b'&')`, found with `memchr`.
fn split_at_ampersands(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(body);
    std::iter::from_fn(move || {
        let current = rest?;
        match memchr::memchr(b'&', current) {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// One name or value: `+` is a space, `%XX` its byte; the bytes as UTF-8, lossily.
fn decode(raw: &[u8]) -> Cow<'_, str> {
    if memchr::memchr2(b'+', b'%', raw).is_none() {
        // `from_utf8` checks words at a time; `from_utf8_lossy` walks byte by byte (2 µs of a
        // kilobyte subject token), so it is left for text that needs replacing.
        return match std::str::from_utf8(raw) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(raw),
        };
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let byte = match raw[i] {
            b'+' => b' ',
            b'%' => match (raw.get(i + 1).and_then(hex_digit), raw.get(i + 2).and_then(hex_digit)) {
                (Some(high), Some(low)) => {
                    i += 2;
                    high << 4 | low
                }
                _ => b'%',
            },
            other => other,
        };
        out.push(byte);
        i += 1;
    }
    Cow::Owned(utf8_lossy(out))
}

fn hex_digit(byte: &u8) -> Option<u8> {
    (*byte as char).to_digit(16).map(|d| d as u8)
}

fn utf8_lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A form body (RFC 6749 conventions): checked content type and size, parameters by name. Its
/// pairs in order, searched by name: a token request has a handful (a map of lists cost an
/// allocation per parameter).
pub(super) struct Form<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Form<'a> {
    pub(super) fn read(request: &'a Request) -> Result<Self> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(BrokerError::BadRequest(RequestRejection::WrongContentType));
        }
        let bytes = body_bytes(request.body());
        if bytes.len() > MAX_BODY_BYTES {
            return Err(BrokerError::BadRequest(RequestRejection::TooLarge));
        }
        let mut params = Vec::with_capacity(memchr::memchr_iter(b'&', bytes).count() + 1);
        params.extend(pairs(bytes));
        Ok(Self(params))
    }

    /// A parameter that may appear at most once (RFC 6749 3.2); empty counts as absent.
    pub(super) fn single(&mut self, name: &str) -> Result<Option<Cow<'a, str>>> {
        let mut at = self
            .0
            .iter()
            .enumerate()
            .filter(|(_, (key, _))| key == name)
            .map(|(at, _)| at);
        match (at.next(), at.next()) {
            (None, _) => Ok(None),
            // `remove`, not `swap_remove`: `all` answers in the body's order.
            (Some(at), None) => Ok(Some(self.0.remove(at).1).filter(|v| !v.is_empty())),
            (Some(_), Some(_)) => Err(BrokerError::BadRequest(RequestRejection::RepeatedParameter)),
        }
    }

    /// `token` (required) and `token_type_hint` (optional, validated only for repetition), as
    /// RFC 7009 and RFC 7662 define them.
    pub(super) fn presented_token(&mut self) -> Result<SecretString> {
        let token = self
            .single("token")?
            .map(|token| SecretString::new(token.into_owned()))
            .ok_or(BrokerError::BadRequest(RequestRejection::MissingToken))?;
        self.single("token_type_hint")?;
        Ok(token)
    }

    /// Every value of `name`, in order (taken: a second call finds none).
    pub(super) fn all(&mut self, name: &str) -> Vec<Cow<'a, str>> {
        let mut values = Vec::new();
        self.0.retain_mut(|(key, value)| {
            if key != name {
                return true;
            }
            values.push(std::mem::take(value));
            false
        });
        values
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(body: &[u8]) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
            .unwrap()
            .into_iter()
            .map(|(name, value)| (Cow::Owned(name), Cow::Owned(value)))
            .collect()
    }

    #[test]
    fn decodes_as_the_urlencoded_standard_does() {
        for body in [
            &b"a=1&b=2"[..],
            b"grant_type=urn%3Aietf%3Aparams&x=a+b",
            b"&&a&=&b=c=d&%zz=%4&%41%42=%e2%82%ac&bad=%ff%fe",
            b"token=eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            b"",
            b"=",
            b"%",
            b"a=%2",
        ] {
            assert_eq!(
                pairs(body).collect::<Vec<_>>(),
                reference(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn parameters_are_taken_by_name_in_the_bodys_order() {
        let request = http::Request::builder()
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded; charset=utf-8")
            .body(Body::from(
                "grant_type=g&audience=a&scope=&resource=r&x=1&x=2&audience=b",
            ))
            .unwrap();
        let mut form = Form::read(&request).unwrap();
        assert_eq!(form.single("grant_type").unwrap().as_deref(), Some("g"));
        assert_eq!(form.single("grant_type").unwrap(), None, "taken");
        assert_eq!(form.single("scope").unwrap(), None, "empty is absent");
        assert!(matches!(
            form.single("x"),
            Err(BrokerError::BadRequest(RequestRejection::RepeatedParameter))
        ));
        assert_eq!(form.all("audience"), ["a", "b"]);
        assert_eq!(form.all("resource"), ["r"]);
        assert!(form.all("audience").is_empty());
    }

    proptest! {
        #[test]
        fn any_body_decodes_as_serde_urlencoded_decodes_it(
            body in proptest::collection::vec(
                prop_oneof![Just(b'&'), Just(b'='), Just(b'+'), Just(b'%'), Just(b'4'), Just(b'1'), Just(b'e'),
                    Just(0xe2u8), Just(0x82u8), Just(0xacu8), Just(0xffu8), any::<u8>()],
                0..40,
            )
        ) {
            prop_assert_eq!(pairs(&body).collect::<Vec<_>>(), reference(&body));
        }
    }
}
