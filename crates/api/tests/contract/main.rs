//! The contract, checked without a cluster: every validation rule, the generated CRDs against
//! crds/ (and the copies in deploy/ and the chart), and the Argo CD health check against status
//! fixtures.

mod argocd_health;
mod crds_up_to_date;
mod validation_rules;
