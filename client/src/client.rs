//! `Client`: the typed calls of `rllr.v1` with auth, deadlines, retries and load balancing applied.
//!
//! One place decides how a request is sent (which endpoint, which metadata, which timeout) so every
//! RPC behaves the same. Unary calls are retried per [`RetryPolicy`] within the per-call timeout;
//! streams are opened once (a batch job retries at its own level, where it knows which items were
//! answered). Dropping a returned future cancels the call.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rllr_proto::v1::{
    self, model_service_client::ModelServiceClient, policy_service_client::PolicyServiceClient,
    reward_service_client::RewardServiceClient,
};
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use crate::error::{Error, Result};
use crate::pool::{Member, Pool, Resolve, SystemResolver, Target};
use crate::retry::RetryPolicy;

/// How to reach the server(s). Build with [`ClientConfig::new`], then [`ClientConfig::connect`].
#[derive(Clone)]
pub struct ClientConfig {
    /// `http://host:port` or `https://host:port`; calls are spread over all of them.
    pub endpoints: Vec<String>,
    /// Bearer token sent as `authorization: Bearer <token>`.
    pub api_key: Option<String>,
    /// PEM CA certificate that signed the server's certificate (https endpoints).
    pub ca_cert: Option<PathBuf>,
    /// Name to verify the server certificate against (default: the endpoint's host).
    pub tls_domain: Option<String>,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Budget of one call, retries and backoff included (None: no deadline).
    pub timeout: Option<Duration>,
    /// Retries of unary calls.
    pub retry: RetryPolicy,
    /// How often endpoint names are resolved again to follow pods that come and go (None: never;
    /// a name is then one connection to whichever address the connector picks).
    pub resolve_every: Option<Duration>,
    /// Turns names into addresses (default: the system resolver).
    pub resolver: Arc<dyn Resolve>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoints", &self.endpoints)
            .field("api_key", &self.api_key.as_ref().map(|_| "<hidden>"))
            .field("ca_cert", &self.ca_cert)
            .field("tls_domain", &self.tls_domain)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("resolve_every", &self.resolve_every)
            .finish_non_exhaustive()
    }
}

/// Default of [`ClientConfig::resolve_every`]: a few times per Kubernetes DNS TTL (30 s).
pub const RESOLVE_EVERY: Duration = Duration::from_secs(10);

impl ClientConfig {
    /// Defaults: no auth, plaintext unless an endpoint is https, 5 s to connect, 60 s per call,
    /// [`RetryPolicy::default`], names resolved by the system every [`RESOLVE_EVERY`].
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            api_key: None,
            ca_cert: None,
            tls_domain: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Some(Duration::from_secs(60)),
            retry: RetryPolicy::default(),
            resolve_every: Some(RESOLVE_EVERY),
            resolver: Arc::new(SystemResolver),
        }
    }

    /// Resolve endpoint names again this often (None: never).
    pub fn resolve_every(mut self, every: Option<Duration>) -> Self {
        self.resolve_every = every;
        self
    }

    /// Resolve names with this instead of the system resolver.
    pub fn resolver(mut self, r: Arc<dyn Resolve>) -> Self {
        self.resolver = r;
        self
    }

    /// Send this bearer token with every call.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Verify https endpoints against this PEM CA certificate.
    pub fn ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_cert = Some(path.into());
        self
    }

    /// Budget of one call (None: no deadline).
    pub fn timeout(mut self, t: Option<Duration>) -> Self {
        self.timeout = t;
        self
    }

    /// Retry policy of unary calls.
    pub fn retry(mut self, r: RetryPolicy) -> Self {
        self.retry = r;
        self
    }

    /// Build the client. Connections open lazily, on first use, so a server that is down at this
    /// moment does not fail construction (its calls get UNAVAILABLE and are retried).
    pub fn connect(self) -> Result<Client> {
        if self.endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let tls = self.tls_config()?;
        let targets = self
            .endpoints
            .iter()
            .map(|e| Target::parse(e))
            .collect::<Result<Vec<_>>>()?;
        let (connect_timeout, tls_domain) = (self.connect_timeout, self.tls_domain.clone());
        // One channel per address; its origin (`:authority`) and TLS name stay the configured
        // host, so virtual hosting and certificate checks see the name, not the pod's IP.
        let make = move |t: &Target, addr: Option<std::net::SocketAddr>| -> Result<Channel> {
            let bad = |source| Error::Endpoint {
                endpoint: t.uri.clone(),
                source,
            };
            let uri = addr.map_or_else(|| t.uri.clone(), |a| t.uri_of(a));
            let mut ep = Endpoint::from_shared(uri)
                .map_err(bad)?
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true);
            if addr.is_some() {
                ep =
                    ep.origin(t.uri.parse().map_err(|_| {
                        Error::Config(format!("endpoint {:?} is not a URI", t.uri))
                    })?);
            }
            if t.scheme == "https" {
                let name = tls_domain.clone().unwrap_or_else(|| t.host.clone());
                ep = ep.tls_config(tls.clone().domain_name(name)).map_err(bad)?;
            }
            Ok(ep.connect_lazy())
        };
        let pool = Pool::new(
            targets,
            Box::new(make),
            self.resolver.clone(),
            self.resolve_every,
        )?;
        let auth = match &self.api_key {
            Some(k) if !k.is_empty() => Some(
                format!("Bearer {k}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| {
                        Error::Config("the API key has characters not allowed in a header".into())
                    })?,
            ),
            _ => None,
        };
        Ok(Client {
            inner: Arc::new(Inner { pool, auth }),
            timeout: self.timeout,
            retry: self.retry,
        })
    }

    fn tls_config(&self) -> Result<ClientTlsConfig> {
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(p) = &self.ca_cert {
            let pem = std::fs::read(p).map_err(Error::io(p))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        } else if self.endpoints.iter().any(|e| e.starts_with("https://")) {
            return Err(Error::Config(
                "an https endpoint needs --ca-cert (the CA that signed the server's certificate)"
                    .into(),
            ));
        }
        if let Some(d) = &self.tls_domain {
            tls = tls.domain_name(d.clone());
        }
        Ok(tls)
    }
}

struct Inner {
    pool: Pool,
    auth: Option<MetadataValue<Ascii>>,
}

/// A cheap-to-clone handle; clones share the connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    timeout: Option<Duration>,
    retry: RetryPolicy,
}

/// The health of one endpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EndpointHealth {
    pub endpoint: String,
    pub service: String,
    /// SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN, or the error that prevented the check.
    pub status: String,
    pub serving: bool,
}

impl Client {
    /// This client with another per-call budget (shares connections).
    pub fn with_timeout(&self, t: Option<Duration>) -> Client {
        Client {
            timeout: t,
            ..self.clone()
        }
    }

    /// This client with another retry policy (shares connections).
    pub fn with_retry(&self, r: RetryPolicy) -> Client {
        Client {
            retry: r,
            ..self.clone()
        }
    }

    /// The current addresses (once names have been resolved), as labels.
    pub async fn endpoints(&self) -> Vec<String> {
        self.inner.pool.ready().await;
        let members = self.inner.pool.members();
        members.iter().map(|m| m.label().to_string()).collect()
    }

    /// Answered unary calls, and rows of batch streams, per address since the client was built:
    /// how the load was spread.
    pub fn answered(&self) -> BTreeMap<String, u64> {
        self.inner.pool.answered()
    }

    /// Count `rows` answered on the address a batch stream was opened on.
    pub fn count_rows(&self, on: &Member, rows: u64) {
        self.inner.pool.count(on, rows);
    }

    /// The retry policy of unary calls.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Wrap `msg` with the auth metadata and, when given, a grpc-timeout.
    pub fn request<T>(&self, msg: T, timeout: Option<Duration>) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(a) = &self.inner.auth {
            r.metadata_mut().insert("authorization", a.clone());
        }
        if let Some(t) = timeout {
            r.set_timeout(t);
        }
        r
    }

    /// One unary call with load balancing, deadline and retries.
    async fn unary<Req, Resp, F, Fut>(&self, req: Req, call: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let pool = &self.inner.pool;
        pool.ready().await;
        self.retry
            .run(deadline, |a| {
                let m = pool.pick();
                let fut = call(m.channel(), self.request(req.clone(), a.remaining));
                async move {
                    match fut.await {
                        Ok(r) => {
                            pool.mark_up(&m);
                            pool.count(&m, 1);
                            Ok(r.into_inner())
                        }
                        Err(s) => {
                            if s.code() == Code::Unavailable {
                                pool.mark_down(&m);
                            }
                            Err(s)
                        }
                    }
                }
            })
            .await
    }

    /// RewardService.Score.
    pub async fn score(&self, req: v1::ScoreRequest) -> Result<v1::ScoreResponse> {
        self.unary(req, |ch, r| async move {
            RewardServiceClient::new(ch).score(r).await
        })
        .await
    }

    /// RewardService.Compare.
    pub async fn compare(&self, req: v1::CompareRequest) -> Result<v1::CompareResponse> {
        self.unary(req, |ch, r| async move {
            RewardServiceClient::new(ch).compare(r).await
        })
        .await
    }

    /// PolicyService.Classify.
    pub async fn classify(&self, req: v1::ClassifyRequest) -> Result<v1::ClassifyResponse> {
        self.unary(req, |ch, r| async move {
            PolicyServiceClient::new(ch).classify(r).await
        })
        .await
    }

    /// ModelService.ListModels.
    pub async fn list_models(&self) -> Result<Vec<v1::ModelInfo>> {
        let r = self
            .unary(v1::ListModelsRequest {}, |ch, r| async move {
                ModelServiceClient::new(ch).list_models(r).await
            })
            .await?;
        Ok(r.models)
    }

    /// ModelService.GetModel.
    pub async fn get_model(&self, name: &str) -> Result<v1::ModelInfo> {
        let req = v1::GetModelRequest { name: name.into() };
        self.unary(req, |ch, r| async move {
            ModelServiceClient::new(ch).get_model(r).await
        })
        .await
    }

    /// ModelService.GetServerInfo: version, commit, device and uptime of the server that answers.
    pub async fn server_info(&self) -> Result<v1::ServerInfo> {
        self.unary(v1::GetServerInfoRequest {}, |ch, r| async move {
            ModelServiceClient::new(ch).get_server_info(r).await
        })
        .await
    }

    /// PolicyService.ClassifyStream: generated text as it comes, the result last. Not retried.
    pub async fn classify_stream(
        &self,
        req: v1::ClassifyRequest,
    ) -> Result<Streaming<v1::ClassifyStreamResponse>> {
        self.inner.pool.ready().await;
        let m = self.inner.pool.pick();
        let r = PolicyServiceClient::new(m.channel())
            .classify_stream(self.request(req, self.timeout))
            .await;
        self.note(&m, r)
    }

    /// PolicyService.ClassifyBatch on the next address: a bidi stream, replies in request order,
    /// with the address it went to (for [`Client::count_rows`] and [`Client::mark_down`]).
    /// No deadline (a batch stream lives as long as the job); not retried.
    pub async fn classify_batch<S>(
        &self,
        requests: S,
    ) -> Result<(Streaming<v1::ClassifyResponse>, Arc<Member>)>
    where
        S: tokio_stream::Stream<Item = v1::ClassifyRequest> + Send + 'static,
    {
        self.inner.pool.ready().await;
        let m = self.inner.pool.pick();
        let r = PolicyServiceClient::new(m.channel())
            .classify_batch(self.request(requests, None))
            .await;
        Ok((self.note(&m, r)?, m))
    }

    /// A stream on `m` broke: skip that address for a while and look the names up again.
    pub fn mark_down(&self, m: &Member) {
        self.inner.pool.mark_down(m);
    }

    fn note<T>(&self, m: &Member, r: std::result::Result<Response<T>, Status>) -> Result<T> {
        match r {
            Ok(r) => {
                self.inner.pool.mark_up(m);
                Ok(r.into_inner())
            }
            Err(s) => {
                if s.code() == Code::Unavailable {
                    self.inner.pool.mark_down(m);
                }
                Err(s.into())
            }
        }
    }

    /// `grpc.health.v1` Check of `service` ("" = the server as a whole) on every address.
    pub async fn health(&self, service: &str) -> Vec<EndpointHealth> {
        self.inner.pool.ready().await;
        let mut out = Vec::new();
        for m in self.inner.pool.members().iter() {
            let req = self.request(
                tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                },
                self.timeout,
            );
            let r = HealthClient::new(m.channel()).check(req).await;
            let status = match r {
                Ok(r) => ServingStatus::try_from(r.into_inner().status)
                    .map_or_else(|_| "UNKNOWN".to_string(), |s| s.as_str_name().to_string()),
                Err(s) => format!("{:?}: {}", s.code(), s.message()),
            };
            out.push(EndpointHealth {
                endpoint: m.label().to_string(),
                service: service.to_string(),
                serving: status == "SERVING",
                status,
            });
        }
        out
    }
}
