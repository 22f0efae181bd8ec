//! The server built without the `redis` feature: a node is always alone.
//! [`Shared`] has no values, so every cluster path that needs one is dead
//! code the compiler can see through.

use std::time::Duration;

use rtunnel_core::ids::{SessionId, SystemId};
use rtunnel_core::proto::{Refusal, StreamHeader};
use rtunnel_core::store::StoreError;
use rtunnel_core::store::routes::TunnelRoute;

use super::{Command, RemoteTunnel, Route};
use crate::state::AppState;

/// What a node would share with others: nothing, without Redis.
pub(crate) enum Shared {}

impl Shared {
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        match *self {}
    }

    pub(super) async fn route(&self, _: SessionId) -> Option<Route> {
        match *self {}
    }

    pub(super) async fn route_of_system(&self, _: SystemId) -> Option<Route> {
        match *self {}
    }

    pub(super) async fn attached(&self, _: &TunnelRoute) {
        match *self {}
    }

    pub(super) async fn detached(&self, _: &TunnelRoute) -> bool {
        match *self {}
    }

    pub(super) fn route_changed(&self, _: Option<SessionId>) {
        match *self {}
    }

    pub(super) async fn publish(&self, _: Command) {
        match *self {}
    }

    pub(super) fn mesh_home(&self, _: &str, _: Option<u16>) -> Option<crate::shards::Home> {
        match *self {}
    }

    pub(super) async fn open_pipelined(
        &self,
        _: &RemoteTunnel,
        _: &StreamHeader,
        _: Duration,
    ) -> Result<super::Opening, Refusal> {
        match *self {}
    }

    pub(super) async fn run(&self, _: &AppState) {
        match *self {}
    }

    pub(super) async fn leave(&self) {
        match *self {}
    }
}
