//! Drover: a device-management server whose device types, push transports and policy
//! rules are sandboxed WebAssembly components.
//!
//! One module per domain concept; docs/architecture.md draws the layers:
//!
//! * domain: `core` (shared state), `error`, `events`, the services `operations`,
//!   `enrollment`, `delivery` and `plugin_settings`, the state machine `ops`, the
//!   device vocabulary `device`, and what
//!   they use (`auth`, `bounds`, `egress`, `oauth`, `push_token`, `secrets`, `stats`);
//! * storage (`store`) and the plugin runtime (`plugins`);
//! * fronts: `http`, `mqtt`, `coap`, `wakeup`, each built on the core and never on
//!   another front;
//! * `server`, the composition root that starts them all.

/// A closed set of names stored as text (a device's status, an operation's kind): an enum
/// whose every variant has its one spelling, used in the database, in JSON and in the
/// OpenAPI document alike. Reading anything else is an error naming the value and the
/// names allowed, e.g. "ownership `mine`: use BYOD or COPE".
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value spelled exactly `s`, or an error naming it and the names allowed.
            pub fn parse(s: &str) -> Result<$name, $crate::device::UnknownName> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::device::UnknownName::new($what, s, &[$($text),+])),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::device::UnknownName;
            fn from_str(s: &str) -> Result<$name, Self::Err> {
                $name::parse(s)
            }
        }

        /// For `#[sqlx(try_from = "String")]`: a row's text column.
        impl TryFrom<String> for $name {
            type Error = $crate::device::UnknownName;
            fn try_from(s: String) -> Result<$name, Self::Error> {
                $name::parse(&s)
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        // By hand: utoipa's derive does not see a `serde(rename)` whose value came
        // through a macro fragment, and documented the Rust names (the OpenAPI fuzzer
        // caught it: `"BYOD" is not one of "Byod" or "Cope"`).
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<$name> {
                $name::parse(v.as_str()?).map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

pub mod analytics;
pub mod artifacts;
pub mod auth;
pub mod bounds;
pub mod coap;
pub mod config;
pub mod core;
pub mod delivery;
pub mod device;
pub mod egress;
pub mod enrollment;
pub mod error;
pub mod events;
pub mod files;
pub mod groups;
pub mod http;
pub mod identity;
pub mod mqtt;
pub mod oauth;
pub mod oidc;
pub mod operations;
pub mod ops;
pub mod plugin_settings;
pub mod plugins;
pub mod policies;
pub mod push_token;
pub mod rollouts;
pub mod scep;
pub mod scope;
pub mod secrets;
pub mod server;
pub mod stats;
pub mod store;
pub mod tenants;
pub mod tls;
pub mod users;
pub mod wakeup;
pub mod webhooks;
