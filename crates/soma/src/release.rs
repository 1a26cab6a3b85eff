//! `soma release` and `soma canon`: publishers' and operators' side of the
//! tool registry.
//!
//! - `soma release keygen --out DIR`: a publisher's Ed25519 key pair,
//!   `DIR/publisher.key` (PKCS#8 PEM, mode 0600) and `DIR/publisher.pub`
//!   (SubjectPublicKeyInfo PEM); prints the key id.
//! - `soma release sign --key KEY --manifest FILE --module MODULE`: fills in
//!   the module's `module_sha256` and `module_size` (or checks them when
//!   present), canonicalizes the manifest (RFC 8785) and prints the DSSE
//!   envelope that signs it (`--out FILE` writes it instead).
//! - `soma release verify --envelope FILE --module MODULE --public-key PEM`:
//!   checks an envelope offline as the registry does at publish time.
//! - `soma release publish --envelope FILE --module MODULE --token JWT`:
//!   `POST /v1/tools/{tool}/releases` through the JSON edge (the token needs
//!   `tools:publish` and a second factor).
//! - `soma release publisher add | list | retire --data-dir DIR`: the
//!   registered publisher keys, in the registry's database (operators).
//! - `soma release key list | add | promote | retire --data-dir DIR`: the
//!   registry's HMAC keyring (`DIR/secrets/tool-registry-keys.json`).
//! - `soma canon FILE`: the RFC 8785 bytes of a JSON file.
//!
//! A MODULE is a WebAssembly binary, or WebAssembly text (compiled with
//! `wat`, so the bytes signed and the bytes published are the same binary).
//! Exit codes: 0 done (or valid); 1 refused (or invalid), with the reason;
//! 2 unusable input (a file that cannot be read or parsed).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use base64::Engine as _;
use clap::Subcommand;
use serde_json::Value;
use soma_release::{Manifest, PublisherKey};
use soma_sign::{DsseEnvelope, Ed25519Signer, HmacKeyring, KeyId, jcs};
use soma_store::{Database, StoreSettings};
use soma_tool_registry::{Actor, Registry, RegistryConfig};

use crate::cli::{MAX_TEXT_FILE, edge_authority, post_json, read_limited, read_pem, refused, say};
use crate::up::{pem_block, registry_keys_path, set_mode, write_atomically};

/// Exit status of unusable input.
const EXIT_UNUSABLE: u8 = 2;
/// Largest module file read (far above the registry's default limit, so the
/// registry, not this tool, says what is too large).
const MAX_MODULE_FILE: u64 = 64 * 1024 * 1024;

/// `soma release …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ReleaseCommand {
    /// Create a publisher's Ed25519 key pair.
    Keygen {
        /// Directory for publisher.key and publisher.pub.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a manifest for a module: prints the DSSE envelope.
    Sign {
        /// The publisher's private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// The manifest (JSON); module_sha256 and module_size are filled in.
        #[arg(long)]
        manifest: PathBuf,
        /// The module (WebAssembly binary or text).
        #[arg(long)]
        module: PathBuf,
        /// Write the envelope here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify an envelope and its module offline, against a publisher key.
    Verify {
        /// The DSSE envelope (JSON).
        #[arg(long)]
        envelope: PathBuf,
        /// The module (WebAssembly binary or text).
        #[arg(long)]
        module: PathBuf,
        /// The publisher's public key (SubjectPublicKeyInfo PEM).
        #[arg(long)]
        public_key: PathBuf,
    },
    /// Publish through the JSON edge.
    Publish {
        /// The DSSE envelope (JSON).
        #[arg(long)]
        envelope: PathBuf,
        /// The module (WebAssembly binary or text).
        #[arg(long)]
        module: PathBuf,
        /// A token with tools:publish and a second factor (`soma token --mfa`).
        #[arg(long)]
        token: String,
        /// The edge, e.g. http://127.0.0.1:8080 (default: `edge` in DIR/endpoints.json).
        #[arg(long)]
        edge: Option<String>,
        /// The data dir of `soma up`, for its endpoints.json.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Registered publisher keys (operators).
    Publisher {
        #[command(subcommand)]
        command: PublisherCommand,
    },
    /// The registry's HMAC keyring (operators).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

/// `soma release publisher …`.
#[derive(Debug, Subcommand)]
pub(crate) enum PublisherCommand {
    /// Register a publisher key.
    Add {
        #[command(flatten)]
        store: StoreArgs,
        /// The publisher's name.
        #[arg(long)]
        name: String,
        /// The publisher's public key (SubjectPublicKeyInfo PEM file).
        #[arg(long)]
        public_key: PathBuf,
    },
    /// List the publisher keys, retired ones included.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Retire a publisher key, for good.
    Retire {
        #[command(flatten)]
        store: StoreArgs,
        /// The key id.
        #[arg(long)]
        key_id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

/// Where the registry's database and keyring are.
#[derive(Debug, clap::Args)]
pub(crate) struct StoreArgs {
    /// The data dir of `soma up` (DIR/db, DIR/secrets).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// PostgreSQL URL of the registry's database; overrides DATABASE_URL.
    #[arg(long)]
    database_url: Option<String>,
}

/// `soma release key …`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// List the keys: id, status, primary.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Add a new random key (enabled, not primary).
    Add {
        #[command(flatten)]
        store: StoreArgs,
        /// The new key's id.
        #[arg(long)]
        id: String,
    },
    /// Make an enabled key the primary (new seals use it; old ones keep verifying).
    Promote {
        #[command(flatten)]
        store: StoreArgs,
        /// The key id.
        #[arg(long)]
        id: String,
    },
    /// Retire a key that is not primary: what it sealed no longer verifies.
    Retire {
        #[command(flatten)]
        store: StoreArgs,
        /// The key id.
        #[arg(long)]
        id: String,
    },
}

/// Runs `soma release …`.
pub(crate) async fn run(command: ReleaseCommand) -> anyhow::Result<ExitCode> {
    match command {
        ReleaseCommand::Keygen { out } => keygen(&out),
        ReleaseCommand::Sign {
            key,
            manifest,
            module,
            out,
        } => sign(&key, &manifest, &module, out.as_deref()),
        ReleaseCommand::Verify {
            envelope,
            module,
            public_key,
        } => verify(&envelope, &module, &public_key),
        ReleaseCommand::Publish {
            envelope,
            module,
            token,
            edge,
            data_dir,
        } => publish(&envelope, &module, &token, edge, &data_dir).await,
        ReleaseCommand::Publisher { command } => publisher(command).await,
        ReleaseCommand::Key { command } => key(command).await,
    }
}

/// `soma canon FILE`: the RFC 8785 form of FILE on standard output.
pub(crate) fn canon(file: &Path) -> anyhow::Result<ExitCode> {
    let text = match read_limited(file, MAX_TEXT_FILE) {
        Ok(t) => t,
        Err(e) => return Ok(unusable(e)),
    };
    match jcs::canonicalize_json(&text) {
        Ok(canonical) => {
            std::io::stdout().write_all(&canonical)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(unusable(anyhow!("{}: {e}", file.display()))),
    }
}

fn keygen(out: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let private = out.join("publisher.key");
    if private.exists() {
        return Ok(refused(format_args!(
            "{} exists; a key is never overwritten",
            private.display()
        )));
    }
    let (signer, pkcs8) = Ed25519Signer::generate(KeyId::new("publisher")?)?;
    write_atomically(&private, pem_block("PRIVATE KEY", &pkcs8).as_bytes())?;
    set_mode(&private, 0o600)?;
    write_atomically(&out.join("publisher.pub"), signer.public_key_pem().as_bytes())?;
    say(format_args!(
        "{}",
        soma_release::publisher_key_id(&signer.public_key())
    ));
    Ok(ExitCode::SUCCESS)
}

fn sign(key: &Path, manifest: &Path, module: &Path, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (pem, text, module) = match (|| -> anyhow::Result<_> {
        Ok((
            read_pem(key)?,
            read_limited(manifest, MAX_TEXT_FILE)?,
            read_module(module)?,
        ))
    })() {
        Ok(inputs) => inputs,
        Err(e) => return Ok(unusable(e)),
    };
    let mut value = match jcs::parse_strict(&text) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Ok(unusable(anyhow!("{}: not a JSON object", manifest.display()))),
        Err(e) => return Ok(unusable(anyhow!("{}: {e}", manifest.display()))),
    };
    let digest = soma_sign::hex::encode(&soma_sign::sha256(&module));
    let size = module.len() as u64;
    // Filled in, or checked: a manifest that names another module is refused.
    for (member, expected) in [
        ("module_sha256", Value::from(digest)),
        ("module_size", Value::from(size)),
    ] {
        match value.get(member) {
            None => {
                value.insert(member.to_owned(), expected);
            }
            Some(present) if *present == expected => {}
            Some(present) => {
                return Ok(refused(format_args!(
                    "{}: {member} is {present}, but the module's is {expected}",
                    manifest.display()
                )));
            }
        }
    }
    let manifest = match Manifest::from_value(&Value::Object(value)) {
        Ok(m) => m,
        Err(e) => return Ok(refused(format_args!("manifest: {} ({e})", e.reason()))),
    };
    let envelope = match soma_release::sign_manifest(&manifest, &pem) {
        Ok(e) => e,
        Err(e) => return Ok(unusable(anyhow!("{}: {e}", key.display()))),
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

fn verify(envelope: &Path, module: &Path, public_key: &Path) -> anyhow::Result<ExitCode> {
    let (envelope, module, pem) = match (|| -> anyhow::Result<_> {
        let envelope = DsseEnvelope::from_json(&read_limited(envelope, MAX_TEXT_FILE)?)
            .map_err(|e| anyhow!("{}: {e}", envelope.display()))?;
        Ok((envelope, read_module(module)?, read_pem(public_key)?))
    })() {
        Ok(inputs) => inputs,
        Err(e) => return Ok(unusable(e)),
    };
    let publisher = match PublisherKey::from_pem(&pem) {
        Ok(k) => k,
        Err(e) => return Ok(unusable(anyhow!("{}: {e}", public_key.display()))),
    };
    let now = i64::MAX - 1;
    let manifest = match soma_release::verify_publication(&envelope, &publisher, now) {
        Ok(m) => m,
        Err(e) => return Ok(refused(format_args!("invalid: {} ({e})", e.reason()))),
    };
    if let Err(e) = manifest.check_module(&module) {
        return Ok(refused(format_args!("invalid: {} ({e})", e.reason())));
    }
    say(format_args!(
        "valid: {}@{} signed by {}",
        manifest.tool(),
        manifest.version().as_str(),
        publisher.key_id
    ));
    Ok(ExitCode::SUCCESS)
}

async fn publish(
    envelope_path: &Path,
    module: &Path,
    token: &str,
    edge: Option<String>,
    data_dir: &Path,
) -> anyhow::Result<ExitCode> {
    let (envelope, module) = match (|| -> anyhow::Result<_> {
        let envelope = DsseEnvelope::from_json(&read_limited(envelope_path, MAX_TEXT_FILE)?)
            .map_err(|e| anyhow!("{}: {e}", envelope_path.display()))?;
        Ok((envelope, read_module(module)?))
    })() {
        Ok(inputs) => inputs,
        Err(e) => return Ok(unusable(e)),
    };
    let tool = match jcs::parse_strict(&envelope.payload) {
        Ok(Value::Object(m)) => m.get("tool").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    let Some(tool) = tool else {
        return Ok(unusable(anyhow!(
            "{}: the payload is not a manifest with a tool",
            envelope_path.display()
        )));
    };
    let edge = match edge {
        Some(e) => e,
        None => {
            let endpoints = data_dir.join("endpoints.json");
            let text =
                read_limited(&endpoints, MAX_TEXT_FILE).map_err(|e| anyhow!("{e} (or pass --edge)"))?;
            let value: Value = serde_json::from_slice(&text)?;
            value
                .get("edge")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("{} names no edge (pass --edge)", endpoints.display()))?
        }
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = serde_json::json!({
        "envelope": serde_json::from_slice::<Value>(&envelope.to_json())?,
        "module": b64.encode(&module),
    });
    let (status, reply) = post_json(
        &edge_authority(&edge)?,
        &format!("/v1/tools/{tool}/releases"),
        token,
        &serde_json::to_vec(&body)?,
    )
    .await?;
    let reply_text = String::from_utf8_lossy(&reply);
    if status.is_success() {
        say(format_args!("{reply_text}"));
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(refused(format_args!("HTTP {}: {reply_text}", status.as_u16())))
    }
}

async fn publisher(command: PublisherCommand) -> anyhow::Result<ExitCode> {
    let store = match &command {
        PublisherCommand::Add { store, .. }
        | PublisherCommand::List { store }
        | PublisherCommand::Retire { store, .. } => store,
    };
    let registry = match open_registry(store).await {
        Ok(r) => r,
        Err(e) => return Ok(unusable(e)),
    };
    let actor = cli_actor();
    match command {
        PublisherCommand::Add { name, public_key, .. } => {
            let pem = match read_pem(&public_key) {
                Ok(pem) => pem,
                Err(e) => return Ok(unusable(e)),
            };
            match registry.add_publisher_key(&actor, &name, &pem).await {
                Ok(key) => {
                    say(format_args!("{} {}", key.key_id, key.name));
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(refused(format_args!("{}: {e}", e.reason()))),
            }
        }
        PublisherCommand::List { .. } => match registry.publisher_keys().await {
            Ok(keys) => {
                for key in keys {
                    let state = if key.retired_at.is_some() {
                        "retired"
                    } else {
                        "active"
                    };
                    say(format_args!("{} {} {state}", key.key_id, key.name));
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Ok(refused(format_args!("{}: {e}", e.reason()))),
        },
        PublisherCommand::Retire { key_id, reason, .. } => {
            match registry.retire_publisher_key(&actor, &key_id, &reason).await {
                Ok(key) => {
                    say(format_args!("{} retired", key.key_id));
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(refused(format_args!("{}: {e}", e.reason()))),
            }
        }
    }
}

/// The registry over a data dir's database and keyring, migrated.
async fn open_registry(store: &StoreArgs) -> anyhow::Result<Registry> {
    let keys_path = registry_keys_path(&store.data_dir);
    let config = RegistryConfig::from_env(|var| {
        (var == soma_tool_registry::config::KEYS_FILE_ENV).then(|| keys_path.display().to_string())
    })
    .map_err(|e| anyhow!("{e}"))?;
    let database_url = store
        .database_url
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok().filter(|v| !v.is_empty()));
    let settings = StoreSettings {
        data_dir: store.data_dir.join("db"),
        database_url,
    };
    let db = Database::connect(&settings, "tool-registry")
        .await
        .context("opening the registry's database")?;
    db.migrate(&soma_tool_registry::MIGRATIONS).await?;
    let sandbox = soma_sandbox::SandboxConfig {
        max_instances: 1,
        ..soma_sandbox::SandboxConfig::default()
    };
    Registry::new(db, config, sandbox).map_err(|e| anyhow!("{e}"))
}

/// Changes the registry's keyring file. The change is checked on the
/// keyring in memory first, recorded as an audit event (through the
/// registry's outbox, MACed with the keyring still in force), then written;
/// the registry uses it from its next start.
async fn key(command: KeyCommand) -> anyhow::Result<ExitCode> {
    let (store, id, action) = match &command {
        KeyCommand::List { store } => (store, None, "list"),
        KeyCommand::Add { store, id } => (store, Some(id.as_str()), "add"),
        KeyCommand::Promote { store, id } => (store, Some(id.as_str()), "promote"),
        KeyCommand::Retire { store, id } => (store, Some(id.as_str()), "retire"),
    };
    let path = registry_keys_path(&store.data_dir);
    let mut keyring = match HmacKeyring::load(&path) {
        Ok(k) => k,
        Err(e) => return Ok(unusable(anyhow!("{}: {e}", path.display()))),
    };
    let Some(id) = id else {
        for (id, status, primary) in keyring.keys() {
            let status = format!("{status:?}").to_lowercase();
            say(format_args!(
                "{id} {status}{}",
                if primary { " primary" } else { "" }
            ));
        }
        return Ok(ExitCode::SUCCESS);
    };
    let changed = match action {
        "add" => keyring.add_generated(id),
        "promote" => keyring.promote(id),
        _ => keyring.retire(id),
    };
    if let Err(e) = changed {
        return Ok(refused(format_args!("{}: {e}", path.display())));
    }
    let registry = match open_registry(store).await {
        Ok(r) => r,
        Err(e) => return Ok(unusable(e)),
    };
    if let Err(e) = registry.record_key_change(&cli_actor(), action, id).await {
        return Ok(refused(format_args!("recording the change: {}: {e}", e.reason())));
    }
    write_atomically(&path, &keyring.to_json())?;
    set_mode(&path, 0o600)?;
    say(format_args!(
        "{}: primary {} (restart the tool registry to use the change)",
        path.display(),
        keyring.primary()
    ));
    Ok(ExitCode::SUCCESS)
}

/// The operator running the CLI, as audit events name them.
fn cli_actor() -> Actor {
    Actor::service(format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
    ))
}

/// A module file: WebAssembly binary as is, WebAssembly text compiled.
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = read_limited(path, MAX_MODULE_FILE)?;
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes);
    }
    wat::parse_bytes(&bytes)
        .map(std::borrow::Cow::into_owned)
        .map_err(|e| {
            anyhow!(
                "{}: neither a WebAssembly binary nor valid WebAssembly text: {e}",
                path.display()
            )
        })
}

#[expect(clippy::print_stderr, reason = "the command's one-line reason")]
fn unusable(e: anyhow::Error) -> ExitCode {
    eprintln!("soma: {e:#}");
    ExitCode::from(EXIT_UNUSABLE)
}
