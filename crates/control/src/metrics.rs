//! The control plane's Prometheus metrics, served at `/metrics`. One registry
//! per process, passed down; no global statics.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use trellis_model::conflict::Conflict;
use trellis_model::resource::Kind;

use crate::store::Entry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub kind: &'static str,
    /// `true` when in the effective set, `false` when it lost a conflict.
    pub accepted: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// `issued` or `refused`.
    pub result: &'static str,
    /// Why refused (`identity::Refused::reason`); empty when issued.
    pub reason: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    resources: Family<ResourceLabels, Gauge>,
    applies: Family<ResultLabels, Counter>,
    deletes: Family<ResultLabels, Counter>,
    config_dir_reloads: Family<ResultLabels, Counter>,
    generation: Gauge<u64, AtomicU64>,
    certificates: Family<CertificateLabels, Counter>,
    tokens_created: Counter,
    /// The ADS server's counters, registered as `trellis_control_xds_*`.
    pub xds: trellis_xds::XdsMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn result(ok: bool) -> ResultLabels {
    ResultLabels {
        result: if ok { "accepted" } else { "rejected" },
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("trellis_control");
        let resources = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "resources",
            "Resources in the store by kind; accepted=false: left out by a conflict",
            resources.clone(),
        );
        let applies = Family::<ResultLabels, Counter>::default();
        registry.register(
            "applies",
            "Applies through the API (dry runs not counted), by result",
            applies.clone(),
        );
        let deletes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "deletes",
            "Deletes through the API, by result",
            deletes.clone(),
        );
        let config_dir_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_dir_reloads",
            "Reloads of the watched config directory, by result",
            config_dir_reloads.clone(),
        );
        let generation = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "config_generation",
            "Generation of the effective config; bumped by every accepted change",
            generation.clone(),
        );
        let certificates = Family::<CertificateLabels, Counter>::default();
        registry.register(
            "certificates",
            "Workload certificate requests (CreateCertificate), by result and refusal reason",
            certificates.clone(),
        );
        let tokens_created = Counter::default();
        registry.register(
            "tokens_created",
            "Bootstrap tokens created through the API",
            tokens_created.clone(),
        );
        let xds = trellis_xds::XdsMetrics::new();
        xds.register(&mut registry);
        // Every kind shows up from the start, at 0.
        for kind in Kind::ALL {
            for accepted in ["true", "false"] {
                resources
                    .get_or_create(&ResourceLabels {
                        kind: kind.name(),
                        accepted,
                    })
                    .set(0);
            }
        }
        Metrics {
            registry,
            resources,
            applies,
            deletes,
            config_dir_reloads,
            generation,
            certificates,
            tokens_created,
            xds,
        }
    }

    pub fn apply(&self, ok: bool) {
        self.applies.get_or_create(&result(ok)).inc();
    }

    pub fn certificate(&self, refused: Option<&'static str>) {
        let labels = match refused {
            None => CertificateLabels {
                result: "issued",
                reason: "",
            },
            Some(reason) => CertificateLabels {
                result: "refused",
                reason,
            },
        };
        self.certificates.get_or_create(&labels).inc();
    }

    pub fn token_created(&self) {
        self.tokens_created.inc();
    }

    pub fn delete(&self, ok: bool) {
        self.deletes.get_or_create(&result(ok)).inc();
    }

    pub fn config_dir_reload(&self, ok: bool) {
        self.config_dir_reloads.get_or_create(&result(ok)).inc();
    }

    /// Recount resources after a change.
    pub fn resources<'a>(
        &self,
        entries: impl Iterator<Item = &'a Entry>,
        conflicts: &[Conflict],
        generation: u64,
    ) {
        let mut counts = [[0i64; 2]; Kind::ALL.len()];
        for e in entries {
            let me = e.reference();
            let lost = conflicts.iter().any(|c| c.loser == me);
            let k = Kind::ALL.iter().position(|k| *k == e.key.kind).unwrap_or(0);
            counts[k][usize::from(lost)] += 1;
        }
        for (k, kind) in Kind::ALL.iter().enumerate() {
            for (i, accepted) in ["true", "false"].into_iter().enumerate() {
                self.resources
                    .get_or_create(&ResourceLabels {
                        kind: kind.name(),
                        accepted,
                    })
                    .set(counts[k][i]);
            }
        }
        self.generation.set(generation);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
