-- The stream holding a waiting session went away: it stays, unattached, until its deadline.
-- KEYS[1] the session; ARGV: holder.
local s = redis.call('HMGET', KEYS[1], 'st', 'h', 'dl')
if s[1] == 'w' and s[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'h', '')
  redis.call('PEXPIREAT', KEYS[1], s[3])
end
return 1
