//! The drill's checks once the stack has recovered, beside RPO:
//!
//! - **ledger**: the checkpoint taken *before* the kill (fetched and kept in
//!   `DIR/drills/<drill>/checkpoint-before.note`) is extended by the one
//!   after recovery — `soma verify ledger --consistency` passes between
//!   them, with the proof Analytics gives (`consistency.json`), under the
//!   key of `DIR/public-keys/` — and the ledger is contiguous: every
//!   acknowledged event has its own leaf, each proven into the root of the
//!   checkpoint after recovery, and each event acknowledged before the first
//!   checkpoint was fetched lies inside the tree it signed;
//! - **services**: each service the plan names answers `/readyz` on its
//!   admin listener (`endpoints.json`).
//!
//! A check that does not hold is an `Err` with its reason, which fails the
//! drill.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;
use soma_mesh::ServiceKind;

use crate::cli::request;

/// How long a check retries an answer that is not yet 200 (a service
/// still reconnecting after the failover).
const SETTLE: Duration = Duration::from_secs(15);

/// The checkpoint kept before the kill.
pub struct Before {
    /// Where the drill keeps its ledger files.
    pub dir: PathBuf,
    /// `checkpoint-before.note`.
    pub note: PathBuf,
    pub tree_size: u64,
    /// The key that signed it (`DIR/public-keys/<key_id>.pem` verifies it).
    pub key_id: String,
    /// The events acknowledged before it was fetched.
    pub acked: BTreeSet<String>,
}

/// Fetches the ledger's latest checkpoint and keeps it in
/// `dir/checkpoint-before.note`; `acked`: the events acknowledged before
/// this call.
pub async fn checkpoint_before(
    authority: &http::uri::Authority,
    token: &str,
    dir: &Path,
    acked: BTreeSet<String>,
) -> anyhow::Result<Before> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let checkpoint = get_json(authority, token, "/v1/ledger/checkpoint", Duration::ZERO).await?;
    let note = dir.join("checkpoint-before.note");
    write_note(&note, &checkpoint)?;
    Ok(Before {
        dir: dir.to_owned(),
        note,
        tree_size: number(&checkpoint["treeSize"]),
        key_id: checkpoint["keyId"]
            .as_str()
            .ok_or_else(|| anyhow!("the checkpoint names no key"))?
            .to_owned(),
        acked,
    })
}

/// The ledger check (see the module's doc): `Ok` what held, `Err` why not.
pub async fn ledger(
    authority: &http::uri::Authority,
    token: &str,
    data_dir: &Path,
    before: &Before,
    acked: &BTreeSet<String>,
) -> Result<String, String> {
    let public_key = data_dir
        .join("public-keys")
        .join(format!("{}.pem", before.key_id));
    let checkpoint = get_json(authority, token, "/v1/ledger/checkpoint", SETTLE)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let after = before.dir.join("checkpoint-after.note");
    write_note(&after, &checkpoint).map_err(|e| format!("{e:#}"))?;
    let size = number(&checkpoint["treeSize"]);
    if size < before.tree_size {
        return Err(format!(
            "the ledger shrank from {} leaves before the kill to {size}",
            before.tree_size
        ));
    }
    let mut extended = format!("tree size {size} (nothing before the kill)");
    if before.tree_size > 0 {
        let path = format!(
            "/v1/ledger/consistency-proof?fromSize={}&toSize={size}",
            before.tree_size
        );
        let proof = get_json(authority, token, &path, SETTLE)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let proof_file = before.dir.join("consistency.json");
        std::fs::write(&proof_file, proof.to_string())
            .map_err(|e| format!("writing {}: {e}", proof_file.display()))?;
        extended = crate::verify::ledger_consistency(&after, &public_key, &before.note, &proof_file)
            .map_err(|why| format!("soma verify ledger: {why}"))?;
    }
    let current = crate::verify::verified_checkpoint(&after, &public_key)?;

    // Contiguous: one leaf per acknowledged event, each proven into the
    // root; those acknowledged before the first checkpoint inside it.
    let mut leaves: BTreeMap<u64, &str> = BTreeMap::new();
    for id in acked {
        let path = format!("/v1/ledger/inclusion-proof?eventId={id}&treeSize={size}");
        // One request per event: paced by the edge's per-tenant rate
        // limit, whose 429 is waited out.
        let deadline = Instant::now() + SETTLE;
        let (status, body) = loop {
            let answer = request(http::Method::GET, authority, &path, Some(token), None)
                .await
                .map_err(|e| format!("event {id}: {e:#}"))?;
            if answer.0 != http::StatusCode::TOO_MANY_REQUESTS || Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        if status != http::StatusCode::OK {
            return Err(format!(
                "event {id} has no leaf in the ledger of size {size}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let text = String::from_utf8_lossy(&body);
        let index =
            crate::verify::inclusion_in(&text, &current).map_err(|why| format!("event {id}: {why}"))?;
        if let Some(other) = leaves.insert(index, id) {
            return Err(format!("events {other} and {id} share leaf {index}"));
        }
        if before.acked.contains(id) && index >= before.tree_size {
            return Err(format!(
                "event {id}, acknowledged before the checkpoint of size {} was taken, is at leaf {index}",
                before.tree_size
            ));
        }
    }
    Ok(format!(
        "{extended}; {} acknowledged events at {} distinct leaves, each proven into its root",
        acked.len(),
        leaves.len()
    ))
}

/// The services check: each of `services` answers `/readyz` with 200 on
/// its admin listener (within [`SETTLE`]). A service with several
/// instances — Analytics with a standby (`soma up --analytics-standby`) —
/// is ready when one of them is: the standby answers 503 `standby` by
/// design while the other holds the ledger writer's lease.
pub async fn services(endpoints: &Value, services: &[ServiceKind]) -> Result<String, String> {
    for kind in services {
        let mut instances = vec![kind.name()];
        if *kind == ServiceKind::Analytics && endpoints["admin"][crate::up::ANALYTICS_STANDBY].is_string() {
            instances.push(crate::up::ANALYTICS_STANDBY);
        }
        let mut admins = Vec::new();
        for name in instances {
            let admin = endpoints["admin"][name]
                .as_str()
                .ok_or_else(|| format!("endpoints.json names no admin listener for {name}"))?;
            let authority: http::uri::Authority = admin
                .parse()
                .map_err(|_| format!("{name}: admin address {admin:?} is not host:port"))?;
            admins.push((name, admin, authority));
        }
        let deadline = Instant::now() + SETTLE;
        'ready: loop {
            let mut whys = Vec::new();
            for (name, admin, authority) in &admins {
                let answer = tokio::time::timeout(
                    Duration::from_secs(2),
                    request(http::Method::GET, authority, "/readyz", None, None),
                )
                .await;
                let why = match answer {
                    Ok(Ok((status, _))) if status == http::StatusCode::OK => break 'ready,
                    Ok(Ok((status, body))) => format!("{status} {}", String::from_utf8_lossy(&body).trim()),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(_) => "no answer within 2s".to_owned(),
                };
                whys.push(format!("{name}: http://{admin}/readyz: {why}"));
            }
            if Instant::now() > deadline {
                return Err(format!("{kind} is not ready ({})", whys.join("; ")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(format!(
        "ready: {}",
        services.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
    ))
}

/// How long a request refused by the edge's per-tenant rate limit (429)
/// is tried again: the drill's own load and checks share the tenant's
/// budget, and a refusal that says "later" is pacing, not a failure.
pub(crate) const RATE_LIMITED_WAIT: Duration = Duration::from_secs(10);

/// GETs `path` as JSON, retrying what is not a 200 for up to `settle`,
/// and a 429 of the edge's rate limit for up to [`RATE_LIMITED_WAIT`].
async fn get_json(
    authority: &http::uri::Authority,
    token: &str,
    path: &str,
    settle: Duration,
) -> anyhow::Result<Value> {
    let start = Instant::now();
    let deadline = start + settle;
    let rate_limited_deadline = start + settle.max(RATE_LIMITED_WAIT);
    loop {
        let answer = request(http::Method::GET, authority, path, Some(token), None).await;
        match answer {
            Ok((status, body)) if status == http::StatusCode::OK => {
                return serde_json::from_slice(&body).with_context(|| format!("GET {path}: not JSON"));
            }
            Ok((status, _))
                if status == http::StatusCode::TOO_MANY_REQUESTS
                    && Instant::now() <= rate_limited_deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok((status, body)) if Instant::now() > deadline => {
                bail!("GET {path}: {status} {}", String::from_utf8_lossy(&body))
            }
            Err(e) if Instant::now() > deadline => return Err(e.context(format!("GET {path}"))),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Writes a checkpoint's signed note, byte for byte.
fn write_note(path: &Path, checkpoint: &Value) -> anyhow::Result<()> {
    let note = checkpoint["note"]
        .as_str()
        .ok_or_else(|| anyhow!("the checkpoint carries no note"))?;
    std::fs::write(path, note).with_context(|| format!("writing {}", path.display()))
}

/// A proto3 JSON uint64: a decimal string (or a number); absent is 0.
fn number(value: &Value) -> u64 {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| value.as_u64())
        .unwrap_or(0)
}
