-- A batch's locks and its reads in one round trip. The accounts are locked first, in id order
-- (the order every batch takes them in, so batches never deadlock); the read that follows is a
-- statement of its own in a VOLATILE function, so under READ COMMITTED it takes a new snapshot
-- and sees every commit the locks waited for. Called inside the batch's transaction only: the
-- locks last until its COMMIT. One row per item, tagged, its columns as a JSON array.
CREATE FUNCTION regiongate_lock_and_read(
    p_account_ids text[], p_keys text[], p_pending_ids text[], p_bet_accounts text[],
    p_bet_references text[], p_saga_ids text[], p_step_ids text[]
)
RETURNS TABLE (tag text, item text) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM accounts WHERE id = ANY (p_account_ids) ORDER BY id FOR UPDATE;
    RETURN QUERY
    SELECT 'a', json_build_array(a.id, a.kind, a.status, a.currency, a.debits_posted,
                                 a.credits_posted, a.debits_pending, a.credits_pending,
                                 a.version)::text
    FROM accounts a WHERE a.id = ANY (p_account_ids)
    UNION ALL
    SELECT 'k', json_build_array(k.key, encode(k.request_hash, 'hex'), k.status_code,
                                 convert_from(k.body, 'UTF8'), k.result, k.transfer_id)::text
    FROM idempotency_keys k WHERE k.key = ANY (p_keys)
    UNION ALL
    SELECT 'p', json_build_array(t.id, t.kind, t.flow, t.status, t.debit_account_id,
                                 t.credit_account_id, t.amount, t.currency, t.timeout_at,
                                 t.resolved_amount)::text
    FROM transfers t WHERE t.id = ANY (p_pending_ids)
    UNION ALL
    SELECT 'b', json_build_array(b.account_id, b.reference, b.status, b.bet_transfer_id,
                                 b.rollback_transfer_id, t.amount, t.credit_account_id)::text
    FROM bets b
    JOIN unnest(p_bet_accounts, p_bet_references) AS r(account_id, reference)
      ON b.account_id = r.account_id AND b.reference = r.reference
    LEFT JOIN transfers t ON t.id = b.bet_transfer_id
    WHERE b.account_id = ANY (p_bet_accounts)
    UNION ALL
    SELECT 's', json_build_array(s.id, s.status, s.hold_transfer_id)::text
    FROM sagas s WHERE s.id = ANY (p_saga_ids)
    UNION ALL
    SELECT 'g', json_build_array(g.step_id, g.status, g.transfer_id, g.amount, g.reason)::text
    FROM saga_steps g WHERE g.step_id = ANY (p_step_ids);
END
$$;
