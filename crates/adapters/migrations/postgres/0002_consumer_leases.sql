-- Partition assignment for consumer groups on the embedded event log: the
-- members of a group share its partitions through leases kept here, so a
-- group scales across processes on PostgreSQL alone (see
-- src/postgres/log.rs for the protocol).
--
-- Every expiry is compared with the server's clock only (`now()` of the
-- statement that sets or checks it); members never compare their own clocks
-- with it.

-- The live members of each group. A member inserts its row when it joins and
-- pushes `expires_at` forward on every renewal; a member whose row expired is
-- dead and no longer counted when shares are computed. Rows of dead members
-- are deleted by the other members; a member that leaves cleanly deletes its
-- own row.
CREATE TABLE consumer_members (
    group_name TEXT        NOT NULL,
    -- A UUID v7 per subscription: members sort by age, and the oldest get the
    -- bigger shares when partitions do not divide evenly.
    member_id  UUID        NOT NULL,
    -- Who the member is, for operators: "host pid".
    client     TEXT        NOT NULL,
    joined_at  TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (group_name, member_id)
);

-- One row per (group, topic, partition), created when a member of the group
-- first subscribes. `owner` is the member that may deliver the partition and
-- commit its offset while `expires_at` is in the future; NULL (released) or
-- an expiry in the past means anyone may take it. Every change is a
-- conditional UPDATE under the row lock, and a commit locks the rows of the
-- partitions it writes (FOR SHARE) and writes only those the member still
-- owns, so two members never both hold, or both commit, a partition.
CREATE TABLE consumer_leases (
    group_name  TEXT        NOT NULL,
    topic       TEXT        NOT NULL,
    "partition" INTEGER     NOT NULL,
    owner       UUID,
    expires_at  TIMESTAMPTZ NOT NULL,
    acquired_at TIMESTAMPTZ,
    PRIMARY KEY (group_name, topic, "partition")
);
-- Renewal and release look up a member's own leases.
CREATE INDEX consumer_leases_by_owner ON consumer_leases (group_name, owner);
