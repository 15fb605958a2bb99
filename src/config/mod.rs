//! Settings: one name per setting, merged from defaults, a TOML file, the
//! environment and command-line flags.
//!
//! Each setting is declared once, in `settings`, with its type, default and
//! help; [`Config::figment`] lists the sources in priority order;
//! [`Config::load`] extracts and validates them once, and the settings of
//! each piece of the server ([`Config::session_settings`], …) are built from
//! the checked values, so the rest of the program never checks or parses a
//! setting again. Every error names the key and the source it came from.
//!
//! ```
//! use figment::{Figment, providers::Serialized};
//! use ws_subprocess::Config;
//!
//! let figment = Figment::from(Serialized::defaults(Config::default()))
//!     .merge(("kill_grace", "250ms"));
//! let config = Config::from_figment(&figment).unwrap();
//! assert_eq!(config.kill_grace, std::time::Duration::from_millis(250));
//! ```
//!
//! - `settings`: [`Config`] and the [`SETTINGS`] table;
//! - `values`: value types of the configuration alone;
//! - `load`: the sources, and errors naming them;
//! - `validate`: checks across values, and each piece's settings;
//! - `show`: the effective configuration with each value's source, secrets
//!   redacted ([`Config::show`]);
//! - `reload`: what a reload may change ([`UPGRADE_ONLY`],
//!   [`Config::for_reload`], [`Config::changes`]).

mod load;
mod redact;
mod reload;
mod settings;
mod show;
mod validate;
mod values;

pub use load::{ConfigError, DEFAULT_CONFIG_FILE, ENV_PREFIX, FlagValues};
pub use redact::REDACTED;
pub use reload::UPGRADE_ONLY;
pub use settings::{Config, SETTINGS, Setting};
pub use values::{AuthBackend, ClientAuth, JwtAlgorithm, KeyFamily, LogFormat, ReplayStoreAddr};
