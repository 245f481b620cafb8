//! SHA-256 and the P-256 encodings the broker converts between, all on aws-lc.
//!
//! One implementation for every hash and key: aws-lc's SHA-256 is assembly (SHA-NI, ARMv8 SHA)
//! whatever the crate's opt-level, where a Rust implementation built at the release profile's
//! `"s"` ran several times slower on the request path; and no second elliptic-curve library is
//! linked just to re-encode keys and signatures that aws-lc already parses.

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ParsedPublicKey};

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha256(bytes))
}

/// DER of a P-256 SubjectPublicKeyInfo up to its uncompressed point: SEQUENCE { SEQUENCE {
/// id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }. With the 65-byte point, 91 bytes.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The uncompressed point (`04 || x || y`) of a P-256 SubjectPublicKeyInfo, as KMS
/// `GetPublicKey` returns it: a point on the curve (aws-lc checks), in the one encoding KMS uses.
pub fn p256_spki_to_point(spki_der: &[u8]) -> Option<[u8; 65]> {
    let point = spki_der.strip_prefix(P256_SPKI_PREFIX.as_slice())?;
    let point: [u8; 65] = point.try_into().ok()?;
    (point[0] == 0x04 && ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).is_ok()).then_some(point)
}

/// The SubjectPublicKeyInfo DER of an uncompressed P-256 point on the curve.
pub fn p256_point_to_spki(point: &[u8]) -> Option<Vec<u8>> {
    if point.len() != 65 || point[0] != 0x04 || ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).is_err() {
        return None;
    }
    Some([P256_SPKI_PREFIX.as_slice(), point].concat())
}

/// The order n of P-256's base point, big-endian: r and s lie in 1..n.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// A DER ECDSA P-256 signature (`SEQUENCE { INTEGER r, INTEGER s }`, as KMS `Sign` returns it) to
/// the JWS form `r || s` (RFC 7518 3.4). Strict DER: minimal lengths and integers, nothing after
/// the sequence, r and s in 1..n.
pub fn p256_der_signature_to_fixed(der: &[u8]) -> Option<[u8; 64]> {
    let body = der_element(der, 0x30)?;
    if body.len() + 2 != der.len() {
        return None;
    }
    let r = der_element(body, 0x02)?;
    let s = der_element(&body[2 + r.len()..], 0x02)?;
    if 2 + r.len() + 2 + s.len() != body.len() {
        return None;
    }
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&scalar(r)?);
    out[32..].copy_from_slice(&scalar(s)?);
    Some(out)
}

/// The contents of the element with `tag` at the start of `input` (short-form length: every
/// element of a P-256 signature is under 128 bytes).
fn der_element(input: &[u8], tag: u8) -> Option<&[u8]> {
    match input {
        [t, len, rest @ ..] if *t == tag && *len < 0x80 && rest.len() >= usize::from(*len) => {
            Some(&rest[..usize::from(*len)])
        }
        _ => None,
    }
}

/// A DER INTEGER's contents as a 32-byte scalar in 1..n.
fn scalar(integer: &[u8]) -> Option<[u8; 32]> {
    let magnitude = match integer {
        [] => return None,
        // A leading zero only where the next byte would otherwise read as negative.
        [0, next, ..] if next & 0x80 != 0 => &integer[1..],
        [0, _, ..] => return None,
        [first, ..] if first & 0x80 != 0 => return None,
        _ => integer,
    };
    if magnitude.len() > 32 {
        return None;
    }
    let mut out = [0u8; 32];
    out[32 - magnitude.len()..].copy_from_slice(magnitude);
    (out != [0u8; 32] && out < P256_ORDER).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey};

    #[test]
    fn sha256_is_sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn spki_and_point_convert_both_ways_and_agree_with_aws_lc() {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        let point = p256_spki_to_point(spki.as_ref()).unwrap();
        assert_eq!(point.as_slice(), pair.public_key().as_ref());
        assert_eq!(p256_point_to_spki(&point).unwrap(), spki.as_ref());
    }

    #[test]
    fn malformed_or_off_curve_keys_are_refused() {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let spki = pair.public_key().as_der().unwrap().as_ref().to_vec();
        let mut off_curve = spki.clone();
        off_curve[90] ^= 1;
        assert!(p256_spki_to_point(&off_curve).is_none());
        assert!(p256_spki_to_point(&spki[..90]).is_none());
        assert!(p256_spki_to_point(&[spki.as_slice(), &[0]].concat()).is_none());
        let mut other_curve = spki.clone();
        other_curve[22] ^= 1;
        assert!(p256_spki_to_point(&other_curve).is_none());
        assert!(p256_point_to_spki(&off_curve[26..]).is_none());
        assert!(p256_point_to_spki(&spki[26..90]).is_none());
    }

    #[test]
    fn der_signatures_become_jws_signatures_that_verify() {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        // Enough signatures that some r or s have a leading zero byte or the high bit set.
        for i in 0..200u32 {
            let message = i.to_be_bytes();
            let der = pair.sign(&rng, &message).unwrap();
            let fixed = p256_der_signature_to_fixed(der.as_ref()).unwrap();
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref())
                .verify(&message, &fixed)
                .unwrap();
        }
    }

    #[test]
    fn non_der_or_out_of_range_signatures_are_refused() {
        let int = |bytes: &[u8]| [&[0x02, bytes.len() as u8], bytes].concat();
        let seq = |r: &[u8], s: &[u8]| {
            let body = [int(r), int(s)].concat();
            [vec![0x30, body.len() as u8], body].concat()
        };
        let one = [1u8];
        assert!(p256_der_signature_to_fixed(&seq(&one, &one)).is_some());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("zero r", seq(&[0], &one)),
            ("negative r", seq(&[0x80], &one)),
            ("non-minimal r", seq(&[0, 1], &one)),
            ("r = n", seq(&[[0].as_slice(), &P256_ORDER].concat(), &one)),
            ("33-byte magnitude", seq(&[1; 33], &one)),
            ("trailing byte", [seq(&one, &one), vec![0]].concat()),
            ("extra element", {
                let body = [int(&one), int(&one), int(&one)].concat();
                [vec![0x30, body.len() as u8], body].concat()
            }),
            ("wrong tag", {
                let mut der = seq(&one, &one);
                der[0] = 0x31;
                der
            }),
            ("length past the end", {
                let mut der = seq(&one, &one);
                der[3] = 9;
                der
            }),
        ];
        for (name, der) in cases {
            assert!(p256_der_signature_to_fixed(&der).is_none(), "{name}");
        }
    }
}
