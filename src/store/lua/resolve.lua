-- Resolves a scan, once: records the callback's binding (its signed query to its body's
-- digest), claims the event's key, then (when a result is given) resolves the waiting session
-- and tells the instance that holds the stream. One atomic step: a retry on another instance
-- finds the binding, the key or the result. A result handed to a stream is kept for a short
-- resume window ('k'), a parked one until the QR code expires; the session itself stays at
-- least until its wait is over, so that it is never taken for a lost one and opened again.
-- The binding and the event's key remember whether the callback logged somebody in ('L') or
-- not ('N'), so that a retry is answered as the first one was.
-- On a Redis Cluster a script touches one slot: the binding, whose slot is not the scene's, is
-- then recorded before ('bind.lua') and not passed, and the script does not publish (a channel
-- of another slot) but returns {'tell', holder} for the caller to tell the stream's instance.
-- The session's login code, when it has one and is on one Redis, lapses a resume window after
-- the resolution (never later than it would): on a Cluster it is in another slot, and the
-- caller shortens it after the script.
-- KEYS[1] the session, KEYS[2] the event's key, KEYS[3] the binding and KEYS[4] the session's
-- login code (one Redis only; the code optional); ARGV: key
-- ttl ms, now ms, result ('' for none), this instance, inbox prefix, scene, resume window ms,
-- body digest, binding ttl ms, grace ms, '1' when the caller tells the instance.
local b = KEYS[3] and redis.call('GET', KEYS[3])
if b then
  if string.sub(b, 1, #ARGV[8]) ~= ARGV[8] then return {'conflict'} end
  return {'dup', string.sub(b, #ARGV[8] + 2)}
end
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[8] .. ':N', 'PX', ARGV[9]) end
local e = redis.call('GET', KEYS[2])
if e then
  if e == 'L' and KEYS[3] then redis.call('SET', KEYS[3], ARGV[8] .. ':L', 'KEEPTTL') end
  return {'dup', e}
end
redis.call('SET', KEYS[2], 'N', 'PX', ARGV[1])
if ARGV[3] == '' then return {'nobody'} end
local s = redis.call('HMGET', KEYS[1], 'st', 'dl', 'ex', 'h')
if s[1] ~= 'w' or tonumber(ARGV[2]) >= tonumber(s[2]) then return {'nobody'} end
local function keep(until_ms)
  redis.call('HSET', KEYS[1], 'st', 'd', 'r', ARGV[3], 'h', '', 'k', until_ms)
  local stay = math.max(tonumber(until_ms), tonumber(s[2]) + tonumber(ARGV[10]))
  redis.call('PEXPIREAT', KEYS[1], string.format('%d', stay))
  redis.call('SET', KEYS[2], 'L', 'KEEPTTL')
  if KEYS[3] then redis.call('SET', KEYS[3], ARGV[8] .. ':L', 'KEEPTTL') end
  if KEYS[4] and redis.call('GET', KEYS[4]) == ARGV[6]
      and redis.call('PTTL', KEYS[4]) > tonumber(ARGV[7]) then
    redis.call('PEXPIRE', KEYS[4], ARGV[7])
  end
end
local h = s[4] or ''
local inst, gen = string.match(h, '^(.*)/(%d+)$')
local window = string.format('%d', math.min(tonumber(s[3]), tonumber(ARGV[2]) + tonumber(ARGV[7])))
if inst and inst ~= ARGV[4] and ARGV[11] == '1' then
  keep(window)
  return {'tell', h}
end
if inst and inst ~= ARGV[4] then
  local heard = redis.call('PUBLISH', ARGV[5] .. '{' .. inst .. '}',
    cjson.encode({k = 'r', s = ARGV[6], g = gen, r = ARGV[3]}))
  if heard == 0 then inst = nil end
end
if not inst then
  keep(s[3])
  return {'parked'}
end
keep(window)
return {'delivered', h}
