//! Subscribers: registration and sign-in by e-mail code, sessions.

use super::*;

impl Tenancy {
    /// Mails a registration code to `email`.
    ///
    /// # Errors
    /// `invalid_request` for a malformed e-mail or name; `internal` if the
    /// mail cannot go out.
    pub async fn request_registration(&self, email: &str, app_name: &str) -> Result<(), Error> {
        let email = normalize_email(email)?;
        check_name("app_name", app_name)?;
        self.send_code(
            CodePurpose::Register,
            &email,
            CodeMail::Register { app_name },
        )
        .await
    }

    /// Checks the code and registers a new application for the subscriber
    /// of `email` (created on first registration).
    ///
    /// # Errors
    /// `access_denied` for a wrong e-mail or code, an expired, used or
    /// exhausted code, without saying which; `invalid_request` for malformed
    /// input.
    pub async fn confirm_registration(
        &self,
        email: &str,
        app_name: &str,
        code: &str,
    ) -> Result<Registered, Error> {
        let email = normalize_email(email)?;
        check_name("app_name", app_name)?;
        check_code_format(code)?;
        self.spend_code(CodePurpose::Register, &email, code).await?;

        let id = AppId::random();
        let app_secret = auth::generate_secret();
        let new_app = NewApplication {
            id,
            name: app_name.to_owned(),
            secret_hash: auth::secret_digest(&app_secret),
            token_key: TokenKey::derive(id, &app_secret),
        };
        let (_, application) = self
            .store
            .register_application(&email, SubscriberId::random(), &new_app, self.clock.now())
            .await?;
        tracing::info!(app_id = %application.id, subscriber_id = %application.subscriber_id, "application registered");
        Ok(Registered {
            application,
            app_secret,
        })
    }

    /// Mails a sign-in code if a subscriber owns `email`; says nothing
    /// either way, so that addresses cannot be probed.
    ///
    /// # Errors
    /// `invalid_request` for a malformed e-mail; `internal` on failure.
    pub async fn request_sign_in(&self, email: &str) -> Result<(), Error> {
        let email = normalize_email(email)?;
        if self.store.subscriber_by_email(&email).await?.is_some() {
            self.send_code(CodePurpose::SignIn, &email, CodeMail::SignIn)
                .await?;
        }
        Ok(())
    }

    /// Checks a sign-in code and opens a subscriber session.
    ///
    /// # Errors
    /// `access_denied` as for registration.
    pub async fn confirm_sign_in(&self, email: &str, code: &str) -> Result<SessionIssued, Error> {
        let email = normalize_email(email)?;
        check_code_format(code)?;
        self.spend_code(CodePurpose::SignIn, &email, code).await?;
        let subscriber = self
            .store
            .subscriber_by_email(&email)
            .await?
            .ok_or(Error::AccessDenied)?;
        let token = auth::generate_opaque_token();
        let now = self.clock.now();
        let expires_at = now.plus(Duration::from_secs(
            self.config.subscribers.session_ttl_secs,
        ));
        self.store
            .put_session(&SubscriberSession {
                token_hash: auth::digest(&[&token]),
                subscriber_id: subscriber.id,
                expires_at,
                created_at: now,
            })
            .await?;
        Ok(SessionIssued {
            token,
            subscriber,
            expires_at,
        })
    }

    /// Ends a subscriber session.
    ///
    /// # Errors
    /// `internal` on store failure.
    pub async fn sign_out(&self, token: &str) -> Result<(), Error> {
        self.store.delete_session(&auth::digest(&[token])).await?;
        Ok(())
    }

    /// The subscriber whose session token this is.
    ///
    /// # Errors
    /// `unauthorized` for an unknown or expired session.
    pub async fn authenticate_subscriber(&self, token: &str) -> Result<Subscriber, Error> {
        const BAD: Error = Error::Unauthorized("invalid or expired subscriber session");
        let session = self
            .store
            .session(&auth::digest(&[token]))
            .await?
            .ok_or(BAD)?;
        if session.expires_at <= self.clock.now() {
            return Err(BAD);
        }
        self.store
            .subscriber(session.subscriber_id)
            .await?
            .ok_or(BAD)
    }

    async fn send_code(
        &self,
        purpose: CodePurpose,
        email: &str,
        what: CodeMail<'_>,
    ) -> Result<(), Error> {
        let code = auth::generate_code();
        let now = self.clock.now();
        let codes = &self.config.codes;
        let message = mail::code_message(
            &self.config.mail.from,
            email,
            &code,
            what,
            codes.ttl_secs / 60,
        )?;
        self.store
            .put_code(&PendingCode {
                purpose,
                email: email.to_owned(),
                code_hash: auth::digest(&[purpose.as_str(), email, &code]),
                expires_at: now.plus(codes.ttl()),
                max_tries: codes.max_tries,
                created_at: now,
            })
            .await?;
        self.mailer.send(message).await?;
        Ok(())
    }

    async fn spend_code(&self, purpose: CodePurpose, email: &str, code: &str) -> Result<(), Error> {
        let stored = self
            .store
            .spend_code_try(purpose, email, self.clock.now())
            .await?
            .ok_or(Error::AccessDenied)?;
        let given = auth::digest(&[purpose.as_str(), email, code]);
        if !auth::digests_equal(&stored, &given) {
            return Err(Error::AccessDenied);
        }
        if !self.store.mark_code_used(purpose, email).await? {
            return Err(Error::AccessDenied);
        }
        Ok(())
    }
}
