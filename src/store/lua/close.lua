-- The stream holding a waiting session ended the wait (timeout): the session is removed.
-- KEYS[1] the session; ARGV: holder.
local s = redis.call('HMGET', KEYS[1], 'st', 'h')
if s[1] == 'w' and s[2] == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
