//! The access decision: may this user do this action on this system now?
//!
//! Every endpoint and every new stream asks [`decide`]; nothing caches its
//! answer past a revocation.

use rtunnel_core::store::{Role, User};

/// What a user wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read a system, its sessions, services and logs.
    Read,
    /// Open connections to a system's services (forward, terminal, proxy).
    Connect,
    /// Close or extend a session.
    ManageSession,
    /// Enroll systems, manage users and grants, read the audit log.
    Administer,
}

/// The answer, with a stable code for refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// The user is disabled.
    DenyDisabled,
    /// The role can never do this.
    DenyRole,
    /// The role could, but the user holds no active grant on the system.
    DenyNoGrant,
}

impl Decision {
    /// Whether the action may proceed.
    pub fn allowed(self) -> bool {
        self == Decision::Allow
    }

    /// Stable code for the error envelope.
    pub fn code(self) -> &'static str {
        match self {
            Decision::Allow => "ok",
            Decision::DenyDisabled => "user_disabled",
            Decision::DenyRole => "forbidden",
            Decision::DenyNoGrant => "no_grant",
        }
    }
}

/// Decides. `has_grant` says whether the user holds an active, unexpired
/// grant on the system concerned (ignored for admins and for
/// [`Action::Administer`]).
pub fn decide(user: &User, action: Action, has_grant: bool) -> Decision {
    if user.disabled {
        return Decision::DenyDisabled;
    }
    match (user.role, action) {
        (Role::Admin, _) => Decision::Allow,
        (_, Action::Administer) => Decision::DenyRole,
        (Role::Viewer, Action::Connect | Action::ManageSession) => Decision::DenyRole,
        (Role::Operator | Role::Viewer, _) if has_grant => Decision::Allow,
        _ => Decision::DenyNoGrant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role, disabled: bool) -> User {
        User {
            id: rtunnel_core::ids::UserId::new(),
            name: "u".into(),
            role,
            disabled,
            created_at: 0,
            email: None,
        }
    }

    #[test]
    fn every_role_action_and_grant_combination() {
        use Action::*;
        use Decision::*;
        let cases = [
            (Role::Admin, Connect, false, Allow),
            (Role::Admin, Administer, false, Allow),
            (Role::Operator, Connect, true, Allow),
            (Role::Operator, Connect, false, DenyNoGrant),
            (Role::Operator, Read, true, Allow),
            (Role::Operator, Read, false, DenyNoGrant),
            (Role::Operator, ManageSession, true, Allow),
            (Role::Operator, Administer, true, DenyRole),
            (Role::Viewer, Read, true, Allow),
            (Role::Viewer, Read, false, DenyNoGrant),
            (Role::Viewer, Connect, true, DenyRole),
            (Role::Viewer, ManageSession, true, DenyRole),
            (Role::Viewer, Administer, true, DenyRole),
        ];
        for (role, action, grant, want) in cases {
            assert_eq!(
                decide(&user(role, false), action, grant),
                want,
                "{role:?} {action:?} {grant}"
            );
        }
        assert_eq!(decide(&user(Role::Admin, true), Read, true), DenyDisabled);
    }
}
