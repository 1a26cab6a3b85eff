//! `soma ca issue`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use soma_ca::Authority;
use soma_identity::SpiffeId;

/// Issues an SVID for `spiffe_id` from the authority under `data_dir`.
pub fn issue(data_dir: &Path, spiffe_id: &str, out: &Path, ttl: Duration) -> anyhow::Result<ExitCode> {
    let id = match SpiffeId::parse(spiffe_id) {
        Ok(id) => id,
        Err(e) => {
            return Ok(crate::config_error(format_args!(
                "--spiffe-id {spiffe_id:?}: {e}"
            )));
        }
    };
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
