//! `soma capsule`: a publisher's side of capsule bundles and their
//! attestations.
//!
//! - `soma capsule digest BUNDLE`: the lowercase hex SHA-256 of a bundle,
//!   which must be exactly its RFC 8785 canonical form.
//! - `soma capsule attest --bundle B --key KEY [--key KEY …]
//!   [--predicate-type URI] [--predicate FILE] [--out FILE]`: an in-toto
//!   Statement v1 over the bundle digest in a DSSE envelope, signed by every
//!   key given (Ed25519 PKCS#8 PEM, as `soma release keygen` writes them).
//! - `soma capsule verify --bundle B --envelope E --public-key PUB
//!   [--public-key …] [--threshold N]`: checks an attestation offline, as
//!   CapsuleRepo does at submission, with the given keys as the registered
//!   ones.
//! - `soma capsule submit --edge URL --token JWT --bundle B --envelope E`:
//!   `POST /v1/submissions` through the JSON edge.
//! - `soma capsule import --edge URL --token JWT --template T --catalogue C
//!   --bundle B --envelope E`: `POST /v1/templates:import`, a bundle
//!   attested by an operator-pinned catalogue key (`soma up` pins `ops`,
//!   its key `DIR/secrets/ops-catalogue.key`).
//!
//! Exit codes: 0 done (or valid); 1 refused: the bundle, the attestation
//! or the edge said no, with soma-capsule's (or the edge's) reason; 64 a
//! usage error: a file that cannot be read, a key that is not an Ed25519
//! key of the expected form, a threshold of zero, an edge that is not
//! `http://`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use base64::Engine as _;
use clap::Subcommand;
use serde_json::Value;
use soma_capsule::{
    AttestError, AttestationKey, Bundle, BundleError, CAPSULE_REVIEW_PREDICATE_TYPE,
    DEFAULT_ALLOWED_PREDICATE_TYPES, Statement, attest, envelope_from_json, verify_attestation,
};
use soma_sign::{DsseEnvelope, Ed25519Signer, KeyId, jcs};

use crate::cli::{MAX_TEXT_FILE, edge_authority, post_json, read_limited, read_pem, refused, say};
use crate::config_error;
use crate::up::write_atomically;

/// `soma capsule …`.
#[derive(Debug, Subcommand)]
pub(crate) enum CapsuleCommand {
    /// Print the SHA-256 of a canonical bundle (lowercase hex).
    Digest {
        /// The bundle (its RFC 8785 canonical JSON).
        bundle: PathBuf,
    },
    /// Attest a bundle: prints the DSSE envelope of an in-toto Statement v1.
    Attest {
        /// The bundle (its RFC 8785 canonical JSON).
        #[arg(long)]
        bundle: PathBuf,
        /// A publisher's private key (Ed25519 PKCS#8 PEM); repeat to sign with several.
        #[arg(long = "key", value_name = "KEY", required = true)]
        keys: Vec<PathBuf>,
        /// The statement's predicate type.
        #[arg(long, default_value = CAPSULE_REVIEW_PREDICATE_TYPE)]
        predicate_type: String,
        /// The predicate, a JSON object (default: `{}`).
        #[arg(long)]
        predicate: Option<PathBuf>,
        /// Write the envelope here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify an attestation of a bundle offline, against publisher keys.
    Verify {
        /// The bundle (its RFC 8785 canonical JSON).
        #[arg(long)]
        bundle: PathBuf,
        /// The DSSE envelope (JSON).
        #[arg(long)]
        envelope: PathBuf,
        /// A publisher's public key (SubjectPublicKeyInfo PEM); repeat for several.
        #[arg(long = "public-key", value_name = "PUBLIC_KEY", required = true)]
        public_keys: Vec<PathBuf>,
        /// How many distinct keys must have signed.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
    },
    /// Submit a bundle and its attestation through the JSON edge.
    Submit {
        /// The edge, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        edge: String,
        /// A token with capsules:submit.
        #[arg(long)]
        token: String,
        /// The bundle (its RFC 8785 canonical JSON).
        #[arg(long)]
        bundle: PathBuf,
        /// The DSSE envelope (JSON).
        #[arg(long)]
        envelope: PathBuf,
    },
    /// Import a bundle as a template of an operator-pinned catalogue through
    /// the JSON edge: it lands as a pending submission.
    Import {
        /// The edge, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        edge: String,
        /// A token with capsules:submit (the importer: the submitter of record).
        #[arg(long)]
        token: String,
        /// The template's name.
        #[arg(long)]
        template: String,
        /// The catalogue whose pinned keys signed the attestation (e.g. ops).
        #[arg(long)]
        catalogue: String,
        /// The bundle (its RFC 8785 canonical JSON).
        #[arg(long)]
        bundle: PathBuf,
        /// The DSSE envelope (JSON), signed by the catalogue's key(s).
        #[arg(long)]
        envelope: PathBuf,
    },
}

/// Runs `soma capsule …`.
pub(crate) async fn run(command: CapsuleCommand) -> anyhow::Result<ExitCode> {
    match command {
        CapsuleCommand::Digest { bundle } => Ok(digest(&bundle)),
        CapsuleCommand::Attest {
            bundle,
            keys,
            predicate_type,
            predicate,
            out,
        } => attest_bundle(
            &bundle,
            &keys,
            &predicate_type,
            predicate.as_deref(),
            out.as_deref(),
        ),
        CapsuleCommand::Verify {
            bundle,
            envelope,
            public_keys,
            threshold,
        } => Ok(verify(&bundle, &envelope, &public_keys, threshold)),
        CapsuleCommand::Submit {
            edge,
            token,
            bundle,
            envelope,
        } => submit(&edge, &token, &bundle, &envelope, None).await,
        CapsuleCommand::Import {
            edge,
            token,
            template,
            catalogue,
            bundle,
            envelope,
        } => {
            let import = Import { template, catalogue };
            submit(&edge, &token, &bundle, &envelope, Some(&import)).await
        }
    }
}

/// What makes a submission a template import.
struct Import {
    template: String,
    catalogue: String,
}

fn digest(path: &Path) -> ExitCode {
    let bytes = match read_limited(path, MAX_TEXT_FILE) {
        Ok(b) => b,
        Err(e) => return usage(e),
    };
    match Bundle::parse(&bytes) {
        Ok(bundle) => {
            say(format_args!("{}", bundle.digest_hex()));
            ExitCode::SUCCESS
        }
        Err(e) => bundle_refused(path, &e),
    }
}

fn attest_bundle(
    bundle_path: &Path,
    key_paths: &[PathBuf],
    predicate_type: &str,
    predicate_path: Option<&Path>,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let inputs = (|| -> anyhow::Result<_> {
        let bundle = read_limited(bundle_path, MAX_TEXT_FILE)?;
        let mut signers = Vec::with_capacity(key_paths.len());
        for path in key_paths {
            signers.push((path, signer(path)?));
        }
        let predicate = match predicate_path {
            None => Value::Object(serde_json::Map::new()),
            Some(path) => jcs::parse_strict(&read_limited(path, MAX_TEXT_FILE)?)
                .map_err(|e| anyhow!("{}: not JSON: {e}", path.display()))?,
        };
        Ok((bundle, signers, predicate))
    })();
    let (bundle, signers, predicate) = match inputs {
        Ok(inputs) => inputs,
        Err(e) => return Ok(usage(e)),
    };
    // The same key twice would be one signer counted once by any verifier:
    // a publisher who passes it twice meant another key.
    for (i, (path, signer)) in signers.iter().enumerate() {
        if let Some((first, _)) = signers[..i]
            .iter()
            .find(|(_, s)| s.public_key() == signer.public_key())
        {
            return Ok(usage(anyhow!(
                "{} is the same key as {}",
                path.display(),
                first.display()
            )));
        }
    }
    let bundle = match Bundle::parse(&bundle) {
        Ok(b) => b,
        Err(e) => return Ok(bundle_refused(bundle_path, &e)),
    };
    let signers: Vec<&Ed25519Signer> = signers.iter().map(|(_, s)| s).collect();
    let envelope = match attest(&bundle, predicate_type, predicate, &signers) {
        Ok(e) => e,
        // What attest refuses is what it was given: the predicate (the
        // signers are at least one, clap requires it).
        Err(e) => return Ok(usage(anyhow!("{}: {}", e.reason(), chain(&e)))),
    };
    let json = envelope.to_json();
    match out {
        Some(path) => write_atomically(path, &json)?,
        None => {
            let mut stdout = std::io::stdout();
            stdout.write_all(&json)?;
            stdout.write_all(b"\n")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(bundle_path: &Path, envelope_path: &Path, key_paths: &[PathBuf], threshold: usize) -> ExitCode {
    let inputs = (|| -> anyhow::Result<_> {
        let bundle = read_limited(bundle_path, MAX_TEXT_FILE)?;
        let envelope = read_limited(envelope_path, MAX_TEXT_FILE)?;
        let mut keys: Vec<(&PathBuf, AttestationKey)> = Vec::with_capacity(key_paths.len());
        for path in key_paths {
            let key = AttestationKey::from_pem(&read_pem(path)?).map_err(|e| {
                anyhow!(
                    "{}: not an Ed25519 public key (SubjectPublicKeyInfo PEM): {e}",
                    path.display()
                )
            })?;
            if let Some((first, _)) = keys.iter().find(|(_, k)| k.key_id == key.key_id) {
                return Err(anyhow!(
                    "{} is the same key as {}",
                    path.display(),
                    first.display()
                ));
            }
            keys.push((path, key));
        }
        Ok((bundle, envelope, keys))
    })();
    let (bundle, envelope, keys) = match inputs {
        Ok(inputs) => inputs,
        Err(e) => return usage(e),
    };
    if threshold == 0 {
        let e = AttestError::ThresholdInvalid;
        return usage(anyhow!("--threshold 0: {}: {e}", e.reason()));
    }
    let keys: Vec<AttestationKey> = keys.into_iter().map(|(_, k)| k).collect();
    let bundle = match Bundle::parse(&bundle) {
        Ok(b) => b,
        Err(e) => return bundle_refused(bundle_path, &e),
    };
    let envelope = match envelope_from_json(&envelope) {
        Ok(e) => e,
        Err(e) => return attestation_refused(envelope_path, &e),
    };
    let digest = bundle.digest();
    let now = now_nanos();
    let check = |keys: &[AttestationKey], threshold| {
        verify_attestation(
            &envelope,
            &digest,
            keys,
            threshold,
            &DEFAULT_ALLOWED_PREDICATE_TYPES,
            now,
        )
    };
    let statement = match check(&keys, threshold) {
        Ok(s) => s,
        Err(e) => return attestation_refused(envelope_path, &e),
    };
    say(format_args!("predicate_type {}", statement.predicate_type()));
    for subject in statement.subjects() {
        let digests: Vec<String> = subject
            .digest()
            .iter()
            .map(|(algorithm, value)| format!("{algorithm}:{value}"))
            .collect();
        say(format_args!(
            "subject {} {}",
            subject.name().unwrap_or("-"),
            digests.join(" ")
        ));
    }
    // The keys that count: each one whose signature verifies on its own,
    // judged by the same verifier (verification stops at the threshold, so
    // the run above does not say which keys beyond it signed).
    for key in &keys {
        if check(std::slice::from_ref(key), 1).is_ok() {
            say(format_args!("key {}", key.key_id));
        }
    }
    ExitCode::SUCCESS
}

/// `POST /v1/submissions`, or `POST /v1/templates:import` with `import`.
async fn submit(
    edge: &str,
    token: &str,
    bundle_path: &Path,
    envelope_path: &Path,
    import: Option<&Import>,
) -> anyhow::Result<ExitCode> {
    let inputs = (|| -> anyhow::Result<_> {
        let authority = edge_authority(edge)?;
        Ok((
            authority,
            read_limited(bundle_path, MAX_TEXT_FILE)?,
            read_limited(envelope_path, MAX_TEXT_FILE)?,
        ))
    })();
    let (authority, bundle, envelope) = match inputs {
        Ok(inputs) => inputs,
        Err(e) => return Ok(usage(e)),
    };
    let bundle = match Bundle::parse(&bundle) {
        Ok(b) => b,
        Err(e) => return Ok(bundle_refused(bundle_path, &e)),
    };
    let envelope = match envelope_from_json(&envelope) {
        Ok(e) => e,
        Err(e) => return Ok(attestation_refused(envelope_path, &e)),
    };
    // A pair of files that do not belong together is caught here, not by a
    // round trip; everything else (the signatures, the keys, the threshold)
    // is CapsuleRepo's to judge against its registered keys.
    if let Err(e) = names_bundle(&envelope, &bundle) {
        return Ok(attestation_refused(envelope_path, &e));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    // proto3 JSON of SubmitCapsuleRequest (ImportTemplateRequest): bytes as
    // standard base64, the DsseEnvelope message in the DSSE JSON shape (the
    // same member names).
    let attestation = serde_json::from_slice::<Value>(&envelope.to_json())?;
    let bundle_b64 = b64.encode(bundle.canonical_bytes());
    let (path, body) = match import {
        None => (
            "/v1/submissions",
            serde_json::json!({
                "capsule": bundle.name(),
                "version": bundle.version().as_str(),
                "bundle": bundle_b64,
                "attestation": attestation,
            }),
        ),
        Some(import) => (
            "/v1/templates:import",
            serde_json::json!({
                "template": import.template,
                "catalogue": import.catalogue,
                "bundle": bundle_b64,
                "attestation": attestation,
            }),
        ),
    };
    let (status, reply) = post_json(&authority, path, token, &serde_json::to_vec(&body)?).await?;
    let reply_text = String::from_utf8_lossy(&reply);
    if status.is_success() {
        say(format_args!("{reply_text}"));
        return Ok(ExitCode::SUCCESS);
    }
    let reason = serde_json::from_slice::<Value>(&reply)
        .ok()
        .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned));
    Ok(match reason {
        Some(reason) => refused(format_args!("HTTP {}: {reason}: {reply_text}", status.as_u16())),
        None => refused(format_args!("HTTP {}: {reply_text}", status.as_u16())),
    })
}

/// Whether the envelope's statement names the bundle's digest (read from
/// the payload as sent, not yet authenticated: a check of the files given,
/// not a verification).
fn names_bundle(envelope: &DsseEnvelope, bundle: &Bundle) -> Result<(), AttestError> {
    if Statement::parse(&envelope.payload)?.names_sha256(&bundle.digest()) {
        Ok(())
    } else {
        Err(AttestError::SubjectMismatch)
    }
}

/// A publisher's signing key from a PEM `PRIVATE KEY` (Ed25519, PKCS#8).
fn signer(path: &Path) -> anyhow::Result<Ed25519Signer> {
    let pem = read_pem(path)?;
    // The key id of each signature is derived from the public key by
    // `attest`; this one only names the signer while it loads.
    let placeholder = KeyId::new("publisher")?;
    Ed25519Signer::from_pkcs8_pem(placeholder, &pem)
        .map_err(|e| anyhow!("{}: not an Ed25519 PKCS#8 private key: {e}", path.display()))
}

/// Unix nanoseconds now (keys read from files are never retired, so the
/// instant only stands for "the time of submission").
fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A refused bundle: soma-capsule's reason and the member path it names.
fn bundle_refused(path: &Path, e: &BundleError) -> ExitCode {
    match e.path() {
        Some(at) => refused(format_args!(
            "{}: {} at {at}: {}",
            path.display(),
            e.reason(),
            chain(e)
        )),
        None => refused(format_args!("{}: {}: {}", path.display(), e.reason(), chain(e))),
    }
}

/// A refused attestation: soma-capsule's reason.
fn attestation_refused(path: &Path, e: &AttestError) -> ExitCode {
    refused(format_args!("{}: {}: {}", path.display(), e.reason(), chain(e)))
}

/// An error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A usage error (exit 64), with its causes on one line.
fn usage(e: anyhow::Error) -> ExitCode {
    config_error(format_args!("{e:#}"))
}
