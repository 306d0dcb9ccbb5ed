//! Presence (online, away, offline) and typing notices: ephemeral, through
//! the bus only, to the people who share a conversation.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::bus::{GateKind, PresenceChange};
use crate::error::Error;
use crate::ids::{ConversationId, UserId};

use super::*;

/// A digest of the contexts a token lists (`None`: the bot, which sees
/// every object).
fn digest(contexts: Option<&[String]>) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    contexts.hash(&mut hasher);
    hasher.finish()
}

impl Messaging {
    /// A connection of `user` opened (`true`) or closed (`false`); tells
    /// the people it shares conversations with when its presence changes.
    /// A close that leaves the user offline is told at once here; the
    /// WebSocket sessions use [`Self::disconnected`], which waits
    /// [`OFFLINE_GRACE`] first.
    ///
    /// # Errors
    /// `internal` on store failure.
    pub async fn connection(&self, caller: &Caller, opened: bool) -> Result<(), Error> {
        let Some(user) = caller.user_id() else {
            return Ok(());
        };
        let change = if opened {
            PresenceChange::Connected
        } else {
            PresenceChange::Disconnected
        };
        let (before, after) = self.bus.change_presence(user, change);
        if before == after {
            return Ok(());
        }
        // Back within the grace: the contacts still see what they saw
        // before the user left, and are told only if that differs (or if
        // who they are may have changed meanwhile).
        let unchanged =
            self.lock_going_offline()
                .remove(&user)
                .is_some_and(|(_, seen, generation)| {
                    seen == after && generation == self.rosters.generation()
                });
        if !unchanged {
            self.announce_presence(caller, user, after).await?;
        }
        Ok(())
    }

    /// A WebSocket session of `caller` ended. When that leaves its user
    /// offline, its contacts are told only after [`OFFLINE_GRACE`], and
    /// not at all if a connection of the user opened meanwhile: a page
    /// reload, a network change or a reconnect storm shows them no
    /// offline-online flap, and costs no presence fan-out.
    pub async fn disconnected(self: &Arc<Self>, caller: &Caller) {
        let Some(user) = caller.user_id() else {
            return;
        };
        let (before, after) = self.bus.change_presence(user, PresenceChange::Disconnected);
        if before == after {
            return;
        }
        let token = self
            .offline_tokens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let generation = self.rosters.generation();
        self.lock_going_offline()
            .insert(user, (token, before, generation));
        let this = self.clone();
        let caller = caller.clone();
        tokio::spawn(async move {
            tokio::time::sleep(OFFLINE_GRACE).await;
            let due = {
                let mut going = this.lock_going_offline();
                match going.get(&user) {
                    Some((t, _, _)) if *t == token => going.remove(&user).is_some(),
                    _ => false,
                }
            };
            // On a cluster the user may have come back on another node.
            if due
                && this.bus.presence(user) == Presence::Offline
                && let Err(e) = this
                    .announce_presence(&caller, user, Presence::Offline)
                    .await
            {
                tracing::debug!(error = %e, "announcing a user offline failed");
            }
        });
    }

    fn lock_going_offline(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<UserId, GoingOffline>> {
        self.going_offline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The client says its person is away (or back).
    ///
    /// # Errors
    /// `internal` on store failure.
    pub async fn set_away(&self, caller: &Caller, away: bool) -> Result<Presence, Error> {
        let user = caller
            .user_id()
            .ok_or_else(|| Error::InvalidRequest("presence is for users".to_owned()))?;
        let (before, after) = self.bus.change_presence(user, PresenceChange::Away(away));
        if before != after {
            self.announce_presence(caller, user, after).await?;
        }
        Ok(after)
    }

    /// Presence of users who share a conversation with the caller; others
    /// are left out.
    ///
    /// # Errors
    /// `internal` on store failure.
    pub async fn presence_of(
        &self,
        caller: &Caller,
        users: &[UserId],
    ) -> Result<Vec<(UserId, Presence)>, Error> {
        let known = self.contacts(caller).await?;
        Ok(users
            .iter()
            .filter(|u| known.contains(u))
            .map(|u| (*u, self.bus.presence(*u)))
            .collect())
    }

    /// A typing notice: sent to the other members now, not stored; at most
    /// one per user and conversation every [`TYPING_INTERVAL_MS`].
    ///
    /// # Errors
    /// As [`Self::readable`].
    pub async fn typing(&self, caller: &Caller, id: ConversationId) -> Result<bool, Error> {
        let conversation = self.readable(caller, id).await?;
        let me = caller.participant();
        let now = self.clock.now().0;
        {
            let mut map = self
                .typing
                .lock()
                .map_err(|_| Error::internal(anyhow::anyhow!("typing lock")))?;
            if map
                .get(&(me, id))
                .is_some_and(|at| now - at < TYPING_INTERVAL_MS)
            {
                return Ok(false);
            }
            if map.len() > 100_000 {
                map.retain(|_, at| now - *at < TYPING_INTERVAL_MS);
            }
            map.insert((me, id), now);
        }
        let payload: Arc<str> = Arc::from(
            Ephemeral::Typing {
                conversation_id: id,
                user_id: me,
            }
            .render(),
        );
        let gate = gate(&conversation, GateKind::Event);
        for member in self.audience(&conversation).await? {
            if member != me {
                self.bus.publish_gated(member, 0, payload.clone(), gate);
            }
        }
        Ok(true)
    }

    /// The people whose presence the caller sees and who see the
    /// caller's: members of its conversations with at most
    /// [`PRESENCE_MAX_MEMBERS`] members. Channels and "all users"
    /// conversations carry no presence: with hundreds of members every
    /// connect and disconnect would fan out to all of them (a reconnect
    /// storm of 1000 channel members meant 500 000 presence frames).
    pub(super) async fn contacts(&self, caller: &Caller) -> Result<Arc<BTreeSet<UserId>>, Error> {
        let key = (caller.participant(), digest(caller.contexts()));
        let generation = match self.rosters.contacts(key) {
            Ok(contacts) => return Ok(contacts),
            Err(generation) => generation,
        };
        let mut out = BTreeSet::new();
        for entry in self
            .store
            .conversations_of(
                caller.app.id,
                caller.participant(),
                caller.contexts(),
                None,
                MAX_PAGE,
            )
            .await?
        {
            if entry.conversation.all_users {
                continue;
            }
            // From memory: the rosters the send path keeps.
            if let Some(roster) = self
                .rosters
                .get(&*self.store, caller.app.id, entry.conversation.id)
                .await?
                && roster.members.len() <= PRESENCE_MAX_MEMBERS
            {
                out.extend(roster.members.iter().copied());
            }
        }
        let out = Arc::new(out);
        self.rosters.keep_contacts(key, generation, out.clone());
        Ok(out)
    }

    pub(super) async fn announce_presence(
        &self,
        caller: &Caller,
        user: UserId,
        presence: Presence,
    ) -> Result<(), Error> {
        let payload: Arc<str> = Arc::from(
            Ephemeral::Presence {
                user_id: user,
                presence,
            }
            .render(),
        );
        for contact in self.contacts(caller).await?.iter() {
            if *contact != user {
                self.bus.publish(*contact, 0, payload.clone());
            }
        }
        Ok(())
    }
}
