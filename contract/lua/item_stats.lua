-- Item statistics: forward-decayed popularity boards, one call per batch of item windows.
-- KEYS: landmark, the set of boards (for rescaling), then the boards trending, trending:long,
--   trending:cats, trending:cats:long, trending:views, trending:buys, trending:rebuys (contract.keys).
-- ARGV: short and long half-life (ms), max board size, the per-category board prefix and the
--   shard's hash tag that goes before it (a Redis Cluster's, contract.keys.Layout; else empty), then
--   (t, item, category, views, purchases, repeat purchases, weight) per item window, in time order.
-- Same math as udfs.candidates.TrendingBoards.add. The per-category boards and the '__all__'
-- members get one ZINCRBY per window end and category, with the window's items summed first (the
-- sums differ from adding item by item only in rounding, ~1e-16), and each board is registered once
-- per call: ZINCRBY and SADD per item window were most of Redis's work.
local hs, hl, maxn = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lm = tonumber(redis.call('GET', KEYS[1]) or '')
local TOP, LONG, CATS, CATS_LONG, VIEWS, BUYS, REBUYS = KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local CAT_PREFIX, CAT_TAG = ARGV[4], ARGV[5]
local long_boards = {[LONG] = true, [CATS_LONG] = true, [VIEWS] = true, [BUYS] = true, [REBUYS] = true}
local function islong(b) return long_boards[b] == true end
local function add(key, amount, member)
  if amount > 0 then redis.call('ZINCRBY', key, string.format('%.17g', amount), member) end
end
local cats, cats_long, views_all, buys_all, rebuys_all = {}, {}, 0, 0, 0
local function flush()
  for c, a in pairs(cats) do add(CATS, a, c) end
  for c, a in pairs(cats_long) do add(CATS_LONG, a, c) end
  add(VIEWS, views_all, '__all__')
  add(BUYS, buys_all, '__all__')
  add(REBUYS, rebuys_all, '__all__')
  cats, cats_long, views_all, buys_all, rebuys_all = {}, {}, 0, 0, 0
end
local registered, current = {}, nil
if #ARGV >= 6 then
  redis.call('SADD', KEYS[2], TOP, LONG, CATS, CATS_LONG,
             VIEWS, BUYS, REBUYS)
end
for i = 6, #ARGV, 7 do
  local t = tonumber(ARGV[i])
  if t ~= current then
    flush()  -- before a rescale: the sums were scaled to the landmark they were made with
    current = t
  end
  if not lm then lm = t; redis.call('SET', KEYS[1], t) end
  if (t - lm) / hs > 256 then
    for _, b in ipairs(redis.call('SMEMBERS', KEYS[2])) do
      local f = 2 ^ (-(t - lm) / (islong(b) and hl or hs))
      local all = redis.call('ZRANGE', b, 0, -1, 'WITHSCORES')
      for j = 1, #all, 2 do
        redis.call('ZADD', b, string.format('%.17g', tonumber(all[j + 1]) * f), all[j])
      end
    end
    lm = t; redis.call('SET', KEYS[1], t)
  end
  local ms, ml = 2 ^ ((t - lm) / hs), 2 ^ ((t - lm) / hl)
  local item, cat = ARGV[i + 1], ARGV[i + 2]
  local nv, np, nr, w = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
  local ck = CAT_TAG .. CAT_PREFIX .. cat
  if not registered[ck] then
    registered[ck] = true
    redis.call('SADD', KEYS[2], ck)
  end
  add(TOP, w * ms, item)
  add(ck, w * ms, item)
  add(LONG, w * ml, item)
  cats[cat] = (cats[cat] or 0) + w * ms
  cats_long[cat] = (cats_long[cat] or 0) + w * ml
  add(VIEWS, nv * ml, item)
  add(BUYS, np * ml, item)
  add(REBUYS, nr * ml, item)
  views_all = views_all + nv * ml
  buys_all = buys_all + np * ml
  rebuys_all = rebuys_all + nr * ml
end
flush()
for _, b in ipairs({TOP, LONG, VIEWS, BUYS, REBUYS}) do
  redis.call('ZREMRANGEBYRANK', b, 0, -(maxn + 1))
end
return 1
