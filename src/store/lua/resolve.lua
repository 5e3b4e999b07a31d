-- Resolves a scan, once: claims the event's key, then (when a result is given) resolves the
-- waiting session, keeps the result until the QR code expires, and tells the instance that
-- holds the stream. One atomic step: a retry on another instance finds the key or the result.
-- KEYS[1] the session, KEYS[2] the event's key; ARGV: key ttl ms, now ms, result ('' for
-- none), this instance, inbox prefix, scene.
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return {'dup'} end
if ARGV[3] == '' then return {'nobody'} end
local s = redis.call('HMGET', KEYS[1], 'st', 'dl', 'ex', 'h')
if s[1] ~= 'w' or tonumber(ARGV[2]) >= tonumber(s[2]) then return {'nobody'} end
redis.call('HSET', KEYS[1], 'st', 'd', 'r', ARGV[3], 'h', '')
redis.call('PEXPIREAT', KEYS[1], s[3])
local h = s[4] or ''
local inst, gen = string.match(h, '^(.*)/(%d+)$')
if not inst then return {'parked'} end
if inst ~= ARGV[4] then
  local heard = redis.call('PUBLISH', ARGV[5] .. '{' .. inst .. '}',
    cjson.encode({k = 'r', s = ARGV[6], g = gen, r = ARGV[3]}))
  if heard == 0 then return {'parked'} end
end
return {'delivered', h}
