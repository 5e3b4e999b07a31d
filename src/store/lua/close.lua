-- The stream holding a waiting session ended the wait (timeout): the session is removed;
-- unless a scan resolved it first, whose result the stream sends instead.
-- KEYS[1] the session; ARGV: holder.
local s = redis.call('HMGET', KEYS[1], 'st', 'h', 'r')
if s[1] == 'w' and s[2] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return {'closed'}
end
if s[1] == 'd' then return {'resolved', s[3] or ''} end
return {'notheld'}
