//! The public pieces composed by a library user: a backend of their own,
//! tower-http layers, and an axum router, served by axum itself.

mod common;

use common::*;
use http::{HeaderName, HeaderValue, StatusCode};
use tower::ServiceBuilder;
use tower_http::set_header::SetResponseHeaderLayer;
use ws_subprocess::CommandSpec;
use ws_subprocess::auth::{AuthError, Authorizer, TokenAuthLayer};
use ws_subprocess::session::{ServeSubprocess, SessionSettings, Sessions};

/// A backend of the user's own: one fixed token.
struct OneToken(&'static str);

impl Authorizer for OneToken {
    async fn authorize(&self, token: &str, _: &http::request::Parts) -> Result<CommandSpec, AuthError> {
        if token == self.0 {
            Ok(CommandSpec::new("/bin/echo", ["composed"]))
        } else {
            Err(AuthError::Denied("unknown token".into()))
        }
    }
}

#[tokio::test]
async fn stack_composes_inside_an_axum_router_with_tower_http_layers() {
    let sessions = Sessions::new();
    let terminal = ServiceBuilder::new()
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("x-served-by"),
            HeaderValue::from_static("ws-subprocess"),
        ))
        .layer(TokenAuthLayer::new(OneToken("s3cret")))
        .service(ServeSubprocess::new(SessionSettings::default(), sessions.clone()));
    let app =
        axum::Router::new().route("/", axum::routing::get(|| async { "home" })).route_service("/terminal", terminal);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/terminal?token=s3cret")).await.unwrap();
    assert_eq!(response.headers()["x-served-by"], "ws-subprocess");
    let (output, close) = collect(&mut ws).await;
    assert_eq!(output, b"composed\n");
    assert_eq!(u16::from(close.unwrap().code), 1000);

    let (status, body) = refusal(format!("ws://{addr}/terminal?token=wrong")).await;
    assert_eq!((status, body.as_str()), (StatusCode::FORBIDDEN, "forbidden\n"));
    assert_eq!(http_request(addr, "GET / HTTP/1.1").await.2, "home");

    sessions.shutdown();
    sessions.wait().await;
}
