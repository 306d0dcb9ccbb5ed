-- Server-to-server grants: the application says a user may see a business
-- object (context), besides the `ctx` claim of the user's token.
CREATE TABLE context_grants (
    app_id      TEXT NOT NULL REFERENCES applications (id),
    user_id     TEXT NOT NULL REFERENCES users (id),
    context     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (app_id, user_id, context)
);
