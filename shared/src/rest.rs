//! Every REST route of the protocol as one axum `Router`. The `sessions-api` Lambda runs it
//! through `lambda_http`, and the harness mounts the very same router.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::app::App;
use crate::auth::{Claims, bearer_token};
use crate::config::CorsOrigins;
use crate::domain::{
    DisplayName, FieldError, MaxParticipants, Message, Participant, Role, Session, SessionName,
    parse_host_name,
};
use crate::error::{ApiError, ErrorBody};
use crate::personas::PersonaSummary;
use crate::store::NewSession;

/// The whole REST API with its middleware: request ids, logs, CORS, body limit, JSON
/// errors for unknown routes and methods.
pub fn router(app: App) -> Router {
    let body_limit = app.config.max_body_bytes;
    let cors = cors_layer(&app.config.cors_origins);
    Router::new()
        .route("/health", get(health))
        .route("/api/personas", get(list_personas))
        .route("/api/sessions", post(create_session))
        .route("/api/sessions/{id}", get(get_session))
        .route("/api/sessions/{id}/join", post(join_session))
        .route("/api/sessions/{id}/messages", get(list_messages))
        .route("/api/sessions/{id}/end", post(end_session))
        .route("/asyncapi.json", get(asyncapi))
        // The document is built when asked for, not at start-up: it is a large tree of
        // schemas, and a cold start of this function seldom serves it.
        .route("/openapi.json", get(openapi_json))
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .config(utoipa_swagger_ui::Config::from("/openapi.json")),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|req: &Request| {
                            // The path only: query strings may carry tokens.
                            let request_id = req
                                .headers()
                                .get("x-request-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-");
                            tracing::info_span!(
                                "request",
                                method = %req.method(),
                                path = %req.uri().path(),
                                request_id = %request_id,
                            )
                        })
                        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::Internal.into_response()
                }))
                .layer(cors),
        )
}

fn cors_layer(origins: &CorsOrigins) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([
            header::RETRY_AFTER,
            header::HeaderName::from_static("x-request-id"),
        ])
        .max_age(Duration::from_secs(3600));
    match origins {
        CorsOrigins::Any => layer.allow_origin(Any),
        CorsOrigins::List(list) => layer.allow_origin(AllowOrigin::list(
            list.iter().filter_map(|o| HeaderValue::from_str(o).ok()),
        )),
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

// ---------------------------------------------------------------------------------------
// Extractors: the protocol's errors for bad bodies and missing tokens.

/// A JSON body: 413 over the limit, 400 when it is not JSON, 422 naming the field when it
/// is JSON of the wrong shape. The `Content-Type` is not insisted on.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<App> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &App) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit: state.config.max_body_bytes,
                }
            } else {
                ApiError::InvalidJson("the body could not be read".into())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Syntax first (400), then shape (422): a body that is not JSON at all is never
/// reported as a missing field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|err| ApiError::InvalidJson(strip_position(&err.to_string()).to_owned()))?;
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let message = err.into_inner().to_string();
        // serde names a missing field only in its message.
        let field = if path == "." {
            message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned)
        } else {
            Some(path)
        };
        let message = match &field {
            Some(field) => format!("{field}: {message}"),
            None => format!("the body has the wrong shape: {message}"),
        };
        ApiError::InvalidField(FieldError { field, message })
    })
}

fn strip_position(message: &str) -> &str {
    message.split(" at line ").next().unwrap_or(message)
}

/// The verified claims of an `Authorization: Bearer <jwt>` header (401 otherwise).
pub struct Bearer(pub Claims);

impl FromRequestParts<App> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &App) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        let token = bearer_token(header)?;
        Ok(Self(state.tokens.verify(token)?))
    }
}

/// One request's worth of the per-client quota for writes (creating and joining sessions):
/// 429 with `Retry-After` beyond it. The client is who API Gateway saw
/// (`requestContext.http.sourceIp` in Lambda), else the TCP peer; `X-Forwarded-For` only
/// when `TRUST_FORWARDED_FOR` says a proxy in front sets it, since a client can write that
/// header itself and pick its own bucket.
pub struct WriteQuota;

/// The caller's address as API Gateway saw it, from the Lambda event's request context.
fn api_gateway_source_ip(parts: &Parts) -> Option<String> {
    use lambda_http::request::RequestContext;
    let ip = match parts.extensions.get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(context) => context.http.source_ip.clone(),
        RequestContext::ApiGatewayV1(context) => context.identity.source_ip.clone(),
        #[allow(unreachable_patterns)]
        _ => None,
    };
    ip.filter(|ip| !ip.is_empty())
}

fn client_of(parts: &Parts, trust_forwarded_for: bool) -> String {
    let forwarded = || {
        parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(|ip| ip.trim().to_owned())
            .filter(|ip| !ip.is_empty())
    };
    api_gateway_source_ip(parts)
        .or_else(|| trust_forwarded_for.then(forwarded).flatten())
        .or_else(|| {
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip().to_string())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

impl FromRequestParts<App> for WriteQuota {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let client = client_of(parts, app.config.trust_forwarded_for);
        let key = format!("rest-write:{client}");
        match app
            .limiter
            .acquire(&key, crate::ratelimit::RateLimit::rest_writes(&app.config))
            .await
        {
            Ok(crate::ratelimit::Decision::Allowed) => Ok(Self),
            Ok(crate::ratelimit::Decision::RetryAfter(wait)) => Err(ApiError::RateLimited {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }),
            Err(err) => {
                // Better to let a séance start than to refuse everyone while Redis blinks.
                tracing::warn!(%err, "rate limiter unavailable; letting the request through");
                Ok(Self)
            }
        }
    }
}

/// A session id from the path: anything that is not a UUID names no session.
fn session_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound("no session has this id"))
}

// ---------------------------------------------------------------------------------------
// Bodies.

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthBody {
    /// `healthy` or `degraded`.
    pub status: &'static str,
    /// `connected` or `disconnected`.
    pub database: &'static str,
    /// `connected`, `disconnected`, or `embedded` when the harness runs without Redis.
    pub redis: &'static str,
    /// `postgres` or `sqlite`.
    pub database_backend: &'static str,
    /// Which model answers for the spirit, e.g. `oracle (offline)` or `gemini (gemini-flash-latest)`.
    pub spirit: String,
    /// Who speaks the answers: `none`, `offline (hummed letters)` or `elevenlabs (model)`.
    pub voice: String,
    pub timestamp: DateTime<Utc>,
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PersonasBody {
    pub personas: Vec<PersonaSummary>,
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateSessionBody {
    /// 1–100 characters after trimming; no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u0009\u000B-\u001F\u007F-\u009F]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u0009\u000B-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// 1–40 characters after trimming; no control characters.
    #[schema(
        min_length = 1,
        max_length = 40,
        pattern = r"^[^\u0000-\u0009\u000B-\u001F\u007F-\u009F]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u0009\u000B-\u001F\u007F-\u009F]*$"
    )]
    pub host_name: String,
    /// A persona id from `GET /api/personas`; the default persona when left out.
    #[schema(min_length = 1)]
    #[cfg_attr(feature = "typescript", ts(optional = nullable))]
    pub persona: Option<String>,
    /// 2–12; 8 when left out.
    #[schema(minimum = 2, maximum = 12)]
    #[schema(value_type = Option<i64>)]
    #[cfg_attr(feature = "typescript", ts(optional = nullable, as = "Option<i64>"))]
    pub max_participants: Option<WholeNumber>,
}

/// A whole number as JSON sends it: `2.0` is the integer 2 (JSON Schema agrees), `2.5`
/// is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WholeNumber(pub i64);

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = serde_json::Number::deserialize(deserializer)?;
        if let Some(whole) = number.as_i64() {
            return Ok(Self(whole));
        }
        match number.as_f64() {
            // Within ±2^53 every whole f64 is exact; the caller checks the real range.
            Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 =>
            {
                #[allow(clippy::cast_possible_truncation)]
                Ok(Self(f as i64))
            }
            _ => Err(serde::de::Error::custom(format!(
                "{number} is not a whole number"
            ))),
        }
    }
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct JoinSessionBody {
    /// 1–40 characters after trimming; no control characters.
    #[schema(
        min_length = 1,
        max_length = 40,
        pattern = r"^[^\u0000-\u0009\u000B-\u001F\u007F-\u009F]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u0009\u000B-\u001F\u007F-\u009F]*$"
    )]
    pub display_name: String,
}

/// The answer to create and join: the session, who you are in it, and how to connect.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionTicket {
    pub session: Session,
    pub participant: Participant,
    /// HS256 JWT for `Authorization: Bearer` and the WebSocket's `?token=`.
    pub token: String,
    /// The WebSocket address, without the token: append `?token=<jwt>`.
    pub websocket_url: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct MessagesQuery {
    /// 1–100, default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// A message id of this session: return the messages before it.
    #[param(value_type = Option<Uuid>)]
    pub before: Option<String>,
}

#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessagesBody {
    /// Oldest first.
    pub messages: Vec<Message>,
    /// Pass as `before` to read the previous page; null when there is none.
    pub next_before: Option<Uuid>,
}

// ---------------------------------------------------------------------------------------
// Handlers.

/// The REST routes as OpenAPI, built on each request (see the router).
async fn openapi_json(State(app): State<App>) -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(openapi(&app))
}

/// The WebSocket protocol as AsyncAPI 3 (the REST routes are `/openapi.json`).
async fn asyncapi() -> axum::Json<serde_json::Value> {
    axum::Json(crate::asyncapi::document())
}

const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, body = HealthBody), (status = 503, body = HealthBody)))]
pub async fn health(State(app): State<App>) -> Response {
    let database = matches!(
        tokio::time::timeout(HEALTH_TIMEOUT, app.store.ping()).await,
        Ok(Ok(()))
    );
    let redis = match &app.redis {
        None => Some("embedded"),
        Some(redis) => {
            if redis.ping().await.is_ok() {
                Some("connected")
            } else {
                None
            }
        }
    };
    let healthy = database && redis.is_some();
    let body = HealthBody {
        status: if healthy { "healthy" } else { "degraded" },
        database: if database {
            "connected"
        } else {
            "disconnected"
        },
        redis: redis.unwrap_or("disconnected"),
        database_backend: app.store.backend(),
        spirit: app.config.spirit.provider.describe(),
        voice: app.config.voice.describe(),
        timestamp: Utc::now(),
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

#[utoipa::path(get, path = "/api/personas", tag = "sessions",
    responses((status = 200, body = PersonasBody)))]
pub async fn list_personas(State(app): State<App>) -> axum::Json<PersonasBody> {
    axum::Json(PersonasBody {
        personas: app.personas.all().iter().map(|p| p.summary()).collect(),
    })
}

#[utoipa::path(post, path = "/api/sessions", tag = "sessions", request_body = CreateSessionBody,
    responses((status = 201, body = SessionTicket), (status = 400, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_session(
    State(app): State<App>,
    _quota: WriteQuota,
    JsonBody(body): JsonBody<CreateSessionBody>,
) -> Result<(StatusCode, axum::Json<SessionTicket>), ApiError> {
    let name = SessionName::parse(&body.name)?;
    let host_name = parse_host_name(&body.host_name)?;
    let persona = match body.persona.as_deref().map(str::trim) {
        None => app.personas.default_id().to_owned(),
        Some(id) => match app.personas.get(id) {
            Some(persona) => persona.id.clone(),
            None => {
                let known: Vec<&str> = app.personas.all().iter().map(|p| p.id.as_str()).collect();
                return Err(FieldError::new(
                    "persona",
                    format!(
                        "persona `{id}` is unknown; choose one of {}",
                        known.join(", ")
                    ),
                )
                .into());
            }
        },
    };
    let max_participants = MaxParticipants::parse(
        body.max_participants
            .map_or(i64::from(app.config.default_max_participants), |n| n.0),
        app.config.max_participants_cap,
    )?;
    let (session, host) = app
        .store
        .create_session(NewSession {
            name,
            persona,
            max_participants,
            host_name,
        })
        .await?;
    tracing::info!(session_id = %session.id, persona = %session.persona, "session created");
    let ticket = ticket(&app, session, host)?;
    Ok((StatusCode::CREATED, axum::Json(ticket)))
}

#[utoipa::path(post, path = "/api/sessions/{id}/join", tag = "sessions", request_body = JoinSessionBody,
    params(("id" = Uuid, Path, description = "The session id")),
    responses((status = 200, body = SessionTicket), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn join_session(
    State(app): State<App>,
    _quota: WriteQuota,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<JoinSessionBody>,
) -> Result<axum::Json<SessionTicket>, ApiError> {
    let id = session_id(&id)?;
    let display_name = DisplayName::parse(&body.display_name)?;
    let (session, participant) = app.store.join_session(id, &display_name).await?;
    tracing::info!(session_id = %session.id, seat = participant.seat, "participant joined");
    Ok(axum::Json(ticket(&app, session, participant)?))
}

fn ticket(
    app: &App,
    session: Session,
    participant: Participant,
) -> Result<SessionTicket, ApiError> {
    let token = app.tokens.issue(session.id, &participant)?;
    Ok(SessionTicket {
        session,
        participant,
        token,
        websocket_url: app.websocket_url.to_string(),
    })
}

#[utoipa::path(get, path = "/api/sessions/{id}", tag = "sessions",
    params(("id" = Uuid, Path, description = "The session id")),
    responses((status = 200, body = Session), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn get_session(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<axum::Json<Session>, ApiError> {
    let id = session_id(&id)?;
    Ok(axum::Json(app.store.session(id).await?))
}

#[utoipa::path(get, path = "/api/sessions/{id}/messages", tag = "sessions",
    params(("id" = Uuid, Path, description = "The session id"), MessagesQuery),
    security(("bearer" = [])),
    responses((status = 200, body = MessagesBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_messages(
    State(app): State<App>,
    Bearer(claims): Bearer,
    Path(id): Path<String>,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<axum::Json<MessagesBody>, ApiError> {
    let id = session_id(&id)?;
    if claims.sid != id {
        return Err(ApiError::Forbidden("this token is for another session"));
    }
    let Query(query) = query.map_err(|_| {
        ApiError::InvalidField(FieldError {
            field: None,
            message: "the query string could not be parsed".into(),
        })
    })?;
    let limit = match query.limit.as_deref() {
        None => app.config.default_page_size,
        Some(raw) => match raw.trim().parse::<u32>() {
            Ok(n @ 1..=100) => n,
            _ => {
                return Err(FieldError::new(
                    "limit",
                    format!("limit must be a whole number from 1 to 100 (got `{raw}`)"),
                )
                .into());
            }
        },
    };
    let before = match query.before.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            Uuid::parse_str(raw.trim())
                .map_err(|_| FieldError::new("before", "before must be a message id (a UUID)"))?,
        ),
    };
    app.store.session(id).await?;
    if app.store.participant(id, claims.sub).await?.is_none() {
        return Err(ApiError::Forbidden(
            "this token's participant is not in the session",
        ));
    }
    let page = app.store.messages_before(id, before, limit).await?;
    Ok(axum::Json(MessagesBody {
        messages: page.messages,
        next_before: page.next_before,
    }))
}

#[utoipa::path(post, path = "/api/sessions/{id}/end", tag = "sessions",
    params(("id" = Uuid, Path, description = "The session id")),
    security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn end_session(
    State(app): State<App>,
    Bearer(claims): Bearer,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = session_id(&id)?;
    if claims.sid != id {
        return Err(ApiError::Forbidden("this token is for another session"));
    }
    if claims.role != Role::Host {
        return Err(ApiError::Forbidden("only the host can end the session"));
    }
    crate::session_end::end_session(&app, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// The OpenAPI document, generated from the handlers above.

#[derive(OpenApi)]
#[openapi(
    info(title = "Séance API", description = "REST routes of the séance protocol (v1). The WebSocket protocol is in /asyncapi.json and docs/protocol.md."),
    paths(health, list_personas, create_session, join_session, get_session, list_messages, end_session),
    components(schemas(ErrorBody, HealthBody, PersonasBody, PersonaSummary, CreateSessionBody, JoinSessionBody,
                       SessionTicket, Session, Participant, Message, MessagesBody)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// The OpenAPI document of this deployment: [`ApiDoc`] with `persona` limited to the
/// personas this server has, so that a schema-valid request is one the server accepts.
pub fn openapi(app: &App) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{Object, Schema, SchemaType, Type};
    let mut doc = ApiDoc::openapi();
    let ids: Vec<String> = app.personas.all().iter().map(|p| p.id.clone()).collect();
    if let Some(RefOr::T(Schema::Object(body))) = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("CreateSessionBody"))
    {
        let mut persona = Object::with_type(SchemaType::from_iter([Type::String, Type::Null]));
        persona.enum_values = Some(ids.into_iter().map(serde_json::Value::from).collect());
        persona.description = Some(
            "A persona id from `GET /api/personas`; the default persona when left out.".into(),
        );
        body.properties
            .insert("persona".into(), RefOr::T(Schema::Object(persona)));
    }
    doc
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[allow(dead_code)]
        name: String,
        #[allow(dead_code)]
        count: Option<i64>,
    }

    #[test]
    fn json_errors_are_classified() {
        assert!(matches!(
            parse_json::<Sample>(b"{"),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_json::<Sample>(b""),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_json::<Sample>(b"{} x"),
            Err(ApiError::InvalidJson(_))
        ));
        match parse_json::<Sample>(b"{}") {
            Err(ApiError::InvalidField(err)) => {
                assert_eq!(err.field.as_deref(), Some("name"));
                assert!(
                    err.message.starts_with("name: missing field"),
                    "{}",
                    err.message
                );
            }
            other => panic!("expected a 422, got {other:?}"),
        }
        match parse_json::<Sample>(br#"{"name":"a","count":"x"}"#) {
            Err(ApiError::InvalidField(err)) => assert_eq!(err.field.as_deref(), Some("count")),
            other => panic!("expected a 422, got {other:?}"),
        }
        assert!(parse_json::<Sample>(br#"{"name":"a"}"#).is_ok());
    }
}
