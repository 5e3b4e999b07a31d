-- After notices may have been lost: the session as it stands, re-created as waiting for its
-- holder if the store lost it while its wait goes on.
-- KEYS[1] the session; ARGV: holder, now ms, grace ms, qr, audience, deadline ms, expiry ms,
-- key digest.
if redis.call('EXISTS', KEYS[1]) == 0 then
  if tonumber(ARGV[2]) >= tonumber(ARGV[6]) then return false end
  redis.call('HSET', KEYS[1], 'st', 'w', 'qr', ARGV[4], 'aud', ARGV[5], 'dl', ARGV[6],
    'ex', ARGV[7], 'h', ARGV[1], 'kd', ARGV[8])
  redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(ARGV[6]) + tonumber(ARGV[3])))
end
return redis.call('HMGET', KEYS[1], 'st', 'qr', 'aud', 'dl', 'ex', 'h', 'r', 'k', 'kd')
