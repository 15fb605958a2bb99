//! Token checking: a tower layer generic over the backend that decides.
//!
//! [`TokenAuthLayer`] finds the token of a request, makes sure the request is
//! a WebSocket upgrade worth asking about, and asks an [`Authorizer`]. An
//! allowed request reaches the inner service with its [`CommandSpec`] and
//! its [`WebSocketUpgrade`](crate::websocket::WebSocketUpgrade) in the
//! request extensions; a denied one is answered right there, so the inner
//! service never sees it.
//!
//! - `authorizer`: the [`Authorizer`] trait and [`AuthError`];
//! - `layer`: [`TokenAuthLayer`];
//! - `limit`: [`AuthLimitLayer`], attempts and waiting requests per address;
//! - `policy`: [`Policy`], what a spec may ask for whatever the backend says;
//! - `token`: where a request carries its token, and its loggable hash;
//! - `client`: the HTTP client backends share;
//! - `controller`: the remote controller backend;
//! - [`jwt`]: the local JWT backend (feature `jwt`).
//!
//! A backend is anything that implements [`Authorizer`]:
//!
//! ```
//! use ws_subprocess::CommandSpec;
//! use ws_subprocess::auth::{AuthError, Authorizer};
//!
//! /// Lets exactly one token run `/bin/date`.
//! struct OneToken(String);
//!
//! impl Authorizer for OneToken {
//!     async fn authorize(&self, token: &str, _: &http::request::Parts) -> Result<CommandSpec, AuthError> {
//!         if token == self.0 {
//!             Ok(CommandSpec::new("/bin/date", Vec::<String>::new()))
//!         } else {
//!             Err(AuthError::Denied("unknown token".into()))
//!         }
//!     }
//! }
//! ```
//!
//! [`CommandSpec`]: crate::CommandSpec

mod authorizer;
mod client;
mod controller;
#[cfg(feature = "jwt")]
pub mod jwt;
mod layer;
mod limit;
mod policy;
mod token;

pub use authorizer::{AuthError, Authorizer, BoxError};
pub use client::{BodyError, backend_client, read_capped};
pub use controller::{ControllerAuthorizer, ControllerSettings, MAX_CONTROLLER_BODY};
pub use layer::{ResponseFuture, TokenAuth, TokenAuthLayer};
pub use limit::{AuthLimit, AuthLimitFuture, AuthLimitLayer, AuthLimits, Per, Rate};
pub use policy::{Policy, SAFE_ENV};
pub use token::{bearer_token, header_token, hex, token_hash, token_of};
