//! The README's "Using it as a library" example, compiled by CI so it stays true.
//! Run: `cargo run --example library`, then connect to ws://127.0.0.1:8866/ws?token=s3cret

use tower::ServiceBuilder;
use ws_subprocess::CommandSpec;
use ws_subprocess::auth::{AuthError, Authorizer, TokenAuthLayer};
use ws_subprocess::origin::OriginLayer;
use ws_subprocess::routes::Routes;
use ws_subprocess::server::{ListenAddr, Listener, ServeSettings, serve};
use ws_subprocess::session::{ServeSubprocess, SessionLimitLayer, SessionSettings, Sessions};

/// Lets one fixed token run `top` in batch mode.
struct OneToken(String);

impl Authorizer for OneToken {
    async fn authorize(&self, token: &str, _request: &http::request::Parts) -> Result<CommandSpec, AuthError> {
        if token == self.0 {
            Ok(CommandSpec::new("/usr/bin/top", ["-b"]))
        } else {
            Err(AuthError::Denied("unknown token".into()))
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let sessions = Sessions::new();
    let stack = ServiceBuilder::new()
        .layer(OriginLayer::new(["https://app.example.com".to_string()]))
        .layer(SessionLimitLayer::new(64))
        .layer(TokenAuthLayer::new(OneToken("s3cret".into())).allowed_commands(["/usr/bin/top".into()]))
        .service(ServeSubprocess::new(SessionSettings::default(), sessions.clone()));
    let app = Routes::new("/ws", stack);

    let listener = Listener::bind(&ListenAddr::Tcp("127.0.0.1:8866".into())).await?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(listener, app, ServeSettings::default(), sessions, shutdown).await;
    Ok(())
}
