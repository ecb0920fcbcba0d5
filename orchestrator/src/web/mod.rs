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

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::store::Store;
use auth::{Identity, Sessions};

/// What every handler shares.
pub struct App {
    pub store: Store,
    pub sessions: Sessions,
}

impl App {
    pub fn new(store: Store) -> App {
        App {
            store,
            sessions: Sessions::default(),
        }
    }

    /// The moment the pages speak of: the run's warped clock while it is ahead of the
    /// wall clock, the wall clock otherwise (as `wavelift status`).
    pub async fn now(&self) -> anyhow::Result<i64> {
        Ok(crate::scheduler::clock::status_now(&self.store).await?.0)
    }

    pub async fn approve(
        &self,
        wave: &str,
        application: Option<&str>,
        who: &Identity,
    ) -> anyhow::Result<Vec<String>> {
        self.store
            .approve(wave, application, &who.name, wall_now())
            .await
    }

    pub async fn pull(&self, task: &str, lever: &str, who: &Identity) -> anyhow::Result<()> {
        let now = wall_now();
        match lever {
            "retry" => self.store.retry(task, &who.name, now).await,
            "skip" => self.store.skip(task, &who.name, now).await,
            "cancel" => self.store.cancel(task, &who.name, now).await,
            other => anyhow::bail!("unknown lever `{other}`: retry, skip or cancel"),
        }
    }
}

fn wall_now() -> i64 {
    jiff::Timestamp::now().as_millisecond()
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
        .route("/assets/{file}", get(pages::asset))
        .route("/api/openapi.json", get(openapi::document))
        .route("/api/waves", get(api::waves))
        .route("/api/waves/{wave}", get(api::wave))
        .route("/api/waves/{wave}/events", get(api::events))
        .route("/api/waves/{wave}/events/stream", get(api::stream))
        .route("/api/waves/{wave}/reports", get(api::reports))
        .route("/api/waves/{wave}/approve", post(api::approve))
        .route("/api/servers/{server}", get(api::server))
        .route("/api/tasks/{first}/{kind}/{lever}", post(api::lever))
        .with_state(app)
}

/// Serves the router on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
