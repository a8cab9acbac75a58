//! Counters of the xDS server, registered into a registry the caller owns
//! (no global metrics).

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::resource::type_url;

/// Which protocol variant a stream speaks.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Mode {
    /// State of the world (`StreamAggregatedResources`).
    Sotw,
    /// Incremental (`DeltaAggregatedResources`).
    Delta,
}

impl Mode {
    /// `sotw` or `delta`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sotw => "sotw",
            Mode::Delta => "delta",
        }
    }
}

impl EncodeLabelValue for Mode {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    mode: Mode,
    /// The short type name (`Cluster`), readable in dashboards.
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: Mode,
}

/// The server's counters. Cheap to clone (handles to shared atomics).
#[derive(Clone, Debug, Default)]
pub struct XdsMetrics {
    pushes: Family<TypeLabels, Counter>,
    acks: Family<TypeLabels, Counter>,
    nacks: Family<TypeLabels, Counter>,
    stale: Family<TypeLabels, Counter>,
    streams: Family<ModeLabels, Gauge>,
}

impl XdsMetrics {
    /// Counters not yet registered anywhere (tests can still read them).
    pub fn new() -> XdsMetrics {
        XdsMetrics::default()
    }

    /// Registers the counters under `registry` (e.g. a `trellis_xds`
    /// sub-registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "xds_pushes",
            "Responses sent to proxies, by protocol and resource type",
            self.pushes.clone(),
        );
        registry.register(
            "xds_acks",
            "Responses proxies accepted, by protocol and resource type",
            self.acks.clone(),
        );
        registry.register(
            "xds_nacks",
            "Responses proxies rejected, by protocol and resource type",
            self.nacks.clone(),
        );
        registry.register(
            "xds_stale_requests",
            "Requests answering an older response than the last sent",
            self.stale.clone(),
        );
        registry.register(
            "xds_streams",
            "Connected ADS streams, by protocol",
            self.streams.clone(),
        );
    }

    fn labels(mode: Mode, type_url: &str) -> TypeLabels {
        TypeLabels {
            mode,
            r#type: type_url::short_name(type_url).to_string(),
        }
    }

    pub(crate) fn push(&self, mode: Mode, type_url: &str) {
        self.pushes
            .get_or_create(&Self::labels(mode, type_url))
            .inc();
    }

    pub(crate) fn ack(&self, mode: Mode, type_url: &str) {
        self.acks.get_or_create(&Self::labels(mode, type_url)).inc();
    }

    pub(crate) fn nack(&self, mode: Mode, type_url: &str) {
        self.nacks
            .get_or_create(&Self::labels(mode, type_url))
            .inc();
    }

    pub(crate) fn stale(&self, mode: Mode, type_url: &str) {
        self.stale
            .get_or_create(&Self::labels(mode, type_url))
            .inc();
    }

    pub(crate) fn stream_opened(&self, mode: Mode) {
        self.streams.get_or_create(&ModeLabels { mode }).inc();
    }

    pub(crate) fn stream_closed(&self, mode: Mode) {
        self.streams.get_or_create(&ModeLabels { mode }).dec();
    }

    /// Responses sent so far of one type.
    pub fn pushes(&self, mode: Mode, type_url: &str) -> u64 {
        self.pushes
            .get_or_create(&Self::labels(mode, type_url))
            .get()
    }

    /// ACKs received so far of one type.
    pub fn acks(&self, mode: Mode, type_url: &str) -> u64 {
        self.acks.get_or_create(&Self::labels(mode, type_url)).get()
    }

    /// NACKs received so far of one type.
    pub fn nacks(&self, mode: Mode, type_url: &str) -> u64 {
        self.nacks
            .get_or_create(&Self::labels(mode, type_url))
            .get()
    }

    /// Streams connected now.
    pub fn streams(&self, mode: Mode) -> i64 {
        self.streams.get_or_create(&ModeLabels { mode }).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn registered_counters_are_exposed_with_short_type_names() {
        let m = XdsMetrics::new();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.push(Mode::Delta, type_url::CLUSTER);
        m.nack(Mode::Sotw, type_url::LISTENER);
        m.stream_opened(Mode::Sotw);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"xds_pushes_total{mode="delta",type="Cluster"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"xds_nacks_total{mode="sotw",type="Listener"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"xds_streams{mode="sotw"} 1"#), "{text}");
        assert_eq!(m.pushes(Mode::Delta, type_url::CLUSTER), 1);
    }
}
