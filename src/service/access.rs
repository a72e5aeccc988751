//! Who may use the HTTP listener. On loopback (the default) anyone on the
//! machine may, as before. With `[http] token` set — which config
//! validation requires for any other address — every request but the
//! sign-in form and the page's static assets must carry the token, as
//! `Authorization: Bearer <token>` (monitoring, scripts) or as the cookie
//! the sign-in form sets (people with a browser). Without it: 401, and for
//! the page itself the sign-in form.
//!
//! The token is a [`Secret`]: compared in constant time, never logged, and
//! the cookie is `HttpOnly; SameSite=Strict` so another site can neither
//! read it nor make the browser post `/sync` with it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::http::HttpState;
use crate::config::Secret;
use crate::page;

/// The sign-in cookie's name.
pub(crate) const COOKIE: &str = "centrovision_sync_token";

/// Whether `a` equals the token, in time independent of where they differ.
fn same(a: &[u8], token: &Secret) -> bool {
    let b = token.expose().as_bytes();
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries the token (header or cookie).
pub(crate) fn authorized(headers: &HeaderMap, token: &Secret) -> bool {
    if token.is_empty() {
        return true;
    }
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .any(|t| same(t.trim().as_bytes(), token));
    bearer
        || headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).any(|c| {
            c.trim().strip_prefix(COOKIE).and_then(|r| r.strip_prefix('=')).is_some_and(|v| {
                let decoded: String = url::form_urlencoded::parse(format!("t={v}").as_bytes()).map(|(_, v)| v.into_owned()).collect();
                same(decoded.as_bytes(), token)
            })
        })
}

/// Middleware on every route but the sign-in form and the assets.
pub(crate) async fn require_token(State(st): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
    let token = &st.rt.cfg.http.token;
    if authorized(req.headers(), token) {
        return next.run(req).await;
    }
    if req.uri().path() == "/" {
        return (StatusCode::UNAUTHORIZED, Html(page::login_page(st.rt.cfg.http.language, false))).into_response();
    }
    let mut r =
        (StatusCode::UNAUTHORIZED, "the [http] token is required: send `Authorization: Bearer <token>` or sign in at /\n").into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// `GET /login`: the sign-in form.
pub(crate) async fn login_form(State(st): State<Arc<HttpState>>) -> Response {
    Html(page::login_page(st.rt.cfg.http.language, false)).into_response()
}

/// `POST /login` (form field `token`): sets the cookie and goes to the
/// page, or shows the form again with 401.
pub(crate) async fn login(State(st): State<Arc<HttpState>>, body: axum::body::Bytes) -> Response {
    let token = &st.rt.cfg.http.token;
    let given: Option<String> = url::form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned());
    match given {
        Some(t) if !token.is_empty() && same(t.as_bytes(), token) => {
            let value: String = url::form_urlencoded::byte_serialize(token.expose().as_bytes()).collect();
            let cookie = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000");
            let mut r = Redirect::to("./").into_response();
            match HeaderValue::from_str(&cookie) {
                Ok(v) => {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                Err(_) => return (StatusCode::INTERNAL_SERVER_ERROR, "the token cannot be stored in a cookie").into_response(),
            }
            r
        }
        _ if token.is_empty() => Redirect::to("./").into_response(),
        _ => (StatusCode::UNAUTHORIZED, Html(page::login_page(st.rt.cfg.http.language, true))).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: header::HeaderName, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn the_token_is_accepted_as_a_bearer_header_or_the_sign_in_cookie_and_nothing_else() {
        let token = Secret::new("a-long-enough-page-token");
        assert!(authorized(&headers(header::AUTHORIZATION, "Bearer a-long-enough-page-token"), &token));
        assert!(authorized(&headers(header::COOKIE, "x=1; centrovision_sync_token=a-long-enough-page-token"), &token));
        assert!(!authorized(&headers(header::AUTHORIZATION, "Bearer a-long-enough-page-tokeN"), &token));
        assert!(!authorized(&headers(header::AUTHORIZATION, "Basic a-long-enough-page-token"), &token));
        assert!(!authorized(&headers(header::COOKIE, "centrovision_sync_token=a-long-enough"), &token));
        assert!(!authorized(&HeaderMap::new(), &token));
        assert!(authorized(&HeaderMap::new(), &Secret::default()), "no token configured: loopback, open as before");
    }
}
