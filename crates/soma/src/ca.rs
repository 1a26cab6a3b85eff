//! `soma ca init` and `soma ca issue`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use soma_ca::Authority;
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
