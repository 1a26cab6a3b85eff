//! Moderation before orchestration: a policy engine that inspects a request
//! message before the gateway forwards it.
//!
//! The engine walks the message in its proto3 JSON mapping and checks every
//! string value and every object key, recursively, against a policy loaded
//! from TOML: size limits (whole message, single string, nesting depth), a
//! deny-list of terms, a set of deny patterns, and three PII detectors
//! (payment card numbers, e-mail addresses, IBANs). Every check runs in time
//! linear in the size of the message: the patterns use the `regex` crate
//! (finite automata, no backtracking) and the detectors are single-pass
//! scanners with a bounded look-ahead.
//!
//! What is detected, exactly:
//! - **Card numbers**: 13 to 19 ASCII digits, written either as one run or as
//!   groups of at least 3 digits separated by a single space or dash, that
//!   pass the Luhn check and are not all the same digit. The number must not
//!   be glued to a letter, digit or underscore on either side (`ref4111...`
//!   is not a card number). In a longer sequence of groups, every contiguous
//!   sub-sequence of groups with 13 to 19 digits is checked, so a card number
//!   followed by an expiry (`4111 1111 1111 1111 12 25`) is found.
//! - **E-mail addresses**: `local@domain.tld` where the local part is an
//!   RFC 5321 dot-atom, the domain has at least one dot, its labels are
//!   letters, digits and inner hyphens, and the TLD is at least two ASCII
//!   letters not followed by a letter, digit or hyphen.
//! - **IBANs** (ISO 13616): two letters, two check digits and 11 to 30
//!   letters or digits (15 to 34 characters), either compact or in the print
//!   format (groups of four separated by single spaces, the last group 1 to 4
//!   characters), in either case, whose mod-97 remainder is 1. The country
//!   code and the per-country length are not checked.
//! - **Deny terms**: case-insensitive (Unicode simple case folding), with a
//!   word boundary required where the term starts or ends with a word
//!   character, so `drop table` matches `DROP TABLE x` but not `undroptable`.
//!   Whitespace is matched exactly: `drop  table` (two spaces) does not match.
//!
//! What is deliberately not detected: Unicode look-alikes (no NFKC folding),
//! full-width or other non-ASCII digits, card numbers or IBANs split by other
//! separators, values carried in JSON numbers (proto3 JSON writes 64-bit
//! integers as strings, which are scanned), and anything in base64 or other
//! encodings. A 13 to 19 digit identifier written as a string (such as an
//! `int64` field) passes the Luhn check one time in ten; policies switch the
//! card detector off per method where such fields are expected.
//!
//! Security-relevant defaults: with no policy file the size limits and all PII
//! detectors are on and the deny-lists are empty. A finding never echoes the
//! matched text: details name the kind of data, and an object key that itself
//! holds PII (or is over the string limit) appears in field paths as its
//! position, `[#n]`, not its text.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most findings one decision carries; the walk stops at this many.
pub const MAX_FINDINGS: usize = 32;

/// Reason: the serialized message is larger than `max_input_bytes`.
pub const INPUT_TOO_LARGE: &str = "input_too_large";
/// Reason: a string value or object key is longer than `max_string_bytes`.
pub const STRING_TOO_LONG: &str = "string_too_long";
/// Reason: objects and arrays are nested deeper than `max_depth`.
pub const TOO_DEEP: &str = "too_deep";
/// Reason: a string contains one of the `deny_terms`.
pub const DENIED_TERM: &str = "denied_term";
/// Reason: a string matches one of the `deny_patterns`.
pub const DENIED_PATTERN: &str = "denied_pattern";
/// Reason: a string contains a payment card number.
pub const PII_CARD_NUMBER: &str = "pii_card_number";
/// Reason: a string contains an e-mail address.
pub const PII_EMAIL_ADDRESS: &str = "pii_email_address";
/// Reason: a string contains an IBAN.
pub const PII_IBAN: &str = "pii_iban";

/// Default `max_input_bytes`.
const DEFAULT_MAX_INPUT_BYTES: usize = 65_536;
/// Default `max_string_bytes`.
const DEFAULT_MAX_STRING_BYTES: usize = 16_384;
/// Default `max_depth`.
const DEFAULT_MAX_DEPTH: usize = 32;

/// Why a moderation policy could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModerationError {
    /// The policy file could not be read.
    #[error("cannot read moderation policy {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The policy is not valid TOML or has an unknown key or a wrong type;
    /// the cause names the key.
    #[error("cannot parse moderation policy")]
    Parse(#[source] toml::de::Error),
    /// A size limit is zero or negative.
    #[error("`{key}` must be a positive integer, got {value}")]
    InvalidLimit {
        /// The key, with its table (`methods."/pkg.S/M".max_depth`).
        key: String,
        /// The value found.
        value: i64,
    },
    /// A deny term is empty, which would match everything.
    #[error("`deny_terms[{index}]` is empty")]
    EmptyTerm {
        /// Its position in the list.
        index: usize,
    },
    /// A deny pattern is not a valid regular expression.
    #[error("`deny_patterns[{index}]` is not a valid regex: {pattern:?}")]
    InvalidPattern {
        /// Its position in the list.
        index: usize,
        /// The pattern.
        pattern: String,
        /// The cause.
        #[source]
        source: regex::Error,
    },
    /// The terms or patterns are valid one by one but too large together.
    #[error("`{key}` do not compile as one set")]
    SetTooLarge {
        /// `deny_terms` or `deny_patterns`.
        key: &'static str,
        /// The cause.
        #[source]
        source: regex::Error,
    },
    /// A `[methods."..."]` table is not named by a method path.
    #[error("`methods.{method:?}` is not a method path of the form /package.Service/Method")]
    InvalidMethod {
        /// The table name.
        method: String,
    },
}

/// A moderation policy, parsed and validated at load; the regular
/// expressions are compiled here so that a bad one is a load error.
#[derive(Clone, Debug)]
pub struct ModerationPolicy {
    base: Limits,
    methods: HashMap<String, Limits>,
    terms: RegexSet,
    patterns: RegexSet,
}

impl ModerationPolicy {
    /// Parses and validates a policy file's text.
    pub fn from_toml(text: &str) -> Result<Self, ModerationError> {
        let file: PolicyFile = toml::from_str(text).map_err(ModerationError::Parse)?;
        Self::from_file_contents(file)
    }

    /// Reads, parses and validates a policy file.
    pub fn from_file(path: &Path) -> Result<Self, ModerationError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModerationError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// The policy used when no file is configured: the default size limits
    /// (64 KiB message, 16 KiB string, depth 32), every PII detector on, and
    /// empty deny-lists.
    pub fn default_policy() -> Self {
        Self {
            base: Limits::default(),
            methods: HashMap::new(),
            terms: RegexSet::empty(),
            patterns: RegexSet::empty(),
        }
    }

    fn from_file_contents(file: PolicyFile) -> Result<Self, ModerationError> {
        let defaults = Limits::default();
        let base = Limits {
            max_input_bytes: limit("max_input_bytes", file.max_input_bytes, defaults.max_input_bytes)?,
            max_string_bytes: limit(
                "max_string_bytes",
                file.max_string_bytes,
                defaults.max_string_bytes,
            )?,
            max_depth: limit("max_depth", file.max_depth, defaults.max_depth)?,
            pii: file.pii.apply(defaults.pii),
        };
        let mut methods = HashMap::with_capacity(file.methods.len());
        for (method, o) in file.methods {
            if !is_method_path(&method) {
                return Err(ModerationError::InvalidMethod { method });
            }
            let key = |name: &str| format!("methods.{method:?}.{name}");
            let limits = Limits {
                max_input_bytes: limit(&key("max_input_bytes"), o.max_input_bytes, base.max_input_bytes)?,
                max_string_bytes: limit(
                    &key("max_string_bytes"),
                    o.max_string_bytes,
                    base.max_string_bytes,
                )?,
                max_depth: limit(&key("max_depth"), o.max_depth, base.max_depth)?,
                pii: o.pii.apply(base.pii),
            };
            methods.insert(method, limits);
        }
        Ok(Self {
            base,
            methods,
            terms: compile_terms(&file.deny_terms)?,
            patterns: compile_patterns(&file.deny_patterns)?,
        })
    }

    /// The limits that apply to `method`: its override, else the base.
    fn limits(&self, method: &str) -> &Limits {
        self.methods.get(method).unwrap_or(&self.base)
    }
}

/// The policy engine. Cloning is cheap (the compiled policy is shared), and
/// one instance serves every request concurrently.
#[derive(Clone, Debug)]
pub struct Moderator {
    policy: Arc<ModerationPolicy>,
    /// Decisions taken: allowed, refused (for `/metrics`).
    decisions: Arc<[std::sync::atomic::AtomicU64; 2]>,
}

impl Moderator {
    /// An engine for `policy`.
    pub fn new(policy: ModerationPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
            decisions: Arc::default(),
        }
    }

    /// Checks one request message. `input` is the message in its proto3 JSON
    /// mapping and `method` the full method path (`/pkg.Service/Method`),
    /// which selects the per-method limits.
    ///
    /// An over-size message is refused without being walked, so the work
    /// done is bounded by `max_input_bytes`. Otherwise findings come in
    /// document order (object members in the order the map yields them),
    /// and within one string in the order of the reasons listed above, with
    /// at most one finding per reason (and per term or pattern) per string.
    pub fn check(&self, method: &str, input: &Value) -> Decision {
        let limits = self.policy.limits(method);
        let mut walk = Walk {
            limits,
            policy: &self.policy,
            nodes: Vec::new(),
            findings: Vec::new(),
        };
        if serialized_len_exceeds(input, limits.max_input_bytes) {
            walk.findings.push(Finding {
                reason: INPUT_TOO_LARGE,
                field: "input".to_owned(),
                detail: format!("the message is larger than {} bytes", limits.max_input_bytes),
            });
        } else {
            walk.run(input);
        }
        let decision = Decision {
            id: decision_id(),
            allowed: walk.findings.is_empty(),
            findings: walk.findings,
        };
        self.decisions[usize::from(!decision.allowed)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            decision = %decision.id,
            method,
            allowed = decision.allowed,
            findings = decision.findings.len(),
            "moderation decision"
        );
        decision
    }
}

/// `/metrics`: the decisions taken, by outcome.
impl soma_mesh::MetricsSource for Moderator {
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP soma_moderation_decisions_total Moderation decisions taken, by outcome.\n");
        out.push_str("# TYPE soma_moderation_decisions_total counter\n");
        for (outcome, counter) in ["allowed", "refused"].iter().zip(self.decisions.iter()) {
            let _ = writeln!(
                out,
                "soma_moderation_decisions_total{{outcome=\"{outcome}\"}} {}",
                counter.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
    }
}

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// `mod_` followed by 26 Crockford base-32 characters of a fresh random
    /// 128-bit value; forwarded with the call so that the decision can be
    /// found again.
    pub id: String,
    /// Whether the message may be forwarded: true exactly when there are no
    /// findings.
    pub allowed: bool,
    /// What was found, in document order, at most [`MAX_FINDINGS`].
    pub findings: Vec<Finding>,
}

/// One reason to refuse a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The machine-readable reason, one of the `*` constants of this module
    /// (`pii_card_number`, `denied_term`, ...).
    pub reason: &'static str,
    /// Where: `input` for the whole message, then `.name` for an object
    /// member (`["..."]` when the name is not an identifier, `[#n]` when the
    /// name itself must not be echoed), `[i]` for an array element; for
    /// example `input.items[2].text`.
    pub field: String,
    /// A safe, human-readable explanation; it never contains the matched
    /// text.
    pub detail: String,
}

/// The effective limits and switches for one method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Limits {
    max_input_bytes: usize,
    max_string_bytes: usize,
    max_depth: usize,
    pii: PiiSwitches,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            max_string_bytes: DEFAULT_MAX_STRING_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            pii: PiiSwitches {
                card_numbers: true,
                email_addresses: true,
                iban: true,
            },
        }
    }
}

/// Which PII detectors run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PiiSwitches {
    card_numbers: bool,
    email_addresses: bool,
    iban: bool,
}

/// The policy file as written. Limits are read as signed integers so that a
/// negative value is reported as an invalid limit naming its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    max_input_bytes: Option<i64>,
    max_string_bytes: Option<i64>,
    max_depth: Option<i64>,
    #[serde(default)]
    deny_terms: Vec<String>,
    #[serde(default)]
    deny_patterns: Vec<String>,
    #[serde(default)]
    pii: PiiFile,
    #[serde(default)]
    methods: BTreeMap<String, MethodFile>,
}

/// A `[methods."..."]` table: overrides of the numeric limits and switches.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodFile {
    max_input_bytes: Option<i64>,
    max_string_bytes: Option<i64>,
    max_depth: Option<i64>,
    #[serde(default)]
    pii: PiiFile,
}

/// A `[pii]` table; an absent switch keeps the inherited value.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PiiFile {
    card_numbers: Option<bool>,
    email_addresses: Option<bool>,
    iban: Option<bool>,
}

impl PiiFile {
    fn apply(&self, inherited: PiiSwitches) -> PiiSwitches {
        PiiSwitches {
            card_numbers: self.card_numbers.unwrap_or(inherited.card_numbers),
            email_addresses: self.email_addresses.unwrap_or(inherited.email_addresses),
            iban: self.iban.unwrap_or(inherited.iban),
        }
    }
}

/// A limit from the file, or the inherited one when absent; zero and
/// negative values are refused.
fn limit(key: &str, value: Option<i64>, inherited: usize) -> Result<usize, ModerationError> {
    match value {
        None => Ok(inherited),
        Some(v) => match usize::try_from(v) {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ModerationError::InvalidLimit {
                key: key.to_owned(),
                value: v,
            }),
        },
    }
}

/// `/package.Service/Method`: a leading slash, then two non-empty parts.
fn is_method_path(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('/') else {
        return false;
    };
    match rest.split_once('/') {
        Some((service, method)) => {
            !service.is_empty() && !method.is_empty() && !method.contains('/') && service.contains('.')
        }
        None => false,
    }
}

/// Deny terms become case-insensitive literal patterns, with `\b` on the
/// sides where the term begins or ends with a word character (as the regex
/// engine defines one, so that the boundary and the test agree).
fn compile_terms(terms: &[String]) -> Result<RegexSet, ModerationError> {
    let mut patterns = Vec::with_capacity(terms.len());
    for (index, term) in terms.iter().enumerate() {
        if term.is_empty() {
            return Err(ModerationError::EmptyTerm { index });
        }
        let start = if WORD_START.is_match(term) { r"\b" } else { "" };
        let end = if WORD_END.is_match(term) { r"\b" } else { "" };
        patterns.push(format!("(?i:{start}{}{end})", regex::escape(term)));
    }
    RegexSet::new(&patterns).map_err(|source| ModerationError::SetTooLarge {
        key: "deny_terms",
        source,
    })
}

/// Each pattern is compiled alone first so that an invalid one is reported
/// by position; then all are compiled into one set, scanned in one pass.
fn compile_patterns(patterns: &[String]) -> Result<RegexSet, ModerationError> {
    for (index, pattern) in patterns.iter().enumerate() {
        if let Err(source) = Regex::new(pattern) {
            return Err(ModerationError::InvalidPattern {
                index,
                pattern: pattern.clone(),
                source,
            });
        }
    }
    RegexSet::new(patterns).map_err(|source| ModerationError::SetTooLarge {
        key: "deny_patterns",
        source,
    })
}

#[expect(clippy::expect_used, reason = "a constant pattern, compiled by every test")]
static WORD_START: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\A\w").expect("valid regex"));
#[expect(clippy::expect_used, reason = "a constant pattern, compiled by every test")]
static WORD_END: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\w\z").expect("valid regex"));

/// The local part is a dot-atom (RFC 5321), the domain has at least one dot,
/// and the TLD (two or more letters) ends the address: the final group stands
/// in for a look-ahead, which the linear-time engine does not have.
#[expect(clippy::expect_used, reason = "a constant pattern, compiled by every test")]
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*",
        r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}",
        r"(?:[^A-Za-z0-9-]|\z)",
    ))
    .expect("valid regex")
});

/// Whether the compact serialization of `value` is longer than `limit`
/// bytes. The writer stops the serializer as soon as the limit is passed, so
/// an oversized message costs at most `limit` bytes of work.
fn serialized_len_exceeds(value: &Value, limit: usize) -> bool {
    struct Counter {
        len: usize,
        limit: usize,
    }
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.len = self.len.saturating_add(buf.len());
            if self.len > self.limit {
                return Err(io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { len: 0, limit };
    // Serializing a `Value` cannot fail by itself (keys are strings), so an
    // error means the counter stopped it; either way the message is refused.
    serde_json::to_writer(&mut counter, value).is_err() || counter.len > limit
}

/// The digest a moderation decision is bound to: SHA-256 of the RFC 8785
/// canonical form of `input`, the proto3 JSON of the request message.
///
/// The edge and a backend reach the same bytes for the same message however
/// it was encoded on the wire (field order, unknown fields, JSON spelling),
/// because both digest the message's one proto3 JSON form, canonicalized.
/// `None` only for a value RFC 8785 cannot express (a non-finite number,
/// which proto3 JSON never produces): such a message carries no binding and
/// is moderated again by whoever receives it.
pub fn input_digest(input: &Value) -> Option<[u8; 32]> {
    soma_sign::jcs::canonicalize(input)
        .ok()
        .map(|canonical| soma_sign::sha256(&canonical))
}

/// A fresh decision id: `mod_` and 128 random bits in 26 Crockford base-32
/// characters (the first carries the top 3 bits).
fn decision_id() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let bits: u128 = rand::random();
    let mut id = String::with_capacity(30);
    id.push_str("mod_");
    for i in (0..26).rev() {
        // Masked to 5 bits, so the index is always in range.
        let digit = ((bits >> (i * 5)) & 0x1f) as usize;
        id.push(char::from(ALPHABET[digit]));
    }
    id
}

/// One step of a field path.
#[derive(Clone, Copy, Debug)]
enum Segment<'a> {
    Root,
    Key {
        name: &'a str,
        position: usize,
        redact: bool,
    },
    Index(usize),
}

/// A path node: its parent (`None` for the root) and its last step. Paths
/// are rendered only for findings, so the walk stays linear however deep
/// and wide the message is.
#[derive(Debug)]
struct Node<'a> {
    parent: Option<usize>,
    segment: Segment<'a>,
}

/// Pending work of the walk, kept on an explicit stack so that a deeply
/// nested message cannot exhaust the thread's stack.
enum Frame<'a> {
    Member {
        parent: usize,
        position: usize,
        name: &'a str,
        value: &'a Value,
        depth: usize,
    },
    Element {
        parent: usize,
        index: usize,
        value: &'a Value,
        depth: usize,
    },
}

/// The state of one check.
struct Walk<'a> {
    limits: &'a Limits,
    policy: &'a ModerationPolicy,
    nodes: Vec<Node<'a>>,
    findings: Vec<Finding>,
}

impl<'a> Walk<'a> {
    fn run(&mut self, input: &'a Value) {
        self.nodes.push(Node {
            parent: None,
            segment: Segment::Root,
        });
        let mut stack = Vec::new();
        self.visit(input, 0, 0, &mut stack);
        while let Some(frame) = stack.pop() {
            if self.findings.len() >= MAX_FINDINGS {
                return;
            }
            match frame {
                Frame::Member {
                    parent,
                    position,
                    name,
                    value,
                    depth,
                } => {
                    let hits = self.scan(name);
                    let redact = hits.iter().any(|(reason, _)| {
                        matches!(
                            *reason,
                            STRING_TOO_LONG | PII_CARD_NUMBER | PII_EMAIL_ADDRESS | PII_IBAN
                        )
                    });
                    let node = self.node(
                        parent,
                        Segment::Key {
                            name,
                            position,
                            redact,
                        },
                    );
                    for (reason, detail) in hits {
                        self.find(reason, node, format!("object key: {detail}"));
                    }
                    self.visit(value, node, depth, &mut stack);
                }
                Frame::Element {
                    parent,
                    index,
                    value,
                    depth,
                } => {
                    let node = self.node(parent, Segment::Index(index));
                    self.visit(value, node, depth, &mut stack);
                }
            }
        }
    }

    /// Checks a value at `node`, whose container is at `depth` (0 for the
    /// message itself), and queues its children in reverse so that they pop
    /// in document order.
    fn visit(&mut self, value: &'a Value, node: usize, depth: usize, stack: &mut Vec<Frame<'a>>) {
        match value {
            Value::String(s) => {
                for (reason, detail) in self.scan(s) {
                    self.find(reason, node, detail);
                }
            }
            Value::Object(map) => {
                let depth = depth + 1;
                if self.too_deep(node, depth) {
                    return;
                }
                for (position, (name, value)) in map.iter().enumerate().rev() {
                    stack.push(Frame::Member {
                        parent: node,
                        position,
                        name,
                        value,
                        depth,
                    });
                }
            }
            Value::Array(items) => {
                let depth = depth + 1;
                if self.too_deep(node, depth) {
                    return;
                }
                for (index, value) in items.iter().enumerate().rev() {
                    stack.push(Frame::Element {
                        parent: node,
                        index,
                        value,
                        depth,
                    });
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    fn too_deep(&mut self, node: usize, depth: usize) -> bool {
        if depth > self.limits.max_depth {
            let detail = format!("nested deeper than {} levels", self.limits.max_depth);
            self.find(TOO_DEEP, node, detail);
            return true;
        }
        false
    }

    /// Every reason that applies to one string, in a fixed order.
    fn scan(&self, s: &str) -> Vec<(&'static str, String)> {
        let mut hits = Vec::new();
        if s.len() > self.limits.max_string_bytes {
            hits.push((
                STRING_TOO_LONG,
                format!("longer than {} bytes", self.limits.max_string_bytes),
            ));
        }
        for i in self.policy.terms.matches(s).iter() {
            hits.push((DENIED_TERM, format!("matches deny_terms[{i}]")));
        }
        for i in self.policy.patterns.matches(s).iter() {
            hits.push((DENIED_PATTERN, format!("matches deny_patterns[{i}]")));
        }
        let pii = self.limits.pii;
        if pii.card_numbers && contains_card_number(s) {
            hits.push((PII_CARD_NUMBER, "a payment card number (Luhn-valid)".to_owned()));
        }
        if pii.email_addresses && EMAIL.is_match(s) {
            hits.push((PII_EMAIL_ADDRESS, "an e-mail address".to_owned()));
        }
        if pii.iban && contains_iban(s) {
            hits.push((PII_IBAN, "an IBAN (mod-97 valid)".to_owned()));
        }
        hits
    }

    fn node(&mut self, parent: usize, segment: Segment<'a>) -> usize {
        self.nodes.push(Node {
            parent: Some(parent),
            segment,
        });
        self.nodes.len() - 1
    }

    fn find(&mut self, reason: &'static str, node: usize, detail: String) {
        if self.findings.len() < MAX_FINDINGS {
            let field = self.path(node);
            self.findings.push(Finding {
                reason,
                field,
                detail,
            });
        }
    }

    fn path(&self, node: usize) -> String {
        let mut steps = Vec::new();
        let mut at = Some(node);
        while let Some(i) = at {
            steps.push(self.nodes[i].segment);
            at = self.nodes[i].parent;
        }
        let mut out = String::new();
        for step in steps.into_iter().rev() {
            // Writing to a String cannot fail.
            let _ = match step {
                Segment::Root => write!(out, "input"),
                Segment::Index(i) => write!(out, "[{i}]"),
                Segment::Key {
                    position,
                    redact: true,
                    ..
                } => write!(out, "[#{position}]"),
                Segment::Key { name, .. } if is_identifier(name) => write!(out, ".{name}"),
                Segment::Key { name, .. } => write!(out, "[{}]", Value::String(name.to_owned())),
            };
        }
        out
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A character that glues a number or code to its neighbour: a letter, a
/// digit (any script) or an underscore.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `s` holds a card number as the module documentation defines it.
///
/// A run is a maximal sequence of ASCII digit groups joined by one space or
/// dash. A group glued to a word character at either end of the run is left
/// out. Each start group is extended while the candidate has at most 19
/// digits, so the work is at most 19 steps per group.
fn contains_card_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let glued_before = s[..i].chars().next_back().is_some_and(is_word_char);
        let mut groups = Vec::new();
        let mut start = i;
        let end = loop {
            let mut k = start;
            while k < b.len() && b[k].is_ascii_digit() {
                k += 1;
            }
            groups.push(&b[start..k]);
            if k + 1 < b.len() && matches!(b[k], b' ' | b'-') && b[k + 1].is_ascii_digit() {
                start = k + 1;
            } else {
                break k;
            }
        };
        let glued_after = s[end..].chars().next().is_some_and(is_word_char);
        let lo = usize::from(glued_before);
        let hi = groups.len() - usize::from(glued_after);
        if lo < hi && any_card_candidate(&groups[lo..hi]) {
            return true;
        }
        i = end;
    }
    false
}

fn any_card_candidate(groups: &[&[u8]]) -> bool {
    let mut digits = Vec::with_capacity(19);
    for first in 0..groups.len() {
        digits.clear();
        for (n, group) in groups[first..].iter().enumerate() {
            // Grouped numbers are written in groups of 3 or more; shorter
            // groups are lists of small numbers, not card numbers.
            if n > 0 && (group.len() < 3 || groups[first].len() < 3) {
                break;
            }
            if digits.len() + group.len() > 19 {
                break;
            }
            digits.extend_from_slice(group);
            if digits.len() >= 13 && luhn_valid(&digits) && digits.iter().any(|&d| d != digits[0]) {
                return true;
            }
        }
    }
    false
}

/// The Luhn check over ASCII digits.
fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Whether `s` holds an IBAN as the module documentation defines it.
///
/// Tokens are maximal runs of word characters. A candidate starts at an
/// ASCII token beginning with two letters and two digits: the token alone
/// (compact form), or, when the token is exactly four characters, followed by
/// four-character tokens joined by single spaces and a last token of one to
/// four (print format). A candidate is at most 34 characters, so the work per
/// start is bounded.
fn contains_iban(s: &str) -> bool {
    let tokens = word_tokens(s);
    let mut buf = Vec::with_capacity(34);
    for (t, &(start, end)) in tokens.iter().enumerate() {
        let first = &s.as_bytes()[start..end];
        let starts_like_iban = first.len() >= 4
            && first[..2].iter().all(u8::is_ascii_alphabetic)
            && first[2..4].iter().all(u8::is_ascii_digit)
            && first.iter().all(u8::is_ascii_alphanumeric);
        if !starts_like_iban {
            continue;
        }
        buf.clear();
        buf.extend(first.iter().map(u8::to_ascii_uppercase));
        if iban_valid(&buf) {
            return true;
        }
        if first.len() != 4 {
            continue;
        }
        let mut prev_end = end;
        for &(next_start, next_end) in &tokens[t + 1..] {
            let group = &s.as_bytes()[next_start..next_end];
            let joined = next_start == prev_end + 1 && s.as_bytes()[prev_end] == b' ';
            if !joined || group.len() > 4 || !group.iter().all(u8::is_ascii_alphanumeric) {
                break;
            }
            if buf.len() + group.len() > 34 {
                break;
            }
            buf.extend(group.iter().map(u8::to_ascii_uppercase));
            if iban_valid(&buf) {
                return true;
            }
            if group.len() < 4 {
                break;
            }
            prev_end = next_end;
        }
    }
    false
}

/// Byte ranges of the maximal runs of word characters.
fn word_tokens(s: &str) -> Vec<(usize, usize)> {
    let mut tokens = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (is_word_char(c), start) {
            (true, None) => start = Some(i),
            (false, Some(st)) => {
                tokens.push((st, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(st) = start {
        tokens.push((st, s.len()));
    }
    tokens
}

/// ISO 13616 / ISO 7064 MOD 97-10 over an upper-case candidate: length 15 to
/// 34, the first four characters moved to the end, letters as 10..=35, and
/// the remainder must be 1.
fn iban_valid(iban: &[u8]) -> bool {
    if !(15..=34).contains(&iban.len()) {
        return false;
    }
    let mut r = 0u32;
    for &c in iban[4..].iter().chain(&iban[..4]) {
        r = match c {
            b'0'..=b'9' => (r * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (r * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return false,
        };
    }
    r == 1
}
