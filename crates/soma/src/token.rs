//! `soma token`: a JWT from the development issuer `soma-dev`, whose HS256
//! key `soma up` keeps as a JSON Web Key in `DIR/secrets/dev-issuer.jwk`;
//! with `--operator`, from the development operator issuer
//! `soma-dev-operator` (key `DIR/secrets/dev-operator-issuer.jwk`), with the
//! claim `"operator": true`.
//!
//! The token is an ordinary RFC 7519 JWT: any JWT library holding that JWK
//! mints the same kind of token. Its lifetime is at most the gateway's
//! default `max_lifetime` (24 h): a longer one would only be refused.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use rand::RngCore as _;
use serde_json::json;

use soma_gateway::config::{
    DEV_AUDIENCE, DEV_ISSUER, DEV_ISSUER_JWK_FILE, DEV_OPERATOR_ISSUER, DEV_OPERATOR_ISSUER_JWK_FILE,
};

pub struct TokenArgs {
    pub data_dir: PathBuf,
    pub tenant: String,
    pub region: String,
    pub subject: Option<String>,
    pub scope: String,
    pub mfa: bool,
    pub ttl: Duration,
    /// Mint from the operator issuer, with `"operator": true`.
    pub operator: bool,
}

/// The path of the development issuer's JWK under a data dir.
pub fn dev_issuer_jwk(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets").join(DEV_ISSUER_JWK_FILE)
}

/// The path of the development operator issuer's JWK under a data dir.
pub fn dev_operator_issuer_jwk(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets").join(DEV_OPERATOR_ISSUER_JWK_FILE)
}

pub fn run(args: &TokenArgs) -> anyhow::Result<ExitCode> {
    // The gateway refuses a token whose lifetime exceeds its max_lifetime
    // (24 h unless configured): minting one would only hand out a 401.
    let max = soma_auth::DEFAULT_MAX_LIFETIME;
    if args.ttl.is_zero() || args.ttl > max {
        return Ok(crate::config_error(format!(
            "--ttl {} is not between 1s and {} (the gateway's default jwt max_lifetime refuses longer tokens)",
            humantime::format_duration(args.ttl),
            humantime::format_duration(max)
        )));
    }
    if args.tenant.is_empty() || args.region.is_empty() {
        return Ok(crate::config_error("--tenant and --region must not be empty"));
    }
    let token = mint(args)?;
    #[expect(clippy::print_stdout, reason = "the token is the command's output")]
    {
        println!("{token}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A token as `soma token` prints it (the arguments already checked).
pub fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    let (path, issuer) = if args.operator {
        (dev_operator_issuer_jwk(&args.data_dir), DEV_OPERATOR_ISSUER)
    } else {
        (dev_issuer_jwk(&args.data_dir), DEV_ISSUER)
    };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (run `soma up` on this data dir first)",
            path.display()
        )
    })?;
    let jwk: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let (Some("oct"), Some(kid), Some(k)) = (
        jwk.get("kty").and_then(|v| v.as_str()),
        jwk.get("kid").and_then(|v| v.as_str()),
        jwk.get("k").and_then(|v| v.as_str()),
    ) else {
        bail!("{} is not an oct JWK with kid and k", path.display());
    };
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(k)
        .with_context(|| format!("{}: k is not base64url", path.display()))?;

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut jti = [0u8; 16];
    rand::rng().fill_bytes(&mut jti);
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let amr = if args.mfa {
        json!(["pwd", "otp"])
    } else {
        json!(["pwd"])
    };
    let mut claims = json!({
        "iss": issuer,
        "aud": DEV_AUDIENCE,
        "sub": args.subject.clone().unwrap_or_else(|| format!("dev-user@{}", args.tenant)),
        "tenant": args.tenant,
        "region": args.region,
        "scope": args.scope,
        "amr": amr,
        "auth_time": now,
        "iat": now,
        "nbf": now,
        "exp": now + args.ttl.as_secs(),
        "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    });
    if args.operator {
        claims["operator"] = json!(true);
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let tag = ring::hmac::sign(&key, signing_input.as_bytes());
    Ok(format!("{signing_input}.{}", b64.encode(tag.as_ref())))
}
