//! Strict DER for what certflow stores from outside: CSRs and imported
//! certificates must be DER (X.690 §10, §11), not merely something a lenient
//! BER reader accepts, since their bytes are kept, passed on to CAs and served.
//!
//! Three layers, each catching what the others cannot: a walk of every
//! tag-length-value against the DER rules that need no schema (shortest
//! lengths and tags, no indefinite length, primitive strings, BOOLEAN,
//! INTEGER, BIT STRING, NULL, OID, time and SET OF rules); a decode against
//! the RFC 2986 / RFC 5280 schema with the `der` crate (a tag of the wrong
//! class or number, a missing field); and a re-encoding that must give back
//! the same bytes (a DEFAULT value encoded, anything else non-canonical).
//! Extension values and RSA public keys are DER inside an OCTET or BIT
//! STRING, so they are walked too.

use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::request::CertReq;
use x509_cert::spki::SubjectPublicKeyInfoOwned;

/// Deepest nesting walked: X.509 structures stay well under it.
const MAX_DEPTH: usize = 40;

/// id-ExtensionReq (RFC 2985 §5.4.2).
const OID_EXTENSION_REQUEST: &str = "1.2.840.113549.1.9.14";
/// id-ce-subjectAltName (RFC 5280 §4.2.1.6).
const OID_SUBJECT_ALT_NAME: &str = "2.5.29.17";

/// Checks that `der` is one PKCS#10 request (RFC 2986) in DER, its requested
/// extensions and RSA key included; the error names the rule and byte offset.
pub(crate) fn check_csr(der: &[u8]) -> Result<(), String> {
    check_der(der)?;
    let csr = CertReq::from_der(der).map_err(|e| format!("not DER: {e}"))?;
    same_encoding(der, csr.to_der())?;
    check_key(&csr.info.public_key)?;
    for attr in csr.info.attributes.iter() {
        if attr.oid.to_string() != OID_EXTENSION_REQUEST {
            continue;
        }
        for value in attr.values.iter() {
            let bytes = value
                .to_der()
                .map_err(|e| format!("not DER: extensionRequest: {e}"))?;
            let exts = Vec::<Extension>::from_der(&bytes)
                .map_err(|e| format!("not DER: extensionRequest: {e}"))?;
            same_encoding(&bytes, exts.to_der()).map_err(|e| within("extensionRequest", &e))?;
            check_extensions(&exts)?;
        }
    }
    Ok(())
}

/// Checks that `der` is one X.509 certificate (RFC 5280 §4.1) in DER, its
/// extension values and RSA key included.
pub(crate) fn check_certificate(der: &[u8]) -> Result<(), String> {
    check_der(der)?;
    let cert = Certificate::from_der(der).map_err(|e| format!("not DER: {e}"))?;
    same_encoding(der, cert.to_der())?;
    let tbs = cert.tbs_certificate();
    check_key(tbs.subject_public_key_info())?;
    if let Some(exts) = tbs.extensions() {
        check_extensions(exts)?;
    }
    Ok(())
}

/// Each extension's value is DER (RFC 5280 §4.1: "the DER encoding of an
/// ASN.1 value"); a subjectAltName also matches its schema.
fn check_extensions(exts: &[Extension]) -> Result<(), String> {
    for ext in exts {
        let oid = ext.extn_id.to_string();
        let value = ext.extn_value.as_bytes();
        let context = format!("extension {oid}");
        check_der(value).map_err(|e| within(&context, &e))?;
        if oid == OID_SUBJECT_ALT_NAME {
            let san = SubjectAltName::from_der(value)
                .map_err(|e| format!("not DER: extension {oid}: {e}"))?;
            same_encoding(value, san.to_der()).map_err(|e| within(&context, &e))?;
        }
    }
    Ok(())
}

/// An RSA public key is an RSAPublicKey DER inside the BIT STRING (RFC 8017
/// §A.1.1); it is copied into the certificates certflow issues.
fn check_key(spki: &SubjectPublicKeyInfoOwned) -> Result<(), String> {
    if spki.algorithm.oid.to_string() == crate::asn1::OID_RSA_ENCRYPTION {
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or("not DER: RSA public key BIT STRING with unused bits")?;
        check_der(bits).map_err(|e| within("RSA public key", &e))?;
    }
    Ok(())
}

/// `not DER: <context>: <what>`.
fn within(context: &str, e: &str) -> String {
    match e.strip_prefix("not DER: ") {
        Some(rest) => format!("not DER: {context}: {rest}"),
        None => format!("not DER: {context}: {e}"),
    }
}

fn same_encoding(input: &[u8], again: x509_cert::der::Result<Vec<u8>>) -> Result<(), String> {
    match again {
        Ok(again) if again == input => Ok(()),
        Ok(again) => {
            let at = input
                .iter()
                .zip(&again)
                .position(|(a, b)| a != b)
                .unwrap_or(input.len().min(again.len()));
            Err(format!(
                "not DER: the canonical encoding differs from byte {at} (X.690 §11: a DEFAULT \
                 value encoded, or another non-canonical form)"
            ))
        }
        Err(e) => Err(format!("not DER: {e}")),
    }
}

/// One tag-length-value, with the offsets of its content in the whole input.
struct Tlv<'a> {
    class: u8,
    constructed: bool,
    number: u32,
    /// Offset of the identifier octet.
    at: usize,
    content: &'a [u8],
    content_at: usize,
    /// The whole encoding (for SET OF ordering).
    whole: &'a [u8],
}

/// Checks that `input` is exactly one DER encoding: no trailing bytes and
/// every nested encoding follows the DER rules that need no schema.
pub(crate) fn check_der(input: &[u8]) -> Result<(), String> {
    let (tlv, end) = read_tlv(input, 0, 0)?;
    if end != input.len() {
        return Err(format!(
            "not DER: {} trailing bytes after the encoding",
            input.len() - end
        ));
    }
    check_tlv(&tlv, 0)
}

fn check_tlv(tlv: &Tlv<'_>, depth: usize) -> Result<(), String> {
    if tlv.class == 0 {
        check_universal(tlv)?;
    }
    if !tlv.constructed {
        return Ok(());
    }
    if depth >= MAX_DEPTH {
        return Err(format!("nested more than {MAX_DEPTH} levels deep"));
    }
    let mut pos = 0;
    let mut previous: Option<&[u8]> = None;
    while pos < tlv.content.len() {
        let (inner, end) = read_tlv(tlv.content, pos, tlv.content_at)?;
        check_tlv(&inner, depth + 1)?;
        if tlv.class == 0 && tlv.number == 17 {
            if let Some(prev) = previous
                && set_order(prev, inner.whole) == std::cmp::Ordering::Greater
            {
                return Err(format!(
                    "not DER: SET OF at byte {} is not sorted (X.690 §11.6)",
                    tlv.at
                ));
            }
            previous = Some(inner.whole);
        }
        pos = end;
    }
    Ok(())
}

/// X.690 §11.6: encodings compared as octet strings, the shorter padded
/// with zero octets at its end.
fn set_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let n = a.len().max(b.len());
    let pad = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    (0..n)
        .map(|i| pad(a, i).cmp(&pad(b, i)))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

/// Reads the encoding starting at `pos` of `buf` (`base` is `buf`'s offset
/// in the whole input, for messages); returns it and where it ends.
fn read_tlv(buf: &[u8], pos: usize, base: usize) -> Result<(Tlv<'_>, usize), String> {
    let at = base + pos;
    let truncated = || format!("not DER: truncated encoding at byte {at}");
    let first = *buf.get(pos).ok_or_else(truncated)?;
    let class = first >> 6;
    let constructed = first & 0x20 != 0;
    let mut i = pos + 1;
    let mut number = u32::from(first & 0x1f);
    if number == 0x1f {
        // High tag number form (X.690 §8.1.2.4): base 128, no leading 0x80,
        // only for numbers above 30.
        number = 0;
        let mut octets = 0;
        loop {
            let b = *buf.get(i).ok_or_else(truncated)?;
            if octets == 0 && b == 0x80 {
                return Err(format!(
                    "not DER: tag number at byte {at} has a leading zero octet (X.690 §8.1.2.4.2)"
                ));
            }
            octets += 1;
            if octets > 4 {
                return Err(format!("not DER: tag number at byte {at} is too large"));
            }
            number = (number << 7) | u32::from(b & 0x7f);
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if number < 31 {
            return Err(format!(
                "not DER: tag number {number} at byte {at} is in the long form; numbers up to \
                 30 take one octet (X.690 §8.1.2.2)"
            ));
        }
    }
    let len_at = base + i;
    let l = *buf.get(i).ok_or_else(truncated)?;
    i += 1;
    let len = if l < 0x80 {
        usize::from(l)
    } else if l == 0x80 {
        return Err(format!(
            "not DER: indefinite length at byte {len_at} (X.690 §10.1: definite lengths only)"
        ));
    } else {
        let n = usize::from(l & 0x7f);
        if n > 4 || l == 0xff {
            return Err(format!("not DER: length at byte {len_at} is too large"));
        }
        let octets = buf.get(i..i + n).ok_or_else(truncated)?;
        if octets[0] == 0 {
            return Err(format!(
                "not DER: length at byte {len_at} has a leading zero octet (X.690 §10.1: the \
                 fewest length octets)"
            ));
        }
        i += n;
        let len = octets
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return Err(format!(
                "not DER: length {len} at byte {len_at} is in the long form; lengths below 128 \
                 take one octet (X.690 §10.1)"
            ));
        }
        len
    };
    let end = i
        .checked_add(len)
        .filter(|end| *end <= buf.len())
        .ok_or_else(|| format!("not DER: length at byte {len_at} goes beyond the data"))?;
    Ok((
        Tlv {
            class,
            constructed,
            number,
            at,
            content: &buf[i..end],
            content_at: base + i,
            whole: &buf[pos..end],
        },
        end,
    ))
}

/// The DER rules of universal types (X.690 §8, §10, §11).
fn check_universal(tlv: &Tlv<'_>) -> Result<(), String> {
    let c = tlv.content;
    let at = tlv.at;
    let name = match tlv.number {
        0 => {
            return Err(format!(
                "not DER: end-of-contents octets at byte {at} (only indefinite lengths use them)"
            ));
        }
        1 => "BOOLEAN",
        2 => "INTEGER",
        3 => "BIT STRING",
        4 => "OCTET STRING",
        5 => "NULL",
        6 => "OBJECT IDENTIFIER",
        10 => "ENUMERATED",
        12 => "UTF8String",
        13 => "RELATIVE-OID",
        16 | 17 => {
            if !tlv.constructed {
                let what = if tlv.number == 16 { "SEQUENCE" } else { "SET" };
                return Err(format!(
                    "not DER: {what} at byte {at} is primitive (X.690 §8.9.1, §8.11.1)"
                ));
            }
            return Ok(());
        }
        18..=30 => "string or time",
        _ => return Ok(()),
    };
    if tlv.constructed {
        return Err(format!(
            "not DER: {name} at byte {at} is constructed (X.690 §10.2: primitive only)"
        ));
    }
    match tlv.number {
        1 if c != [0x00] && c != [0xff] => Err(format!(
            "not DER: BOOLEAN at byte {at} is not one octet 0x00 or 0xFF (X.690 §11.1)"
        )),
        2 | 10 => match c {
            [] => Err(format!(
                "not DER: {name} at byte {at} is empty (X.690 §8.3.1)"
            )),
            [0x00, b, ..] if b & 0x80 == 0 => Err(format!(
                "not DER: {name} at byte {at} has a redundant leading 0x00 (X.690 §8.3.2)"
            )),
            [0xff, b, ..] if b & 0x80 != 0 => Err(format!(
                "not DER: {name} at byte {at} has a redundant leading 0xFF (X.690 §8.3.2)"
            )),
            _ => Ok(()),
        },
        3 => match c {
            [] => Err(format!(
                "not DER: BIT STRING at byte {at} has no unused-bits octet (X.690 §8.6.2)"
            )),
            [unused, ..] if *unused > 7 => Err(format!(
                "not DER: BIT STRING at byte {at} claims {unused} unused bits (X.690 §8.6.2.2: \
                 0 to 7)"
            )),
            [unused] if *unused != 0 => Err(format!(
                "not DER: empty BIT STRING at byte {at} claims unused bits (X.690 §8.6.2.3)"
            )),
            [unused, .., last] if last & ((1u8 << unused) - 1) != 0 => Err(format!(
                "not DER: BIT STRING at byte {at} has unused bits that are not zero (X.690 \
                 §11.2.1)"
            )),
            _ => Ok(()),
        },
        5 if !c.is_empty() => Err(format!(
            "not DER: NULL at byte {at} has contents (X.690 §8.8.2)"
        )),
        6 | 13 => check_oid(name, at, c),
        23 => check_time(at, c, 12, "UTCTime"),
        24 => check_time(at, c, 14, "GeneralizedTime"),
        _ => Ok(()),
    }
}

/// X.690 §8.19.2: each subidentifier in the fewest octets.
fn check_oid(name: &str, at: usize, c: &[u8]) -> Result<(), String> {
    if c.is_empty() {
        return Err(format!("not DER: {name} at byte {at} is empty"));
    }
    if c.last().is_some_and(|b| b & 0x80 != 0) {
        return Err(format!(
            "not DER: {name} at byte {at} ends inside a subidentifier"
        ));
    }
    let mut starts = true;
    for b in c {
        if starts && *b == 0x80 {
            return Err(format!(
                "not DER: {name} at byte {at} has a subidentifier with a leading 0x80 octet \
                 (X.690 §8.19.2)"
            ));
        }
        starts = b & 0x80 == 0;
    }
    Ok(())
}

/// X.690 §11.7, §11.8: seconds present, no fraction (RFC 5280 §4.1.2.5
/// forbids one), and `Z`.
fn check_time(at: usize, c: &[u8], digits: usize, name: &str) -> Result<(), String> {
    let ok =
        c.len() == digits + 1 && c[..digits].iter().all(u8::is_ascii_digit) && c[digits] == b'Z';
    if ok {
        Ok(())
    } else {
        Err(format!(
            "not DER: {name} at byte {at} is not {digits} digits and 'Z' (X.690 §11.7-11.8, \
             RFC 5280 §4.1.2.5)"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Encodings that break one DER rule each (X.690 §8, §10, §11), beside
    /// their DER forms, which pass.
    #[test]
    fn the_schemaless_rules() {
        let ok: &[&[u8]] = &[
            &[0x01, 0x01, 0xff],
            &[0x01, 0x01, 0x00],
            &[0x02, 0x01, 0x00],
            &[0x02, 0x02, 0x00, 0x80],
            &[0x02, 0x02, 0xff, 0x7f],
            &[0x03, 0x01, 0x00],
            &[0x03, 0x02, 0x07, 0x80],
            &[0x05, 0x00],
            &[0x06, 0x03, 0x55, 0x1d, 0x11],
            &[0x06, 0x06, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d],
            &[0x30, 0x00],
            &[0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02],
            &[0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
            &[0xbf, 0x1f, 0x00],
            &[0xa0, 0x03, 0x02, 0x01, 0x05],
            b"\x17\x0d991231235959Z",
            b"\x18\x0f20500101000000Z",
        ];
        for der in ok {
            check_der(der).unwrap_or_else(|e| panic!("{der:02x?}: {e}"));
        }
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([0u8; 128]);
        check_der(&long).unwrap();

        let bad: &[(&[u8], &str)] = &[
            (&[0x30, 0x80, 0x00, 0x00], "indefinite length at byte 1"),
            (
                &[0x04, 0x81, 0x01, 0x00],
                "length 1 at byte 1 is in the long form",
            ),
            (&[0x04, 0x82, 0x00, 0x01, 0x00], "leading zero octet"),
            (&[0x30, 0x00, 0x00], "1 trailing bytes"),
            (&[0x30, 0x01, 0x02], "truncated encoding at byte 2"),
            (&[0x30, 0x02, 0x02, 0x05], "goes beyond the data"),
            (
                &[0x01, 0x01, 0x01],
                "BOOLEAN at byte 0 is not one octet 0x00 or 0xFF",
            ),
            (&[0x01, 0x02, 0xff, 0xff], "BOOLEAN"),
            (&[0x02, 0x02, 0x00, 0x01], "redundant leading 0x00"),
            (&[0x02, 0x02, 0xff, 0x80], "redundant leading 0xFF"),
            (&[0x02, 0x00], "INTEGER at byte 0 is empty"),
            (&[0x0a, 0x02, 0x00, 0x01], "ENUMERATED"),
            (&[0x03, 0x00], "no unused-bits octet"),
            (&[0x03, 0x02, 0x08, 0x00], "claims 8 unused bits"),
            (&[0x03, 0x01, 0x01], "empty BIT STRING"),
            (&[0x03, 0x02, 0x01, 0x01], "unused bits that are not zero"),
            (
                &[0x23, 0x04, 0x03, 0x02, 0x00, 0x01],
                "BIT STRING at byte 0 is constructed",
            ),
            (
                &[0x24, 0x03, 0x04, 0x01, 0x00],
                "OCTET STRING at byte 0 is constructed",
            ),
            (&[0x2c, 0x00], "UTF8String at byte 0 is constructed"),
            (&[0x05, 0x01, 0x00], "NULL at byte 0 has contents"),
            (&[0x06, 0x03, 0x2a, 0x80, 0x01], "leading 0x80"),
            (&[0x06, 0x02, 0x2a, 0x86], "ends inside a subidentifier"),
            (&[0x10, 0x00], "SEQUENCE at byte 0 is primitive"),
            (
                &[0x31, 0x06, 0x02, 0x01, 0x02, 0x02, 0x01, 0x01],
                "SET OF at byte 0 is not sorted",
            ),
            (
                &[0x1f, 0x10, 0x00],
                "tag number 16 at byte 0 is in the long form",
            ),
            (&[0xbf, 0x80, 0x1f, 0x00], "leading zero octet"),
            (&[0x00, 0x00], "end-of-contents"),
            (b"\x17\x0b9912312359Z", "UTCTime at byte 0"),
            (b"\x17\x11991231235959+0100", "UTCTime"),
            (b"\x18\x1120500101000000.5Z", "GeneralizedTime"),
            // Nested: the rule holds at any depth, with the byte offset.
            (
                &[0x30, 0x05, 0x30, 0x03, 0x01, 0x01, 0x01],
                "BOOLEAN at byte 4",
            ),
            (&[], "truncated encoding at byte 0"),
        ];
        for (der, needle) in bad {
            let err = check_der(der).expect_err(needle);
            assert!(err.contains(needle), "{der:02x?}: {err}");
            assert!(err.starts_with("not DER"), "{err}");
        }

        let mut nested = vec![0x30, 0x00];
        for _ in 0..(MAX_DEPTH + 2) {
            nested = [vec![0x30, nested.len() as u8], nested].concat();
        }
        assert!(check_der(&nested).unwrap_err().contains("nested"));
    }

    /// A DER tree to mutate: a node keeps its tag octets and how its length
    /// is written, and is re-encoded with every enclosing length recomputed.
    #[derive(Clone)]
    struct Node {
        tag: Vec<u8>,
        len: Len,
        body: Body,
    }

    #[derive(Clone, Copy)]
    enum Len {
        Shortest,
        /// Long form with this many extra leading zero octets.
        Padded(usize),
        /// Long form even below 128.
        Long,
        Indefinite,
    }

    #[derive(Clone)]
    enum Body {
        Prim(Vec<u8>),
        Cons(Vec<Node>),
    }

    fn parse(der: &[u8]) -> Node {
        let (tlv, end) = read_tlv(der, 0, 0).unwrap();
        assert_eq!(end, der.len());
        let tag_len = tlv.content_at - tlv.at - (tlv.whole.len() - tlv.content.len() - 1);
        let tag = der[..tag_len].to_vec();
        let body = if tlv.constructed {
            let mut kids = Vec::new();
            let mut pos = 0;
            while pos < tlv.content.len() {
                let (_, next) = read_tlv(tlv.content, pos, 0).unwrap();
                kids.push(parse(&tlv.content[pos..next]));
                pos = next;
            }
            Body::Cons(kids)
        } else {
            Body::Prim(tlv.content.to_vec())
        };
        Node {
            tag,
            len: Len::Shortest,
            body,
        }
    }

    fn encode(n: &Node) -> Vec<u8> {
        let content = match &n.body {
            Body::Prim(c) => c.clone(),
            Body::Cons(kids) => kids.iter().flat_map(encode).collect(),
        };
        let mut out = n.tag.clone();
        let be = |len: usize| {
            let b = len.to_be_bytes();
            let first = b.iter().position(|x| *x != 0).unwrap_or(b.len() - 1);
            b[first..].to_vec()
        };
        match n.len {
            Len::Shortest if content.len() < 0x80 => out.push(content.len() as u8),
            Len::Shortest => {
                let b = be(content.len());
                out.push(0x80 | b.len() as u8);
                out.extend(b);
            }
            Len::Padded(extra) => {
                let b = be(content.len());
                out.push(0x80 | (b.len() + extra) as u8);
                out.extend(std::iter::repeat_n(0, extra));
                out.extend(b);
            }
            Len::Long => {
                let b = be(content.len());
                out.push(0x80 | b.len() as u8);
                out.extend(b);
            }
            Len::Indefinite => {
                out.push(0x80);
                out.extend(content);
                out.extend([0, 0]);
                return out;
            }
        }
        out.extend(content);
        out
    }

    impl Node {
        fn kid(&mut self, i: usize) -> &mut Node {
            match &mut self.body {
                Body::Cons(kids) => &mut kids[i],
                Body::Prim(_) => panic!("primitive"),
            }
        }
        fn kids(&mut self) -> &mut Vec<Node> {
            match &mut self.body {
                Body::Cons(kids) => kids,
                Body::Prim(_) => panic!("primitive"),
            }
        }
        fn prim(&mut self) -> &mut Vec<u8> {
            match &mut self.body {
                Body::Prim(c) => c,
                Body::Cons(_) => panic!("constructed"),
            }
        }
        /// The requested extension whose extnID content is `oid`.
        fn extension(&mut self, oid: &[u8]) -> &mut Node {
            // CSR -> CRI -> [0] attributes -> extensionRequest -> SET -> Extensions
            let exts = self.kid(0).kid(3).kid(0).kid(1).kid(0);
            exts.kids()
                .iter_mut()
                .find(|e| matches!(&e.body, Body::Cons(k) if matches!(&k[0].body, Body::Prim(c) if c == oid)))
                .expect("extension")
        }
        /// Edits the DER inside a primitive (an extension's OCTET STRING).
        fn inner(&mut self, edit: impl FnOnce(&mut Node)) {
            let mut tree = parse(self.prim());
            edit(&mut tree);
            *self.prim() = encode(&tree);
        }
    }

    const SAN: &[u8] = &[0x55, 0x1d, 0x11];
    const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
    const KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];

    /// The request `tree` with its CRI signed again by `key.pem` in `dir`
    /// (openssl dgst), so a mutation inside the signed part still verifies.
    fn signed(dir: &std::path::Path, tree: &Node) -> Vec<u8> {
        let mut tree = tree.clone();
        std::fs::write(dir.join("cri.der"), encode(tree.kid(0))).unwrap();
        crate::testutil::openssl_in(
            dir,
            &[
                "dgst", "-sha256", "-sign", "key.pem", "-out", "sig", "cri.der",
            ],
        );
        let sig = std::fs::read(dir.join("sig")).unwrap();
        let mut leaf = tree.kid(2);
        while let Body::Cons(_) = leaf.body {
            leaf = leaf.kid(0);
        }
        *leaf.prim() = [vec![0u8], sig].concat();
        encode(&tree)
    }

    /// A request openssl made, mutated to break one DER rule at a time (the
    /// signature made again over the mutated CRI): each is refused naming
    /// the rule, although x509-parser alone reads most of them and their
    /// signatures verify. The first two are the probe's (issue 22).
    #[test]
    fn csr_mutations_are_refused_naming_the_rule() {
        use x509_parser::certification_request::X509CertificationRequest;
        use x509_parser::prelude::FromDer;

        let dir = crate::testutil::tempdir();
        let d = dir.path();
        crate::testutil::openssl_in(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "key.pem",
            ],
        );
        crate::testutil::openssl_in(
            d,
            &[
                "req",
                "-new",
                "-key",
                "key.pem",
                "-multivalue-rdn",
                "-subj",
                "/CN=a.example.com+O=Acme",
                "-addext",
                "subjectAltName=DNS:a.example.com,DNS:b.example.com",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-addext",
                "keyUsage=critical,digitalSignature",
                "-outform",
                "DER",
                "-out",
                "req.der",
            ],
        );
        let original = std::fs::read(d.join("req.der")).unwrap();
        let base = parse(&original);
        assert_eq!(encode(&base), original, "the tree re-encodes the request");
        let resigned = signed(d, &base);
        crate::csr::parse_csr("csr", &resigned).expect("re-signed original is accepted");
        crate::csr::parse_csr("csr", &original).expect("openssl's request is accepted");

        type Mutation = fn(&mut Node);
        let cases: &[(&str, Mutation, &str)] = &[
            (
                "outer SEQUENCE tag 0x30 -> 0x70",
                |t| t.tag = vec![0x70],
                "expected SEQUENCE",
            ),
            (
                "signature BIT STRING tag 0x03 -> 0x83",
                |t| t.kid(2).tag = vec![0x83],
                "expected BIT STRING",
            ),
            (
                "outer length with a leading zero octet",
                |t| t.len = Len::Padded(1),
                "length at byte 1 has a leading zero octet",
            ),
            (
                "AlgorithmIdentifier length 10 in the long form",
                |t| t.kid(1).len = Len::Long,
                "length 10 at byte",
            ),
            (
                "outer indefinite length",
                |t| t.len = Len::Indefinite,
                "indefinite length at byte 1",
            ),
            (
                "signature BIT STRING constructed",
                |t| {
                    let sig = t.kid(2).clone();
                    *t.kid(2) = Node {
                        tag: vec![0x23],
                        len: Len::Shortest,
                        body: Body::Cons(vec![sig]),
                    };
                },
                "BIT STRING at byte",
            ),
            (
                "signature algorithm OID padded with 0x80",
                |t| {
                    let oid = t.kid(1).kid(0).prim();
                    oid.insert(1, 0x80);
                },
                "leading 0x80",
            ),
            (
                "outer SEQUENCE tag in the high-tag-number form",
                |t| t.tag = vec![0x3f, 0x10],
                "tag number 16 at byte 0 is in the long form",
            ),
            (
                "version INTEGER 0 as two octets",
                |t| *t.kid(0).kid(0).prim() = vec![0, 0],
                "INTEGER at byte",
            ),
            (
                "critical BOOLEAN 0x01 instead of 0xFF",
                |t| {
                    *t.extension(BASIC_CONSTRAINTS).kid(1).prim() = vec![0x01];
                },
                "BOOLEAN at byte",
            ),
            (
                "critical FALSE encoded although DEFAULT",
                |t| {
                    let critical = Node {
                        tag: vec![0x01],
                        len: Len::Shortest,
                        body: Body::Prim(vec![0x00]),
                    };
                    t.extension(SAN).kids().insert(1, critical);
                },
                "canonical encoding differs",
            ),
            (
                "keyUsage BIT STRING with a non-zero unused bit",
                |t| {
                    t.extension(KEY_USAGE)
                        .kid(2)
                        .inner(|ku| *ku.prim() = vec![0x07, 0x81]);
                },
                "unused bits that are not zero",
            ),
            (
                "subjectAltName length in the long form",
                |t| {
                    t.extension(SAN).kid(1).inner(|san| san.len = Len::Long);
                },
                "not DER: extension 2.5.29.17: length 30",
            ),
            (
                "subjectAltName dNSName tag 0x82 -> 0xa2",
                |t| {
                    t.extension(SAN).kid(1).inner(|san| {
                        let name = san.kid(0).clone();
                        *san.kid(0) = Node {
                            tag: vec![0xa2],
                            len: Len::Shortest,
                            body: Body::Cons(vec![Node {
                                tag: vec![0x16],
                                ..name
                            }]),
                        };
                    });
                },
                "extension 2.5.29.17",
            ),
            (
                "multi-valued RDN SET OF out of order",
                |t| {
                    t.kid(0).kid(1).kid(0).kids().reverse();
                },
                "SET OF at byte",
            ),
            (
                "public key BIT STRING claims 8 unused bits",
                |t| {
                    t.kid(0).kid(2).kid(1).prim()[0] = 8;
                },
                "claims 8 unused bits",
            ),
            (
                "attributes SET in indefinite length",
                |t| {
                    t.kid(0).kid(3).kid(0).kid(1).len = Len::Indefinite;
                },
                "indefinite length",
            ),
        ];
        let mut lenient = Vec::new();
        for (what, mutate, needle) in cases {
            let mut tree = base.clone();
            mutate(&mut tree);
            let der = signed(d, &tree);
            // As the API receives it: PEM around whatever the bytes are.
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.clone()));
            let err = match crate::csr::parse_csr("csr", pem.as_bytes()) {
                Err(certflow_core::DomainError::Invalid(errs)) => errs[0].reason.clone(),
                other => panic!("{what}: accepted or wrong error: {other:?}"),
            };
            assert!(err.contains(needle), "{what}: {err}");
            assert!(err.contains("not DER"), "{what}: {err}");
            if let Ok((_, csr)) = X509CertificationRequest::from_der(&der)
                && csr.verify_signature().is_ok()
            {
                lenient.push(*what);
            }
        }
        // What the probe found: x509-parser alone accepted these, signature and all.
        for what in [
            "outer SEQUENCE tag 0x30 -> 0x70",
            "signature BIT STRING tag 0x03 -> 0x83",
        ] {
            assert!(
                lenient.contains(&what),
                "{what} not accepted by x509-parser: {lenient:?}"
            );
        }
    }

    /// Certificates openssl and certflow's CA make are DER; the probe's tag
    /// change and a non-minimal serial in an imported one are refused.
    #[test]
    fn certificates() {
        let dir = crate::testutil::tempdir();
        let d = dir.path();
        crate::testutil::openssl_in(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "k.pem",
                "-subj",
                "/C=DE/O=Acme/CN=x.example",
                "-addext",
                "subjectAltName=DNS:x.example",
                "-outform",
                "DER",
                "-out",
                "c.der",
            ],
        );
        let openssl = std::fs::read(d.join("c.der")).unwrap();
        let ca = crate::testutil::ca(certflow_core::KeyType::EcdsaP256);
        for der in [&openssl, &ca.issuing_cert_der, &ca.root_cert_der] {
            check_certificate(der).unwrap();
        }
        let mut tagged = openssl.clone();
        tagged[0] = 0x70;
        assert!(
            check_certificate(&tagged)
                .unwrap_err()
                .contains("expected SEQUENCE")
        );
        let mut tree = parse(&openssl);
        // tbsCertificate -> [0] version, serialNumber
        let serial = tree.kid(0).kid(1).prim();
        serial.insert(0, 0x00);
        if serial[1] & 0x80 != 0 {
            serial.insert(0, 0x00);
        }
        let err = check_certificate(&encode(&tree)).unwrap_err();
        assert!(err.contains("redundant leading 0x00"), "{err}");
        let err = crate::inspect::check_der_certificate("pem", &encode(&tree)).unwrap_err();
        assert!(err.to_string().contains("pem"), "{err}");
    }
}
