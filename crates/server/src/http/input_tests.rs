//! Router tests of what the outside probe sent (issue 22): CSRs that are not
//! DER and names IDNA would silently rewrite are 400 problem documents
//! naming the rule or the character, and nothing is issued.

use base64::Engine as _;

use super::*;

const CERTIFICATES: &str = "/console/api/v1/certificates";

/// `der` as a CERTIFICATE REQUEST PEM block (RFC 7468 §7), whatever it holds.
fn csr_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    )
}

/// Where the DER encoding starting at `at` ends (definite lengths).
fn tlv_end(der: &[u8], at: usize) -> usize {
    let l = der[at + 1];
    if l < 0x80 {
        at + 2 + usize::from(l)
    } else {
        let n = usize::from(l & 0x7f);
        let len = der[at + 2..at + 2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        at + 2 + n + len
    }
}

async fn problem(h: &Harness, body: Value) -> (StatusCode, String, Value) {
    let (status, headers, bytes) = h
        .call(
            "POST",
            CERTIFICATES,
            Some(serde_json::to_vec(&body).unwrap()),
            "application/json",
        )
        .await;
    let ct = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    (status, ct, serde_json::from_slice(&bytes).unwrap())
}

/// The probe's two mutations of a valid openssl request (outer SEQUENCE tag
/// 0x30 -> 0x70, signature BIT STRING tag 0x03 -> 0x83) and three other
/// breaks of X.690 §10: each a 400 problem naming `csr` and the rule.
#[tokio::test]
async fn csrs_that_are_not_der_are_problems_naming_the_rule() {
    let h = harness().await;
    let b64: String = fixture("p256.csr")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    // SEQUENCE { CertificationRequestInfo, AlgorithmIdentifier, BIT STRING }
    assert_eq!(tlv_end(&der, 0), der.len(), "one encoding");
    let cri = if der[1] & 0x80 == 0 {
        2
    } else {
        2 + usize::from(der[1] & 0x7f)
    };
    let signature = tlv_end(&der, tlv_end(&der, cri));
    assert_eq!(der[signature], 0x03, "the signature BIT STRING");

    let mut outer_tag = der.clone();
    outer_tag[0] = 0x70;
    let mut signature_tag = der.clone();
    signature_tag[signature] = 0x83;
    let mut indefinite = vec![0x30, 0x80];
    indefinite.extend(&der[cri..]);
    indefinite.extend([0, 0]);
    let mut trailing = der.clone();
    trailing.extend([0x05, 0x00]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("outer tag 0x70", outer_tag, "expected SEQUENCE"),
        ("signature tag 0x83", signature_tag, "expected BIT STRING"),
        (
            "indefinite length",
            indefinite,
            "indefinite length at byte 1",
        ),
        ("trailing bytes", trailing, "2 trailing bytes"),
    ];
    for (what, bytes, needle) in cases {
        let body =
            json!({ "team": "payments", "names": ["a.example.com"], "csr": csr_pem(&bytes) });
        let (status, ct, p) = problem(&h, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {p}");
        assert_eq!(ct, "application/problem+json", "{what}");
        let fields = problem_fields(&p);
        assert!(
            fields
                .iter()
                .any(|(f, r)| f == "csr" && r.contains("not DER") && r.contains(needle)),
            "{what}: {fields:?}"
        );
    }
    assert_eq!(h.certificate_count().await, 0);
    // The unmodified request is issued.
    let body = json!({ "team": "payments", "csr": csr_pem(&der) });
    let (status, created) = h.json("POST", CERTIFICATES, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
}

/// A name UTS 46 would change beyond ASCII case is refused naming the
/// character and its position; the faithful U-label → A-label conversion
/// is issued, the certificate holding the A-label (RFC 5891 §4.4).
#[tokio::test]
async fn names_idna_would_rewrite_are_problems_naming_the_character() {
    let h = harness().await;
    let cases = [
        (
            "a\u{200b}.zw.example.com",
            "U+200B ZERO WIDTH SPACE at character 2",
        ),
        (
            "www\u{ff0e}example.com",
            "U+FF0E FULLWIDTH FULL STOP at character 4",
        ),
        (
            "www\u{3002}example.com",
            "U+3002 IDEOGRAPHIC FULL STOP at character 4",
        ),
        ("p\u{430}ypal.example.com", "mixes scripts"),
        (
            "\u{430}\u{440}\u{435}.example.com",
            "looks like the ASCII label 'ape'",
        ),
    ];
    for (name, needle) in cases {
        let (status, ct, p) = problem(&h, create(&["ok.example.com", name])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {p}");
        assert_eq!(ct, "application/problem+json");
        let fields = problem_fields(&p);
        assert!(
            fields
                .iter()
                .any(|(f, r)| f == "names[1]" && r.contains(needle)),
            "{name:?}: {fields:?}"
        );
    }
    assert_eq!(h.certificate_count().await, 0);

    let (status, created) = h
        .json(
            "POST",
            CERTIFICATES,
            Some(create(&["B\u{fc}cher.Example.com"])),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    // 'xn--' + 'bücher'.encode('punycode') (RFC 3492), lower-cased ASCII.
    assert_eq!(created["names"], json!(["xn--bcher-kva.example.com"]));
}
