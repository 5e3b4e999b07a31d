-- Reserves room for codes about to be made, so that instances refilling together keep the
-- stock at its target: codes in stock plus live reservations never exceed it.
-- KEYS[1] the stock, KEYS[2] the reservations; ARGV: now ms, hold-until ms, target, scenes...
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local free = tonumber(ARGV[3]) - redis.call('LLEN', KEYS[1]) - redis.call('ZCARD', KEYS[2])
local n = 0
for i = 4, #ARGV do
  if n >= free then break end
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[i])
  n = n + 1
end
redis.call('PEXPIREAT', KEYS[2], ARGV[2])
return n
