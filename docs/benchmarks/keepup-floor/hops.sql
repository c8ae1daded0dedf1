SELECT o.topic, count(*), round(1000*percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch from sent_at-created_at))::numeric,1) relay_p50_ms,
 round(1000*percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch from sent_at-created_at))::numeric,1) relay_p99_ms FROM outbox o WHERE sent_at IS NOT NULL GROUP BY 1;
SELECT p.group_name, o.topic, count(*), round(1000*percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch from p.processed_at-o.sent_at))::numeric,1) sent_to_processed_p50,
 round(1000*percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch from p.processed_at-o.sent_at))::numeric,1) p99 FROM processed_events p JOIN outbox o ON o.event_id=p.event_id GROUP BY 1,2 ORDER BY 1,2;
SELECT p.group_name, date_trunc('second', o.sent_at)::time s, count(*), round(1000*max(extract(epoch from p.processed_at-o.sent_at))::numeric) max_ms, round(1000*min(extract(epoch from p.processed_at-o.sent_at))::numeric) min_ms
 FROM processed_events p JOIN outbox o ON o.event_id=p.event_id WHERE p.group_name IN ('analytics','inventory') AND o.topic='order.events' GROUP BY 1,2 ORDER BY 1,2;
SELECT p.group_name, o.payload->>'type' t, o.created_at::time, o.sent_at::time, p.processed_at::time, o.key FROM processed_events p JOIN outbox o ON o.event_id=p.event_id
 WHERE p.processed_at - o.sent_at > interval '500 ms' ORDER BY o.sent_at LIMIT 40;
