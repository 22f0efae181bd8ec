//! Typed ids: a [`UserId`], a [`SystemId`] and a [`SessionId`] are all
//! UUIDs, and none can be passed where another is expected
//! (`grant(user, system)` does not compile with its arguments swapped).
//!
//! Each is a UUID on the wire and in the database (serde `transparent`,
//! the same text form), so changing a `Uuid` to one of them changes no
//! format.
//!
//! ```
//! use rtunnel_core::ids::{SessionId, SystemId};
//!
//! let session = SessionId::new();
//! let parsed: SessionId = session.to_string().parse().unwrap();
//! assert_eq!(parsed, session);
//! assert_eq!(serde_json::to_string(&session).unwrap(), format!("\"{session}\""));
//! // A system's id is another type, even for the same UUID.
//! let _system = SystemId::from(session.as_uuid());
//! ```
//!
//! Swapped arguments do not compile:
//!
//! ```compile_fail
//! use rtunnel_core::ids::{SystemId, UserId};
//!
//! fn grant(_user: UserId, _system: SystemId) {}
//! grant(SystemId::new(), UserId::new());
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        #[cfg_attr(
            feature = "openapi",
            derive(utoipa::ToSchema),
            schema(value_type = String, format = Uuid)
        )]
        pub struct $name(Uuid);

        impl $name {
            /// A new random id (UUID v4).
            pub fn new() -> Self {
                $name(Uuid::new_v4())
            }

            /// The UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            /// The nil UUID: never an id a store hands out.
            fn default() -> Self {
                $name(Uuid::nil())
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                $name(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name)
            }
        }
    };
}

id_type!(
    /// A user's id (an operator, admin or viewer).
    UserId
);
id_type!(
    /// A system's id (a customer machine an agent serves).
    SystemId
);
id_type!(
    /// A support session's id.
    SessionId
);
