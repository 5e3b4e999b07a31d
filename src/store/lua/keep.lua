-- A result meant for a stream found it gone: kept for its return until the QR code expires.
-- KEYS[1] the session; ARGV: grace ms.
local s = redis.call('HMGET', KEYS[1], 'st', 'ex', 'dl')
if s[1] ~= 'd' then return 0 end
redis.call('HSET', KEYS[1], 'k', s[2])
local stay = math.max(tonumber(s[2]), tonumber(s[3]) + tonumber(ARGV[1]))
redis.call('PEXPIREAT', KEYS[1], string.format('%d', stay))
return 1
