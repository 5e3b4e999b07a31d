-- Counts one attempt at a login code by a sender, in a fixed window that starts with the
-- sender's first attempt: the hash is made by this HINCRBY (count 1) and given the window as
-- its life in the same step, so that a count never outlives its window. Each message's count
-- is kept beside it ('m:' .. MsgId): WeChat's retries of a message (the same MsgId, under the
-- same query or a new one) get the count of the first one and use up nothing.
-- KEYS[1] the sender's window; ARGV: the window ms, the message's id. Returns the count of the
-- message.
local field = 'm:' .. ARGV[2]
local seen = redis.call('HGET', KEYS[1], field)
if seen then return tonumber(seen) end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
redis.call('HSET', KEYS[1], field, n)
return n
