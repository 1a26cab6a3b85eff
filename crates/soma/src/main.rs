//! `soma`: the SomaStack operator binary.
//!
//! - `soma up`: the development authority and the four services on loopback.
//! - `soma serve <service>`: one service, identity from the Workload API
//!   (`SPIFFE_ENDPOINT_SOCKET`), the production path.
//! - `soma token`: a JWT from the development issuer, for the edge.
//! - `soma ca init`: a development authority under a data dir.
//! - `soma ca issue`: an SVID for an operator (grpcurl, scripts), from an
//!   existing authority.
//! - `soma verify export | store | ledger`: check an Analytics export's
//!   signature, sweep the Analytics store, check a ledger proof, offline.
//! - `soma release keygen | sign | verify | publish | publisher | key`: tool
//!   releases, publisher keys and the registry's keyring.
//! - `soma capsule digest | attest | verify | submit | import`: capsule
//!   bundles, their attestations, their submission and template import.
//! - `soma canon FILE`: the RFC 8785 canonical form of a JSON file.

mod ca;
mod capsule;
mod cli;
mod drill;
mod release;
mod serve;
mod token;
mod up;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use soma_mesh::ServiceKind;

/// Exit code of a bad configuration or usage (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// How long the runtime's leftover blocking work may delay the exit once the
/// command is done.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Parser)]
#[command(
    name = "soma",
    version,
    about = "SomaStack: a gRPC service mesh with SPIFFE mTLS"
)]
struct Cli {
    /// Log format on standard error: `text` (one line per event) or `json`
    /// (one JSON object per line, for log collectors). `soma up` passes it to
    /// the services it starts.
    #[arg(long, global = true, env = "SOMA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log events are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines (coloured only on a terminal).
    Text,
    /// One JSON object per line: timestamp, level, target, fields, spans.
    Json,
}

impl LogFormat {
    /// The value of `--log-format` / `SOMA_LOG_FORMAT`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the development authority and the four services on loopback.
    Up {
        /// Directory for the authority, the databases, keys and endpoints.json.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// SPIFFE trust domain of the development authority.
        #[arg(long, default_value = "somastack.local")]
        trust_domain: String,
        /// Lifetime of each service SVID (rotated at half-life).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        svid_ttl: Duration,
        /// Lifetime of each authority root and JWT key: the next is prepared
        /// (published) at half of it and activated at five sixths.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ca_ttl: Duration,
        /// Address of the HTTP/JSON edge.
        #[arg(long, default_value = "127.0.0.1:8080")]
        edge_addr: std::net::SocketAddr,
        /// Region of the gateway (and of its residency allow-list unless
        /// SOMAGENT_GATEWAY_RESIDENCY_ALLOWED says otherwise).
        #[arg(long, default_value = "local")]
        region: String,
        /// A PostgreSQL server (e.g. `scripts/ops/ha-up.sh`'s URL through
        /// HAProxy) instead of the embedded SQLite: each service gets its
        /// own database on it, `soma_<service>` (created when missing).
        #[arg(long)]
        database_url: Option<String>,
        #[command(flatten)]
        drills: up::DrillSettings,
        /// Run a second Analytics on its own ports as a standby (PostgreSQL
        /// only): whichever instance holds the ledger writer's lease writes,
        /// the other takes over when it dies; every client gets both
        /// addresses.
        #[arg(long)]
        analytics_standby: bool,
    },
    /// Print a JWT from the development issuer of a `soma up` data dir.
    Token {
        /// The data dir of `soma up`.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Tenant claim.
        #[arg(long)]
        tenant: String,
        /// Region claim.
        #[arg(long)]
        region: String,
        /// Space-separated capabilities (the `scope` claim).
        #[arg(long, default_value = "")]
        scope: String,
        /// Subject claim (default `dev-user@<tenant>`).
        #[arg(long)]
        subject: Option<String>,
        /// Claim a second factor (`amr` with `otp`, `auth_time` now).
        #[arg(long)]
        mfa: bool,
        /// Lifetime, at most 24h (the gateway's default jwt max_lifetime).
        #[arg(long, default_value = "15m", value_parser = parse_duration)]
        ttl: Duration,
        /// Mint from the development operator issuer (`soma-dev-operator`)
        /// with `"operator": true`: authority beyond one tenant (global and
        /// method kill switches, other tenants' switches and exports).
        #[arg(long)]
        operator: bool,
    },
    /// Run one service; its identity comes from SPIFFE_ENDPOINT_SOCKET.
    Serve {
        /// gateway, tool-registry, capsule-repo or analytics.
        service: ServiceKind,
        /// TOML settings file; environment variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Stop when standard input closes (used by `soma up` for its children).
        #[arg(long, hide = true)]
        stop_on_stdin_eof: bool,
    },
    /// The development authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Check Analytics exports and ledger proofs offline, and sweep the Analytics store.
    Verify {
        #[command(subcommand)]
        command: verify::VerifyCommand,
    },
    /// Tool releases: keys, signing, publishing, publisher keys, the registry keyring.
    Release {
        #[command(subcommand)]
        command: release::ReleaseCommand,
    },
    /// Capsule bundles: digest, attest, verify an attestation, submit.
    Capsule {
        #[command(subcommand)]
        command: capsule::CapsuleCommand,
    },
    /// Disaster-recovery drills against a running stack.
    Drill {
        #[command(subcommand)]
        command: DrillCommand,
    },
    /// Print the RFC 8785 canonical form of a JSON file.
    Canon {
        /// The JSON file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum DrillCommand {
    /// Kill the target under a steady write load through the edge, measure
    /// RTO and RPO, record the drill; the last line is
    /// `rto_seconds=<float> rpo_events=<int>`; exit 0 only when both
    /// targets hold (and Analytics judged the drill passed).
    Run(drill::DrillArgs),
    /// Schedule a drill (`--every 24h DRILL ARGS`), list (`--list`) or
    /// remove (`--remove ID`) scheduled drills: DIR/drills/schedule.json.
    Schedule(drill::schedule::ScheduleArgs),
    /// Run the scheduled drills when they are due, one at a time, each
    /// recorded in Analytics.
    Scheduler(drill::schedule::SchedulerArgs),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create the development authority (a new P-256 root) under a data dir.
    Init {
        /// Data directory to hold the authority (`DIR/ca/`).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// SPIFFE trust domain of the authority.
        #[arg(long, default_value = "somastack.local")]
        trust_domain: String,
    },
    /// Issue an SVID to files: svid.pem, key.pem, bundle.pem.
    Issue {
        /// Data directory of `soma up` (holds the authority).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// SPIFFE ID to issue, e.g. spiffe://somastack.local/operator/alice.
        #[arg(long)]
        spiffe_id: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Prepare the next root and JWT key now: published in every bundle at
    /// once, signing nothing until activated.
    Prepare {
        /// Data directory of `soma up` (holds the authority).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// SPIFFE trust domain of the authority.
        #[arg(long, default_value = "somastack.local")]
        trust_domain: String,
        /// Lifetime of the prepared root and JWT key.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ca_ttl: Duration,
    },
    /// Activate the prepared root and JWT key now; the old ones stay in the
    /// bundles until they expire.
    Activate {
        /// Data directory of `soma up` (holds the authority).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// SPIFFE trust domain of the authority.
        #[arg(long, default_value = "somastack.local")]
        trust_domain: String,
    },
    /// List the authority's roots and JWT keys: state, serial, expiry, kid.
    Show {
        /// Data directory of `soma up` (holds the authority).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// SPIFFE trust domain of the authority.
        #[arg(long, default_value = "somastack.local")]
        trust_domain: String,
    },
    /// Registration entries: which local processes get which SPIFFE ID.
    Entry {
        #[command(subcommand)]
        command: ca::EntryCommand,
    },
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_target(s)?;
    if d < Duration::from_secs(2) {
        return Err("must be at least 2s".to_owned());
    }
    Ok(d)
}

/// A positive duration of any size (a drill's target).
pub(crate) fn parse_target(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be positive".to_owned());
    }
    Ok(d)
}

#[expect(
    clippy::print_stderr,
    reason = "a fatal error before or after logging exists goes to stderr"
)]
fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    // Which of `soma drill run`'s arguments the command line gave: the
    // others may come from its plan.
    let drill_run_given = given_arguments(&matches, &["drill", "run"]);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soma: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the OTLP exporter's channel lives on it.
    let telemetry = {
        let _runtime = runtime.enter();
        init_tracing(&cli)
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up {
                data_dir,
                trust_domain,
                svid_ttl,
                ca_ttl,
                edge_addr,
                region,
                database_url,
                drills,
                analytics_standby,
            } => {
                up::run(up::UpArgs {
                    log_format: cli.log_format,
                    data_dir,
                    trust_domain,
                    svid_ttl,
                    ca_ttl,
                    edge_addr,
                    region,
                    database_url,
                    drills,
                    analytics_standby,
                })
                .await
            }
            Command::Token {
                data_dir,
                tenant,
                region,
                scope,
                subject,
                mfa,
                ttl,
                operator,
            } => token::run(&token::TokenArgs {
                data_dir,
                tenant,
                region,
                subject,
                scope,
                mfa,
                ttl,
                operator,
            }),
            Command::Serve {
                service,
                config,
                stop_on_stdin_eof,
            } => serve::run(service, config, stop_on_stdin_eof).await,
            Command::Ca {
                command:
                    CaCommand::Init {
                        data_dir,
                        trust_domain,
                    },
            } => ca::init(&data_dir, &trust_domain),
            Command::Ca {
                command:
                    CaCommand::Issue {
                        data_dir,
                        spiffe_id,
                        out,
                        ttl,
                    },
            } => ca::issue(&data_dir, &spiffe_id, &out, ttl),
            Command::Ca {
                command:
                    CaCommand::Prepare {
                        data_dir,
                        trust_domain,
                        ca_ttl,
                    },
            } => ca::rotate(&data_dir, &trust_domain, ca::Step::Prepare(ca_ttl)),
            Command::Ca {
                command:
                    CaCommand::Activate {
                        data_dir,
                        trust_domain,
                    },
            } => ca::rotate(&data_dir, &trust_domain, ca::Step::Activate),
            Command::Ca {
                command:
                    CaCommand::Show {
                        data_dir,
                        trust_domain,
                    },
            } => ca::rotate(&data_dir, &trust_domain, ca::Step::Show),
            Command::Ca {
                command: CaCommand::Entry { command },
            } => ca::entry(command),
            Command::Verify { command } => Ok(verify::run(command).await),
            Command::Release { command } => release::run(command).await,
            Command::Capsule { command } => capsule::run(command).await,
            Command::Canon { file } => release::canon(&file),
            Command::Drill {
                command: DrillCommand::Run(mut args),
            } => {
                args.given = drill_run_given;
                drill::run(args).await
            }
            Command::Drill {
                command: DrillCommand::Schedule(args),
            } => drill::schedule::schedule(args).await,
            Command::Drill {
                command: DrillCommand::Scheduler(args),
            } => drill::schedule::scheduler(args).await,
        }
    });
    // Whatever still runs on the blocking pool (a read that cannot be
    // cancelled) must not keep a stopped process alive.
    // Spans still buffered go out while the runtime (which carries the
    // exporter's connection) still runs.
    telemetry.shutdown();
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("soma: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The ids of the arguments of the subcommand at `path` that the command
/// line gave (not defaults, not the environment).
pub(crate) fn given_arguments(
    matches: &clap::ArgMatches,
    path: &[&str],
) -> std::collections::BTreeSet<String> {
    let mut m = matches;
    for name in path {
        match m.subcommand_matches(name) {
            Some(sub) => m = sub,
            None => return std::collections::BTreeSet::new(),
        }
    }
    m.ids()
        .filter(|id| m.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
        .map(|id| id.as_str().to_owned())
        .collect()
}

/// Logs go to standard error (standard output is for the commands' own
/// output); `RUST_LOG` filters them, `info` by default. Text is coloured only
/// on a terminal, and never when `NO_COLOR` is set: `soma up` points its
/// children's standard error at log files. JSON is never coloured. Traces go
/// out over OTLP when the standard `OTEL_*` variables ask (see
/// `soma_mesh::Telemetry`), named after the service `soma serve` runs.
fn init_tracing(cli: &Cli) -> soma_mesh::Telemetry {
    use std::io::IsTerminal as _;
    let style = match cli.log_format {
        LogFormat::Text => soma_mesh::LogStyle::Text {
            ansi: colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ),
        },
        LogFormat::Json => soma_mesh::LogStyle::Json,
    };
    let name = match &cli.command {
        Command::Serve { service, .. } => format!("somastack-{}", service.name()),
        _ => "soma".to_owned(),
    };
    soma_mesh::Telemetry::init(&name, style)
}

/// Whether to colour output: on a terminal, unless `NO_COLOR` is set to a
/// non-empty value (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// A usage or configuration error: one line on standard error, exit 64.
#[expect(clippy::print_stderr, reason = "the one-line reason is the command's output")]
fn config_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("soma: {message}");
    ExitCode::from(EXIT_CONFIG)
}

/// Waits for Ctrl-C or SIGTERM.
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let cases: [(&str, bool, Option<&OsStr>, bool); 5] = [
            ("terminal", true, None, true),
            ("terminal, NO_COLOR=1", true, Some(OsStr::new("1")), false),
            ("terminal, NO_COLOR empty", true, Some(OsStr::new("")), true),
            ("file", false, None, false),
            ("file, NO_COLOR=1", false, Some(OsStr::new("1")), false),
        ];
        for (name, terminal, no_color, expected) in cases {
            assert_eq!(colour(terminal, no_color), expected, "{name}");
        }
    }
}
