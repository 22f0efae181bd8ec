//! The kinds of audit events and access-log entries, typed: a misspelled
//! kind does not compile, and the list below is every kind the server
//! writes. The stores keep them as their `snake_case` names
//! ([`AuditKind::as_str`]), so records read back keep whatever name they
//! were written with.

use serde::{Deserialize, Serialize};

macro_rules! kinds {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every kind.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The name stored and shown (`snake_case`).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(format!("unknown {}: {other:?}", stringify!($name))),
                }
            }
        }
    };
}

kinds!(
    /// What an audit event records.
    AuditKind {
        /// Open connections were cut because access went away.
        AccessCut = "access_cut",
        /// An API token was created.
        ApiTokenCreated = "api_token_created",
        /// An API token was revoked.
        ApiTokenRevoked = "api_token_revoked",
        /// Throttled attempts from more addresses than are listed one by one.
        AuthThrottled = "auth_throttled",
        /// The customer refused an operator's access, or did not answer
        /// (agent `--consent approve`).
        ConsentDenied = "consent_denied",
        /// An operator opened a `forward` connection.
        ForwardOpened = "forward_opened",
        /// A grant was given.
        GrantCreated = "grant_created",
        /// A grant was revoked.
        GrantRevoked = "grant_revoked",
        /// A user signed in.
        Login = "login",
        /// A sign-in was refused.
        LoginFailed = "login_failed",
        /// A user signed out.
        Logout = "logout",
        /// A cluster node stopped announcing itself; its sessions wait.
        NodeLost = "node_lost",
        /// A proxy link was opened.
        ProxyOpened = "proxy_opened",
        /// A proxy token was issued.
        ProxyTokenIssued = "proxy_token_issued",
        /// A refresh token was presented twice: its login was ended.
        RefreshTokenReplayed = "refresh_token_replayed",
        /// A launcher resource was created.
        ResourceCreated = "resource_created",
        /// A launcher resource was deleted.
        ResourceDeleted = "resource_deleted",
        /// A launcher resource was changed.
        ResourceUpdated = "resource_updated",
        /// A session was closed (by an operator, or its lifetime ended).
        SessionClosed = "session_closed",
        /// A session expired (its agent did not come back in time).
        SessionExpired = "session_expired",
        /// A session's lifetime was extended.
        SessionExtended = "session_extended",
        /// A session was launched through an external gateway.
        SessionLaunched = "session_launched",
        /// An agent resumed its session with its reconnect token.
        SessionResumed = "session_resumed",
        /// A system was created.
        SystemCreated = "system_created",
        /// A system was deleted.
        SystemDeleted = "system_deleted",
        /// A system was renamed.
        SystemRenamed = "system_renamed",
        /// A system's secret was replaced.
        SystemSecretRegenerated = "system_secret_regenerated",
        /// A browser terminal ended.
        TerminalClosed = "terminal_closed",
        /// Control of a moderated terminal was handed over or taken over.
        TerminalControlChanged = "terminal_control_changed",
        /// A browser terminal opened.
        TerminalOpened = "terminal_opened",
        /// A terminal ticket was issued.
        TerminalTicketIssued = "terminal_ticket_issued",
        /// A refresh token was used for new tokens.
        TokenRefreshed = "token_refreshed",
        /// An agent's credentials were refused.
        TunnelAuthFailed = "tunnel_auth_failed",
        /// An agent connected.
        TunnelConnected = "tunnel_connected",
        /// An agent's tunnel ended.
        TunnelDisconnected = "tunnel_disconnected",
        /// A new connection of an agent took over its live session.
        TunnelTakenOver = "tunnel_taken_over",
        /// A user was created.
        UserCreated = "user_created",
        /// A user was deleted (with their grants, API tokens and logins).
        UserDeleted = "user_deleted",
        /// A user was disabled.
        UserDisabled = "user_disabled",
        /// A user was enabled again.
        UserEnabled = "user_enabled",
        /// A user's password was set.
        UserPasswordSet = "user_password_set",
        /// A user was given another role.
        UserRoleChanged = "user_role_changed",
    }
);

kinds!(
    /// What an access-log entry records.
    AccessKind {
        /// A `forward` connection (raw TCP).
        Forward = "forward",
        /// Requests through the subdomain proxy (one visit).
        Http = "http",
        /// A browser terminal.
        Terminal = "terminal",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for kind in AuditKind::ALL {
            assert!(seen.insert(kind.as_str()), "{kind} twice");
            assert_eq!(kind.as_str().parse::<AuditKind>(), Ok(*kind));
            let json = serde_json::to_string(kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
        for kind in AccessKind::ALL {
            assert_eq!(kind.as_str().parse::<AccessKind>(), Ok(*kind));
        }
        assert!("tunnel_conected".parse::<AuditKind>().is_err());
    }
}
