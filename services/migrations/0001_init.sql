-- Catalog, persisted orders. Orders are keyed by the id the api gave them, so a
-- redelivered message inserts nothing twice (ON CONFLICT DO NOTHING).
CREATE TABLE items (
    id            bigint PRIMARY KEY,
    name          text        NOT NULL,
    price_cents   bigint      NOT NULL CHECK (price_cents >= 0),
    stock         integer     NOT NULL CHECK (stock >= 0),
    initial_stock integer     NOT NULL CHECK (initial_stock >= 0),
    version       bigint      NOT NULL DEFAULT 1,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    order_id     uuid        PRIMARY KEY,
    item_id      bigint      NOT NULL REFERENCES items (id),
    user_id      text        NOT NULL,
    quantity     integer     NOT NULL CHECK (quantity > 0),
    accepted_at  timestamptz NOT NULL,
    persisted_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX orders_item_id ON orders (item_id);
