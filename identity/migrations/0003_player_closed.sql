-- A player can be closed: a legacy user deleted before cutover (identity.legacy.sync). Its
-- name is released at its owner; its public id stays recorded, so it is never reused.
ALTER TABLE identity.players DROP CONSTRAINT players_status_check;
ALTER TABLE identity.players ADD CONSTRAINT players_status_check
    CHECK (status IN ('creating', 'active', 'refused', 'closed'));
