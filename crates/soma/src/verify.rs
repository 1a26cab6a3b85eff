//! `soma verify`: offline checks of what SomaStack signs.
//!
//! `soma verify export FILE --signature SIG --public-key KEY` checks the
//! detached Ed25519 signature of an Analytics export over the exact bytes
//! of FILE, strictly (non-canonical encodings and small-order keys or
//! points are refused). Exit status: 0 valid (prints `valid`), 1 invalid
//! (one line on stderr saying why), 2 unusable input: a file that cannot be
//! read, a signature that is not standard base64 of 64 bytes, a key that is
//! not a PEM Ed25519 SubjectPublicKeyInfo of a usable point (one line on
//! stderr).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use clap::Subcommand;
use soma_sign::SignError;

/// Exit status of a valid signature.
const EXIT_VALID: u8 = 0;
/// Exit status of an invalid signature.
const EXIT_INVALID: u8 = 1;
/// Exit status of unusable input.
const EXIT_UNUSABLE: u8 = 2;

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
}

/// Runs one `soma verify` command and returns its exit status.
pub(crate) fn run(command: VerifyCommand) -> ExitCode {
    match command {
        VerifyCommand::Export {
            file,
            signature,
            public_key,
        } => report(verify_export(&file, &signature, &public_key)),
    }
}

/// The verdict of a check.
enum Verdict {
    Valid,
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
        Verdict::Valid => {
            println!("valid");
            ExitCode::from(EXIT_VALID)
        }
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

fn verify_export(file: &Path, signature: &Path, public_key: &Path) -> Verdict {
    match check_export(file, signature, public_key) {
        Ok(()) => Verdict::Valid,
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
