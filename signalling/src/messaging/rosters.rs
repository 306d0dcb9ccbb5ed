//! Who is in a conversation, kept in memory for the send path.
//!
//! Sending a message needs the conversation (its application, context,
//! and whether it is of all users) and its members: who may post, and who
//! gets the event. Read from the store, those are three round trips on
//! every message; from here, a hash lookup. A [`Roster`] is loaded from
//! the store on first use and dropped whenever this service changes who
//! is in the conversation (members added or removed, a grant given or
//! withdrawn, a first post that joins a contextual conversation): the
//! next send loads it again. The store stays the authority; this is a
//! copy of what it says, never ahead of it.
//!
//! A load that races with a change is not kept: every change bumps a
//! generation, and a roster read before it is thrown away instead of
//! cached. What a roster holds besides its members (application, context,
//! all users) never changes once a conversation exists; the message
//! numbers it does not hold.
//!
//! Bounded: at most [`ROSTERS_MAX`] conversations; when full, an entry
//! is dropped at random to make room (it is loaded again when needed).
//! With several signalling nodes each keeps its own copy, and changes
//! made on another node must reach it as invalidations over the bus (not
//! built: one node today).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::ids::{AppId, ConversationId, UserId};
use crate::store::StoreResult;
use crate::store::messaging::{Conversation, MessageStore};

/// Most conversations whose rosters are kept.
pub const ROSTERS_MAX: usize = 65_536;

/// What the send path needs of a conversation.
#[derive(Debug)]
pub struct Roster {
    /// The conversation as it was loaded: its application, context and
    /// `all_users` hold; its `last_seq` and `last_activity` do not.
    pub conversation: Conversation,
    /// Its members, in the store's order.
    pub members: Vec<UserId>,
    /// The same, to look up.
    member_set: HashSet<UserId>,
}

impl Roster {
    /// Whether `user` is a member.
    #[must_use]
    pub fn has(&self, user: UserId) -> bool {
        self.member_set.contains(&user)
    }
}

/// The rosters in memory (see the module's documentation).
#[derive(Debug, Default)]
pub struct Rosters {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    rosters: HashMap<ConversationId, Arc<Roster>>,
    /// Bumped by every change: a load that began before it is stale.
    generation: u64,
}

impl Rosters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The roster of conversation `id` of application `app`, from memory
    /// or loaded from `store`; `None` when there is no such conversation.
    ///
    /// # Errors
    /// The store's, when it must be read and fails.
    pub async fn get(
        &self,
        store: &dyn MessageStore,
        app: AppId,
        id: ConversationId,
    ) -> StoreResult<Option<Arc<Roster>>> {
        let generation = {
            let inner = self.lock();
            if let Some(roster) = inner.rosters.get(&id) {
                metrics::counter!("rosters_hits_total").increment(1);
                return Ok((roster.conversation.app_id == app).then(|| roster.clone()));
            }
            inner.generation
        };
        metrics::counter!("rosters_loads_total").increment(1);
        let Some(conversation) = store.conversation(app, id).await? else {
            return Ok(None);
        };
        let members = store.members(id).await?;
        let roster = Arc::new(Roster {
            member_set: members.iter().copied().collect(),
            members,
            conversation,
        });
        let mut inner = self.lock();
        if inner.generation == generation {
            if inner.rosters.len() >= ROSTERS_MAX
                && let Some(victim) = inner.rosters.keys().next().copied()
            {
                inner.rosters.remove(&victim);
            }
            inner.rosters.insert(id, roster.clone());
        }
        Ok(Some(roster))
    }

    /// Forgets conversation `id`'s roster: who is in it has changed (call
    /// after the change is stored).
    pub fn changed(&self, id: ConversationId) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.rosters.remove(&id);
    }

    /// How many rosters are in memory.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().rosters.len()
    }

    /// Whether none is.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
