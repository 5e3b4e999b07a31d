-- Takes the oldest code with enough life left; drops the older ones that have not.
-- KEYS[1] the stock; ARGV: the least expiry ms. Codes are "expiry|scene|payload".
while true do
  local v = redis.call('LPOP', KEYS[1])
  if not v then return false end
  local p = string.find(v, '|', 1, true)
  if p and tonumber(string.sub(v, 1, p - 1)) >= tonumber(ARGV[1]) then return v end
end
