-- A user's conversations are found from its memberships (members_by_user)
-- plus its application's "all users" conversations, found here, instead
-- of scanning every conversation of the application.
CREATE INDEX conversations_for_all_users ON conversations (app_id) WHERE all_users = TRUE;
