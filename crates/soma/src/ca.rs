//! `soma ca init`, `soma ca issue`, `soma ca prepare | activate | show` and
//! `soma ca entry create | list | delete`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use soma_ca::{Authority, AuthorityOptions, CaError, Selector};
use soma_identity::{SpiffeId, TrustDomain};

/// Creates the authority under `data_dir` (or reports the one already there).
pub fn init(data_dir: &Path, trust_domain: &str) -> anyhow::Result<ExitCode> {
    let td = match TrustDomain::parse(trust_domain) {
        Ok(td) => td,
        Err(e) => {
            return Ok(crate::config_error(format_args!(
                "--trust-domain {trust_domain:?}: {e}"
            )));
        }
    };
    let existed = has_authority(data_dir);
    Authority::open_or_create(data_dir, &td)
        .with_context(|| format!("opening the authority under {}", data_dir.display()))?;
    #[expect(clippy::print_stdout, reason = "the command's output")]
    {
        let what = if existed {
            "kept the existing"
        } else {
            "created a new"
        };
        println!(
            "{what} authority for {td} under {}",
            data_dir.join("ca").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Issues an SVID for `spiffe_id` from the authority under `data_dir`,
/// which must exist: a new root made here would sign certificates that no
/// running service trusts ("unknown authority").
pub fn issue(data_dir: &Path, spiffe_id: &str, out: &Path, ttl: Duration) -> anyhow::Result<ExitCode> {
    let id = match SpiffeId::parse(spiffe_id) {
        Ok(id) => id,
        Err(e) => {
            return Ok(crate::config_error(format_args!(
                "--spiffe-id {spiffe_id:?}: {e}"
            )));
        }
    };
    if !has_authority(data_dir) {
        return Ok(no_authority(data_dir));
    }
    let authority = Authority::open_or_create(data_dir, id.trust_domain())
        .with_context(|| format!("opening the authority under {}", data_dir.display()))?;
    let svid = authority
        .issue_to_dir(&id, ttl, out)
        .with_context(|| format!("issuing {id}"))?;
    let not_after = humantime::format_rfc3339_seconds(svid.not_after);
    #[expect(clippy::print_stdout, reason = "the command's output")]
    {
        println!("issued {id} (valid until {not_after})");
        for f in ["svid.pem", "key.pem", "bundle.pem"] {
            println!("  {}", out.join(f).display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A step of the authority's rotation, taken by an operator ahead of the
/// schedule a running `soma up` keeps (which picks the change up within a
/// second and sends the new bundles to every workload).
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// Prepare the next root and JWT key, with this lifetime.
    Prepare(Duration),
    /// Activate the prepared one.
    Activate,
    /// Only list the slots.
    Show,
}

/// Runs `soma ca prepare`, `soma ca activate` or `soma ca show`: the step,
/// then every slot, one line each (`STATE SERIAL not_after=… jwt_kid=…`).
#[expect(clippy::print_stdout, reason = "the command's output")]
pub fn rotate(data_dir: &Path, trust_domain: &str, step: Step) -> anyhow::Result<ExitCode> {
    let mut authority = match existing(data_dir, trust_domain)? {
        Ok(authority) => authority,
        Err(refused) => return Ok(refused),
    };
    if let Step::Prepare(ca_ttl) = step {
        authority = match authority.with_options(AuthorityOptions { ca_ttl }) {
            Ok(authority) => authority,
            Err(e) => return Ok(crate::config_error(format_args!("--ca-ttl: {e}"))),
        };
    }
    let outcome = match step {
        Step::Prepare(_) => Some(("prepared", authority.prepare())),
        Step::Activate => Some(("activated", authority.activate())),
        Step::Show => None,
    };
    if let Some((verb, result)) = outcome {
        match result {
            Ok(slot) => println!("{verb} {}", slot.serial),
            Err(e @ (CaError::NothingPrepared { .. } | CaError::AlreadyPrepared { .. })) => {
                return Ok(crate::cli::refused(format_args!("{e}")));
            }
            Err(e) => return Err(e).context("rotating the authority"),
        }
    }
    for slot in authority.slots() {
        println!(
            "{} {} not_after={} jwt_kid={}",
            slot.state,
            slot.serial,
            humantime::format_rfc3339_seconds(slot.not_after),
            slot.jwt_kid
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The authority under `data_dir` for the trust domain named `trust_domain`,
/// which must exist; `Err` is the refusal to exit with (a bad trust domain,
/// or no authority there: exit 64, one line).
fn existing(data_dir: &Path, trust_domain: &str) -> anyhow::Result<Result<Authority, ExitCode>> {
    let td = match TrustDomain::parse(trust_domain) {
        Ok(td) => td,
        Err(e) => {
            return Ok(Err(crate::config_error(format_args!(
                "--trust-domain {trust_domain:?}: {e}"
            ))));
        }
    };
    if !has_authority(data_dir) {
        return Ok(Err(no_authority(data_dir)));
    }
    Authority::open_existing(data_dir, &td)
        .map(Ok)
        .with_context(|| format!("opening the authority under {}", data_dir.display()))
}

/// Whether `data_dir` holds an authority's root certificate (`DIR/ca/ca.pem`,
/// where [`Authority::open_or_create`] keeps it).
fn has_authority(data_dir: &Path) -> bool {
    data_dir.join("ca").join("ca.pem").is_file()
}

/// The refusal of a command that needs an existing authority: one line
/// naming the directory and how to make one, exit 64.
fn no_authority(data_dir: &Path) -> ExitCode {
    crate::config_error(format_args!(
        "no authority under {} (no ca/ca.pem): start `soma up --data-dir {0}` or run `soma ca init --data-dir {0}`",
        data_dir.display()
    ))
}

/// `soma ca entry`: registration entries (unix selectors, like SPIRE's unix
/// workload attestor), kept in the data dir and read by a running authority
/// at every attestation.
#[derive(Debug, clap::Subcommand)]
pub enum EntryCommand {
    /// Grant SPIFFE_ID to every local process that has all the selectors.
    Create {
        /// Data directory of `soma up` (holds the authority).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Trust domain of the authority.
        #[arg(long, default_value = "somastack.local")]
        trust_domain: String,
        /// The identity granted, e.g. spiffe://somastack.local/svc/batch.
        #[arg(long)]
        spiffe_id: String,
        /// unix:uid:N, unix:gid:N, unix:path:/abs/binary or unix:sha256:HEX;
        /// repeat it: a process must have all of them.
        #[arg(long = "selector", required = true)]
        selectors: Vec<String>,
    },
    /// Print every entry: id, SPIFFE ID, selectors.
    List {
        /// Data directory of `soma up` (holds the authority).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Trust domain of the authority.
        #[arg(long, default_value = "somastack.local")]
        trust_domain: String,
    },
    /// Delete the entry ENTRY_ID.
    Delete {
        /// Data directory of `soma up` (holds the authority).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Trust domain of the authority.
        #[arg(long, default_value = "somastack.local")]
        trust_domain: String,
        /// The id `entry create` printed.
        entry_id: String,
    },
}

/// Runs one `soma ca entry` command.
#[expect(clippy::print_stdout, reason = "the command's output")]
pub fn entry(command: EntryCommand) -> anyhow::Result<ExitCode> {
    let (data_dir, trust_domain) = match &command {
        EntryCommand::Create {
            data_dir,
            trust_domain,
            ..
        }
        | EntryCommand::List {
            data_dir,
            trust_domain,
        }
        | EntryCommand::Delete {
            data_dir,
            trust_domain,
            ..
        } => (data_dir, trust_domain),
    };
    let authority = match existing(data_dir, trust_domain)? {
        Ok(authority) => authority,
        Err(refused) => return Ok(refused),
    };
    let store = authority.entries();
    match command {
        EntryCommand::Create {
            spiffe_id, selectors, ..
        } => {
            let id = match SpiffeId::parse(&spiffe_id) {
                Ok(id) => id,
                Err(e) => {
                    return Ok(crate::config_error(format_args!(
                        "--spiffe-id {spiffe_id:?}: {e}"
                    )));
                }
            };
            let mut parsed = Vec::with_capacity(selectors.len());
            for selector in &selectors {
                match selector.parse::<Selector>() {
                    Ok(s) => parsed.push(s),
                    Err(e) => return Ok(crate::config_error(format_args!("--selector: {e}"))),
                }
            }
            let entry = store.create(id, parsed).context("creating the entry")?;
            println!("{}", line(&entry));
        }
        EntryCommand::List { .. } => {
            for entry in store.list().context("reading the entries")? {
                println!("{}", line(&entry));
            }
        }
        EntryCommand::Delete { entry_id, .. } => {
            if !store.delete(&entry_id).context("deleting the entry")? {
                anyhow::bail!("no entry {entry_id} in {}", store.path().display());
            }
            println!("deleted {entry_id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ENTRY_ID SPIFFE_ID SELECTOR...`
fn line(entry: &soma_ca::Entry) -> String {
    let mut out = format!("{} {}", entry.entry_id, entry.spiffe_id);
    for selector in &entry.selectors {
        out.push(' ');
        out.push_str(&selector.to_string());
    }
    out
}
