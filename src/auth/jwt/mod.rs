//! The JWT backend: stateless tokens, verified locally, single-use when they
//! carry a `jti`.
//!
//! The claims are the [`CommandSpec`](crate::CommandSpec) plus registered
//! claims. The algorithm comes from the configured allowlist only: the
//! token's `alg` header merely has to be in it, and must fit the family of
//! the key that verifies it, so an RSA public key can never serve as an HMAC
//! secret. `kid` only selects among configured keys.
//!
//! - `authorizer`: [`JwtAuthorizer`] and its [`JwtSettings`];
//! - `keys`: where verification keys come from ([`KeyRing`]);
//! - `replay`: where used token ids are remembered ([`ReplayStore`]);
//! - [`mint`]: making tokens, for tests and for trying a deployment.
//!
//! ```
//! use std::time::Duration;
//! use jsonwebtoken::Algorithm;
//! use ws_subprocess::auth::jwt::mint;
//!
//! let secret = b"an example secret of 32 bytes or more!!";
//! let spec = ws_subprocess::CommandSpec::new("/bin/echo", ["hi"]);
//! let token = mint::hmac(secret, Algorithm::HS256, &spec, mint::Claims::expiring_in(Duration::from_secs(60))).unwrap();
//! assert_eq!(token.split('.').count(), 3);
//! ```

mod authorizer;
mod keys;
pub mod mint;
mod replay;

pub use authorizer::{JwtAuthorizer, JwtSettings};
pub use keys::{
    JWKS_MAX_AGE, JWKS_REFRESH_COOLDOWN, JWKS_RETAIN, KeyError, KeyRing, KeySources, MIN_SECRET_LEN, VerifyingKey,
    read_secret,
};
pub use replay::{
    ConfiguredReplayStore, MemoryReplayStore, REDIS_KEY_PREFIX, RedisReplayStore, ReplayError, ReplayStore, unix_now,
};
