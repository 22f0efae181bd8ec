//! The support-session state machine, pure: it is given the time and an
//! event and returns the next state and what the caller must do. No clock,
//! no IO.
//!
//! ```text
//! pending --manifest--> active --tunnel lost--> grace_period --resumed--> active
//!    |                    |                          |
//!    | tunnel lost        | operator close,          | grace over
//!    v                    | lifetime over            v
//! expired              closed                     expired
//! ```
//!
//! `closed` and `expired` are final. An operator may close, and the lifetime
//! may end, in any state that is not final. The caller persists the returned
//! state, performs the [`Action`]s, and delivers [`Event::Tick`] at
//! [`Lifecycle::next_deadline`].

use std::fmt;

use crate::proto::CloseCode;
use crate::store::{Millis, SessionStatus};

/// Where a session stands, with the times that move it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// The state.
    pub status: SessionStatus,
    /// When the session's lifetime ends.
    pub expires_at: Millis,
    /// While in `grace_period`: when the agent's chance to come back ends.
    pub grace_until: Option<Millis>,
}

/// Something that happened to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The agent's manifest arrived (or arrived again).
    ManifestReceived,
    /// The tunnel carrying the session was lost.
    TunnelLost {
        /// How long the agent may take to come back, in milliseconds.
        grace_ms: Millis,
    },
    /// The agent came back with a valid reconnect token.
    Resumed,
    /// An operator closed the session.
    OperatorClosed,
    /// An operator pushed the end of the session back.
    Extended {
        /// By how much, in milliseconds (positive).
        by_ms: Millis,
    },
    /// Time passed; delivered at [`Lifecycle::next_deadline`].
    Tick,
}

/// What the caller must do after a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Tell the agent on the live tunnel why, and close it.
    CloseTunnel {
        /// The close code for the agent.
        code: CloseCode,
        /// Why, for the agent's log.
        reason: &'static str,
    },
    /// Issue a new reconnect token; the one just used is dead.
    RotateReconnectToken,
}

/// A transition's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state to persist.
    pub next: Lifecycle,
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// Why the session ended, when this transition ended it.
    pub end_reason: Option<&'static str>,
}

/// A refused transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The event makes no sense in this state.
    #[error("cannot {event} a session that is {from}")]
    Illegal {
        /// The state the session is in.
        from: SessionStatus,
        /// What was attempted.
        event: EventName,
    },
    /// The agent came back after its grace period ended.
    #[error("the grace period of this session is over")]
    GraceOver,
    /// An extension must be positive.
    #[error("an extension must be positive")]
    BadExtension,
}

/// An event's name, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventName(&'static str);

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Event {
    fn name(self) -> EventName {
        EventName(match self {
            Event::ManifestReceived => "activate",
            Event::TunnelLost { .. } => "lose the tunnel of",
            Event::Resumed => "resume",
            Event::OperatorClosed => "close",
            Event::Extended { .. } => "extend",
            Event::Tick => "advance",
        })
    }
}

impl Lifecycle {
    /// A new session, `pending`, living until `expires_at`.
    pub fn new(expires_at: Millis) -> Self {
        Lifecycle {
            status: SessionStatus::Pending,
            expires_at,
            grace_until: None,
        }
    }

    /// When [`Event::Tick`] must be delivered next; `None` once final.
    pub fn next_deadline(&self) -> Option<Millis> {
        if self.status.is_final() {
            return None;
        }
        Some(match self.grace_until {
            Some(g) => g.min(self.expires_at),
            None => self.expires_at,
        })
    }

    /// Whether a tunnel is expected to be live in this state.
    fn has_tunnel(&self) -> bool {
        matches!(self.status, SessionStatus::Pending | SessionStatus::Active)
    }

    /// Applies `event` at time `now`.
    pub fn step(&self, event: Event, now: Millis) -> Result<Transition, TransitionError> {
        use SessionStatus::*;
        let illegal = || TransitionError::Illegal {
            from: self.status,
            event: event.name(),
        };
        let stay = |next: Lifecycle| Transition {
            next,
            actions: Vec::new(),
            end_reason: None,
        };
        let end = |status: SessionStatus, actions: Vec<Action>, reason: &'static str| Transition {
            next: Lifecycle {
                status,
                expires_at: self.expires_at,
                grace_until: None,
            },
            actions,
            end_reason: Some(reason),
        };
        // The lifetime ending overrides everything but a final state.
        if !self.status.is_final() && now >= self.expires_at && event != Event::OperatorClosed {
            // Too late to extend, resume or anything else: the session ends.
            let actions = self.close_actions(CloseCode::SessionClosed, "session lifetime ended");
            return Ok(end(Closed, actions, "session lifetime ended"));
        }
        match (self.status, event) {
            (_, Event::Tick) if self.status.is_final() => Ok(stay(*self)),
            (Expired | Closed, _) => Err(illegal()),

            (Pending | Active, Event::ManifestReceived) => Ok(stay(Lifecycle {
                status: Active,
                ..*self
            })),
            (GracePeriod, Event::ManifestReceived) => Err(illegal()),

            (Pending, Event::TunnelLost { .. }) => {
                Ok(end(Expired, Vec::new(), "tunnel lost before the manifest"))
            }
            (Active, Event::TunnelLost { grace_ms }) if grace_ms <= 0 => {
                Ok(end(Expired, Vec::new(), "tunnel lost (no grace period)"))
            }
            (Active, Event::TunnelLost { grace_ms }) => Ok(stay(Lifecycle {
                status: GracePeriod,
                grace_until: Some(now.saturating_add(grace_ms)),
                ..*self
            })),
            (GracePeriod, Event::TunnelLost { .. }) => Err(illegal()),

            (Pending, Event::Resumed) => Err(illegal()),
            // The agent is back before the server noticed the old tunnel die:
            // the new tunnel takes over.
            (Active, Event::Resumed) => Ok(Transition {
                next: *self,
                actions: vec![
                    Action::CloseTunnel {
                        code: CloseCode::Replaced,
                        reason: "the agent reconnected on a new connection",
                    },
                    Action::RotateReconnectToken,
                ],
                end_reason: None,
            }),
            (GracePeriod, Event::Resumed) => {
                if self.grace_until.is_some_and(|g| now >= g) {
                    return Err(TransitionError::GraceOver);
                }
                Ok(Transition {
                    next: Lifecycle {
                        status: Active,
                        grace_until: None,
                        ..*self
                    },
                    actions: vec![Action::RotateReconnectToken],
                    end_reason: None,
                })
            }

            (Pending | Active | GracePeriod, Event::OperatorClosed) => Ok(end(
                Closed,
                self.close_actions(CloseCode::SessionClosed, "closed by an operator"),
                "closed by an operator",
            )),

            (Pending | Active | GracePeriod, Event::Extended { by_ms }) => {
                if by_ms <= 0 {
                    return Err(TransitionError::BadExtension);
                }
                Ok(stay(Lifecycle {
                    expires_at: self.expires_at.saturating_add(by_ms),
                    ..*self
                }))
            }

            (GracePeriod, Event::Tick) if self.grace_until.is_some_and(|g| now >= g) => Ok(end(
                Expired,
                Vec::new(),
                "the agent did not come back in time",
            )),
            (Pending | Active | GracePeriod, Event::Tick) => Ok(stay(*self)),
        }
    }

    fn close_actions(&self, code: CloseCode, reason: &'static str) -> Vec<Action> {
        if self.has_tunnel() {
            vec![Action::CloseTunnel { code, reason }]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionStatus::*;

    const NOW: Millis = 1_000_000;
    const LIFE: Millis = NOW + 3_600_000;
    const GRACE: Millis = 60_000;

    fn at(status: SessionStatus) -> Lifecycle {
        Lifecycle {
            status,
            expires_at: LIFE,
            grace_until: (status == GracePeriod).then_some(NOW + GRACE),
        }
    }

    const STATES: [SessionStatus; 5] = [Pending, Active, GracePeriod, Expired, Closed];

    fn events() -> [Event; 6] {
        [
            Event::ManifestReceived,
            Event::TunnelLost { grace_ms: GRACE },
            Event::Resumed,
            Event::OperatorClosed,
            Event::Extended { by_ms: 3_600_000 },
            Event::Tick,
        ]
    }

    /// The expected outcome of every pair, before any deadline passes:
    /// `Some(status)` for a legal transition, `None` for a refusal.
    fn expected(from: SessionStatus, event: Event) -> Option<SessionStatus> {
        match (from, event) {
            (Expired | Closed, Event::Tick) => Some(from),
            (Expired | Closed, _) => None,
            (Pending | Active, Event::ManifestReceived) => Some(Active),
            (GracePeriod, Event::ManifestReceived) => None,
            (Pending, Event::TunnelLost { .. }) => Some(Expired),
            (Active, Event::TunnelLost { .. }) => Some(GracePeriod),
            (GracePeriod, Event::TunnelLost { .. }) => None,
            (Pending, Event::Resumed) => None,
            (Active | GracePeriod, Event::Resumed) => Some(Active),
            (_, Event::OperatorClosed) => Some(Closed),
            (_, Event::Extended { .. }) | (_, Event::Tick) => Some(from),
        }
    }

    #[test]
    fn every_pair_of_state_and_event() {
        for from in STATES {
            for event in events() {
                let got = at(from).step(event, NOW);
                match (expected(from, event), &got) {
                    (Some(want), Ok(t)) => assert_eq!(t.next.status, want, "{from} + {event:?}"),
                    (None, Err(TransitionError::Illegal { from: f, .. })) => assert_eq!(*f, from),
                    (want, got) => panic!("{from} + {event:?}: want {want:?}, got {got:?}"),
                }
            }
        }
    }

    #[test]
    fn the_lifetime_ending_closes_every_open_state_whatever_the_event() {
        for from in [Pending, Active, GracePeriod] {
            for event in events() {
                let t = at(from).step(event, LIFE).unwrap();
                assert_eq!(t.next.status, Closed, "{from} + {event:?}");
                let closes_tunnel = t
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::CloseTunnel { .. }));
                assert_eq!(closes_tunnel, from != GracePeriod, "{from} + {event:?}");
                assert!(t.end_reason.is_some());
            }
        }
        // Final states stay final.
        assert!(at(Expired).step(Event::OperatorClosed, LIFE).is_err());
        assert_eq!(
            at(Closed).step(Event::Tick, LIFE).unwrap().next.status,
            Closed
        );
    }

    #[test]
    fn grace_runs_out_into_expired_and_resuming_late_is_refused() {
        let lost = at(Active)
            .step(Event::TunnelLost { grace_ms: GRACE }, NOW)
            .unwrap()
            .next;
        assert_eq!(lost.grace_until, Some(NOW + GRACE));
        assert_eq!(lost.next_deadline(), Some(NOW + GRACE));
        let early = lost.step(Event::Tick, NOW + GRACE - 1).unwrap();
        assert_eq!(early.next, lost);
        let back = lost.step(Event::Resumed, NOW + GRACE - 1).unwrap();
        assert_eq!(back.next.status, Active);
        assert_eq!(back.next.grace_until, None);
        assert_eq!(back.actions, vec![Action::RotateReconnectToken]);
        assert_eq!(
            lost.step(Event::Resumed, NOW + GRACE),
            Err(TransitionError::GraceOver)
        );
        let over = lost.step(Event::Tick, NOW + GRACE).unwrap();
        assert_eq!(over.next.status, Expired);
        assert_eq!(over.next.next_deadline(), None);
        assert_eq!(over.end_reason, Some("the agent did not come back in time"));
    }

    #[test]
    fn no_grace_period_expires_at_once() {
        let t = at(Active)
            .step(Event::TunnelLost { grace_ms: 0 }, NOW)
            .unwrap();
        assert_eq!(t.next.status, Expired);
    }

    #[test]
    fn operator_close_tells_a_live_agent_not_to_return() {
        let t = at(Active).step(Event::OperatorClosed, NOW).unwrap();
        assert_eq!(
            t.actions,
            vec![Action::CloseTunnel {
                code: CloseCode::SessionClosed,
                reason: "closed by an operator"
            }]
        );
        // In grace there is no tunnel to close; the agent learns at its next
        // attempt that the session is gone.
        assert!(
            at(GracePeriod)
                .step(Event::OperatorClosed, NOW)
                .unwrap()
                .actions
                .is_empty()
        );
        let err = at(Closed).step(Event::OperatorClosed, NOW).unwrap_err();
        assert_eq!(err.to_string(), "cannot close a session that is closed");
    }

    #[test]
    fn a_takeover_replaces_the_old_tunnel_and_rotates_the_token() {
        let t = at(Active).step(Event::Resumed, NOW).unwrap();
        assert_eq!(t.next.status, Active);
        assert!(matches!(
            t.actions[0],
            Action::CloseTunnel {
                code: CloseCode::Replaced,
                ..
            }
        ));
        assert_eq!(t.actions[1], Action::RotateReconnectToken);
    }

    #[test]
    fn extensions_push_the_end_back_and_must_be_positive() {
        let t = at(GracePeriod)
            .step(Event::Extended { by_ms: 1000 }, NOW)
            .unwrap();
        assert_eq!(t.next.expires_at, LIFE + 1000);
        assert_eq!(t.next.status, GracePeriod);
        assert_eq!(
            at(Active).step(Event::Extended { by_ms: 0 }, NOW),
            Err(TransitionError::BadExtension)
        );
        assert_eq!(at(Active).next_deadline(), Some(LIFE));
    }
}
