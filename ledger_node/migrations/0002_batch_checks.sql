-- A batch writes and commits in one message to the server. Its row counts are checked inside
-- that statement, so a mismatch aborts the transaction before the COMMIT that follows it.
CREATE FUNCTION regiongate_expect(actual bigint, expected bigint, what text)
RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF actual IS DISTINCT FROM expected THEN
        RAISE EXCEPTION 'batch wrote % %, decided %', actual, what, expected
            USING ERRCODE = 'XX000';
    END IF;
    RETURN actual;
END
$$;
