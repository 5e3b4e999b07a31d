-- Brings a login code's lapse forward, on a Redis Cluster, after its session resolved (on one
-- Redis, 'resolve.lua' does it in its own step). KEYS[1] the code; ARGV: the scene it must
-- still name, how long it may live at most (ms). Returns 1 if shortened, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('PTTL', KEYS[1]) > tonumber(ARGV[2]) then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
