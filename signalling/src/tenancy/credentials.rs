//! Applications and users proving who they are: application secrets,
//! user tokens (verified and issued), the demo application.

use super::*;

impl Tenancy {
    /// The application whose id and secret these are.
    ///
    /// # Errors
    /// `unauthorized` for a wrong id or secret; `application_unregistered`
    /// once the right secret of an unregistered application is given.
    pub async fn authenticate_application(
        &self,
        app_id: &str,
        secret: &str,
    ) -> Result<Application, Error> {
        const BAD: Error = Error::Unauthorized("invalid application credentials");
        let id: AppId = app_id.parse().map_err(|_| BAD)?;
        let app = self.store.application(id).await?.ok_or(BAD)?;
        if !self.secret_matches(&app, secret).await? {
            return Err(BAD);
        }
        if app.unregistered_at.is_some() {
            return Err(Error::ApplicationUnregistered);
        }
        Ok(app)
    }

    /// The application and user a user token speaks for, provisioning the
    /// user the first time its application vouches for it.
    ///
    /// # Errors
    /// `unauthorized` for a bad, expired or foreign token;
    /// `application_unregistered`; `user_locked`.
    pub async fn authenticate_user(&self, token: &str) -> Result<(Application, User), Error> {
        self.authenticate_user_with_contexts(token)
            .await
            .map(|(app, user, _, _)| (app, user))
    }

    /// As [`Self::authenticate_user`], also returning the token's `ctx`
    /// claim (the business objects the application lets the user see) and
    /// the moment the token stops being accepted (`exp` plus the leeway).
    ///
    /// # Errors
    /// As [`Self::authenticate_user`].
    pub async fn authenticate_user_with_contexts(
        &self,
        token: &str,
    ) -> Result<(Application, User, Vec<String>, Timestamp), Error> {
        const BAD: Error = Error::Unauthorized("invalid user token");
        let app_id = auth::unverified_issuer(token).ok_or(BAD)?;
        let app = self.store.application(app_id).await?.ok_or(BAD)?;
        let now = self.clock.now();
        let (claims, key_until) = self.verify_user_token(&app, token, now)?;
        if app.unregistered_at.is_some() {
            return Err(Error::ApplicationUnregistered);
        }
        if claims.iss != app.id.to_string() {
            return Err(BAD);
        }
        let email = claims
            .email
            .as_deref()
            .map(normalize_email)
            .transpose()
            .map_err(|_| {
                Error::Unauthorized("invalid user token: email claim is not an e-mail address")
            })?;
        let user = match self.store.user_by_external_id(app.id, &claims.sub).await? {
            Some(user) if user.name == claims.name && (email.is_none() || user.email == email) => {
                user
            }
            _ => {
                check_user_fields(&claims.sub, &claims.name, None).map_err(|_| {
                    Error::Unauthorized("invalid user token: sub or name not acceptable")
                })?;
                let fresh = UserId::random();
                let user = self
                    .store
                    .provision_user(
                        app.id,
                        fresh,
                        &claims.sub,
                        &claims.name,
                        email.as_deref(),
                        now,
                    )
                    .await?;
                self.provisioned(&user, fresh).await;
                user
            }
        };
        if user.locked {
            return Err(Error::UserLocked);
        }
        let mut until = Timestamp::from_secs(
            claims
                .exp
                .saturating_add(i64::try_from(self.config.tokens.leeway_secs).unwrap_or(i64::MAX)),
        );
        if let Some(key_until) = key_until {
            until = until.min(key_until);
        }
        Ok((app, user, claims.ctx, until))
    }

    /// Issues a user token, provisioning the user if the application
    /// vouches for it for the first time.
    ///
    /// # Errors
    /// `invalid_request` for bad fields; `user_locked`.
    pub async fn issue_token(
        &self,
        app: &Application,
        external_id: &str,
        name: &str,
        email: Option<&str>,
        contexts: &[String],
    ) -> Result<TokenIssued, Error> {
        check_user_fields(external_id, name, email)?;
        if contexts.len() > 1000
            || contexts
                .iter()
                .any(|c| c.is_empty() || c.chars().count() > 256)
        {
            return Err(Error::InvalidRequest(
                "contexts: at most 1000 non-empty strings of up to 256 characters".to_owned(),
            ));
        }
        let email = email.map(normalize_email).transpose()?;
        let now = self.clock.now();
        let fresh = UserId::random();
        let user = self
            .store
            .provision_user(app.id, fresh, external_id, name, email.as_deref(), now)
            .await?;
        self.provisioned(&user, fresh).await;
        if user.locked {
            return Err(Error::UserLocked);
        }
        let expires_at = Timestamp::from_secs(now.as_secs())
            .plus(Duration::from_secs(self.config.tokens.ttl_secs));
        let claims = UserClaims {
            iss: app.id.to_string(),
            aud: auth::TOKEN_AUDIENCE.to_owned(),
            sub: user.external_id.clone(),
            name: user.name.clone(),
            email: user.email.clone(),
            iat: now.as_secs(),
            exp: expires_at.as_secs(),
            ctx: contexts.to_vec(),
        };
        let token = auth::mint_token(&app.token_key, &claims).map_err(Error::internal)?;
        Ok(TokenIssued {
            token,
            user,
            expires_at,
        })
    }

    /// The demo application (made on first use): owned by the subscriber
    /// `demo@confer.invalid`, named "Confer demo". Its secret is made and
    /// forgotten: only this server issues its tokens.
    ///
    /// # Errors
    /// `internal` on store failure.
    pub async fn demo_application(&self) -> Result<Application, Error> {
        const EMAIL: &str = "demo@confer.invalid";
        if let Some(owner) = self.store.subscriber_by_email(EMAIL).await?
            && let Some(app) = self
                .store
                .applications(Some(owner.id))
                .await?
                .into_iter()
                .find(|a| a.unregistered_at.is_none())
        {
            return Ok(app);
        }
        let id = AppId::random();
        let secret = auth::generate_secret();
        let new_app = NewApplication {
            id,
            name: "Confer demo".to_owned(),
            secret_hash: auth::secret_digest(&secret),
            token_key: TokenKey::derive(id, &secret),
        };
        let (_, app) = self
            .store
            .register_application(EMAIL, SubscriberId::random(), &new_app, self.clock.now())
            .await?;
        tracing::info!(app_id = %app.id, "demo application created");
        Ok(app)
    }

    /// The token's claims, and — when it was signed with the key of the
    /// previous secret — the end of that key's grace period.
    fn verify_user_token(
        &self,
        app: &Application,
        token: &str,
        now: Timestamp,
    ) -> Result<(UserClaims, Option<Timestamp>), Error> {
        let tokens = &self.config.tokens;
        let verify = |key: &TokenKey| {
            auth::verify_token(token, key, now, tokens.max_ttl_secs, tokens.leeway_secs)
        };
        let result = match verify(&app.token_key) {
            Err(AuthError::Invalid) => match (&app.prev_token_key, app.prev_token_key_until) {
                (Some(prev), Some(until)) if now < until => verify(prev).map(|c| (c, Some(until))),
                _ => Err(AuthError::Invalid),
            },
            other => other.map(|c| (c, None)),
        };
        result.map_err(|e| match e {
            AuthError::Expired => Error::Unauthorized("user token expired"),
            AuthError::BadLifetime => Error::Unauthorized("user token lifetime not acceptable"),
            _ => Error::Unauthorized("invalid user token"),
        })
    }

    /// Whether `secret` is the application's: a digest compared in
    /// constant time; an argon2 hash of an earlier version is checked (on a
    /// blocking thread, a few at a time) and, when it matches, replaced by
    /// the digest, unless the secret was rotated meanwhile.
    async fn secret_matches(&self, app: &Application, secret: &str) -> Result<bool, Error> {
        match StoredSecret::parse(&app.secret_hash) {
            StoredSecret::Digest(stored) => Ok(auth::secret_matches_digest(secret, stored)),
            StoredSecret::Argon2(phc) => {
                let _slot = ARGON2_SLOTS.acquire().await.map_err(Error::internal)?;
                let (given, phc) = (secret.to_owned(), phc.to_owned());
                let ok =
                    tokio::task::spawn_blocking(move || auth::verify_argon2_secret(&given, &phc))
                        .await
                        .map_err(Error::internal)?;
                if ok {
                    let upgraded = self
                        .store
                        .replace_secret_hash(app.id, &app.secret_hash, &auth::secret_digest(secret))
                        .await?;
                    if upgraded {
                        tracing::info!(app_id = %app.id, "application secret hash replaced by a digest");
                    }
                }
                Ok(ok)
            }
            StoredSecret::Unknown => Ok(false),
        }
    }
}
