-- Leases: which server does a piece of work (the control loop: `leader`; an item's processing:
-- `item:GROUP/VM`), until when (milliseconds since the Unix epoch, by the database's clock:
-- ferry_now_ms()), and under which generation. The generation grows each time the lease is
-- taken by a new holder; what a holder publishes carries it, and a holder whose generation is
-- no longer the lease's is refused.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    generation INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
