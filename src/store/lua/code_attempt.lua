-- Counts one attempt at a login code by a sender, in a fixed window that starts with the
-- sender's first attempt: the key is made by this INCR (count 1) and given the window as its
-- life in the same step, so that a count never outlives its window.
-- KEYS[1] the sender's count; ARGV: the window ms. Returns the count with this attempt.
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
