-- Set KEYS[1] to ARGV[2] (with TTL ARGV[3] s) unless its stored guard field is newer than ARGV[1].
-- Values are packed (`z:<feature_ts>:` and a zstd frame, contract.compact) or JSON with a top-level
-- "feature_ts"; equal timestamps rewrite (idempotent replay).
-- The guard is read with a pattern, not by decoding the stored document: for feat:{user} that is
-- the whole user state, and cjson.decode of it was most of Redis's CPU in the features job. The
-- first "feature_ts" key in the text is the top-level one, because UserState, RecList and Profile write it
-- before any nested object (tests/redis/test_guarded_set.py holds them to it); a value in another
-- shape is decoded as before.
local cur = redis.call('GET', KEYS[1])
if cur then
  -- a packed value (contract.compact) carries its guard before the zstd frame
  local stored = string.match(cur, '^z:(%-?%d+):') or string.match(cur, '"feature_ts"%s*:%s*(%-?%d+)[,}%s]')
  if not stored then
    local ok, doc = pcall(cjson.decode, cur)
    stored = ok and type(doc) == 'table' and doc['feature_ts'] or nil
  end
  if stored and tonumber(stored) and tonumber(stored) > tonumber(ARGV[1]) then
    return 0
  end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
