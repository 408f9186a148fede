//! Logs and traces. Structured logs (text or JSON) with the same field
//! names everywhere: `node_id` (the node writing; from the `node` span or the
//! request's `grpc` span), `term`, `leader_id`, `peer_node_id` (another node
//! of this cluster), `peer_cluster` (a federation peer), `provider`, `msg_id`,
//! `seq`. OpenTelemetry
//! spans exported over OTLP/gRPC when an endpoint is configured (nothing is
//! exported, and no exporter runs, when it is not). W3C trace context
//! (`traceparent`) is read from incoming gRPC metadata, written into
//! node-to-node calls, and stored with each envelope so that the delivery on
//! whichever node serves the recipient joins the sender's trace:
//! `Send (node A) -> Forward + commit (leader) -> deliver (node C)`.

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`. Also read from
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`. Unset: no traces are exported.
    pub otlp_endpoint: Option<String>,
    #[serde(default)]
    pub log_format: LogFormat,
    /// `service.name` of exported spans (default `routerd`).
    pub service_name: Option<String>,
}

/// Flushes and stops the exporter when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every finished span now (tests, shutdown).
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber. Must run inside a Tokio runtime when an
/// OTLP endpoint is set (the exporter's channel lives on it).
pub fn init(cfg: &TelemetryConfig, default_filter: &str) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let endpoint = cfg.otlp_endpoint.clone().or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok());
    let provider = match endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| anyhow::anyhow!("build OTLP exporter: {e}"))?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(cfg.service_name.clone().unwrap_or_else(|| "routerd".into()))
                .build();
            Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
        }
        None => None,
    };
    // `node` spans live as long as the node and only label its log lines:
    // not exported, and never a parent in a trace (children skip to the
    // closest exported ancestor).
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer().with_tracer(p.tracer("routerd")).with_filter(
            tracing_subscriber::filter::filter_fn(|meta| {
                !(meta.is_span() && meta.name() == "node" && meta.target() == "router_node::node")
            }),
        )
    });
    let (text, json) = match cfg.log_format {
        // No colour codes when the output is not a terminal (docker logs, collectors).
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            (Some(tracing_subscriber::fmt::layer().with_ansi(ansi)), None)
        }
        LogFormat::Json => (None, Some(json_log_layer(std::io::stdout))),
    };
    tracing_subscriber::registry().with(filter).with(text).with(json).with(otel).try_init()?;
    Ok(TelemetryGuard { provider })
}

/// The layer behind `log_format = "json"`: one JSON object per line, the
/// event's fields at the top level, the spans it runs in with their fields
/// (`node_id` from the `node` or `grpc` span) under `span` and `spans`.
pub fn json_log_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(writer)
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes the server span of each gRPC request on node `node_id`: a child of
/// the caller's trace context, carrying `node_id` (tonic runs requests on its
/// own tasks, outside the node's span, so the field is set here).
pub fn server_span(node_id: u64) -> impl Fn(&http::Request<()>) -> tracing::Span + Clone {
    move |req| {
        let path = req.uri().path();
        let span = tracing::info_span!("grpc", node_id, otel.name = %path, rpc.method = %path, otel.kind = "server");
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
        let _ = span.set_parent(parent);
        span
    }
}

/// The current span's context as a `traceparent` value, to store with an envelope.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove("traceparent")
}

/// Makes `span` a child of a stored `traceparent`.
pub fn set_parent_from(span: &tracing::Span, traceparent: &str) {
    let carrier = std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(parent);
}
