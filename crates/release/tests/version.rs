#![allow(clippy::unwrap_used, clippy::expect_used)]
//! SemVer 2.0.0: the specification's precedence example, build metadata,
//! and invalid forms, each refused with `version_invalid`.

use std::collections::HashSet;

use soma_release::Version;

fn v(text: &str) -> Version {
    Version::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn specification_precedence_example() {
    // semver.org §11.4, verbatim.
    let chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
    ];
    for pair in chain.windows(2) {
        assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        assert!(v(pair[1]) > v(pair[0]), "{} > {}", pair[1], pair[0]);
    }
    // The whole chain, shuffled, sorts back into the specification's order.
    let mut shuffled: Vec<Version> = [7, 2, 5, 0, 3, 6, 1, 4].iter().map(|&i| v(chain[i])).collect();
    shuffled.sort();
    let sorted: Vec<&str> = shuffled.iter().map(Version::as_str).collect();
    assert_eq!(sorted, chain);
    // §11.2: 1.0.0 < 2.0.0 < 2.1.0 < 2.1.1, numerically (not 2.10 < 2.9).
    assert!(v("1.0.0") < v("2.0.0") && v("2.0.0") < v("2.1.0") && v("2.1.0") < v("2.1.1"));
    assert!(v("2.9.0") < v("2.10.0"));
    assert!(v("1.0.0-rc.9") < v("1.0.0-rc.10"));
    // Numeric identifiers are lower than alphanumeric ones, whatever their digits.
    assert!(v("1.0.0-999") < v("1.0.0-a"));
    assert!(v("1.0.0-alpha") < v("1.0.0-alpha.0"));
    // Alphanumeric identifiers compare in ASCII order: uppercase before lowercase, '-' before digits.
    assert!(v("1.0.0-Z") < v("1.0.0-a"));
    assert!(v("1.0.0--") < v("1.0.0-0a"));
}

#[test]
fn build_metadata_is_ignored_for_precedence() {
    let a = v("1.0.0+build.1");
    let b = v("1.0.0+build.2");
    // Equal precedence: the registry refuses the second as "not greater".
    assert_eq!(a, b);
    assert!(b <= a && a <= b);
    assert_eq!(a, v("1.0.0"));
    assert!(v("1.0.0-alpha+001") < v("1.0.0+001"));
    // Hash agrees with Eq.
    let set: HashSet<Version> = [a.clone(), b.clone(), v("1.0.0")].into_iter().collect();
    assert_eq!(set.len(), 1);
    // The text, build metadata included, is kept as written.
    assert_eq!(a.to_string(), "1.0.0+build.1");
    assert_eq!(b.as_str(), "1.0.0+build.2");
}

#[test]
fn valid_forms() {
    for (text, major, minor, patch, pre) in [
        ("0.0.0", 0, 0, 0, false),
        ("1.9.0", 1, 9, 0, false),
        ("10.20.30", 10, 20, 30, false),
        ("1.0.0-alpha", 1, 0, 0, true),
        ("1.0.0-0.3.7", 1, 0, 0, true),
        ("1.0.0-x.7.z.92", 1, 0, 0, true),
        ("1.0.0-x-y-z.--", 1, 0, 0, true),
        ("1.0.0-alpha+001", 1, 0, 0, true),
        ("1.0.0+20130313144700", 1, 0, 0, false),
        ("1.0.0-beta+exp.sha.5114f85", 1, 0, 0, true),
        ("1.0.0+21AF26D3----117B344092BD", 1, 0, 0, false),
        ("1.0.0-0A.is.legal", 1, 0, 0, true),
        (
            "18446744073709551615.18446744073709551615.18446744073709551615",
            u64::MAX,
            u64::MAX,
            u64::MAX,
            false,
        ),
        ("1.0.0-18446744073709551615", 1, 0, 0, true),
    ] {
        let version = v(text);
        assert_eq!(
            (
                version.major(),
                version.minor(),
                version.patch(),
                version.is_prerelease()
            ),
            (major, minor, patch, pre),
            "{text}"
        );
        assert_eq!(version.to_string(), text);
        assert_eq!(text.parse::<Version>().unwrap(), version);
    }
}

struct Case<'a> {
    text: &'a str,
    reason: &'static str,
}

#[test]
fn invalid_forms_table() {
    let long = format!("1.0.0-{}", "a".repeat(123));
    let cases = [
        Case {
            text: "01.0.0",
            reason: "a number has a leading zero",
        },
        Case {
            text: "1.01.0",
            reason: "a number has a leading zero",
        },
        Case {
            text: "1.0.00",
            reason: "a number has a leading zero",
        },
        Case {
            text: "1.0",
            reason: "the core must be exactly MAJOR.MINOR.PATCH",
        },
        Case {
            text: "1",
            reason: "the core must be exactly MAJOR.MINOR.PATCH",
        },
        Case {
            text: "1.0.0.0",
            reason: "the core must be exactly MAJOR.MINOR.PATCH",
        },
        Case {
            text: "1.0.0-",
            reason: "an identifier is empty",
        },
        Case {
            text: "1.0.0+",
            reason: "an identifier is empty",
        },
        Case {
            text: "1.0.0-a..b",
            reason: "an identifier is empty",
        },
        Case {
            text: "1.0.0+a..b",
            reason: "an identifier is empty",
        },
        Case {
            text: "1.0.0-01",
            reason: "a number has a leading zero",
        },
        Case {
            text: "1.0.0-alpha.01",
            reason: "a number has a leading zero",
        },
        Case {
            text: "18446744073709551616.0.0",
            reason: "a number is larger than 18446744073709551615",
        },
        Case {
            text: "1.99999999999999999999.0",
            reason: "a number is larger than 18446744073709551615",
        },
        Case {
            text: "1.0.0-99999999999999999999",
            reason: "a number is larger than 18446744073709551615",
        },
        Case {
            text: "",
            reason: "empty",
        },
        Case {
            text: "v1.0.0",
            reason: "a core number has a character other than a digit",
        },
        Case {
            text: "1.0.0 ",
            reason: "a core number has a character other than a digit",
        },
        Case {
            text: "-1.0.0",
            reason: "the core must be exactly MAJOR.MINOR.PATCH",
        },
        Case {
            text: "1..0",
            reason: "a number is empty",
        },
        Case {
            text: "1.0.+1",
            reason: "a number is empty",
        },
        Case {
            text: "1.0.0-alpha_beta",
            reason: "an identifier has a character outside [0-9A-Za-z-]",
        },
        Case {
            text: "1.0.0-é",
            reason: "an identifier has a character outside [0-9A-Za-z-]",
        },
        Case {
            text: "1.0.0+build+2",
            reason: "an identifier has a character outside [0-9A-Za-z-]",
        },
        Case {
            text: "1.0.0-rc 1",
            reason: "an identifier has a character outside [0-9A-Za-z-]",
        },
        Case {
            text: "１.0.0",
            reason: "a core number has a character other than a digit",
        },
        Case {
            text: &long,
            reason: "longer than 128 bytes",
        },
    ];
    for case in &cases {
        let err = Version::parse(case.text).unwrap_err();
        assert_eq!(err.reason(), "version_invalid", "{:?}", case.text);
        assert_eq!(
            err.to_string(),
            format!("version is not semver 2.0.0: {}", case.reason),
            "{:?}",
            case.text
        );
    }
    // 128 bytes exactly is still accepted.
    assert_eq!(Version::parse(&long[..128]).unwrap().as_str().len(), 128);
    println!("semver invalid forms: {} cases", cases.len());
}
