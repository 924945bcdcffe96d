-- gatewayd loader schema, version 1 (docs/fleet.md "The database"). Times are Unix milliseconds as the gateways send
-- them; dates are YYYY-MM-DD in the site's time zone.

-- Every punch once: unique by punch_id (which starts with the gateway id).
CREATE TABLE punches (
    punch_id          text PRIMARY KEY,
    gateway_id        text NOT NULL,
    device_id         text NOT NULL,
    employee_id       text NOT NULL,
    credential        text NOT NULL,
    method            text NOT NULL,
    device_time_ms    bigint NOT NULL,
    received_time_ms  bigint NOT NULL,
    flags             text[] NOT NULL,
    lat               double precision,
    lng               double precision,
    score             real,
    batch_seq         bigint NOT NULL,
    loaded_at         timestamptz NOT NULL DEFAULT now()
);
-- Digests count a gateway's punches in a time range.
CREATE INDEX punches_gateway_time ON punches (gateway_id, device_time_ms);

-- Every record at its highest revision: a row is replaced only by a higher revision.
CREATE TABLE records (
    record_id            text PRIMARY KEY,
    gateway_id           text NOT NULL,
    revision             bigint NOT NULL,
    employee_id          text NOT NULL,
    work_date            text NOT NULL,
    shift_id             text NOT NULL,
    clock_in_ms          bigint,
    clock_out_ms         bigint,
    statuses             text[] NOT NULL,
    late_minutes         integer NOT NULL,
    early_leave_minutes  integer NOT NULL,
    worked_minutes       integer NOT NULL,
    overtime_minutes     integer NOT NULL,
    punch_ids            text[] NOT NULL,
    closed               boolean NOT NULL,
    rules_version        bigint NOT NULL,
    batch_seq            bigint NOT NULL,
    loaded_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX records_employee_date ON records (employee_id, work_date);

-- The latest digest of each gateway's day, and whether the database held exactly those punches when it arrived.
CREATE TABLE digests (
    gateway_id            text NOT NULL,
    work_date             text NOT NULL,
    outbox_id             text NOT NULL,
    batch_seq             bigint NOT NULL,
    punch_count           bigint NOT NULL,
    punch_ids_sha256      bytea NOT NULL,
    record_count          bigint NOT NULL,
    from_ms               bigint NOT NULL,
    to_ms                 bigint NOT NULL,
    complete              boolean NOT NULL,
    received_punch_count  bigint NOT NULL,
    -- Times the day was asked for again after a mismatch.
    asked                 integer NOT NULL DEFAULT 0,
    checked_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, work_date)
);

-- The last batch loaded per gateway and outbox (a reinstalled gateway has a new outbox_id and starts at batch 1).
CREATE TABLE gateways (
    gateway_id      text NOT NULL,
    outbox_id       text NOT NULL,
    last_batch_seq  bigint NOT NULL,
    batches         bigint NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, outbox_id)
);
