//! The web dashboard and its JSON API, served by `wavelift serve` beside the scheduler and
//! the executor: an overview of every wave, a page per wave (the phase calendar, the
//! server-by-task matrix, replication, approvals, the live job progress log) and a page
//! per server (every attempt of every task). The pages are HTML shells whose script reads
//! the API; the API is described by an OpenAPI document at /api/openapi.json.
//!
//! Every route needs a token or a logged-in session, and checks the role (see
//! [`auth`]); static assets are embedded in the binary.

pub mod api;
pub mod auth;
mod openapi;
mod pages;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};

use crate::store::Store;
use auth::{Identity, Sessions};

/// What every handler shares.
pub struct App {
    pub store: Store,
    pub sessions: Sessions,
    /// The overview's and each wave's JSON, as last computed (see [`App::cached`]).
    cache: Mutex<HashMap<String, Cached>>,
    /// Counts the levers pulled: a body computed before one is not kept.
    generation: AtomicU64,
    /// Set when the server shuts down: the live logs end, so that a page left open does
    /// not keep the process from stopping.
    closing: AtomicBool,
}

struct Cached {
    at: Instant,
    /// `None`: no such wave.
    body: Option<Arc<[u8]>>,
    /// Since when a background refresh has been running, if one is.
    refreshing: Option<Instant>,
}

/// A cached body younger than this is served as it is; an older one is served while a
/// fresh one is computed in the background, so a request never waits for the store
/// (and the pages, which follow the live log, see every change within about a second).
const FRESH: Duration = Duration::from_millis(500);
/// A body older than this is not handed out: the request computes a fresh one (after a
/// quiet spell, the first request does not get old news). A refresh that has run this
/// long is taken for lost and started again.
const STALE_LIMIT: Duration = Duration::from_secs(3);

impl App {
    pub fn new(store: Store) -> App {
        App {
            store,
            sessions: Sessions::default(),
            cache: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        }
    }

    /// Whether the server is shutting down (its live logs end).
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// The JSON of `key` (a wave's name, or [`api::OVERVIEW_KEY`]): computed on the first
    /// request, then served from memory and recomputed in the background once it is
    /// older than [`FRESH`]. The levers clear it, so their effect shows at once.
    pub async fn cached(app: &Arc<App>, key: &str) -> anyhow::Result<Option<Arc<[u8]>>> {
        let generation = app.generation.load(Ordering::SeqCst);
        let stale = {
            let mut cache = app
                .cache
                .lock()
                .map_err(|_| anyhow::anyhow!("cache poisoned"))?;
            match cache.get_mut(key) {
                Some(entry) if entry.at.elapsed() < FRESH => return Ok(entry.body.clone()),
                // Too old to hand out while a fresh one is made: computed below.
                Some(entry) if entry.at.elapsed() >= STALE_LIMIT => None,
                Some(entry)
                    if entry
                        .refreshing
                        .is_some_and(|since| since.elapsed() < STALE_LIMIT) =>
                {
                    return Ok(entry.body.clone());
                }
                Some(entry) => {
                    entry.refreshing = Some(Instant::now());
                    Some(entry.body.clone())
                }
                None => None,
            }
        };
        match stale {
            Some(body) => {
                let app = Arc::clone(app);
                let key = key.to_owned();
                tokio::spawn(async move {
                    // A failed refresh keeps the last body; the next request tries again.
                    let started = Instant::now();
                    if let Ok(fresh) = app.compute(&key).await {
                        app.keep(&key, fresh, generation, started);
                    }
                });
                Ok(body)
            }
            None => {
                let started = Instant::now();
                let body = app.compute(key).await?;
                app.keep(key, body.clone(), generation, started);
                Ok(body)
            }
        }
    }

    /// Keeps a body computed from what the store held at `generation`, unless a lever
    /// changed the store since (the body would hide its effect). Its age counts from
    /// `started`, when the computation began: what it shows is no older than that, so a
    /// body younger than [`STALE_LIMIT`] shows the store of at most that long ago.
    fn keep(&self, key: &str, body: Option<Arc<[u8]>>, generation: u64, started: Instant) {
        // Only what exists is kept: asking for made-up waves grows nothing.
        if body.is_none() || self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(
                key.to_owned(),
                Cached {
                    at: started,
                    body,
                    refreshing: None,
                },
            );
        }
    }

    async fn compute(&self, key: &str) -> anyhow::Result<Option<Arc<[u8]>>> {
        let value = if key == api::OVERVIEW_KEY {
            api::overview_json(self).await?
        } else {
            api::wave_json(self, key).await?
        };
        Ok(match value {
            Some(value) => Some(Arc::from(serde_json::to_vec(&value)?)),
            None => None,
        })
    }

    /// Forgets every cached body: after a lever, the next read recomputes.
    fn forget(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
    }

    /// The moment the pages speak of, and the levers' moment: the run's warped clock
    /// while it is ahead of the wall clock, the wall clock otherwise (as `wavelift
    /// status`), so a go or an abort in a warped run is dated in that run's time.
    pub async fn now(&self) -> anyhow::Result<i64> {
        Ok(crate::scheduler::clock::status_now(&self.store).await?.0)
    }

    pub async fn approve(
        &self,
        wave: &str,
        application: Option<&str>,
        who: &Identity,
    ) -> anyhow::Result<crate::store::Approval> {
        let now = self.now().await?;
        let approved = self.store.approve(wave, application, &who.name, now).await;
        self.forget();
        approved
    }

    pub async fn no_go(
        &self,
        wave: &str,
        application: Option<&str>,
        reason: &str,
        who: &Identity,
    ) -> anyhow::Result<Vec<String>> {
        let now = self.now().await?;
        let held = self
            .store
            .no_go(wave, application, &who.name, reason, now)
            .await;
        self.forget();
        held
    }

    /// A lever on a task; `reason`: why (an abort needs one).
    pub async fn pull(
        &self,
        task: &str,
        lever: &str,
        reason: &str,
        who: &Identity,
    ) -> anyhow::Result<()> {
        let now = self.now().await?;
        let pulled = match lever {
            "retry" => self.store.retry(task, &who.name, now).await,
            "skip" => self.store.skip(task, &who.name, now).await,
            "cancel" => self.store.cancel(task, &who.name, now).await,
            "abort" => self.store.abort(task, &who.name, reason, now).await,
            other => {
                return Err(anyhow::Error::new(crate::store::Refused {
                    kind: crate::store::RefusalKind::NotFound,
                    message: format!("unknown lever `{other}`: retry, skip, cancel or abort"),
                }));
            }
        };
        self.forget();
        pulled
    }
}

/// Every route: the pages, the forms, the assets and the API.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/waves/{wave}", get(pages::wave))
        .route("/servers/{server}", get(pages::server))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/waves/{wave}/approve", post(pages::approve_form))
        .route("/waves/{wave}/no-go", post(pages::no_go_form))
        .route("/tasks/{first}/{kind}/{lever}", post(pages::lever_form))
        .route("/assets/{file}", get(pages::asset))
        .route("/api/openapi.json", get(openapi::document))
        .route("/api/waves", get(api::waves))
        .route("/api/waves/{wave}", get(api::wave))
        .route("/api/waves/{wave}/events", get(api::events))
        .route("/api/waves/{wave}/events/stream", get(api::stream))
        .route("/api/waves/{wave}/reports", get(api::reports))
        .route("/api/waves/{wave}/approve", post(api::approve))
        .route("/api/waves/{wave}/no-go", post(api::no_go))
        .route("/api/servers/{server}", get(api::server))
        .route("/api/tasks/{first}/{kind}/{lever}", post(api::lever))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::wrong_method)
        .layer(axum::middleware::from_fn(api::harden))
        .with_state(app)
}

/// Serves the router on `listener` until `shutdown` completes: then no new connection is
/// taken, the live logs end within [`api::STREAM_POLL`], and the requests under way are
/// answered.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let closing = Arc::clone(&app);
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.closing.store(true, Ordering::SeqCst);
        })
        .await?;
    Ok(())
}
