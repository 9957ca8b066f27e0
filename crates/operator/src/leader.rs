//! Leader election over a coordination.k8s.io Lease (kube-lease-manager): with several replicas
//! only the holder of the lease runs the controllers; every replica serves the webhook.
//!
//! A replica that loses the lease exits instead of trying to stop its controllers mid-step:
//! every step is resumable from status, so the next leader (or this pod, restarted) carries on
//! where it stopped, and there is never a moment with two replicas reconciling on purpose.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// How a replica takes part in the election.
#[derive(Clone, Debug)]
pub(crate) struct Election {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Name of the Lease.
    pub lease: String,
    /// This replica's name in the Lease (the pod name).
    pub identity: String,
    /// How long a lease lasts without renewal: a killed leader is replaced after at most this.
    pub duration: Duration,
    /// How long before expiry the leader renews.
    pub renew_before: Duration,
}

/// This replica's membership in the election.
pub(crate) struct Leadership {
    leading: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
    identity: String,
}

impl Leadership {
    /// Join the election (the Lease is created when missing).
    pub(crate) async fn join(client: Client, e: &Election) -> Result<Self, LeaseManagerError> {
        let duration = e.duration.as_secs().max(2);
        let manager = LeaseManagerBuilder::new(client, &e.lease)
            .with_namespace(&e.namespace)
            .with_identity(&e.identity)
            .with_duration(duration)
            .with_grace(e.renew_before.as_secs().clamp(1, duration - 1))
            .build()
            .await?;
        let (leading, task) = manager.watch().await;
        info!(lease = %format!("{}/{}", e.namespace, e.lease), identity = %e.identity, "joined leader election");
        Ok(Self { leading, task, identity: e.identity.clone() })
    }

    /// Resolves once this replica holds the lease.
    pub(crate) async fn acquired(&mut self) {
        loop {
            if *self.leading.borrow_and_update() {
                info!(identity = %self.identity, "acquired the leader lease");
                return;
            }
            if self.leading.changed().await.is_err() {
                // The election task ended (it logged why); never resolve, so the caller keeps
                // waiting for a shutdown signal rather than reconciling without the lease.
                warn!("leader election stopped; this replica stays a standby");
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves when this replica no longer holds the lease (or the election task ended).
    pub(crate) async fn lost(&mut self) {
        loop {
            if self.leading.changed().await.is_err() || !*self.leading.borrow_and_update() {
                return;
            }
        }
    }

    /// Leave the election, releasing the lease when held, so a standby takes over at once
    /// instead of after the lease expires.
    pub(crate) async fn release(self) {
        drop(self.leading);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => info!(identity = %self.identity, "released the leader lease"),
            Ok(Ok(Err(e))) => warn!(error = %e, "could not release the leader lease; it expires on its own"),
            Ok(Err(e)) => warn!(error = %e, "leader election task failed"),
            Err(_) => warn!("releasing the leader lease timed out; it expires on its own"),
        }
    }
}

/// This replica's identity: the pod name, else the host name with a random suffix.
pub(crate) fn identity(pod_name: Option<&str>) -> String {
    match pod_name.filter(|s| !s.is_empty()) {
        Some(name) => name.to_string(),
        None => {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "cluster-security-operator".into());
            format!("{host}-{}", &crate::reconciler::operation::uuid_v4()[..8])
        }
    }
}
