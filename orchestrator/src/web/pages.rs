//! The pages: HTML shells (one layout, `templates/web/page.html.hbs`) whose script
//! (`web/assets/app.js`) renders what the API returns, the login form, and the form
//! posts (approve, no-go, retry, skip, cancel, log out), which need the session's CSRF
//! token.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use handlebars::Handlebars;
use serde::Deserialize;
use serde_json::json;

use super::App;
use super::api::{error, refused};
use super::auth::{Identity, SESSION_COOKIE, allow, cookie, identify, random_hex};
use crate::store::Permission;

const LAYOUT: &str = include_str!("../../../templates/web/page.html.hbs");
const LOGIN: &str = include_str!("../../../templates/web/login.html.hbs");
/// The embedded assets: (file name, content type, content).
const ASSETS: [(&str, &str, &str); 2] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/assets/app.css"),
    ),
];
/// The cookie of the login form's CSRF token (double submit: cookie and field agree).
const LOGIN_COOKIE: &str = "wavelift_login";

fn render(template: &str, data: &serde_json::Value) -> Response {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    match hb.render_template(template, data) {
        Ok(html) => Html(html).into_response(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

/// The page `page` (overview, wave, server) about `name`, for a logged-in viewer;
/// anyone else is sent to the login form.
async fn page(app: &App, headers: &HeaderMap, page: &str, name: &str, title: &str) -> Response {
    let identity = match identify(&app.store, &app.sessions, headers).await {
        Ok(identity) => identity,
        Err(refusal) => return refusal.into(),
    };
    let who: Identity = match allow(identity, Permission::Read, false, None) {
        Ok(who) => who,
        Err(_) => return Redirect::to("/login").into_response(),
    };
    render(
        LAYOUT,
        &json!({
            "title": title,
            "page": page,
            "name": name,
            "who": who.name,
            "role": who.role.name(),
            "csrf": who.csrf.unwrap_or_default(),
        }),
    )
}

pub async fn overview(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    page(&app, &headers, "overview", "", "Waves").await
}

pub async fn wave(
    State(app): State<Arc<App>>,
    Path(wave): Path<String>,
    headers: HeaderMap,
) -> Response {
    page(&app, &headers, "wave", &wave, &wave).await
}

pub async fn server(
    State(app): State<Arc<App>>,
    Path(server): Path<String>,
    headers: HeaderMap,
) -> Response {
    page(&app, &headers, "server", &server, &server).await
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => ([(header::CONTENT_TYPE, *kind)], *body).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no asset `{file}`")),
    }
}

pub async fn login_form() -> Response {
    let Ok(csrf) = random_hex(16) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
    };
    let mut response = render(LOGIN, &json!({ "csrf": csrf, "error": "" }));
    set_cookie(
        &mut response,
        &format!("{LOGIN_COOKIE}={csrf}; Path=/login; HttpOnly; SameSite=Strict"),
    );
    response
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
    csrf: String,
}

/// POST /login: a token makes a session (a cookie, HttpOnly, SameSite=Strict).
pub async fn login(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if cookie(&headers, LOGIN_COOKIE) != Some(form.csrf.as_str()) {
        return error(
            StatusCode::FORBIDDEN,
            "the login form expired or came from elsewhere: open /login again",
        );
    }
    let token = form.token.trim();
    match app.store.token_identity(token).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            let mut response = render(
                LOGIN,
                &json!({ "csrf": form.csrf, "error": "unknown or revoked token" }),
            );
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            return response;
        }
        Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
    }
    let (id, _) = match app.sessions.open(token) {
        Ok(session) => session,
        Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
    };
    let mut response = Redirect::to("/").into_response();
    set_cookie(
        &mut response,
        &format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict"),
    );
    response
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    app: String,
    #[serde(default)]
    reason: String,
    /// The page to go back to after a lever (a wave's or a server's).
    #[serde(default)]
    back: String,
}

/// Who posts a form, if the session may do `permission` and the form carries its CSRF
/// token.
async fn form_poster(
    app: &App,
    headers: &HeaderMap,
    permission: Permission,
    form: &CsrfForm,
) -> Result<Identity, Response> {
    let identity = identify(&app.store, &app.sessions, headers)
        .await
        .map_err(Response::from)?;
    allow(identity, permission, true, Some(&form.csrf)).map_err(Response::from)
}

pub async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    // A live session is closed only with its CSRF token (no page elsewhere logs anyone
    // out); one already gone (expired, revoked, a restart) has its cookie cleared all the
    // same.
    match identify(&app.store, &app.sessions, &headers).await {
        Ok(identity) => {
            if let Err(refusal) = allow(identity, Permission::Read, true, Some(&form.csrf)) {
                return Response::from(refusal);
            }
        }
        Err(refusal) if refusal.status == StatusCode::UNAUTHORIZED => {}
        Err(refusal) => return Response::from(refusal),
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        app.sessions.close(id);
    }
    let mut response = Redirect::to("/login").into_response();
    set_cookie(
        &mut response,
        &format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

/// POST /waves/{wave}/approve (a form: `app`, `csrf`) or /waves/{wave}/no-go (`app`,
/// `reason`, `csrf`): the decision, then back to the wave's page.
async fn decide(app: &App, wave: &str, headers: &HeaderMap, form: &CsrfForm, go: bool) -> Response {
    let who = match form_poster(app, headers, Permission::Approve, form).await {
        Ok(who) => who,
        Err(refusal) => return refusal,
    };
    let application = Some(form.app.as_str()).filter(|a| !a.is_empty());
    let decided = if go {
        app.approve(wave, application, &who).await.map(drop)
    } else {
        app.no_go(wave, application, &form.reason, &who)
            .await
            .map(drop)
    };
    match decided {
        Ok(_) => Redirect::to(&format!("/waves/{wave}")).into_response(),
        Err(err) => refused(err),
    }
}

pub async fn approve_form(
    State(app): State<Arc<App>>,
    Path(wave): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    decide(&app, &wave, &headers, &form, true).await
}

pub async fn no_go_form(
    State(app): State<Arc<App>>,
    Path(wave): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    decide(&app, &wave, &headers, &form, false).await
}

/// POST /tasks/{first}/{kind}/{lever} (a form: `csrf`, `back`, and `reason` for an
/// abort): retry, skip, cancel or abort the task `{first}/{kind}`, then back to the
/// page the form came from.
pub async fn lever_form(
    State(app): State<Arc<App>>,
    Path((first, kind, lever)): Path<(String, String, String)>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let who = match form_poster(&app, &headers, Permission::Steer, &form).await {
        Ok(who) => who,
        Err(refusal) => return refusal,
    };
    match app
        .pull(&format!("{first}/{kind}"), &lever, &form.reason, &who)
        .await
    {
        Ok(()) => Redirect::to(back_to(&form.back)).into_response(),
        Err(err) => refused(err),
    }
}

/// Where a form sends its poster back: one of our pages, never elsewhere (and never a
/// value a Location header could not carry).
fn back_to(back: &str) -> &str {
    let ours = (back.starts_with("/waves/") || back.starts_with("/servers/"))
        && back.bytes().all(|b| b.is_ascii_graphic())
        && !back.contains("//")
        && !back.contains('\\');
    if ours { back } else { "/" }
}

fn set_cookie(response: &mut Response, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::back_to;

    #[test]
    fn a_form_sends_its_poster_back_to_our_pages_only() {
        assert_eq!(back_to("/servers/dir-01"), "/servers/dir-01");
        assert_eq!(back_to("/waves/wave-1"), "/waves/wave-1");
        for elsewhere in [
            "",
            "https://example.test/",
            "//example.test/waves/x",
            "/waves//example.test",
            "/waves/\\example.test",
            "/waves/a\r\nSet-Cookie: x=1",
            "/api/waves",
        ] {
            assert_eq!(back_to(elsewhere), "/", "{elsewhere:?}");
        }
    }
}
