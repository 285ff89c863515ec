-- How the host obtains a transport plugin's access tokens (JSON: a Google service account
-- key, or OAuth client credentials; see host/src/oauth.rs). Never shown to the plugin.
ALTER TABLE plugin_settings ADD COLUMN oauth TEXT;
