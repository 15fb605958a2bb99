//! Value types that exist only in the configuration, and how values are read
//! from text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use url::Url;

/// Token-checking backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthBackend {
    /// Ask the controller at `controller_url`.
    Controller,
    /// Verify JSON Web Tokens locally (`jwt_*` keys).
    Jwt,
}

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether TLS clients must present a certificate (`tls_client_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A client without one is refused in the handshake.
    Required,
    /// A client may connect without one (and then needs a token).
    Optional,
}

/// Where a JWT backend remembers used token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayStoreAddr {
    /// In this process: enough for a single instance.
    Memory,
    /// A Redis server shared by every instance.
    Redis(Url),
}

impl FromStr for ReplayStoreAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "memory" {
            return Ok(Self::Memory);
        }
        match Url::parse(s) {
            Ok(url) if matches!(url.scheme(), "redis" | "redis+unix" | "unix") => Ok(Self::Redis(url)),
            _ => Err(format!("`{s}` is neither `memory` nor a `redis://` URL")),
        }
    }
}

impl fmt::Display for ReplayStoreAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Redis(url) => url.fmt(f),
        }
    }
}

/// A JWT signing algorithm a token may use (`none` is not one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// The kind of key an algorithm verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    /// A shared secret (HS*).
    Hmac,
    /// An RSA key (RS*, PS*).
    Rsa,
    /// An elliptic-curve key (ES*).
    Ec,
    /// An Ed25519 key (EdDSA).
    Ed,
}

impl JwtAlgorithm {
    /// Every algorithm, by name.
    pub const ALL: [(JwtAlgorithm, &'static str); 12] = [
        (Self::HS256, "HS256"),
        (Self::HS384, "HS384"),
        (Self::HS512, "HS512"),
        (Self::RS256, "RS256"),
        (Self::RS384, "RS384"),
        (Self::RS512, "RS512"),
        (Self::PS256, "PS256"),
        (Self::PS384, "PS384"),
        (Self::PS512, "PS512"),
        (Self::ES256, "ES256"),
        (Self::ES384, "ES384"),
        (Self::EdDSA, "EdDSA"),
    ];

    /// The kind of key it verifies with.
    pub fn family(self) -> KeyFamily {
        use JwtAlgorithm::*;
        match self {
            HS256 | HS384 | HS512 => KeyFamily::Hmac,
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => KeyFamily::Rsa,
            ES256 | ES384 => KeyFamily::Ec,
            EdDSA => KeyFamily::Ed,
        }
    }

    /// The same algorithm, as the verifying crate names it.
    #[cfg(feature = "jwt")]
    pub fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            Self::HS256 => A::HS256,
            Self::HS384 => A::HS384,
            Self::HS512 => A::HS512,
            Self::RS256 => A::RS256,
            Self::RS384 => A::RS384,
            Self::RS512 => A::RS512,
            Self::PS256 => A::PS256,
            Self::PS384 => A::PS384,
            Self::PS512 => A::PS512,
            Self::ES256 => A::ES256,
            Self::ES384 => A::ES384,
            Self::EdDSA => A::EdDSA,
        }
    }
}

impl FromStr for JwtAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.iter().find(|(_, name)| *name == s).map(|(alg, _)| *alg).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|(_, name)| *name).collect();
            format!("unknown algorithm `{s}`; known: {}", known.join(" "))
        })
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL.iter().find(|(alg, _)| alg == self).map(|(_, name)| *name);
        f.write_str(name.expect("every algorithm has a name"))
    }
}

/// Serializes a value through its `Display` and deserializes it through its
/// `FromStr`, so config values read as they are written.
pub(super) mod via_str {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }

    /// The same, for an optional value (`None` when absent).
    pub mod option {
        use super::*;

        pub fn serialize<T: Display, S: Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => s.collect_str(value),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
        where
            T: FromStr<Err: Display>,
            D: Deserializer<'de>,
        {
            Option::<String>::deserialize(d)?.map(|text| text.parse().map_err(de::Error::custom)).transpose()
        }
    }
}

/// Lists: a TOML/JSON list, or a comma-separated string as an environment
/// variable or flag most naturally gives it; each item read through
/// `FromStr`, written through `Display`.
pub(super) mod list {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<T: Display, S: Serializer>(items: &[T], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(items.iter().map(ToString::to_string))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }

    impl ListOrCsv {
        fn parse<T: FromStr<Err: Display>, E: de::Error>(self) -> Result<Vec<T>, E> {
            let items: Vec<String> = match self {
                ListOrCsv::List(items) => items,
                ListOrCsv::Csv(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            };
            items.iter().map(|item| item.parse().map_err(de::Error::custom)).collect()
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        ListOrCsv::deserialize(d)?.parse()
    }

    /// A list that may be unset (`None`), as distinct from empty.
    pub fn option<'de, T, D>(d: D) -> Result<Option<Vec<T>>, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        Option::<ListOrCsv>::deserialize(d)?.map(ListOrCsv::parse).transpose()
    }
}

/// A list of networks: CIDRs, or bare addresses meaning just themselves.
pub(super) mod cidrs {
    use std::net::IpAddr;

    use ipnet::IpNet;
    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        super::list::serialize(nets, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        let items: Vec<String> = super::list::deserialize(d)?;
        items
            .iter()
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| de::Error::custom(format!("`{item}` is neither a CIDR nor an address")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_read_and_write_their_names() {
        for (alg, name) in JwtAlgorithm::ALL {
            assert_eq!(name.parse(), Ok(alg));
            assert_eq!(alg.to_string(), name);
        }
        assert!("none".parse::<JwtAlgorithm>().unwrap_err().contains("known: HS256"));
    }

    #[cfg(feature = "jwt")]
    #[test]
    fn algorithms_match_the_verifying_crate_and_its_families() {
        for (alg, name) in JwtAlgorithm::ALL {
            let theirs = alg.to_jsonwebtoken();
            assert_eq!(format!("{theirs:?}"), name);
            let family = match theirs.family() {
                jsonwebtoken::AlgorithmFamily::Hmac => KeyFamily::Hmac,
                jsonwebtoken::AlgorithmFamily::Rsa => KeyFamily::Rsa,
                jsonwebtoken::AlgorithmFamily::Ec => KeyFamily::Ec,
                jsonwebtoken::AlgorithmFamily::Ed => KeyFamily::Ed,
            };
            assert_eq!(alg.family(), family);
        }
    }

    #[test]
    fn replay_stores_are_memory_or_redis() {
        assert_eq!("memory".parse(), Ok(ReplayStoreAddr::Memory));
        assert!(matches!("redis://127.0.0.1:6379/0".parse(), Ok(ReplayStoreAddr::Redis(_))));
        assert!("http://x".parse::<ReplayStoreAddr>().is_err());
    }
}
