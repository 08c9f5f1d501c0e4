-- Count DLQ'd and late records into the ledger exactly once, replays included.
-- KEYS[1] the ledger hash, KEYS[2] the high-water hash; ARGV: (partition key, offset, ledger field)
-- per rejected record, in the order of their partition. A record at or below its partition's
-- high-water offset was counted before a failure and is being replayed from the checkpoint.
local hw, counts = {}, {}
for i = 1, #ARGV, 3 do
  local p, off, f = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if hw[p] == nil then hw[p] = tonumber(redis.call('HGET', KEYS[2], p) or '-1') end
  if off > hw[p] then
    hw[p] = off
    counts[f] = (counts[f] or 0) + 1
  end
end
local counted = 0
for p, off in pairs(hw) do redis.call('HSET', KEYS[2], p, string.format('%d', off)) end
for f, n in pairs(counts) do
  redis.call('HINCRBY', KEYS[1], f, n)
  counted = counted + n
end
return counted
