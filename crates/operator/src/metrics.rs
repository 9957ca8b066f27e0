//! Prometheus metrics (`/metrics`, OpenMetrics text): reconciliations, errors and durations per
//! kind, objects per state of their newest operation and per Stalled reason, the same per object
//! (so that an alert names it), admission reviews, Azure requests, re-encryption progress, KMS
//! off, certificate expiry, build info and leadership. Names carry the `csop_` prefix; labels
//! never carry Secret material (kind, object namespace and name, state, reason). Every label value
//! comes from a closed set or names an object that exists: an object's series leave with it.

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

use crate::api::{CertificateRotation, KmsKeyVaultMode, OperationState, ReencryptionStatus};
use crate::reconciler::conditions::STALLED_REASONS;
use crate::reconciler::Category;

/// Content type of [`Metrics::encode`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    kind: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StalledLabels {
    kind: &'static str,
    reason: &'static str,
}

/// One object: its kind, namespace (empty for a cluster-scoped kind) and name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    kind: &'static str,
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectReasonLabels {
    kind: &'static str,
    namespace: String,
    name: String,
    reason: &'static str,
}

/// What the metrics say of one object, as its last reconcile saw its status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectHealth {
    /// The state of its newest operation (None: it has none yet).
    pub newest: Option<OperationState>,
    /// Its Stalled reason while Stalled is True (from [`STALLED_REASONS`], else `other`).
    pub stalled: Option<&'static str>,
    /// Whether Ready is True.
    pub ready: bool,
}

impl ObjectHealth {
    /// `reason` as a label: one of [`STALLED_REASONS`], else `other` (a status someone else
    /// wrote adds no series).
    pub fn stalled_reason(reason: &str) -> &'static str {
        closed(reason, &STALLED_REASONS)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    kind: &'static str,
    operation: &'static str,
    allowed: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    why: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AzureLabels {
    operation: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AzureOperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    namespace: String,
    name: String,
    slot: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
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
    errors: Family<ErrorLabels, Counter>,
    durations: Family<KindLabels, Histogram>,
    operations: Family<StateLabels, Gauge>,
    reencryption: Family<ReencryptionLabels, Gauge<f64, AtomicU64>>,
    kms_disabled: Family<KmsLabels, Gauge>,
    leader: Gauge,
    stalled: Family<StalledLabels, Gauge>,
    reviews: Family<ReviewLabels, Counter>,
    review_durations: Family<KindLabels, Histogram>,
    shed: Family<ShedLabels, Counter>,
    azure_requests: Family<AzureLabels, Counter>,
    azure_durations: Family<AzureOperationLabels, Histogram>,
    certificate_expiry: Family<CertificateLabels, Gauge>,
    certificate_renewal: Family<CertificateLabels, Gauge>,
    resource_ready: Family<ObjectLabels, Gauge>,
    resource_stalled: Family<ObjectReasonLabels, Gauge>,
    resource_failed: Family<ObjectLabels, Gauge>,
    /// What was last reported of every object that exists, so that a change moves it from one
    /// count to another and its deletion removes exactly its series.
    objects: Mutex<HashMap<ObjectLabels, ObjectHealth>>,
}

/// The kinds the webhook reviews, as they may appear in a review's label.
const REVIEWED_KINDS: [&str; 3] = ["ClusterSecurityPolicy", "CertificateRotation", "KmsKeyVaultMode"];
/// Admission operations, as AdmissionReview v1 spells them.
const ADMISSION_OPERATIONS: [&str; 4] = ["CREATE", "UPDATE", "DELETE", "CONNECT"];

/// `value` when it is one of `known`, else `other`.
fn closed(value: &str, known: &[&'static str]) -> &'static str {
    known.iter().copied().find(|k| *k == value).unwrap_or("other")
}

/// Which certificate of a CertificateRotation a metric is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateSlot {
    External,
    Internal,
    /// The CA the external certificate chains to.
    ExternalCa,
    /// The CA the internal certificate chains to.
    InternalCa,
}

impl CertificateSlot {
    const ALL: [CertificateSlot; 4] = [Self::External, Self::Internal, Self::ExternalCa, Self::InternalCa];
}

/// The counters of `csop_reencryption_secrets`.
const REENCRYPTION_COUNTERS: [&str; 5] = ["total", "rewritten", "unchanged", "deleted", "failed"];

fn request_histogram() -> Histogram {
    // 1 ms .. ~33 s: an admission review is milliseconds; an Azure call up to tens of seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
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

// Labels and values only; nothing worth printing.
impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
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
        let errors = Family::<ErrorLabels, Counter>::default();
        let durations = Family::<KindLabels, Histogram>::new_with_constructor(duration_histogram as fn() -> Histogram);
        let operations = Family::<StateLabels, Gauge>::default();
        let reencryption = Family::<ReencryptionLabels, Gauge<f64, AtomicU64>>::default();
        let kms_disabled = Family::<KmsLabels, Gauge>::default();
        let leader = Gauge::default();
        let stalled = Family::<StalledLabels, Gauge>::default();
        let reviews = Family::<ReviewLabels, Counter>::default();
        let review_durations =
            Family::<KindLabels, Histogram>::new_with_constructor(request_histogram as fn() -> Histogram);
        let shed = Family::<ShedLabels, Counter>::default();
        let azure_requests = Family::<AzureLabels, Counter>::default();
        let azure_durations =
            Family::<AzureOperationLabels, Histogram>::new_with_constructor(request_histogram as fn() -> Histogram);
        let certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        let certificate_renewal = Family::<CertificateLabels, Gauge>::default();
        let resource_ready = Family::<ObjectLabels, Gauge>::default();
        let resource_stalled = Family::<ObjectReasonLabels, Gauge>::default();
        let resource_failed = Family::<ObjectLabels, Gauge>::default();
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("build_info", "The operator's version (value 1)", build_info);
        registry.register("stalled", "Objects per kind whose Stalled condition is True, by reason", stalled.clone());
        registry.register(
            "webhook_requests",
            "Admission reviews answered, by kind, operation and whether they were allowed (false: a denial)",
            reviews.clone(),
        );
        registry.register(
            "webhook_request_duration_seconds",
            "How long admission reviews took to answer, per kind",
            review_durations.clone(),
        );
        registry.register(
            "webhook_requests_shed",
            "Admission requests turned away before a review: busy (503), timeout (408), too_large (413), slow_body (408), broken_body (400)",
            shed.clone(),
        );
        registry.register(
            "azure_requests",
            "Azure Resource Manager and Key Vault requests by operation and HTTP status (transport: no answer)",
            azure_requests.clone(),
        );
        registry.register(
            "azure_request_duration_seconds",
            "How long Azure requests took, per operation (retries included)",
            azure_durations.clone(),
        );
        registry.register(
            "certificate_expiration_timestamp_seconds",
            "When the certificate a CertificateRotation installed, or its CA, expires (Unix seconds), per slot",
            certificate_expiry.clone(),
        );
        registry.register(
            "certificate_renewal_timestamp_seconds",
            "When the operator plans to renew that certificate or CA (Unix seconds), per slot",
            certificate_renewal.clone(),
        );
        registry.register(
            "resource_ready",
            "Per object: 1 while its Ready condition is True, else 0 (the series leaves with the object)",
            resource_ready.clone(),
        );
        registry.register(
            "resource_stalled",
            "Per object: 1 while its Stalled condition is True, with the reason (no series otherwise)",
            resource_stalled.clone(),
        );
        registry.register(
            "resource_operation_failed",
            "Per object: 1 while its newest operation is UPDATE_FAILED (no series otherwise)",
            resource_failed.clone(),
        );
        registry.register("reconciliations", "Reconciles run, per kind", reconciliations.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that ended in an error (retried), per kind and error category",
            errors.clone(),
        );
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
            stalled,
            reviews,
            review_durations,
            shed,
            azure_requests,
            azure_durations,
            certificate_expiry,
            certificate_renewal,
            resource_ready,
            resource_stalled,
            resource_failed,
            objects: Mutex::new(HashMap::new()),
        }
    }

    /// One reconcile of `kind` ended after `took`, failed with an error of `failed`'s category
    /// (None: it succeeded).
    pub fn reconciled(&self, kind: &'static str, took: Duration, failed: Option<Category>) {
        let l = KindLabels { kind };
        self.reconciliations.get_or_create(&l).inc();
        // Every category's series created at 0 with the first reconcile, so that rate() and
        // alerts see the first error too.
        for category in Category::ALL {
            let errors = self.errors.get_or_create(&ErrorLabels { kind, category: category.label() });
            if failed == Some(category) {
                errors.inc();
            }
        }
        self.durations.get_or_create(&l).observe(took.as_secs_f64());
    }

    /// The `kind` object `namespace/name` (namespace None: cluster-scoped) is as `health` says,
    /// or gone (None: every series of it leaves, its certificates' and re-encryption's too).
    /// Moves it between the per-kind counts and sets its own series.
    pub fn object(&self, kind: &'static str, namespace: Option<&str>, name: &str, health: Option<ObjectHealth>) {
        let key = ObjectLabels { kind, namespace: namespace.unwrap_or_default().into(), name: name.into() };
        let mut objects = self.objects.lock().expect("metrics lock");
        let before = match health {
            Some(h) => objects.insert(key.clone(), h),
            None => objects.remove(&key),
        };
        if before == health {
            return;
        }
        if before.is_none() {
            // Every state of the kind has a series (at 0 until an object is in it).
            for s in STATES {
                let _ = self.operations.get_or_create(&StateLabels { kind, state: state_label(s) });
            }
        }
        let (was, now) = (before.unwrap_or_default(), health.unwrap_or_default());
        // The per-kind counts: the object leaves its old state and reason, joins its new ones.
        if let Some(s) = was.newest {
            self.operations.get_or_create(&StateLabels { kind, state: state_label(s) }).dec();
        }
        if let Some(s) = now.newest {
            self.operations.get_or_create(&StateLabels { kind, state: state_label(s) }).inc();
        }
        if let Some(reason) = was.stalled {
            self.stalled.get_or_create(&StalledLabels { kind, reason }).dec();
        }
        if let Some(reason) = now.stalled {
            self.stalled.get_or_create(&StalledLabels { kind, reason }).inc();
        }
        // Its own series.
        let reason_labels =
            |reason| ObjectReasonLabels { kind, namespace: key.namespace.clone(), name: key.name.clone(), reason };
        if let Some(reason) = was.stalled.filter(|_| was.stalled != now.stalled) {
            self.resource_stalled.remove(&reason_labels(reason));
        }
        if let Some(reason) = now.stalled {
            self.resource_stalled.get_or_create(&reason_labels(reason)).set(1);
        }
        if now.newest == Some(OperationState::UpdateFailed) {
            self.resource_failed.get_or_create(&key).set(1);
        } else {
            self.resource_failed.remove(&key);
        }
        match health {
            Some(h) => {
                self.resource_ready.get_or_create(&key).set(h.ready as i64);
            }
            None => {
                self.resource_ready.remove(&key);
                self.forget_kind_series(&key);
            }
        }
    }

    /// Forget every `kind` object `exists` says is gone (given its namespace and name).
    pub fn forget_gone(&self, kind: &'static str, exists: impl Fn(Option<&str>, &str) -> bool) {
        let gone: Vec<ObjectLabels> = {
            let objects = self.objects.lock().expect("metrics lock");
            let namespace = |o: &ObjectLabels| Some(o.namespace.clone()).filter(|ns| !ns.is_empty());
            objects.keys().filter(|o| o.kind == kind && !exists(namespace(o).as_deref(), &o.name)).cloned().collect()
        };
        for o in gone {
            let namespace = Some(o.namespace.as_str()).filter(|ns| !ns.is_empty());
            self.object(kind, namespace, &o.name, None);
        }
    }

    /// The series only one kind reports, of an object that is gone.
    fn forget_kind_series(&self, object: &ObjectLabels) {
        use kube::Resource;
        if object.kind == CertificateRotation::kind(&()) {
            for slot in CertificateSlot::ALL {
                self.certificate(&object.namespace, &object.name, slot, None);
            }
        } else if object.kind == KmsKeyVaultMode::kind(&()) {
            self.kms_disabled.remove(&KmsLabels { kmskeyvaultmode: object.name.clone() });
            for counter in REENCRYPTION_COUNTERS {
                self.reencryption.remove(&ReencryptionLabels { kmskeyvaultmode: object.name.clone(), counter });
            }
        }
    }

    /// An admission review of `kind`/`operation` was answered after `took`. Both come from the
    /// request, which anyone who reaches the webhook port writes: they become labels only from
    /// a closed set (our three kinds, the four admission operations, else `other`), so no request
    /// adds a series — a label value is never freed.
    pub fn review(&self, kind: &str, operation: &str, allowed: bool, took: Duration) {
        let allowed = if allowed { "true" } else { "false" };
        let (kind, operation) = (closed(kind, &REVIEWED_KINDS), closed(operation, &ADMISSION_OPERATIONS));
        self.reviews.get_or_create(&ReviewLabels { kind, operation, allowed }).inc();
        self.review_durations.get_or_create(&KindLabels { kind }).observe(took.as_secs_f64());
    }

    /// An admission request was turned away before its review (`busy`, `timeout`, `too_large`, `slow_body`, `broken_body`).
    pub fn review_shed(&self, why: &'static str) {
        self.shed.get_or_create(&ShedLabels { why }).inc();
    }

    /// An Azure request `operation` ended with HTTP status `code` (None: no answer) after `took`.
    pub fn azure_request(&self, operation: &'static str, code: Option<u16>, took: Duration) {
        let code = code.map(|c| c.to_string()).unwrap_or_else(|| "transport".into());
        self.azure_requests.get_or_create(&AzureLabels { operation, code }).inc();
        self.azure_durations.get_or_create(&AzureOperationLabels { operation }).observe(took.as_secs_f64());
    }

    /// The certificate in `slot` of CertificateRotation `namespace/name` expires at `not_after`
    /// and is due for renewal at `renewal` (Unix seconds); None removes the series.
    pub fn certificate(&self, namespace: &str, name: &str, slot: CertificateSlot, times: Option<(i64, Option<i64>)>) {
        let slot = match slot {
            CertificateSlot::External => "external",
            CertificateSlot::Internal => "internal",
            CertificateSlot::ExternalCa => "external-ca",
            CertificateSlot::InternalCa => "internal-ca",
        };
        let l = CertificateLabels { namespace: namespace.into(), name: name.into(), slot };
        match times {
            Some((not_after, renewal)) => {
                self.certificate_expiry.get_or_create(&l).set(not_after);
                match renewal {
                    Some(r) => {
                        self.certificate_renewal.get_or_create(&l).set(r);
                    }
                    None => {
                        self.certificate_renewal.remove(&l);
                    }
                }
            }
            None => {
                self.certificate_expiry.remove(&l);
                self.certificate_renewal.remove(&l);
            }
        }
    }

    /// Re-encryption progress of KmsKeyVaultMode `name`.
    pub fn reencryption(&self, name: &str, r: &ReencryptionStatus) {
        let values = [r.total, r.rewritten, r.unchanged, r.deleted, r.failed];
        for (counter, v) in REENCRYPTION_COUNTERS.into_iter().zip(values) {
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

    /// Every metric family the operator can export, as `name type help` lines — including
    /// those with no series yet (the exposition leaves a family out until it has one). Built by
    /// recording one sample of each into a throwaway registry.
    pub fn catalogue() -> String {
        let m = Metrics::new();
        let t = Duration::from_millis(1);
        m.reconciled("Kind", t, Some(Category::Transient));
        let stalled =
            ObjectHealth { newest: Some(OperationState::UpdateFailed), stalled: Some("Reason"), ready: false };
        m.object("Kind", Some("ns"), "x", Some(stalled));
        m.review("Kind", "CREATE", true, t);
        m.review_shed("busy");
        m.azure_request("get_cluster", Some(200), t);
        m.certificate("ns", "x", CertificateSlot::External, Some((0, Some(0))));
        m.reencryption("x", &ReencryptionStatus::default());
        m.kms_disabled("x", false);
        m.set_leader(false);
        let text = m.encode();
        let help = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(&format!("# HELP {name} "))).unwrap_or_default().to_string()
        };
        let mut out = String::new();
        for l in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let (name, kind) = l.split_once(' ').unwrap_or((l, ""));
            out.push_str(&format!("{name} {kind} {}\n", help(name)));
        }
        out
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

    fn in_state(newest: OperationState) -> ObjectHealth {
        ObjectHealth { newest: Some(newest), ..Default::default() }
    }

    #[test]
    fn counts_objects_by_newest_operation_state_and_forgets_deleted_ones() {
        let m = Metrics::new();
        let kind = "CertificateRotation";
        m.object(kind, Some("ns"), "a", Some(in_state(OperationState::UpdateInProgress)));
        m.object(kind, Some("ns"), "b", Some(in_state(OperationState::UpdateInProgress)));
        m.object(kind, Some("ns"), "a", Some(in_state(OperationState::UpdateComplete)));
        let text = m.encode();
        assert!(text.contains(r#"csop_operations{kind="CertificateRotation",state="UPDATE_IN_PROGRESS"} 1"#), "{text}");
        assert!(text.contains(r#"csop_operations{kind="CertificateRotation",state="UPDATE_COMPLETE"} 1"#), "{text}");
        assert!(text.contains(r#"csop_operations{kind="CertificateRotation",state="PENDING"} 0"#), "{text}");
        m.object(kind, Some("ns"), "b", None);
        assert!(m.encode().contains(r#"csop_operations{kind="CertificateRotation",state="UPDATE_IN_PROGRESS"} 0"#));
        // The same name in two namespaces is two objects.
        m.object("ClusterSecurityPolicy", Some("team-a"), "orders", Some(in_state(OperationState::Pending)));
        m.object("ClusterSecurityPolicy", Some("team-b"), "orders", Some(in_state(OperationState::Pending)));
        assert!(m.encode().contains(r#"csop_operations{kind="ClusterSecurityPolicy",state="PENDING"} 2"#));
    }

    /// Alerts name the object: each object has its own series while it exists, and none once it
    /// is gone — the certificates' and re-encryption's included.
    #[test]
    fn each_object_has_its_series_while_it_exists() {
        let m = Metrics::new();
        let stalled = ObjectHealth {
            newest: Some(OperationState::UpdateFailed),
            stalled: Some(ObjectHealth::stalled_reason("InvalidCertificate")),
            ready: false,
        };
        m.object("CertificateRotation", Some("team-a"), "orders", Some(stalled));
        m.certificate("team-a", "orders", CertificateSlot::Internal, Some((1_900_000_000, None)));
        let ready = ObjectHealth { newest: Some(OperationState::UpdateComplete), stalled: None, ready: true };
        m.object("KmsKeyVaultMode", None, "prod", Some(ready));
        m.kms_disabled("prod", false);
        m.reencryption("prod", &ReencryptionStatus { total: 3, ..Default::default() });
        let text = m.encode();
        for line in [
            r#"csop_resource_ready{kind="CertificateRotation",namespace="team-a",name="orders"} 0"#,
            r#"csop_resource_stalled{kind="CertificateRotation",namespace="team-a",name="orders",reason="InvalidCertificate"} 1"#,
            r#"csop_resource_operation_failed{kind="CertificateRotation",namespace="team-a",name="orders"} 1"#,
            r#"csop_resource_ready{kind="KmsKeyVaultMode",namespace="",name="prod"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(!text.contains(r#"csop_resource_operation_failed{kind="KmsKeyVaultMode""#), "{text}");

        // Fixed: the stalled and failed series go, Ready turns 1.
        m.object("CertificateRotation", Some("team-a"), "orders", Some(ObjectHealth { ready: true, ..ready }));
        let text = m.encode();
        assert!(text.contains(r#"csop_resource_ready{kind="CertificateRotation",namespace="team-a",name="orders"} 1"#));
        assert!(!text.contains("csop_resource_stalled{"), "{text}");
        assert!(!text.contains("csop_resource_operation_failed{"), "{text}");
        assert!(text.contains(r#"csop_stalled{kind="CertificateRotation",reason="InvalidCertificate"} 0"#), "{text}");

        // Deleted: nothing names them any more.
        m.object("CertificateRotation", Some("team-a"), "orders", None);
        m.object("KmsKeyVaultMode", None, "prod", None);
        let text = m.encode();
        assert!(!text.contains("orders"), "{text}");
        assert!(!text.contains("prod"), "{text}");
        assert!(text.contains(r#"csop_operations{kind="KmsKeyVaultMode",state="UPDATE_COMPLETE"} 0"#), "{text}");
    }

    /// Objects the controller's cache no longer holds leave; the others, and other kinds', stay.
    #[test]
    fn forgets_the_objects_that_are_gone() {
        let m = Metrics::new();
        m.object("CertificateRotation", Some("a"), "kept", Some(in_state(OperationState::Pending)));
        m.object("CertificateRotation", Some("a"), "gone", Some(in_state(OperationState::Pending)));
        m.object("KmsKeyVaultMode", None, "gone", Some(in_state(OperationState::Pending)));
        m.forget_gone("CertificateRotation", |ns, name| ns == Some("a") && name == "kept");
        let text = m.encode();
        assert!(text.contains(r#"csop_resource_ready{kind="CertificateRotation",namespace="a",name="kept"}"#));
        assert!(!text.contains(r#"csop_resource_ready{kind="CertificateRotation",namespace="a",name="gone"}"#));
        assert!(text.contains(r#"csop_resource_ready{kind="KmsKeyVaultMode",namespace="",name="gone"}"#));
        assert!(text.contains(r#"csop_operations{kind="CertificateRotation",state="PENDING"} 1"#), "{text}");
    }

    #[test]
    fn a_stalled_reason_becomes_a_label_only_from_the_closed_set() {
        let m = Metrics::new();
        for i in 0..50 {
            let health = ObjectHealth {
                stalled: Some(ObjectHealth::stalled_reason(&format!("Made{i}Up"))),
                ..Default::default()
            };
            m.object("ClusterSecurityPolicy", Some("ns"), &format!("p{i}"), Some(health));
        }
        let text = m.encode();
        assert!(text.contains(r#"csop_stalled{kind="ClusterSecurityPolicy",reason="other"} 50"#), "{text}");
        assert!(!text.contains("Made"), "{text}");
    }

    #[test]
    fn reconciles_errors_and_durations_per_kind() {
        let m = Metrics::new();
        m.reconciled("KmsKeyVaultMode", Duration::from_millis(20), None);
        m.reconciled("KmsKeyVaultMode", Duration::from_millis(30), Some(Category::Conflict));
        let text = m.encode();
        assert!(text.contains(r#"csop_reconciliations_total{kind="KmsKeyVaultMode"} 2"#), "{text}");
        let errors =
            |category| format!(r#"csop_reconcile_errors_total{{kind="KmsKeyVaultMode",category="{category}"}}"#);
        assert!(text.contains(&format!("{} 1", errors("conflict"))), "{text}");
        assert!(text.contains(&format!("{} 0", errors("transient"))), "every category's series exists: {text}");
        assert!(text.contains(r#"csop_reconcile_duration_seconds_count{kind="KmsKeyVaultMode"} 2"#), "{text}");
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with EOF");
    }

    /// The catalogue (`cluster-security-operator metrics`) lists every family registered, and
    /// docs/operations.md documents each of them (and nothing that does not exist).
    #[test]
    fn the_catalogue_is_complete_and_documented() {
        let catalogue = Metrics::catalogue();
        let names: Vec<&str> = catalogue.lines().map(|l| l.split(' ').next().unwrap()).collect();
        let registered = include_str!("metrics.rs").matches(concat!("registry", ".register(")).count();
        assert_eq!(names.len(), registered, "every registered family is in the catalogue:\n{catalogue}");
        let doc = include_str!("../../../docs/operations.md");
        for name in &names {
            let shown = ["", "_total"].iter().any(|s| doc.contains(&format!("| `{name}{s}` |")));
            assert!(shown, "docs/operations.md does not document {name}");
        }
        for row in doc.lines().filter_map(|l| l.strip_prefix("| `csop_")) {
            let name = format!("csop_{}", row.split('`').next().unwrap());
            let base = name.strip_suffix("_total").unwrap_or(&name);
            assert!(names.contains(&base), "docs/operations.md documents {name}, which is not exported");
        }
    }

    #[test]
    fn stalled_objects_reviews_azure_requests_certificates_and_build_info() {
        let m = Metrics::new();
        let stalled = |reason| Some(ObjectHealth { stalled: Some(reason), ..Default::default() });
        m.object("CertificateRotation", Some("ns"), "a", stalled("InvalidCertificate"));
        m.object("CertificateRotation", Some("ns"), "b", stalled("InvalidCertificate"));
        m.object("CertificateRotation", Some("ns"), "a", stalled("NameConflict"));
        let text = m.encode();
        assert!(text.contains(r#"csop_stalled{kind="CertificateRotation",reason="InvalidCertificate"} 1"#), "{text}");
        assert!(text.contains(r#"csop_stalled{kind="CertificateRotation",reason="NameConflict"} 1"#), "{text}");
        m.object("CertificateRotation", Some("ns"), "a", None);
        assert!(m.encode().contains(r#"csop_stalled{kind="CertificateRotation",reason="NameConflict"} 0"#));

        m.review("ClusterSecurityPolicy", "CREATE", false, Duration::from_millis(3));
        m.review_shed("busy");
        m.azure_request("put_cluster", Some(202), Duration::from_millis(40));
        m.azure_request("put_cluster", None, Duration::from_millis(40));
        m.certificate("ns", "orders", CertificateSlot::External, Some((1_900_000_000, Some(1_890_000_000))));
        let text = m.encode();
        for line in [
            r#"csop_webhook_requests_total{kind="ClusterSecurityPolicy",operation="CREATE",allowed="false"} 1"#,
            r#"csop_webhook_request_duration_seconds_count{kind="ClusterSecurityPolicy"} 1"#,
            r#"csop_webhook_requests_shed_total{why="busy"} 1"#,
            r#"csop_azure_requests_total{operation="put_cluster",code="202"} 1"#,
            r#"csop_azure_requests_total{operation="put_cluster",code="transport"} 1"#,
            r#"csop_azure_request_duration_seconds_count{operation="put_cluster"} 2"#,
            r#"csop_certificate_expiration_timestamp_seconds{namespace="ns",name="orders",slot="external"} 1900000000"#,
            r#"csop_certificate_renewal_timestamp_seconds{namespace="ns",name="orders",slot="external"} 1890000000"#,
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(text.contains(&format!(r#"csop_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"))), "{text}");
        m.certificate("ns", "orders", CertificateSlot::External, None);
        assert!(!m.encode().contains("namespace=\"ns\",name=\"orders\""));
    }

    #[test]
    fn review_labels_come_from_a_closed_set_whatever_the_request_says() {
        let m = Metrics::new();
        let t = Duration::from_millis(1);
        for i in 0..50 {
            m.review(&format!("Kind{i}{}", "x".repeat(1000)), &format!("OP{i}"), true, t);
        }
        m.review("KmsKeyVaultMode", "DELETE", true, t);
        let text = m.encode();
        assert!(
            text.contains(r#"csop_webhook_requests_total{kind="other",operation="other",allowed="true"} 50"#),
            "{text}"
        );
        assert!(
            text.contains(r#"csop_webhook_requests_total{kind="KmsKeyVaultMode",operation="DELETE",allowed="true"} 1"#)
        );
        assert!(!text.contains("Kind0"), "a request's kind became a label");
        assert!(text.len() < 20_000, "the exposition grew with the requests: {} bytes", text.len());
    }
}
