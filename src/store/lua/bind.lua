-- Records a callback's binding (its signed query to its body's digest) unless its query is
-- bound already: {'first'}, {the first one's outcome ('L' a login, 'N' not)} for the same
-- body, or {'conflict'} for another body. On a Redis Cluster, also a scan event to its scene.
-- KEYS[1] the binding; ARGV: body digest, ttl ms.
-- With a session as KEYS[2] (never on a Cluster: another slot) and the session's fields from
-- ARGV[3] on: when the session exists, nothing is recorded (its scan's resolve binds) and the
-- reply is {'session', its fields}.
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then
  return {'session', unpack(redis.call('HMGET', KEYS[2], unpack(ARGV, 3)))}
end
local b = redis.call('GET', KEYS[1])
if b then
  if string.sub(b, 1, #ARGV[1] + 1) ~= ARGV[1] .. ':' then return {'conflict'} end
  return {string.sub(b, #ARGV[1] + 2)}
end
redis.call('SET', KEYS[1], ARGV[1] .. ':N', 'PX', ARGV[2])
return {'first'}
