//! Prometheus metrics (`/metrics`, OpenMetrics text): reconciliations, errors and durations per
//! kind, objects per state of their newest operation, re-encryption progress, KMS off, and leadership.
//! Names carry the `csop_` prefix; labels never carry Secret material (kind, object name, state).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::api::{OperationState, ReencryptionStatus};

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    kind: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KmsLabels {
    kmskeyvaultmode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReencryptionLabels {
    kmskeyvaultmode: String,
    counter: &'static str,
}

/// Every metric the operator exports, in one registry.
pub struct Metrics {
    registry: Registry,
    reconciliations: Family<KindLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    durations: Family<KindLabels, Histogram>,
    operations: Family<StateLabels, Gauge>,
    reencryption: Family<ReencryptionLabels, Gauge<f64, AtomicU64>>,
    kms_disabled: Family<KmsLabels, Gauge>,
    leader: Gauge,
    /// Newest operation state of every object seen, to count objects per state.
    newest: Mutex<HashMap<(&'static str, String), OperationState>>,
}

const STATES: [OperationState; 4] = [
    OperationState::Pending,
    OperationState::UpdateInProgress,
    OperationState::UpdateComplete,
    OperationState::UpdateFailed,
];

fn state_label(s: OperationState) -> &'static str {
    match s {
        OperationState::Pending => "PENDING",
        OperationState::UpdateInProgress => "UPDATE_IN_PROGRESS",
        OperationState::UpdateComplete => "UPDATE_COMPLETE",
        OperationState::UpdateFailed => "UPDATE_FAILED",
    }
}

fn duration_histogram() -> Histogram {
    // 5 ms .. ~80 s: a no-op reconcile is milliseconds, a KMS step with re-encryption minutes
    // (those land in +Inf, the count and sum still say how long).
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("csop");
        let reconciliations = Family::<KindLabels, Counter>::default();
        let errors = Family::<KindLabels, Counter>::default();
        let durations = Family::<KindLabels, Histogram>::new_with_constructor(duration_histogram as fn() -> Histogram);
        let operations = Family::<StateLabels, Gauge>::default();
        let reencryption = Family::<ReencryptionLabels, Gauge<f64, AtomicU64>>::default();
        let kms_disabled = Family::<KmsLabels, Gauge>::default();
        let leader = Gauge::default();
        registry.register("reconciliations", "Reconciles run, per kind", reconciliations.clone());
        registry.register("reconcile_errors", "Reconciles that ended in an error (retried), per kind", errors.clone());
        registry.register("reconcile_duration_seconds", "How long reconciles took, per kind", durations.clone());
        registry.register("operations", "Objects per kind by the state of their newest operation", operations.clone());
        registry.register(
            "reencryption_secrets",
            "Progress of the current or last re-encryption of a KmsKeyVaultMode (total, rewritten, unchanged, deleted, failed)",
            reencryption.clone(),
        );
        registry.register(
            "kms_encryption_disabled",
            "1 while the cluster of a KmsKeyVaultMode runs with KMS etcd encryption off (Secrets written meanwhile are not KMS-encrypted)",
            kms_disabled.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease (or runs without leader election)",
            leader.clone(),
        );
        Self {
            registry,
            reconciliations,
            errors,
            durations,
            operations,
            reencryption,
            kms_disabled,
            leader,
            newest: Mutex::new(HashMap::new()),
        }
    }

    /// One reconcile of `kind` ended after `took`.
    pub fn reconciled(&self, kind: &'static str, took: Duration, ok: bool) {
        let l = KindLabels { kind };
        self.reconciliations.get_or_create(&l).inc();
        // Created at 0 with the first reconcile, so that rate() and alerts see the series.
        let errors = self.errors.get_or_create(&l);
        if !ok {
            errors.inc();
        }
        self.durations.get_or_create(&l).observe(took.as_secs_f64());
    }

    /// The newest operation of the `kind` object `object` (its namespace and name: two
    /// namespaces may hold the same name) is in `state` (None: it has none, or it is gone).
    pub fn newest_operation(&self, kind: &'static str, object: &str, state: Option<OperationState>) {
        let mut newest = self.newest.lock().expect("metrics lock");
        let key = (kind, object.to_string());
        match state {
            Some(s) => newest.insert(key, s),
            None => newest.remove(&key),
        };
        for s in STATES {
            let n = newest.iter().filter(|((k, _), v)| *k == kind && **v == s).count();
            self.operations.get_or_create(&StateLabels { kind, state: state_label(s) }).set(n as i64);
        }
    }

    /// Re-encryption progress of KmsKeyVaultMode `name`.
    pub fn reencryption(&self, name: &str, r: &ReencryptionStatus) {
        for (counter, v) in [
            ("total", r.total),
            ("rewritten", r.rewritten),
            ("unchanged", r.unchanged),
            ("deleted", r.deleted),
            ("failed", r.failed),
        ] {
            self.reencryption
                .get_or_create(&ReencryptionLabels { kmskeyvaultmode: name.into(), counter })
                .set(v as f64);
        }
    }

    /// Whether the cluster of KmsKeyVaultMode `name` runs with KMS off.
    pub fn kms_disabled(&self, name: &str, off: bool) {
        self.kms_disabled.get_or_create(&KmsLabels { kmskeyvaultmode: name.into() }).set(off as i64);
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(leading as i64);
    }

    /// All metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_objects_by_newest_operation_state_and_forgets_deleted_ones() {
        let m = Metrics::new();
        m.newest_operation("CertificateRotation", "a", Some(OperationState::UpdateInProgress));
        m.newest_operation("CertificateRotation", "b", Some(OperationState::UpdateInProgress));
        m.newest_operation("CertificateRotation", "a", Some(OperationState::UpdateComplete));
        let text = m.encode();
        assert!(text.contains(r#"csop_operations{kind="CertificateRotation",state="UPDATE_IN_PROGRESS"} 1"#), "{text}");
        assert!(text.contains(r#"csop_operations{kind="CertificateRotation",state="UPDATE_COMPLETE"} 1"#), "{text}");
        m.newest_operation("CertificateRotation", "b", None);
        assert!(m.encode().contains(r#"csop_operations{kind="CertificateRotation",state="UPDATE_IN_PROGRESS"} 0"#));
        // The same name in two namespaces is two objects.
        m.newest_operation("ClusterSecurityPolicy", "orders.team-a", Some(OperationState::Pending));
        m.newest_operation("ClusterSecurityPolicy", "orders.team-b", Some(OperationState::Pending));
        assert!(m.encode().contains(r#"csop_operations{kind="ClusterSecurityPolicy",state="PENDING"} 2"#));
    }

    #[test]
    fn reconciles_errors_and_durations_per_kind() {
        let m = Metrics::new();
        m.reconciled("KmsKeyVaultMode", Duration::from_millis(20), true);
        m.reconciled("KmsKeyVaultMode", Duration::from_millis(30), false);
        let text = m.encode();
        assert!(text.contains(r#"csop_reconciliations_total{kind="KmsKeyVaultMode"} 2"#), "{text}");
        assert!(text.contains(r#"csop_reconcile_errors_total{kind="KmsKeyVaultMode"} 1"#), "{text}");
        assert!(text.contains(r#"csop_reconcile_duration_seconds_count{kind="KmsKeyVaultMode"} 2"#), "{text}");
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with EOF");
    }
}
