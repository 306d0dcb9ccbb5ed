//! A subscriber's applications (listed, renamed, secret rotated,
//! unregistered) and an application's users (found, locked).

use super::*;

impl Tenancy {
    /// The applications an actor may see: its subscriber's for a
    /// subscriber, itself for an application.
    ///
    /// # Errors
    /// `internal` on store failure.
    pub async fn applications(&self, actor: &Actor) -> Result<Vec<Application>, Error> {
        match actor {
            Actor::Application(app) => Ok(vec![app.clone()]),
            Actor::Subscriber(s) => Ok(self.store.applications(Some(s.id)).await?),
        }
    }

    /// One application the actor may see.
    ///
    /// # Errors
    /// `not_found` for an application of someone else, as for none at all.
    pub async fn application(&self, actor: &Actor, id: AppId) -> Result<Application, Error> {
        const NONE: Error = Error::NotFound("application");
        match actor {
            Actor::Application(app) if app.id == id => Ok(app.clone()),
            Actor::Application(_) => Err(NONE),
            Actor::Subscriber(s) => {
                let app = self.store.application(id).await?.ok_or(NONE)?;
                if app.subscriber_id == s.id {
                    Ok(app)
                } else {
                    Err(NONE)
                }
            }
        }
    }

    /// Renames an application.
    ///
    /// # Errors
    /// `not_found`, `application_unregistered`, `invalid_request`.
    pub async fn rename(&self, actor: &Actor, id: AppId, name: &str) -> Result<Application, Error> {
        check_name("name", name)?;
        let app = self.registered(actor, id).await?;
        if !self.store.rename_application(app.id, name).await? {
            return Err(Error::ApplicationUnregistered);
        }
        Ok(Application {
            name: name.to_owned(),
            ..app
        })
    }

    /// Replaces an application's secret. HTTP Basic with the old secret
    /// stops working at once; user tokens signed with the old key keep
    /// working for `tokens.rotation_grace_secs`.
    ///
    /// # Errors
    /// `not_found`, `application_unregistered`.
    pub async fn rotate_secret(&self, actor: &Actor, id: AppId) -> Result<Rotated, Error> {
        let app = self.registered(actor, id).await?;
        let app_secret = auth::generate_secret();
        let secret_hash = auth::secret_digest(&app_secret);
        let until = self
            .clock
            .now()
            .plus(Duration::from_secs(self.config.tokens.rotation_grace_secs));
        let key = TokenKey::derive(app.id, &app_secret);
        if !self
            .store
            .rotate_secret(app.id, &secret_hash, &key, until)
            .await?
        {
            return Err(Error::ApplicationUnregistered);
        }
        tracing::info!(app_id = %app.id, "application secret rotated");
        Ok(Rotated {
            app_secret,
            previous_tokens_valid_until: until,
        })
    }

    /// Unregisters an application: its credentials, its users' tokens and
    /// its users' connections stop working at once. Its data stays in the
    /// store, unreachable through the API.
    ///
    /// # Errors
    /// `not_found`, `application_unregistered`.
    pub async fn unregister(&self, actor: &Actor, id: AppId) -> Result<(), Error> {
        let app = self.registered(actor, id).await?;
        if !self
            .store
            .unregister_application(app.id, self.clock.now())
            .await?
        {
            return Err(Error::ApplicationUnregistered);
        }
        tracing::info!(app_id = %app.id, "application unregistered");
        Ok(())
    }

    /// A user of `app` by server id.
    ///
    /// # Errors
    /// `not_found`, also for a user of another application.
    pub async fn user(&self, app: &Application, id: UserId) -> Result<User, Error> {
        self.store
            .user(app.id, id)
            .await?
            .ok_or(Error::NotFound("user"))
    }

    /// A user of `app` by the application's own id.
    ///
    /// # Errors
    /// `not_found`.
    pub async fn user_by_external_id(
        &self,
        app: &Application,
        external_id: &str,
    ) -> Result<User, Error> {
        self.store
            .user_by_external_id(app.id, external_id)
            .await?
            .ok_or(Error::NotFound("user"))
    }

    /// Locks or unlocks a user of `app`.
    ///
    /// # Errors
    /// `not_found`.
    pub async fn set_locked(
        &self,
        app: &Application,
        id: UserId,
        locked: bool,
    ) -> Result<User, Error> {
        let user = self
            .store
            .set_user_locked(app.id, id, locked)
            .await?
            .ok_or(Error::NotFound("user"))?;
        tracing::info!(app_id = %app.id, user_id = %id, locked, "user lock changed");
        Ok(user)
    }

    async fn registered(&self, actor: &Actor, id: AppId) -> Result<Application, Error> {
        let app = self.application(actor, id).await?;
        if app.unregistered_at.is_some() {
            return Err(Error::ApplicationUnregistered);
        }
        Ok(app)
    }
}
