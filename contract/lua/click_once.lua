-- Count a click on an exposure once, however many of the user's clicks touch it.
-- KEYS[1] the exposure's clicked marker, KEYS[2..] the engagement hashes of its groups (one per
-- experiment it was in); ARGV[1] how long the marker lives (ms): longer than any click can still
-- touch the exposure. Returns 1 when this click was the exposure's first, else 0.
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
for i = 2, #KEYS do redis.call('HINCRBY', KEYS[i], 'clicks', 1) end
return 1
