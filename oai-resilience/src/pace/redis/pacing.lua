-- oai-resilience pacing state, one hash per key. Fields:
--   rc rr rl ra  request bucket: capacity, refill per second, level, level's time (us)
--   tc tr tl ta  token bucket: the same
--   pu           paused until (us)
-- ARGV[1] is the time in microseconds, or '' for the server's clock (TIME), which every
-- client of a key then shares. Numbers are stored with 17 significant digits, so the
-- arithmetic is the same as the in-process KeyModel's, step for step.
-- ARGV[2] is the operation: 'admit', 'learn' or 'pause'.
local EPS = 1e-6
local MAX_WAIT = 1e6

local function num(x)
  return string.format('%.17g', x)
end

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local op = ARGV[2]

local raw = redis.call('HGETALL', KEYS[1])
local s = {}
for i = 1, #raw, 2 do
  s[raw[i]] = tonumber(raw[i + 1])
end

local function advance(p)
  local at = s[p .. 'a']
  if now > at then
    local dt = (now - at) / 1e6
    s[p .. 'l'] = math.min(s[p .. 'l'] + s[p .. 'r'] * dt, s[p .. 'c'])
    s[p .. 'a'] = now
  end
end

-- -1: never (no refill); otherwise seconds to wait.
local function wait_for(p, cost)
  local need = math.min(cost, s[p .. 'c'])
  if s[p .. 'l'] + EPS >= need then
    return 0
  end
  if s[p .. 'r'] <= 0 then
    return -1
  end
  return math.min((need - s[p .. 'l']) / s[p .. 'r'], MAX_WAIT)
end

local function store(ttl)
  local out = {}
  for _, f in ipairs({'rc', 'rr', 'rl', 'ra', 'tc', 'tr', 'tl', 'ta', 'pu'}) do
    if s[f] ~= nil then
      out[#out + 1] = f
      out[#out + 1] = num(s[f])
    end
  end
  if #out > 0 then
    redis.call('HSET', KEYS[1], unpack(out))
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
end

if op == 'admit' then
  -- ARGV: 3 request cost, 4 token cost, 5 ttl ms, 6 requests to keep in the request bucket
  -- (a lower lane's reserve for higher ones; needed, not taken). Returns {1, '0'} admitted,
  -- {0, seconds} wait, {-1, '0'} never.
  local costs = {r = tonumber(ARGV[3]), t = tonumber(ARGV[4])}
  local keep = math.max(tonumber(ARGV[6] or '0') or 0, 0)
  local needs = {r = costs.r + keep, t = costs.t}
  local wait = 0
  if s['pu'] ~= nil and s['pu'] > now then
    wait = (s['pu'] - now) / 1e6
  end
  local blocked = false
  for _, p in ipairs({'r', 't'}) do
    if s[p .. 'c'] ~= nil then
      advance(p)
      local w = wait_for(p, needs[p])
      if w < 0 then
        blocked = true
      else
        wait = math.max(wait, w)
      end
    end
  end
  local status = 1
  if blocked then
    status = -1
  elseif wait > 0 then
    status = 0
  else
    for _, p in ipairs({'r', 't'}) do
      if s[p .. 'c'] ~= nil then
        s[p .. 'l'] = s[p .. 'l'] - costs[p]
      end
    end
  end
  store(ARGV[5])
  if status == 0 then
    return {0, num(wait)}
  end
  return {status, '0'}
elseif op == 'learn' then
  -- ARGV: 3..5 request capacity, refill, remaining; 6..8 the same for tokens; 9 ttl ms.
  -- '' leaves a value alone.
  local function learn(p, cap, refill, remaining)
    if cap == '' then
      return
    end
    cap = tonumber(cap)
    refill = tonumber(refill)
    if s[p .. 'c'] ~= nil then
      advance(p)
      s[p .. 'c'] = cap
      s[p .. 'r'] = refill
      if remaining ~= '' then
        s[p .. 'l'] = math.min(math.min(s[p .. 'l'], tonumber(remaining)), cap)
      else
        s[p .. 'l'] = math.min(s[p .. 'l'], cap)
      end
    else
      s[p .. 'c'] = cap
      s[p .. 'r'] = refill
      local level = cap
      if remaining ~= '' then
        level = tonumber(remaining)
      end
      s[p .. 'l'] = math.min(level, cap)
      s[p .. 'a'] = now
    end
  end
  learn('r', ARGV[3], ARGV[4], ARGV[5])
  learn('t', ARGV[6], ARGV[7], ARGV[8])
  store(ARGV[9])
  return {1, '0'}
elseif op == 'pause' then
  -- ARGV: 3 duration us, 4 ttl ms. An earlier pause is never shortened.
  local untill = now + tonumber(ARGV[3])
  if s['pu'] == nil or s['pu'] < untill then
    s['pu'] = untill
  end
  store(ARGV[4])
  return {1, '0'}
end
return redis.error_reply('oai-resilience pacing: unknown operation')
