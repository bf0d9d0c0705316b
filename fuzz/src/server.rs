//! Entry point over certflow-server's agent listener framing. The server is
//! a binary crate, so the framing file itself is included (it needs only
//! `http` and `httparse`), as the server's corpus replay includes this one.

#[path = "../../crates/server/src/agent_api/framing.rs"]
mod framing;

/// Body bound of the runs: small, so Content-Length refusals are reached.
const MAX_BODY: usize = 1 << 16;

/// The bytes of one agent connection, read as the connection loop reads
/// them: a request head, its Content-Length or chunked body, the next head,
/// and so on.
/// Checks that a head's length lies within the input and the bound, that no
/// strict prefix of a head is already complete, and that the response head
/// written for it (echoing its fields) parses back whole.
pub fn agent_http1(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((head, len))) = framing::parse_head(rest, MAX_BODY) {
        assert!(len > 0 && len <= rest.len() && len <= framing::MAX_HEAD);
        assert!(head.body_len <= MAX_BODY);
        assert!(!matches!(
            framing::parse_head(&rest[..len - 1], MAX_BODY),
            Ok(Some(_))
        ));
        let mut out = Vec::new();
        framing::write_response_head(
            &mut out,
            http::StatusCode::OK,
            &head.headers,
            Some(head.body_len),
            !head.keep_alive,
            head.version == http::Version::HTTP_10,
            "Mon, 07 Dec 2026 07:00:00 GMT",
        );
        let mut fields = vec![httparse::EMPTY_HEADER; head.headers.len() + 3];
        let mut resp = httparse::Response::new(&mut fields);
        assert_eq!(resp.parse(&out), Ok(httparse::Status::Complete(out.len())));
        rest = &rest[len..];
        if head.chunked {
            // A decoded body within the bound, taken from within the input;
            // no strict prefix of it already decodes to a complete one.
            let mut decoder = framing::Chunked::default();
            let Ok(Some(used)) = decoder.advance(rest, MAX_BODY) else {
                return;
            };
            let body = decoder.body.len();
            assert!(body <= MAX_BODY && used <= rest.len() && body <= used);
            assert!(!matches!(
                framing::Chunked::default().advance(&rest[..used - 1], MAX_BODY),
                Ok(Some(_))
            ));
            rest = &rest[used..];
        } else {
            rest = &rest[head.body_len.min(rest.len())..];
        }
    }
}
