//! A KMS v1 plugin for the testbed: the gRPC service kube-apiserver calls to wrap and unwrap the
//! data keys of envelope encryption (`k8s.io/apiserver/.../envelope/v1beta1`, service
//! `v1beta1.KeyManagementService`: Version, Encrypt, Decrypt), served with tonic on an abstract
//! unix socket.
//! It encrypts with AES-256-GCM under a key that lives as long as the plugin: what the Azure key
//! vault key is to AKS. Test code: it stands in for the cloud's KMS plugin.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use tonic::codegen::{http, Service};
use tonic::{Request, Response, Status};

/// Prefix of the KMS provider names in the EncryptionConfiguration (see [`provider_name`]).
pub const PROVIDER_NAME: &str = "azurekmsprovider";

#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionRequest {
    #[prost(string, tag = "1")]
    pub version: String,
}
#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionResponse {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    #[prost(string, tag = "3")]
    pub runtime_version: String,
}
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncryptRequest {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(bytes = "vec", tag = "2")]
    pub plain: Vec<u8>,
}
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncryptResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub cipher: Vec<u8>,
}
#[derive(Clone, PartialEq, prost::Message)]
pub struct DecryptRequest {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(bytes = "vec", tag = "2")]
    pub cipher: Vec<u8>,
}
#[derive(Clone, PartialEq, prost::Message)]
pub struct DecryptResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub plain: Vec<u8>,
}

/// The key and counters of a running plugin.
pub struct Keyring {
    key: LessSafeKey,
    rng: SystemRandom,
    pub encrypts: AtomicU64,
    pub decrypts: AtomicU64,
}

impl Keyring {
    fn new() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let mut bytes = [0u8; 32];
        rng.fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| anyhow::anyhow!("AES key"))?);
        Ok(Self { key, rng, encrypts: AtomicU64::new(0), decrypts: AtomicU64::new(0) })
    }

    fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, Status> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| Status::internal("no randomness"))?;
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .map_err(|_| Status::internal("seal failed"))?;
        self.encrypts.fetch_add(1, Ordering::Relaxed);
        Ok([nonce.as_slice(), &data].concat())
    }

    fn decrypt(&self, cipher: &[u8]) -> Result<Vec<u8>, Status> {
        if cipher.len() < NONCE_LEN {
            return Err(Status::invalid_argument("cipher too short"));
        }
        let (nonce, sealed) = cipher.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Status::invalid_argument("nonce"))?;
        let mut data = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut data)
            .map_err(|_| Status::invalid_argument("not encrypted with this plugin's key"))?;
        self.decrypts.fetch_add(1, Ordering::Relaxed);
        Ok(plain.to_vec())
    }
}

/// One unary method as a tower service (what tonic's code generator would emit per method).
struct Unary<F, Req, Resp>(F, PhantomData<fn(Req) -> Resp>);

impl<F, Req, Resp> Service<Request<Req>> for Unary<F, Req, Resp>
where
    F: Fn(Req) -> Result<Resp, Status>,
{
    type Response = Response<Resp>;
    type Error = Status;
    type Future = std::future::Ready<Result<Response<Resp>, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Req>) -> Self::Future {
        std::future::ready((self.0)(req.into_inner()).map(Response::new))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, std::convert::Infallible>> + Send>>;

/// The KeyManagementService routes.
#[derive(Clone)]
struct KmsService(Arc<Keyring>);

impl tonic::server::NamedService for KmsService {
    const NAME: &'static str = "v1beta1.KeyManagementService";
}

async fn unary<Req, Resp, F>(f: F, req: http::Request<tonic::body::Body>) -> http::Response<tonic::body::Body>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: Fn(Req) -> Result<Resp, Status> + Send + 'static,
{
    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Resp, Req>::default());
    grpc.unary(Unary(f, PhantomData), req).await
}

impl Service<http::Request<tonic::body::Body>> for KmsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let keys = self.0.clone();
        match req.uri().path() {
            "/v1beta1.KeyManagementService/Version" => Box::pin(async move {
                let version = |_: VersionRequest| {
                    Ok(VersionResponse {
                        version: "v1beta1".into(),
                        runtime_name: "csop-testbed-kms".into(),
                        runtime_version: env!("CARGO_PKG_VERSION").into(),
                    })
                };
                Ok(unary(version, req).await)
            }),
            "/v1beta1.KeyManagementService/Encrypt" => Box::pin(async move {
                let encrypt = move |r: EncryptRequest| Ok(EncryptResponse { cipher: keys.encrypt(&r.plain)? });
                Ok(unary(encrypt, req).await)
            }),
            "/v1beta1.KeyManagementService/Decrypt" => Box::pin(async move {
                let decrypt = move |r: DecryptRequest| Ok(DecryptResponse { plain: keys.decrypt(&r.cipher)? });
                Ok(unary(decrypt, req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// A running plugin; stops when dropped.
pub struct KmsPlugin {
    /// The `endpoint` of the provider entry: `unix:///@<name>`.
    pub endpoint: String,
    pub keys: Arc<Keyring>,
    task: tokio::task::JoinHandle<()>,
}

impl KmsPlugin {
    /// Serve on a fresh Linux abstract unix socket. Abstract, because kube-apiserver v1.20's
    /// gRPC client sends the socket address as the HTTP/2 `:authority`, and a filesystem path
    /// (with `/`) is not a valid authority for the HTTP/2 server, while `@name` is; nothing is
    /// left on disk either.
    pub async fn start() -> anyhow::Result<Self> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("csop-kms-{}", crate::pki::random_hex());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let std_listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        let keys = Arc::new(Keyring::new()?);
        let svc = KmsService(keys.clone());
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let task = tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming).await {
                tracing::error!(error = %e, "KMS plugin stopped");
            }
        });
        Ok(Self { endpoint: format!("unix:///@{name}"), keys, task })
    }

    /// The EncryptionConfiguration for this plugin (see [`encryption_config`]).
    pub fn encryption_config(&self, active_vault: Option<&str>, vaults: &[&str]) -> String {
        encryption_config(&self.endpoint, active_vault, vaults)
    }
}

/// Name of the KMS provider entry for a key vault: a new vault (key) gets a provider of its own,
/// so the API server sees values written under the previous one as stale and a no-op write
/// rewrites them (as AKS names its provider after the key).
pub fn provider_name(vault: &str) -> String {
    format!("{PROVIDER_NAME}-{vault}")
}

/// EncryptionConfiguration for Secrets with the plugin at `endpoint`. With KMS on (`active_vault`),
/// that vault's `kms` provider comes first (new writes are encrypted with it); with KMS off,
/// `identity` comes first (new writes are plaintext). The other providers stay listed to read what
/// is still stored under them (the seed: the key stays needed after KMS is off).
pub fn encryption_config(endpoint: &str, active_vault: Option<&str>, vaults: &[&str]) -> String {
    let kms = |vault: &str| {
        format!(
            "    - kms:\n        name: {}\n        endpoint: {endpoint}\n        cachesize: 1000\n        timeout: 3s\n",
            provider_name(vault),
        )
    };
    let mut providers = String::new();
    if let Some(v) = active_vault {
        providers.push_str(&kms(v));
    }
    providers.push_str("    - identity: {}\n");
    for v in vaults.iter().filter(|v| Some(**v) != active_vault) {
        providers.push_str(&kms(v));
    }
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n{providers}"
    )
}

impl Drop for KmsPlugin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether etcd holds the value encrypted by the KMS provider of `vault`
/// (`k8s:enc:kms:v1:<provider>:`).
pub fn stored_with_kms(value: &[u8], vault: &str) -> bool {
    value.starts_with(format!("k8s:enc:kms:v1:{}:", provider_name(vault)).as_bytes())
}

/// Whether etcd holds the value in plaintext (protobuf with the `k8s\0` magic).
pub fn stored_plain(value: &[u8]) -> bool {
    value.starts_with(b"k8s\0")
}
