//! Logs and traces of a process: the global `tracing` subscriber, with
//! OpenTelemetry traces exported over OTLP/gRPC when, and only when, the
//! standard variables ask for it.
//!
//! Traces are on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, unless `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none`. Everything else comes from the standard
//! variables too, read by the OpenTelemetry SDK: the sampler
//! (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`; parent-based always-on
//! by default), the batch processor (`OTEL_BSP_*`), resource attributes
//! (`OTEL_RESOURCE_ATTRIBUTES`) and `OTEL_SERVICE_NAME` (the process's own
//! service name when unset). Every `tracing` span becomes an OpenTelemetry
//! span; context crosses processes in the W3C `traceparent` header
//! ([`extract_trace_context`], [`inject_trace_context`]).

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log events are written on standard error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStyle {
    /// Human-readable lines, coloured when `ansi`.
    Text {
        /// Whether to write colour escapes.
        ansi: bool,
    },
    /// One JSON object per line.
    Json,
}

/// The installed telemetry; [`Telemetry::shutdown`] flushes the spans not
/// yet exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber: logs filtered by `RUST_LOG` (`info`
    /// by default) in `style`, and traces when the OTLP variables ask for
    /// them, named `service_name` unless `OTEL_SERVICE_NAME` says otherwise.
    ///
    /// An exporter that cannot be built is reported on standard error and
    /// leaves traces off: logging must never fail a start-up.
    pub fn init(service_name: &str, style: LogStyle) -> Self {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let (provider, problem) = match provider(service_name) {
            Ok(provider) => (provider, None),
            Err(problem) => (None, Some(problem)),
        };
        // `RUST_LOG` filters the logs only: spans at info and above are
        // traced whatever the log level. With traces on, each layer carries
        // its own filter; with logs only, the one filter is the whole
        // subscriber's, which lets the same spans and events through and
        // spares every span the per-layer filter bookkeeping (a lookup of
        // the span at each enter and exit).
        match &provider {
            Some(p) => {
                type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
                let layers: Vec<Boxed> = vec![
                    tracing_opentelemetry::layer()
                        .with_tracer(p.tracer("somastack"))
                        .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
                        .boxed(),
                    log_layer(style).with_filter(filter).boxed(),
                ];
                tracing_subscriber::registry().with(layers).init();
            }
            None => tracing_subscriber::registry()
                .with(filter)
                .with(log_layer(style))
                .init(),
        }
        if let Some(problem) = problem {
            tracing::error!(error = %problem, "traces are off: the OTLP exporter cannot be built");
        }
        if provider.is_some() {
            TRACES_EXPORTED.store(true, Ordering::Relaxed);
            tracing::info!("exporting traces over OTLP");
        }
        Self { provider }
    }

    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "traces not flushed at shutdown");
        }
    }
}

/// Whether [`Telemetry::init`] installed the OpenTelemetry layer: set once,
/// before the process serves anything, and never cleared.
static TRACES_EXPORTED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces, i.e. whether spans need the fields
/// only OpenTelemetry reads (`otel.name`, `otel.kind`, ...).
pub(crate) fn traces_exported() -> bool {
    TRACES_EXPORTED.load(Ordering::Relaxed)
}

/// The layer writing log lines on standard error in `style`.
fn log_layer<S>(style: LogStyle) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match style {
        LogStyle::Text { ansi } => fmt.with_ansi(ansi).boxed(),
        LogStyle::Json => fmt
            .json()
            .with_ansi(false)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }
}

/// The tracer provider the environment asks for, if any.
fn provider(service_name: &str) -> Result<Option<SdkTracerProvider>, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    if endpoint.is_none() || disabled {
        return Ok(None);
    }
    // The propagator is global: the edge injects and every server extracts.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if var("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name.to_owned());
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// The trace context an incoming request carries (`traceparent`), as the
/// parent of the span about to handle it. Empty when there is none or traces
/// are off.
///
/// A request without a `traceparent` header carries no context: the W3C
/// propagator (the only one installed) is then not asked, which spares every
/// call that starts no trace the global propagator's lock and its
/// extraction.
pub fn extract_trace_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    if !headers.contains_key(&TRACEPARENT) {
        return opentelemetry::Context::new();
    }
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)))
}

/// The W3C Trace Context header that carries a caller's span.
static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Writes `span`'s trace context (`traceparent`) into outgoing `headers`.
/// Nothing is written when traces are off.
pub fn inject_trace_context(span: &tracing::Span, headers: &mut http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeadersMut(headers)));
}

/// Sets `span`'s parent to `context`, when there is one to set.
pub fn set_trace_parent(span: &tracing::Span, context: opentelemetry::Context) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if context.span().span_context().is_valid() {
        // Only fails when the span is disabled (traces off): nothing to parent.
        let _ = span.set_parent(context);
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt as _;

    use super::*;

    #[test]
    fn a_traceparent_is_extracted_and_its_absence_gives_no_parent() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let mut headers = http::HeaderMap::new();
        assert!(!extract_trace_context(&headers).span().span_context().is_valid());
        // Only `tracestate`: the W3C propagator takes nothing from it alone.
        headers.insert("tracestate", http::HeaderValue::from_static("vendor=value"));
        assert!(!extract_trace_context(&headers).span().span_context().is_valid());
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let context = extract_trace_context(&headers);
        let span = context.span();
        let parent = span.span_context();
        assert!(parent.is_valid());
        assert!(parent.is_remote());
        assert_eq!(parent.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(parent.trace_state().header(), "vendor=value");
    }
}
