//! Every rule of API.md as pure functions, shared by the admission webhook and the reconcilers.
//! A rejection names the rule it breaks, the field, and how to fix it.

use std::fmt;

use crate::{
    AuthMethod, CertificateRotationSpec, CertificateType, ClientBroker, ClusterRef, ClusterSecurityPolicySpec,
    ControllerListener, IamAuthentication, KmsKeyVaultModeSpec, Mounts, NetworkAccess, TlsAuthentication,
};

/// Names of the rules, as they appear in messages; docs/api.md explains each under its name.
#[allow(missing_docs)]
pub mod rule {
    pub const AUTH_REQUIRED: &str = "AtLeastOneAuthenticationMethod";
    pub const AUTH_ENCRYPTION_TABLE: &str = "AuthenticationEncryptionCompatibility";
    pub const IN_CLUSTER_IMMUTABLE: &str = "InClusterEncryptionImmutable";
    pub const CLUSTER_REF: &str = "ClusterRefName";
    pub const SECRET_REF: &str = "SecretRefName";
    pub const ROLLOUT_TIMEOUT: &str = "RolloutTimeout";
    pub const CERTIFICATE_REQUIRED: &str = "AtLeastOneCertificate";
    pub const LABEL_VALUE: &str = "CertificateLabelValue";
    pub const INTERNAL_SELFSIGNED: &str = "InternalCertificatesSelfSigned";
    pub const TYPE_FIELDS: &str = "CertificateTypeFields";
    pub const DNS_NAMES: &str = "CertificateDnsNames";
    pub const VALIDITY: &str = "CertificateValidity";
    pub const KEY_ID: &str = "KeyIdSyntax";
    pub const KEY_VAULT_RESOURCE_ID: &str = "KeyVaultResourceIdSyntax";
    pub const KEY_VAULT_MATCH: &str = "KeyVaultMatchesKeyId";
    pub const PROVIDER: &str = "ExactlyOneProvider";
    pub const REENCRYPTION: &str = "ReencryptionSettings";
    pub const ROLLBACK_AFTER: &str = "RollbackAfterSeconds";
    pub const ONE_PER_CLUSTER: &str = "OneKmsKeyVaultModePerCluster";
    pub const CLUSTER_REF_IMMUTABLE: &str = "ClusterRefImmutable";
    pub const ONE_PER_WORKLOAD: &str = "OneResourcePerWorkload";
    pub const CA_CERTIFICATE_ONLY: &str = "CaCertificateOnly";
    pub const AZURE_NAMES: &str = "AzureResourceNames";
    pub const IAM_TOKEN_VALIDATION: &str = "IamTokenValidation";
    pub const MOUNTS_CONTAINER: &str = "MountsContainerName";
    pub const CONTROLLER_LISTENER: &str = "ControllerListener";
    pub const TLS_CLIENTS: &str = "TlsClients";
    pub const CA_RENEWAL: &str = "CaRenewal";
    pub const MAINTENANCE_WINDOWS: &str = "MaintenanceWindows";
    pub const TRUST_DISTRIBUTION: &str = "TrustDistribution";
    pub const PROPERTIES_VALUE: &str = "PropertiesValueSyntax";
    pub const CLIENT_NOT_BROKER: &str = "ClientNotBroker";

    /// Every rule, for tests and docs that must cover them all.
    pub const ALL: &[&str] = &[
        AUTH_REQUIRED,
        AUTH_ENCRYPTION_TABLE,
        IN_CLUSTER_IMMUTABLE,
        CLUSTER_REF,
        SECRET_REF,
        ROLLOUT_TIMEOUT,
        CERTIFICATE_REQUIRED,
        LABEL_VALUE,
        INTERNAL_SELFSIGNED,
        TYPE_FIELDS,
        DNS_NAMES,
        VALIDITY,
        KEY_ID,
        KEY_VAULT_RESOURCE_ID,
        KEY_VAULT_MATCH,
        PROVIDER,
        REENCRYPTION,
        ROLLBACK_AFTER,
        ONE_PER_CLUSTER,
        CLUSTER_REF_IMMUTABLE,
        ONE_PER_WORKLOAD,
        CA_CERTIFICATE_ONLY,
        AZURE_NAMES,
        IAM_TOKEN_VALIDATION,
        MOUNTS_CONTAINER,
        CONTROLLER_LISTENER,
        TLS_CLIENTS,
        CA_RENEWAL,
        MAINTENANCE_WINDOWS,
        TRUST_DISTRIBUTION,
        PROPERTIES_VALUE,
        CLIENT_NOT_BROKER,
    ];
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule's name (see [`rule`]).
    pub rule: &'static str,
    /// Path of the offending field, e.g. `spec.encryptionInTransit.clientBroker`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (rule {})", self.field, self.message, self.rule)
    }
}

/// All broken rules of one object; empty means valid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations(pub Vec<Violation>);

impl Violations {
    /// One broken rule: `rule` (see [`rule`]), the offending `field`'s path, what is wrong.
    pub fn one(rule: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut out = Self::default();
        out.push(rule, field, message);
        out
    }
    /// These and `more`.
    pub fn and(mut self, more: Violations) -> Self {
        self.0.extend(more.0);
        self
    }
    fn push(&mut self, rule: &'static str, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Violation { rule, field: field.into(), message: message.into() });
    }
    /// No rule is broken.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Ok when no rule is broken.
    pub fn into_result(self) -> Result<(), Violations> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
    /// The names of the broken rules, in the order found.
    pub fn rules(&self) -> Vec<&'static str> {
        self.0.iter().map(|v| v.rule).collect()
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for Violations {}

// ---------------------------------------------------------------------------------------------
// Shared syntax checks

/// A user's value quoted for a message: whole when short, else its start and its length, so
/// that an oversized value never makes an oversized error (or log line, or event).
pub fn quoted(value: &str) -> String {
    const SHOWN: usize = 64;
    if value.chars().count() <= SHOWN {
        format!("{value:?}")
    } else {
        let start: String = value.chars().take(SHOWN).collect();
        format!("{start:?}… ({} characters)", value.chars().count())
    }
}

/// Kubernetes label value: at most 63 characters, alphanumerics with `-`, `_`, `.` inside.
pub fn label_value_error(value: &str) -> Option<String> {
    if value.len() > 63 {
        return Some(format!("must be at most 63 characters, got {}", value.chars().count()));
    }
    let bytes = value.as_bytes();
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Some(format!(
            "may contain only letters, digits, '-', '_' and '.', found {bad:?} (Kubernetes label value syntax)"
        ));
    }
    if !bytes.is_empty() && (!alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1])) {
        return Some("must begin and end with a letter or digit (Kubernetes label value syntax)".into());
    }
    None
}

/// DNS-1123 subdomain, the syntax of most object names (Secrets, StatefulSets, Deployments).
pub fn dns_subdomain_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 253 {
        return Some(format!("must be at most 253 characters, got {}", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty()
            || !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Some(format!(
                "{} is not a valid name: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit",
                quoted(name)
            ));
        }
    }
    None
}

/// A DNS name for a certificate SAN; a leading `*.` wildcard is allowed.
fn dns_name_error(name: &str) -> Option<String> {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    let ok = !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    (!ok).then(|| format!("{} is not a valid DNS name", quoted(name)))
}

fn validate_cluster_ref(r: &ClusterRef, out: &mut Violations) {
    if let Some(e) = dns_subdomain_error(&r.name) {
        out.push(
            rule::CLUSTER_REF,
            "spec.clusterRef.name",
            format!("{e}; name the StatefulSet or Deployment that runs the brokers"),
        );
    }
}

/// `spec.mounts.container` names a container: a DNS-1123 label.
fn validate_mounts(mounts: Option<&Mounts>, out: &mut Violations) {
    let Some(name) = mounts.and_then(|m| m.container.as_deref()) else { return };
    let label = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !label {
        out.push(
            rule::MOUNTS_CONTAINER,
            "spec.mounts.container",
            format!("{} is not a container name (lower-case letters, digits and '-', at most 63); give the name of the broker container in the pod template, or leave it out for the first container", quoted(name)),
        );
    }
}

fn validate_rollout_timeout(secs: u32, out: &mut Violations) {
    if secs == 0 {
        out.push(rule::ROLLOUT_TIMEOUT, "spec.rolloutTimeoutSeconds", "must be at least 1 second (default 600)");
    }
}

// ---------------------------------------------------------------------------------------------
// ClusterSecurityPolicy

/// Why `value` may not become a `server.properties` value, if it may not. The file is read by
/// `java.util.Properties` (ISO-8859-1, `\` escapes such as `\u0024`, a `\` at a line's end
/// continues it, a line break starts a property of its own, leading blanks are dropped), and
/// Kafka then resolves `${provider:path:key}` in every value. So a value is printable ASCII
/// without blanks, backslashes or `${`: nothing in it can add a property, change another, or
/// have the brokers read one of their files (their ServiceAccount token) into it.
pub fn properties_value_error(value: &str) -> Option<String> {
    if value.contains("${") {
        return Some(
            "contains \"${\", Kafka's config-provider syntax: the brokers would resolve it and read one of their files (their ServiceAccount token, say) into the value; give the value itself, without \"${\""
                .to_string(),
        );
    }
    let bad = value.chars().find(|c| !c.is_ascii_graphic() || *c == '\\')?;
    let what = match bad {
        '\n' | '\r' => "a line break (it would start a property of its own in server.properties)".to_string(),
        '\\' => {
            "a backslash (an escape in server.properties: \\u0024{ reads as ${, a trailing one joins the next line)"
                .to_string()
        }
        c if c.is_whitespace() => format!("white space ({c:?}; the properties file drops or splits on it)"),
        c if c.is_control() => format!("a control character ({c:?})"),
        c => format!("{c:?}, which is not ASCII (Kafka reads server.properties as ISO-8859-1)"),
    };
    Some(format!(
        "contains {what}; values written into server.properties must be printable ASCII without white space or backslashes: give the value exactly as the token or URL carries it (percent-encode in a URL)"
    ))
}

/// Client-broker encryption settings each authentication method allows, and whether it needs
/// in-cluster encryption: the seed's table.
pub fn allowed_encryption(method: AuthMethod) -> (&'static [ClientBroker], bool) {
    use ClientBroker::*;
    match method {
        AuthMethod::Unauthenticated => (&[Tls, Plaintext, TlsPlaintext], false),
        AuthMethod::MutualTls => (&[Tls, TlsPlaintext], true),
        AuthMethod::SaslScram | AuthMethod::SaslIam => (&[Tls], true),
    }
}

/// SASL/IAM needs what the brokers check each token against: without an issuer, an audience and
/// a key set the validating handler cannot work (and Kafka's default handler would accept
/// unsigned tokens, which the operator never renders).
fn validate_iam(iam: &IamAuthentication, out: &mut Violations) {
    const FIELD: &str = "spec.clientAuthentication.sasl.iam";
    let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
    for (value, name, example) in [
        (&iam.issuer, "issuer", "https://login.example.com/tenant"),
        (&iam.audience, "audience", "kafka"),
        (&iam.jwks_endpoint_url, "jwksEndpointUrl", "https://login.example.com/tenant/keys"),
    ] {
        if blank(value) {
            out.push(
                rule::IAM_TOKEN_VALIDATION,
                format!("{FIELD}.{name}"),
                format!("SASL/IAM is enabled but {name} is not set; the brokers validate every token's signature, issuer and audience: set {name} (e.g. {example}) or disable sasl.iam"),
            );
        } else if let Some(e) = value.as_deref().and_then(properties_value_error) {
            out.push(rule::PROPERTIES_VALUE, format!("{FIELD}.{name}"), format!("{name} {e}"));
        }
    }
    if let Some(url) = iam.jwks_endpoint_url.as_deref().filter(|s| !s.trim().is_empty()) {
        let authority = url.strip_prefix("https://").map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
        match authority {
            None => out.push(
                rule::IAM_TOKEN_VALIDATION,
                format!("{FIELD}.jwksEndpointUrl"),
                format!("{} must be an https URL: the brokers fetch the keys that sign tokens from it, and a key set read without TLS could be replaced by anyone on the path", quoted(url)),
            ),
            Some(a) if a.is_empty() || a.contains('@') => out.push(
                rule::IAM_TOKEN_VALIDATION,
                format!("{FIELD}.jwksEndpointUrl"),
                format!("{} must name a host and no user information: https://<host>/<path>", quoted(url)),
            ),
            Some(_) => {}
        }
    }
}

/// Listener names and ports the operator renders itself (`spec.controllerListener` must not
/// take them).
pub const OPERATOR_LISTENERS: &[&str] =
    &["PLAINTEXT", "TLS", "TLS_UNAUTHENTICATED", "SASL_SCRAM", "SASL_IAM", "REPLICATION"];
/// Ports of those listeners.
pub const OPERATOR_PORTS: &[u16] = &[9091, 9092, 9094, 9095, 9096, 9098];

/// The KRaft controller listener: a name and port of its own, and the one the quorum runs — it
/// cannot change in a rolling restart (voters on both sides of the roll would not reach each
/// other), so it is fixed once set.
fn validate_controller_listener(
    listener: Option<&ControllerListener>,
    old: Option<&ControllerListener>,
    out: &mut Violations,
) {
    const FIELD: &str = "spec.controllerListener";
    if let (Some(old), new) = (old, listener) {
        if new != Some(old) {
            out.push(
                rule::CONTROLLER_LISTENER,
                FIELD,
                format!(
                    "the controller listener {}://:{} ({}) cannot change or go: the controllers of a running quorum would not reach each other in the middle of a rolling restart; keep it as it was (a new quorum is a new cluster)",
                    old.name, old.port, old.protocol.as_str()
                ),
            );
            return;
        }
    }
    let Some(l) = listener else { return };
    let name_ok = !l.name.is_empty()
        && l.name.len() <= 64
        && l.name.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
        && l.name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !name_ok {
        out.push(
            rule::CONTROLLER_LISTENER,
            format!("{FIELD}.name"),
            format!("{} is not a listener name: upper-case letters, digits and '_', starting with a letter (e.g. CONTROLLER); give the name in the brokers' controller.listener.names", quoted(&l.name)),
        );
    } else if OPERATOR_LISTENERS.contains(&l.name.as_str()) {
        out.push(
            rule::CONTROLLER_LISTENER,
            format!("{FIELD}.name"),
            format!("{} is a listener the operator renders for clients or replication; the controller listener needs a name of its own (e.g. CONTROLLER)", quoted(&l.name)),
        );
    }
    if l.port == 0 || OPERATOR_PORTS.contains(&l.port) {
        out.push(
            rule::CONTROLLER_LISTENER,
            format!("{FIELD}.port"),
            format!("port {} is not free for the controller listener: the operator's listeners use 9091, 9092, 9094, 9095, 9096 and 9098; give the port the quorum runs on (e.g. 9093)", l.port),
        );
    }
}

/// Names the operator derives from the cluster's name for its own Secrets and ConfigMaps.
fn derived_names(cluster: &str) -> Vec<String> {
    [
        "security",
        "client-ca",
        "client-ca-key",
        "external-tls",
        "internal-tls",
        "external-ca",
        "internal-ca",
        "external-trust",
    ]
    .iter()
    .map(|s| format!("{cluster}-{s}"))
    .collect()
}

/// Whether a client called `client` would carry the name of brokers whose certificates name
/// `broker` (the cluster's name, or the workload's service): that name itself, in any case, or a
/// DNS name under it (`<service>.<namespace>.svc`, the names in their certificates), which a
/// principal mapping of the platform's could turn into theirs.
pub fn names_broker(client: &str, broker: &str) -> bool {
    let (client, broker) = (client.to_ascii_lowercase(), broker.to_ascii_lowercase());
    !broker.is_empty() && (client == broker || client.starts_with(&format!("{broker}.")))
}

/// Why a client may not be called `name`: the brokers' certificates carry it.
pub fn client_is_broker(name: &str) -> String {
    format!(
        "{} is, or is a DNS name under, the name in the brokers' own certificates (their service, or the cluster's name): a client certificate for it could carry the brokers' principal (the one usually in super.users); give the client a name of its own (e.g. <team>.<application>)",
        quoted(name)
    )
}

/// Client certificates on request: signed by the operator's own client CA, each into a Secret of
/// its own that is not one of the operator's other objects, never for a broker's name.
fn validate_tls_clients(tls: &TlsAuthentication, cluster: &str, out: &mut Violations) {
    if tls.clients.is_empty() {
        return;
    }
    const FIELD: &str = "spec.clientAuthentication.tls.clients";
    if !tls.enabled {
        out.push(
            rule::TLS_CLIENTS,
            FIELD,
            "client certificates are for mTLS: set tls.enabled: true, or remove clients",
        );
    }
    if !tls.certificate_authority_secret_refs.is_empty() {
        out.push(
            rule::TLS_CLIENTS,
            FIELD,
            "the operator issues client certificates only from the client CA it keeps, and certificateAuthoritySecretRefs names CAs whose keys it does not have: remove certificateAuthoritySecretRefs, or issue the client certificates from your CA yourself",
        );
    }
    let taken = derived_names(cluster);
    let reserved = derived_names("");
    let mut names = std::collections::BTreeSet::new();
    let mut secrets = std::collections::BTreeSet::new();
    for (i, c) in tls.clients.iter().enumerate() {
        let name_ok = !c.name.is_empty()
            && c.name.len() <= 64
            && c.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            out.push(
                rule::TLS_CLIENTS,
                format!("{FIELD}[{i}].name"),
                format!("{} is not a client name: letters, digits, '.', '_' and '-', at most 64 (it becomes the certificate's CN, the principal User:CN=<name>)", quoted(&c.name)),
            );
        } else if !names.insert(c.name.as_str()) {
            out.push(
                rule::TLS_CLIENTS,
                format!("{FIELD}[{i}].name"),
                format!("{} is listed twice; one certificate per client", quoted(&c.name)),
            );
        } else if names_broker(&c.name, cluster) {
            out.push(rule::CLIENT_NOT_BROKER, format!("{FIELD}[{i}].name"), client_is_broker(&c.name));
        }
        if let Some(e) = dns_subdomain_error(&c.secret_name) {
            out.push(rule::TLS_CLIENTS, format!("{FIELD}[{i}].secretName"), e);
        } else if taken.contains(&c.secret_name) {
            out.push(
                rule::TLS_CLIENTS,
                format!("{FIELD}[{i}].secretName"),
                format!(
                    "{} is one of the operator's own objects for this cluster; give the client's Secret another name",
                    quoted(&c.secret_name)
                ),
            );
        } else if let Some(suffix) = reserved.iter().find(|r| c.secret_name.ends_with(r.as_str())) {
            out.push(
                rule::TLS_CLIENTS,
                format!("{FIELD}[{i}].secretName"),
                format!(
                    "{} ends in {suffix}, a name the operator gives its own objects of a cluster (another cluster in this namespace may be called so); give the client's Secret a name that does not end in -security, -client-ca, -client-ca-key, -external-tls, -internal-tls, -external-ca, -internal-ca or -external-trust",
                    quoted(&c.secret_name)
                ),
            );
        } else if !secrets.insert(c.secret_name.as_str()) {
            out.push(
                rule::TLS_CLIENTS,
                format!("{FIELD}[{i}].secretName"),
                format!("{} is used by two clients; each client gets a Secret of its own", quoted(&c.secret_name)),
            );
        }
    }
}

/// Validate a ClusterSecurityPolicy spec; `old` is the stored spec on update.
pub fn security_policy(
    spec: &ClusterSecurityPolicySpec,
    old: Option<&ClusterSecurityPolicySpec>,
) -> Result<(), Violations> {
    let mut out = Violations::default();
    validate_cluster_ref(&spec.cluster_ref, &mut out);
    validate_rollout_timeout(spec.rollout_timeout_seconds, &mut out);
    validate_mounts(spec.mounts.as_ref(), &mut out);
    validate_controller_listener(
        spec.controller_listener.as_ref(),
        old.and_then(|o| o.controller_listener.as_ref()),
        &mut out,
    );

    let auth = &spec.client_authentication;
    let methods = auth.enabled_methods();
    if methods.is_empty() {
        out.push(
            rule::AUTH_REQUIRED,
            "spec.clientAuthentication",
            "no authentication method is enabled; enable at least one of unauthenticated, tls, sasl.scram or sasl.iam",
        );
    }
    let enc = &spec.encryption_in_transit;
    for method in &methods {
        let (brokers, needs_in_cluster) = allowed_encryption(*method);
        if !brokers.contains(&enc.client_broker) {
            let allowed: Vec<&str> = brokers.iter().map(|b| b.as_str()).collect();
            out.push(
                rule::AUTH_ENCRYPTION_TABLE,
                "spec.encryptionInTransit.clientBroker",
                format!(
                    "{} authentication allows client-broker encryption {}, not {}; with IAM, SASL or TLS authentication, encryption between clients and brokers must be on: set clientBroker to {} or disable {}",
                    method.label(),
                    allowed.join(" or "),
                    enc.client_broker.as_str(),
                    allowed[0],
                    method.label()
                ),
            );
        }
        if needs_in_cluster && !enc.in_cluster {
            out.push(
                rule::AUTH_ENCRYPTION_TABLE,
                "spec.encryptionInTransit.inCluster",
                format!(
                    "{} authentication requires broker-to-broker encryption (inCluster: true); only unauthenticated access works with inCluster: false",
                    method.label()
                ),
            );
        }
    }
    if let Some(tls) = &auth.tls {
        for (i, r) in tls.certificate_authority_secret_refs.iter().enumerate() {
            if let Some(e) = dns_subdomain_error(&r.name) {
                out.push(
                    rule::SECRET_REF,
                    format!("spec.clientAuthentication.tls.certificateAuthoritySecretRefs[{i}].name"),
                    e,
                );
            }
        }
    }
    if let Some(tls) = auth.tls.as_ref() {
        validate_tls_clients(tls, &spec.cluster_ref.name, &mut out);
    }
    if let Some(iam) = auth.iam() {
        validate_iam(iam, &mut out);
    }
    if let Some(old) = old {
        if old.encryption_in_transit.in_cluster != enc.in_cluster {
            out.push(
                rule::IN_CLUSTER_IMMUTABLE,
                "spec.encryptionInTransit.inCluster",
                format!(
                    "you can't change the in-cluster (broker-to-broker) encryption setting after creation (it is {}); put back inCluster: {} or create a new ClusterSecurityPolicy for a new cluster",
                    old.encryption_in_transit.in_cluster, old.encryption_in_transit.in_cluster
                ),
            );
        }
    }
    out.into_result()
}

// ---------------------------------------------------------------------------------------------
// CertificateRotation

fn validate_label(label: &str, field: &str, out: &mut Violations) {
    if label.is_empty() {
        out.push(
            rule::LABEL_VALUE,
            field,
            "must not be empty; set a unique string and change it to rotate the certificate",
        );
    } else if let Some(e) = label_value_error(label) {
        out.push(rule::LABEL_VALUE, field, format!("{} {e}", quoted(label)));
    }
}

fn validate_dns_names(names: &[String], field: &str, out: &mut Violations) {
    for (i, n) in names.iter().enumerate() {
        if let Some(e) = dns_name_error(n) {
            out.push(rule::DNS_NAMES, format!("{field}[{i}]"), e);
        }
    }
}

fn validate_validity(days: u32, field: &str, out: &mut Violations) {
    if !(1..=3650).contains(&days) {
        out.push(rule::VALIDITY, field, format!("must be between 1 and 3650 days, got {days}"));
    }
}

/// Validate a CertificateRotation spec (no old-vs-new rule applies to it).
pub fn certificate_rotation(spec: &CertificateRotationSpec) -> Result<(), Violations> {
    let mut out = Violations::default();
    validate_cluster_ref(&spec.cluster_ref, &mut out);
    validate_rollout_timeout(spec.rollout_timeout_seconds, &mut out);
    validate_mounts(spec.mounts.as_ref(), &mut out);
    if spec.external.is_none() && spec.internal.is_none() {
        out.push(rule::CERTIFICATE_REQUIRED, "spec", "set external, internal or both");
    }
    if let Some(ca) = &spec.ca {
        if ca.renewal_days >= ca.validity_days {
            out.push(
                rule::CA_RENEWAL,
                "spec.ca.renewalDays",
                format!(
                    "must be less than spec.ca.validityDays ({}), got {}: a CA is renewed that many days before it expires",
                    ca.validity_days, ca.renewal_days
                ),
            );
        }
    }
    if let Some(d) = &spec.trust_distribution {
        if spec.external.is_none() {
            out.push(
                rule::TRUST_DISTRIBUTION,
                "spec.trustDistribution",
                "copies the external trust bundle, so it needs spec.external; remove it or add external",
            );
        }
        for (i, ns) in d.namespaces.iter().enumerate() {
            if ns.len() > 63 || ns.contains('.') || dns_subdomain_error(ns).is_some() {
                out.push(
                    rule::TRUST_DISTRIBUTION,
                    format!("spec.trustDistribution.namespaces[{i}]"),
                    format!("{} is not a namespace name: lower-case letters, digits and '-', at most 63", quoted(ns)),
                );
            }
        }
        for (key, value) in d.namespace_selector.iter().flat_map(|s| &s.match_labels) {
            let bad_key =
                key.rsplit('/').next().is_none_or(|name| name.is_empty() || label_value_error(name).is_some());
            if bad_key || label_value_error(value).is_some() {
                out.push(
                    rule::TRUST_DISTRIBUTION,
                    format!("spec.trustDistribution.namespaceSelector.matchLabels[{key}]"),
                    format!(
                        "{}={} is not a label: use Kubernetes label key and value syntax",
                        quoted(key),
                        quoted(value)
                    ),
                );
            }
        }
    }
    for (i, w) in spec.maintenance_windows.iter().enumerate() {
        if let Err(e) = crate::maintenance::Window::parse(w) {
            out.push(rule::MAINTENANCE_WINDOWS, format!("spec.maintenanceWindows[{i}]"), e);
        }
    }
    if let Some(ext) = &spec.external {
        validate_label(&ext.label, "spec.external.label", &mut out);
        validate_validity(ext.validity_days, "spec.external.validityDays", &mut out);
        validate_dns_names(&ext.dns_names, "spec.external.dnsNames", &mut out);
        let set = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.is_empty());
        if ext.roll_on_source_change && ext.type_ != CertificateType::Secret {
            out.push(
                rule::TYPE_FIELDS,
                "spec.external.rollOnSourceChange",
                "is only used with type secret (it follows changes of that Secret); remove it or set type to secret",
            );
        }
        match ext.type_ {
            CertificateType::Selfsigned => {
                for (name, v) in [("secretName", &ext.secret_name), ("key", &ext.key), ("cert", &ext.cert), ("cacert", &ext.cacert)] {
                    if set(v) {
                        out.push(
                            rule::TYPE_FIELDS,
                            format!("spec.external.{name}"),
                            "is only used with type provided or secret; remove it or set type to provided or secret",
                        );
                    }
                }
            }
            CertificateType::Secret => match ext.secret_name.as_deref() {
                None | Some("") => out.push(
                    rule::TYPE_FIELDS,
                    "spec.external.secretName",
                    "type secret needs secretName: the Secret in this namespace that holds the key, certificate and CA certificate",
                ),
                Some(n) => {
                    if let Some(e) = dns_subdomain_error(n) {
                        out.push(rule::TYPE_FIELDS, "spec.external.secretName", e);
                    }
                }
            },
            CertificateType::Provided => {
                if set(&ext.secret_name) {
                    out.push(rule::TYPE_FIELDS, "spec.external.secretName", "is only used with type secret; remove it");
                }
                for (name, v) in [("key", &ext.key), ("cert", &ext.cert), ("cacert", &ext.cacert)] {
                    match v.as_deref() {
                        None | Some("") => out.push(
                            rule::TYPE_FIELDS,
                            format!("spec.external.{name}"),
                            "type provided needs key, cert and cacert as base64-encoded PEM values (or use type secret with a Secret)",
                        ),
                        Some(b64) => {
                            if let Some(e) = base64_pem_error(b64) {
                                out.push(rule::TYPE_FIELDS, format!("spec.external.{name}"), e);
                            } else if name == "cacert" && decoded_contains(b64, "PRIVATE KEY") {
                                out.push(
                                    rule::CA_CERTIFICATE_ONLY,
                                    "spec.external.cacert",
                                    "holds a private key block besides the CA certificate; cacert is published to \
                                     clients (the trust ConfigMap), so give only the CA certificate(s) \
                                     (openssl x509 -in ca.pem | base64 -w0)",
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(int) = &spec.internal {
        validate_label(&int.label, "spec.internal.label", &mut out);
        validate_validity(int.validity_days, "spec.internal.validityDays", &mut out);
        validate_dns_names(&int.dns_names, "spec.internal.dnsNames", &mut out);
        if int.type_ != CertificateType::Selfsigned {
            out.push(
                rule::INTERNAL_SELFSIGNED,
                "spec.internal.type",
                format!(
                    "internal certificates can only be self-generated: type must be selfsigned, not {}",
                    int.type_.as_str()
                ),
            );
        }
    }
    out.into_result()
}

/// Whether base64 `value` decodes to bytes containing `needle` (white space ignored).
fn decoded_contains(value: &str, needle: &str) -> bool {
    use base64::Engine as _;
    let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

/// A `provided` value must be base64 of a PEM block; says which without echoing the value
/// (it may be a private key).
fn base64_pem_error(value: &str) -> Option<String> {
    use base64::Engine as _;
    let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    match base64::engine::general_purpose::STANDARD.decode(compact.as_bytes()) {
        Err(_) => {
            Some("is not valid base64; give the PEM file base64-encoded on one line (base64 -w0 file.pem)".into())
        }
        Ok(bytes) if !bytes.windows(11).any(|w| w == b"-----BEGIN ") => {
            Some("decodes from base64 but is not PEM (no '-----BEGIN' line); encode the PEM file itself".into())
        }
        Ok(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// KmsKeyVaultMode

/// Parts of a key id `https://<vault>.vault.azure.net/keys/<name>/<version>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyId<'a> {
    /// `<vault>`.
    pub vault: &'a str,
    /// `<name>`.
    pub name: &'a str,
    /// `<version>`.
    pub version: &'a str,
}

fn vault_name_ok(v: &str) -> bool {
    (3..=24).contains(&v.len())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && v.as_bytes()[0].is_ascii_alphabetic()
        && !v.ends_with('-')
        && !v.contains("--")
}

/// DNS suffix of Key Vault in Azure's public cloud (`<vault>.vault.azure.net`); other clouds
/// have their own (`vault.azure.cn`, `vault.usgovcloudapi.net`), set with the operator's
/// `--azure-key-vault-dns-suffix`.
pub const DEFAULT_VAULT_DNS_SUFFIX: &str = "vault.azure.net";

/// Parse a Key Vault key id; the version is required (AKS needs a versioned key). The host is
/// `<vault>.<domain>` with a domain that starts with `vault.`, and nothing else: no user info, no
/// port, no query or fragment. Which domain is allowed is [`kms_key_vault_mode`]'s rule.
pub fn parse_key_id(key_id: &str) -> Result<KeyId<'_>, String> {
    parse_key_id_with_domain(key_id).map(|(k, _)| k)
}

fn parse_key_id_with_domain(key_id: &str) -> Result<(KeyId<'_>, &str), String> {
    const HINT: &str =
        "expected https://<vault>.vault.azure.net/keys/<key-name>/<key-version> (az keyvault key show --query key.kid)";
    let rest = key_id.strip_prefix("https://").ok_or_else(|| format!("must start with https://; {HINT}"))?;
    if let Some(c) = rest.chars().find(|c| matches!(c, '@' | '?' | '#' | '\\') || c.is_whitespace()) {
        return Err(format!("may not contain {c:?} (no user info, query or fragment); {HINT}"));
    }
    let (host, path) = rest.split_once('/').ok_or_else(|| format!("has no path; {HINT}"))?;
    if host.contains(':') {
        return Err(format!("host {} names a port; Key Vault is reached on 443 only; {HINT}", quoted(host)));
    }
    let (vault, domain) = host
        .split_once('.')
        .filter(|(_, domain)| domain.get(..6).is_some_and(|d| d.eq_ignore_ascii_case("vault.")))
        .ok_or_else(|| format!("host {} is not a key vault host; {HINT}", quoted(host)))?;
    if !vault_name_ok(vault) {
        return Err(format!(
            "vault name {} is not valid (3-24 letters, digits and '-', starting with a letter); {HINT}",
            quoted(vault)
        ));
    }
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["keys", name, version] if !name.is_empty() && !version.is_empty() => {
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(format!("key name {} may contain only letters, digits and '-'; {HINT}", quoted(name)));
            }
            if !version.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("key version {} may contain only letters and digits; {HINT}", quoted(version)));
            }
            Ok((KeyId { vault, name, version }, domain))
        }
        ["keys", _] | ["keys", _, ""] => Err(format!("has no key version; AKS needs a versioned key id; {HINT}")),
        _ => Err(format!("path must be /keys/<key-name>/<key-version>; {HINT}")),
    }
}

/// Azure's naming rules for a resource group: 1-90 letters, digits, '_', '-', '.', '(' and ')',
/// not ending in '.'.
fn resource_group_error(name: &str) -> Option<String> {
    let ok = (1..=90).contains(&name.chars().count())
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '(' | ')'))
        && !name.ends_with('.');
    (!ok).then(|| {
        format!(
            "{} is not a resource group name (1-90 letters, digits, '_', '-', '.', '(' or ')', not ending in '.')",
            quoted(name)
        )
    })
}

/// Azure's naming rules for a managed cluster: 1-63 letters, digits, '_' and '-', starting and
/// ending with a letter or digit.
fn managed_cluster_name_error(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let ok = (1..=63).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric();
    (!ok).then(|| {
        format!(
            "{} is not an AKS cluster name (1-63 letters, digits, '_' or '-', starting and ending with a letter or digit)",
            quoted(name)
        )
    })
}

/// Parse a key vault resource id; returns the vault name.
pub fn parse_key_vault_resource_id(id: &str) -> Result<&str, String> {
    const HINT: &str = "expected /subscriptions/<subscription-id>/resourceGroups/<group>/providers/Microsoft.KeyVault/vaults/<vault> (az keyvault show --query id)";
    let parts: Vec<&str> = id.split('/').collect();
    match parts.as_slice() {
        ["", subs, sub, rgs, rg, providers, ns, vaults, vault]
            if subs.eq_ignore_ascii_case("subscriptions")
                && rgs.eq_ignore_ascii_case("resourceGroups")
                && providers.eq_ignore_ascii_case("providers")
                && ns.eq_ignore_ascii_case("Microsoft.KeyVault")
                && vaults.eq_ignore_ascii_case("vaults") =>
        {
            if !is_guid(sub) {
                return Err(format!("subscription id {} is not a GUID; {HINT}", quoted(sub)));
            }
            if let Some(e) = resource_group_error(rg) {
                return Err(format!("{e}; {HINT}"));
            }
            if !vault_name_ok(vault) {
                return Err(format!(
                    "vault name {} is not valid (3-24 letters, digits and '-', starting with a letter); {HINT}",
                    quoted(vault)
                ));
            }
            Ok(vault)
        }
        _ => Err(HINT.to_string()),
    }
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Validate a KmsKeyVaultMode spec. `vault_dns_suffix` is the Key Vault domain of the cloud
/// the operator is configured for ([`DEFAULT_VAULT_DNS_SUFFIX`]): a key id on any other host is
/// refused, since AKS would be told to fetch its key encryption key there.
pub fn kms_key_vault_mode(spec: &KmsKeyVaultModeSpec, vault_dns_suffix: &str) -> Result<(), Violations> {
    let mut out = Violations::default();
    let key = match parse_key_id_with_domain(&spec.key_id) {
        Ok((k, domain)) if domain.eq_ignore_ascii_case(vault_dns_suffix) => Ok(k),
        Ok((_, domain)) => Err(format!(
            "is in domain {} but the operator is configured for key vaults in {} (--azure-key-vault-dns-suffix); \
             use https://<vault>.{vault_dns_suffix}/keys/<key-name>/<key-version>",
            quoted(domain),
            quoted(vault_dns_suffix)
        )),
        Err(e) => Err(e),
    };
    if let Err(e) = &key {
        out.push(rule::KEY_ID, "spec.keyId", e.clone());
    }
    match spec.key_vault_resource_id.as_deref().filter(|s| !s.is_empty()) {
        None if spec.network_access == NetworkAccess::Private => out.push(
            rule::KEY_VAULT_RESOURCE_ID,
            "spec.keyVaultResourceId",
            "networkAccess Private needs keyVaultResourceId, the resource id of the key vault (az keyvault show --query id)",
        ),
        None => {}
        Some(id) => match parse_key_vault_resource_id(id) {
            Err(e) => out.push(rule::KEY_VAULT_RESOURCE_ID, "spec.keyVaultResourceId", e),
            Ok(vault) => {
                if let Ok(k) = &key {
                    if !vault.eq_ignore_ascii_case(k.vault) {
                        out.push(
                            rule::KEY_VAULT_MATCH,
                            "spec.keyVaultResourceId",
                            format!("names vault {} but keyId is in vault {}; both must name the vault that holds the key", quoted(vault), quoted(k.vault)),
                        );
                    }
                }
            }
        },
    }
    match &spec.provider.azure {
        None => out.push(
            rule::PROVIDER,
            "spec.provider",
            "set provider.azure with subscriptionId, resourceGroup and clusterName of the AKS cluster",
        ),
        // These go into Resource Manager URLs: Azure's own naming rules, checked before they do.
        Some(az) => {
            if !is_guid(&az.subscription_id) {
                out.push(
                    rule::AZURE_NAMES,
                    "spec.provider.azure.subscriptionId",
                    format!("{} is not a GUID (az account show --query id)", quoted(&az.subscription_id)),
                );
            }
            if let Some(e) = resource_group_error(&az.resource_group) {
                out.push(rule::AZURE_NAMES, "spec.provider.azure.resourceGroup", e);
            }
            if let Some(e) = managed_cluster_name_error(&az.cluster_name) {
                out.push(rule::AZURE_NAMES, "spec.provider.azure.clusterName", e);
            }
        }
    }
    let r = &spec.reencryption;
    if !(1..=64).contains(&r.concurrency) {
        out.push(
            rule::REENCRYPTION,
            "spec.reencryption.concurrency",
            format!("must be between 1 and 64, got {}", r.concurrency),
        );
    }
    if !(1..=5000).contains(&r.page_size) {
        out.push(
            rule::REENCRYPTION,
            "spec.reencryption.pageSize",
            format!("must be between 1 and 5000, got {}", r.page_size),
        );
    }
    if !(60..=86400).contains(&spec.rollback_after_seconds) {
        out.push(
            rule::ROLLBACK_AFTER,
            "spec.rollbackAfterSeconds",
            format!(
                "must be between 60 and 86400 (how long KMS may stay off before the operator restores the \
                 settings it started from), got {}",
                spec.rollback_after_seconds
            ),
        );
    }
    out.into_result()
}

/// The rule that one managed cluster has one KmsKeyVaultMode: `others` are the other objects as
/// `(name, spec)`, not being deleted. Err names the one already managing the cluster, and the
/// way out. Azure names compare case-insensitively, as Azure Resource Manager does.
pub fn one_per_cluster<'a>(
    spec: &KmsKeyVaultModeSpec,
    others: impl IntoIterator<Item = (&'a str, &'a KmsKeyVaultModeSpec)>,
) -> Result<(), Violations> {
    let Some(mine) = &spec.provider.azure else { return Ok(()) };
    let same = |o: &KmsKeyVaultModeSpec| {
        o.provider.azure.as_ref().is_some_and(|a| {
            a.subscription_id.eq_ignore_ascii_case(&mine.subscription_id)
                && a.resource_group.eq_ignore_ascii_case(&mine.resource_group)
                && a.cluster_name.eq_ignore_ascii_case(&mine.cluster_name)
        })
    };
    let mut out = Violations::default();
    if let Some((name, _)) = others.into_iter().find(|(_, o)| same(o)) {
        out.push(
            rule::ONE_PER_CLUSTER,
            "spec.provider.azure",
            format!(
                "KmsKeyVaultMode {} already manages the KMS settings of managed cluster {}/{}; two objects would \
                 switch one cluster against each other. Change {} instead, or delete it first",
                quoted(name),
                mine.resource_group,
                mine.cluster_name,
                quoted(name)
            ),
        );
    }
    out.into_result()
}

/// `spec.clusterRef` is fixed once the resource has targeted a workload (`recorded`): a new
/// target is a new resource, so status and the artefacts never describe two workloads.
pub fn cluster_ref_unchanged(kind: &str, spec: &ClusterRef, recorded: &ClusterRef) -> Result<(), Violations> {
    let mut out = Violations::default();
    if spec != recorded {
        out.push(
            rule::CLUSTER_REF_IMMUTABLE,
            "spec.clusterRef",
            format!(
                "you can't change the workload after it has been targeted (it is {:?} {}); put it back, or create \
                 a new {kind} for {:?} {} (and delete this one; its artefacts stay with the default deletionPolicy)",
                recorded.kind,
                quoted(&recorded.name),
                spec.kind,
                quoted(&spec.name)
            ),
        );
    }
    out.into_result()
}

/// One resource of a kind per workload: `others` are the other objects of `kind` in the same
/// namespace as `(name, clusterRef)`, not being deleted.
pub fn one_per_workload<'a>(
    kind: &str,
    cluster_ref: &ClusterRef,
    others: impl IntoIterator<Item = (&'a str, &'a ClusterRef)>,
) -> Result<(), Violations> {
    let mut out = Violations::default();
    if let Some((name, _)) = others.into_iter().find(|(_, r)| *r == cluster_ref) {
        out.push(
            rule::ONE_PER_WORKLOAD,
            "spec.clusterRef",
            format!(
                "{kind} {} already targets {:?} {}; two would roll the same pods against each other. Change {} \
                 instead, or delete it first",
                quoted(name),
                cluster_ref.kind,
                quoted(&cluster_ref.name),
                quoted(name)
            ),
        );
    }
    out.into_result()
}
