-- Store a rules version and its audit entry, unless another apply came first.
-- KEYS[1]: the rules hash; KEYS[2]: its audit list (on a Redis Cluster named {rules}:history, so
-- both are in the slot of "rules" and this one script writes them together).
-- ARGV[1]: the version the caller read ("" when none was applied), which its diff is against;
-- ARGV[2..5]: spec, version, applied_at_ms, source; ARGV[6]: the audit entry (JSON).
-- Returns 1 when stored, 0 when the stored version is no longer ARGV[1] (the caller reads again).
local current = redis.call('HGET', KEYS[1], 'version') or ''
if current ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'spec', ARGV[2], 'version', ARGV[3], 'applied_at_ms', ARGV[4], 'source', ARGV[5])
redis.call('LPUSH', KEYS[2], ARGV[6])
return 1
