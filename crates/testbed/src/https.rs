//! A loopback HTTPS server with a certificate from its own fresh CA: what the Azure emulator and
//! the test admission gate run on. Bind first (the port is known before the routes are built),
//! then serve.

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;

use crate::pki;

/// A bound, not yet serving, HTTPS listener on 127.0.0.1.
pub struct Https {
    listener: std::net::TcpListener,
    tls: RustlsConfig,
    pub port: u16,
    /// The CA that signed the serving certificate (for clients and caBundles).
    pub ca: pki::KeyedCert,
}

impl Https {
    /// Bind a free port; the certificate (CN `name`) is valid for 127.0.0.1 and localhost.
    pub async fn bind(name: &str) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let now = k8s_openapi::jiff::Timestamp::now();
        let ca = pki::new_ca(&format!("{name} CA"), now, 2)?;
        let sans = ["127.0.0.1".to_string(), "localhost".to_string()];
        let leaf = pki::issue_leaf(&ca, name, &sans, pki::Usage::Server, now, 2)?;
        let tls = RustlsConfig::from_pem(leaf.cert_pem.into_bytes(), leaf.key_pem.into_bytes()).await?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        Ok(Self { listener, tls, port, ca })
    }

    /// Serve `app` until the returned handle is shut down.
    pub async fn serve(self, app: Router, name: &'static str) -> axum_server::Handle {
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(self.listener, self.tls).handle(handle.clone());
        tokio::spawn(async move {
            if let Err(e) = server.serve(app.into_make_service()).await {
                tracing::error!(error = %e, server = name, "HTTPS server stopped");
            }
        });
        handle.listening().await;
        handle
    }
}
