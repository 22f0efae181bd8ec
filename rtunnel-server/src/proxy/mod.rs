//! The subdomain HTTP proxy: web UIs behind an agent, in the operator's
//! browser.
//!
//! A request whose `Host` is `<service>--<session>.<proxy-domain>` (see
//! [`host`]) comes here instead of the API. Its first visit carries a proxy
//! link's token (`?token=`, minted by `POST /api/v1/sessions/{id}/proxy-token`
//! or the launcher), which works once: the proxy checks it, takes it out of
//! the ticket store, stores `proxy_opened` in the audit log, sets the
//! `rtunnel_proxy` cookie (`__Host-rtunnel_proxy` on https) to a credential
//! of its own (a [`TokenKind::ProxyCookie`], never a link) and redirects to
//! the same URL without the token. A second use of the link gets a page
//! saying so. Later requests carry the cookie: each one is checked
//! (token, session, user, grant), counted into a [`visit`], and sent to the
//! service through the tunnel ([`upstream`]) with its headers rewritten
//! ([`headers`]). Bodies stream both ways with backpressure, and WebSocket
//! upgrades become a relayed connection.

pub(crate) mod headers;
pub(crate) mod host;
pub(crate) mod upstream;
pub(crate) mod visit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use rtunnel_auth::claims::{Claims, TokenKind};
use rtunnel_core::ids::SessionId;
use rtunnel_core::proto::HostHeader;
use rtunnel_core::store::{AuditEvent, AuditKind, SessionRecord, SessionStatus, User, now_millis};
use rtunnel_core::ticket::Ticket;
use rtunnel_core::token::TokenError;
use uuid::Uuid;

use crate::error::ApiError;
use crate::revocation::Holder;
use crate::state::AppState;
use crate::terminal::TERMINAL_SERVICE;
use headers::{COOKIE_NAME, Forwarding, SECURE_COOKIE_NAME};
use host::{ProxyHost, Routed};
use upstream::{ConnectError, ProxyClient};
use visit::{Direction, InFlight, Metered, VisitKey, Visitor, Visits};

use crate::streams::RECONNECT_RETRY;

/// The proxy's shared parts.
#[derive(Debug)]
pub(crate) struct Proxy {
    client: ProxyClient,
    visits: Visits,
}

impl Proxy {
    /// A proxy whose connections are streams opened by `streams`.
    pub(crate) fn new(streams: crate::streams::Streams) -> Self {
        Proxy {
            client: upstream::client(streams),
            visits: Visits::default(),
        }
    }
}

/// A freshly minted proxy token and the URL that opens it.
#[derive(Debug, Clone)]
pub(crate) struct ProxyGrant {
    /// `<scheme>://<service>--<session>.<proxy-domain>[:port]/?token=<token>`.
    pub url: String,
    /// The token.
    pub token: String,
    /// Its lifetime.
    pub expires_in: Duration,
}

/// Mints a proxy link for `holder` (a user and the login or API token it
/// acts under) to reach `service` of `session_id`, and records it as
/// unused in the ticket store. The caller has checked access and spent the
/// user's ticket budget ([`crate::tickets::spend_budget`]).
pub(crate) async fn mint(
    state: &AppState,
    holder: Holder,
    session_id: SessionId,
    service: &str,
) -> Result<ProxyGrant, ApiError> {
    let ttl = state.config.proxy_token_ttl;
    let mut claims = Claims::new(TokenKind::Proxy, holder.user_id, now_millis(), ttl);
    claims.fam = holder.login;
    claims.tok = holder.token;
    claims.sid = Some(session_id);
    claims.svc = Some(service.to_owned());
    let token = claims.sign(&*state.signer);
    let unused = Ticket {
        session_id,
        user_id: holder.user_id,
        login: holder.login,
        token: holder.token,
        expires_at: claims.exp,
    };
    state
        .stores
        .tickets
        .put(link_key(&claims), unused)
        .await
        .map_err(|e| ApiError::unavailable("tickets_unavailable", e))?;
    let public = url::Url::parse(&state.config.public_url)
        .map_err(|e| ApiError::internal(format!("bad --public-url: {e}")))?;
    let port = public.port().map(|p| format!(":{p}")).unwrap_or_default();
    Ok(ProxyGrant {
        url: format!(
            "{}://{service}--{}.{}{port}/?token={token}",
            public.scheme(),
            session_id.as_uuid().simple(),
            state.config.proxy_domain
        ),
        token,
        expires_in: ttl,
    })
}

/// Where a link's "not used yet" mark is kept in the ticket store.
fn link_key(claims: &Claims) -> String {
    rtunnel_core::ticket::ticket_key(&format!("proxy-link:{}", claims.jti))
}

/// Whether `service` of a manifest can be reached through the proxy.
pub(crate) fn proxiable(session: &SessionRecord, service: &str) -> bool {
    service != TERMINAL_SERVICE && session.services.iter().any(|s| s.name == service)
}

/// `unknown_service` for a service the proxy cannot reach, naming those it
/// can.
pub(crate) fn not_proxiable(session: &SessionRecord, service: &str) -> ApiError {
    let names: Vec<&str> = session
        .services
        .iter()
        .filter(|s| s.name != TERMINAL_SERVICE)
        .map(|s| s.name.as_str())
        .collect();
    let list = if names.is_empty() {
        "it has none the proxy can reach".to_owned()
    } else {
        format!("it has {}", names.join(", "))
    };
    ApiError::not_found(
        "unknown_service",
        format!("the session has no web service named {service:?}; {list}"),
    )
}

/// Middleware in front of every route: requests for a proxy host go to the
/// proxy, others on to the API.
pub(crate) async fn dispatch(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    match host::route(req.headers(), req.uri(), &state.config.proxy_domain) {
        Routed::Api => next.run(req).await,
        Routed::Invalid(why) => ApiError::bad_request("invalid_host", why).into_response(),
        Routed::Proxy(target) => {
            let https = public_scheme(&state) == "https";
            let mut resp = match serve(state, target, req).await {
                Ok(resp) => resp,
                Err(e) => {
                    let mut resp = e.into_response();
                    resp.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    headers::add_security_headers(resp.headers_mut());
                    resp
                }
            };
            if https
                && !resp
                    .headers()
                    .contains_key(header::STRICT_TRANSPORT_SECURITY)
            {
                resp.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static("max-age=31536000"),
                );
            }
            resp
        }
    }
}

/// The scheme clients use to reach the server.
fn public_scheme(state: &AppState) -> &'static str {
    if state.config.public_url.starts_with("https:") {
        "https"
    } else {
        "http"
    }
}

/// The name of the proxy's cookie: `__Host-` prefixed on https.
fn cookie_name(state: &AppState) -> &'static str {
    if public_scheme(state) == "https" {
        SECURE_COOKIE_NAME
    } else {
        COOKIE_NAME
    }
}

/// Whether an `Authorization` value carries an rtunnel credential: an API
/// token, a token this server signed, or a system's key in HTTP Basic.
fn is_rtunnel_credential(state: &AppState, value: &str) -> bool {
    let Some((scheme, credential)) = value.trim().split_once(' ') else {
        return false;
    };
    let credential = credential.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return credential.starts_with(rtunnel_auth::api_token::PREFIX)
            || state.signer.verify(credential).is_ok();
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        return base64::engine::general_purpose::STANDARD
            .decode(credential)
            .is_ok_and(|raw| raw.starts_with(b"sys_"));
    }
    false
}

async fn serve(
    state: Arc<AppState>,
    target: ProxyHost,
    mut req: Request,
) -> Result<Response, ApiError> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .ok_or_else(|| ApiError::internal("no peer address on the request"))?;
    // `?token=` is the proxy's when it is a proxy token for this host; an
    // application's own `token` parameter passes through to it untouched
    // for a client that already holds the cookie.
    let cookie = cookie_claims(&state, &target, req.headers());
    if let Some((token, rest)) = split_token(req.uri().query()) {
        match verify(&state, &target, &token, TokenKind::Proxy) {
            Ok(claims) => {
                let path = req.uri().path().to_owned();
                let to = (path.as_str(), rest.as_str());
                let key = link_key(&claims);
                let unused = state
                    .stores
                    .tickets
                    .take(&key, now_millis())
                    .await
                    .map_err(|e| ApiError::unavailable("tickets_unavailable", e))?;
                if let Some(mark) = unused {
                    let redeemed = redeem(&state, &target, claims, to, req.method(), peer).await;
                    if redeemed.is_err() {
                        // Not used after all (no access yet, the agent away,
                        // the audit log down): the link works once it can.
                        if let Err(e) = state.stores.tickets.put(key, mark).await {
                            tracing::warn!(error = %e, "cannot give a proxy link back");
                        }
                    }
                    return redeemed;
                }
                // Used before: a browser that holds the cookie just goes on
                // (the link clicked twice); anyone else is told.
                if cookie.is_ok() {
                    return redirect(&state, &target, to, req.method(), None);
                }
                return Ok(link_used(req.headers()));
            }
            Err(e) if cookie.is_err() => return Err(e),
            Err(_) => {}
        }
    }
    if cookie.is_err() && needs_same_site_reload(&state, req.headers()) {
        return Ok(same_site_reload());
    }
    let claims = cookie?;
    headers::strip_rtunnel_authorization(req.headers_mut(), |v| is_rtunnel_credential(&state, v));
    let holder = Holder {
        user_id: claims.sub,
        login: claims.fam,
        token: claims.tok,
    };
    let (session, user) = check_access(&state, &target, holder).await?;
    let operator = user.name.clone();
    let visitor = Visitor {
        name: user.name,
        system_id: session.system_id,
        peer,
    };
    let key = VisitKey {
        holder,
        session_id: target.session_id,
        service: target.service.clone(),
    };
    let in_flight = Visits::enter(&state, key, &visitor).await?;
    let to = Upstream {
        target: &target,
        session: &session,
        operator: &operator,
    };
    forward(&state, to, req, peer, in_flight).await
}

/// Where a proxied request goes, and for whom.
struct Upstream<'a> {
    target: &'a ProxyHost,
    session: &'a SessionRecord,
    operator: &'a str,
}

/// The `token` parameter of a query, and the query without it (raw pieces
/// kept as they were).
fn split_token(query: Option<&str>) -> Option<(String, String)> {
    let query = query?;
    let mut token = None;
    let mut rest = Vec::new();
    for piece in query.split('&') {
        match piece.split_once('=') {
            Some(("token", value)) if token.is_none() => {
                token = Some(
                    percent_encoding::percent_decode_str(value)
                        .decode_utf8_lossy()
                        .into_owned(),
                );
            }
            _ if piece.is_empty() => {}
            _ => rest.push(piece),
        }
    }
    Some((token?, rest.join("&")))
}

fn verify(
    state: &AppState,
    target: &ProxyHost,
    token: &str,
    kind: TokenKind,
) -> Result<Claims, ApiError> {
    let claims = Claims::verify(&*state.signer, token, kind, now_millis()).map_err(|e| {
        let (code, message) = match e {
            TokenError::Expired => (
                "proxy_token_expired",
                "this proxy link has expired; ask for a new one",
            ),
            _ => ("invalid_proxy_token", "this proxy token is not valid"),
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    })?;
    if claims.sid != Some(target.session_id) || claims.svc.as_deref() != Some(&target.service) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_proxy_token",
            "this proxy token is for another service",
        ));
    }
    Ok(claims)
}

/// The answer to a proxy link used a second time: a page for a browser,
/// the envelope for anything else (410 `proxy_link_used` either way).
fn link_used(request: &axum::http::HeaderMap) -> Response {
    const MESSAGE: &str = "this proxy link was already used; ask rtunnel for a new one";
    let wants_html = request
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let mut resp = if wants_html {
        const PAGE: &str = "<!doctype html><meta charset=\"utf-8\"><title>Link already used</title>\
            <h1>This link was already used</h1>\
            <p>A proxy link from rtunnel opens the service once, in the browser that opened it first. \
            Ask rtunnel for a new link (or open the service from the console again).</p>";
        let mut resp = (StatusCode::GONE, axum::response::Html(PAGE)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'"),
        );
        resp
    } else {
        ApiError::new(StatusCode::GONE, "proxy_link_used", MESSAGE).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-rtunnel-error",
        HeaderValue::from_static("proxy_link_used"),
    );
    headers::add_security_headers(h);
    resp
}

/// Whether a request lacks the proxy cookie only because the browser held
/// it back: a top-level navigation started from another site (a link on
/// the console, or the redirect after `?token=` when the link came from
/// elsewhere) does not carry `SameSite=Strict` cookies.
fn needs_same_site_reload(state: &AppState, headers: &axum::http::HeaderMap) -> bool {
    let is = |name: &str, values: &[&str]| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| values.iter().any(|w| v.eq_ignore_ascii_case(w)))
    };
    headers::request_cookies(headers, cookie_name(state)).is_empty()
        && is("sec-fetch-mode", &["navigate"])
        && is("sec-fetch-site", &["cross-site", "same-site"])
}

/// A page that loads itself again: that navigation starts on this origin,
/// so the browser sends the cookie. Without one the second answer is the
/// 401, so this cannot loop.
fn same_site_reload() -> Response {
    const PAGE: &str = "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0\">\
        <title>rtunnel</title><p>Opening the service&hellip;</p>";
    let mut resp = axum::response::Html(PAGE).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    headers::add_security_headers(h);
    resp
}

/// The claims of the request's proxy cookie. Every value of the cookie is
/// tried (an application on this host can set cookies of that name too,
/// but not valid ones): malformed or foreign values are skipped, not taken
/// as the answer.
fn cookie_claims(
    state: &AppState,
    target: &ProxyHost,
    headers: &axum::http::HeaderMap,
) -> Result<Claims, ApiError> {
    let cookies = headers::request_cookies(headers, cookie_name(state));
    let mut last = None;
    for value in cookies {
        match verify(state, target, value, TokenKind::ProxyCookie) {
            Ok(claims) => return Ok(claims),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "proxy_token_required",
            "open this service with a proxy link from rtunnel (POST /api/v1/sessions/{id}/proxy-token)",
        )
    }))
}

/// The session, and the user if they may still reach it; the checks of
/// every proxied request.
async fn check_access(
    state: &AppState,
    target: &ProxyHost,
    holder: Holder,
) -> Result<(SessionRecord, User), ApiError> {
    let session = state
        .stores
        .sessions
        .session(target.session_id)
        .await?
        .ok_or_else(|| ApiError::not_found("session_not_found", "no such session"))?;
    match session.status {
        SessionStatus::Active => {}
        SessionStatus::GracePeriod | SessionStatus::Pending => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "agent_reconnecting",
                "the agent is reconnecting; try again in a moment",
            )
            .with_retry_after(RECONNECT_RETRY));
        }
        s => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "session_ended",
                format!("the session is {}", s.as_str()),
            ));
        }
    }
    let user = match state.access.may_connect(holder, session.system_id).await? {
        Ok(user) => user,
        Err(code) => {
            return Err(ApiError::forbidden(
                code,
                "access to this service was revoked",
            ));
        }
    };
    if !proxiable(&session, &target.service) {
        return Err(not_proxiable(&session, &target.service));
    }
    Ok((session, user))
}

/// `?token=` of a link not used before: checks the user's access, stores
/// `proxy_opened`, sets the cookie (a credential of its own, for the rest of
/// the link's life) and redirects to the same URL without the token (on
/// this host: never anywhere else).
async fn redeem(
    state: &AppState,
    target: &ProxyHost,
    claims: Claims,
    to: (&str, &str),
    method: &Method,
    peer: SocketAddr,
) -> Result<Response, ApiError> {
    let holder = Holder {
        user_id: claims.sub,
        login: claims.fam,
        token: claims.tok,
    };
    let (session, user) = check_access(state, target, holder).await?;
    let mut event = AuditEvent::new(AuditKind::ProxyOpened);
    event.actor = Some(user.name.clone());
    event.system_id = Some(session.system_id);
    event.session_id = Some(session.id);
    event.ip_address = Some(peer.ip().to_string());
    event.details = serde_json::json!({"service": target.service, "token_id": claims.jti});
    state.audit.record(event).await?;
    let mut cookie = claims.clone();
    cookie.typ = TokenKind::ProxyCookie;
    cookie.jti = Uuid::new_v4();
    let value = cookie.sign(&*state.signer);
    let max_age = (claims.exp - now_millis()).max(0) / 1000;
    let secure = if public_scheme(state) == "https" {
        "; Secure"
    } else {
        ""
    };
    let name = cookie_name(state);
    let set_cookie =
        format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}");
    redirect(state, target, to, method, Some(&set_cookie))
}

/// A redirect to `path` and `rest_of_query` on the proxy host, optionally
/// setting a cookie. Absolute, on the host just parsed: a path like
/// `//evil.example` stays a path of this host.
fn redirect(
    state: &AppState,
    target: &ProxyHost,
    (path, rest_of_query): (&str, &str),
    method: &Method,
    set_cookie: Option<&str>,
) -> Result<Response, ApiError> {
    let query = if rest_of_query.is_empty() {
        String::new()
    } else {
        format!("?{rest_of_query}")
    };
    let scheme = public_scheme(state);
    let location = format!("{scheme}://{}{path}{query}", target.authority);
    let status = if matches!(*method, Method::GET | Method::HEAD) {
        StatusCode::FOUND
    } else {
        StatusCode::SEE_OTHER
    };
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, header_value(&location)?);
    if let Some(cookie) = set_cookie {
        h.insert(header::SET_COOKIE, header_value(cookie)?);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers::add_security_headers(h);
    Ok(resp)
}

fn header_value(s: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(s).map_err(|e| ApiError::internal(format!("header value: {e}")))
}

/// Sends the request to the service and streams the answer back.
async fn forward(
    state: &Arc<AppState>,
    Upstream {
        target,
        session,
        operator,
    }: Upstream<'_>,
    mut req: Request,
    peer: SocketAddr,
    in_flight: InFlight,
) -> Result<Response, ApiError> {
    let service = session.services.iter().find(|s| s.name == target.service);
    let scheme = public_scheme(state);
    let own_scheme = if service.is_some_and(|s| s.tls) {
        "https"
    } else {
        "http"
    };
    // The Host the service gets, and the origin it calls its own: its
    // address, a fixed name, or the public proxy host (whose origin is then
    // the public one, left as it is).
    let (upstream_host, upstream_scheme) = match service.map(|s| &s.host_header) {
        Some(HostHeader::Fixed(name)) => (name.clone(), own_scheme),
        Some(HostHeader::Public) => (target.authority.clone(), scheme),
        _ => (
            service
                .and_then(|s| s.target.clone())
                .unwrap_or_else(|| "localhost".to_owned()),
            own_scheme,
        ),
    };
    let fwd = Forwarding {
        upstream_host: &upstream_host,
        upstream_scheme,
        proxy_authority: &target.authority,
        scheme,
        client_ip: peer.ip(),
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri = upstream::upstream_uri(&target.service, target.session_id, operator, &path)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_request_target",
                "the request target cannot be forwarded",
            )
        })?;
    let wants_upgrade = headers::upgrade_protocol(req.headers()).is_some();
    let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let held = req
        .extensions()
        .get::<crate::accept::HeldConnection>()
        .cloned();
    let (mut parts, body) = req.into_parts();
    headers::to_upstream(&mut parts.headers, &fwd);
    parts.uri = uri;
    parts.extensions = Default::default();
    let visit = in_flight.visit().clone();
    let body = Body::new(Metered::new(
        body,
        Direction::ToService,
        visit.clone(),
        None,
    ));
    let upstream_req = Request::from_parts(parts, body);
    let mut resp = state
        .proxy
        .client
        .request(upstream_req)
        .await
        .map_err(|e| upstream_error(&e))?;
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::to_client(resp.headers_mut(), &fwd, switching && wants_upgrade);
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                "the service switched protocols unasked",
            ));
        };
        let service_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            // The upgraded connection stays counted under the caps.
            let _held = held;
            relay_upgraded(client_upgrade, service_upgrade, in_flight).await;
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (parts, body) = resp.into_parts();
    let body = Body::new(Metered::new(
        body,
        Direction::FromService,
        visit,
        Some(in_flight),
    ));
    Ok(Response::from_parts(parts, body))
}

/// Relays an upgraded connection (a WebSocket) until either side ends or
/// the visit is cut.
async fn relay_upgraded(
    client: hyper::upgrade::OnUpgrade,
    service: hyper::upgrade::OnUpgrade,
    in_flight: InFlight,
) {
    let (client, service) = match tokio::try_join!(client, service) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!("proxied upgrade failed: {e}");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut service = TokioIo::new(service);
    let visit = in_flight.visit().clone();
    let outcome =
        rtunnel_core::relay::relay_until(&mut client, &mut service, visit.cut().cancelled()).await;
    visit.sent(outcome.a_to_b);
    visit.received(outcome.b_to_a);
    drop(in_flight);
}

/// A failed request to a service, for the client.
fn upstream_error(e: &hyper_util::client::legacy::Error) -> ApiError {
    match upstream::connect_error(e) {
        Some(ConnectError::Refused(refusal)) => ApiError::from(refusal.clone()),
        Some(other) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "agent_unavailable",
            other.to_string(),
        ),
        None => {
            tracing::info!("proxied request failed: {e}");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                "the service closed the connection or sent a response that cannot be read",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_token_leaves_the_query_and_the_rest_stays_as_written() {
        assert_eq!(split_token(None), None);
        assert_eq!(split_token(Some("a=1")), None);
        assert_eq!(
            split_token(Some("token=abc")),
            Some(("abc".to_owned(), String::new()))
        );
        assert_eq!(
            split_token(Some("x=%2F&token=a%2Eb&y=1&token=second")),
            Some(("a.b".to_owned(), "x=%2F&y=1&token=second".to_owned()))
        );
    }
}
