-- TLS for a transport plugin's provider requests, set by an admin and never shown to the
-- plugin: the client identity the host presents (PEM certificate chain and private key;
-- APNs accepts MDM pushes only from the MDM push certificate), and extra certificate
-- authorities (PEM) a provider, gateway or sandbox is verified against besides the public
-- roots.
ALTER TABLE plugin_settings ADD COLUMN client_identity TEXT;
ALTER TABLE plugin_settings ADD COLUMN trusted_ca TEXT;
