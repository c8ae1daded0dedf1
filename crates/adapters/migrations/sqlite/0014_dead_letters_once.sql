-- At most one dead letter per (group, event) until it is replayed: a
-- consumer that dead-letters an event and dies before its offset is
-- committed gets the event again, fails it again, and must not file it
-- twice. (After a replay, the event may fail and be filed again.)
ALTER TABLE dead_letters ADD COLUMN event_id TEXT NOT NULL DEFAULT '';
UPDATE dead_letters SET event_id = json_extract(event, '$.id');
-- Twins filed before this rule: the newest stays.
DELETE FROM dead_letters AS d
 WHERE replayed_at IS NULL
   AND EXISTS (SELECT 1 FROM dead_letters AS o
                WHERE o.group_name = d.group_name AND o.event_id = d.event_id
                  AND o.replayed_at IS NULL
                  AND (o.failed_at > d.failed_at
                       OR (o.failed_at = d.failed_at AND o.id > d.id)));
CREATE UNIQUE INDEX dead_letters_once ON dead_letters (group_name, event_id)
 WHERE replayed_at IS NULL;
