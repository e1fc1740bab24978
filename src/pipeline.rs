//! The request path as one value: which layers a request passes, in which order and why
//! ([`Pipeline::stack`]), built from one configuration, and swapped whole while connections stay
//! open.
//!
//! A [`Pipeline`] holds everything that depends on the configuration (the layers' settings,
//! trusted proxies included, the verifier, the login). What must outlive a swap lives in
//! [`Shared`]: the issuers' keys, the verified-token cache (whose entries carry the generation of
//! the pipeline that verified them, since what a token becomes depends on the configuration),
//! the login attempts already used and the session refreshes in flight.
//!
//! Each worker serves its connections from its own stack, built on its own runtime (the stack
//! holds the worker's upstream pool). A swap ([`Workers`]) hands the new pipeline to every worker,
//! which builds its stack and publishes it; a connection looks for a new stack before each
//! request (one atomic load), so requests already in flight finish on the stack they started
//! with, and the next request on the same connection takes the new one.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http::{Request, Response};
use tokio::sync::watch;
use tower::ServiceBuilder;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::auth::token::{TokenCache, Verifier};
use crate::auth::{AuthSettings, AuthenticateLayer};
use crate::clock::Clock;
use crate::config::Config;
use crate::forward_auth::ForwardAuth;
use crate::headers::{
    NormalizePathLayer, StripHopByHopLayer, StripUntrustedLayer, UntrustedHeaders,
};
use crate::identity::IdentityMapper;
use crate::idp::jwks::{KeyCacheSettings, KeyStore};
use crate::login::{Login, LoginState};
use crate::pages::Pages;
use crate::proxy::ProxyService;
use crate::response::{AnswersLayer, BrowserAnswers, Refusal, Rejection};
use crate::telemetry::AccessLogLayer;

pub use crate::conn::Stack;

/// What outlives a pipeline swap.
pub struct Shared {
    /// The issuers' keys (fetched and refreshed by the server's maintenance tasks).
    pub keys: Arc<KeyStore>,
    /// Verified tokens; each entry carries the generation of the pipeline that verified it.
    tokens: Arc<TokenCache>,
    /// Used login attempts and session refreshes in flight.
    login: Arc<LoginState>,
    /// Where every lifetime is read from (sessions, attempts, tokens).
    clock: Clock,
    /// The last generation handed out.
    generations: AtomicU64,
}

impl Shared {
    /// The shared state for `config` (its issuers' key caches, keys not fetched yet).
    pub fn new(config: &Config) -> Self {
        let keys = Arc::new(KeyStore::new(
            &config.key_issuers(),
            KeyCacheSettings::new(&config.bearer, config.oidc.insecure_allow_http),
        ));
        Self {
            keys,
            tokens: Arc::new(TokenCache::new(config.bearer.token_cache_size)),
            login: Arc::default(),
            clock: Clock::System,
            generations: AtomicU64::new(0),
        }
    }

    /// The same, with every lifetime read from `clock` (tests move it with paused time).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

/// Everything a worker's stack is built from, for one configuration.
pub struct Pipeline {
    /// Which configuration this is, counted from 1 (see [`Shared`]).
    generation: u64,
    auth: Arc<AuthSettings>,
    login: Option<Arc<Login>>,
    untrusted: Arc<UntrustedHeaders>,
    trusted_proxies: Arc<[ipnet::IpNet]>,
    /// The app; `None`: forward-auth only.
    upstream: Option<crate::config::UpstreamConfig>,
    body_idle_timeout: Duration,
    /// `upstream.max_concurrent_requests`, shared by every worker.
    upstream_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// `server.workers`, which share `upstream.max_connecting`.
    workers: usize,
    /// `oidc.prefix`: portcullis's own endpoints.
    prefix: String,
    /// `{prefix}/auth`.
    forward_auth: Arc<ForwardAuth>,
}

impl Pipeline {
    /// The pipeline of `config` over `shared`, as its next generation. Every issuer `config`
    /// names must have its key cache in `shared` (a new issuer needs a restart).
    pub fn new(config: &Config, shared: &Shared) -> anyhow::Result<Self> {
        if let Some(new) =
            config.key_issuers().into_iter().find(|i| shared.keys.issuer(&i.issuer).is_none())
        {
            anyhow::bail!(
                "issuer {} has no key cache in this process; a new issuer needs a restart",
                new.issuer
            );
        }
        let generation = shared.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let keys = &shared.keys;
        let mapper = IdentityMapper::new(config.identity.clone());
        let untrusted = Arc::new(UntrustedHeaders::new(&mapper.identity_header_names()));
        let verifier = Arc::new(
            Verifier::new(&config.bearer, keys.clone(), mapper)
                .with_clock(shared.clock)
                .with_cache(shared.tokens.clone(), generation),
        );
        let login = match &config.login {
            Some(l) => {
                let pages = Arc::new(Pages::load(l.templates_dir.as_deref())?);
                Some(Arc::new(Login::new(
                    l.clone(),
                    keys,
                    &config.bearer,
                    &config.identity,
                    pages,
                    shared.clock,
                    shared.login.clone(),
                )?))
            }
            None => None,
        };
        let auth = Arc::new(AuthSettings {
            verifier,
            public_routes: config.bearer.public_routes.clone(),
            realm: config.bearer.realm.as_str().into(),
            sessions: login.as_ref().map(|l| l.sessions().clone()),
            policy: Arc::new(config.authorization.clone()),
            skip_auth_preflight: config.bearer.skip_auth_preflight,
            pass_id_token: config.identity.pass_id_token,
            pass_token: config.identity.pass_token,
        });
        let forward_auth = Arc::new(ForwardAuth {
            auth: auth.clone(),
            settings: config.forward_auth.clone(),
            path: format!("{}/auth", config.oidc.prefix),
            sign_in: login.as_ref().map(|l| l.sign_in()),
            other_headers: {
                let mut names: Vec<http::HeaderName> =
                    config.identity.claim_headers.iter().map(|(h, _)| h.clone()).collect();
                if config.identity.pass_issuer {
                    names.push(crate::identity::X_FORWARDED_ISSUER);
                }
                names
            },
        });
        Ok(Self {
            generation,
            auth,
            login,
            untrusted,
            trusted_proxies: config.server.trusted_proxies.clone().into(),
            upstream: config.upstream.clone(),
            body_idle_timeout: config.server.request_body_idle_timeout,
            upstream_slots: match config.upstream.as_ref().map(|u| u.max_concurrent_requests) {
                None | Some(0) => None,
                Some(n) => Some(Arc::new(tokio::sync::Semaphore::new(n))),
            },
            workers: config.server.workers,
            prefix: config.oidc.prefix.clone(),
            forward_auth,
        })
    }

    /// Which configuration this pipeline was built from, counted from 1.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// One middleware stack. Call it on the runtime that will serve it: the upstream pool spawns
    /// its connections there.
    pub fn stack(&self) -> anyhow::Result<Stack> {
        // portcullis's own endpoints (under `/oauth2`; they never reach the app), or the app's,
        // behind the protected chain.
        let router = OwnOrApp {
            own: (format!("{}/", self.prefix).into(), self.own_routes()),
            forward_auth: self.forward_auth.clone(),
            app: self.protected()?,
        };
        Ok(self.around(router))
    }

    /// The layers every request passes before it is routed, around `router`.
    fn around<S>(&self, router: S) -> Stack
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let stack = ServiceBuilder::new()
            // Every answer (even a 400 for a bad path) gets an id and a log line. (Outermost:
            // its future is the boxed one the stack hands out, not boxed again.)
            .layer(AccessLogLayer)
            // Credentials never show in a `Debug` of the request, whatever logs it, and are
            // never indexed by HPACK on the way to an h2c app.
            .layer(SetSensitiveRequestHeadersLayer::new([
                http::header::AUTHORIZATION,
                http::header::COOKIE,
            ]))
            // Every refusal from the layers below becomes an answer here, in one place, in the
            // form that suits who asked; the access log then sees the final decision.
            .layer(AnswersLayer::new(self.login.as_ref().map(|login| BrowserAnswers {
                pages: login.pages().clone(),
                sign_in: login.sign_in(),
            })))
            // Before anything reads headers: framing we will not pass on is refused, then
            // hop-by-hop headers and what `Connection` names go (never `Host`, the request id
            // or `X-Forwarded-*`).
            .layer(StripHopByHopLayer)
            // Client-sent identity headers, path/method overrides and (unless the peer is a
            // trusted proxy) forwarding headers go before any layer could trust them.
            .layer(StripUntrustedLayer::new(self.untrusted.clone(), self.trusted_proxies.clone()))
            // One canonical path for routing, matching, logging and forwarding; ambiguous ones
            // are 400.
            .layer(NormalizePathLayer)
            .service(router);
        Stack::new(stack)
    }

    /// portcullis's own endpoints but forward-auth's (which [`OwnOrApp`] calls directly): the
    /// login's when browser login is on; nothing else exists under the prefix.
    fn own_routes(&self) -> Router {
        match &self.login {
            Some(login) => login.routes(),
            None => Router::new(),
        }
    }

    /// The chain every request for the app goes through.
    fn protected(&self) -> anyhow::Result<Protected> {
        let Some(upstream) = &self.upstream else {
            // No app: only forward-auth checks (and the login) are answered here.
            return Ok(Protected::NoApp);
        };
        let chain = ServiceBuilder::new()
            // The decision: public route? Valid bearer token or session? The [authorization]
            // requirements and this route's rule (read from the verified identity only, so
            // they hold on verified-token cache hits too)? Otherwise a refusal (401, 400, 403,
            // 503). The verified identity becomes X-Forwarded-* (after hop-by-hop removal), and
            // pass_token decides what becomes of the token.
            .layer(AuthenticateLayer::new(self.auth.clone()))
            .service(ProxyService::new(
                upstream,
                self.body_idle_timeout,
                self.upstream_slots.clone(),
                self.untrusted.clone(),
                self.workers,
            )?);
        Ok(Protected::App(chain))
    }
}

/// The chain every request for the app goes through (its futures are boxed once, by
/// [`Authenticate`](crate::auth::Authenticate)), or the answer that there is no app.
#[derive(Clone)]
enum Protected {
    App(crate::auth::Authenticate<crate::proxy::ProxyService>),
    NoApp,
}

impl tower::Service<Request<Body>> for Protected {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = crate::conn::ResponseFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // the chain ends in the proxy, whose limits answer 503 instead of waiting
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match self {
            Protected::App(chain) => chain.call(req),
            Protected::NoApp => Box::pin(async {
                let why = "no upstream.url: this portcullis answers forward-auth checks only";
                Ok(Refusal::new(Rejection::NoApp, "no_upstream").detail(why).response())
            }),
        }
    }
}

/// Sends a request to portcullis's own endpoints (a router, for the paths under their prefix)
/// or to the protected chain: one prefix comparison, not a router lookup, for each request to
/// the app.
#[derive(Clone)]
struct OwnOrApp {
    /// The prefix with its trailing `/`, and the router of what is under it.
    own: (Arc<str>, Router),
    /// `{prefix}/auth` (and below it, Envoy's dialect).
    forward_auth: Arc<ForwardAuth>,
    app: Protected,
}

impl tower::Service<Request<Body>> for OwnOrApp {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        futures_util::future::Either<
            <Router as tower::Service<Request<Body>>>::Future,
            crate::conn::ResponseFuture,
        >,
        <Protected as tower::Service<Request<Body>>>::Future,
    >;

    /// Both are always ready (axum's router; the protected chain ends in the proxy, whose
    /// limits answer 503 instead of waiting).
    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        use futures_util::future::Either;
        let (prefix, router) = &mut self.own;
        let path = req.uri().path();
        if path.starts_with(&**prefix) {
            let rest = path.strip_prefix(self.forward_auth.path.as_str());
            if rest.is_some_and(|r| r.is_empty() || r.starts_with('/')) {
                let check = crate::forward_auth::check(self.forward_auth.clone(), req);
                return Either::Left(Either::Right(Box::pin(async move { Ok(check.await) })));
            }
            return Either::Left(Either::Left(router.call(req)));
        }
        Either::Right(self.app.call(req))
    }
}

/// The workers' side of a swap: the current pipeline, and which generation each worker serves.
pub struct Workers {
    current: watch::Sender<Arc<Pipeline>>,
    /// One per worker: the generation of the stack it serves new requests with.
    serving: Vec<watch::Receiver<u64>>,
}

/// One worker's end: it builds its stack from the current pipeline, and a new one after each
/// swap, and publishes it to its connections.
pub struct Worker {
    pipelines: watch::Receiver<Arc<Pipeline>>,
    serving: watch::Sender<u64>,
}

impl Workers {
    /// `n` workers' ends, starting from `pipeline`.
    pub fn new(pipeline: Arc<Pipeline>, n: usize) -> (Self, Vec<Worker>) {
        let (current, rx) = watch::channel(pipeline);
        let (mut serving, mut ends) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let (tx, srx) = watch::channel(0);
            serving.push(srx);
            ends.push(Worker { pipelines: rx.clone(), serving: tx });
        }
        (Self { current, serving }, ends)
    }

    /// Hands `pipeline` to every worker and waits (up to `within`) until each serves new
    /// requests with it. Requests in flight finish on the stack they started with.
    pub async fn swap(&self, pipeline: Arc<Pipeline>, within: Duration) -> anyhow::Result<()> {
        let generation = pipeline.generation();
        self.current.send_replace(pipeline);
        for (i, serving) in self.serving.iter().enumerate() {
            let mut serving = serving.clone();
            let waited = tokio::time::timeout(within, serving.wait_for(|g| *g >= generation)).await;
            if !matches!(waited, Ok(Ok(_))) {
                anyhow::bail!("worker {i} did not take pipeline {generation} within {within:?}");
            }
        }
        Ok(())
    }
}

impl Worker {
    /// The stack of the current pipeline, built on this (the worker's) runtime, and a task that
    /// builds and publishes the next one after each swap (until the workers' side is gone).
    pub fn start(mut self) -> anyhow::Result<watch::Receiver<Stack>> {
        let first = self.pipelines.borrow_and_update().clone();
        let (stacks, rx) = watch::channel(first.stack()?);
        self.serving.send_replace(first.generation());
        tokio::spawn(async move {
            while self.pipelines.changed().await.is_ok() {
                let next = self.pipelines.borrow_and_update().clone();
                match next.stack() {
                    Ok(stack) => {
                        stacks.send_replace(stack);
                        self.serving.send_replace(next.generation());
                    }
                    Err(e) => tracing::error!(
                        generation = next.generation(),
                        error = format!("{e:#}"),
                        "this worker keeps its stack: the new one could not be built"
                    ),
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    const CONFIG: &str = "[upstream]\nurl = \"http://127.0.0.1:9\"\n[oidc]\nissuer = \"https://idp.example\"\n[bearer]\naudiences = [\"api\"]\n";

    fn pipeline() -> Pipeline {
        let config = crate::config::load_str(CONFIG, std::iter::empty()).unwrap().config;
        Pipeline::new(&config, &Shared::new(&config)).unwrap()
    }

    #[tokio::test]
    async fn credentials_are_sensitive_and_every_request_has_an_id_before_routing() {
        let router = tower::service_fn(|req: Request<Body>| async move {
            let h = req.headers();
            let sensitive = ["authorization", "cookie"]
                .iter()
                .all(|n| h.get_all(*n).iter().all(|v| v.is_sensitive()));
            let body = format!("{sensitive} {}", h.contains_key("x-request-id"));
            Ok::<_, Infallible>(Response::new(Body::from(body)))
        });
        let req = Request::get("/x")
            .header("host", "app.example")
            .header("authorization", "Bearer abc")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(Body::empty())
            .unwrap();
        let resp = pipeline().around(router).oneshot(req).await.unwrap();
        assert!(resp.headers().contains_key("x-request-id"));
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        assert_eq!(body, "true true");
    }

    #[test]
    fn generations_count_up_over_one_shared_state() {
        let config = crate::config::load_str(CONFIG, std::iter::empty()).unwrap().config;
        let shared = Shared::new(&config);
        let gens: Vec<u64> =
            (0..3).map(|_| Pipeline::new(&config, &shared).unwrap().generation()).collect();
        assert_eq!(gens, [1, 2, 3]);
        // an issuer the shared key caches do not have needs a restart
        let other = CONFIG.replace("idp.example", "other.example");
        let other = crate::config::load_str(&other, std::iter::empty()).unwrap().config;
        let e = Pipeline::new(&other, &shared).err().unwrap().to_string();
        assert!(e.contains("https://other.example") && e.contains("restart"), "{e}");
    }
}
