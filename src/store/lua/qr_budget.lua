-- Counts one QR code about to be made, unless the day's budget is spent: the check and the
-- count in one step, so that instances making codes together never pass the budget.
-- KEYS[1] the day's count; ARGV: budget, seconds to keep the count.
-- Returns the count with this code, or -1 when the budget is spent.
local made = tonumber(redis.call('GET', KEYS[1]) or '0')
if made >= tonumber(ARGV[1]) then
  return -1
end
made = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return made
