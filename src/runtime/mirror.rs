//! Entity mirroring (opt-in per store): each record as an entity with a `Mirror<T>` component.

use bevy_app::App;
use bevy_ecs::component::Component;

use crate::core::Record;

/// A record mirrored onto an entity. Change it from a game system and atoma writes the change
/// to the store; store changes (remote ones included) update or despawn the entity.
#[derive(Component, Debug, Clone)]
pub struct Mirror<T: Record>(pub T);

pub(crate) fn register<T: Record>(_app: &mut App) {}
