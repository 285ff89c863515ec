-- The plugins' key-value stores (the `kv` capability, wit/types.wit): one namespace per
-- plugin name, shared by its versions and by every replica, kept across restarts.
-- `size` is the key's and the value's bytes, which the per-plugin quota sums. Same in
-- the other dialect's folder.
CREATE TABLE plugin_kv (
    plugin TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    size BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (plugin, key)
);
