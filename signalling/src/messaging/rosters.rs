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
//! Each user's presence contacts (the members of its conversations of at
//! most [`super::PRESENCE_MAX_MEMBERS`]) are kept here too, computed on
//! its first connect or disconnect: every change of membership anywhere
//! drops all of them (changes are rare next to connects, and a user's
//! contacts depend on conversations it may not have posted in).
//!
//! Bounded: at most [`ROSTERS_MAX`] conversations and as many users'
//! contacts; when full, an entry is dropped at random to make room (it is
//! loaded again when needed).
//! With several signalling nodes each keeps its own copy, and changes
//! made on another node must reach it as invalidations over the bus (not
//! built: one node today).

use std::collections::{BTreeSet, HashMap, HashSet};
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
    /// Presence contacts by user and the contexts its token lists.
    contacts: HashMap<ContactsKey, Arc<BTreeSet<UserId>>>,
    /// Bumped by every change: a load that began before it is stale.
    generation: u64,
}

/// Whose contacts: a participant, and a digest of the contexts its token
/// lists (contextual conversations count when the token shows them).
pub type ContactsKey = (UserId, u64);

/// Drops one entry of `map` when it holds [`ROSTERS_MAX`].
fn make_room<K: Copy + Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.len() >= ROSTERS_MAX
        && let Some(victim) = map.keys().next().copied()
    {
        map.remove(&victim);
    }
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
            make_room(&mut inner.rosters);
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
        inner.contacts.clear();
    }

    /// `key`'s contacts if they are in memory; otherwise the generation
    /// to hand [`Self::keep_contacts`] with them once computed.
    ///
    /// # Errors
    /// The generation, when they are not in memory.
    pub fn contacts(&self, key: ContactsKey) -> Result<Arc<BTreeSet<UserId>>, u64> {
        let inner = self.lock();
        inner.contacts.get(&key).cloned().ok_or(inner.generation)
    }

    /// Keeps `key`'s contacts, computed since `generation`, unless
    /// membership changed meanwhile.
    pub fn keep_contacts(
        &self,
        key: ContactsKey,
        generation: u64,
        contacts: Arc<BTreeSet<UserId>>,
    ) {
        let mut inner = self.lock();
        if inner.generation == generation {
            make_room(&mut inner.contacts);
            inner.contacts.insert(key, contacts);
        }
    }

    /// The number of membership changes so far (a change of anyone's
    /// contacts shows as a new number).
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.lock().generation
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
