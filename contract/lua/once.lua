-- Add to hashes once per marker: what Kafka or a restart from a checkpoint delivers again counts once.
-- KEYS[1] the marker, KEYS[2..] the hashes; ARGV[1] how long the marker lives (ms), then one
-- (index into KEYS, field, amount) triple per HINCRBY. Returns 1 when the marker was new (the
-- increments were made), else 0.
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
for i = 2, #ARGV, 3 do redis.call('HINCRBY', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2]) end
return 1
