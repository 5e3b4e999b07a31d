-- Shares a fresh access token and releases the refresh lock if this instance holds it.
-- KEYS[1] the token, KEYS[2] the lock; ARGV: "expiry|token", expiry ms, this instance.
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
