-- Every stock change an item update made, written in the update's own transaction, so a
-- retried or redelivered update (or the reconciler) can still shift the Redis counter by
-- the same delta after the row already carries the version: exactly once per
-- (item, version), whatever failed after the commit.
CREATE TABLE item_stock_changes (
    item_id    bigint      NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    version    bigint      NOT NULL,
    delta      integer     NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_id, version)
);

CREATE INDEX item_stock_changes_changed_at ON item_stock_changes (changed_at);
