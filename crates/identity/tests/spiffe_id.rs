//! SPIFFE ID parsing, table-driven: every malformed form is refused with its
//! own reason, never normalised into something else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use soma_identity::{MAX_SPIFFE_ID_LEN, SpiffeId, SpiffeIdError, TrustDomain};

struct Case {
    name: &'static str,
    input: String,
    expected: Result<(), SpiffeIdError>,
}

fn case(name: &'static str, input: &str, expected: Result<(), SpiffeIdError>) -> Case {
    Case {
        name,
        input: input.to_owned(),
        expected,
    }
}

/// `spiffe://example.org/` followed by path bytes up to exactly `len` bytes in all.
fn id_of_len(len: usize) -> String {
    let prefix = "spiffe://example.org/";
    format!("{prefix}{}", "a".repeat(len - prefix.len()))
}

#[test]
fn malformed_ids_are_refused_each_with_its_own_reason() {
    use SpiffeIdError::*;
    let cases = vec![
        case(
            "upper-case scheme",
            "SPIFFE://example.org/svc",
            Err(UppercaseScheme),
        ),
        case(
            "mixed-case scheme",
            "Spiffe://example.org/svc",
            Err(UppercaseScheme),
        ),
        case(
            "upper-case trust domain",
            "spiffe://Example.org/svc",
            Err(UppercaseTrustDomain),
        ),
        case(
            "percent-encoding in path",
            "spiffe://example.org/sv%63",
            Err(PercentEncoded),
        ),
        case(
            "percent-encoding in trust domain",
            "spiffe://ex%61mple.org/svc",
            Err(PercentEncoded),
        ),
        case("dot segment", "spiffe://example.org/./svc", Err(DotSegment)),
        case(
            "dot-dot segment",
            "spiffe://example.org/a/../svc",
            Err(DotSegment),
        ),
        case("trailing dot-dot", "spiffe://example.org/a/..", Err(DotSegment)),
        case("empty segment", "spiffe://example.org/a//svc", Err(EmptySegment)),
        case("trailing slash", "spiffe://example.org/svc/", Err(TrailingSlash)),
        case(
            "trailing slash on trust domain",
            "spiffe://example.org/",
            Err(TrailingSlash),
        ),
        case("query", "spiffe://example.org/svc?x=1", Err(Query)),
        case("fragment", "spiffe://example.org/svc#frag", Err(Fragment)),
        case("userinfo", "spiffe://user@example.org/svc", Err(Userinfo)),
        case(
            "userinfo with password",
            "spiffe://user:pw@example.org/svc",
            Err(Userinfo),
        ),
        case("port", "spiffe://example.org:8443/svc", Err(Port)),
        case("wrong scheme", "https://example.org/svc", Err(WrongScheme)),
        case("no scheme", "example.org/svc", Err(WrongScheme)),
        case(
            "scheme without slashes",
            "spiffe:example.org/svc",
            Err(WrongScheme),
        ),
        case("empty", "", Err(Empty)),
        case("missing trust domain", "spiffe:///svc", Err(MissingTrustDomain)),
        case(
            "bad trust domain character",
            "spiffe://exa$mple.org/svc",
            Err(BadTrustDomainChar),
        ),
        case(
            "bad path character",
            "spiffe://example.org/s*c",
            Err(BadPathSegmentChar),
        ),
        Case {
            name: "2049 bytes",
            input: id_of_len(MAX_SPIFFE_ID_LEN + 1),
            expected: Err(TooLong),
        },
        Case {
            name: "exactly 2048 bytes",
            input: id_of_len(MAX_SPIFFE_ID_LEN),
            expected: Ok(()),
        },
        case("trust domain only", "spiffe://example.org", Ok(())),
        case(
            "path with all allowed characters",
            "spiffe://ex-am_ple.org/A-z_0.9/x",
            Ok(()),
        ),
    ];
    for case in cases {
        let got = SpiffeId::parse(&case.input).map(|_| ());
        assert_eq!(got, case.expected, "case {:?} ({:?})", case.name, case.input);
    }
}

#[test]
fn the_length_limit_is_exact() {
    assert_eq!(id_of_len(MAX_SPIFFE_ID_LEN).len(), 2048);
    let id = SpiffeId::parse(&id_of_len(2048)).unwrap();
    assert_eq!(id.to_string().len(), 2048);
    assert_eq!(SpiffeId::parse(&id_of_len(2049)), Err(SpiffeIdError::TooLong));
}

#[test]
fn valid_ids_round_trip_through_display() {
    for input in [
        "spiffe://example.org",
        "spiffe://example.org/svc",
        "spiffe://somastack.local/ns/prod/sa/gateway",
        "spiffe://td-1_x.example/Tool.Registry/v1",
    ] {
        let id = SpiffeId::parse(input).unwrap();
        assert_eq!(id.to_string(), input);
        let again: SpiffeId = id.to_string().parse().unwrap();
        assert_eq!(again, id);
    }
    let id = SpiffeId::parse("spiffe://somastack.local/gateway").unwrap();
    assert_eq!(id.trust_domain().name(), "somastack.local");
    assert_eq!(id.path(), "/gateway");
    let td = TrustDomain::parse("somastack.local").unwrap();
    assert_eq!(SpiffeId::from_parts(&td, "/gateway").unwrap(), id);
    assert_eq!(
        SpiffeId::from_parts(&td, "gateway"),
        Err(SpiffeIdError::NoLeadingSlash)
    );
    assert_eq!(td.id_string(), "spiffe://somastack.local");
}
