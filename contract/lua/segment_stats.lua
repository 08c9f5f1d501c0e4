-- Segment boards: item -> short popularity among the users in a segment, one call per batch, in
-- the batch's MULTI after item_stats.lua (whose landmark, and rescaling of every registered
-- board, they share: the same forward decay as the trending boards).
-- KEYS: landmark, the set of boards (for rescaling).
-- ARGV: short half-life (ms), max board size, the segment board prefix and the shard's hash tag
--   that goes before it (or empty), then
--   (t, segment, item, weight) per user window, item and segment.
local hs, maxn, prefix, tag = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local lm = tonumber(redis.call('GET', KEYS[1]) or '')
local touched = {}
for i = 5, #ARGV, 4 do
  local t = tonumber(ARGV[i])
  if not lm then lm = t; redis.call('SET', KEYS[1], t) end
  local board = tag .. prefix .. ARGV[i + 1]
  if not touched[board] then
    touched[board] = true
    redis.call('SADD', KEYS[2], board)
  end
  local amount = tonumber(ARGV[i + 3]) * 2 ^ ((t - lm) / hs)
  if amount > 0 then redis.call('ZINCRBY', board, string.format('%.17g', amount), ARGV[i + 2]) end
end
for board, _ in pairs(touched) do
  redis.call('ZREMRANGEBYRANK', board, 0, -(maxn + 1))
end
return 1
