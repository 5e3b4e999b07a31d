-- Resolves a scan, once: claims the event's key, then (when a result is given) resolves the
-- waiting session and tells the instance that holds the stream. One atomic step: a retry on
-- another instance finds the key or the result. A result handed to a stream is kept for a
-- short resume window ('k'), a parked one until the QR code expires.
-- KEYS[1] the session, KEYS[2] the event's key; ARGV: key ttl ms, now ms, result ('' for
-- none), this instance, inbox prefix, scene, resume window ms.
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return {'dup'} end
if ARGV[3] == '' then return {'nobody'} end
local s = redis.call('HMGET', KEYS[1], 'st', 'dl', 'ex', 'h')
if s[1] ~= 'w' or tonumber(ARGV[2]) >= tonumber(s[2]) then return {'nobody'} end
local function keep(until_ms)
  redis.call('HSET', KEYS[1], 'st', 'd', 'r', ARGV[3], 'h', '', 'k', until_ms)
  redis.call('PEXPIREAT', KEYS[1], until_ms)
end
local h = s[4] or ''
local inst, gen = string.match(h, '^(.*)/(%d+)$')
if inst and inst ~= ARGV[4] then
  local heard = redis.call('PUBLISH', ARGV[5] .. '{' .. inst .. '}',
    cjson.encode({k = 'r', s = ARGV[6], g = gen, r = ARGV[3]}))
  if heard == 0 then inst = nil end
end
if not inst then
  keep(s[3])
  return {'parked'}
end
keep(string.format('%d', math.min(tonumber(s[3]), tonumber(ARGV[2]) + tonumber(ARGV[7]))))
return {'delivered', h}
