//! `soma verify`: offline checks of what SomaStack signs and stores.
//!
//! Every command exits 0 when what it checks is valid, 1 when it is not
//! (saying why), and 2 when its input is unusable (a file that cannot be
//! read or parsed, a key that is not a usable Ed25519 key, a database that
//! does not exist); a command-line usage error also exits 2.
//!
//! - `soma verify export FILE --signature SIG --public-key KEY` checks the
//!   detached Ed25519 signature of an Analytics export over the exact bytes
//!   of FILE, strictly (non-canonical encodings and small-order keys or
//!   points are refused). SIG holds the 64-byte signature in standard
//!   base64, KEY a PEM Ed25519 SubjectPublicKeyInfo. Prints `valid`.
//! - `soma verify store` sweeps every Analytics row and ledger leaf — each
//!   row's MAC under the versioned row keyring and the scheme that sealed
//!   it, the bijection between rows and leaves (every ledgered row at the
//!   index of its own leaf, no index claimed twice, every leaf with its row,
//!   no gap in the indices, every leaf row's own MAC), the checks of the
//!   `VerifyStore` RPC, through the same function — and prints one line per
//!   failure, `table/primary_key: reason` (`ledger_leaves/INDEX: reason` for
//!   a leaf; the reason for a ledgered row or a leaf names the tenant and
//!   the ledger index), then `N
//!   rows checked, M failed`. It only reads: it neither creates a database
//!   nor runs migrations.
//! - `soma verify ledger` checks an inclusion or a consistency proof against
//!   a signed checkpoint note, offline, with the proof as JSON in snake_case
//!   or in the proto3 JSON form `grpcurl` prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use clap::Subcommand;
use serde_json::{Map, Value};
use soma_ledger::{Checkpoint, CheckpointVerifier, Hash, LedgerError};
use soma_sign::{HmacKeyring, SignError};
use soma_store::{Database, StoreSettings};

/// Exit status of a valid signature, store or proof.
const EXIT_VALID: u8 = 0;
/// Exit status of an invalid one.
const EXIT_INVALID: u8 = 1;
/// Exit status of unusable input.
const EXIT_UNUSABLE: u8 = 2;

/// Largest proof or checkpoint file read: far above any real one (a proof
/// of a 2^64-leaf tree is 64 hashes), small enough to refuse a stray file.
const MAX_INPUT_LEN: u64 = 1024 * 1024;

/// The service name of Analytics' database (its SQLite file stem under DIR/db).
const ANALYTICS_DB: &str = "analytics";

/// What `soma verify` checks.
#[derive(Debug, Subcommand)]
pub(crate) enum VerifyCommand {
    /// Check an export's detached Ed25519 signature over the file's exact bytes.
    Export {
        /// The exported JSON document, byte for byte as received.
        file: PathBuf,
        /// File holding the 64-byte signature in standard base64.
        #[arg(long)]
        signature: PathBuf,
        /// PEM SubjectPublicKeyInfo of the Ed25519 key (from ListVerificationKeys).
        #[arg(long)]
        public_key: PathBuf,
    },
    /// Sweep every row of a service's store (MACs; for Analytics the ledger
    /// leaves and the row/leaf bijection, for CapsuleRepo the chained review
    /// histories) and list failures.
    ///
    /// The database is, in this order: --database-url; else the DATABASE_URL
    /// environment variable; else the SQLite file of `soma up`'s layout,
    /// DIR/db/<service>.db (`soma up` itself always uses SQLite, so unset
    /// DATABASE_URL to check its directory). Exit 0: no row failed; 1: some
    /// did; 2: unusable input (no database, unreadable keys).
    Store {
        /// Data directory of `soma up` (DIR/db, DIR/secrets).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Whose store: analytics or capsule-repo.
        #[arg(long, value_enum, default_value_t = SweptService::Analytics)]
        service: SweptService,
        /// PostgreSQL URL of the service's database; overrides DATABASE_URL.
        #[arg(long)]
        database_url: Option<String>,
        /// Row keyring JSON [default: DIR/secrets/analytics-row-keys.json,
        /// or DIR/secrets/capsule-repo-keys.json].
        #[arg(long)]
        row_keys: Option<PathBuf>,
    },
    /// Check a ledger inclusion or consistency proof against a signed checkpoint.
    ///
    /// Proof JSON, snake_case or proto3 JSON (camelCase, 64-bit integers as
    /// strings, hashes in base64), e.g. grpcurl's output: inclusion
    /// {"event_id", "leaf_index", "tree_size", "leaf_hash", "proof": [..]};
    /// consistency {"from_size", "to_size", "proof": [..]}. As in proto3
    /// JSON, an absent number is 0 and an absent proof is empty.
    Ledger {
        /// The checkpoint's signed note (the current one for --consistency).
        #[arg(long)]
        checkpoint: PathBuf,
        /// PEM SubjectPublicKeyInfo of the Ed25519 key that signs checkpoints.
        #[arg(long)]
        public_key: PathBuf,
        /// Key name and origin the note must carry [default: the note's first line].
        #[arg(long)]
        origin: Option<String>,
        /// Inclusion proof JSON (from InclusionProof); its tree size must be the checkpoint's.
        #[arg(long, required_unless_present = "consistency", conflicts_with = "consistency")]
        inclusion: Option<PathBuf>,
        /// Consistency proof JSON (from ConsistencyProof), from --previous-checkpoint to --checkpoint.
        #[arg(long, requires = "previous_checkpoint")]
        consistency: Option<PathBuf>,
        /// The older checkpoint's signed note, for --consistency.
        #[arg(long, requires = "consistency")]
        previous_checkpoint: Option<PathBuf>,
    },
}

/// Runs one `soma verify` command and returns its exit status.
pub(crate) async fn run(command: VerifyCommand) -> ExitCode {
    match command {
        VerifyCommand::Export {
            file,
            signature,
            public_key,
        } => report(verify_export(&file, &signature, &public_key)),
        VerifyCommand::Store {
            data_dir,
            service,
            database_url,
            row_keys,
        } => {
            let database_url =
                database_url.or_else(|| std::env::var("DATABASE_URL").ok().filter(|v| !v.is_empty()));
            report(verify_store(service, &data_dir, database_url, row_keys).await)
        }
        VerifyCommand::Ledger {
            checkpoint,
            public_key,
            origin,
            inclusion,
            consistency,
            previous_checkpoint,
        } => {
            let proof = match (inclusion, consistency, previous_checkpoint) {
                (Some(inclusion), None, None) => LedgerProof::Inclusion(inclusion),
                (None, Some(consistency), Some(previous)) => LedgerProof::Consistency {
                    proof: consistency,
                    previous,
                },
                // clap enforces exactly one of the two forms.
                _ => {
                    return report(Verdict::Unusable(
                        "give --inclusion, or --consistency with --previous-checkpoint".to_owned(),
                    ));
                }
            };
            report(verify_ledger(&checkpoint, &public_key, origin.as_deref(), &proof))
        }
    }
}

/// The verdict of a check.
enum Verdict {
    /// Valid; the text, when any, follows `valid: `.
    Valid(Option<String>),
    /// A store sweep, its listing already printed.
    Swept {
        failed: bool,
    },
    Invalid(String),
    Unusable(String),
}

#[expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the verdict is the command's output"
)]
fn report(verdict: Verdict) -> ExitCode {
    match verdict {
        Verdict::Valid(None) => {
            println!("valid");
            ExitCode::from(EXIT_VALID)
        }
        Verdict::Valid(Some(what)) => {
            println!("valid: {what}");
            ExitCode::from(EXIT_VALID)
        }
        Verdict::Swept { failed: false } => ExitCode::from(EXIT_VALID),
        Verdict::Swept { failed: true } => ExitCode::from(EXIT_INVALID),
        Verdict::Invalid(why) => {
            eprintln!("invalid: {why}");
            ExitCode::from(EXIT_INVALID)
        }
        Verdict::Unusable(why) => {
            eprintln!("soma: {why}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, Verdict> {
    std::fs::read(path).map_err(|e| Verdict::Unusable(format!("{what} {}: {e}", path.display())))
}

/// Reads a small text file (a note, a proof, a key).
fn read_text(what: &str, path: &Path) -> Result<String, Verdict> {
    let unusable = |why: String| Verdict::Unusable(format!("{what} {}: {why}", path.display()));
    let len = std::fs::metadata(path)
        .map_err(|e| unusable(e.to_string()))?
        .len();
    if len > MAX_INPUT_LEN {
        return Err(unusable(format!(
            "{len} bytes, more than the {MAX_INPUT_LEN} accepted"
        )));
    }
    String::from_utf8(read(what, path)?).map_err(|_| unusable("not UTF-8 text".to_owned()))
}

fn verify_export(file: &Path, signature: &Path, public_key: &Path) -> Verdict {
    match check_export(file, signature, public_key) {
        Ok(()) => Verdict::Valid(None),
        Err(verdict) => verdict,
    }
}

fn check_export(file: &Path, signature: &Path, public_key: &Path) -> Result<(), Verdict> {
    let message = read("export", file)?;
    let signature_text = read("signature", signature)?;
    let key_text = read("public key", public_key)?;

    let encoded = std::str::from_utf8(&signature_text)
        .map_err(|_| Verdict::Unusable(format!("signature {}: not text", signature.display())))?
        .trim();
    let signature_bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| {
            Verdict::Unusable(format!(
                "signature {}: not standard base64: {e}",
                signature.display()
            ))
        })?;
    if signature_bytes.len() != soma_sign::ED25519_SIGNATURE_LEN {
        return Err(Verdict::Unusable(format!(
            "signature {}: {} bytes, an Ed25519 signature is {}",
            signature.display(),
            signature_bytes.len(),
            soma_sign::ED25519_SIGNATURE_LEN
        )));
    }

    let key_pem = std::str::from_utf8(&key_text)
        .map_err(|_| Verdict::Unusable(format!("public key {}: not PEM text", public_key.display())))?;
    let key = soma_sign::ed25519_public_key_from_pem(key_pem)
        .map_err(|e| Verdict::Unusable(format!("public key {}: {e}", public_key.display())))?;

    soma_sign::verify_ed25519_strict(&key, &message, &signature_bytes).map_err(|e| match e {
        // The key decoded but is not a point a signature can be checked
        // against: the input is unusable, not the signature wrong.
        SignError::PublicKeyLength { .. }
        | SignError::PublicKeyNotOnCurve
        | SignError::NonCanonicalPublicKey
        | SignError::WeakPublicKey => Verdict::Unusable(format!("public key {}: {e}", public_key.display())),
        other => Verdict::Invalid(format!("{}: {other}", file.display())),
    })
}

// ---------------------------------------------------------------------------
// soma verify store

/// A service whose store `soma verify store` sweeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SweptService {
    /// Analytics: rows, ledger leaves, the bijection.
    Analytics,
    /// CapsuleRepo: submissions, review histories, installations, thresholds.
    CapsuleRepo,
}

impl SweptService {
    /// Its database name (`soma up`'s DIR/db/<name>.db).
    fn database(self) -> &'static str {
        match self {
            Self::Analytics => ANALYTICS_DB,
            Self::CapsuleRepo => "capsule-repo",
        }
    }

    /// Its row keyring under `soma up`'s DIR/secrets.
    fn keys_file(self) -> &'static str {
        match self {
            Self::Analytics => "analytics-row-keys.json",
            Self::CapsuleRepo => "capsule-repo-keys.json",
        }
    }

    /// Its sweep: rows checked and `(table, key, reason)` of each failure.
    async fn sweep(
        self,
        db: &Database,
        keys: &HmacKeyring,
    ) -> Result<(u64, Vec<(String, String, String)>), String> {
        // The two services' reports have the same fields, in two types.
        macro_rules! listed {
            ($swept:expr) => {
                $swept
                    .map(|r| {
                        let failures = r
                            .failures
                            .into_iter()
                            .map(|f| (f.table, f.primary_key, f.reason));
                        (r.rows_checked, failures.collect())
                    })
                    .map_err(|e| chain(&e))
            };
        }
        match self {
            Self::Analytics => listed!(soma_analytics::verify_store(db, keys).await),
            Self::CapsuleRepo => listed!(soma_capsule_repo::verify_store(db, keys).await),
        }
    }
}

#[expect(clippy::print_stdout, reason = "the failure listing is the command's output")]
async fn verify_store(
    service: SweptService,
    data_dir: &Path,
    database_url: Option<String>,
    row_keys: Option<PathBuf>,
) -> Verdict {
    let name = service.database();
    let keys_path = row_keys.unwrap_or_else(|| data_dir.join("secrets").join(service.keys_file()));
    let keys = match HmacKeyring::load(&keys_path) {
        Ok(keys) => keys,
        Err(e) => return Verdict::Unusable(format!("row keys: {}", chain(&e))),
    };
    let settings = StoreSettings {
        data_dir: data_dir.join("db"),
        database_url,
    };
    if settings.database_url.is_none() {
        // Connecting would create an empty file (and its directory): a
        // mistyped --data-dir must fail, not verify a fresh, empty store.
        let file = settings.data_dir.join(format!("{name}.db"));
        if !file.is_file() {
            return Verdict::Unusable(format!("no {name} database at {}", file.display()));
        }
    }
    let db = match Database::connect(&settings, name).await {
        Ok(db) => db,
        Err(e) => return Verdict::Unusable(format!("opening the {name} database: {}", chain(&e))),
    };
    // No migration runs here: a database the service never migrated fails
    // the sweep's first query and is reported as unusable.
    let result = service.sweep(&db, &keys).await;
    db.close().await;
    let (rows_checked, failures) = match result {
        Ok(swept) => swept,
        Err(e) => return Verdict::Unusable(format!("sweeping the {name} database: {e}")),
    };
    for (table, key, reason) in &failures {
        println!("{table}/{key}: {reason}");
    }
    println!("{rows_checked} rows checked, {} failed", failures.len());
    Verdict::Swept {
        failed: !failures.is_empty(),
    }
}

/// An error and its causes, one line; a cause whose text an outer message
/// already quotes is not repeated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------------------
// soma verify ledger

/// The proof `soma verify ledger` checks.
enum LedgerProof {
    Inclusion(PathBuf),
    Consistency { proof: PathBuf, previous: PathBuf },
}

fn verify_ledger(checkpoint: &Path, public_key: &Path, origin: Option<&str>, proof: &LedgerProof) -> Verdict {
    match check_ledger(checkpoint, public_key, origin, proof) {
        Ok(what) => Verdict::Valid(Some(what)),
        Err(verdict) => verdict,
    }
}

/// `soma verify ledger --consistency` as a function: the note at
/// `checkpoint` extends the note at `previous` by the proof at `proof`,
/// both signed by the key at `public_key` under the origin of the note's
/// first line. `Ok`: what `soma verify ledger` prints after `valid: `;
/// `Err`: why not.
pub(crate) fn ledger_consistency(
    checkpoint: &Path,
    public_key: &Path,
    previous: &Path,
    proof: &Path,
) -> Result<String, String> {
    let proof = LedgerProof::Consistency {
        proof: proof.to_owned(),
        previous: previous.to_owned(),
    };
    check_ledger(checkpoint, public_key, None, &proof).map_err(Verdict::reason)
}

/// The checkpoint of the note at `checkpoint`, verified with the key at
/// `public_key` as `soma verify ledger` verifies it; `Err`: why not.
pub(crate) fn verified_checkpoint(checkpoint: &Path, public_key: &Path) -> Result<Checkpoint, String> {
    verified_note(checkpoint, public_key, None)
        .map(|(_, current)| current)
        .map_err(Verdict::reason)
}

/// An inclusion proof as `InclusionProof` answers it (proto3 JSON), for a
/// tree of `checkpoint`'s size, checked against its root as `soma verify
/// ledger --inclusion` checks it: `Ok` the leaf's index, `Err` why not.
pub(crate) fn inclusion_in(text: &str, checkpoint: &Checkpoint) -> Result<u64, String> {
    let proof = InclusionInput::parse(text)?;
    if proof.tree_size != checkpoint.tree_size() {
        return Err(format!(
            "the proof is for tree size {}, the checkpoint is of size {}",
            proof.tree_size,
            checkpoint.tree_size()
        ));
    }
    soma_ledger::verify_inclusion(
        &proof.leaf_hash,
        proof.leaf_index,
        proof.tree_size,
        &proof.proof,
        checkpoint.root(),
    )
    .map_err(|e| format!("inclusion proof: {e}"))?;
    Ok(proof.leaf_index)
}

impl Verdict {
    /// Why a check did not pass, one line.
    fn reason(self) -> String {
        match self {
            Self::Invalid(why) | Self::Unusable(why) => why,
            Self::Valid(_) | Self::Swept { .. } => "no failure".to_owned(),
        }
    }
}

/// The verifier of a checkpoint note (under `origin`, else the note's
/// first line) and the note's checkpoint, verified.
fn verified_note(
    checkpoint: &Path,
    public_key: &Path,
    origin: Option<&str>,
) -> Result<(CheckpointVerifier, Checkpoint), Verdict> {
    let key = checkpoint_key(public_key)?;
    let note = read_text("checkpoint", checkpoint)?;
    let verifier = match origin {
        Some(origin) => CheckpointVerifier::new(origin, &key)
            .map_err(|e| Verdict::Unusable(format!("--origin {origin:?}: {e}")))?,
        None => {
            // The note's first line is its origin, and the key name a
            // SomaStack checkpoint is signed under.
            let first = note.split('\n').next().unwrap_or_default();
            CheckpointVerifier::new(first, &key).map_err(|e| {
                Verdict::Unusable(format!(
                    "checkpoint {}: its first line {first:?} is not an origin: {e}",
                    checkpoint.display()
                ))
            })?
        }
    };
    let current = verify_note(&verifier, "checkpoint", checkpoint, &note)?;
    Ok((verifier, current))
}

fn check_ledger(
    checkpoint: &Path,
    public_key: &Path,
    origin: Option<&str>,
    proof: &LedgerProof,
) -> Result<String, Verdict> {
    let (verifier, current) = verified_note(checkpoint, public_key, origin)?;

    match proof {
        LedgerProof::Inclusion(path) => {
            let proof = InclusionInput::parse(&read_text("inclusion proof", path)?)
                .map_err(|why| Verdict::Unusable(format!("inclusion proof {}: {why}", path.display())))?;
            if proof.tree_size != current.tree_size() {
                return Err(Verdict::Invalid(format!(
                    "the proof is for tree size {}, the checkpoint is of size {}",
                    proof.tree_size,
                    current.tree_size()
                )));
            }
            soma_ledger::verify_inclusion(
                &proof.leaf_hash,
                proof.leaf_index,
                proof.tree_size,
                &proof.proof,
                current.root(),
            )
            .map_err(|e| Verdict::Invalid(format!("inclusion proof: {e}")))?;
            let event = proof
                .event_id
                .map(|id| format!(" (event {id})"))
                .unwrap_or_default();
            Ok(format!(
                "leaf {} {}{event} is in {} at tree size {}, root {}",
                proof.leaf_index,
                proof.leaf_hash.to_base64(),
                current.origin(),
                current.tree_size(),
                current.root().to_base64()
            ))
        }
        LedgerProof::Consistency {
            proof: path,
            previous: previous_path,
        } => {
            let previous_note = read_text("previous checkpoint", previous_path)?;
            let previous = verify_note(&verifier, "previous checkpoint", previous_path, &previous_note)?;
            soma_ledger::check_monotonic(&previous, &current).map_err(|e| match e {
                LedgerError::CheckpointSizeDecreased { .. } => {
                    Verdict::Invalid(format!("a checkpoint with a smaller size is refused: {e}"))
                }
                other => Verdict::Invalid(other.to_string()),
            })?;
            let proof = ConsistencyInput::parse(&read_text("consistency proof", path)?)
                .map_err(|why| Verdict::Unusable(format!("consistency proof {}: {why}", path.display())))?;
            if (proof.from_size, proof.to_size) != (previous.tree_size(), current.tree_size()) {
                return Err(Verdict::Invalid(format!(
                    "the proof is from tree size {} to {}, the checkpoints are of sizes {} and {}",
                    proof.from_size,
                    proof.to_size,
                    previous.tree_size(),
                    current.tree_size()
                )));
            }
            soma_ledger::verify_consistency(
                proof.from_size,
                proof.to_size,
                &proof.proof,
                previous.root(),
                current.root(),
            )
            .map_err(|e| Verdict::Invalid(format!("consistency proof: {e}")))?;
            Ok(format!(
                "{} at tree size {} (root {}) extends tree size {} (root {})",
                current.origin(),
                current.tree_size(),
                current.root().to_base64(),
                previous.tree_size(),
                previous.root().to_base64()
            ))
        }
    }
}

/// The checkpoint key: a PEM Ed25519 SubjectPublicKeyInfo whose point is
/// canonically encoded and not of small order (the strict rules `soma verify
/// export` applies to its key).
fn checkpoint_key(path: &Path) -> Result<[u8; soma_sign::ED25519_PUBLIC_KEY_LEN], Verdict> {
    let pem = read_text("public key", path)?;
    let key = soma_sign::ed25519_public_key_from_pem(&pem)
        .map_err(|e| Verdict::Unusable(format!("public key {}: {e}", path.display())))?;
    // `verify_ed25519_strict` checks the key before anything else (its
    // documented order), so over a placeholder signature its key errors say
    // whether the key is usable; any later error is about the placeholder.
    match soma_sign::verify_ed25519_strict(&key, b"", &[0; soma_sign::ED25519_SIGNATURE_LEN]) {
        Err(
            e @ (SignError::PublicKeyLength { .. }
            | SignError::PublicKeyNotOnCurve
            | SignError::NonCanonicalPublicKey
            | SignError::WeakPublicKey),
        ) => Err(Verdict::Unusable(format!("public key {}: {e}", path.display()))),
        _ => Ok(key),
    }
}

/// Verifies a note: a note that cannot be read as a signed note is
/// unusable; one that is not signed by the key, or names another origin, is
/// invalid.
fn verify_note(
    verifier: &CheckpointVerifier,
    what: &str,
    path: &Path,
    note: &str,
) -> Result<Checkpoint, Verdict> {
    verifier.verify(note).map_err(|e| {
        let why = format!("{what} {}: {e}", path.display());
        match e {
            LedgerError::NoteTooLarge { .. }
            | LedgerError::NoteControlCharacter { .. }
            | LedgerError::NoteMissingTrailingNewline
            | LedgerError::NoteMissingBlankLine
            | LedgerError::NoteNoSignatures
            | LedgerError::TooManySignatures { .. }
            | LedgerError::MalformedSignatureLine { .. }
            | LedgerError::SignatureTooShort { .. } => Verdict::Unusable(why),
            _ => Verdict::Invalid(why),
        }
    })
}

/// An inclusion proof as given on the command line.
#[derive(Debug, PartialEq, Eq)]
struct InclusionInput {
    event_id: Option<String>,
    leaf_index: u64,
    tree_size: u64,
    leaf_hash: Hash,
    proof: Vec<Hash>,
}

impl InclusionInput {
    fn parse(text: &str) -> Result<Self, String> {
        let object = ProofObject::parse(
            text,
            &[
                "event_id",
                "eventId",
                "leaf_index",
                "leafIndex",
                "tree_size",
                "treeSize",
                "leaf_hash",
                "leafHash",
                "proof",
                // InclusionProofResponse carries its checkpoint too; the
                // note given with --checkpoint is the one trusted.
                "checkpoint",
            ],
        )?;
        let event_id = match object.field("event_id", "eventId")? {
            None => None,
            Some(Value::String(id)) => Some(id.clone()).filter(|id| !id.is_empty()),
            Some(_) => return Err("event_id is not a string".to_owned()),
        };
        Ok(Self {
            event_id,
            leaf_index: object.number("leaf_index", "leafIndex")?,
            tree_size: object.number("tree_size", "treeSize")?,
            leaf_hash: object.hash("leaf_hash", "leafHash")?,
            proof: object.hashes("proof")?,
        })
    }
}

/// A consistency proof as given on the command line.
#[derive(Debug, PartialEq, Eq)]
struct ConsistencyInput {
    from_size: u64,
    to_size: u64,
    proof: Vec<Hash>,
}

impl ConsistencyInput {
    fn parse(text: &str) -> Result<Self, String> {
        let object = ProofObject::parse(text, &["from_size", "fromSize", "to_size", "toSize", "proof"])?;
        Ok(Self {
            from_size: object.number("from_size", "fromSize")?,
            to_size: object.number("to_size", "toSize")?,
            proof: object.hashes("proof")?,
        })
    }
}

/// A proof's JSON object, read under proto3 JSON rules: a field by its
/// snake_case or its camelCase name (not both), 64-bit integers as numbers
/// or decimal strings, bytes in base64, absent fields at their defaults.
/// Unknown fields are refused, so a misspelt field is not silently zero.
struct ProofObject(Map<String, Value>);

impl ProofObject {
    fn parse(text: &str, known: &[&str]) -> Result<Self, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(map) = value else {
            return Err("not a JSON object".to_owned());
        };
        if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!("unknown field {unknown:?}"));
        }
        Ok(Self(map))
    }

    fn field(&self, snake: &str, camel: &str) -> Result<Option<&Value>, String> {
        match (self.0.get(snake), self.0.get(camel)) {
            (Some(_), Some(_)) if snake != camel => Err(format!("both {snake} and {camel} are given")),
            (Some(value), _) | (None, Some(value)) => Ok(Some(value).filter(|v| !v.is_null())),
            (None, None) => Ok(None),
        }
    }

    fn number(&self, snake: &str, camel: &str) -> Result<u64, String> {
        let bad = || format!("{snake} is not an unsigned 64-bit integer");
        match self.field(snake, camel)? {
            None => Ok(0),
            Some(Value::Number(n)) => n.as_u64().ok_or_else(bad),
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().map_err(|_| bad())
            }
            Some(_) => Err(bad()),
        }
    }

    fn hash(&self, snake: &str, camel: &str) -> Result<Hash, String> {
        match self.field(snake, camel)? {
            None => Err(format!("{snake} is missing")),
            Some(value) => decode_hash(value).map_err(|why| format!("{snake}: {why}")),
        }
    }

    fn hashes(&self, name: &str) -> Result<Vec<Hash>, String> {
        match self.field(name, name)? {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| decode_hash(item).map_err(|why| format!("{name}[{i}]: {why}")))
                .collect(),
            Some(_) => Err(format!("{name} is not an array")),
        }
    }
}

/// A 32-byte hash in base64: standard, as proto3 JSON writes bytes, or
/// URL-safe, which proto3 JSON readers also accept; padded either way.
fn decode_hash(value: &Value) -> Result<Hash, String> {
    let Value::String(text) = value else {
        return Err("not a base64 string".to_owned());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
        .map_err(|_| "not padded base64".to_owned())?;
    Hash::from_slice(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(hash: &Hash) -> String {
        hash.to_base64()
    }

    #[test]
    fn proofs_parse_in_snake_case_and_in_proto3_json() {
        let leaf = soma_ledger::leaf_hash(b"leaf");
        let node = soma_ledger::leaf_hash(b"node");
        let snake = format!(
            r#"{{"event_id": "bill-1", "leaf_index": 3, "tree_size": 7, "leaf_hash": "{}", "proof": ["{}"]}}"#,
            b64(&leaf),
            b64(&node)
        );
        let camel = format!(
            r#"{{"eventId": "bill-1", "leafIndex": "3", "treeSize": "7", "leafHash": "{}", "proof": ["{}"],
                "checkpoint": {{"origin": "o", "treeSize": "7"}}}}"#,
            b64(&leaf),
            b64(&node)
        );
        let want = InclusionInput {
            event_id: Some("bill-1".to_owned()),
            leaf_index: 3,
            tree_size: 7,
            leaf_hash: leaf,
            proof: vec![node],
        };
        assert_eq!(InclusionInput::parse(&snake).unwrap(), want);
        assert_eq!(InclusionInput::parse(&camel).unwrap(), want);
        // proto3 JSON leaves out zero values: leaf 0 of a one-leaf tree.
        let omitted = format!(r#"{{"treeSize": "1", "leafHash": "{}"}}"#, b64(&leaf));
        assert_eq!(
            InclusionInput::parse(&omitted).unwrap(),
            InclusionInput {
                event_id: None,
                leaf_index: 0,
                tree_size: 1,
                leaf_hash: leaf,
                proof: Vec::new(),
            }
        );
        assert_eq!(
            ConsistencyInput::parse(r#"{"fromSize": "2", "to_size": 9}"#).unwrap(),
            ConsistencyInput {
                from_size: 2,
                to_size: 9,
                proof: Vec::new(),
            }
        );
    }

    #[test]
    fn malformed_proofs_are_refused_naming_the_field() {
        struct Case {
            name: &'static str,
            input: String,
            expected: &'static str,
        }
        let leaf = b64(&soma_ledger::leaf_hash(b"leaf"));
        let cases = [
            Case {
                name: "not json",
                input: "{leaf".to_owned(),
                expected: "not JSON",
            },
            Case {
                name: "an array",
                input: "[]".to_owned(),
                expected: "not a JSON object",
            },
            Case {
                name: "unknown field",
                input: format!(r#"{{"leaf_idx": 1, "leaf_hash": "{leaf}"}}"#),
                expected: "unknown field \"leaf_idx\"",
            },
            Case {
                name: "both spellings",
                input: format!(r#"{{"tree_size": 1, "treeSize": "1", "leaf_hash": "{leaf}"}}"#),
                expected: "both tree_size and treeSize are given",
            },
            Case {
                name: "negative index",
                input: format!(r#"{{"leaf_index": -1, "leaf_hash": "{leaf}"}}"#),
                expected: "leaf_index is not an unsigned 64-bit integer",
            },
            Case {
                name: "signed string",
                input: format!(r#"{{"leafIndex": "+1", "leaf_hash": "{leaf}"}}"#),
                expected: "leaf_index is not an unsigned 64-bit integer",
            },
            Case {
                name: "fraction",
                input: format!(r#"{{"tree_size": 1.5, "leaf_hash": "{leaf}"}}"#),
                expected: "tree_size is not an unsigned 64-bit integer",
            },
            Case {
                name: "beyond 64 bits",
                input: format!(r#"{{"treeSize": "18446744073709551616", "leaf_hash": "{leaf}"}}"#),
                expected: "tree_size is not an unsigned 64-bit integer",
            },
            Case {
                name: "no leaf hash",
                input: r#"{"tree_size": 1}"#.to_owned(),
                expected: "leaf_hash is missing",
            },
            Case {
                name: "short leaf hash",
                input: r#"{"tree_size": 1, "leaf_hash": "AAAA"}"#.to_owned(),
                expected: "leaf_hash: hash is 3 bytes long, expected 32",
            },
            Case {
                name: "proof item not base64",
                input: format!(r#"{{"leaf_hash": "{leaf}", "proof": ["{leaf}", "!!"]}}"#),
                expected: "proof[1]: not padded base64",
            },
            Case {
                name: "proof not an array",
                input: format!(r#"{{"leaf_hash": "{leaf}", "proof": "{leaf}"}}"#),
                expected: "proof is not an array",
            },
            Case {
                name: "event id a number",
                input: format!(r#"{{"event_id": 7, "leaf_hash": "{leaf}"}}"#),
                expected: "event_id is not a string",
            },
        ];
        for case in cases {
            let err = InclusionInput::parse(&case.input).unwrap_err();
            assert!(err.starts_with(case.expected), "{}: {err}", case.name);
        }
    }
}
